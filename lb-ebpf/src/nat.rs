//! Stage 5: rewrite one side of the packet's addresses and ports, with incremental checksums,
//! and decrement the TTL as a router does.
use aya_ebpf::programs::XdpContext;
use lb_common::{PROTO_TCP, csum};

use crate::{
    hdr::{ETH_LEN, Ipv4, Tcp, Udp},
    parse::Flow,
    sys::header_mut,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Client -> target: the destination becomes the target.
    Destination,
    /// Target -> client: the source becomes the VIP.
    Source,
}

/// Rewrite `side` to `addr:port`. `None` only if the packet shrank under us (it cannot: the
/// parser checked these bounds), which the caller turns into a drop, never a half-rewrite: all
/// bounds are checked before the first byte is written.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, f: &Flow, side: Side, addr: [u8; 4], port: [u8; 2]) -> Option<()> {
    let ip = header_mut::<Ipv4>(ctx, ETH_LEN)?;
    let (old_addr, old_port) = match side {
        Side::Destination => (f.dst, f.dport),
        Side::Source => (f.src, f.sport),
    };
    let old_port16 = u16::from_be_bytes(old_port);
    let new_port16 = u16::from_be_bytes(port);
    if f.proto == PROTO_TCP {
        let tcp = header_mut::<Tcp>(ctx, f.l4_off)?;
        let c = csum::replace32(u16::from_be_bytes(tcp.check), old_addr, addr);
        tcp.check = csum::replace16(c, old_port16, new_port16).to_be_bytes();
        match side {
            Side::Destination => tcp.dst = port,
            Side::Source => tcp.src = port,
        }
    } else {
        let udp = header_mut::<Udp>(ctx, f.l4_off)?;
        let old = u16::from_be_bytes(udp.check);
        let c = csum::replace16(csum::replace32(old, old_addr, addr), old_port16, new_port16);
        udp.check = csum::udp_fixup(old, c).to_be_bytes();
        match side {
            Side::Destination => udp.dst = port,
            Side::Source => udp.src = port,
        }
    }
    let ttl_word = u16::from_be_bytes([ip.ttl, ip.proto]);
    let ttl = ip.ttl.saturating_sub(1);
    let mut check = csum::replace32(u16::from_be_bytes(ip.check), old_addr, addr);
    check = csum::replace16(check, ttl_word, u16::from_be_bytes([ttl, ip.proto]));
    ip.check = check.to_be_bytes();
    ip.ttl = ttl;
    match side {
        Side::Destination => ip.dst = addr,
        Side::Source => ip.src = addr,
    }
    Some(())
}
