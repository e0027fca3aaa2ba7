//! Property tests of lb-common's pure logic, on random inputs (proptest shrinks a failure to a
//! small case and prints it): every incremental checksum update equals a from-scratch
//! recompute; the flow hashes are deterministic and see every input byte; rule keys lay out
//! listener id and address as the LPM tries expect.
use lb_common::{
    csum::{apply, delta, replace16, replace32, replace128, udp_fixup, udp6_fixup},
    hash::{flow_hash_v4, flow_hash_v6},
    rule_key,
};
use proptest::prelude::*;

/// The Internet checksum of `data` from scratch (RFC 1071).
fn full(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

proptest! {
    #[test]
    fn replacing_a_word_equals_a_recompute(mut data in prop::collection::vec(any::<u8>(), 2..64), at in any::<prop::sample::Index>(), new in any::<u16>()) {
        let words = data.len() / 2;
        let i = at.index(words) * 2;
        let before = full(&data);
        let old = u16::from_be_bytes([data[i], data[i + 1]]);
        data[i..i + 2].copy_from_slice(&new.to_be_bytes());
        prop_assert_eq!(replace16(before, old, new), full(&data));
    }

    #[test]
    fn replacing_an_ipv4_address_equals_a_recompute(prefix in prop::collection::vec(any::<u8>(), 0..16), old in any::<[u8; 4]>(), new in any::<[u8; 4]>(), suffix in prop::collection::vec(any::<u8>(), 0..16)) {
        // The address at an even offset, as in every header xlb rewrites.
        let mut data = prefix.clone();
        if data.len() % 2 == 1 { data.push(0); }
        let at = data.len();
        data.extend_from_slice(&old);
        data.extend_from_slice(&suffix);
        let before = full(&data);
        data[at..at + 4].copy_from_slice(&new);
        prop_assert_eq!(replace32(before, old, new), full(&data));
        prop_assert_eq!(apply(before, delta(&old, &new)), full(&data));
    }

    #[test]
    fn replacing_an_ipv6_address_equals_a_recompute(head in any::<[u8; 8]>(), old in any::<[u8; 16]>(), new in any::<[u8; 16]>(), tail in prop::collection::vec(any::<u8>(), 0..32)) {
        let mut data = head.to_vec();
        data.extend_from_slice(&old);
        data.extend_from_slice(&tail);
        let before = full(&data);
        data[8..24].copy_from_slice(&new);
        prop_assert_eq!(replace128(before, old, new), full(&data));
        prop_assert_eq!(apply(before, delta(&old, &new)), full(&data));
    }

    #[test]
    fn udp_checksums_never_leave_as_zero_unless_they_came_as_none(old in any::<u16>(), computed in any::<u16>()) {
        let v4 = udp_fixup(old, computed);
        let kept_rule = if old == 0 { v4 == 0 } else { v4 != 0 };
        prop_assert!(kept_rule, "old {:#x} computed {:#x} -> {:#x}", old, computed, v4);
        prop_assert_ne!(udp6_fixup(computed), 0);
    }

    #[test]
    fn flow_hashes_are_deterministic_and_see_every_byte(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), sport in any::<[u8; 2]>(), dport in any::<[u8; 2]>(), proto in any::<u8>(), flip in 0usize..37) {
        let h = flow_hash_v6(src, dst, sport, dport, proto);
        prop_assert_eq!(h, flow_hash_v6(src, dst, sport, dport, proto));
        let (mut s, mut d, mut sp, mut dp, mut p) = (src, dst, sport, dport, proto);
        match flip {
            0..=15 => s[flip] ^= 1,
            16..=31 => d[flip - 16] ^= 1,
            32..=33 => sp[flip - 32] ^= 1,
            34..=35 => dp[flip - 34] ^= 1,
            _ => p ^= 1,
        }
        prop_assert_ne!(flow_hash_v6(s, d, sp, dp, p), h);
        let (s4, d4) = ([src[0], src[1], src[2], src[3]], [dst[0], dst[1], dst[2], dst[3]]);
        prop_assert_eq!(flow_hash_v4(s4, d4, sport, dport, proto), flow_hash_v4(s4, d4, sport, dport, proto));
    }

    #[test]
    fn rule_keys_put_the_listener_id_first_then_the_address(id in any::<u32>(), addr in any::<[u8; 16]>()) {
        let k4: [u8; 8] = rule_key(id, &addr[..4]);
        prop_assert_eq!(&k4[..4], &id.to_be_bytes()[..]);
        prop_assert_eq!(&k4[4..], &addr[..4]);
        let k6: [u8; 20] = rule_key(id, &addr);
        prop_assert_eq!(&k6[..4], &id.to_be_bytes()[..]);
        prop_assert_eq!(&k6[4..], &addr[..]);
    }
}
