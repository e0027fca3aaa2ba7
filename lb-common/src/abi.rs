//! Map names, keys and values shared by the XDP program and the agent.
use core::mem::size_of;

/// Address family codes used in every key.
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// IP protocol numbers the data plane balances.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Forwarding modes of a listener (`ListenerValue::mode`). NAT rewrites the destination to the
/// target and replies come back through the balancer.
pub const MODE_NAT: u8 = 0;
/// Direct server return on one L2 segment: only the destination MAC becomes the target's.
pub const MODE_DSR: u8 = 1;
/// Direct server return over IP: the client's packet inside an outer header to the target's
/// address (IPv4-in-IPv4, IPv6-in-IPv6, or IPv4-in-IPv6 for an IPv6 target of an IPv4 VIP),
/// inner packet untouched.
pub const MODE_TUNNEL: u8 = 2;

/// IP protocol number of IPv4-in-IPv4 (and the next header of IPv4-in-IPv6).
pub const PROTO_IPIP: u8 = 4;
/// Next header of IPv6-in-IPv6.
pub const PROTO_IPV6: u8 = 41;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol (next header) number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// `Settings::flags`: answer a tunnelled packet that would exceed the egress MTU with ICMP
/// "fragmentation needed" (else it is dropped, counted).
pub const SETTING_FRAG_NEEDED: u32 = 1;
/// `Settings::flags`: answer ICMP echo requests to VIPs.
pub const SETTING_ICMP_ECHO: u32 = 2;

/// `PORT_FLAGS[port]` bits: a listener uses `port` as destination, a target as source.
pub const PORT_LISTENER: u8 = 1;
pub const PORT_TARGET: u8 = 2;

/// `TargetValue::flags`: the target may receive traffic. A flow whose target lost this flag is
/// balanced afresh on its next packet.
pub const TARGET_ACTIVE: u8 = 1;

/// Map names, as the XDP object declares them.
pub mod maps {
    pub const LISTENERS: &str = "LISTENERS";
    pub const VIPS: &str = "VIPS";
    /// The IPv6 twins of `LISTENERS`, `VIPS`, `FLOWS` and `REVERSE` (16-byte addresses).
    pub const LISTENERS6: &str = "LISTENERS6";
    pub const VIPS6: &str = "VIPS6";
    pub const FLOWS6: &str = "FLOWS6";
    pub const REVERSE6: &str = "REVERSE6";
    /// TCP flows seen only as a SYN so far (and, NAT, their return paths): apart from the
    /// connection table, so a flood of SYNs churns these and never evicts an established flow.
    pub const EMBRYONIC: &str = "EMBRYONIC";
    pub const EMBRYONIC6: &str = "EMBRYONIC6";
    pub const EMBRYONIC_REVERSE: &str = "EMBRYONIC_REVERSE";
    pub const EMBRYONIC_REVERSE6: &str = "EMBRYONIC_REVERSE6";
    pub const RINGS: &str = "RINGS";
    pub const TARGETS: &str = "TARGETS";
    pub const FLOWS: &str = "FLOWS";
    pub const REVERSE: &str = "REVERSE";
    /// Per NAT target and protocol, the one listener whose flows to it keep no `REVERSE`
    /// entry: a reply finds its flow's own `FLOWS` entry through it (see [`OwnerKey`]).
    pub const OWNERS: &str = "OWNERS";
    pub const OWNERS6: &str = "OWNERS6";
    pub const PORT_FLAGS: &str = "PORT_FLAGS";
    pub const STATS: &str = "STATS";
    pub const LISTENER_STATS: &str = "LISTENER_STATS";
    pub const TARGET_STATS: &str = "TARGET_STATS";
    pub const VIP_HINTS: &str = "VIP_HINTS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const TAIL_CALLS: &str = "TAIL_CALLS";
    /// Source rules (LPM tries keyed by listener id and prefix; value: rule id) and their
    /// per-rule counters.
    pub const ALLOW4: &str = "ALLOW4";
    pub const DENY4: &str = "DENY4";
    pub const ALLOW6: &str = "ALLOW6";
    pub const DENY6: &str = "DENY6";
    pub const RULE_STATS: &str = "RULE_STATS";
    /// The decapsulation program's maps (`xlb decap`).
    pub const DECAP_ADDRS: &str = "DECAP_ADDRS";
    pub const DECAP_ADDRS6: &str = "DECAP_ADDRS6";
    pub const DECAP_STATS: &str = "DECAP_STATS";
}

