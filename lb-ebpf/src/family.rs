//! What differs between IPv4 and IPv6 for the stages that are the same for both (listener
//! lookup, connection table, Maglev, NAT, forwarding): the address type, the maps that hold it,
//! the hash, the checksum of an address change and the IP header's own fields. The stages are
//! generic over [`Family`]; each family's code is compiled apart, so IPv4 packets never run,
//! nor hash, anything of IPv6.
use aya_ebpf::{
    maps::{LruHashMap, lpm_trie::Key},
    programs::XdpContext,
};
use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, FlowKey, FlowKey6, FlowValue, ListenerKey, ListenerKey6,
    ListenerValue, OwnerKey, OwnerKey6, PROTO_ICMP, ReverseValue, Stat, TargetValue, VipKey,
    VipKey6, addr_from_ipv4, csum,
    hash::{flow_hash_v4, flow_hash_v6},
};

use crate::{
    encap,
    forward::{self, FibParams},
    hdr::{ETH_LEN, IPV6_LEN, Ipv4, Ipv6},
    maps::{
        ALLOW4, ALLOW6, DENY4, DENY6, EMBRYONIC, EMBRYONIC_REVERSE, EMBRYONIC_REVERSE6, EMBRYONIC6,
        FLOWS, FLOWS6, LISTENERS, LISTENERS6, OWNERS, OWNERS6, REVERSE, REVERSE6, VIP_HINTS, VIPS,
        VIPS6,
    },
    parse::{FlowOf, IcmpErrorOf, Verdict},
    sys::{self, header_mut},
};

/// Which side of a packet's addresses a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Client -> target: the destination becomes the target.
    Destination,
    /// Target -> client: the source becomes the VIP.
    Source,
}

pub trait Family: Sized {
    type Addr: Copy + PartialEq + AsRef<[u8]> + 'static;
    type FlowKey: Copy + 'static;
    /// `lb_common::FAMILY_*`.
    const CODE: u8;
    /// ICMPv6's checksum covers a pseudo-header with the outer addresses; ICMPv4's does not.
    const ICMP_PSEUDO_HEADER: bool;

