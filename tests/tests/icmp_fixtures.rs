//! ICMP errors about balanced flows through BPF_PROG_TEST_RUN: a router's "fragmentation
//! needed" about a target's reply is addressed to the VIP; the balancer finds the flow by the
//! quoted packet and sends the error to that flow's target, translated for NAT, so path-MTU
//! discovery works. Outputs are read with etherparse; checksums are computed here.
use etherparse::{
    Icmpv4Type, IpNumber, Ipv4HeaderSlice, PacketBuilder, TcpHeaderSlice,
    icmpv4::DestUnreachableHeader,
};
use lb_common::Stat;
use xlb_rig::lab::*;

const ROUTER: [u8; 4] = [198, 18, 0, 254];

/// A TCP packet (IP and on, no Ethernet) from `src:sport` to the client.
fn reply(src: [u8; 4], sport: u16, ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ipv4(src, CLIENT, ttl)
        .tcp(sport, 40_000, 777, 64_240)
        .ack(1001)
        .write(&mut v, &[0x42; 1400])
        .unwrap();
    v
}

/// The router's "fragmentation needed" (next-hop MTU 1280) about `quoted`, which it quotes up
/// to `quote` bytes, sent to `to`.
fn frag_needed(to: [u8; 4], quoted: &[u8], quote: usize) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv4(ROUTER, to, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
        ))
        .write(&mut v, &quoted[..quote])
        .unwrap();
    v
}

