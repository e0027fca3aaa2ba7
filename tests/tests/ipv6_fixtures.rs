//! IPv6 packet fixtures through BPF_PROG_TEST_RUN: NAT66 both ways (TCP and UDP), DSR, echo,
//! and the verdict of every extension header and defect. Frames enter `xlb`, which hands IPv6
//! to `xlb6` by a tail call, as on an interface. Outputs are checked with etherparse (an
//! independent parser), checksums recomputed from scratch.
use etherparse::{
    Icmpv6Type, IpNumber, Ipv6Header, NetSlice, PacketBuilder, SlicedPacket, TcpHeader,
    TransportSlice, UdpHeader,
};
use lb_common::Stat;
use xlb_rig::lab::*;

#[derive(Debug)]
struct Seen6 {
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    hops: u8,
    sport: u16,
    dport: u16,
    /// The L4 checksum as sent (already checked against a full recompute).
    check: u16,
    payload: Vec<u8>,
}

fn parse6(pkt: &[u8]) -> Seen6 {
    let p = SlicedPacket::from_ethernet(pkt).expect("output parses");
    let eth = p.link.unwrap().to_header().unwrap().ethernet2().unwrap();
    let Some(NetSlice::Ipv6(ip)) = p.net else {
        panic!("not IPv6")
    };
    let h: Ipv6Header = ip.header().to_header();
    assert_eq!(
        usize::from(h.payload_length),
        pkt.len() - 14 - 40,
        "payload length"
    );
    let l4 = ip.payload().payload;
    let (sport, dport, check, payload) = match p.transport.unwrap() {
        TransportSlice::Tcp(t) => {
            let th: TcpHeader = t.to_header();
            let body = &l4[th.header_len()..];
            assert_eq!(
                th.checksum,
                th.calc_checksum_ipv6(&h, body).unwrap(),
                "TCP checksum"
            );
            (
                th.source_port,
                th.destination_port,
                th.checksum,
                body.to_vec(),
            )
        }
        TransportSlice::Udp(u) => {
            let uh: UdpHeader = u.to_header();
            let body = &l4[8..];
            assert_ne!(
                uh.checksum, 0,
                "UDP over IPv6 never carries a zero checksum"
            );
            assert_eq!(
                uh.checksum,
                uh.calc_checksum_ipv6(&h, body).unwrap(),
                "UDP checksum"
            );
            (
                uh.source_port,
                uh.destination_port,
                uh.checksum,
                body.to_vec(),
            )
        }
        _ => panic!("not TCP/UDP"),
    };
    Seen6 {
        eth_src: eth.source,
        eth_dst: eth.destination,
        src: h.source,
        dst: h.destination,
        hops: h.hop_limit,
        sport,
        dport,
        check,
        payload,
    }
}

/// Which target (1..=3) an output went to, by its IPv6 destination; checks the MACs.
fn sent_to6(dst: [u8; 16], s: &Seen6) -> u8 {
    let k = (1..=3u8)
        .find(|k| dst == target6(*k))
        .unwrap_or_else(|| panic!("not sent to a target: {s:?}"));
    assert_eq!(
        (s.eth_dst, s.eth_src),
        (target_mac(k), node_mac(k)),
        "next hop MACs"
    );
    k
}

