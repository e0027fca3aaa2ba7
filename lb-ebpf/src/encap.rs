//! Stage 5 for `tunnel` listeners: the client's packet, untouched, inside an outer header to
//! the target — IPv4-in-IPv4, IPv4-in-IPv6 (an IPv6 target of an IPv4 VIP) or IPv6-in-IPv6 —
//! and ICMP "fragmentation needed" / ICMPv6 "packet too big" back to the client when the
//! encapsulated packet would not fit the route's MTU (so path-MTU discovery works through the
//! tunnel).
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    FAMILY_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6, SETTING_FRAG_NEEDED, Settings,
    Stat, TAIL_TUNNEL6, TargetValue, csum, hash::flow_hash_v4,
};

use crate::{
    balance,
    forward::{self, NoHop},
    hdr::{
        ETH_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, Eth, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED,
        ICMP_LEN, ICMP6_PACKET_TOO_BIG, IPV4_DF, IPV4_MIN_LEN, IPV6_LEN, Icmp, Ipv4, Ipv6, Udp,
        Word, Words,
    },
    maps::{HANDOFF, SETTINGS, TAIL_CALLS},
    parse::{Flow, Verdict},
    sys::{self, header_mut},
};

/// Bytes the outer header adds: IPv4, IPv6.
pub const OUTER_LEN: u16 = IPV4_MIN_LEN as u16;
pub const OUTER6_LEN: u16 = IPV6_LEN as u16;
/// TTL of the outer header and of ICMP answers.
const TTL: u8 = 64;
/// ICMP "fragmentation needed" quotes the original IP header and this many bytes after it.
const QUOTE_PAYLOAD: usize = 8;
/// Largest ICMP message built here, in 16-bit words (header + IP header with options + 8).
const MAX_ICMP_WORDS: usize = (ICMP_LEN + 60 + QUOTE_PAYLOAD) / 2;

#[inline(always)]
fn settings() -> Settings {
    SETTINGS.get(0).copied().unwrap_or_default()
}

/// The outer source of a flow: the prefix's network address with host bits from the flow's
/// hash, so the target's NIC (RSS on the outer header) spreads flows over its queues.
#[inline(always)]
fn outer_source(s: &Settings, f: &Flow) -> [u8; 4] {
    let mask = u32::from_be_bytes(s.tunnel_src_hostmask);
    let hash = flow_hash_v4(f.src, f.dst, f.sport, f.dport, f.proto);
    (u32::from_be_bytes(s.tunnel_src) & !mask | hash & mask).to_be_bytes()
}

/// The IPv6 outer source of a flow hashing to `hash`: `tunnel.source_prefix6` with the hash
/// in its host bits (at most the last 32).
#[inline(always)]
fn outer_source6(s: &Settings, hash: u32) -> [u8; 16] {
    let mut a = s.tunnel_src6;
    let mask = u32::from_be_bytes(s.tunnel_src6_hostmask);
    let low = u32::from_be_bytes([a[12], a[13], a[14], a[15]]) & !mask | hash & mask;
    a[12..16].copy_from_slice(&low.to_be_bytes());
    a
}

/// Encapsulate toward the target and send; or answer ICMP when it would not fit. An IPv6
/// target of an IPv4 VIP gets IPv4-in-IPv6.
#[inline(always)]
pub fn tunnel(ctx: &mut XdpContext, f: &Flow, target_id: u32, target: &TargetValue) -> Verdict {
    if target.family == FAMILY_IPV6 {
        return to_tunnel6(ctx, target_id);
    }
    let s = settings();
    let Some(ip) = header_mut::<Ipv4>(ctx, ETH_LEN) else {
        return Verdict::drop(Stat::DropL4Truncated);
    };
    let inner_len = u16::from_be_bytes(ip.tot_len);
    let (tos, df) = (ip.tos, ip.frags[0] & IPV4_DF);
    let (src, dst) = (outer_source(&s, f), lb_common::ipv4_of(&target.addr));

    let tot_len = inner_len.saturating_add(OUTER_LEN);
    let hop = match forward::next_hop(
        ctx,
        Some(forward::Cache::Target(target_id)),
        tot_len,
        forward::Outer4 {
            src,
            dst,
            proto: PROTO_IPIP,
            tos,
        },
    ) {
        Ok(hop) => Some(hop),
        Err(NoHop::NoNeigh) => None,
        Err(NoHop::FragNeeded { mtu }) if s.flags & SETTING_FRAG_NEEDED != 0 => {
            return frag_needed(ctx, f, mtu.saturating_sub(OUTER_LEN));
        }
        Err(NoHop::FragNeeded { .. }) => return Verdict::drop(Stat::DropFragNeeded),
        Err(NoHop::Final(v)) => return v,
    };
    if encapsulate(ctx, src, dst, tos, tot_len, df).is_none() {
        return Verdict::drop(Stat::DropEncapFailed);
    }
    match hop {
        Some(hop) => forward::send(ctx, &hop),
        // The kernel forwards the encapsulated packet and resolves the neighbour meanwhile.
        None => Verdict::pass(Stat::PassNoNeigh),
    }
}

