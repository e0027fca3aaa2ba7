//! Hostile input: a seeded, bounded randomized run of more than 100,000 random and mutated
//! packets through the real program (BPF_PROG_TEST_RUN, with IPv6 and its tail calls), checking
//! on every one: the run succeeds; exactly one verdict counter rises; nothing is forwarded that
//! was not for a VIP, a reply from a target, or an ICMP answer or error of a balanced flow; what
//! the program passes as "not for us" or malformed is untouched; and every forwarded packet
//! whose input had valid checksums parses with etherparse and has valid checksums.
//!
//! `XLB_HOSTILE_SEED` picks the seed (default: fixed, so CI is repeatable); a failure prints the
//! seed and the packet's index, which reproduce it.
use std::collections::BTreeMap;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_common::Stat;
use rand::{Rng, SeedableRng, rngs::StdRng};
use xlb_rig::lab::*;

/// Packets per run: the base corpus mutated this many times over.
const PACKETS: usize = 120_000;
const _: () = assert!(PACKETS >= 100_000, "the issue asks for at least 100,000");
const XDP_ABORTED: u32 = 0;

/// Well-formed packets of every shape the program knows, towards its listeners and not.
fn corpus(lab: &mut Lab) -> Vec<Vec<u8>> {
    let mut c = vec![
        tcp(CLIENT, 40_000, VIP, 80, Flags::Syn, 64),
        tcp(CLIENT, 40_000, VIP, 80, Flags::Ack, 64),
        tcp(CLIENT, 40_001, VIP_DSR, 8080, Flags::Syn, 64),
        tcp(CLIENT, 40_002, VIP_TUN, 8080, Flags::Syn, 64),
        tcp(CLIENT, 40_003, VIP_TUN46, 8080, Flags::Syn, 64),
        udp(CLIENT, 50_000, VIP, 9000),
        // UDP with the port rewritten too (53 -> 9000).
        udp(CLIENT, 50_001, VIP, 53),
        tcp(CLIENT, 40_000, [198, 18, 5, 5], 22, Flags::Ack, 64),
        tcp6(CLIENT6, 40_000, VIP6, 80, Flags::Syn, 64),
        tcp6(CLIENT6, 40_001, VIP6_DSR, 8080, Flags::Ack, 64),
        tcp6(CLIENT6, 40_002, VIP6_TUN, 8080, Flags::Syn, 64),
        udp6(CLIENT6, 50_000, VIP6, 9000, b"hello"),
        tcp6(CLIENT6, 40_000, target6(3), 22, Flags::Ack, 64),
        // Listeners with source rules: denied, allowed, not allowed.
        tcp(CLIENT, 40_004, VIP_GUARDED, 80, Flags::Syn, 64),
        tcp([198, 18, 7, 2], 40_004, VIP_GUARDED, 80, Flags::Syn, 64),
        tcp6(CLIENT6, 40_004, VIP6_GUARDED, 80, Flags::Syn, 64),
    ];
    // Replies of flows that exist, so mutations reach the return path too.
    for k in 1..=2u8 {
        c.push(tcp(target(k), 8080, CLIENT, 40_000, Flags::SynAck, 64));
        c.push(tcp6(target6(k), 8080, CLIENT6, 40_000, Flags::SynAck, 64));
    }
    let mut echo = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv4(CLIENT, VIP, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut echo, b"ping")
        .unwrap();
    c.push(echo);
    let mut echo6 = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv6(CLIENT6, VIP6, 64)
        .icmpv6_echo_request(1, 1)
        .write(&mut echo6, b"ping")
        .unwrap();
    c.push(echo6);
    // ICMP errors quoting a reply of a balanced flow (VIP -> client).
    let reply = &tcp(VIP, 80, CLIENT, 40_000, Flags::Ack, 63)[14..];
    let mut e4 = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv4([198, 18, 0, 254], VIP, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
        ))
        .write(&mut e4, &reply[..48])
        .unwrap();
    c.push(e4);
    let reply6 = &tcp6(VIP6, 80, CLIENT6, 40_000, Flags::Ack, 63)[14..];
    let mut e6 = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv6(v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe]), VIP6, 64)
        .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut e6, &reply6[..68])
        .unwrap();
    c.push(e6);
    // Open the flows the replies and errors belong to.
    for p in c.clone() {
        lab.run(&p, lab.in0);
    }
    c
}

