//! ICMP and ICMPv6 errors about balanced flows, and echo answers. A router on the client's path
//! that cannot forward a target's reply ("fragmentation needed" / "packet too big",
//! unreachable, time exceeded) sends its error to the
//! reply's source: the VIP. The quoted packet names the flow (VIP:port -> client:port), so the
//! error is looked up in the connection table and sent on to that flow's target, translated
//! for NAT (outer destination, quoted source and every checksum that covers them), so the
//! target's path-MTU discovery works. Errors about no known flow are dropped, counted.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{MODE_DSR, MODE_TUNNEL, PROTO_TCP, PROTO_UDP, SETTING_ICMP_ECHO, Stat, csum};

use crate::{
    balance,
    family::{Family, Side, V4, V6},
    forward::{self, Cache},
    hdr::{
        ETH_LEN, Eth, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST,
        Icmp, Ipv4, Ipv6, Tcp, Udp,
    },
    maps::SETTINGS,
    parse::{IcmpErrorOf, Verdict},
    stats, sys,
    sys::header_mut,
};

#[inline(always)]
pub fn to_target<F: Family>(ctx: &mut XdpContext, e: &IcmpErrorOf<F>) -> Verdict {
    let Some((_, dst)) = F::addrs(ctx, ETH_LEN) else {
        return Verdict::drop(Stat::DropIcmpNoFlow);
    };
    if !F::is_vip(*dst) {
        return from_target(ctx, e);
    }
    let Some((inner_src, inner_dst)) = F::addrs(ctx, e.inner_off) else {
        return Verdict::drop(Stat::DropIcmpNoFlow);
    };
    // The quoted packet went VIP -> client; its flow is keyed client -> VIP.
    let key = F::flow_key(
        *inner_dst,
        *inner_src,
        e.inner_dport,
        e.inner_sport,
        e.inner_proto,
    );
    // A flow still embryonic (seen only as a SYN) is a flow too.
    let Some(entry) =
        sys::lru_value(F::flows(), &key).or_else(|| sys::lru_value(F::embryonic(), &key))
    else {
        return Verdict::drop(Stat::DropIcmpNoFlow);
    };
    let target_id = entry.target_id;
    let (Some(target), Some(l)) = (
        balance::active_target(target_id),
        F::listener(*inner_src, e.inner_sport, e.inner_proto),
    ) else {
        return Verdict::drop(Stat::DropIcmpNoFlow);
    };
    if e.ttl <= 1 {
        return Verdict::pass(Stat::PassTtlExceeded);
    }
    stats::count(Stat::EvIcmpToTarget);
    let addr = F::of_slot(&target.addr);
    match l.mode {
        MODE_DSR => forward::forward::<F>(ctx, Some(Cache::Target(target_id)), Some(*addr)),
        MODE_TUNNEL => F::tunnel_icmp(ctx, e, target_id, &target),
        _ => match translate(ctx, e, addr, target.port) {
            Some(()) => forward::forward::<F>(ctx, Some(Cache::Target(target_id)), None),
            None => Verdict::drop(Stat::DropIcmpNoFlow),
        },
    }
}

/// An ICMP error a NAT target sends about a balanced flow (e.g. "port unreachable" for UDP)
/// quotes the request as the target got it (client -> target:port); the client must see it
/// from the VIP, quoting VIP:vport. Anything else passes.
#[inline(always)]
fn from_target<F: Family>(ctx: &XdpContext, e: &IcmpErrorOf<F>) -> Verdict {
    if !balance::is_target_port(e.inner_dport) {
        return Verdict::pass(Stat::PassNotListener);
    }
    let Some((inner_src, inner_dst)) = F::addrs(ctx, e.inner_off) else {
        return Verdict::pass(Stat::PassNotListener);
    };
    // The reply direction of the quoted request: target:port -> client:port.
    let Some(r) = balance::reply_to::<F>(
        inner_dst,
        e.inner_dport,
        inner_src,
        e.inner_sport,
        e.inner_proto,
    ) else {
        return Verdict::pass(Stat::PassNotListener);
    };
    if e.ttl <= 1 {
        return Verdict::pass(Stat::PassTtlExceeded);
    }
    let vip = F::of_slot(&r.vip);
    let quoted = F::delta_at(ctx, e.inner_off, Side::Destination, vip);
    let outer = F::delta_at(ctx, ETH_LEN, Side::Source, vip);
    if rewrite_quoted(ctx, e, Side::Destination, quoted, vip, r.vport)
        .and_then(|()| rewrite_outer(ctx, e, Side::Source, outer, vip))
        .is_none()
    {
        return Verdict::drop(Stat::DropIcmpNoFlow);
    }
    stats::count(Stat::EvIcmpToClient);
    forward::forward::<F>(ctx, None, None)
}