/// Health-check probes that must take the data path carry the socket mark
/// `PROBE_MARK_BASE | target id` (the agent's policy routes and `xlb_probe_encap` read it).
pub const PROBE_MARK_BASE: u32 = 0x584c_0000;
pub const PROBE_MARK_MASK: u32 = 0xffff_0000;

/// Name of the TC egress program that encapsulates `tunnel` health-check probes.
pub const PROBE_ENCAP_PROGRAM_NAME: &str = "xlb_probe_encap";

/// Name of the decapsulation program (its own object, run on targets).
pub const DECAP_PROGRAM_NAME: &str = "xlb_decap";

/// The layout version of the maps a pinned data plane keeps across agent restarts (keys and
/// values of the connection tables and `TARGETS`, and what their fields mean). Bump it with
/// any change to them: a starting agent then leaves the old pins alone instead of adopting
/// maps of another shape.
pub const ABI_VERSION: u32 = 2;

/// Name of the XDP entry point in the object.
pub const PROGRAM_NAME: &str = "xlb";

/// Name of the IPv6 half of the balancer: `xlb` hands every IPv6 frame to it with a tail call
/// (slot [`TAIL_IPV6`] of `TAIL_CALLS`), so each half has the whole 512-byte stack and IPv4
/// never runs IPv6 code.
pub const PROGRAM6_NAME: &str = "xlb6";
/// `TAIL_CALLS` slot of [`PROGRAM6_NAME`].
pub const TAIL_IPV6: u32 = 0;
/// Name of the program for ICMPv6 errors (`xlb6` hands them over with a tail call, slot
/// [`TAIL_ICMP6`]): a rare path with a stack of its own.
pub const PROGRAM6_ICMP_NAME: &str = "xlb6_icmp";
pub const TAIL_ICMP6: u32 = 1;
/// Name of the program that puts packets into an outer IPv6 header (IPv6-in-IPv6, and
/// IPv4-in-IPv6 for IPv6 targets of IPv4 VIPs): `xlb` and `xlb6` hand such packets over with a
/// tail call (slot [`TAIL_TUNNEL6`]), the target id in `HANDOFF`.
pub const PROGRAM_TUNNEL6_NAME: &str = "xlb_tunnel6";
pub const TAIL_TUNNEL6: u32 = 2;
/// Slots of `TAIL_CALLS`.
pub const TAIL_SLOTS: u32 = 3;

/// An IPv4 address in the 16-byte slot every key uses (the rest stays zero).
pub const fn addr_from_ipv4(octets: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = octets[0];
    a[1] = octets[1];
    a[2] = octets[2];
    a[3] = octets[3];
    a
}

