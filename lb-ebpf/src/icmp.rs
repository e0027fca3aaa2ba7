//! ICMP errors about balanced flows. A router on the client's path that cannot forward a
//! target's reply ("fragmentation needed", unreachable, time exceeded) sends its error to the
//! reply's source: the VIP. The quoted packet names the flow (VIP:port -> client:port), so the
//! error is looked up in the connection table and sent on to that flow's target, translated
//! for NAT (outer destination, quoted source and every checksum that covers them), so the
//! target's path-MTU discovery works. Errors about no known flow are dropped, counted.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    FAMILY_IPV4, FlowKey, MODE_DSR, MODE_TUNNEL, PROTO_TCP, PROTO_UDP, SETTING_ICMP_ECHO, Stat,
    csum, ipv4_of,
};

use crate::{
    balance, encap,
    family::{Family, V4, V6},
    forward,
    hdr::{
        ETH_LEN, Eth, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST,
        Icmp, Ipv4, Ipv6, Tcp, Udp,
    },
    maps::{FLOWS, SETTINGS},
    parse::{Flow, IcmpError, Verdict},
    stats, sys,
    sys::header_mut,
};

#[inline(always)]
pub fn to_target(ctx: &mut XdpContext, e: &IcmpError) -> Verdict {
    if !balance::is_vip(e.dst) {
        return from_target(ctx, e);
    }
    // The quoted packet went VIP -> client; its flow is keyed client -> VIP.
    let key = FlowKey {
        src: e.inner_dst,
        dst: e.inner_src,
        sport: e.inner_dport,
        dport: e.inner_sport,
        proto: e.inner_proto,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    };
    let Some(entry) = sys::lru_value(&FLOWS, &key) else {
        return Verdict::drop(Stat::DropIcmpNoFlow);
    };
    let target_id = entry.target_id;
    let (Some(target), Some(l)) = (
        balance::active_target(target_id),
        balance::listener_at(e.inner_src, e.inner_sport, e.inner_proto),
    ) else {
        return Verdict::drop(Stat::DropIcmpNoFlow);
    };
    if e.ttl <= 1 {
        return Verdict::pass(Stat::PassTtlExceeded);
    }
    stats::count(Stat::EvIcmpToTarget);
    let addr = ipv4_of(&target.addr);
    match l.mode {
        MODE_DSR => forward::forward::<V4>(ctx, Some(target_id), Some(addr)),
        MODE_TUNNEL => {
            // The whole error goes into the tunnel, as the data does.
            let f = Flow {
                src: e.src,
                dst: e.dst,
                sport: [0; 2],
                dport: [0; 2],
                proto: lb_common::PROTO_ICMP,
                tcp_flags: 0,
                ttl: e.ttl,
                has_options: false,
                l4_off: e.icmp_off,
            };
            encap::tunnel(ctx, &f, target_id, &target)
        }
        _ => match translate(ctx, e, addr, target.port) {
            Some(()) => forward::forward::<V4>(ctx, Some(target_id), None),
            None => Verdict::drop(Stat::DropIcmpNoFlow),
        },
    }
}

/// An ICMP error a NAT target sends about a balanced flow (e.g. "port unreachable" for UDP)
/// quotes the request as the target got it (client -> target:port); the client must see it
/// from the VIP, quoting VIP:vport. Anything else passes.
#[inline(always)]
fn from_target(ctx: &XdpContext, e: &IcmpError) -> Verdict {
    if !balance::is_target_port(e.inner_dport) {
        return Verdict::pass(Stat::PassNotListener);
    }
    // The reply direction of the quoted request: target:port -> client:port.
    let Some(r) = balance::reply_of(
        e.inner_dst,
        e.inner_dport,
        e.inner_src,
        e.inner_sport,
        e.inner_proto,
    ) else {
        return Verdict::pass(Stat::PassNotListener);
    };
    if e.ttl <= 1 {
        return Verdict::pass(Stat::PassTtlExceeded);
    }
    let vip = ipv4_of(&r.vip);
    if rewrite_quoted(
        ctx,
        e,
        Quoted::Destination,
        e.inner_dst,
        vip,
        e.inner_dport,
        r.vport,
    )
    .and_then(|()| rewrite_outer(ctx, Quoted::Source, e.src, vip))
    .is_none()
    {
        return Verdict::drop(Stat::DropIcmpNoFlow);
    }
    stats::count(Stat::EvIcmpToClient);
    forward::forward::<V4>(ctx, None, None)
}

/// Which side of the quoted packet (and of the outer header) a translation changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoted {
    Source,
    Destination,
}