/// Hand the packet to `xlb_tunnel6` (a tail call: its own stack, so neither the IPv4 nor the
/// IPv6 program carries the IPv6 encapsulation inline), the target id in `HANDOFF`.
#[inline(always)]
pub fn to_tunnel6(ctx: &XdpContext, target_id: u32) -> Verdict {
    if sys::with_slot(&HANDOFF, 0, |t| *t = target_id).is_none() {
        return Verdict::drop(Stat::DropEncapFailed);
    }
    sys::tail_call(ctx, &TAIL_CALLS, TAIL_TUNNEL6);
    // Not installed: the agent always installs it, so the object was loaded by other means.
    Verdict::drop(Stat::DropEncapFailed)
}

/// `xlb_tunnel6`: the packet of a `tunnel` flow whose target is IPv6 (the target id in
/// `HANDOFF`), IPv4 or IPv6 inside: into an outer IPv6 header and on to the target; or, too big
/// for the route, "fragmentation needed" / "packet too big" back to the client. ICMP errors
/// about such flows go into the tunnel whole and are never answered. The packet was parsed by
/// the program that handed it over; only what this needs is read again.
#[inline(always)]
pub fn tunnel6_program(ctx: &mut XdpContext) -> Verdict {
    let Some(target_id) = HANDOFF.get(0).copied() else {
        return Verdict::drop(Stat::DropEncapFailed);
    };
    let Some(target) = balance::active_target(target_id) else {
        return Verdict::drop(Stat::DropNoTarget);
    };
    let s = settings();
    let Some(eth) = header_mut::<Eth>(ctx, 0) else {
        return Verdict::drop(Stat::DropL4Truncated);
    };
    let ipv6 = eth.ethertype == ETHERTYPE_IPV6;
    let Some(inner) = inner_of(ctx, ipv6) else {
        return Verdict::drop(Stat::DropL4Truncated);
    };
    let next = if ipv6 { PROTO_IPV6 } else { PROTO_IPIP };
    match tunnel6_to(ctx, &s, inner.hash, inner.len, next, target_id, &target) {
        Ok(v) => v,
        Err(None) => Verdict::drop(Stat::DropEncapFailed),
        Err(Some(mtu)) if s.flags & SETTING_FRAG_NEEDED != 0 && !inner.is_icmp => {
            let mtu = mtu.saturating_sub(OUTER6_LEN);
            if ipv6 {
                packet_too_big(ctx, mtu)
            } else {
                frag_needed_at(ctx, inner.l4_off, mtu)
            }
        }
        Err(Some(_)) => Verdict::drop(Stat::DropFragNeeded),
    }
}

/// What the tunnel program reads of the inner packet.
struct Inner {
    /// Its IP length (header included).
    len: u16,
    /// Spreads flows over the outer source's host bits (the target's NIC queues): the last
    /// address words, the ports and the protocol, mixed.
    hash: u32,
    l4_off: usize,
    /// ICMP or ICMPv6 (errors about the flow): never answered with an error of our own.
    is_icmp: bool,
}