/// The IPv4 octets of a 16-byte address slot.
pub const fn ipv4_of(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// `VIP_HINTS[index]` is non-zero when some VIP's last two octets give `index`: a packet whose
/// hint is zero is certainly not for a VIP, and skips the VIPS hash lookup.
pub const fn vip_hint_index(addr: [u8; 4]) -> u32 {
    ((addr[2] as u32) << 8) | addr[3] as u32
}

/// Listener lookup key: (VIP, port, protocol), the address family in every key.
///
/// Hash-map keys are sized for IPv4 (4-byte addresses): the kernel's hashing cost grows with
/// the key's length, and it was the largest single cost of a packet in the profile (see
/// BENCHMARKS.md). IPv6 has maps of its own with 16-byte addresses (`*6` below). Map *values*
/// keep a 16-byte address slot, shared by both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// What the data plane knows of a listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerValue {
    /// Index into `LISTENER_STATS`; never 0.
    pub id: u32,
    /// First slot of this listener's active Maglev ring in `RINGS`.
    pub ring_base: u32,
    /// M: entries in the ring.
    pub ring_size: u32,
    pub mode: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    pub udp_idle_timeout_s: u32,
    /// `new_flows_per_second`: flows this listener opens per second, all sources together
    /// (0: no limit). See [`crate::rate`].
    pub new_flow_rate: u32,
    /// `new_flows_per_second_per_source`: the same per source /32 (IPv4) or /64 (IPv6).
    pub source_flow_rate: u32,
    /// The ring this listener used before its last table change (first slot in `RINGS`)...
    pub prev_ring_base: u32,
    /// ...consulted for TCP packets met mid-flow until this time (coarse monotonic clock,
    /// seconds; 0: not at all). See `tables.previous_table_window`.
    pub prev_until_s: u32,
}

/// Set of addresses that carry at least one listener (value: number of listeners).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u8; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// `ListenerValue::flags`: the listener has deny rules (`DENY4` / `DENY6` entries).
pub const LISTENER_HAS_DENY: u8 = 1;
/// `ListenerValue::flags`: the listener has allow rules: a source none of them matches is
/// dropped.
pub const LISTENER_HAS_ALLOW: u8 = 2;

/// The data of a source-rule LPM key: the listener id (network order) then the address, so one
/// trie holds every listener's rules: prefix length = 32 + the rule's prefix length.
pub type RuleKey4 = [u8; 8];
pub type RuleKey6 = [u8; 20];

/// A source rule's LPM key for listener `id` and `addr/len`.
pub const fn rule_key<const N: usize>(id: u32, addr: &[u8]) -> [u8; N] {
    let mut k = [0u8; N];
    let idb = id.to_be_bytes();
    let mut i = 0;
    while i < 4 {
        k[i] = idb[i];
        i += 1;
    }
    while i < N && i - 4 < addr.len() {
        k[i] = addr[i - 4];
        i += 1;
    }
    k
}

/// `RULE_STATS` slot counting a listener's sources that no allow rule matched.
pub const fn not_allowed_slot(listener_id: u32) -> u32 {
    crate::limits::MAX_SOURCE_RULES + listener_id
}

/// `RULE_STATS` slot counting a listener's new flows refused by `new_flows_per_second`.
pub const fn rate_limited_slot(listener_id: u32) -> u32 {
    crate::limits::MAX_SOURCE_RULES + (crate::limits::MAX_LISTENERS + 1) + listener_id
}

/// `RULE_STATS` slot counting a listener's new flows refused by
/// `new_flows_per_second_per_source`.
pub const fn source_rate_limited_slot(listener_id: u32) -> u32 {
    crate::limits::MAX_SOURCE_RULES + 2 * (crate::limits::MAX_LISTENERS + 1) + listener_id
}

/// `SOURCE_RATE` key: the listener id (network order), then the source's first 8 bytes: its
/// IPv4 address and 4 zeros, or its IPv6 /64. (A listener has one family, so its id tells
/// which.)
pub type RateKey = [u8; 12];

/// The `SOURCE_RATE` key of source `src` (4 or 16 bytes) of listener `id`.
pub const fn rate_key(id: u32, src: &[u8]) -> RateKey {
    rule_key::<12>(id, src)
}

/// `TARGETS[id]`: where a target lives. Id 0 is never assigned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetValue {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub family: u8,
    pub flags: u8,
}

/// A 5-tuple as seen on the wire, in the direction named by the map that holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `FLOWS[client -> VIP tuple]`: the connection table entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub target_id: u32,
    pub listener_id: u32,
    /// bpf_ktime_get_coarse_ns() of the last packet (kept for UDP flows only).
    pub last_seen_ns: u64,
}

/// `REVERSE[target -> client tuple]`: how to make a reply look as if the VIP sent it. Keyed by
/// the reply's own 5-tuple, so two VIPs sharing a target never take each other's replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseValue {
    pub vip: [u8; 16],
    pub vport: [u8; 2],
    pub family: u8,
    pub _pad: u8,
    pub listener_id: u32,
    pub target_id: u32,
}

