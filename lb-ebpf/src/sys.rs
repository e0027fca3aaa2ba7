//! The only module with `unsafe` in the data plane (the rest of the crate denies
//! `unsafe_code`): packet memory, map values and kernel helpers, each behind a safe function
//! whose `SAFETY` comment carries the argument.
//!
//! - Packet memory: [`header_mut`] gives a bounds-checked view of a wire header ([`Header`]:
//!   alignment 1, every bit pattern valid) at a byte offset.
//! - Map values: [`value`] reads a hash-map value in place; [`with_value_mut`] and
//!   [`with_slot`] lend a mutable value for the length of a closure, so no `&mut` to map memory
//!   outlives the statement that uses it.
//! - Helpers: the clock, the FIB lookup and the redirect.
use core::mem::size_of;

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_fib_lookup as FibParams,
    helpers::generated::{
        bpf_fib_lookup, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_redirect,
        bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::XdpContext,
};

use crate::hdr::{Eth, Icmp, Ipv4, Ipv6, Tcp, Udp, Word, Words};

/// Marker for types that may be viewed in place in packet memory.
///
/// # Safety
/// Implementors are `repr(C)`, have alignment 1 and accept every bit pattern.
pub unsafe trait Header {}

// SAFETY: all of them are repr(C) structs of u8 and [u8; N] fields only (sizes and alignment 1
// asserted in `hdr`).
unsafe impl Header for Eth {}
// SAFETY: as above.
unsafe impl Header for Ipv4 {}
// SAFETY: as above.
unsafe impl Header for Ipv6 {}
// SAFETY: as above.
unsafe impl Header for Tcp {}
// SAFETY: as above.
unsafe impl Header for Udp {}
// SAFETY: as above.
unsafe impl Header for Icmp {}
// SAFETY: as above.
unsafe impl Header for Word {}
// SAFETY: an array of [u8; 2]: alignment 1, every bit pattern valid.
unsafe impl<const N: usize> Header for Words<N> {}

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

/// Move the start of the packet by `delta` bytes (negative: grow at the front). Taking
/// `&mut XdpContext` makes the borrow checker refuse any header view still alive across it:
/// every header must be looked up again afterwards.
#[inline(always)]
pub fn adjust_head(ctx: &mut XdpContext, delta: i32) -> Option<()> {
    // SAFETY: the helper only moves the context's data pointer within the frame's headroom and
    // checks the bounds itself; no view into the packet survives the call (see above).
    let rc = unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), delta) };
    (rc == 0).then_some(())
}

/// Move the end of the packet by `delta` bytes (negative: cut the tail). As [`adjust_head`].
#[inline(always)]
pub fn adjust_tail(ctx: &mut XdpContext, delta: i32) -> Option<()> {
    // SAFETY: as for `adjust_head`.
    let rc = unsafe { bpf_xdp_adjust_tail(ctx.as_ptr().cast(), delta) };
    (rc == 0).then_some(())
}

/// Length of the frame in bytes.
#[inline(always)]
pub fn packet_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}