#[test]
fn frag_needed_about_a_nat_reply_goes_to_its_target_translated() {
    let mut lab = Lab::new("icmpnat", &[1, 2]);
    let syn = lab.run(&tcp(CLIENT, 40_000, VIP, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(syn.retval, XDP_REDIRECT);
    let k = target_of(&syn.out);
    // The reply as it left the balancer (from the VIP, TTL already decremented), quoted with
    // its whole TCP header (so the quoted checksum must be translated too).
    let quoted = reply(VIP, 80, 63);
    let icmp = frag_needed(VIP, &quoted, 40);
    let r = lab.run(&icmp, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[Stat::EvIcmpToTarget]);
    let out = &r.out;
    assert_eq!(out[0..6], target_mac(k), "to the flow's target");
    let outer = Ipv4HeaderSlice::from_slice(&out[14..]).unwrap().to_header();
    assert_eq!(
        outer.header_checksum,
        outer.calc_header_checksum(),
        "outer IPv4 checksum"
    );
    assert_eq!((outer.source, outer.destination), (ROUTER, target(k)));
    assert_eq!(outer.protocol, IpNumber::ICMP);
    assert_eq!(outer.time_to_live, 63, "forwarded like any packet");
    let msg = &out[34..];
    assert_eq!((msg[0], msg[1]), (3, 4), "still fragmentation needed");
    assert_eq!(
        u16::from_be_bytes([msg[6], msg[7]]),
        1280,
        "the MTU is kept"
    );
    assert_eq!(ones_complement(&[msg]), 0, "ICMP checksum");
    let inner = Ipv4HeaderSlice::from_slice(&msg[8..]).unwrap().to_header();
    assert_eq!(
        inner.header_checksum,
        inner.calc_header_checksum(),
        "quoted IPv4 checksum"
    );
    assert_eq!((inner.source, inner.destination), (target(k), CLIENT));
    let tcp_q = TcpHeaderSlice::from_slice(&msg[28..]).unwrap();
    assert_eq!(
        (tcp_q.source_port(), tcp_q.destination_port()),
        (8080, 40_000)
    );
    // The quoted TCP checksum is the one the target's own packet had.
    let own = reply(target(k), 8080, 63);
    let own_tcp = TcpHeaderSlice::from_slice(&own[20..]).unwrap();
    assert_eq!(
        tcp_q.checksum(),
        own_tcp.checksum(),
        "quoted TCP checksum translated"
    );
}

#[test]
fn an_error_about_no_known_flow_is_dropped_and_one_not_for_a_vip_passes() {
    let mut lab = Lab::new("icmpnone", &[1, 2]);
    let quoted = reply(VIP, 80, 63);
    let r = lab.run(&frag_needed(VIP, &quoted, 28), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropIcmpNoFlow, &[]);
    // A quote too short to hold the ports cannot be matched either.
    let r = lab.run(&frag_needed(VIP, &quoted, 22), lab.in0);
    r.counted(Stat::DropIcmpNoFlow, &[]);
    let other = frag_needed([198, 18, 0, 1], &quoted, 28);
    let r = lab.run(&other, lab.in0);
    assert_eq!((r.retval, r.out.as_slice()), (XDP_PASS, other.as_slice()));
    r.counted(Stat::PassNotListener, &[]);
}

#[test]
fn frag_needed_about_a_dsr_flow_goes_to_its_target_unchanged() {
    let mut lab = Lab::new("icmpdsr", &[1, 2]);
    let syn = lab.run(&tcp(CLIENT, 40_000, VIP_DSR, 8080, Flags::Syn, 64), lab.in0);
    let k = (1..=3u8).find(|k| syn.out[0..6] == target_mac(*k)).unwrap();
    let quoted = reply(VIP_DSR, 8080, 64);
    let icmp = frag_needed(VIP_DSR, &quoted, 28);
    let r = lab.run(&icmp, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[Stat::EvIcmpToTarget]);
    assert_eq!(r.out[0..6], target_mac(k), "to the flow's target");
    assert_eq!(r.out[12..], icmp[12..], "the packet itself untouched");
}

#[test]
fn frag_needed_about_a_tunnel_flow_is_encapsulated_to_its_target() {
    let mut lab = Lab::new("icmptun", &[1, 2]);
    let syn = lab.run(&tcp(CLIENT, 40_000, VIP_TUN, 8080, Flags::Syn, 64), lab.in0);
    let k = target_of(&syn.out);
    let quoted = reply(VIP_TUN, 8080, 64);
    let icmp = frag_needed(VIP_TUN, &quoted, 28);
    let r = lab.run(&icmp, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[Stat::EvIcmpToTarget]);
    let outer = Ipv4HeaderSlice::from_slice(&r.out[14..])
        .unwrap()
        .to_header();
    assert_eq!(outer.header_checksum, outer.calc_header_checksum());
    assert_eq!(
        (outer.protocol, outer.destination),
        (IpNumber::IPV4, target(k))
    );
    assert_eq!(r.out[34..], icmp[14..], "the error itself, byte for byte");
}

fn echo_request(dst: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv4(CLIENT, dst, 61)
        .icmpv4_echo_request(0x1234, 7)
        .write(&mut v, b"ping payload 0123456789")
        .unwrap();
    v
}

#[test]
fn an_echo_request_to_a_vip_is_answered_and_others_pass() {
    let mut lab = Lab::new("echo", &[1, 2]);
    let req = echo_request(VIP);
    let r = lab.run(&req, lab.in0);
    assert_eq!(r.retval, 3, "XDP_TX: back where it came from");
    r.counted(Stat::TxIcmpEcho, &[]);
    let out = &r.out;
    assert_eq!(
        (&out[0..6], &out[6..12]),
        (&req[6..12], &req[0..6]),
        "MACs swapped"
    );
    let ip = Ipv4HeaderSlice::from_slice(&out[14..]).unwrap().to_header();
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!(
        (ip.source, ip.destination, ip.time_to_live),
        (VIP, CLIENT, 64)
    );
    let msg = &out[34..];
    assert_eq!((msg[0], msg[1]), (0, 0), "echo reply");
    assert_eq!(ones_complement(&[msg]), 0, "ICMP checksum");
    assert_eq!(msg[4..], req[38..], "identifier, sequence and payload kept");
    let other = echo_request([198, 18, 0, 1]);
    let r = lab.run(&other, lab.in0);
    assert_eq!((r.retval, r.out.as_slice()), (XDP_PASS, other.as_slice()));
    r.counted(Stat::PassNotListener, &[]);
}

#[test]
fn icmp_echo_false_leaves_echo_requests_to_a_vip_unanswered() {
    let mut lab = Lab::new("noecho", &[1, 2]);
    let mut c = cfg(&[1, 2]);
    c.icmp_echo = false;
    lab.apply_config(&c);
    let r = lab.run(&echo_request(VIP), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropVipNoListener, &[]);
}

#[test]
fn an_error_from_a_nat_target_reaches_the_client_from_the_vip() {
    let mut lab = Lab::new("icmpback", &[1, 2]);
    let req = tcp(CLIENT, 40_000, VIP, 80, Flags::Syn, 64);
    let fwd = lab.run(&req, lab.in0);
    let k = target_of(&fwd.out);
    // The target refuses what it got (client -> target:8080, TTL 63), quoting 40 bytes.
    let got = &fwd.out[14..];
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(target_mac(k), node_mac(k))
        .ipv4(target(k), CLIENT, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FilterProhibited,
        ))
        .write(&mut icmp, &got[..40])
        .unwrap();
    let r = lab.run(&icmp, lab.t[usize::from(k) - 1]);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[Stat::EvIcmpToClient]);
    let out = &r.out;
    assert_eq!(out[0..6], CLIENT_MAC, "towards the client");
    let outer = Ipv4HeaderSlice::from_slice(&out[14..]).unwrap().to_header();
    assert_eq!(
        outer.header_checksum,
        outer.calc_header_checksum(),
        "outer checksum"
    );
    assert_eq!(
        (outer.source, outer.destination),
        (VIP, CLIENT),
        "from the VIP"
    );
    let msg = &out[34..];
    assert_eq!(ones_complement(&[msg]), 0, "ICMP checksum");
    let inner = Ipv4HeaderSlice::from_slice(&msg[8..]).unwrap().to_header();
    assert_eq!(
        inner.header_checksum,
        inner.calc_header_checksum(),
        "quoted checksum"
    );
    assert_eq!(
        (inner.source, inner.destination),
        (CLIENT, VIP),
        "quotes the VIP"
    );
    let q = TcpHeaderSlice::from_slice(&msg[28..]).unwrap();
    assert_eq!((q.source_port(), q.destination_port()), (40_000, 80));
    let sent = TcpHeaderSlice::from_slice(&req[34..]).unwrap();
    assert_eq!(
        q.checksum(),
        sent.checksum(),
        "the client's own TCP checksum"
    );
    // An error from a target about no balanced flow passes untouched.
    let mut other = Vec::new();
    PacketBuilder::ethernet2(target_mac(k), node_mac(k))
        .ipv4(target(k), CLIENT, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FilterProhibited,
        ))
        .write(
            &mut other,
            &tcp(CLIENT, 40_999, target(k), 8080, Flags::Syn, 63)[14..54],
        )
        .unwrap();
    let r = lab.run(&other, lab.t[usize::from(k) - 1]);
    assert_eq!((r.retval, r.out.as_slice()), (XDP_PASS, other.as_slice()));
}