#[inline(always)]
fn inner_of(ctx: &XdpContext, ipv6: bool) -> Option<Inner> {
    let (len, proto, l4_off, addr_words) = if ipv6 {
        let ip = header_mut::<Ipv6>(ctx, ETH_LEN)?;
        let w = |a: &[u8; 16]| u32::from_be_bytes([a[12], a[13], a[14], a[15]]);
        let len = u16::from_be_bytes(ip.payload_len).saturating_add(OUTER6_LEN);
        (
            len,
            ip.next,
            ETH_LEN + IPV6_LEN,
            w(&ip.src) ^ w(&ip.dst).rotate_left(16),
        )
    } else {
        let ip = header_mut::<Ipv4>(ctx, ETH_LEN)?;
        let l4_off = ETH_LEN + usize::from(ip.vihl & 0x0f) * 4;
        let words = u32::from_be_bytes(ip.src) ^ u32::from_be_bytes(ip.dst).rotate_left(16);
        (u16::from_be_bytes(ip.tot_len), ip.proto, l4_off, words)
    };
    let ports = if proto == lb_common::PROTO_TCP || proto == lb_common::PROTO_UDP {
        header_mut::<Udp>(ctx, l4_off)
            .map(|u| u32::from_be_bytes([u.src[0], u.src[1], u.dst[0], u.dst[1]]))
            .unwrap_or(0)
    } else {
        0
    };
    let hash = lb_common::hash::fmix32(addr_words ^ ports ^ (u32::from(proto) << 24));
    Some(Inner {
        len,
        hash,
        l4_off,
        is_icmp: proto == PROTO_ICMP || proto == PROTO_ICMPV6,
    })
}

/// Put the IP packet (`inner_len` bytes, of protocol `next`) inside an outer IPv6 header to
/// the target and send it. `Err(Some(mtu))`: it would not fit the route's MTU; `Err(None)`:
/// no room for the header.
#[inline(always)]
fn tunnel6_to(
    ctx: &mut XdpContext,
    s: &Settings,
    hash: u32,
    inner_len: u16,
    next: u8,
    target_id: u32,
    target: &TargetValue,
) -> Result<Verdict, Option<u16>> {
    let src = outer_source6(s, hash);
    let tot_len = inner_len.saturating_add(OUTER6_LEN);
    let ask = forward::Outer6 {
        src: &src,
        dst: &target.addr,
        proto: next,
    };
    let hop = match forward::next_hop(ctx, Some(forward::Cache::Target(target_id)), tot_len, ask) {
        Ok(hop) => Some(hop),
        Err(NoHop::NoNeigh) => None,
        Err(NoHop::FragNeeded { mtu }) => return Err(Some(mtu)),
        Err(NoHop::Final(v)) => return Ok(v),
    };
    if encapsulate6(ctx, &src, &target.addr, inner_len, next).is_none() {
        return Err(None);
    }
    Ok(match hop {
        Some(hop) => forward::send(ctx, &hop),
        None => Verdict::pass(Stat::PassNoNeigh),
    })
}

/// Prepend Ethernet + outer IPv6 (`src` -> `dst`, next header `next`, hop limit 64) to the
/// IP packet of `payload_len` bytes. The MACs are left for `forward::send`.
#[inline(always)]
fn encapsulate6(
    ctx: &mut XdpContext,
    src: &[u8; 16],
    dst: &[u8; 16],
    payload_len: u16,
    next: u8,
) -> Option<()> {
    sys::adjust_head(ctx, -i32::from(OUTER6_LEN))?;
    let eth = header_mut::<Eth>(ctx, 0)?;
    eth.ethertype = ETHERTYPE_IPV6;
    let ip = header_mut::<Ipv6>(ctx, ETH_LEN)?;
    ip.vtcfl = [0x60, 0, 0, 0];
    ip.payload_len = payload_len.to_be_bytes();
    ip.next = next;
    ip.hop_limit = TTL;
    ip.src = *src;
    ip.dst = *dst;
    Some(())
}

/// Turn the packet into ICMPv6 "packet too big" (MTU `mtu`) from the VIP back to the client,
/// quoting its IPv6 header and first 8 bytes, and send it back where it came from.
#[inline(always)]
fn packet_too_big(ctx: &mut XdpContext, mtu: u16) -> Verdict {
    match build_packet_too_big(ctx, mtu) {
        Some(()) => Verdict {
            action: xdp_action::XDP_TX,
            stat: Stat::TxFragNeeded,
        },
        None => Verdict::drop(Stat::DropEncapFailed),
    }
}

