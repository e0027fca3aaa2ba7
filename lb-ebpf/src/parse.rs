//! Stage 1: parse Ethernet, IPv4 (IHL honoured) or IPv6 (no extension headers), and the
//! TCP/UDP ports, or decide early.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Stat};

use crate::{
    family::{Family, V4, V6},
    hdr::{
        ETH_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Eth, ICMP_DEST_UNREACH, ICMP_ECHO_REQUEST,
        ICMP_LEN, ICMP_TIME_EXCEEDED, ICMP6_DEST_UNREACH, ICMP6_ECHO_REQUEST, ICMP6_ND_FIRST,
        ICMP6_ND_LAST, ICMP6_PACKET_TOO_BIG, ICMP6_TIME_EXCEEDED, IPV4_MF, IPV4_MIN_LEN,
        IPV4_OFFSET_HI_MASK, IPV6_FRAGMENT, IPV6_LEN, Icmp, Ipv4, Ipv6, TCP_MIN_LEN, Tcp, Udp,
        is_ipv6_ext_header,
    },
    sys::header_mut,
};

/// The final action and the counter that explains it.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub action: u32,
    pub stat: Stat,
}

impl Verdict {
    pub const fn pass(stat: Stat) -> Self {
        Self {
            action: xdp_action::XDP_PASS,
            stat,
        }
    }
    pub const fn drop(stat: Stat) -> Self {
        Self {
            action: xdp_action::XDP_DROP,
            stat,
        }
    }
}

/// A TCP/UDP packet of family `F`, with everything later stages need.
pub struct FlowOf<F: Family> {
    pub src: F::Addr,
    pub dst: F::Addr,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub tcp_flags: u8,
    /// TTL or hop limit.
    pub ttl: u8,
    /// IPv4 options (IPv6: always false; extension headers are refused).
    pub has_options: bool,
    /// Byte offset of the TCP/UDP header (14 + IHL * 4, or 14 + 40).
    pub l4_off: usize,
}

pub type Flow = FlowOf<V4>;
pub type Flow6 = FlowOf<V6>;
pub type IcmpError = IcmpErrorOf<V4>;
pub type IcmpError6 = IcmpErrorOf<V6>;

/// An ICMP or ICMPv6 error (destination unreachable, time exceeded, packet too big) and the
/// packet it quotes. The addresses (the outer packet's: who sent the error, to whom; the
/// quoted packet's, as it was sent: for a NAT flow VIP -> client) stay in the packet, read with
/// `Family::addrs` where needed: held in registers, 16-byte addresses cost more stack than a
/// BPF program has.
pub struct IcmpErrorOf<F: Family> {
    pub ttl: u8,
    /// Byte offsets of the ICMP header, the quoted IP header and the quoted TCP/UDP header.
    pub icmp_off: usize,
    pub inner_off: usize,
    pub inner_l4_off: usize,
    /// The quoted packet's ports and protocol.
    pub inner_sport: [u8; 2],
    pub inner_dport: [u8; 2],
    pub inner_proto: u8,
    pub family: core::marker::PhantomData<F>,
}

/// What parsing found.
pub enum Parsed {
    Flow(Flow),
    /// An ICMP error: it may concern a balanced flow (see `icmp`).
    IcmpError(IcmpError),
    /// An ICMP echo request to `dst` (answered if `dst` is a VIP, see `icmp`).
    Echo {
        dst: [u8; 4],
        icmp_off: usize,
    },
    /// An IPv6 frame: see [`parse6`].
    Ipv6,
    /// Decided without looking at any map.
    Done(Verdict),
    /// A defect whose verdict depends on whether `dst` is a VIP: traffic for the balancer is
    /// dropped by a named reason, anything else passes untouched to the kernel.
    Defect {
        dst: [u8; 4],
        if_vip: Stat,
        otherwise: Stat,
    },
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = header_mut::<Eth>(ctx, 0) else {
        return Parsed::Done(Verdict::pass(Stat::PassEthTruncated));
    };
    if eth.ethertype != ETHERTYPE_IPV4 {
        if eth.ethertype == ETHERTYPE_IPV6 {
            return Parsed::Ipv6;
        }
        return Parsed::Done(Verdict::pass(Stat::PassNotIp));
    }
    let Some(ip) = header_mut::<Ipv4>(ctx, ETH_LEN) else {
        return Parsed::Done(Verdict::pass(Stat::PassIpv4Truncated));
    };
    let ihl = usize::from(ip.vihl & 0x0f);
    if ip.vihl >> 4 != 4 || ihl * 4 < IPV4_MIN_LEN {
        return Parsed::Done(Verdict::pass(Stat::PassIpv4BadHeader));
    }
    let l4_off = ETH_LEN + ihl * 4;
    if ctx.data() + l4_off > ctx.data_end() {
        return Parsed::Done(Verdict::pass(Stat::PassIpv4Truncated));
    }
    let dst = ip.dst;
    if ip.frags[0] & (IPV4_MF | IPV4_OFFSET_HI_MASK) != 0 || ip.frags[1] != 0 {
        return Parsed::Defect {
            dst,
            if_vip: Stat::DropFragment,
            otherwise: Stat::PassFragment,
        };
    }
    let proto = ip.proto;
    let (src, ttl) = (ip.src, ip.ttl);
    let has_options = ihl * 4 > IPV4_MIN_LEN;
    let (sport, dport, tcp_flags) = match proto {
        PROTO_TCP => {
            let Some(tcp) = header_mut::<Tcp>(ctx, l4_off) else {
                return truncated_l4(dst);
            };
            if usize::from(tcp.doff >> 4) * 4 < TCP_MIN_LEN {
                return Parsed::Defect {
                    dst,
                    if_vip: Stat::DropTcpBadHeader,
                    otherwise: Stat::PassNotListener,
                };
            }
            (tcp.src, tcp.dst, tcp.flags)
        }
        PROTO_UDP => {
            let Some(udp) = header_mut::<Udp>(ctx, l4_off) else {
                return truncated_l4(dst);
            };
            (udp.src, udp.dst, 0)
        }
        PROTO_ICMP => return icmp_error(ctx, dst, ttl, l4_off),
        _ => {
            return Parsed::Defect {
                dst,
                if_vip: Stat::DropVipNoListener,
                otherwise: Stat::PassNotListener,
            };
        }
    };
    Parsed::Flow(Flow {
        src,
        dst,
        sport,
        dport,
        proto,
        tcp_flags,
        ttl,
        has_options,
        l4_off,
    })
}

