//! Direct server return through BPF_PROG_TEST_RUN: `dsr` changes the destination MAC only,
//! `tunnel` prepends an outer IPv4 header to the byte-identical packet (or answers ICMP
//! "fragmentation needed" when that would not fit), and the decapsulation program gives the
//! inner packet back. Outputs are read with etherparse and checksums computed here, not with
//! xlb's own code.
use etherparse::{IpNumber, Ipv4HeaderSlice, PacketBuilder};
use lb_common::{DecapStat, Stat};
use xlb::{DECAP_OBJECT, dataplane::decap::Decap};
use xlb_rig::lab::*;

fn big_tcp(dst: [u8; 4], tot_len: usize) -> Vec<u8> {
    let payload = vec![0x5a; tot_len - 40];
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv4(CLIENT, dst, 64)
        .tcp(40_000, 8080, 1, 64_240)
        .ack(1)
        .write(&mut v, &payload)
        .unwrap();
    v
}

#[test]
fn dsr_changes_the_destination_mac_and_nothing_else() {
    let mut lab = Lab::new("dsr", &[1, 2]);
    let pkt = tcp(CLIENT, 40_000, VIP_DSR, 8080, Flags::Syn, 64);
    let r = lab.run(&pkt, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let k = mac_target(&r.out);
    assert_eq!(
        r.out[12..],
        pkt[12..],
        "IP and TCP bytes untouched (TTL too)"
    );
    let t = lab.target_traffic(k);
    assert_eq!((t.packets, t.new_flows), (1, 1));
    // The flow keeps its target, and there is no return path to rewrite: a packet from the
    // target's port to the client is not the balancer's business.
    let again = lab.run(&tcp(CLIENT, 40_000, VIP_DSR, 8080, Flags::Ack, 64), lab.in0);
    assert_eq!(mac_target(&again.out), k);
    let reply = tcp(target(k), 8080, CLIENT, 40_000, Flags::SynAck, 64);
    let r = lab.run(&reply, lab.t[usize::from(k) - 1]);
    assert_eq!(r.retval, XDP_PASS);
    r.counted(Stat::PassNotListener, &[]);
    assert_eq!(r.out, reply);
}

#[test]
fn tunnel_prepends_a_valid_outer_header_to_the_byte_identical_packet() {
    let mut lab = Lab::new("tun", &[1, 2]);
    let pkt = tcp(CLIENT, 40_000, VIP_TUN, 8080, Flags::Syn, 64);
    let r = lab.run(&pkt, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    let k = mac_target(&r.out);
    assert_eq!(r.out[12..14], [0x08, 0x00], "IPv4");
    let outer = Ipv4HeaderSlice::from_slice(&r.out[14..]).expect("outer IPv4 parses");
    let h = outer.to_header();
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "outer checksum"
    );
    assert_eq!(h.protocol, IpNumber::IPV4, "protocol 4 (IP-in-IP)");
    assert_eq!(h.destination, target(k));
    assert_eq!(h.time_to_live, 64);
    assert_eq!(usize::from(h.total_len), pkt.len() - 14 + 20);
    let (net, len) = TUNNEL_PREFIX;
    let mask = u32::MAX << (32 - u32::from(len));
    assert_eq!(
        u32::from_be_bytes(h.source) & mask,
        u32::from_be_bytes(net),
        "outer source {:?} inside the prefix",
        h.source
    );
    assert_eq!(r.out[34..], pkt[14..], "the inner packet, byte for byte");
}

#[test]
fn the_outer_source_varies_per_flow_and_stays_for_a_flow() {
    let mut lab = Lab::new("tunsrc", &[1, 2]);
    let src_of = |lab: &mut Lab, sport: u16, flags: Flags| {
        let r = lab.run(&tcp(CLIENT, sport, VIP_TUN, 8080, flags, 64), lab.in0);
        <[u8; 4]>::try_from(&r.out[26..30]).unwrap()
    };
    let mut seen = std::collections::BTreeSet::new();
    for sport in 41_000..41_064 {
        let first = src_of(&mut lab, sport, Flags::Syn);
        assert_eq!(
            src_of(&mut lab, sport, Flags::Ack),
            first,
            "same flow, same source"
        );
        seen.insert(first);
    }
    assert!(
        seen.len() > 32,
        "64 flows got only {} outer sources",
        seen.len()
    );
}

#[test]
fn a_tunnel_packet_too_big_for_the_mtu_is_answered_with_icmp_frag_needed() {
    let mut lab = Lab::new("tunmtu", &[1, 2]);
    // 1490 bytes of IP: 1510 once encapsulated, over the targets' 1500-byte MTU.
    let pkt = big_tcp(VIP_TUN, 1490);
    let r = lab.run(&pkt, lab.in0);
    assert_eq!(r.retval, XDP_TX, "sent back where it came from");
    // An ACK with no entry yet: balanced like a new flow, then found too big.
    r.counted(Stat::TxFragNeeded, &[Stat::EvMidFlowMiss]);
    let out = &r.out;
    assert_eq!(out[0..6], CLIENT_MAC, "back to the client's next hop");
    assert_eq!(out[6..12], IN0_MAC);
    assert_eq!(out[12..14], [0x08, 0x00], "an IPv4 frame");
    let ip = Ipv4HeaderSlice::from_slice(&out[14..]).expect("IPv4 parses");
    let h = ip.to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IP checksum");
    assert_eq!(h.protocol, IpNumber::ICMP);
    assert_eq!((h.source, h.destination), (VIP_TUN, CLIENT));
    let icmp = &out[34..];
    assert_eq!(usize::from(h.total_len), 20 + icmp.len());
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 4),
        "destination unreachable, fragmentation needed"
    );
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        1480,
        "next-hop MTU less the outer header"
    );
    assert_eq!(ones_complement(&[icmp]), 0, "ICMP checksum");
    assert_eq!(
        icmp[8..],
        pkt[14..14 + 20 + 8],
        "quotes the IP header and 8 bytes"
    );

    // One byte less fits: forwarded.
    let fits = big_tcp(VIP_TUN, 1480);
    let r = lab.run(&fits, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
}

