//! ICMPv6 errors about balanced flows through BPF_PROG_TEST_RUN: a router's "packet too big"
//! about a target's reply is addressed to the IPv6 VIP; the balancer (its `xlb6_icmp` program,
//! two tail calls in) finds the flow by the quoted packet and sends the error to that flow's
//! target, translated for NAT66 (outer destination, quoted source and port, quoted TCP
//! checksum and the ICMPv6 checksum, whose pseudo-header covers the outer addresses). An error
//! a NAT66 target sends reaches the client from the VIP. Checksums are recomputed here with
//! etherparse and a from-scratch one's-complement sum.
use etherparse::{
    Icmpv6Type, IpNumber, Ipv6Header, Ipv6HeaderSlice, PacketBuilder, TcpHeaderSlice,
    UdpHeaderSlice, icmpv6::DestUnreachableCode,
};
use lb_common::Stat;
use xlb_rig::lab::*;

const ROUTER6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe]);

/// A TCP packet (IPv6 and on, no Ethernet) from `src:sport` to the client.
fn reply6(src: [u8; 16], sport: u16, hops: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv6(src, CLIENT6, hops)
        .tcp(sport, 40_000, 777, 64_240)
        .ack(1001)
        .write(&mut v, &[0x42; 1400])
        .unwrap();
    v
}

/// `kind` from `from` to `to`, quoting `quoted` up to `quote` bytes.
fn icmp6(from: [u8; 16], to: [u8; 16], kind: Icmpv6Type, quoted: &[u8], quote: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv6(from, to, 64)
        .icmpv6(kind)
        .write(&mut v, &quoted[..quote])
        .unwrap();
    v
}

fn too_big(to: [u8; 16], quoted: &[u8], quote: usize) -> Vec<u8> {
    icmp6(
        ROUTER6,
        to,
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        quoted,
        quote,
    )
}

/// The outer header and the ICMPv6 message of an output, the message's checksum checked
/// against its pseudo-header.
fn icmp_of(out: &[u8]) -> (Ipv6Header, &[u8]) {
    let outer = Ipv6HeaderSlice::from_slice(&out[14..]).unwrap().to_header();
    assert_eq!(outer.next_header, IpNumber::IPV6_ICMP);
    let msg = &out[14 + 40..];
    assert_eq!(usize::from(outer.payload_length), msg.len());
    // The ICMPv6 checksum over pseudo-header + message: 0 when valid.
    let len = (msg.len() as u32).to_be_bytes();
    let pseudo: [&[u8]; 5] = [&outer.source, &outer.destination, &len, &[0, 0, 0, 58], msg];
    assert_eq!(ones_complement(&pseudo), 0, "ICMPv6 checksum");
    (outer, msg)
}

#[test]
fn packet_too_big_about_a_nat66_reply_goes_to_its_target_translated() {
    let mut lab = Lab::new("icmp6nat", &[1, 2]);
    let syn = lab.run(&tcp6(CLIENT6, 40_000, VIP6, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(syn.retval, XDP_REDIRECT);
    let k = (1..=3u8).find(|k| syn.out[38..54] == target6(*k)).unwrap();
    // The reply as it left the balancer (from the VIP, hop limit decremented), quoted with its
    // whole TCP header.
    let quoted = reply6(VIP6, 80, 63);
    let r = lab.run(&too_big(VIP6, &quoted, 40 + 40), lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[Stat::EvIcmpToTarget]);
    assert_eq!(r.out[0..6], target_mac(k), "to the flow's target");
    let (outer, msg) = icmp_of(&r.out);
    assert_eq!((outer.source, outer.destination), (ROUTER6, target6(k)));
    assert_eq!(outer.hop_limit, 63, "forwarded like any packet");
    assert_eq!((msg[0], msg[1]), (2, 0), "still packet too big");
    assert_eq!(u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]), 1280);
    let inner = Ipv6HeaderSlice::from_slice(&msg[8..]).unwrap().to_header();
    assert_eq!((inner.source, inner.destination), (target6(k), CLIENT6));
    let tcp_q = TcpHeaderSlice::from_slice(&msg[48..]).unwrap();
    assert_eq!(
        (tcp_q.source_port(), tcp_q.destination_port()),
        (8080, 40_000)
    );
    let own = reply6(target6(k), 8080, 63);
    let own_tcp = TcpHeaderSlice::from_slice(&own[40..]).unwrap();
    assert_eq!(
        tcp_q.checksum(),
        own_tcp.checksum(),
        "quoted TCP checksum translated"
    );
}

