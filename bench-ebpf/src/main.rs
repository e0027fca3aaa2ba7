//! Programs for `cargo xtask bench` only, in an object of their own: the product's object
//! (lb-ebpf) carries none of them. The `xlb` entry point here is the balancer as lb-ebpf builds
//! it, from the same library, so the benchmark loads this object through the agent's own
//! `AyaDataplane` and measures the same code.
//!
//! BPF_PROG_TEST_RUN does not restore the packet between repetitions, so a rewriting program
//! would time its own output. `xlb_bench` runs the real pipeline, then puts the template
//! packet back; `xlb_bench_restore` does only the putting back, so its cost can be subtracted.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{PROTO_UDP, csum};
use lb_ebpf::{
    family::V4,
    forward,
    hdr::{ETH_LEN, ETHERTYPE_IPV6, Eth, IPV4_MIN_LEN, IPV6_LEN, Ipv4, Ipv6, Tcp, Udp},
    sys::{self, header_mut},
};
use xlb_bench_abi::{
    BenchPacket, FIRST_PORT, MANY_CLIENTS, NEW_FLOW, PORTS, REPLIES_TO_MANY_CLIENTS, SAME_FLOW,
};

/// The balancer, exactly as the product's object has it.
#[xdp]
pub fn xlb(mut ctx: XdpContext) -> u32 {
    lb_ebpf::balance(&mut ctx)
}

#[map]
static BENCH: Array<BenchPacket> = Array::with_max_entries(1, 0);

#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Frames counted by the packet-rate sink (and by the XDP_DROP baseline).
#[map]
static BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Put the template back; in the modes that vary the flow, give it the next tuple.
#[inline(always)]
fn restore(ctx: &XdpContext, t: &BenchPacket) -> Option<()> {
    write_words(ctx, &t.words, t.words_used)?;
    if t.mode != SAME_FLOW {
        vary(ctx, t)?;
    }
    Some(())
}

/// The next tuple (see `xlb_bench_abi`'s modes): the last 16 bits of the source address (the
/// destination's for replies) and, unless one flow per client, the source port, with every
/// checksum kept valid (conntrack drops a bad one). The template's port is `FIRST_PORT`.
#[inline(always)]
fn vary(ctx: &XdpContext, t: &BenchPacket) -> Option<()> {
    let n = sys::with_slot(&BENCH_SEQ, 0, |seq| {
        *seq = seq.wrapping_add(1);
        *seq
    })?;
    let i = if t.mode == NEW_FLOW {
        n
    } else {
        n % t.flows.max(1)
    };
    let per_client = t.mode == MANY_CLIENTS || t.mode == REPLIES_TO_MANY_CLIENTS;
    let (port, step) = if per_client {
        (FIRST_PORT, i as u16)
    } else {
        (FIRST_PORT + (i % PORTS) as u16, (i / PORTS) as u16)
    };
    let dst = t.mode == REPLIES_TO_MANY_CLIENTS;
    let ipv6 = header_mut::<Eth>(ctx, 0)?.ethertype == ETHERTYPE_IPV6;
    // The address's last 16 bits: (old, new).
    let (l4, proto, old_host, new_host) = if ipv6 {
        let ip = header_mut::<Ipv6>(ctx, ETH_LEN)?;
        let a = if dst { &mut ip.dst } else { &mut ip.src };
        let old = u16::from_be_bytes([a[14], a[15]]);
        let new = old.wrapping_add(step);
        [a[14], a[15]] = new.to_be_bytes();
        (ETH_LEN + IPV6_LEN, ip.next, old, new)
    } else {
        let ip = header_mut::<Ipv4>(ctx, ETH_LEN)?;
        let a = if dst { &mut ip.dst } else { &mut ip.src };
        let old = u16::from_be_bytes([a[2], a[3]]);
        let new = old.wrapping_add(step);
        [a[2], a[3]] = new.to_be_bytes();
        ip.check = csum::replace16(u16::from_be_bytes(ip.check), old, new).to_be_bytes();
        (ETH_LEN + IPV4_MIN_LEN, ip.proto, old, new)
    };
    if proto == PROTO_UDP {
        let udp = header_mut::<Udp>(ctx, l4)?;
        let c = u16::from_be_bytes(udp.check);
        let n = csum::replace16(csum::replace16(c, old_host, new_host), FIRST_PORT, port);
        let n = if ipv6 {
            csum::udp6_fixup(n)
        } else {
            csum::udp_fixup(c, n)
        };
        udp.check = n.to_be_bytes();
        if !per_client {
            udp.src = port.to_be_bytes();
        }
    } else {
        let tcp = header_mut::<Tcp>(ctx, l4)?;
        let c = u16::from_be_bytes(tcp.check);
        let n = csum::replace16(csum::replace16(c, old_host, new_host), FIRST_PORT, port);
        tcp.check = n.to_be_bytes();
        if !per_client {
            tcp.src = port.to_be_bytes();
        }
    }
    Some(())
}