/// NAT: the error goes to the target as if the target's own packet had been refused: outer
/// destination VIP -> target, quoted source VIP:vport -> target:port, TTL - 1, and the outer
/// IPv4, quoted IPv4, quoted UDP (or TCP, when quoted that far) and ICMP checksums updated.
#[inline(always)]
fn translate(ctx: &XdpContext, e: &IcmpError, addr: [u8; 4], port: [u8; 2]) -> Option<()> {
    rewrite_quoted(
        ctx,
        e,
        Quoted::Source,
        e.inner_src,
        addr,
        e.inner_sport,
        port,
    )?;
    rewrite_outer(ctx, Quoted::Destination, e.dst, addr)
}

/// Rewrite one side of the quoted packet from `old:old_port` to `new:new_port`: the quoted
/// IPv4 header and its checksum, the port, the quoted UDP (or TCP, when quoted that far)
/// checksum, and the ICMP checksum over all of it.
#[inline(always)]
fn rewrite_quoted(
    ctx: &XdpContext,
    e: &IcmpError,
    side: Quoted,
    old: [u8; 4],
    new: [u8; 4],
    old_port: [u8; 2],
    new_port: [u8; 2],
) -> Option<()> {
    let (op, np) = (u16::from_be_bytes(old_port), u16::from_be_bytes(new_port));
    let is_udp = match e.inner_proto {
        PROTO_UDP => true,
        PROTO_TCP => false,
        _ => return None,
    };
    // The quoted transport checksum, if it is inside the quote: the pseudo-header has both
    // addresses, the header both ports.
    let old_l4 = if is_udp {
        header_mut::<Udp>(ctx, e.inner_l4_off).map(|u| u16::from_be_bytes(u.check))
    } else {
        header_mut::<Tcp>(ctx, e.inner_l4_off).map(|t| u16::from_be_bytes(t.check))
    };
    let new_l4 = old_l4.map(|c| {
        let n = csum::replace16(csum::replace32(c, old, new), op, np);
        if is_udp { csum::udp_fixup(c, n) } else { n }
    });

    let inner = header_mut::<Ipv4>(ctx, e.inner_off)?;
    let old_inner_check = u16::from_be_bytes(inner.check);
    let new_inner_check = csum::replace32(old_inner_check, old, new);
    inner.check = new_inner_check.to_be_bytes();
    match side {
        Quoted::Source => inner.src = new,
        Quoted::Destination => inner.dst = new,
    }
    // The quoted ports (the first bytes of TCP and UDP alike) and the quoted checksum.
    let ports = header_mut::<Udp>(ctx, e.inner_l4_off)?;
    match side {
        Quoted::Source => ports.src = new_port,
        Quoted::Destination => ports.dst = new_port,
    }
    if let (Some(o), Some(n)) = (old_l4, new_l4) {
        if is_udp {
            header_mut::<Udp>(ctx, e.inner_l4_off)?.check = n.to_be_bytes();
        } else {
            header_mut::<Tcp>(ctx, e.inner_l4_off)?.check = n.to_be_bytes();
        }
        // ICMP covers the quoted checksum too.
        fix_icmp(ctx, e, |c| csum::replace16(c, o, n))?;
    }
    fix_icmp(ctx, e, |c| {
        let c = csum::replace32(c, old, new);
        let c = csum::replace16(c, old_inner_check, new_inner_check);
        csum::replace16(c, op, np)
    })
}

/// Rewrite the outer header's `side` from `old` to `new`, decrementing the TTL.
#[inline(always)]
fn rewrite_outer(ctx: &XdpContext, side: Quoted, old: [u8; 4], new: [u8; 4]) -> Option<()> {
    let ip = header_mut::<Ipv4>(ctx, ETH_LEN)?;
    let ttl_word = u16::from_be_bytes([ip.ttl, ip.proto]);
    let ttl = ip.ttl.saturating_sub(1);
    let mut check = csum::replace32(u16::from_be_bytes(ip.check), old, new);
    check = csum::replace16(check, ttl_word, u16::from_be_bytes([ttl, ip.proto]));
    ip.check = check.to_be_bytes();
    ip.ttl = ttl;
    match side {
        Quoted::Source => ip.src = new,
        Quoted::Destination => ip.dst = new,
    }
    Some(())
}

#[inline(always)]
fn fix_icmp(ctx: &XdpContext, e: &IcmpError, f: impl FnOnce(u16) -> u16) -> Option<()> {
    let icmp = header_mut::<Icmp>(ctx, e.icmp_off)?;
    icmp.check = f(u16::from_be_bytes(icmp.check)).to_be_bytes();
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