    fn listener(addr: Self::Addr, port: [u8; 2], proto: u8) -> Option<&'static ListenerValue>;
    /// False: certainly not a VIP (cheap). True: it may be.
    fn may_be_vip(addr: Self::Addr) -> bool;
    fn is_vip(addr: Self::Addr) -> bool;
    fn flow_key(
        src: Self::Addr,
        dst: Self::Addr,
        sport: [u8; 2],
        dport: [u8; 2],
        proto: u8,
    ) -> Self::FlowKey;
    fn flows() -> &'static LruHashMap<Self::FlowKey, FlowValue>;
    fn reverse() -> &'static LruHashMap<Self::FlowKey, ReverseValue>;
    /// The embryonic tables: TCP flows seen only as a SYN (see `maps::EMBRYONIC`).
    fn embryonic() -> &'static LruHashMap<Self::FlowKey, FlowValue>;
    fn embryonic_reverse() -> &'static LruHashMap<Self::FlowKey, ReverseValue>;
    /// The listener owning the replies of NAT target `addr:port` for `proto`, if one does
    /// (`maps::OWNERS`).
    fn owner(addr: &Self::Addr, port: [u8; 2], proto: u8) -> Option<&'static ReverseValue>;
    fn hash(src: Self::Addr, dst: Self::Addr, sport: [u8; 2], dport: [u8; 2], proto: u8) -> u32;
    /// The address in a map value's 16-byte slot, by reference: copying a 16-byte address
    /// out of map memory makes LLVM hold it byte by byte in spilled registers (128 bytes of
    /// stack for one address).
    fn of_slot(slot: &[u8; 16]) -> &Self::Addr;
    fn to_slot(a: Self::Addr) -> [u8; 16];
    /// The rule id of the deny (`allow = false`) or allow rule of listener `id` that matches
    /// `src`, if any (longest prefix).
    fn source_rule(id: u32, src: &Self::Addr, allow: bool) -> Option<u32>;
    /// The checksum difference of an address change (see `csum::delta`).
    fn delta(old: &Self::Addr, new: &Self::Addr) -> u16;
    /// The UDP checksum to write, given the one received and the one computed.
    fn udp_fixup(old: u16, computed: u16) -> u16;
    /// Write `side` of the IP header (`delta`: the address change's checksum difference) and
    /// decrement the TTL / hop limit, with the header checksum where there is one.
    fn rewrite_ip(ctx: &XdpContext, side: Side, delta: u16, new: &Self::Addr) -> Option<()>;
    /// Write `side` of the IP header quoted at `off` in an ICMP error, the address change's
    /// checksum difference being `delta`; the quoted header's own checksum change (old, new)
    /// if it has one (IPv4), for the ICMP checksum.
    fn set_quoted_addr(
        ctx: &XdpContext,
        off: usize,
        side: Side,
        delta: u16,
        new: &Self::Addr,
    ) -> Option<Option<(u16, u16)>>;
    /// The checksum difference of changing `side` of the IP header at byte `off` to `new`,
    /// read in place; 0 (no change) if there is no header there, which the caller has checked.
    fn delta_at(ctx: &XdpContext, off: usize, side: Side, new: &Self::Addr) -> u16;
    /// The source and destination of the IP header at byte `off`, in place.
    fn addrs(ctx: &XdpContext, off: usize) -> Option<(&Self::Addr, &Self::Addr)>;
    /// The packet's IP length (header included).
    fn ip_len(ctx: &XdpContext) -> Option<u16>;
    /// Ask the FIB about the packet as it is now (towards `via` if given).
    fn ask(ctx: &XdpContext, via: Option<Self::Addr>, p: &mut FibParams);
    /// An ICMP error about a `tunnel` listener's flow: into the tunnel, as the data.
    fn tunnel_icmp(
        ctx: &mut XdpContext,
        e: &IcmpErrorOf<Self>,
        target_id: u32,
        target: &TargetValue,
    ) -> Verdict;
    /// A `tunnel` listener's packet.
    fn tunnel(
        ctx: &mut XdpContext,
        f: &FlowOf<Self>,
        target_id: u32,
        target: &TargetValue,
    ) -> Verdict;
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    type Addr = [u8; 4];
    type FlowKey = FlowKey;
    const CODE: u8 = FAMILY_IPV4;
    const ICMP_PSEUDO_HEADER: bool = false;