/// Mutate `base` one of several ways.
fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut p = base.to_vec();
    match rng.random_range(0..10) {
        // Flip 1-8 random bits.
        0..=2 => {
            for _ in 0..rng.random_range(1..=8) {
                let i = rng.random_range(0..p.len());
                p[i] ^= 1 << rng.random_range(0..8);
            }
        }
        // Cut at any offset past the Ethernet header (BPF_PROG_TEST_RUN refuses shorter
        // frames, and no NIC delivers them).
        3 => p.truncate(rng.random_range(14..=p.len())),
        // A random byte in the headers (where the parser looks).
        4 => {
            let i = rng.random_range(0..p.len().min(94));
            p[i] = rng.random();
        }
        // Wrong IP lengths.
        5 => {
            let v6 = p.len() > 14 && p[12..14] == [0x86, 0xdd];
            let at = if v6 { 18 } else { 16 };
            if p.len() > at + 1 {
                let n: u16 = rng.random();
                p[at..at + 2].copy_from_slice(&n.to_be_bytes());
            }
        }
        // Any TCP flags, any IHL / version nibble, any next header / protocol.
        6 => {
            let v6 = p.len() > 14 && p[12..14] == [0x86, 0xdd];
            let field = match rng.random_range(0..3) {
                0 => {
                    if v6 {
                        14 + 40 + 13
                    } else {
                        14 + 20 + 13
                    }
                }
                1 => 14,
                _ => {
                    if v6 {
                        14 + 6
                    } else {
                        14 + 9
                    }
                }
            };
            if field < p.len() {
                p[field] = rng.random();
            }
        }
        // IPv4 fragment fields.
        7 => {
            if p.len() > 21 {
                p[20] = rng.random();
                p[21] = rng.random();
            }
        }
        // A VLAN tag in front of the IP header.
        8 => {
            p.splice(12..12, [0x81, 0x00, 0x00, 0x01]);
        }
        // Random bytes after a valid Ethernet header, any ethertype of the three.
        _ => {
            let n = rng.random_range(0..120);
            p.truncate(12);
            let types: [[u8; 2]; 3] = [[0x08, 0x00], [0x86, 0xdd], [0x08, 0x06]];
            p.extend_from_slice(&types[rng.random_range(0..3)]);
            p.extend((0..n).map(|_| rng.random::<u8>()));
        }
    }
    p
}

/// Checksums of a frame, recomputed: `Some(true)` when it is IPv4/IPv6 with TCP, UDP or ICMP
/// and every checksum is right, `Some(false)` when one is wrong, `None` when it does not parse.
fn checksums_ok(frame: &[u8]) -> Option<bool> {
    // A tunnel: the outer header's own checksum (IPv4), then the inner packet.
    let inner = |ethertype: [u8; 2], outer_len: usize| {
        let mut f = frame[..12].to_vec();
        f.extend_from_slice(&ethertype);
        f.extend_from_slice(frame.get(14 + outer_len..)?);
        checksums_ok(&f)
    };
    match (frame.get(12..14)?, frame.get(14 + 9), frame.get(14 + 6)) {
        ([0x08, 0x00], Some(4), _) => {
            let h = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..])
                .ok()?
                .to_header();
            let own = h.header_checksum == h.calc_header_checksum();
            return inner([0x08, 0x00], 20).map(|ok| ok && own);
        }
        ([0x86, 0xdd], _, Some(41)) => return inner([0x86, 0xdd], 40),
        ([0x86, 0xdd], _, Some(4)) => return inner([0x08, 0x00], 40),
        _ => {}
    }
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let net = p.net?;
    let mut ok = true;
    let (payload, v6h, v4h) = match &net {
        NetSlice::Ipv4(ip) => {
            let h = ip.header().to_header();
            ok &= h.header_checksum == h.calc_header_checksum();
            if ip.payload().fragmented {
                return None;
            }
            (ip.payload().payload, None, Some(h))
        }
        NetSlice::Ipv6(ip) => {
            if ip.payload().fragmented {
                return None;
            }
            (ip.payload().payload, Some(ip.header().to_header()), None)
        }
    };
    match p.transport? {
        TransportSlice::Tcp(t) => {
            let th = t.to_header();
            let body = &payload[th.header_len()..];
            let want = match (&v4h, &v6h) {
                (Some(h), _) => th.calc_checksum_ipv4(h, body).ok()?,
                (_, Some(h)) => th.calc_checksum_ipv6(h, body).ok()?,
                _ => return None,
            };
            ok &= th.checksum == want;
        }
        TransportSlice::Udp(u) => {
            let uh = u.to_header();
            let body = &payload[8..];
            match (&v4h, &v6h) {
                (Some(h), _) => {
                    ok &= uh.checksum == 0 || uh.checksum == uh.calc_checksum_ipv4(h, body).ok()?
                }
                (_, Some(h)) => {
                    ok &= uh.checksum != 0 && uh.checksum == uh.calc_checksum_ipv6(h, body).ok()?
                }
                _ => return None,
            }
        }
        TransportSlice::Icmpv4(i) => {
            ok &= i.checksum() == i.icmp_type().calc_checksum(i.payload());
        }
        TransportSlice::Icmpv6(i) => {
            let h = v6h?;
            ok &= i.checksum()
                == i.icmp_type()
                    .calc_checksum(h.source, h.destination, i.payload())
                    .ok()?;
        }
    }
    Some(ok)
}

