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

#[cfg(test)]
mod tests {
    use super::*;

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
