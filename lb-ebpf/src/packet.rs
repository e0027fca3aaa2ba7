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
