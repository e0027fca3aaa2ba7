//! TC egress on the balancer's own traffic: a health-check probe for a `tunnel` target (marked
//! `PROBE_MARK_BASE | target id` by the agent) is wrapped in the same outer IPv4 header as the
//! data, so the probe proves the tunnel path: the target's decapsulation and its VIP. Every
//! other packet passes untouched.
use aya_ebpf::{
    bindings::{BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode},
    programs::TcContext,
};
use lb_common::{PROBE_MARK_BASE, PROBE_MARK_MASK, PROTO_IPIP, csum};

use crate::{
    hdr::{ETH_LEN, IPV4_MIN_LEN},
    maps::TARGETS,
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
