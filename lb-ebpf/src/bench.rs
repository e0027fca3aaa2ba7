//! Programs for `cargo xtask bench` only; the agent never attaches them.
//!
//! BPF_PROG_TEST_RUN does not restore the packet between repetitions, so a rewriting program
//! would time its own output. `xlb_bench` runs the real pipeline, then puts the template
//! packet back; `xlb_bench_restore` does only the putting back, so its cost can be subtracted.
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{BENCH_NEW_FLOW, BenchPacket};

use crate::{
    hdr::{ETH_LEN, Eth, IPV4_MIN_LEN, Tcp},
    packet::{header_mut, write_words},
    pipeline, stats,
};

#[map]
static BENCH: Array<BenchPacket> = Array::with_max_entries(1, 0);

#[map]
static BENCH_SEQ: PerCpuArray<u16> = PerCpuArray::with_max_entries(1, 0);

/// Put the template back; in new-flow mode give it the next TCP source port first.
#[inline(always)]
fn restore(ctx: &XdpContext, t: &BenchPacket) -> Option<()> {
    write_words(ctx, &t.words)?;
    if t.mode == BENCH_NEW_FLOW {
        let seq = BENCH_SEQ.get_ptr_mut(0)?;
        // SAFETY: a per-CPU array slot, written only by this CPU.
        let port = unsafe {
            *seq = (*seq).wrapping_add(1).max(1024);
            *seq
        };
        header_mut::<Tcp>(ctx, ETH_LEN + IPV4_MIN_LEN)?.src = port.to_be_bytes();
    }
    Some(())
}

/// The balancer, with the packet restored after each run.
#[xdp]
pub fn xlb_bench(ctx: XdpContext) -> u32 {
    let Some(t) = BENCH.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let (action, stat) = pipeline::run(&ctx);
    stats::count(stat);
    if restore(&ctx, t).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    action
}

/// The wrapper's own cost: template lookup and restore, nothing else.
#[xdp]
pub fn xlb_bench_restore(ctx: XdpContext) -> u32 {
    let Some(t) = BENCH.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    if restore(&ctx, t).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_PASS
}

/// The harness's own cost.
#[xdp]
pub fn xlb_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The floor: the least a forwarder does — swap the MACs and send it back out.
#[xdp]
pub fn xlb_bench_floor(ctx: XdpContext) -> u32 {
    let Some(eth) = header_mut::<Eth>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    core::mem::swap(&mut eth.src, &mut eth.dst);
    xdp_action::XDP_TX
}
