//! Stage 5 for `tunnel` listeners: IPv4-in-IPv4 to the target, the inner packet untouched, and
//! ICMP "fragmentation needed" back to the client when the encapsulated packet would not fit
//! the route's MTU (so path-MTU discovery works through the tunnel).
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    PROTO_ICMP, PROTO_IPIP, SETTING_FRAG_NEEDED, Settings, Stat, TargetValue, csum,
    hash::flow_hash_v4,
};

use crate::{
    forward::{self, NoHop},
    hdr::{
        ETH_LEN, ETHERTYPE_IPV4, Eth, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_LEN, IPV4_DF,
        IPV4_MIN_LEN, Icmp, Ipv4, Word,
    },
    maps::SETTINGS,
    parse::{Flow, Verdict},
    sys::{self, header_mut},
};

/// Bytes the outer header adds.
pub const OUTER_LEN: u16 = IPV4_MIN_LEN as u16;
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

/// Encapsulate toward the target and send; or answer ICMP when it would not fit.
#[inline(always)]
pub fn tunnel(ctx: &mut XdpContext, f: &Flow, target_id: u32, target: &TargetValue) -> Verdict {
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
        Some(target_id),
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
    let (client_mac, our_mac) = {
        let eth = header_mut::<Eth>(ctx, 0)?;
        (eth.src, eth.dst)
    };
    let quote = f.l4_off - ETH_LEN + QUOTE_PAYLOAD;
    let room = IPV4_MIN_LEN + ICMP_LEN;
    let len = ETH_LEN + room + quote;
    sys::adjust_head(ctx, -(room as i32))?;
    let have = sys::packet_len(ctx) as usize;
    if have > len {
        sys::adjust_tail(ctx, -((have - len) as i32))?;
    }
    let eth = header_mut::<Eth>(ctx, 0)?;
    eth.dst = client_mac;
    eth.src = our_mac;
    eth.ethertype = ETHERTYPE_IPV4;
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