/// Bytes an ICMPv6 "packet too big" built here quotes: the IPv6 header and 8 more.
const QUOTE6: usize = IPV6_LEN + QUOTE_PAYLOAD;

/// Turn the frame into the start of an ICMP answer to its sender: `room` bytes (the answer's IP
/// and ICMP headers) made in front of the packet, which is cut to its first `quote` bytes, and an
/// Ethernet header back to where the frame came from, of `ethertype`.
#[inline(always)]
fn answer_in_place(
    ctx: &mut XdpContext,
    room: usize,
    quote: usize,
    ethertype: [u8; 2],
) -> Option<()> {
    let (client_mac, our_mac) = {
        let eth = header_mut::<Eth>(ctx, 0)?;
        (eth.src, eth.dst)
    };
    let len = ETH_LEN + room + quote;
    sys::adjust_head(ctx, -(room as i32))?;
    let have = sys::packet_len(ctx) as usize;
    if have > len {
        sys::adjust_tail(ctx, -((have - len) as i32))?;
    }
    let eth = header_mut::<Eth>(ctx, 0)?;
    eth.dst = client_mac;
    eth.src = our_mac;
    eth.ethertype = ethertype;
    Some(())
}

#[inline(always)]
fn build_packet_too_big(ctx: &mut XdpContext, mtu: u16) -> Option<()> {
    let room = IPV6_LEN + ICMP_LEN;
    answer_in_place(ctx, room, QUOTE6, ETHERTYPE_IPV6)?;
    let icmp_len = (ICMP_LEN + QUOTE6) as u16;
    let ip = header_mut::<Ipv6>(ctx, ETH_LEN)?;
    ip.vtcfl = [0x60, 0, 0, 0];
    ip.payload_len = icmp_len.to_be_bytes();
    ip.next = PROTO_ICMPV6;
    ip.hop_limit = TTL;
    // From the VIP to the client: the quoted packet's addresses, swapped, copied in place.
    let quoted = header_mut::<Ipv6>(ctx, ETH_LEN + room)?;
    ip.src = quoted.dst;
    ip.dst = quoted.src;
    let icmp_off = ETH_LEN + IPV6_LEN;
    let icmp = header_mut::<Icmp>(ctx, icmp_off)?;
    icmp.kind = ICMP6_PACKET_TOO_BIG;
    icmp.code = 0;
    icmp.check = [0, 0];
    icmp.unused = [0, 0];
    icmp.mtu = mtu.to_be_bytes();
    // The checksum covers the pseudo-header (both addresses, the length, next header 58), the
    // ICMPv6 header and the quote; the addresses are summed from the packet, in place.
    let mut sum = csum::add(u32::from(icmp_len), u16::from(PROTO_ICMPV6));
    let words = header_mut::<Words<{ (2 * 16 + ICMP_LEN + QUOTE6) / 2 }>>(ctx, ETH_LEN + 8)?;
    for w in &words.0 {
        sum = csum::add(sum, u16::from_be_bytes(*w));
    }
    header_mut::<Icmp>(ctx, icmp_off)?.check = csum::finish(sum).to_be_bytes();
    Some(())
}

/// Prepend Ethernet + outer IPv4 (`src` -> `dst`, protocol 4) to the IP packet.
/// The MACs are left for `forward::send`.
#[inline(always)]
fn encapsulate(
    ctx: &mut XdpContext,
    src: [u8; 4],
    dst: [u8; 4],
    tos: u8,
    tot_len: u16,
    df: u8,
) -> Option<()> {
    sys::adjust_head(ctx, -i32::from(OUTER_LEN))?;
    let eth = header_mut::<Eth>(ctx, 0)?;
    eth.ethertype = ETHERTYPE_IPV4;
    let ip = header_mut::<Ipv4>(ctx, ETH_LEN)?;
    let tot = tot_len.to_be_bytes();
    let mut h = [0u8; IPV4_MIN_LEN];
    h[0] = 0x45;
    h[1] = tos;
    h[2] = tot[0];
    h[3] = tot[1];
    h[6] = df;
    h[8] = TTL;
    h[9] = PROTO_IPIP;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let check = csum::ipv4_header(&h).to_be_bytes();
    ip.vihl = h[0];
    ip.tos = h[1];
    ip.tot_len = tot;
    ip.id = [0, 0];
    ip.frags = [df, 0];
    ip.ttl = TTL;
    ip.proto = PROTO_IPIP;
    ip.check = check;
    ip.src = src;
    ip.dst = dst;
    Some(())
}

