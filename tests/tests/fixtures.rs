//! Packet fixtures through BPF_PROG_TEST_RUN: input packet -> expected verdict, counter and
//! output packet, the output checked with etherparse (an independent parser), never with
//! xlb's own code.
//!
//! Each test gets its own namespace with veths, addresses, static neighbour entries and fixed
//! MACs, so `bpf_fib_lookup` inside the program resolves to known next hops.
use etherparse::{
    IpNumber, Ipv4Header, Ipv4Options, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice,
    UdpHeader,
};
use lb_common::Stat;
use xlb_rig::lab::*;

// ---- packets, built with etherparse ----

/// What etherparse reads from an output packet; checksums recomputed from scratch.
#[derive(Debug)]
struct Seen {
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    ttl: u8,
    options: Vec<u8>,
    payload: Vec<u8>,
}

fn parse(pkt: &[u8]) -> Seen {
    let p = SlicedPacket::from_ethernet(pkt).expect("output parses");
    let eth = p
        .link
        .unwrap()
        .to_header()
        .unwrap()
        .ethernet2()
        .expect("ethernet");
    let etherparse::NetSlice::Ipv4(ip) = p.net.unwrap() else {
        panic!("not ipv4")
    };
    let h: Ipv4Header = ip.header().to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let l4 = ip.payload().payload;
    let (sport, dport, payload) = match p.transport.unwrap() {
        TransportSlice::Tcp(t) => {
            let th: TcpHeader = t.to_header();
            let body = &l4[th.header_len()..];
            assert_eq!(
                th.checksum,
                th.calc_checksum_ipv4(&h, body).unwrap(),
                "TCP checksum"
            );
            (th.source_port, th.destination_port, body.to_vec())
        }
        TransportSlice::Udp(u) => {
            let uh: UdpHeader = u.to_header();
            let body = &l4[8..];
            assert_eq!(
                uh.checksum,
                uh.calc_checksum_ipv4(&h, body).unwrap(),
                "UDP checksum"
            );
            (uh.source_port, uh.destination_port, body.to_vec())
        }
        _ => panic!("not tcp/udp"),
    };
    Seen {
        eth_src: eth.source,
        eth_dst: eth.destination,
        src: h.source,
        dst: h.destination,
        sport,
        dport,
        ttl: h.time_to_live,
        options: h.options.as_slice().to_vec(),
        payload,
    }
}

/// Which target (1..=3) an output packet was sent to; checks the L2 rewrite matches it.
fn sent_to(s: &Seen) -> u8 {
    let k = (1..=3u8)
        .find(|k| s.dst == target(*k))
        .unwrap_or_else(|| panic!("not sent to a target: {s:?}"));
    assert_eq!(
        s.eth_dst,
        target_mac(k),
        "next hop MAC from the neighbour table"
    );
    assert_eq!(s.eth_src, node_mac(k), "source MAC of the egress interface");
    k
}

// ---- the fixtures ----