/// `OWNERS[target address, port, protocol]`: the listener that owns this NAT target's replies
/// (value: a [`ReverseValue`] naming its VIP, port and ids). A flow of the owner keeps one entry,
/// in `FLOWS` (or `EMBRYONIC`): a reply from the target rebuilds the flow's forward key from
/// the owner's VIP and port and checks that entry names this target. Flows of any other
/// listener sending to the same target (two VIPs sharing it) also get a `REVERSE` entry, which
/// the reply path tries next. The agent never moves ownership while the owner still sends to
/// the target, so a flow without a `REVERSE` entry always finds its way back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OwnerKey {
    pub addr: [u8; 4],
    /// Network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// `OWNERS6` key: [`OwnerKey`] with an IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OwnerKey6 {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// `SETTINGS[0]`: node-wide settings the agent writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Outer source of tunnelled packets: this network address, with the host bits taken from
    /// the flow's hash (so a target's NIC spreads flows over its queues).
    pub tunnel_src: [u8; 4],
    /// Host bits of the tunnel source prefix (network order); zero for a single address.
    pub tunnel_src_hostmask: [u8; 4],
    pub flags: u32,
    /// Outer source of tunnels to IPv6 targets (`tunnel.source_prefix6`), host bits taken from
    /// the flow's hash in its last 32 bits under `tunnel_src6_hostmask`.
    pub tunnel_src6: [u8; 16],
    pub tunnel_src6_hostmask: [u8; 4],
}

/// `LISTENERS6` key: [`ListenerKey`] with an IPv6 address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey6 {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub proto: u8,
    pub family: u8,
}

/// `VIPS6` key: an IPv6 address that carries at least one listener.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey6 {
    pub addr: [u8; 16],
}

/// `FLOWS6` / `REVERSE6` key: [`FlowKey`] with IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Per-CPU traffic counters of one listener or one target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client -> target packets and bytes (as received).
    pub packets: u64,
    pub bytes: u64,
    /// Flows balanced by the Maglev table (new, re-balanced, or seen mid-flow with no entry).
    pub new_flows: u64,
    /// Target -> client packets and bytes.
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl Counters {
    /// Sum of per-CPU values.
    pub fn add(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.reply_packets += o.reply_packets;
        self.reply_bytes += o.reply_bytes;
    }
}

// Padding-free layouts: a size different from the sum of the fields means hidden padding.
const _: () = assert!(size_of::<ListenerKey>() == 8);
const _: () = assert!(size_of::<ListenerValue>() == 36);
const _: () = assert!(size_of::<VipKey>() == 8);
const _: () = assert!(size_of::<TargetValue>() == 20);
const _: () = assert!(size_of::<FlowKey>() == 16);
const _: () = assert!(size_of::<FlowValue>() == 16);
const _: () = assert!(size_of::<ReverseValue>() == 28);
const _: () = assert!(size_of::<Counters>() == 40);
const _: () = assert!(size_of::<Settings>() == 32);
const _: () = assert!(size_of::<ListenerKey6>() == 20);
const _: () = assert!(size_of::<VipKey6>() == 16);
const _: () = assert!(size_of::<FlowKey6>() == 40);
const _: () = assert!(size_of::<OwnerKey>() == 8);
const _: () = assert!(size_of::<OwnerKey6>() == 20);

#[cfg(feature = "user")]
#[expect(
    unsafe_code,
    reason = "aya::Pod is an unsafe trait: each impl states why the type is plain data"
)]
mod pod {
    use super::*;
    // SAFETY: each type is repr(C), Copy, has no padding (asserted above) and every bit
    // pattern is a valid value (integers and byte arrays only).
    unsafe impl aya::Pod for ListenerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenerValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TargetValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReverseValue {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Counters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ListenerKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for VipKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OwnerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OwnerKey6 {}
}
