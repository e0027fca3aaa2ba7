//! xlb's XDP data plane as a library of stages; the program's entry point is the binary
//! (`src/main.rs`), and an object built for measuring (`bench-ebpf`) links the same stages.
//! The pipeline is parse -> listener lookup -> connection table -> Maglev ring -> rewrite ->
//! forward, each stage in its own module; every packet ends in exactly one counted verdict.
//!
//! `unsafe` lives in [`sys`] alone; the rest of the crate denies it.
#![no_std]
#![deny(unsafe_code)]

pub mod balance;
pub mod encap;
pub mod family;
pub mod forward;
pub mod hdr;
pub mod icmp;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod pipeline;
pub mod probe_encap;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;

/// Run the balancer on one packet and count its verdict: what an XDP entry point returns.
#[inline(always)]
pub fn balance(ctx: &mut aya_ebpf::programs::XdpContext) -> u32 {
    let (action, stat) = pipeline::run(ctx);
    stats::count(stat);
    action
}

/// The IPv6 half (`xlb6`): what [`balance`] hands IPv6 frames to.
#[inline(always)]
pub fn balance6(ctx: &mut aya_ebpf::programs::XdpContext) -> u32 {
    let (action, stat) = pipeline::run6(ctx);
    stats::count(stat);
    action
}

/// `xlb_tunnel6`: packets of `tunnel` flows to IPv6 targets, from [`balance`] or
/// [`balance6`].
#[inline(always)]
pub fn tunnel6(ctx: &mut aya_ebpf::programs::XdpContext) -> u32 {
    let v = encap::tunnel6_program(ctx);
    stats::count(v.stat);
    v.action
}

/// ICMPv6 errors (`xlb6_icmp`): what [`balance6`] hands them to.
#[inline(always)]
pub fn balance6_icmp(ctx: &mut aya_ebpf::programs::XdpContext) -> u32 {
    let (action, stat) = pipeline::run6_icmp(ctx);
    stats::count(stat);
    action
}
