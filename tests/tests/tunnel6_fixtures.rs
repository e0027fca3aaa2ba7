//! Tunnels to IPv6 targets through BPF_PROG_TEST_RUN: IPv6-in-IPv6 for an IPv6 VIP and
//! IPv4-in-IPv6 for an IPv4 VIP (both through `xlb_tunnel6`, reached by a tail call), the
//! "packet too big" / "fragmentation needed" answers when the encapsulated packet would not fit,
//! and the decapsulation program giving back the inner packet. Outputs are read with etherparse
//! and a from-scratch one's-complement sum.
use etherparse::{IpNumber, Ipv4HeaderSlice, Ipv6HeaderSlice, PacketBuilder};
use lb_common::{DecapStat, Stat};
use xlb::{DECAP_OBJECT, dataplane::decap::Decap};
use xlb_rig::lab::*;

/// The outer IPv6 header of a tunnelled frame, checked: to target `k`, from the fixture's
/// source prefix, hop limit 64, `next`, and the payload length of `inner_len` bytes.
fn check_outer6(out: &[u8], k: u8, next: IpNumber, inner_len: usize) {
    assert_eq!(out[12..14], [0x86, 0xdd], "IPv6 outer");
    let h = Ipv6HeaderSlice::from_slice(&out[14..])
        .expect("outer IPv6 parses")
        .to_header();
    assert_eq!(h.next_header, next);
    assert_eq!(h.destination, target6(k));
    assert_eq!(h.hop_limit, 64);
    assert_eq!(usize::from(h.payload_length), inner_len);
    assert_eq!(h.source[..8], TUNNEL_PREFIX6, "outer source in the /64");
}

