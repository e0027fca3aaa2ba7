//! The pipeline, stage by stage. Returns the action and the one counter that explains it.
use aya_ebpf::programs::XdpContext;
use lb_common::{MODE_DSR, MODE_TUNNEL, Stat};

use crate::{
    balance, encap, forward, icmp,
    nat::{self, Side},
    parse::{self, Parsed, Verdict},
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
        } => {
            if balance::is_vip(dst) {
                Verdict::drop(if_vip)
            } else {
                Verdict::pass(otherwise)
            }
        }
        Parsed::Flow(f) => flow(ctx, &f),
        Parsed::IcmpError(e) => icmp::to_target(ctx, &e),
        Parsed::Echo { dst, icmp_off } => icmp::echo(ctx, dst, icmp_off),
    };
    (v.action, v.stat)
}

#[inline(always)]
fn flow(ctx: &mut XdpContext, f: &parse::Flow) -> Verdict {
    if balance::maybe_listener(f)
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
        if nat::rewrite(ctx, f, Side::Source, lb_common::ipv4_of(&r.vip), r.vport).is_none() {
            return Verdict::drop(Stat::DropL4Truncated);
        }
        stats::traffic(r.listener_id, r.target_id, Dir::Reply, bytes);
        return forward::forward(ctx, None, None);
    }
    if balance::is_vip(f.dst) {
        return Verdict::drop(Stat::DropVipNoListener);
    }
    Verdict::pass(Stat::PassNotListener)
}

#[inline(always)]
fn to_target(ctx: &mut XdpContext, f: &parse::Flow, l: &lb_common::ListenerValue) -> Verdict {
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
    let addr = lb_common::ipv4_of(&pick.target.addr);
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
        MODE_DSR => forward::forward(ctx, Some(pick.target_id), Some(addr)),
        MODE_TUNNEL => encap::tunnel(ctx, f, pick.target_id, &pick.target),
        _ => {
            if nat::rewrite(ctx, f, Side::Destination, addr, pick.target.port).is_none() {
                return Verdict::drop(Stat::DropL4Truncated);
            }
            forward::forward(ctx, Some(pick.target_id), None)
        }
    }
}
