//! Stage 5: rewrite one side of the packet's addresses and ports, with incremental checksums,
//! and decrement the TTL (hop limit) as a router does. Either family: the IP header's part is
//! [`Family::rewrite_ip`].
use aya_ebpf::programs::XdpContext;
use lb_common::{PROTO_TCP, csum};

pub use crate::family::Side;
use crate::{
    family::Family,
    hdr::{Tcp, Udp},
    parse::FlowOf,
    sys::header_mut,
};

/// Rewrite `side` to `addr:port`. `None` only if the packet shrank under us (it cannot: the
/// parser checked these bounds), which the caller turns into a drop, never a half-rewrite: all
/// bounds are checked before the first byte is written.
#[inline(always)]
pub fn rewrite<F: Family>(
    ctx: &XdpContext,
    f: &FlowOf<F>,
    side: Side,
    addr: F::Addr,
    port: [u8; 2],
) -> Option<()> {
    let (old_addr, old_port) = match side {
        Side::Destination => (f.dst, f.dport),
        Side::Source => (f.src, f.sport),
    };
    let old_port16 = u16::from_be_bytes(old_port);
    let new_port16 = u16::from_be_bytes(port);
    // One difference for every checksum that covers the address.
    let d = F::delta(&old_addr, &addr);
    if f.proto == PROTO_TCP {
        let tcp = header_mut::<Tcp>(ctx, f.l4_off)?;
        let c = csum::apply(u16::from_be_bytes(tcp.check), d);
        tcp.check = csum::replace16(c, old_port16, new_port16).to_be_bytes();
        match side {
            Side::Destination => tcp.dst = port,
            Side::Source => tcp.src = port,
        }
    } else {
        let udp = header_mut::<Udp>(ctx, f.l4_off)?;
        let old = u16::from_be_bytes(udp.check);
        let c = csum::replace16(csum::apply(old, d), old_port16, new_port16);
        udp.check = F::udp_fixup(old, c).to_be_bytes();
        match side {
            Side::Destination => udp.dst = port,
            Side::Source => udp.src = port,
        }
    }
    F::rewrite_ip(ctx, side, d, &addr)
}
