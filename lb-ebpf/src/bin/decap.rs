//! `xlb_decap`: the decapsulation program a `tunnel` target runs when its kernel has no ipip
//! module (`xlb decap attach IFACE`). IPv4-in-IPv4, IPv4-in-IPv6 and IPv6-in-IPv6 addressed to
//! one of the host's addresses (`DECAP_ADDRS`, `DECAP_ADDRS6`, filled by the CLI) lose their
//! outer header and go to the stack as the client sent them; everything else passes untouched.
//! Each packet counts once in `DECAP_STATS`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![deny(unsafe_code)]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    DecapStat, PROTO_IPIP, PROTO_IPV6,
    limits::{DECAP_ADDRS_MAX, DECAP_STAT_SLOTS},
};
use lb_ebpf::{
    hdr::{
        ETH_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Eth, IPV4_MF, IPV4_MIN_LEN, IPV4_OFFSET_HI_MASK,
        IPV6_LEN, Ipv4, Ipv6,
    },
    sys::{self, header_mut},
};

/// The host's own IPv4 addresses: outer destinations this program decapsulates.
#[map]
static DECAP_ADDRS: HashMap<[u8; 4], u8> = HashMap::with_max_entries(DECAP_ADDRS_MAX, 0);

/// The host's own IPv6 addresses (global ones), likewise.
#[map]
static DECAP_ADDRS6: HashMap<[u8; 16], u8> = HashMap::with_max_entries(DECAP_ADDRS_MAX, 0);

/// Packets per `DecapStat` code.
#[map]
static DECAP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DECAP_STAT_SLOTS, 0);

#[xdp]
pub fn xlb_decap(mut ctx: XdpContext) -> u32 {
    let stat = decap(&mut ctx);
    sys::with_slot(&DECAP_STATS, stat as u32, |n| *n += 1);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn decap(ctx: &mut XdpContext) -> DecapStat {
    let Some(eth) = header_mut::<Eth>(ctx, 0) else {
        return DecapStat::PassNotTunnel;
    };
    let (dst_mac, src_mac) = (eth.dst, eth.src);
    if eth.ethertype == ETHERTYPE_IPV6 {
        return decap6(ctx, dst_mac, src_mac);
    }
    if eth.ethertype != ETHERTYPE_IPV4 {
        return DecapStat::PassNotTunnel;
    }
    let Some(outer) = header_mut::<Ipv4>(ctx, ETH_LEN) else {
        return DecapStat::PassNotTunnel;
    };
    if outer.proto != PROTO_IPIP {
        return DecapStat::PassNotTunnel;
    }
    // Only the plain outer header the balancer builds: no options, not fragmented.
    if outer.vihl != 0x45
        || outer.frags[0] & (IPV4_MF | IPV4_OFFSET_HI_MASK) != 0
        || outer.frags[1] != 0
    {
        return DecapStat::PassMalformed;
    }
    if sys::value(&DECAP_ADDRS, &outer.dst).is_none() {
        return DecapStat::PassNotLocal;
    }
    match header_mut::<Ipv4>(ctx, ETH_LEN + IPV4_MIN_LEN) {
        Some(inner) if inner.vihl >> 4 == 4 => {}
        _ => return DecapStat::PassMalformed,
    }
    if sys::adjust_head(ctx, IPV4_MIN_LEN as i32).is_none() {
        return DecapStat::PassMalformed;
    }
    let Some(eth) = header_mut::<Eth>(ctx, 0) else {
        return DecapStat::PassMalformed;
    };
    eth.dst = dst_mac;
    eth.src = src_mac;
    eth.ethertype = ETHERTYPE_IPV4;
    DecapStat::Decapsulated
}

/// An outer IPv6 header (no extension headers) carrying IPv4 (next header 4) or IPv6 (41).
#[inline(always)]
fn decap6(ctx: &mut XdpContext, dst_mac: [u8; 6], src_mac: [u8; 6]) -> DecapStat {
    let Some(outer) = header_mut::<Ipv6>(ctx, ETH_LEN) else {
        return DecapStat::PassNotTunnel;
    };
    let (inner_version, ethertype) = match outer.next {
        PROTO_IPIP => (4, ETHERTYPE_IPV4),
        PROTO_IPV6 => (6, ETHERTYPE_IPV6),
        _ => return DecapStat::PassNotTunnel,
    };
    if outer.vtcfl[0] >> 4 != 6 {
        return DecapStat::PassMalformed;
    }
    if sys::value(&DECAP_ADDRS6, &outer.dst).is_none() {
        return DecapStat::PassNotLocal;
    }
    match header_mut::<Ipv4>(ctx, ETH_LEN + IPV6_LEN) {
        Some(inner) if inner.vihl >> 4 == inner_version => {}
        _ => return DecapStat::PassMalformed,
    }
    if sys::adjust_head(ctx, IPV6_LEN as i32).is_none() {
        return DecapStat::PassMalformed;
    }
    let Some(eth) = header_mut::<Eth>(ctx, 0) else {
        return DecapStat::PassMalformed;
    };
    eth.dst = dst_mac;
    eth.src = src_mac;
    eth.ethertype = ethertype;
    DecapStat::Decapsulated
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// See the balancer's entry point (`src/main.rs`).
#[allow(unsafe_code)]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
