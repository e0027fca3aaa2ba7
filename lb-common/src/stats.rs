//! Named, stable counter codes. Every packet the program sees increments exactly one *verdict*
//! slot; *event* slots count things that happened on the way (in addition to the verdict).
//! Codes are part of the ABI: never renumber, only append.

macro_rules! stats {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, $label:literal, $verdict:literal; )*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Stat { $( $(#[$doc])* $name = $code, )* }

        impl Stat {
            pub const ALL: &'static [Stat] = &[$(Stat::$name,)*];
            /// The name shown in `xlb status` and the README.
            pub const fn label(self) -> &'static str { match self { $(Stat::$name => $label,)* } }
            /// "pass", "drop", "forward", "answer" (sent back to the client) or "event".
            pub const fn kind(self) -> &'static str { match self { $(Stat::$name => $verdict,)* } }
        }
    };
}

stats! {
    /// Balanced (or reverse-NATed) and redirected out of another interface.
    FwdRedirect = 1, "fwd_redirect", "forward";
    /// Balanced (or reverse-NATed) and sent back out of the interface it came in on.
    FwdTx = 2, "fwd_tx", "forward";
    /// Rewritten, but the next hop's MAC is unknown: handed to the kernel, which resolves it.
    PassNoNeigh = 3, "pass_no_neigh", "pass";
    /// Rewritten, but larger than the egress MTU: the kernel fragments it or answers ICMP.
    PassFragNeeded = 4, "pass_frag_needed", "pass";
    /// TTL would expire here: not rewritten; the kernel answers ICMP time exceeded.
    PassTtlExceeded = 5, "pass_ttl_exceeded", "pass";
    /// Neither IPv4 nor IPv6 (ARP, LLDP, VLAN-tagged frames, ...).
    PassNotIp = 6, "pass_not_ip", "pass";
    /// IPv4 or IPv6 that is neither for a listener nor a reply from a target (neighbour
    /// discovery and router advertisements included).
    PassNotListener = 7, "pass_not_listener", "pass";
    /// Frame shorter than an Ethernet header.
    PassEthTruncated = 8, "pass_eth_truncated", "pass";
    /// Frame shorter than its IPv4 header (20 bytes, or IHL * 4).
    PassIpv4Truncated = 9, "pass_ipv4_truncated", "pass";
    /// IPv4 version field not 4, or IHL < 5. The kernel discards it and counts it.
    PassIpv4BadHeader = 10, "pass_ipv4_bad_header", "pass";
    /// A fragment not addressed to a VIP.
    PassFragment = 11, "pass_fragment", "pass";
    /// A fragment addressed to a VIP: non-first fragments carry no ports, so they cannot be
    /// balanced consistently.
    DropFragment = 12, "drop_fragment", "drop";
    /// Addressed to a VIP, but the TCP/UDP header is cut short.
    DropL4Truncated = 13, "drop_l4_truncated", "drop";
    /// Addressed to a VIP on a port/protocol with no listener, or not TCP/UDP at all.
    DropVipNoListener = 14, "drop_vip_no_listener", "drop";
    /// The listener's Maglev ring is empty: its target group has no target.
    DropNoTarget = 15, "drop_no_target", "drop";
    /// The kernel has no route to the target (blackhole, unreachable, prohibited, ...).
    DropNoRoute = 16, "drop_no_route", "drop";
    /// IP forwarding is off on the ingress interface (`net.ipv4.ip_forward=0`).
    DropFwdDisabled = 17, "drop_fwd_disabled", "drop";
    /// The connection table could not take the new flow (map update failed).
    DropFlowTableFull = 18, "drop_flow_table_full", "drop";
    /// A TCP header whose data offset is below 5 words, addressed to a VIP.
    DropTcpBadHeader = 19, "drop_tcp_bad_header", "drop";
    /// A tunnel listener's packet that would exceed the egress MTU once encapsulated: answered
    /// with ICMP "fragmentation needed" (the next-hop MTU less the outer header), sent back.
    TxFragNeeded = 20, "tx_frag_needed", "answer";
    /// As `tx_frag_needed`, but answering is turned off (`tunnel.icmp_frag_needed = false`).
    DropFragNeeded = 21, "drop_frag_needed", "drop";
    /// There was no room to add the outer header or build the ICMP answer.
    DropEncapFailed = 22, "drop_encap_failed", "drop";
    /// An ICMP error addressed to a VIP whose embedded packet belongs to no known flow (or is
    /// cut too short to tell).
    DropIcmpNoFlow = 23, "drop_icmp_no_flow", "drop";
    /// Event: a balanced packet carried IPv4 options (kept and forwarded).
    EvIpv4Options = 24, "ev_ipv4_options", "event";
    /// Event: a flow's entry pointed at a removed target, or a UDP flow idled out; re-balanced.
    EvFlowRebalanced = 25, "ev_flow_rebalanced", "event";
    /// Event: a packet with no connection entry that was not a TCP SYN (agent restart, eviction,
    /// another node): balanced by the ring like a new flow.
    EvMidFlowMiss = 26, "ev_mid_flow_miss", "event";
    /// Event: an ICMP error about a balanced flow (fragmentation needed, unreachable, time
    /// exceeded) was sent on to that flow's target, translated for NAT.
    EvIcmpToTarget = 27, "ev_icmp_to_target", "event";
    /// An ICMP echo request to a VIP, answered by the balancer (`icmp_echo = false` turns it
    /// off: `drop_vip_no_listener`).
    TxIcmpEcho = 28, "tx_icmp_echo", "answer";
    /// Event: an ICMP error a NAT target sent about a balanced flow was translated so the
    /// client sees it from the VIP.
    EvIcmpToClient = 29, "ev_icmp_to_client", "event";
    /// Frame shorter than its IPv6 header (40 bytes).
    PassIpv6Truncated = 30, "pass_ipv6_truncated", "pass";
    /// IPv6 ethertype, but the version field is not 6. The kernel discards it and counts it.
    PassIpv6BadHeader = 31, "pass_ipv6_bad_header", "pass";
    /// An IPv6 packet to a VIP whose next header is an extension header (hop-by-hop, routing,
    /// destination options, authentication, mobility, HIP, shim6, experimental): xlb does not
    /// walk extension chains, so it never guesses where TCP/UDP starts. (Fragments count as
    /// `drop_fragment`.)
    DropIpv6ExtHeader = 32, "drop_ipv6_ext_header", "drop";
    /// An IPv6 frame, but the IPv6 program (`xlb6`, or `xlb6_icmp` for ICMPv6 errors) is not in
    /// `TAIL_CALLS`: passed untouched. The agent installs them at load; seeing this means the
    /// object was loaded by other means.
    PassIpv6NoProgram = 33, "pass_ipv6_no_program", "pass";
    /// A packet to a listener from a source one of its `deny_sources` matches (deny wins over
    /// allow), dropped before any connection state; counted per rule too.
    DropSourceDenied = 34, "drop_source_denied", "drop";
    /// A packet to a listener with `allow_sources` from a source none of them matches.
    DropSourceNotAllowed = 35, "drop_source_not_allowed", "drop";
    /// A new flow (TCP SYN, UDP flow's first packet) to a listener over its
    /// `new_flows_per_second`: dropped before any connection state; counted per listener too.
    DropListenerRateLimited = 36, "drop_listener_rate_limited", "drop";
    /// A new flow from a source (/32, /64) over the listener's
    /// `new_flows_per_second_per_source`.
    DropSourceRateLimited = 37, "drop_source_rate_limited", "drop";
    /// A TCP packet met mid-flow within `tables.previous_table_window` of a table change went
    /// where the previous table sent it (with `ev_mid_flow_miss`).
    EvPreviousTable = 38, "ev_previous_table", "event";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::STAT_SLOTS;

    #[test]
    fn codes_are_unique_nonzero_and_fit_the_counter_array() {
        let mut seen = [false; STAT_SLOTS as usize];
        for s in Stat::ALL {
            let c = *s as u32;
            assert!(c > 0 && c < STAT_SLOTS, "{s:?}");
            assert!(!seen[c as usize], "duplicate code {c}");
            seen[c as usize] = true;
        }
    }
}

macro_rules! decap_stats {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, $label:literal; )*) => {
        /// Counter codes of the decapsulation program (`xlb decap status`). Stable; append only.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum DecapStat { $( $(#[$doc])* $name = $code, )* }

        impl DecapStat {
            pub const ALL: &'static [DecapStat] = &[$(DecapStat::$name,)*];
            pub const fn label(self) -> &'static str { match self { $(DecapStat::$name => $label,)* } }
        }
    };
}

decap_stats! {
    /// IPv4-in-IPv4, IPv4-in-IPv6 or IPv6-in-IPv6 to one of this host's addresses: the outer
    /// header was removed and the inner packet passed to the stack.
    Decapsulated = 1, "decapsulated";
    /// Not one of those (everything else on the interface): passed untouched.
    PassNotTunnel = 2, "pass_not_tunnel";
    /// A tunnelled packet to an address that is not this host's: passed untouched.
    PassNotLocal = 3, "pass_not_local";
    /// A tunnelled packet whose outer or inner header is cut short, fragmented or has options
    /// (or whose inner version does not match the outer next header): passed untouched (the
    /// kernel decides).
    PassMalformed = 4, "pass_malformed";
}
