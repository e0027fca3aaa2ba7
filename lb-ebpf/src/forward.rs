//! Stage 6: send the rewritten packet toward its next hop, with L2 addresses from the kernel's
//! FIB and neighbour tables.
use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::Stat;

use crate::{
    hdr::{ETH_LEN, Eth, Ipv4},
    packet::header_mut,
    parse::Verdict,
};

const AF_INET: u8 = 2;

#[inline(always)]
pub fn forward(ctx: &XdpContext) -> Verdict {
    let Some(ip) = header_mut::<Ipv4>(ctx, ETH_LEN) else {
        return Verdict::drop(Stat::DropNoRoute);
    };
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: a plain C struct of integers; all-zero is its documented initial state.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = ip.proto;
    p.__bindgen_anon_1.tot_len = u16::from_be_bytes(ip.tot_len);
    p.__bindgen_anon_2.tos = ip.tos;
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    p.ifindex = ingress;
    // SAFETY: `p` is a valid, initialised bpf_fib_lookup of the size passed; ctx is the
    // program's own context.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut p, size_of::<FibParams>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Verdict::pass(Stat::PassNoNeigh),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Verdict::pass(Stat::PassFragNeeded),
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Verdict::drop(Stat::DropFwdDisabled),
        _ => return Verdict::drop(Stat::DropNoRoute),
    }
    let Some(eth) = header_mut::<Eth>(ctx, 0) else {
        return Verdict::drop(Stat::DropNoRoute);
    };
    eth.dst = p.dmac;
    eth.src = p.smac;
    if p.ifindex == ingress {
        return Verdict {
            action: xdp_action::XDP_TX,
            stat: Stat::FwdTx,
        };
    }
    // SAFETY: a helper taking plain integers.
    let action = unsafe { bpf_redirect(p.ifindex, 0) };
    Verdict {
        action: action as u32,
        stat: Stat::FwdRedirect,
    }
}
