//! TC egress on the balancer's own traffic: a health-check probe for a `tunnel` target (marked
//! `PROBE_MARK_BASE | target id` by the agent) is wrapped in the same kind of outer header as
//! the data (IPv4 to an IPv4 target, IPv6 to an IPv6 one), so the probe proves the tunnel path:
//! the target's decapsulation and its VIP. Every other packet passes untouched.
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode,
    },
    programs::TcContext,
};
use lb_common::{
    FAMILY_IPV6, PROBE_MARK_BASE, PROBE_MARK_MASK, PROTO_IPIP, PROTO_IPV6, TargetValue, csum,
};

use crate::{
    hdr::{ETH_LEN, ETHERTYPE_IPV6, IPV4_MIN_LEN, IPV6_LEN},
    maps::{SETTINGS, TARGETS},
    sys,
};

const TTL: u8 = 64;

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    let mark = sys::skb_mark(ctx);
    if mark & PROBE_MARK_MASK != PROBE_MARK_BASE {
        return TC_ACT_OK;
    }
    match encapsulate(ctx, mark & !PROBE_MARK_MASK) {
        Some(()) => TC_ACT_OK,
        None => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn encapsulate(ctx: &TcContext, target_id: u32) -> Option<()> {
    let target = TARGETS.get(target_id)?;
    if target.family == FAMILY_IPV6 {
        return encapsulate6(ctx, target);
    }
    let inner_len = u16::try_from(ctx.len()).ok()?.checked_sub(ETH_LEN as u16)?;
    let src: [u8; 4] = ctx.load(ETH_LEN + 12).ok()?;
    let tos: u8 = ctx.load(ETH_LEN + 1).ok()?;
    let tot = inner_len.checked_add(IPV4_MIN_LEN as u16)?.to_be_bytes();
    let mut h = [0u8; IPV4_MIN_LEN];
    h[0] = 0x45;
    h[1] = tos;
    h[2] = tot[0];
    h[3] = tot[1];
    h[8] = TTL;
    h[9] = PROTO_IPIP;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&lb_common::ipv4_of(&target.addr));
    let check = csum::ipv4_header(&h).to_be_bytes();
    h[10] = check[0];
    h[11] = check[1];
    ctx.adjust_room(
        IPV4_MIN_LEN as i32,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4),
    )
    .ok()?;
    ctx.store(ETH_LEN, &h, 0).ok()
}

/// An outer IPv6 header to an IPv6 target: from the probe's own source when it is IPv6, from
/// `tunnel.source_prefix6` when it is IPv4 (IPv4-in-IPv6).
#[inline(always)]
fn encapsulate6(ctx: &TcContext, target: &TargetValue) -> Option<()> {
    let ethertype: [u8; 2] = ctx.load(12).ok()?;
    let inner_v6 = ethertype == ETHERTYPE_IPV6;
    let inner_len = u16::try_from(ctx.len()).ok()?.checked_sub(ETH_LEN as u16)?;
    let mut h = [0u8; IPV6_LEN];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&inner_len.to_be_bytes());
    h[6] = if inner_v6 { PROTO_IPV6 } else { PROTO_IPIP };
    h[7] = TTL;
    if inner_v6 {
        let src: [u8; 16] = ctx.load(ETH_LEN + 8).ok()?;
        h[8..24].copy_from_slice(&src);
    } else {
        h[8..24].copy_from_slice(&SETTINGS.get(0)?.tunnel_src6);
    }
    h[24..40].copy_from_slice(&target.addr);
    ctx.adjust_room(
        IPV6_LEN as i32,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
        u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV6),
    )
    .ok()?;
    ctx.store(ETH_LEN, &h, 0).ok()?;
    ctx.store(12, &ETHERTYPE_IPV6, 0).ok()
}