#[test]
fn nat66_tcp_both_ways_with_valid_checksums() {
    let mut lab = Lab::new("v6tcp", &[1, 2]);
    let r = lab.run(&tcp6(CLIENT6, 40_000, VIP6, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let s = parse6(&r.out);
    let k = sent_to6(s.dst, &s);
    assert_eq!(
        (s.src, s.sport, s.dport, s.hops),
        (CLIENT6, 40_000, 8080, 63),
        "client kept, 80 -> 8080, hop limit - 1"
    );
    assert_eq!(s.payload, b"payload!");
    // The same flow again: the connection table, same target.
    let again = parse6(
        &lab.run(&tcp6(CLIENT6, 40_000, VIP6, 80, Flags::Ack, 64), lab.in0)
            .out,
    );
    assert_eq!(again.dst, s.dst);

    let r = lab.run(
        &tcp6(target6(k), 8080, CLIENT6, 40_000, Flags::SynAck, 64),
        lab.t[usize::from(k) - 1],
    );
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let back = parse6(&r.out);
    assert_eq!(
        (back.src, back.sport, back.dst, back.dport, back.hops),
        (VIP6, 80, CLIENT6, 40_000, 63),
        "the reply comes from [VIP6]:80"
    );
    assert_eq!((back.eth_dst, back.eth_src), (CLIENT_MAC, IN0_MAC));
}

#[test]
fn nat66_spreads_flows_over_both_targets_and_keeps_ipv4_apart() {
    let mut lab = Lab::new("v6spread", &[1, 2]);
    let mut seen = [0u32; 3];
    for port in 30_000..30_064 {
        let r = lab.run(&tcp6(CLIENT6, port, VIP6, 80, Flags::Syn, 64), lab.in0);
        let s = parse6(&r.out);
        seen[usize::from(sent_to6(s.dst, &s)) - 1] += 1;
    }
    assert!(seen[0] > 10 && seen[1] > 10 && seen[2] == 0, "{seen:?}");
    // An IPv4 packet to the IPv4 VIP on the same port still goes to an IPv4 target.
    let r = lab.run(&tcp(CLIENT, 30_000, VIP, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
}

#[test]
fn nat66_udp_both_ways_and_a_zero_sum_goes_out_as_ffff() {
    let mut lab = Lab::new("v6udp", &[1, 2]);
    let r = lab.run(&udp6(CLIENT6, 50_000, VIP6, 9000, b"hello"), lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let s = parse6(&r.out);
    let k = sent_to6(s.dst, &s);
    assert_eq!(
        (s.src, s.sport, s.dport, s.payload.as_slice()),
        (CLIENT6, 50_000, 9000, &b"hello"[..])
    );

    // A payload whose checksum after translation sums to zero: it must go out as 0xffff, the
    // one's-complement zero (RFC 8200: zero means "no checksum", which IPv6 forbids).
    // The flow hash picks the target from the 5-tuple, not the payload: find the target of
    // port 50_001 first, then the payload word that makes its checksum 0xffff.
    let probe = parse6(
        &lab.run(&udp6(CLIENT6, 50_001, VIP6, 9000, &[0, 0]), lab.in0)
            .out,
    );
    let k1 = sent_to6(probe.dst, &probe);
    let translated = |w: u16| {
        let h = Ipv6Header {
            payload_length: 10,
            next_header: IpNumber::UDP,
            hop_limit: 63,
            source: CLIENT6,
            destination: target6(k1),
            ..Default::default()
        };
        UdpHeader::with_ipv6_checksum(50_001, 9000, &h, &w.to_be_bytes())
            .unwrap()
            .checksum
    };
    let w = (0..=u16::MAX)
        .find(|w| translated(*w) == 0xffff)
        .expect("some payload sums to zero");
    let r = lab.run(
        &udp6(CLIENT6, 50_001, VIP6, 9000, &w.to_be_bytes()),
        lab.in0,
    );
    let s = parse6(&r.out);
    assert_eq!(s.check, 0xffff);

    let r = lab.run(
        &udp6(target6(k), 9000, CLIENT6, 50_000, b"olleh"),
        lab.t[usize::from(k) - 1],
    );
    assert_eq!(r.retval, XDP_REDIRECT);
    let back = parse6(&r.out);
    assert_eq!((back.src, back.sport, back.dport), (VIP6, 9000, 50_000));
}

#[test]
fn dsr6_changes_only_the_mac() {
    let mut lab = Lab::new("v6dsr", &[1, 2]);
    let pkt = tcp6(CLIENT6, 40_002, VIP6_DSR, 8080, Flags::Syn, 64);
    let r = lab.run(&pkt, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let s = parse6(&r.out);
    let k = (1..=3u8)
        .find(|k| s.eth_dst == target_mac(*k))
        .expect("sent to a target's MAC");
    assert_eq!(s.eth_src, node_mac(k));
    assert_eq!(
        r.out[12..],
        pkt[12..],
        "the IPv6 packet is untouched (hop limit too)"
    );
}

#[test]
fn echo_requests_to_an_ipv6_vip_are_answered() {
    let mut lab = Lab::new("v6echo", &[1]);
    let mut req = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv6(CLIENT6, VIP6, 64)
        .icmpv6_echo_request(7, 1)
        .write(&mut req, b"ping payload")
        .unwrap();
    let r = lab.run(&req, lab.in0);
    assert_eq!(r.retval, XDP_TX);
    r.counted(Stat::TxIcmpEcho, &[]);
    let p = SlicedPacket::from_ethernet(&r.out).unwrap();
    let eth = p.link.unwrap().to_header().unwrap().ethernet2().unwrap();
    assert_eq!((eth.source, eth.destination), (IN0_MAC, CLIENT_MAC));
    let Some(NetSlice::Ipv6(ip)) = p.net else {
        panic!("not IPv6")
    };
    let h = ip.header().to_header();
    assert_eq!((h.source, h.destination, h.hop_limit), (VIP6, CLIENT6, 64));
    let Some(TransportSlice::Icmpv6(icmp)) = p.transport else {
        panic!("not ICMPv6")
    };
    let Icmpv6Type::EchoReply(e) = icmp.icmp_type() else {
        panic!("not an echo reply: {:?}", icmp.icmp_type())
    };
    assert_eq!((e.id, e.seq), (7, 1));
    assert_eq!(icmp.payload(), b"ping payload");
    let want = icmp
        .icmp_type()
        .calc_checksum(h.source, h.destination, icmp.payload())
        .unwrap();
    assert_eq!(icmp.checksum(), want, "ICMPv6 checksum");

    // Not a VIP: the kernel's.
    let mut other = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv6(CLIENT6, target6(1), 64)
        .icmpv6_echo_request(7, 2)
        .write(&mut other, b"x")
        .unwrap();
    let r = lab.run(&other, lab.in0);
    assert_eq!(r.retval, XDP_PASS);
    r.counted(Stat::PassNotListener, &[]);
}

/// `pkt` with an 8-byte extension header of type `next` inserted after the IPv6 header.
fn with_ext_header(pkt: &[u8], next: u8) -> Vec<u8> {
    let mut v = pkt[..14 + 40].to_vec();
    let l4_proto = v[14 + 6];
    v[14 + 6] = next;
    let payload_len = u16::from_be_bytes([v[14 + 4], v[14 + 5]]) + 8;
    v[14 + 4..14 + 6].copy_from_slice(&payload_len.to_be_bytes());
    // Next header, length 0 (8 bytes), then padding (a PadN option) or fragment fields.
    v.extend_from_slice(&[l4_proto, 0, 1, 4, 0, 0, 0, 0]);
    v.extend_from_slice(&pkt[14 + 40..]);
    v
}

#[test]
fn extension_headers_and_defects_get_their_documented_verdicts() {
    let mut lab = Lab::new("v6ext", &[1, 2]);
    let syn = tcp6(CLIENT6, 40_000, VIP6, 80, Flags::Syn, 64);
    let other = tcp6(CLIENT6, 40_000, target6(3), 80, Flags::Syn, 64);
    let mut cases: Vec<(String, Vec<u8>, u32, Stat)> = Vec::new();
    for (name, n) in [
        ("hop-by-hop", 0u8),
        ("routing", 43),
        ("destination options", 60),
        ("authentication", 51),
        ("mobility", 135),
        ("HIP", 139),
        ("shim6", 140),
        ("experimental 253", 253),
        ("experimental 254", 254),
    ] {
        cases.push((
            format!("{name} to a VIP"),
            with_ext_header(&syn, n),
            XDP_DROP,
            Stat::DropIpv6ExtHeader,
        ));
        cases.push((
            format!("{name}, not a VIP"),
            with_ext_header(&other, n),
            XDP_PASS,
            Stat::PassNotListener,
        ));
    }
    cases.push((
        "fragment to a VIP".into(),
        with_ext_header(&syn, 44),
        XDP_DROP,
        Stat::DropFragment,
    ));
    cases.push((
        "fragment, not a VIP".into(),
        with_ext_header(&other, 44),
        XDP_PASS,
        Stat::PassFragment,
    ));
    let mut esp = syn.clone();
    esp[14 + 6] = 50;
    cases.push((
        "ESP to a VIP".into(),
        esp,
        XDP_DROP,
        Stat::DropVipNoListener,
    ));
    cases.push((
        "IPv6 header cut".into(),
        syn[..14 + 30].to_vec(),
        XDP_PASS,
        Stat::PassIpv6Truncated,
    ));
    let mut bad_version = syn.clone();
    bad_version[14] = 0x45;
    cases.push((
        "version 4 in an IPv6 frame".into(),
        bad_version,
        XDP_PASS,
        Stat::PassIpv6BadHeader,
    ));
    cases.push((
        "TCP cut, to a VIP".into(),
        syn[..14 + 40 + 10].to_vec(),
        XDP_DROP,
        Stat::DropL4Truncated,
    ));
    let mut bad_doff = syn.clone();
    bad_doff[14 + 40 + 12] = 0x40;
    cases.push((
        "TCP data offset < 5, to a VIP".into(),
        bad_doff,
        XDP_DROP,
        Stat::DropTcpBadHeader,
    ));
    cases.push((
        "a port with no listener on the VIP".into(),
        tcp6(CLIENT6, 40_000, VIP6, 443, Flags::Syn, 64),
        XDP_DROP,
        Stat::DropVipNoListener,
    ));
    cases.push((
        "not for a VIP".into(),
        other.clone(),
        XDP_PASS,
        Stat::PassNotListener,
    ));
    cases.push((
        "hop limit 1 to a NAT VIP".into(),
        tcp6(CLIENT6, 40_000, VIP6, 80, Flags::Syn, 1),
        XDP_PASS,
        Stat::PassTtlExceeded,
    ));
    // Neighbour solicitation addressed to the VIP itself: always the kernel's.
    let mut ns = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv6(CLIENT6, VIP6, 255)
        .icmpv6(Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        })
        .write(&mut ns, &VIP6)
        .unwrap();
    cases.push((
        "neighbour solicitation to the VIP".into(),
        ns,
        XDP_PASS,
        Stat::PassNotListener,
    ));
    for (what, pkt, verdict, stat) in cases {
        let r = lab.run(&pkt, lab.in0);
        assert_eq!(r.retval, verdict, "{what}");
        assert_eq!(r.changed(), [stat], "{what}");
        assert_eq!(r.out, pkt, "{what}: untouched");
    }
}
