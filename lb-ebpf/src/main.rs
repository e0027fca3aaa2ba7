//! xlb's XDP program: entry point only. The pipeline is
//! parse -> listener lookup -> connection table -> Maglev ring -> rewrite -> forward, each stage
//! in its own module; every packet ends in exactly one counted verdict.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod balance;
mod bench;
mod forward;
mod hdr;
mod maps;
mod nat;
mod packet;
mod parse;
mod pipeline;
mod stats;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    let (action, stat) = pipeline::run(&ctx);
    stats::count(stat);
    action
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

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