/// The IPv6 half, as the product's object has it (`xlb` tail-calls it).
#[xdp]
pub fn xlb6(mut ctx: XdpContext) -> u32 {
    lb_ebpf::balance6(&mut ctx)
}

/// ICMPv6 errors, as the product's object has them (`xlb6` tail-calls it).
#[xdp]
pub fn xlb6_icmp(mut ctx: XdpContext) -> u32 {
    lb_ebpf::balance6_icmp(&mut ctx)
}

/// Tunnels to IPv6 targets, as the product's object has them.
#[xdp]
pub fn xlb_tunnel6(mut ctx: XdpContext) -> u32 {
    lb_ebpf::tunnel6(&mut ctx)
}

/// The IPv6 half with the packet restored after each run. Entered directly, not through
/// `xlb`'s tail call (a tail call does not come back to the wrapper), so its figures leave out
/// the IPv4 half's ethertype check and the tail call itself; the IPv6 non-listener figure,
/// taken through `xlb` unwrapped, includes them.
#[xdp]
pub fn xlb_bench6(mut ctx: XdpContext) -> u32 {
    let Some(t) = BENCH.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let action = lb_ebpf::balance6(&mut ctx);
    if restore(&ctx, t).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    action
}

/// The balancer, with the packet restored after each run.
#[xdp]
pub fn xlb_bench(mut ctx: XdpContext) -> u32 {
    let Some(t) = BENCH.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let action = lb_ebpf::balance(&mut ctx);
    if restore(&ctx, t).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    action
}

/// As `xlb_bench`, for `tunnel` listeners: the encapsulation grew the packet at the front, so
/// the wrapper moves the start back before restoring (a cost the other figures do not carry).
#[xdp]
pub fn xlb_bench_tunnel(mut ctx: XdpContext) -> u32 {
    let Some(t) = BENCH.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let before = sys::packet_len(&ctx);
    let action = lb_ebpf::balance(&mut ctx);
    let grown = sys::packet_len(&ctx).saturating_sub(before);
    if grown > 0 && sys::adjust_head(&mut ctx, grown as i32).is_none() {
        return xdp_action::XDP_ABORTED;
    }
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

#[inline(always)]
fn count_sink() {
    sys::with_slot(&BENCH_SINK, 0, |c| *c += 1);
}

/// Packet generator for BPF_PROG_TEST_RUN's live-frames mode: frames are recycled, so every
/// header of every frame is written from the template (a forwarder may have edited them).
#[xdp]
pub fn xlb_bench_gen(ctx: XdpContext) -> u32 {
    let Some(t) = BENCH.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    if restore(&ctx, t).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

/// Packet-rate sink: count and drop.
#[xdp]
pub fn xlb_bench_sink(_ctx: XdpContext) -> u32 {
    count_sink();
    xdp_action::XDP_DROP
}

/// Packet-rate baseline at the balancer's ingress: count and drop.
#[xdp]
pub fn xlb_bench_drop(_ctx: XdpContext) -> u32 {
    count_sink();
    xdp_action::XDP_DROP
}

/// The XDP forwarding floor: a FIB lookup and a redirect, nothing else.
#[xdp]
pub fn xlb_bench_fwd(ctx: XdpContext) -> u32 {
    forward::forward::<V4>(&ctx, None, None).action
}

/// The true floor of this path: xlb's own forwarding stage with its next-hop cache (the hop
/// of "target" 1, looked up in the FIB once a second, as xlb does per target): a MAC rewrite
/// and a redirect, nothing else.
#[xdp]
pub fn xlb_bench_fwd_cached(ctx: XdpContext) -> u32 {
    forward::forward::<V4>(&ctx, Some(forward::Cache::Target(1)), None).action
}

/// Overwrite the packet's first `used * 8` bytes (at most `N * 8`) with `words`; `None` if the
/// packet is shorter.
/// Frames here come from BPF_PROG_TEST_RUN, which places data after a 256-byte headroom, so
/// the start is 8-byte aligned (the verifier forbids checking that on a packet pointer).
#[inline(always)]
fn write_words<const N: usize>(ctx: &XdpContext, words: &[u64; N], used: u32) -> Option<()> {
    let start = ctx.data();
    let mut i = 0;
    while i < N && i < used as usize {
        if start + (i + 1) * 8 > ctx.data_end() {
            return None;
        }
        // SAFETY: in bounds (checked just above) and 8-byte aligned (BPF_PROG_TEST_RUN frames,
        // the only input of these programs; see above).
        unsafe { *((start + i * 8) as *mut u64) = words[i] };
        i += 1;
    }
    Some(())
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