    #[inline(always)]
    fn listener(addr: [u8; 4], port: [u8; 2], proto: u8) -> Option<&'static ListenerValue> {
        let key = ListenerKey {
            addr,
            port,
            proto,
            family: FAMILY_IPV4,
        };
        sys::value(&LISTENERS, &key)
    }

    #[inline(always)]
    fn may_be_vip(addr: [u8; 4]) -> bool {
        VIP_HINTS
            .get(lb_common::vip_hint_index(addr))
            .copied()
            .unwrap_or(0)
            != 0
    }

    #[inline(always)]
    fn is_vip(addr: [u8; 4]) -> bool {
        if !Self::may_be_vip(addr) {
            return false;
        }
        let key = VipKey {
            addr,
            family: FAMILY_IPV4,
            _pad: [0; 3],
        };
        VIPS.get_ptr(key).is_some()
    }

    #[inline(always)]
    fn flow_key(src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> FlowKey {
        FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
            family: FAMILY_IPV4,
            _pad: [0; 2],
        }
    }

    #[inline(always)]
    fn flows() -> &'static LruHashMap<FlowKey, FlowValue> {
        &FLOWS
    }

    #[inline(always)]
    fn reverse() -> &'static LruHashMap<FlowKey, ReverseValue> {
        &REVERSE
    }

    #[inline(always)]
    fn embryonic() -> &'static LruHashMap<FlowKey, FlowValue> {
        &EMBRYONIC
    }

    #[inline(always)]
    fn embryonic_reverse() -> &'static LruHashMap<FlowKey, ReverseValue> {
        &EMBRYONIC_REVERSE
    }

    #[inline(always)]
    fn owner(addr: &[u8; 4], port: [u8; 2], proto: u8) -> Option<&'static ReverseValue> {
        let key = OwnerKey {
            addr: *addr,
            port,
            proto,
            family: FAMILY_IPV4,
        };
        sys::value(&OWNERS, &key)
    }

    #[inline(always)]
    fn hash(src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> u32 {
        flow_hash_v4(src, dst, sport, dport, proto)
    }

    #[inline(always)]
    fn of_slot(slot: &[u8; 16]) -> &[u8; 4] {
        const NONE: [u8; 4] = [0; 4];
        // Always Ok (4 <= 16); no panic path.
        <&[u8; 4]>::try_from(&slot[..4]).unwrap_or(&NONE)
    }

    #[inline(always)]
    fn to_slot(a: [u8; 4]) -> [u8; 16] {
        addr_from_ipv4(a)
    }

    #[inline(always)]
    fn source_rule(id: u32, src: &[u8; 4], allow: bool) -> Option<u32> {
        let key = Key::new(64, lb_common::rule_key::<8>(id, src));
        let trie = if allow { &ALLOW4 } else { &DENY4 };
        trie.get(&key).copied()
    }

    #[inline(always)]
    fn delta(old: &[u8; 4], new: &[u8; 4]) -> u16 {
        csum::delta(old, new)
    }

    #[inline(always)]
    fn udp_fixup(old: u16, computed: u16) -> u16 {
        csum::udp_fixup(old, computed)
    }

    #[inline(always)]
    fn rewrite_ip(ctx: &XdpContext, side: Side, delta: u16, new: &[u8; 4]) -> Option<()> {
        let ip = header_mut::<Ipv4>(ctx, ETH_LEN)?;
        let ttl_word = u16::from_be_bytes([ip.ttl, ip.proto]);
        let ttl = ip.ttl.saturating_sub(1);
        let mut check = csum::apply(u16::from_be_bytes(ip.check), delta);
        check = csum::replace16(check, ttl_word, u16::from_be_bytes([ttl, ip.proto]));
        ip.check = check.to_be_bytes();
        ip.ttl = ttl;
        match side {
            Side::Destination => ip.dst = *new,
            Side::Source => ip.src = *new,
        }
        Some(())
    }

    #[inline(always)]
    fn set_quoted_addr(
        ctx: &XdpContext,
        off: usize,
        side: Side,
        delta: u16,
        new: &[u8; 4],
    ) -> Option<Option<(u16, u16)>> {
        let inner = header_mut::<Ipv4>(ctx, off)?;
        let old_check = u16::from_be_bytes(inner.check);
        let new_check = csum::apply(old_check, delta);
        inner.check = new_check.to_be_bytes();
        match side {
            Side::Source => inner.src = *new,
            Side::Destination => inner.dst = *new,
        }
        Some(Some((old_check, new_check)))
    }

    #[inline(always)]
    fn delta_at(ctx: &XdpContext, off: usize, side: Side, new: &[u8; 4]) -> u16 {
        match Self::addrs(ctx, off) {
            Some((src, dst)) => csum::delta(if side == Side::Source { src } else { dst }, new),
            None => 0,
        }
    }

    #[inline(always)]
    fn addrs(ctx: &XdpContext, off: usize) -> Option<(&[u8; 4], &[u8; 4])> {
        let ip = header_mut::<Ipv4>(ctx, off)?;
        Some((&ip.src, &ip.dst))
    }

    #[inline(always)]
    fn ip_len(ctx: &XdpContext) -> Option<u16> {
        header_mut::<Ipv4>(ctx, ETH_LEN).map(|ip| u16::from_be_bytes(ip.tot_len))
    }

    #[inline(always)]
    fn ask(ctx: &XdpContext, via: Option<[u8; 4]>, p: &mut FibParams) {
        if let Some(ip) = header_mut::<Ipv4>(ctx, ETH_LEN) {
            forward::ask_v4(p, ip.src, via.unwrap_or(ip.dst), ip.proto, ip.tos);
        }
    }

    #[inline(always)]
    fn tunnel(ctx: &mut XdpContext, f: &FlowOf<V4>, target_id: u32, t: &TargetValue) -> Verdict {
        encap::tunnel(ctx, f, target_id, t)
    }

    /// The whole error goes into the tunnel, as a flow of protocol ICMP would.
    #[inline(always)]
    fn tunnel_icmp(
        ctx: &mut XdpContext,
        e: &IcmpErrorOf<V4>,
        target_id: u32,
        t: &TargetValue,
    ) -> Verdict {
        let Some((src, dst)) = Self::addrs(ctx, ETH_LEN) else {
            return Verdict::drop(Stat::DropL4Truncated);
        };
        let f = FlowOf::<V4> {
            src: *src,
            dst: *dst,
            sport: [0; 2],
            dport: [0; 2],
            proto: PROTO_ICMP,
            tcp_flags: 0,
            ttl: e.ttl,
            has_options: false,
            l4_off: e.icmp_off,
        };
        encap::tunnel(ctx, &f, target_id, t)
    }
}

