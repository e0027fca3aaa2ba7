//! The incremental checksum updates the XDP program applies (address + port + TTL), replayed on
//! packets built by etherparse and checked against checksums etherparse computes from scratch.
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use lb_common::csum;

const IP: usize = 14;

fn word(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Rewrite the destination address and port and decrement TTL, as lb-ebpf's nat stage does.
fn rewrite_dst(pkt: &mut [u8], addr: [u8; 4], port: u16, l4_check_at: usize, udp: bool) {
    let l4 = IP + 20;
    let old_addr: [u8; 4] = pkt[IP + 16..IP + 20].try_into().unwrap();
    let old_port = word(pkt, l4 + 2);
    let old_l4 = word(pkt, l4 + l4_check_at);
    let c = csum::replace16(csum::replace32(old_l4, old_addr, addr), old_port, port);
    put(
        pkt,
        l4 + l4_check_at,
        if udp { csum::udp_fixup(old_l4, c) } else { c },
    );
    put(pkt, l4 + 2, port);
    let ttl_word = word(pkt, IP + 8);
    let new_ttl_word = ttl_word - 0x0100;
    let c = csum::replace16(
        csum::replace32(word(pkt, IP + 10), old_addr, addr),
        ttl_word,
        new_ttl_word,
    );
    put(pkt, IP + 10, c);
    put(pkt, IP + 8, new_ttl_word);
    pkt[IP + 16..IP + 20].copy_from_slice(&addr);
}

/// (IPv4 header checksum, L4 checksum) as stored, and as etherparse computes them afresh.
fn stored_and_expected(pkt: &[u8]) -> ((u16, u16), (u16, u16)) {
    let p = SlicedPacket::from_ethernet(pkt).unwrap();
    let etherparse::NetSlice::Ipv4(ip) = p.net.unwrap() else {
        panic!("not ipv4")
    };
    let h = ip.header().to_header();
    let payload = ip.payload().payload;
    match p.transport.unwrap() {
        TransportSlice::Tcp(t) => {
            let th = t.to_header();
            let body = &payload[th.header_len()..];
            (
                (h.header_checksum, th.checksum),
                (
                    h.calc_header_checksum(),
                    th.calc_checksum_ipv4(&h, body).unwrap(),
                ),
            )
        }
        TransportSlice::Udp(u) => {
            let uh = u.to_header();
            let body = &payload[8..];
            (
                (h.header_checksum, uh.checksum),
                (
                    h.calc_header_checksum(),
                    uh.calc_checksum_ipv4(&h, body).unwrap(),
                ),
            )
        }
        _ => panic!("not tcp/udp"),
    }
}

#[test]
fn tcp_rewrite_keeps_both_checksums_exact_over_many_tuples() {
    for i in 0..500u16 {
        let mut pkt = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(
                [198, 18, 0, (i % 250) as u8 + 2],
                [198, 18, 100, 10],
                64 - (i % 60) as u8,
            )
            .tcp(20_000 + i * 7, 80, u32::from(i) * 7919, 65_535)
            .syn()
            .write(&mut pkt, &i.to_be_bytes().repeat(usize::from(i % 13)))
            .unwrap();
        rewrite_dst(&mut pkt, [198, 18, (i % 200) as u8, 2], 8080 + i, 16, false);
        let (stored, expected) = stored_and_expected(&pkt);
        assert_eq!(stored, expected, "case {i}");
    }
}

#[test]
fn udp_rewrite_keeps_the_checksum_exact() {
    for i in 0..500u16 {
        let mut pkt = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([198, 18, 0, 2], [198, 18, 100, 10], 64)
            .udp(30_000 + i, 9000)
            .write(&mut pkt, format!("hello {i}").as_bytes())
            .unwrap();
        rewrite_dst(
            &mut pkt,
            [198, 18, 2, (i % 250) as u8 + 1],
            9000 + i,
            6,
            true,
        );
        let (stored, expected) = stored_and_expected(&pkt);
        // etherparse writes a computed 0 as 0xffff, as RFC 768 asks.
        assert_eq!(stored, expected, "case {i}");
    }
}

#[test]
fn udp_without_checksum_stays_without() {
    let mut pkt = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([198, 18, 0, 2], [198, 18, 100, 10], 64)
        .udp(30_000, 9000)
        .write(&mut pkt, b"no checksum")
        .unwrap();
    put(&mut pkt, IP + 20 + 6, 0);
    rewrite_dst(&mut pkt, [198, 18, 1, 2], 9000, 6, true);
    let ((ip_stored, udp_stored), (ip_expected, _)) = stored_and_expected(&pkt);
    assert_eq!(udp_stored, 0);
    assert_eq!(ip_stored, ip_expected);
}