#[test]
fn packet_too_big_about_a_dsr6_flow_goes_to_its_target_untouched() {
    let mut lab = Lab::new("icmp6dsr", &[1, 2]);
    let syn = lab.run(
        &tcp6(CLIENT6, 40_000, VIP6_DSR, 8080, Flags::Syn, 64),
        lab.in0,
    );
    let k = (1..=3u8).find(|k| syn.out[0..6] == target_mac(*k)).unwrap();
    let quoted = reply6(VIP6_DSR, 8080, 64);
    let icmp = too_big(VIP6_DSR, &quoted, 48);
    let r = lab.run(&icmp, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[Stat::EvIcmpToTarget]);
    assert_eq!(r.out[0..6], target_mac(k));
    assert_eq!(r.out[12..], icmp[12..], "the packet itself untouched");
}

#[test]
fn icmp6_errors_about_no_known_flow_are_dropped_and_others_pass() {
    let mut lab = Lab::new("icmp6none", &[1, 2]);
    let quoted = reply6(VIP6, 80, 63);
    let r = lab.run(&too_big(VIP6, &quoted, 48), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropIcmpNoFlow, &[]);
    // A quote too short to hold the ports cannot be matched either.
    let r = lab.run(&too_big(VIP6, &quoted, 44), lab.in0);
    r.counted(Stat::DropIcmpNoFlow, &[]);
    let other = too_big(target6(3), &quoted, 48);
    let r = lab.run(&other, lab.in0);
    assert_eq!((r.retval, r.out.as_slice()), (XDP_PASS, other.as_slice()));
    r.counted(Stat::PassNotListener, &[]);
}

#[test]
fn port_unreachable_from_a_nat66_target_reaches_the_client_from_the_vip() {
    let mut lab = Lab::new("icmp6back", &[1, 2]);
    let dgram = udp6(CLIENT6, 50_000, VIP6, 9000, b"hello");
    let fwd = lab.run(&dgram, lab.in0);
    assert_eq!(fwd.retval, XDP_REDIRECT);
    let k = (1..=3u8).find(|k| fwd.out[38..54] == target6(*k)).unwrap();
    // The target refuses the datagram as it got it (client -> target:9000).
    let got = &fwd.out[14..];
    let unreach = icmp6(
        target6(k),
        CLIENT6,
        Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
        got,
        got.len(),
    );
    let mut from_target = unreach.clone();
    from_target[0..6].copy_from_slice(&node_mac(k));
    from_target[6..12].copy_from_slice(&target_mac(k));
    let r = lab.run(&from_target, lab.t[usize::from(k) - 1]);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[Stat::EvIcmpToClient]);
    assert_eq!(r.out[0..6], CLIENT_MAC);
    let (outer, msg) = icmp_of(&r.out);
    assert_eq!(
        (outer.source, outer.destination),
        (VIP6, CLIENT6),
        "from the VIP"
    );
    let inner = Ipv6HeaderSlice::from_slice(&msg[8..]).unwrap().to_header();
    assert_eq!(
        (inner.source, inner.destination),
        (CLIENT6, VIP6),
        "quoting the VIP"
    );
    let udp_q = UdpHeaderSlice::from_slice(&msg[48..]).unwrap();
    assert_eq!(
        (udp_q.source_port(), udp_q.destination_port()),
        (50_000, 9000)
    );
    // The quoted UDP checksum is the client's own datagram's.
    let own = UdpHeaderSlice::from_slice(&dgram[14 + 40..]).unwrap();
    assert_eq!(
        udp_q.checksum(),
        own.checksum(),
        "quoted UDP checksum translated back"
    );
}
