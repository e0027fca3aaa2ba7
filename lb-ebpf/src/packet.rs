//! The only place in the program that touches raw packet pointers.
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

use crate::hdr::Header;

/// A bounds-checked, in-place view of a `T` at byte `offset` of the packet, or `None` when the
/// packet is too short. The view lives as long as the borrow of `ctx`.
#[inline(always)]
#[expect(
    clippy::mut_from_ref,
    reason = "packet memory is not owned by the XdpContext struct; each stage views disjoint header offsets"
)]
pub fn header_mut<T: Header>(ctx: &XdpContext, offset: usize) -> Option<&mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    // SAFETY: [start + offset, start + offset + size_of::<T>()) lies inside the packet (checked
    // above); `T: Header` has alignment 1 and accepts every bit pattern. Views of different
    // headers never overlap because each stage asks for the header at its own offset.
    Some(unsafe { &mut *((start + offset) as *mut T) })
}

/// Length of the frame in bytes.
#[inline(always)]
pub fn len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// Overwrite the packet's first `N * 8` bytes with `words` (the benchmark's restore); `None`
/// if the packet is shorter. Benchmark programs only: their frames come from
/// BPF_PROG_TEST_RUN, which places data after a 256-byte headroom, so the start is 8-byte
/// aligned (the verifier forbids checking that on a packet pointer here).
#[inline(always)]
pub fn write_words<const N: usize>(ctx: &XdpContext, words: &[u64; N]) -> Option<()> {
    let start = ctx.data();
    if start + N * 8 > ctx.data_end() {
        return None;
    }
    let mut i = 0;
    while i < N {
        // SAFETY: in bounds (checked above) and 8-byte aligned (BPF_PROG_TEST_RUN frames, the
        // only caller's input; see above).
        unsafe { *((start + i * 8) as *mut u64) = words[i] };
        i += 1;
    }
    Some(())
}