/// The IP source and destination of a frame (IPv4 or IPv6), if it has them.
fn addrs(frame: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    match frame.get(12..14)? {
        [0x08, 0x00] => Some((frame.get(26..30)?.to_vec(), frame.get(30..34)?.to_vec())),
        [0x86, 0xdd] => Some((frame.get(22..38)?.to_vec(), frame.get(38..54)?.to_vec())),
        _ => None,
    }
}

#[test]
fn more_than_100000_hostile_packets_each_get_one_verdict_and_nothing_bad_is_forwarded() {
    let seed: u64 = std::env::var("XLB_HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x786c_6221);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut lab = Lab::new("hostile", &[1, 2]);
    let base = corpus(&mut lab);
    let vips: Vec<Vec<u8>> = [VIP, VIP2, VIP_DSR, VIP_TUN, VIP_TUN46, VIP_GUARDED]
        .iter()
        .map(|a| a.to_vec())
        .chain(
            [VIP6, VIP6_DSR, VIP6_TUN, VIP6_GUARDED]
                .iter()
                .map(|a| a.to_vec()),
        )
        .collect();
    let targets: Vec<Vec<u8>> = (1..=3u8)
        .flat_map(|k| [target(k).to_vec(), target6(k).to_vec()])
        .collect();
    let verdict = |s: &Stat| s.kind() != "event";
    let untouched_verdicts = [
        Stat::PassNotIp,
        Stat::PassNotListener,
        Stat::PassEthTruncated,
        Stat::PassIpv4Truncated,
        Stat::PassIpv4BadHeader,
        Stat::PassFragment,
        Stat::PassIpv6Truncated,
        Stat::PassIpv6BadHeader,
        Stat::PassTtlExceeded,
    ];
    let mut by_reason: BTreeMap<&'static str, u64> = BTreeMap::new();
    for i in 0..PACKETS {
        let pkt = if i < base.len() {
            base[i].clone()
        } else {
            let b = rng.random_range(0..base.len());
            mutate(&mut rng, &base[b])
        };
        let ctx = || format!("seed {seed} packet {i} ({} bytes): {pkt:02x?}", pkt.len());
        let r = lab.run(&pkt, lab.in0);
        let verdicts: Vec<Stat> = r.changed().into_iter().filter(verdict).collect();
        assert_eq!(
            verdicts.len(),
            1,
            "one verdict, got {verdicts:?}; {}",
            ctx()
        );
        let v = verdicts[0];
        assert_eq!(r.delta[v as usize], 1, "{}", ctx());
        assert_ne!(r.retval, XDP_ABORTED, "{}", ctx());
        *by_reason.entry(v.label()).or_default() += 1;
        if untouched_verdicts.contains(&v) {
            assert_eq!(
                r.out,
                pkt,
                "{v:?} must leave the packet untouched; {}",
                ctx()
            );
        }
        if r.retval == XDP_REDIRECT || r.retval == XDP_TX {
            let (src, dst) =
                addrs(&pkt).unwrap_or_else(|| panic!("sent a non-IP frame; {}", ctx()));
            assert!(
                vips.contains(&dst) || targets.contains(&src),
                "forwarded a packet neither for a VIP nor from a target; {}",
                ctx()
            );
            if checksums_ok(&pkt) == Some(true) {
                assert_eq!(
                    checksums_ok(&r.out),
                    Some(true),
                    "a valid input must leave valid ({v:?}); out {:02x?}; {}",
                    r.out,
                    ctx()
                );
            }
        }
    }
    eprintln!("seed {seed}: {PACKETS} packets, verdicts: {by_reason:#?}");
}