impl Family for V6 {
    type Addr = [u8; 16];
    type FlowKey = FlowKey6;
    const CODE: u8 = FAMILY_IPV6;
    const ICMP_PSEUDO_HEADER: bool = true;

    #[inline(always)]
    fn listener(addr: [u8; 16], port: [u8; 2], proto: u8) -> Option<&'static ListenerValue> {
        let key = ListenerKey6 {
            addr,
            port,
            proto,
            family: FAMILY_IPV6,
        };
        sys::value(&LISTENERS6, &key)
    }

    /// No pre-filter array for IPv6: the port filter comes first, then the hash lookup.
    #[inline(always)]
    fn may_be_vip(_addr: [u8; 16]) -> bool {
        true
    }

    #[inline(always)]
    fn is_vip(addr: [u8; 16]) -> bool {
        VIPS6.get_ptr(VipKey6 { addr }).is_some()
    }

    #[inline(always)]
    fn flow_key(
        src: [u8; 16],
        dst: [u8; 16],
        sport: [u8; 2],
        dport: [u8; 2],
        proto: u8,
    ) -> FlowKey6 {
        FlowKey6 {
            src,
            dst,
            sport,
            dport,
            proto,
            family: FAMILY_IPV6,
            _pad: [0; 2],
        }
    }

    #[inline(always)]
    fn flows() -> &'static LruHashMap<FlowKey6, FlowValue> {
        &FLOWS6
    }

    #[inline(always)]
    fn reverse() -> &'static LruHashMap<FlowKey6, ReverseValue> {
        &REVERSE6
    }

    #[inline(always)]
    fn embryonic() -> &'static LruHashMap<FlowKey6, FlowValue> {
        &EMBRYONIC6
    }

    #[inline(always)]
    fn embryonic_reverse() -> &'static LruHashMap<FlowKey6, ReverseValue> {
        &EMBRYONIC_REVERSE6
    }

    #[inline(always)]
    fn owner(addr: &[u8; 16], port: [u8; 2], proto: u8) -> Option<&'static ReverseValue> {
        let key = OwnerKey6 {
            addr: *addr,
            port,
            proto,
            family: FAMILY_IPV6,
        };
        sys::value(&OWNERS6, &key)
    }

    #[inline(always)]
    fn hash(src: [u8; 16], dst: [u8; 16], sport: [u8; 2], dport: [u8; 2], proto: u8) -> u32 {
        flow_hash_v6(src, dst, sport, dport, proto)
    }

    #[inline(always)]
    fn of_slot(slot: &[u8; 16]) -> &[u8; 16] {
        slot
    }

    #[inline(always)]
    fn to_slot(a: [u8; 16]) -> [u8; 16] {
        a
    }

    #[inline(always)]
    fn source_rule(id: u32, src: &[u8; 16], allow: bool) -> Option<u32> {
        let key = Key::new(160, lb_common::rule_key::<20>(id, src));
        let trie = if allow { &ALLOW6 } else { &DENY6 };
        trie.get(&key).copied()
    }

    #[inline(always)]
    fn delta(old: &[u8; 16], new: &[u8; 16]) -> u16 {
        csum::delta(old, new)
    }

    #[inline(always)]
    fn udp_fixup(_old: u16, computed: u16) -> u16 {
        csum::udp6_fixup(computed)
    }

    /// IPv6 has no header checksum: the addresses and the hop limit are written as they are.
    #[inline(always)]
    fn rewrite_ip(ctx: &XdpContext, side: Side, _delta: u16, new: &[u8; 16]) -> Option<()> {
        let ip = header_mut::<Ipv6>(ctx, ETH_LEN)?;
        ip.hop_limit = ip.hop_limit.saturating_sub(1);
        match side {
            Side::Destination => ip.dst = *new,
            Side::Source => ip.src = *new,
        }
        Some(())
    }

    /// The quoted IPv6 header has no checksum of its own.
    #[inline(always)]
    fn set_quoted_addr(
        ctx: &XdpContext,
        off: usize,
        side: Side,
        _delta: u16,
        new: &[u8; 16],
    ) -> Option<Option<(u16, u16)>> {
        let inner = header_mut::<Ipv6>(ctx, off)?;
        match side {
            Side::Source => inner.src = *new,
            Side::Destination => inner.dst = *new,
        }
        Some(None)
    }

    /// Read in place with volatile loads (see `sys::packet_delta`).
    #[inline(always)]
    fn delta_at(ctx: &XdpContext, off: usize, side: Side, new: &[u8; 16]) -> u16 {
        let field = if side == Side::Source { 8 } else { 24 };
        sys::packet_delta(ctx, off + field, new).unwrap_or(0)
    }

    #[inline(always)]
    fn addrs(ctx: &XdpContext, off: usize) -> Option<(&[u8; 16], &[u8; 16])> {
        let ip = header_mut::<Ipv6>(ctx, off)?;
        Some((&ip.src, &ip.dst))
    }

    #[inline(always)]
    fn ip_len(ctx: &XdpContext) -> Option<u16> {
        header_mut::<Ipv6>(ctx, ETH_LEN)
            .map(|ip| u16::from_be_bytes(ip.payload_len).saturating_add(IPV6_LEN as u16))
    }

    #[inline(always)]
    fn ask(ctx: &XdpContext, via: Option<[u8; 16]>, p: &mut FibParams) {
        if let Some(ip) = header_mut::<Ipv6>(ctx, ETH_LEN) {
            let dst = match &via {
                Some(v) => v,
                None => &ip.dst,
            };
            forward::ask_v6(p, &ip.src, dst, ip.next);
        }
    }

    /// The whole error goes into the tunnel, as a flow of protocol ICMPv6 would.
    #[inline(always)]
    fn tunnel_icmp(
        ctx: &mut XdpContext,
        e: &IcmpErrorOf<V6>,
        target_id: u32,
        t: &TargetValue,
    ) -> Verdict {
        let Some((src, dst)) = Self::addrs(ctx, ETH_LEN) else {
            return Verdict::drop(Stat::DropL4Truncated);
        };
        let f = FlowOf::<V6> {
            src: *src,
            dst: *dst,
            sport: [0; 2],
            dport: [0; 2],
            proto: lb_common::PROTO_ICMPV6,
            tcp_flags: 0,
            ttl: e.ttl,
            has_options: false,
            l4_off: e.icmp_off,
        };
        Self::tunnel(ctx, &f, target_id, t)
    }

    /// IPv6-in-IPv6 to an IPv6 target (the config refuses IPv4 targets for IPv6 VIPs in
    /// tunnel mode: IPv6-in-IPv4 is not built).
    #[inline(always)]
    fn tunnel(ctx: &mut XdpContext, f: &FlowOf<V6>, target_id: u32, t: &TargetValue) -> Verdict {
        let _ = f;
        if t.family != FAMILY_IPV6 {
            return Verdict::drop(Stat::DropEncapFailed);
        }
        encap::to_tunnel6(ctx, target_id)
    }
}