#[test]
fn tcp_syn_to_the_vip_is_rewritten_to_a_target_with_valid_checksums() {
    let mut lab = Lab::new("syn", &[1, 2]);
    let r = lab.run(&tcp(CLIENT, 40_000, VIP, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let s = parse(&r.out);
    let k = sent_to(&s);
    assert_eq!(
        (s.src, s.sport, s.dport, s.ttl),
        (CLIENT, 40_000, 8080, 63),
        "client kept, 80 -> 8080, TTL-1"
    );
    assert_eq!(s.payload, b"payload!");
    let t = lab.target_traffic(k);
    assert_eq!((t.packets, t.new_flows), (1, 1));
}

#[test]
fn udp_datagram_to_the_vip_is_rewritten_to_a_target() {
    let mut lab = Lab::new("udp", &[1, 2]);
    let r = lab.run(&udp(CLIENT, 50_000, VIP, 9000), lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let s = parse(&r.out);
    sent_to(&s);
    assert_eq!(
        (s.src, s.sport, s.dport, s.payload.as_slice()),
        (CLIENT, 50_000, 9000, &b"hello"[..])
    );
}

#[test]
fn the_reply_is_rewritten_back_to_the_vip() {
    let mut lab = Lab::new("reply", &[1, 2]);
    let fwd = parse(
        &lab.run(&tcp(CLIENT, 40_001, VIP, 80, Flags::Syn, 64), lab.in0)
            .out,
    );
    let k = sent_to(&fwd);
    let r = lab.run(
        &tcp(target(k), 8080, CLIENT, 40_001, Flags::SynAck, 64),
        lab.t[usize::from(k) - 1],
    );
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let s = parse(&r.out);
    assert_eq!(
        (s.src, s.sport, s.dst, s.dport, s.ttl),
        (VIP, 80, CLIENT, 40_001, 63)
    );
    assert_eq!((s.eth_dst, s.eth_src), (CLIENT_MAC, IN0_MAC));
    assert_eq!(lab.target_traffic(k).reply_packets, 1);
}

#[test]
fn replies_of_two_vips_sharing_a_target_go_back_to_their_own_vip() {
    // Field notes: reverse-NAT collisions. One target behind two VIPs.
    let mut lab = Lab::new("twovip", &[1]);
    for (vip, port) in [(VIP, 41_000), (VIP2, 41_001)] {
        let s = parse(
            &lab.run(&tcp(CLIENT, port, vip, 80, Flags::Syn, 64), lab.in0)
                .out,
        );
        assert_eq!(sent_to(&s), 1);
    }
    for (vip, port) in [(VIP2, 41_001), (VIP, 41_000)] {
        let r = lab.run(
            &tcp(target(1), 8080, CLIENT, port, Flags::SynAck, 64),
            lab.t[0],
        );
        assert_eq!(parse(&r.out).src, vip, "reply to client port {port}");
    }
}

#[test]
fn a_packet_not_for_a_vip_passes_untouched() {
    let mut lab = Lab::new("nonvip", &[1, 2]);
    for pkt in [
        tcp(CLIENT, 40_000, [198, 18, 5, 5], 80, Flags::Syn, 64),
        tcp(CLIENT, 40_000, [198, 18, 5, 5], 22, Flags::Ack, 64),
        udp(CLIENT, 40_000, [198, 18, 0, 1], 9000),
        // From a target's port, but no such flow was balanced: not a reply.
        tcp(target(1), 8080, CLIENT, 40_000, Flags::SynAck, 64),
    ] {
        let r = lab.run(&pkt, lab.in0);
        assert_eq!(r.retval, XDP_PASS);
        r.counted(Stat::PassNotListener, &[]);
        assert_eq!(r.out, pkt, "untouched");
    }
}

#[test]
fn non_ip_passes_untouched() {
    let mut lab = Lab::new("arp", &[1]);
    let mut arp = tcp(CLIENT, 1, VIP, 80, Flags::Syn, 64);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let r = lab.run(&arp, lab.in0);
    assert_eq!(r.retval, XDP_PASS);
    r.counted(Stat::PassNotIp, &[]);
    assert_eq!(r.out, arp);
}

#[test]
fn truncated_and_malformed_headers_get_their_documented_verdicts() {
    let mut lab = Lab::new("bad", &[1, 2]);
    let syn = tcp(CLIENT, 40_000, VIP, 80, Flags::Syn, 64);
    let dgram = udp(CLIENT, 40_000, VIP, 9000);
    let mut bad_ihl = syn.clone();
    bad_ihl[14] = 0x44;
    let mut bad_version = syn.clone();
    bad_version[14] = 0x65;
    let mut ihl_past_end = syn[..14 + 20 + 8].to_vec();
    ihl_past_end[14] = 0x4f; // claims 60 bytes of IPv4 header
    let mut bad_doff = syn.clone();
    bad_doff[14 + 20 + 12] = 0x40; // TCP data offset 4 words
    let cases: Vec<(&str, Vec<u8>, u32, Stat)> = vec![
        (
            "IPv4 header cut",
            syn[..14 + 10].to_vec(),
            XDP_PASS,
            Stat::PassIpv4Truncated,
        ),
        (
            "IHL beyond the packet",
            ihl_past_end,
            XDP_PASS,
            Stat::PassIpv4Truncated,
        ),
        ("IHL 4", bad_ihl, XDP_PASS, Stat::PassIpv4BadHeader),
        (
            "version 6 in an IPv4 frame",
            bad_version,
            XDP_PASS,
            Stat::PassIpv4BadHeader,
        ),
        (
            "TCP header cut, to a VIP",
            syn[..14 + 20 + 10].to_vec(),
            XDP_DROP,
            Stat::DropL4Truncated,
        ),
        (
            "UDP header cut, to a VIP",
            dgram[..14 + 20 + 4].to_vec(),
            XDP_DROP,
            Stat::DropL4Truncated,
        ),
        (
            "TCP data offset < 5, to a VIP",
            bad_doff,
            XDP_DROP,
            Stat::DropTcpBadHeader,
        ),
    ];
    for (what, pkt, verdict, stat) in cases {
        let r = lab.run(&pkt, lab.in0);
        assert_eq!(r.retval, verdict, "{what}");
        r.counted(stat, &[]);
        assert_eq!(r.out, pkt, "{what}: never half-rewritten");
    }
    // The same cut TCP header to another address is not ours: it passes.
    let other = tcp(CLIENT, 40_000, [198, 18, 5, 5], 80, Flags::Syn, 64);
    let r = lab.run(&other[..14 + 20 + 10], lab.in0);
    assert_eq!(r.retval, XDP_PASS);
    r.counted(Stat::PassNotListener, &[]);
}

#[test]
fn fragments_to_a_vip_are_dropped_and_others_pass() {
    let mut lab = Lab::new("frag", &[1, 2]);
    let mut first = tcp(CLIENT, 40_000, VIP, 80, Flags::Syn, 64);
    first[14 + 6] |= 0x20; // more fragments
    let mut later = udp(CLIENT, 40_000, VIP, 9000);
    later[14 + 7] = 0x10; // offset 16 x 8 bytes
    for (pkt, verdict, stat) in [
        (first.clone(), XDP_DROP, Stat::DropFragment),
        (later, XDP_DROP, Stat::DropFragment),
    ] {
        let r = lab.run(&pkt, lab.in0);
        assert_eq!(r.retval, verdict);
        r.counted(stat, &[]);
    }
    let mut not_ours = first;
    not_ours[14 + 19] = 99; // 198.18.100.99
    let r = lab.run(&not_ours, lab.in0);
    assert_eq!(r.retval, XDP_PASS);
    r.counted(Stat::PassFragment, &[]);
}

#[test]
fn ipv4_options_are_kept_and_the_packet_is_balanced() {
    let mut lab = Lab::new("opts", &[1, 2]);
    let mut ip = Ipv4Header::new(28, 64, IpNumber::TCP, CLIENT, VIP).unwrap();
    ip.options = Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap(); // NOP NOP NOP EOL
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40_000, 80, 1, 1000)
        .syn()
        .write(&mut v, b"opts")
        .unwrap();
    assert_eq!(v[14] & 0x0f, 6, "IHL 6");
    let r = lab.run(&v, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[Stat::EvIpv4Options]);
    let s = parse(&r.out);
    sent_to(&s);
    assert_eq!(
        (s.dport, s.options.as_slice(), s.payload.as_slice()),
        (8080, &[1u8, 1, 1, 0][..], &b"opts"[..])
    );
}

#[test]
fn vip_on_a_port_or_protocol_without_listener_is_dropped() {
    let mut lab = Lab::new("noport", &[1]);
    let r = lab.run(&tcp(CLIENT, 40_000, VIP, 443, Flags::Syn, 64), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropVipNoListener, &[]);
    // A protocol xlb does not balance (GRE). (ICMP echo is answered: see icmp_fixtures.rs.)
    let mut gre = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv4(CLIENT, VIP, 64)
        .write(&mut gre, IpNumber(47), b"\0\0\x08\0gre payload")
        .unwrap();
    let r = lab.run(&gre, lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropVipNoListener, &[]);
}

#[test]
fn a_udp_zero_checksum_stays_zero_through_nat() {
    // The program's own rule (RFC 768: zero means none), not a copy of its logic.
    let mut lab = Lab::new("udpzero", &[1, 2]);
    let mut pkt = udp(CLIENT, 50_002, VIP, 53);
    pkt[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let r = lab.run(&pkt, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    assert_eq!(
        r.out[14 + 20 + 2..14 + 20 + 4],
        9000u16.to_be_bytes(),
        "53 -> 9000"
    );
    assert_eq!(
        r.out[14 + 20 + 6..14 + 20 + 8],
        [0, 0],
        "no checksum stays no checksum"
    );
}

#[test]
fn a_udp_flow_idle_past_its_listeners_timeout_is_balanced_afresh() {
    // Listener "echo53" has udp_idle_timeout = 1 (seconds).
    let mut lab = Lab::new("udpidle", &[1, 2]);
    let pkt = udp(CLIENT, 50_003, VIP, 53);
    lab.run(&pkt, lab.in0).counted(Stat::FwdRedirect, &[]);
    let r = lab.run(&pkt, lab.in0);
    r.counted(Stat::FwdRedirect, &[]);
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let r = lab.run(&pkt, lab.in0);
    r.counted(Stat::FwdRedirect, &[Stat::EvFlowRebalanced]);
}

#[test]
fn a_reply_whose_ttl_would_expire_is_left_to_the_kernel() {
    let mut lab = Lab::new("replyttl", &[1, 2]);
    let syn = parse(
        &lab.run(&tcp(CLIENT, 40_010, VIP, 80, Flags::Syn, 64), lab.in0)
            .out,
    );
    let k = sent_to(&syn);
    let reply = tcp(target(k), 8080, CLIENT, 40_010, Flags::SynAck, 1);
    let r = lab.run(&reply, lab.t[usize::from(k) - 1]);
    assert_eq!(r.retval, XDP_PASS);
    r.counted(Stat::PassTtlExceeded, &[]);
    assert_eq!(r.out, reply, "untouched");
}

#[test]
fn a_fragment_offset_of_2048_bytes_or_more_is_a_fragment_too() {
    // The offset's high bits live in the first byte of the field (13 bits, 8-byte units).
    let mut lab = Lab::new("fragoff", &[1]);
    for (hi, lo) in [(0x01u8, 0x00u8), (0x1f, 0xff), (0x10, 0x00)] {
        let mut pkt = udp(CLIENT, 40_000, VIP, 9000);
        pkt[14 + 6] = hi;
        pkt[14 + 7] = lo;
        let r = lab.run(&pkt, lab.in0);
        assert_eq!(r.retval, XDP_DROP, "offset field {hi:#04x}{lo:02x}");
        r.counted(Stat::DropFragment, &[]);
    }
}

#[test]
fn ttl_that_would_expire_is_left_to_the_kernel() {
    let mut lab = Lab::new("ttl", &[1]);
    let pkt = tcp(CLIENT, 40_000, VIP, 80, Flags::Syn, 1);
    let r = lab.run(&pkt, lab.in0);
    assert_eq!(r.retval, XDP_PASS);
    r.counted(Stat::PassTtlExceeded, &[]);
    assert_eq!(r.out, pkt);
}

#[test]
fn an_established_flow_keeps_its_target_when_the_target_set_changes() {
    let mut lab = Lab::new("keep", &[1, 2]);
    let mut first = Vec::new();
    for p in 0..40u16 {
        let s = parse(
            &lab.run(&tcp(CLIENT, 42_000 + p, VIP, 80, Flags::Syn, 64), lab.in0)
                .out,
        );
        first.push(sent_to(&s));
    }
    assert!(
        first.contains(&1) && first.contains(&2),
        "both targets used: {first:?}"
    );
    lab.apply(&[1, 2, 3]);
    for p in 0..40u16 {
        let r = lab.run(&tcp(CLIENT, 42_000 + p, VIP, 80, Flags::Ack, 64), lab.in0);
        r.counted(Stat::FwdRedirect, &[]);
        assert_eq!(
            sent_to(&parse(&r.out)),
            first[usize::from(p)],
            "flow {p} kept its target"
        );
    }
    // New flows do reach the added target.
    let fresh: Vec<u8> = (0..60u16)
        .map(|p| {
            sent_to(&parse(
                &lab.run(&tcp(CLIENT, 43_000 + p, VIP, 80, Flags::Syn, 64), lab.in0)
                    .out,
            ))
        })
        .collect();
    assert!(fresh.contains(&3), "{fresh:?}");
}

#[test]
fn flows_of_a_removed_target_are_rebalanced_on_their_next_packet() {
    let mut lab = Lab::new("removed", &[1, 2]);
    let (port, k) = (0..64u16)
        .map(|p| {
            (
                44_000 + p,
                sent_to(&parse(
                    &lab.run(&tcp(CLIENT, 44_000 + p, VIP, 80, Flags::Syn, 64), lab.in0)
                        .out,
                )),
            )
        })
        .find(|(_, k)| *k == 2)
        .expect("some flow lands on target 2");
    assert_eq!(k, 2);
    lab.apply(&[1]);
    let r = lab.run(&tcp(CLIENT, port, VIP, 80, Flags::Ack, 64), lab.in0);
    r.counted(Stat::FwdRedirect, &[Stat::EvFlowRebalanced]);
    assert_eq!(sent_to(&parse(&r.out)), 1);
}

#[test]
fn a_mid_flow_packet_with_no_entry_is_balanced_like_a_new_flow() {
    let mut lab = Lab::new("midflow", &[1, 2]);
    let r = lab.run(&tcp(CLIENT, 45_000, VIP, 80, Flags::Ack, 64), lab.in0);
    r.counted(Stat::FwdRedirect, &[Stat::EvMidFlowMiss]);
    let k = sent_to(&parse(&r.out));
    // The same tuple as a SYN from a fresh table lands on the same target: the ring decides.
    let mut other = Lab::new("midflow2", &[1, 2]);
    let s = parse(
        &other
            .run(&tcp(CLIENT, 45_000, VIP, 80, Flags::Syn, 64), other.in0)
            .out,
    );
    assert_eq!(sent_to(&s), k);
}

#[test]
fn a_listener_with_no_targets_drops_with_a_reason() {
    let mut lab = Lab::new("empty", &[]);
    let r = lab.run(&tcp(CLIENT, 40_000, VIP, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropNoTarget, &[]);
}