#[inline(always)]
fn truncated_l4(dst: [u8; 4]) -> Parsed {
    Parsed::Defect {
        dst,
        if_vip: Stat::DropL4Truncated,
        otherwise: Stat::PassNotListener,
    }
}

/// An ICMP message: an error quoting a TCP/UDP packet, or (echo and the rest) a defect for a
/// VIP. The quoted header's length is honoured; 8 bytes of its L4 header must be there (as
/// RFC 792 requires), else the error cannot be matched to a flow.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, dst: [u8; 4], ttl: u8, icmp_off: usize) -> Parsed {
    let not_for_us = Parsed::Defect {
        dst,
        if_vip: Stat::DropVipNoListener,
        otherwise: Stat::PassNotListener,
    };
    let Some(icmp) = header_mut::<Icmp>(ctx, icmp_off) else {
        return truncated_l4(dst);
    };
    if icmp.kind == ICMP_ECHO_REQUEST && icmp.code == 0 {
        return Parsed::Echo { dst, icmp_off };
    }
    if icmp.kind != ICMP_DEST_UNREACH && icmp.kind != ICMP_TIME_EXCEEDED {
        return not_for_us;
    }
    let no_flow = Parsed::Defect {
        dst,
        if_vip: Stat::DropIcmpNoFlow,
        otherwise: Stat::PassNotListener,
    };
    let inner_off = icmp_off + ICMP_LEN;
    let Some(inner) = header_mut::<Ipv4>(ctx, inner_off) else {
        return no_flow;
    };
    let ihl = usize::from(inner.vihl & 0x0f);
    if inner.vihl >> 4 != 4 || ihl * 4 < IPV4_MIN_LEN {
        return no_flow;
    }
    let inner_proto = inner.proto;
    if inner_proto != PROTO_TCP && inner_proto != PROTO_UDP {
        return no_flow;
    }
    let inner_l4_off = inner_off + ihl * 4;
    // The first 8 bytes of TCP and UDP both start with the two ports.
    let Some(ports) = header_mut::<Udp>(ctx, inner_l4_off) else {
        return no_flow;
    };
    Parsed::IcmpError(IcmpError {
        ttl,
        icmp_off,
        inner_off,
        inner_l4_off,
        inner_sport: ports.src,
        inner_dport: ports.dst,
        inner_proto,
        family: core::marker::PhantomData,
    })
}

/// What parsing an IPv6 frame found.
pub enum Parsed6 {
    Flow(Flow6),
    /// An ICMPv6 error (destination unreachable, packet too big, time exceeded): parsed
    /// further by [`parse6_icmp_error`] in a program of its own (see `pipeline`).
    IcmpError,
    /// An ICMPv6 echo request to `dst`.
    Echo {
        dst: [u8; 16],
        icmp_off: usize,
    },
    Done(Verdict),
    /// As [`Parsed::Defect`].
    Defect {
        dst: [u8; 16],
        if_vip: Stat,
        otherwise: Stat,
    },
}