/// A hash map's value for `key`, read in place.
#[inline(always)]
pub fn value<K, V>(map: &'static HashMap<K, V>, key: &K) -> Option<&'static V> {
    // SAFETY: the kernel keeps an element alive for the whole program run (RCU), and this
    // program never writes to these maps, so the shared reference is not aliased by a `&mut`.
    // The agent may replace the value meanwhile: V is plain integers, so a concurrent update
    // yields the old or the new value's bytes, never invalid memory.
    unsafe { map.get(key) }
}

/// An LRU hash map's value for `key`, read in place (see [`value`]).
#[inline(always)]
pub fn lru_value<K, V>(map: &'static LruHashMap<K, V>, key: &K) -> Option<&'static V> {
    // SAFETY: as in `value`: this program only inserts into LRU maps it reads this way (new
    // elements, never an in-place write of an element it holds a reference to).
    unsafe { map.get(key) }
}

/// Run `f` on the value of `key` in an LRU hash map, in place; `None` if there is none.
#[inline(always)]
pub fn with_value_mut<K, V, R>(
    map: &'static LruHashMap<K, V>,
    key: &K,
    f: impl FnOnce(&mut V) -> R,
) -> Option<R> {
    let p = map.get_ptr_mut(key)?;
    // SAFETY: a non-null pointer to a live element (RCU keeps it for the program run). The
    // `&mut` exists only inside `f`, and V is plain integers. Another CPU may write the same
    // element (the same flow seen on two CPUs): both store whole integers, the last one wins,
    // which is the map's documented behaviour for concurrent updates.
    Some(f(unsafe { &mut *p }))
}

/// Run `f` on this CPU's slot `index` of a per-CPU array; `None` if out of range.
#[inline(always)]
pub fn with_slot<T, R>(
    map: &'static PerCpuArray<T>,
    index: u32,
    f: impl FnOnce(&mut T) -> R,
) -> Option<R> {
    let p = map.get_ptr_mut(index)?;
    // SAFETY: a per-CPU slot is only ever touched by this CPU, and a program run is not
    // preempted by another run on the same CPU in XDP, so the `&mut`, confined to `f`, is the
    // only access.
    Some(f(unsafe { &mut *p }))
}

/// Run `f` on slot `index` of an array shared by all CPUs, in place; `None` if out of range.
/// For state where an occasional lost update is acceptable (the rate buckets, see
/// `lb_common::rate`): another CPU may run `f` on the same slot at the same time.
#[inline(always)]
pub fn with_shared_slot<T, R>(
    map: &'static Array<T>,
    index: u32,
    f: impl FnOnce(&mut T) -> R,
) -> Option<R> {
    let p = map.get_ptr_mut(index)?;
    // SAFETY: a non-null pointer into the array's memory, alive for the map's life. The `&mut`
    // exists only inside `f` on this CPU; another CPU may write the same slot meanwhile, and T
    // is plain integers, so each store is a whole integer and the last one wins (no invalid
    // value, at worst a lost update, which the callers tolerate and document).
    Some(f(unsafe { &mut *p }))
}

/// The mark of a socket buffer (`SO_MARK` of the socket that sent it).
#[inline(always)]
pub fn skb_mark(ctx: &aya_ebpf::programs::TcContext) -> u32 {
    // SAFETY: `skb` is the program's own context pointer, valid for the run; `mark` is a
    // readable u32 field of __sk_buff for TC programs.
    unsafe { (*ctx.skb.skb).mark }
}

/// The coarse monotonic clock (jiffies resolution, cheaper than the precise one).
#[inline(always)]
pub fn coarse_ns() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The monotonic clock, ns (precise: the rate buckets need sub-jiffy intervals).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// An all-zero FIB lookup request, its documented initial state.
#[inline(always)]
pub fn fib_params() -> FibParams {
    // SAFETY: a plain C struct of integers (and unions of integers): all-zero is a valid value.
    unsafe { core::mem::zeroed() }
}

/// `bpf_fib_lookup` on `p` (flags 0): the kernel's return code, `p` filled on success.
#[inline(always)]
pub fn fib_lookup(ctx: &XdpContext, p: &mut FibParams) -> u32 {
    // SAFETY: `p` is a valid, initialised bpf_fib_lookup of the size passed, exclusively
    // borrowed for the call; ctx is the program's own context.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), p, size_of::<FibParams>() as i32, 0) };
    rc as u32
}

/// The route's MTU that a FRAG_NEEDED lookup left in `p`.
#[inline(always)]
pub fn fib_mtu(p: &FibParams) -> u16 {
    // SAFETY: the field is a union of two u16s (tot_len in, mtu_result out); reading either
    // is defined for any bits.
    unsafe { p.__bindgen_anon_1.mtu_result }
}

/// `bpf_redirect` to `ifindex`: the XDP action to return.
#[inline(always)]
pub fn redirect(ifindex: u32) -> u32 {
    // SAFETY: a helper taking plain integers.
    let action = unsafe { bpf_redirect(ifindex, 0) };
    action as u32
}

/// Continue in the program at `index` of `map` (a tail call: this run ends there). Returns
/// only if there is no program at `index`.
#[inline(always)]
pub fn tail_call(ctx: &XdpContext, map: &'static ProgramArray, index: u32) {
    // SAFETY: on success control never comes back, so no state of this run is used after it;
    // on failure the helper has changed nothing and execution continues here.
    unsafe { map.tail_call(ctx, index) }
}

/// The checksum difference (`lb_common::csum::delta`) of replacing the `N` packet bytes at
/// `offset` by `new`; `None` if the packet is shorter. Each byte is read with a volatile load
/// and summed at once: LLVM otherwise hoists all `2 * N` byte loads of a 16-byte address to
/// one place and spills each to its own 8-byte stack slot, which alone overflows the 512-byte
/// BPF stack on the ICMPv6 error path.
#[inline(always)]
pub fn packet_delta<const N: usize>(ctx: &XdpContext, offset: usize, new: &[u8; N]) -> Option<u16> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return None;
    }
    let p = (start + offset) as *const u8;
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        // SAFETY: [offset, offset + N) is inside the packet (checked above); u8 needs no
        // alignment; `new` is a valid reference of N bytes.
        let (o, n) = unsafe {
            (
                [
                    core::ptr::read_volatile(p.add(i)),
                    core::ptr::read_volatile(p.add(i + 1)),
                ],
                [
                    core::ptr::read_volatile(&new[i]),
                    core::ptr::read_volatile(&new[i + 1]),
                ],
            )
        };
        sum += u32::from(!u16::from_be_bytes(o)) + u32::from(u16::from_be_bytes(n));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    Some(sum as u16)
}
