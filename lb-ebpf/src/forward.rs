//! Stage 6: send the rewritten packet toward its next hop, with L2 addresses from the kernel's
//! FIB and neighbour tables.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, xdp_action,
    },
    programs::XdpContext,
};
use lb_common::{Stat, limits::NEXT_HOP_TTL_NS};

use crate::{
    hdr::{ETH_LEN, Eth, Ipv4},
    maps::{NEXT_HOPS, NextHop},
    parse::Verdict,
    sys::{self, header_mut},
};

const AF_INET: u8 = 2;

/// Send the packet on. `target`: the target it goes to, whose next hop may be cached; `None`
/// for replies (many client addresses: always a FIB lookup).
#[inline(always)]
pub fn forward(ctx: &XdpContext, target: Option<u32>) -> Verdict {
    let Some(ip) = header_mut::<Ipv4>(ctx, ETH_LEN) else {
        return Verdict::drop(Stat::DropNoRoute);
    };
    let ingress = ctx.ingress_ifindex() as u32;
    let tot_len = u16::from_be_bytes(ip.tot_len);
    let cached = target.and_then(|id| sys::with_slot(&NEXT_HOPS, id, |nh| *nh));
    // Only the cache needs the time: replies (no target) skip the clock.
    let now = if cached.is_some() {
        sys::coarse_ns()
    } else {
        0
    };
    if let Some(nh) = cached
        && nh.expires_ns > now
        && nh.ingress == ingress
        && tot_len <= nh.max_len
    {
        return send(ctx, ingress, nh.egress, nh.smac, nh.dmac);
    }
    let mut p = sys::fib_params();
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    p.__bindgen_anon_1.tot_len = tot_len;
    p.__bindgen_anon_2.tos = ip.tos;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    p.ifindex = ingress;
    match sys::fib_lookup(ctx, &mut p) {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Verdict::pass(Stat::PassNoNeigh),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Verdict::pass(Stat::PassFragNeeded),
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Verdict::drop(Stat::DropFwdDisabled),
        _ => return Verdict::drop(Stat::DropNoRoute),
    }
    if let (Some(id), Some(nh)) = (target, cached) {
        let fresh = nh.expires_ns > now && nh.ingress == ingress && nh.egress == p.ifindex;
        let next = NextHop {
            expires_ns: if fresh {
                nh.expires_ns
            } else {
                now + NEXT_HOP_TTL_NS
            },
            ingress,
            egress: p.ifindex,
            max_len: if fresh {
                nh.max_len.max(tot_len)
            } else {
                tot_len
            },
            smac: p.smac,
            dmac: p.dmac,
            _pad: [0; 2],
        };
        sys::with_slot(&NEXT_HOPS, id, |slot| *slot = next);
    }
    send(ctx, ingress, p.ifindex, p.smac, p.dmac)
}

#[inline(always)]
fn send(ctx: &XdpContext, ingress: u32, egress: u32, smac: [u8; 6], dmac: [u8; 6]) -> Verdict {
    let Some(eth) = header_mut::<Eth>(ctx, 0) else {
        return Verdict::drop(Stat::DropNoRoute);
    };
    eth.dst = dmac;
    eth.src = smac;
    if egress == ingress {
        return Verdict {
            action: xdp_action::XDP_TX,
            stat: Stat::FwdTx,
        };
    }
    Verdict {
        action: sys::redirect(egress),
        stat: Stat::FwdRedirect,
    }
}
