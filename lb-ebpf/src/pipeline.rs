//! The pipeline, stage by stage. Returns the action and the one counter that explains it.
//! IPv4 and IPv6 share the balancing stages (generic over [`Family`]); parsing and ICMP are
//! per family.
use aya_ebpf::programs::XdpContext;
use lb_common::{
    LISTENER_HAS_ALLOW, LISTENER_HAS_DENY, MODE_DSR, MODE_TUNNEL, Stat, TAIL_ICMP6, TAIL_IPV6,
};

use crate::{
    balance,
    family::{Family, V4, V6},
    forward::{self, Cache},
    icmp,
    maps::TAIL_CALLS,
    nat::{self, Side},
    parse::{self, FlowOf, Parsed, Parsed6, ParsedIcmp6, Verdict},
    stats::{self, Dir},
    sys,
};

#[inline(always)]
pub fn run(ctx: &mut XdpContext) -> (u32, Stat) {
    let v = match parse::parse(ctx) {
        Parsed::Done(v) => v,
        Parsed::Defect {
            dst,
            if_vip,
            otherwise,
        } => defect::<V4>(dst, if_vip, otherwise),
        Parsed::Flow(f) => flow(ctx, &f),
        Parsed::IcmpError(e) => icmp::to_target(ctx, &e),
        Parsed::Echo { dst, icmp_off } => icmp::echo(ctx, dst, icmp_off),
        Parsed::Ipv6 => {
            sys::tail_call(ctx, &TAIL_CALLS, TAIL_IPV6);
            Verdict::pass(Stat::PassIpv6NoProgram)
        }
    };
    (v.action, v.stat)
}

/// The IPv6 program's pipeline (`xlb6`, reached by a tail call from `xlb`).
#[inline(always)]
pub fn run6(ctx: &mut XdpContext) -> (u32, Stat) {
    let v = ipv6(ctx);
    (v.action, v.stat)
}

/// ICMPv6 errors (`xlb6_icmp`, reached by a tail call from `xlb6`).
#[inline(always)]
pub fn run6_icmp(ctx: &mut XdpContext) -> (u32, Stat) {
    let v = match parse::parse6_icmp_error(ctx) {
        ParsedIcmp6::Error(e) => icmp::to_target(ctx, &e),
        ParsedIcmp6::Defect {
            dst,
            if_vip,
            otherwise,
        } => defect::<V6>(dst, if_vip, otherwise),
        ParsedIcmp6::Done(v) => v,
    };
    (v.action, v.stat)
}

#[inline(always)]
fn ipv6(ctx: &mut XdpContext) -> Verdict {
    match parse::parse6(ctx) {
        Parsed6::Done(v) => v,
        Parsed6::Defect {
            dst,
            if_vip,
            otherwise,
        } => defect::<V6>(dst, if_vip, otherwise),
        Parsed6::Flow(f) => flow(ctx, &f),
        Parsed6::IcmpError => {
            sys::tail_call(ctx, &TAIL_CALLS, TAIL_ICMP6);
            Verdict::pass(Stat::PassIpv6NoProgram)
        }
        Parsed6::Echo { dst, icmp_off } => icmp::echo6(ctx, dst, icmp_off),
    }
}

/// Traffic for the balancer is dropped by a named reason; anything else passes untouched.
#[inline(always)]
fn defect<F: Family>(dst: F::Addr, if_vip: Stat, otherwise: Stat) -> Verdict {
    if F::is_vip(dst) {
        Verdict::drop(if_vip)
    } else {
        Verdict::pass(otherwise)
    }
}

#[inline(always)]
fn flow<F: Family>(ctx: &mut XdpContext, f: &FlowOf<F>) -> Verdict {
    // One pre-filter read for both questions below: a destination that cannot be a VIP needs
    // neither the listener lookup nor the VIP lookup of the verdict.
    let may_be_vip = F::may_be_vip(f.dst);
    if may_be_vip
        && balance::maybe_listener_port(f)
        && let Some(l) = balance::listener(f)
    {
        return to_target(ctx, f, l);
    }
    if balance::maybe_reply(f)
        && let Some(r) = balance::reply(f)
    {
        if f.ttl <= 1 {
            return Verdict::pass(Stat::PassTtlExceeded);
        }
        let bytes = sys::packet_len(ctx);
        if nat::rewrite(ctx, f, Side::Source, *F::of_slot(&r.vip), r.vport).is_none() {
            return Verdict::drop(Stat::DropL4Truncated);
        }
        stats::traffic(r.listener_id, r.target_id, Dir::Reply, bytes);
        return forward::forward::<F>(ctx, Some(Cache::client::<F>(f.dst)), None);
    }
    if !may_be_vip {
        return Verdict::pass(Stat::PassNotListener);
    }
    defect::<F>(f.dst, Stat::DropVipNoListener, Stat::PassNotListener)
}

/// The verdict of the listener's source rules, if they refuse `src`: a deny rule matches
/// (deny wins), or there are allow rules and none matches. Counted per rule.
#[inline(always)]
fn source_rules<F: Family>(l: &lb_common::ListenerValue, src: &F::Addr) -> Option<Verdict> {
    if l.flags & LISTENER_HAS_DENY != 0
        && let Some(rule) = F::source_rule(l.id, src, false)
    {
        stats::rule(rule);
        return Some(Verdict::drop(Stat::DropSourceDenied));
    }
    if l.flags & LISTENER_HAS_ALLOW != 0 {
        match F::source_rule(l.id, src, true) {
            Some(rule) => stats::rule(rule),
            None => {
                stats::rule(lb_common::not_allowed_slot(l.id));
                return Some(Verdict::drop(Stat::DropSourceNotAllowed));
            }
        }
    }
    None
}

#[inline(always)]
fn to_target<F: Family>(
    ctx: &mut XdpContext,
    f: &FlowOf<F>,
    l: &lb_common::ListenerValue,
) -> Verdict {
    // Source rules first, before any connection state (and on every packet: a source that
    // becomes denied loses its established flows too).
    if l.flags & (LISTENER_HAS_DENY | LISTENER_HAS_ALLOW) != 0
        && let Some(v) = source_rules::<F>(l, &f.src)
    {
        return v;
    }
    // NAT decrements the TTL as a router does; DSR and tunnel leave the client's packet as it is.
    let nat = l.mode != MODE_DSR && l.mode != MODE_TUNNEL;
    if nat && f.ttl <= 1 {
        return Verdict::pass(Stat::PassTtlExceeded);
    }
    let pick = match balance::pick(f, l) {
        Ok(p) => p,
        Err(v) => return v,
    };
    if f.has_options {
        stats::count(Stat::EvIpv4Options);
    }
    let bytes = sys::packet_len(ctx);
    let addr = *F::of_slot(&pick.target.addr);
    stats::traffic(
        l.id,
        pick.target_id,
        Dir::ToTarget {
            new_flow: pick.new_flow,
        },
        bytes,
    );
    match l.mode {
        // Same IP packet, the target's MAC: the FIB is asked for the target, not the VIP.
        MODE_DSR => forward::forward::<F>(ctx, Some(Cache::Target(pick.target_id)), Some(addr)),
        MODE_TUNNEL => F::tunnel(ctx, f, pick.target_id, &pick.target),
        _ => {
            if nat::rewrite(ctx, f, Side::Destination, addr, pick.target.port).is_none() {
                return Verdict::drop(Stat::DropL4Truncated);
            }
            forward::forward::<F>(ctx, Some(Cache::Target(pick.target_id)), None)
        }
    }
}