#[test]
fn ipv6_in_ipv6_and_ipv4_in_ipv6_carry_the_byte_identical_packet() {
    let mut lab = Lab::new("tun6", &[1, 2]);
    let pkt = tcp6(CLIENT6, 40_000, VIP6_TUN, 8080, Flags::Syn, 64);
    let r = lab.run(&pkt, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let k = mac_target(&r.out);
    check_outer6(&r.out, k, IpNumber::IPV6, pkt.len() - 14);
    assert_eq!(
        r.out[54..],
        pkt[14..],
        "the inner IPv6 packet, byte for byte"
    );

    let pkt4 = tcp(CLIENT, 40_001, VIP_TUN46, 8080, Flags::Syn, 64);
    let r = lab.run(&pkt4, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let k = mac_target(&r.out);
    check_outer6(&r.out, k, IpNumber::IPV4, pkt4.len() - 14);
    assert_eq!(
        r.out[54..],
        pkt4[14..],
        "the inner IPv4 packet, byte for byte"
    );

    // Flows of one client spread over the prefix's host bits, and keep theirs.
    let mut seen = std::collections::BTreeSet::new();
    for sport in 41_000..41_032 {
        let a = lab.run(
            &tcp6(CLIENT6, sport, VIP6_TUN, 8080, Flags::Syn, 64),
            lab.in0,
        );
        let b = lab.run(
            &tcp6(CLIENT6, sport, VIP6_TUN, 8080, Flags::Ack, 64),
            lab.in0,
        );
        assert_eq!(a.out[22..38], b.out[22..38], "same flow, same outer source");
        seen.insert(a.out[22..38].to_vec());
    }
    assert!(seen.len() > 16, "32 flows got {} outer sources", seen.len());
}

fn big6(dst: [u8; 16], ip_len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv6(CLIENT6, dst, 64)
        .tcp(40_000, 8080, 1, 64_240)
        .ack(1)
        .write(&mut v, &vec![0x5a; ip_len - 60])
        .unwrap();
    v
}

#[test]
fn too_big_once_encapsulated_is_answered_packet_too_big_or_frag_needed() {
    let mut lab = Lab::new("tun6mtu", &[1, 2]);
    // 1461 bytes of IPv6: 1501 with the outer header, over the targets' 1500-byte MTU.
    let pkt = big6(VIP6_TUN, 1461);
    let r = lab.run(&pkt, lab.in0);
    assert_eq!(r.retval, XDP_TX, "sent back where it came from");
    r.counted(Stat::TxFragNeeded, &[Stat::EvMidFlowMiss]);
    let out = &r.out;
    assert_eq!((&out[0..6], &out[6..12]), (&CLIENT_MAC[..], &IN0_MAC[..]));
    assert_eq!(out[12..14], [0x86, 0xdd], "an IPv6 frame");
    let h = Ipv6HeaderSlice::from_slice(&out[14..]).unwrap().to_header();
    assert_eq!(h.next_header, IpNumber::IPV6_ICMP);
    assert_eq!((h.source, h.destination), (VIP6_TUN, CLIENT6));
    let icmp = &out[54..];
    assert_eq!(usize::from(h.payload_length), icmp.len());
    assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
    assert_eq!(
        u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
        1460,
        "MTU less 40"
    );
    let len = (icmp.len() as u32).to_be_bytes();
    assert_eq!(
        ones_complement(&[&h.source, &h.destination, &len, &[0, 0, 0, 58], icmp]),
        0,
        "ICMPv6 checksum"
    );
    assert_eq!(
        icmp[8..],
        pkt[14..14 + 48],
        "quotes the IPv6 header and 8 bytes"
    );
    let fits = big6(VIP6_TUN, 1460);
    assert_eq!(lab.run(&fits, lab.in0).retval, XDP_REDIRECT);

    // IPv4 inside IPv6: ICMP "fragmentation needed", MTU less the 40-byte outer header.
    let mut v4 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv4(CLIENT, VIP_TUN46, 64)
        .tcp(40_002, 8080, 1, 64_240)
        .ack(1)
        .write(&mut v4, &vec![0x5a; 1461 - 40])
        .unwrap();
    let r = lab.run(&v4, lab.in0);
    assert_eq!(r.retval, XDP_TX);
    r.counted(Stat::TxFragNeeded, &[Stat::EvMidFlowMiss]);
    assert_eq!(r.out[12..14], [0x08, 0x00], "an IPv4 frame");
    let ip = Ipv4HeaderSlice::from_slice(&r.out[14..])
        .unwrap()
        .to_header();
    assert_eq!((ip.source, ip.destination), (VIP_TUN46, CLIENT));
    let icmp = &r.out[34..];
    assert_eq!((icmp[0], icmp[1]), (3, 4));
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1460);
    assert_eq!(ones_complement(&[icmp]), 0, "ICMP checksum");
}

#[test]
fn decapsulation_of_ipv6_outer_headers_gives_back_the_inner_packet() {
    let mut lab = Lab::new("decap6", &[1, 2]);
    let stat = |d: &Decap, s: DecapStat| {
        d.stats()
            .unwrap()
            .into_iter()
            .find(|(x, _)| *x == s)
            .unwrap()
            .1
    };
    for (pkt, ethertype) in [
        (
            tcp6(CLIENT6, 40_000, VIP6_TUN, 8080, Flags::Syn, 64),
            [0x86, 0xdd],
        ),
        (
            tcp(CLIENT, 40_000, VIP_TUN46, 8080, Flags::Syn, 64),
            [0x08, 0x00],
        ),
    ] {
        let tunnelled = lab.run(&pkt, lab.in0).out;
        let k = mac_target(&tunnelled);
        let mut d = Decap::load(DECAP_OBJECT).expect("decap object loads");
        d.add_address(std::net::IpAddr::from(target6(k))).unwrap();
        let ingress = lab.t[usize::from(k) - 1];
        let (ret, out, _) = run_once(d.program().unwrap(), &tunnelled, ingress);
        assert_eq!(ret, XDP_PASS);
        assert_eq!(out[0..12], tunnelled[0..12], "the frame's own MACs");
        assert_eq!(out[12..14], ethertype, "the inner packet's ethertype");
        assert_eq!(out[14..], pkt[14..], "the client's packet, byte for byte");
        assert_eq!(stat(&d, DecapStat::Decapsulated), 1);
        // To another address: untouched.
        let mut elsewhere = tunnelled.clone();
        elsewhere[14 + 24 + 15] ^= 0xff;
        let (ret, out, _) = run_once(d.program().unwrap(), &elsewhere, ingress);
        assert_eq!((ret, out.as_slice()), (XDP_PASS, elsewhere.as_slice()));
        assert_eq!(stat(&d, DecapStat::PassNotLocal), 1);
    }
}
