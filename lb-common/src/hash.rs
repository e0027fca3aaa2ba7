//! Flow hashing shared by the XDP program (ring index) and userspace (tests, tools).
//!
//! Every node of a fleet computes the same value for the same 5-tuple: there is no per-boot seed.

/// Fixed seed, part of the ABI: change it and flows move between targets on upgrade.
pub const FLOW_HASH_SEED: u32 = 0x786c_6221;

/// murmur3's finaliser: a full-avalanche 32-bit mix.
#[inline(always)]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of an IPv4 5-tuple. Addresses and ports are network-order bytes as on the wire.
#[inline(always)]
pub fn flow_hash_v4(src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> u32 {
    let ports = u32::from_be_bytes([sport[0], sport[1], dport[0], dport[1]]);
    let mut h = fmix32(u32::from_be_bytes(src) ^ FLOW_HASH_SEED);
    h = fmix32(h ^ u32::from_be_bytes(dst));
    h = fmix32(h ^ ports ^ (u32::from(proto) << 24));
    h
}

/// Hash of an IPv6 5-tuple: the four words of each address folded in turn, then the ports
/// and protocol as for IPv4.
#[inline(always)]
pub fn flow_hash_v6(
    src: [u8; 16],
    dst: [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
) -> u32 {
    let ports = u32::from_be_bytes([sport[0], sport[1], dport[0], dport[1]]);
    let mut h = FLOW_HASH_SEED;
    let mut i = 0;
    while i < 16 {
        h = fmix32(h ^ u32::from_be_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]]));
        i += 4;
    }
    i = 0;
    while i < 16 {
        h = fmix32(h ^ u32::from_be_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]));
        i += 4;
    }
    fmix32(h ^ ports ^ (u32::from(proto) << 24))
}

/// The slot of the replies' next-hop cache (`limits::REPLY_HOP_SLOTS`, a power of two) for
/// a client address (an address slot as four native-order words, an IPv4 address in the
/// first) and the interface the reply arrives on: replies from targets behind two interfaces
/// to one client take two slots, not turns in one.
#[inline(always)]
pub fn reply_hop_slot(addr: &[u32; 4], ingress: u32) -> u32 {
    let folded =
        addr[0] ^ addr[1].rotate_left(8) ^ addr[2].rotate_left(16) ^ addr[3].rotate_left(24);
    fmix32(fmix32(folded ^ FLOW_HASH_SEED) ^ ingress) & (crate::limits::REPLY_HOP_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_hop_slots_spread_clients_and_interfaces() {
        use crate::limits::REPLY_HOP_SLOTS;
        // 40,960 IPv4 clients of one /16 over the slots: about 10 each, none empty or piled.
        let mut slots = vec![0u32; REPLY_HOP_SLOTS as usize];
        for i in 0..REPLY_HOP_SLOTS * 10 {
            let a = [198u8, 18, (i >> 8) as u8, i as u8];
            let w = [u32::from_ne_bytes(a), 0, 0, 0];
            slots[reply_hop_slot(&w, 3) as usize] += 1;
        }
        let (lo, hi) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
        assert!(*lo >= 1 && *hi <= 30, "slots hold {lo}..{hi} clients");
        // The interface moves a client's slot; each IPv6 word does too.
        let w = [u32::from_ne_bytes([198, 18, 0, 2]), 0, 0, 0];
        assert_ne!(reply_hop_slot(&w, 3), reply_hop_slot(&w, 4));
        let v6 = [0x2001_0db8u32.to_be(), 0, 0, 2u32.to_be()];
        for k in 0..4 {
            let mut x = v6;
            x[k] ^= 0x0100_0000;
            assert_ne!(reply_hop_slot(&x, 3), reply_hop_slot(&v6, 3), "word {k}");
        }
    }

    #[test]
    fn source_port_changes_the_hash_spread_over_a_ring() {
        // 20,000 source ports of one client must spread evenly over 16 buckets.
        let mut buckets = [0u32; 16];
        for p in 20_000u16..40_000 {
            let h = flow_hash_v4(
                [198, 18, 0, 2],
                [198, 18, 100, 10],
                p.to_be_bytes(),
                [0, 80],
                6,
            );
            buckets[(h % 16) as usize] += 1;
        }
        for b in buckets {
            assert!(
                (1100..1400).contains(&b),
                "bucket {b} of 1250 expected: {buckets:?}"
            );
        }
    }

    #[test]
    fn ipv6_source_port_and_every_address_word_change_the_hash() {
        let src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let dst = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0,
        ];
        let mut buckets = [0u32; 16];
        for p in 20_000u16..40_000 {
            let h = flow_hash_v6(src, dst, p.to_be_bytes(), [0, 80], 6);
            buckets[(h % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((1100..1400).contains(&b), "{buckets:?}");
        }
        let base = flow_hash_v6(src, dst, [0, 1], [0, 80], 6);
        for i in 0..16 {
            let mut s = src;
            s[i] ^= 1;
            let mut d = dst;
            d[i] ^= 1;
            assert_ne!(
                flow_hash_v6(s, dst, [0, 1], [0, 80], 6),
                base,
                "src byte {i}"
            );
            assert_ne!(
                flow_hash_v6(src, d, [0, 1], [0, 80], 6),
                base,
                "dst byte {i}"
            );
        }
    }

    #[test]
    fn protocol_is_part_of_the_hash() {
        let t = flow_hash_v4([1, 2, 3, 4], [5, 6, 7, 8], [0, 1], [0, 2], 6);
        let u = flow_hash_v4([1, 2, 3, 4], [5, 6, 7, 8], [0, 1], [0, 2], 17);
        assert_ne!(t, u);
    }
}