/// [`frag_needed`] for a packet whose transport header starts at `l4_off`, addresses read from
/// the packet.
#[inline(always)]
fn frag_needed_at(ctx: &mut XdpContext, l4_off: usize, mtu: u16) -> Verdict {
    let Some(ip) = header_mut::<Ipv4>(ctx, ETH_LEN) else {
        return Verdict::drop(Stat::DropEncapFailed);
    };
    let f = Flow {
        src: ip.src,
        dst: ip.dst,
        sport: [0; 2],
        dport: [0; 2],
        proto: ip.proto,
        tcp_flags: 0,
        ttl: ip.ttl,
        has_options: false,
        l4_off,
    };
    frag_needed(ctx, &f, mtu)
}

/// Turn the packet into ICMP "fragmentation needed" (next-hop MTU `mtu`) from the VIP back to
/// the client, quoting its IP header and first 8 bytes, and send it back where it came from.
#[inline(always)]
fn frag_needed(ctx: &mut XdpContext, f: &Flow, mtu: u16) -> Verdict {
    match build_frag_needed(ctx, f, mtu) {
        Some(()) => Verdict {
            action: xdp_action::XDP_TX,
            stat: Stat::TxFragNeeded,
        },
        None => Verdict::drop(Stat::DropEncapFailed),
    }
}

#[inline(always)]
fn build_frag_needed(ctx: &mut XdpContext, f: &Flow, mtu: u16) -> Option<()> {
    let quote = f.l4_off - ETH_LEN + QUOTE_PAYLOAD;
    let room = IPV4_MIN_LEN + ICMP_LEN;
    answer_in_place(ctx, room, quote, ETHERTYPE_IPV4)?;
    let tot = ((room + quote) as u16).to_be_bytes();
    let mut h = [0u8; IPV4_MIN_LEN];
    h[0] = 0x45;
    h[2] = tot[0];
    h[3] = tot[1];
    h[8] = TTL;
    h[9] = PROTO_ICMP;
    h[12..16].copy_from_slice(&f.dst);
    h[16..20].copy_from_slice(&f.src);
    let check = csum::ipv4_header(&h).to_be_bytes();
    let ip = header_mut::<Ipv4>(ctx, ETH_LEN)?;
    ip.vihl = h[0];
    ip.tos = 0;
    ip.tot_len = tot;
    ip.id = [0, 0];
    ip.frags = [0, 0];
    ip.ttl = TTL;
    ip.proto = PROTO_ICMP;
    ip.check = check;
    ip.src = f.dst;
    ip.dst = f.src;
    let icmp_off = ETH_LEN + IPV4_MIN_LEN;
    let icmp = header_mut::<Icmp>(ctx, icmp_off)?;
    icmp.kind = ICMP_DEST_UNREACH;
    icmp.code = ICMP_FRAG_NEEDED;
    icmp.check = [0, 0];
    icmp.unused = [0, 0];
    icmp.mtu = mtu.to_be_bytes();
    // The checksum covers the ICMP header and the quote: at most MAX_ICMP_WORDS words.
    let words = (ICMP_LEN + quote) / 2;
    let mut sum = 0u32;
    let mut i = 0;
    while i < MAX_ICMP_WORDS {
        if i >= words {
            break;
        }
        let w = header_mut::<Word>(ctx, icmp_off + i * 2)?;
        sum = csum::add(sum, u16::from_be_bytes(w.0));
        i += 1;
    }
    header_mut::<Icmp>(ctx, icmp_off)?.check = csum::finish(sum).to_be_bytes();
    Some(())
}