/// IPv6: the fixed header, then TCP, UDP or ICMPv6 directly. Extension headers are not walked:
/// a packet that has one gets its own verdict (fragments `drop_fragment`, the rest
/// `drop_ipv6_ext_header`) if it is for a VIP, and passes otherwise.
#[inline(always)]
pub fn parse6(ctx: &XdpContext) -> Parsed6 {
    let Some(ip) = header_mut::<Ipv6>(ctx, ETH_LEN) else {
        return Parsed6::Done(Verdict::pass(Stat::PassIpv6Truncated));
    };
    if ip.vtcfl[0] >> 4 != 6 {
        return Parsed6::Done(Verdict::pass(Stat::PassIpv6BadHeader));
    }
    let (src, dst, next, ttl) = (ip.src, ip.dst, ip.next, ip.hop_limit);
    let l4_off = ETH_LEN + IPV6_LEN;
    let defect = |if_vip, otherwise| Parsed6::Defect {
        dst,
        if_vip,
        otherwise,
    };
    let (sport, dport, tcp_flags) = match next {
        PROTO_TCP => {
            let Some(tcp) = header_mut::<Tcp>(ctx, l4_off) else {
                return defect(Stat::DropL4Truncated, Stat::PassNotListener);
            };
            if usize::from(tcp.doff >> 4) * 4 < TCP_MIN_LEN {
                return defect(Stat::DropTcpBadHeader, Stat::PassNotListener);
            }
            (tcp.src, tcp.dst, tcp.flags)
        }
        PROTO_UDP => {
            let Some(udp) = header_mut::<Udp>(ctx, l4_off) else {
                return defect(Stat::DropL4Truncated, Stat::PassNotListener);
            };
            (udp.src, udp.dst, 0)
        }
        PROTO_ICMPV6 => {
            let Some(icmp) = header_mut::<Icmp>(ctx, l4_off) else {
                return defect(Stat::DropL4Truncated, Stat::PassNotListener);
            };
            let kind = icmp.kind;
            if (ICMP6_ND_FIRST..=ICMP6_ND_LAST).contains(&kind) {
                // Neighbour discovery is the kernel's, whoever it is addressed to.
                return Parsed6::Done(Verdict::pass(Stat::PassNotListener));
            }
            if kind == ICMP6_ECHO_REQUEST && icmp.code == 0 {
                return Parsed6::Echo {
                    dst,
                    icmp_off: l4_off,
                };
            }
            if kind == ICMP6_DEST_UNREACH
                || kind == ICMP6_PACKET_TOO_BIG
                || kind == ICMP6_TIME_EXCEEDED
            {
                return Parsed6::IcmpError;
            }
            return defect(Stat::DropVipNoListener, Stat::PassNotListener);
        }
        IPV6_FRAGMENT => return defect(Stat::DropFragment, Stat::PassFragment),
        n if is_ipv6_ext_header(n) => {
            return defect(Stat::DropIpv6ExtHeader, Stat::PassNotListener);
        }
        _ => return defect(Stat::DropVipNoListener, Stat::PassNotListener),
    };
    Parsed6::Flow(Flow6 {
        src,
        dst,
        sport,
        dport,
        proto: next,
        tcp_flags,
        ttl,
        has_options: false,
        l4_off,
    })
}

/// What parsing an ICMPv6 error found.
pub enum ParsedIcmp6 {
    Error(IcmpError6),
    Defect {
        dst: [u8; 16],
        if_vip: Stat,
        otherwise: Stat,
    },
    /// Not an ICMPv6 error after all (the packet changed under us): nothing to do.
    Done(Verdict),
}

/// An ICMPv6 error quoting a TCP/UDP packet (a frame [`parse6`] said is
/// [`Parsed6::IcmpError`]): the quoted IPv6 header must be followed by TCP or UDP directly
/// (extension headers in the quote are not walked either), with its first 8 bytes present,
/// else the error cannot be matched to a flow.
#[inline(always)]
pub fn parse6_icmp_error(ctx: &XdpContext) -> ParsedIcmp6 {
    let Some(ip) = header_mut::<Ipv6>(ctx, ETH_LEN) else {
        return ParsedIcmp6::Done(Verdict::pass(Stat::PassIpv6Truncated));
    };
    if ip.next != PROTO_ICMPV6 {
        return ParsedIcmp6::Done(Verdict::pass(Stat::PassNotListener));
    }
    let (dst, ttl) = (ip.dst, ip.hop_limit);
    let icmp_off = ETH_LEN + IPV6_LEN;
    let no_flow = ParsedIcmp6::Defect {
        dst,
        if_vip: Stat::DropIcmpNoFlow,
        otherwise: Stat::PassNotListener,
    };
    let inner_off = icmp_off + ICMP_LEN;
    let Some(inner) = header_mut::<Ipv6>(ctx, inner_off) else {
        return no_flow;
    };
    let inner_proto = inner.next;
    if inner.vtcfl[0] >> 4 != 6 || (inner_proto != PROTO_TCP && inner_proto != PROTO_UDP) {
        return no_flow;
    }
    let inner_l4_off = inner_off + IPV6_LEN;
    let Some(ports) = header_mut::<Udp>(ctx, inner_l4_off) else {
        return no_flow;
    };
    ParsedIcmp6::Error(IcmpError6 {
        ttl,
        icmp_off,
        inner_off,
        inner_l4_off,
        inner_sport: ports.src,
        inner_dport: ports.dst,
        inner_proto,
        family: core::marker::PhantomData,
    })
}