/// NAT: the error goes to the target as if the target's own packet had been refused: outer
/// destination VIP -> target, quoted source VIP:vport -> target:port, TTL (hop limit) - 1, and
/// every checksum that covers them updated. Both checksum differences are taken before the
/// first write.
#[inline(always)]
fn translate<F: Family>(
    ctx: &XdpContext,
    e: &IcmpErrorOf<F>,
    addr: &F::Addr,
    port: [u8; 2],
) -> Option<()> {
    let outer = F::delta_at(ctx, ETH_LEN, Side::Destination, addr);
    let quoted = F::delta_at(ctx, e.inner_off, Side::Source, addr);
    rewrite_quoted(ctx, e, Side::Source, quoted, addr, port)?;
    rewrite_outer(ctx, e, Side::Destination, outer, addr)
}

/// Rewrite one side of the quoted packet to `new:new_port` (`delta`: the address change's
/// checksum difference): the quoted IP header (and its checksum, IPv4), the port, the quoted
/// UDP (or TCP, when quoted that far) checksum, and the ICMP checksum over all of it.
#[inline(always)]
fn rewrite_quoted<F: Family>(
    ctx: &XdpContext,
    e: &IcmpErrorOf<F>,
    side: Side,
    delta: u16,
    new: &F::Addr,
    new_port: [u8; 2],
) -> Option<()> {
    let is_udp = match e.inner_proto {
        PROTO_UDP => true,
        PROTO_TCP => false,
        _ => return None,
    };
    let old_port = match side {
        Side::Source => e.inner_sport,
        Side::Destination => e.inner_dport,
    };
    let (op, np) = (u16::from_be_bytes(old_port), u16::from_be_bytes(new_port));
    // The quoted transport checksum, if it is inside the quote: the pseudo-header has both
    // addresses, the header both ports.
    let old_l4 = if is_udp {
        match header_mut::<Udp>(ctx, e.inner_l4_off) {
            Some(u) => Some(u16::from_be_bytes(u.check)),
            None => None,
        }
    } else {
        match header_mut::<Tcp>(ctx, e.inner_l4_off) {
            Some(t) => Some(u16::from_be_bytes(t.check)),
            None => None,
        }
    };
    let header_check = F::set_quoted_addr(ctx, e.inner_off, side, delta, new)?;
    // The quoted ports (the first bytes of TCP and UDP alike) and the quoted checksum.
    let ports = header_mut::<Udp>(ctx, e.inner_l4_off)?;
    match side {
        Side::Source => ports.src = new_port,
        Side::Destination => ports.dst = new_port,
    }
    let icmp = header_mut::<Icmp>(ctx, e.icmp_off)?;
    let mut c = u16::from_be_bytes(icmp.check);
    if let Some(o) = old_l4 {
        let n = csum::replace16(csum::apply(o, delta), op, np);
        let n = if is_udp { F::udp_fixup(o, n) } else { n };
        if is_udp {
            header_mut::<Udp>(ctx, e.inner_l4_off)?.check = n.to_be_bytes();
        } else {
            header_mut::<Tcp>(ctx, e.inner_l4_off)?.check = n.to_be_bytes();
        }
        // ICMP covers the quoted checksum too.
        c = csum::replace16(c, o, n);
    }
    c = csum::apply(c, delta);
    if let Some((o, n)) = header_check {
        c = csum::replace16(c, o, n);
    }
    icmp.check = csum::replace16(c, op, np).to_be_bytes();
    Some(())
}

