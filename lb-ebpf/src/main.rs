//! xlb's XDP program: the entry point only; the stages are the `lb_ebpf` library.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![deny(unsafe_code)]

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn xlb(mut ctx: XdpContext) -> u32 {
    lb_ebpf::balance(&mut ctx)
}

/// IPv6 frames, handed over by `xlb` with a tail call.
#[xdp]
pub fn xlb6(mut ctx: XdpContext) -> u32 {
    lb_ebpf::balance6(&mut ctx)
}

/// ICMPv6 errors, handed over by `xlb6` with a tail call.
#[xdp]
pub fn xlb6_icmp(mut ctx: XdpContext) -> u32 {
    lb_ebpf::balance6_icmp(&mut ctx)
}

/// Packets of `tunnel` flows to IPv6 targets, handed over by `xlb` or `xlb6` with a tail call.
#[xdp]
pub fn xlb_tunnel6(mut ctx: XdpContext) -> u32 {
    lb_ebpf::tunnel6(&mut ctx)
}

/// TC egress: `tunnel` health-check probes take the data path (see `probe_encap`).
#[classifier]
pub fn xlb_probe_encap(ctx: TcContext) -> i32 {
    lb_ebpf::probe_encap::run(&ctx)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds (clippy, `cargo test --workspace`) compile the stages but never run them.
}

/// The kernel requires a GPL-compatible license for the helpers the program calls. Naming the
/// section and exporting the symbol is what the loader reads; no code runs.
#[allow(unsafe_code)]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