#[test]
fn decapsulation_gives_back_the_inner_packet_and_leaves_the_rest() {
    let mut lab = Lab::new("decap", &[1, 2]);
    let pkt = tcp(CLIENT, 40_000, VIP_TUN, 8080, Flags::Syn, 64);
    let tunnelled = lab.run(&pkt, lab.in0).out;
    let k = mac_target(&tunnelled);
    let mut d = Decap::load(DECAP_OBJECT).expect("decap object loads");
    d.add_address(target(k).into()).unwrap();
    let stat = |d: &Decap, s: DecapStat| {
        d.stats()
            .unwrap()
            .into_iter()
            .find(|(x, _)| *x == s)
            .unwrap()
            .1
    };
    let ingress = lab.t[usize::from(k) - 1];
    let (ret, out, _) = run_once(d.program().unwrap(), &tunnelled, ingress);
    assert_eq!(ret, XDP_PASS);
    assert_eq!(out[0..12], tunnelled[0..12], "the frame's own MACs");
    assert_eq!(out[12..], pkt[12..], "the client's packet, byte for byte");
    assert_eq!(stat(&d, DecapStat::Decapsulated), 1);

    // Not IP-in-IP, or not to this host: untouched.
    let (ret, out, _) = run_once(d.program().unwrap(), &pkt, ingress);
    assert_eq!((ret, out.as_slice()), (XDP_PASS, pkt.as_slice()));
    assert_eq!(stat(&d, DecapStat::PassNotTunnel), 1);
    let mut elsewhere = tunnelled.clone();
    elsewhere[30..34].copy_from_slice(&[198, 18, 9, 9]);
    let (ret, out, _) = run_once(d.program().unwrap(), &elsewhere, ingress);
    assert_eq!((ret, out.as_slice()), (XDP_PASS, elsewhere.as_slice()));
    assert_eq!(stat(&d, DecapStat::PassNotLocal), 1);
}