/// Rewrite the outer header's `side` to `new` (`delta`: the checksum difference),
/// decrementing the TTL (hop limit). ICMPv6's checksum covers the outer addresses too (its
/// pseudo-header).
#[inline(always)]
fn rewrite_outer<F: Family>(
    ctx: &XdpContext,
    e: &IcmpErrorOf<F>,
    side: Side,
    delta: u16,
    new: &F::Addr,
) -> Option<()> {
    F::rewrite_ip(ctx, side, delta, new)?;
    if F::ICMP_PSEUDO_HEADER {
        let icmp = header_mut::<Icmp>(ctx, e.icmp_off)?;
        icmp.check = csum::apply(u16::from_be_bytes(icmp.check), delta).to_be_bytes();
    }
    Some(())
}

/// TTL (hop limit) of echo replies.
const ECHO_TTL: u8 = 64;

/// An echo request to a VIP is answered here, in place (addresses and MACs swapped, type 0),
/// unless `icmp_echo = false`. Requests to other addresses pass to the kernel.
#[inline(always)]
pub fn echo(ctx: &XdpContext, dst: [u8; 4], icmp_off: usize) -> Verdict {
    echo_of::<V4>(dst, || answer_echo(ctx, icmp_off))
}

/// ICMPv6 echo requests to a VIP, as [`echo`] (type 128 -> 129).
#[inline(always)]
pub fn echo6(ctx: &XdpContext, dst: [u8; 16], icmp_off: usize) -> Verdict {
    echo_of::<V6>(dst, || answer_echo6(ctx, icmp_off))
}

#[inline(always)]
fn echo_of<F: Family>(dst: F::Addr, answer: impl FnOnce() -> Option<()>) -> Verdict {
    if !F::is_vip(dst) {
        return Verdict::pass(Stat::PassNotListener);
    }
    let on = SETTINGS
        .get(0)
        .is_some_and(|s| s.flags & SETTING_ICMP_ECHO != 0);
    if !on {
        return Verdict::drop(Stat::DropVipNoListener);
    }
    match answer() {
        Some(()) => Verdict {
            action: xdp_action::XDP_TX,
            stat: Stat::TxIcmpEcho,
        },
        None => Verdict::drop(Stat::DropL4Truncated),
    }
}

/// Type `request` becomes `reply` in the ICMP header at `icmp_off`, checksum updated.
#[inline(always)]
fn echo_type(ctx: &XdpContext, icmp_off: usize, request: u8, reply: u8) -> Option<()> {
    let icmp = header_mut::<Icmp>(ctx, icmp_off)?;
    icmp.kind = reply;
    icmp.check = csum::replace16(
        u16::from_be_bytes(icmp.check),
        u16::from(request) << 8,
        u16::from(reply) << 8,
    )
    .to_be_bytes();
    Some(())
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Option<()> {
    let eth = header_mut::<Eth>(ctx, 0)?;
    core::mem::swap(&mut eth.src, &mut eth.dst);
    Some(())
}

/// The ICMPv6 checksum covers a pseudo-header with both addresses: swapping them keeps its
/// sum, so only the type word changes it. The hop limit is not covered.
#[inline(always)]
fn answer_echo6(ctx: &XdpContext, icmp_off: usize) -> Option<()> {
    header_mut::<Ipv6>(ctx, ETH_LEN)?;
    echo_type(ctx, icmp_off, ICMP6_ECHO_REQUEST, ICMP6_ECHO_REPLY)?;
    let ip = header_mut::<Ipv6>(ctx, ETH_LEN)?;
    core::mem::swap(&mut ip.src, &mut ip.dst);
    ip.hop_limit = ECHO_TTL;
    swap_macs(ctx)
}

#[inline(always)]
fn answer_echo(ctx: &XdpContext, icmp_off: usize) -> Option<()> {
    header_mut::<Ipv4>(ctx, ETH_LEN)?;
    echo_type(ctx, icmp_off, ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)?;
    let ip = header_mut::<Ipv4>(ctx, ETH_LEN)?;
    core::mem::swap(&mut ip.src, &mut ip.dst);
    let ttl_word = u16::from_be_bytes([ip.ttl, ip.proto]);
    ip.check = csum::replace16(
        u16::from_be_bytes(ip.check),
        ttl_word,
        u16::from_be_bytes([ECHO_TTL, ip.proto]),
    )
    .to_be_bytes();
    ip.ttl = ECHO_TTL;
    swap_macs(ctx)
}
