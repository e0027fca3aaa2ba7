//! Incremental Internet checksum updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
//!
//! Values are the 16-bit words as they read in network order (`u16::from_be_bytes`). Pure and
//! loop-free, so the XDP program uses the same code the host tests check.

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum of a 20-byte IPv4 header (its checksum field taken as zero).
#[inline(always)]
pub fn ipv4_header(h: &[u8; 20]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        if i != 10 {
            sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        }
        i += 2;
    }
    !fold(sum)
}

/// Add 16-bit words to a running one's-complement sum (finish with [`finish`]).
#[inline(always)]
pub fn add(sum: u32, word: u16) -> u32 {
    sum + u32::from(word)
}

/// The checksum of the words summed into `sum`.
#[inline(always)]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// New checksum after one 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// New checksum after a 32-bit field (an IPv4 address) changed from `old` to `new`.
#[inline(always)]
pub fn replace32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let c = replace16(
        check,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    replace16(
        c,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

/// New checksum after a 128-bit field (an IPv6 address) changed from `old` to `new`: the sum
/// of the differences of its eight words, folded once.
#[inline(always)]
pub fn replace128(check: u16, old: [u8; 16], new: [u8; 16]) -> u16 {
    let mut sum = u32::from(!check);
    let mut i = 0;
    while i < 16 {
        sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    !fold(sum)
}

/// The one's-complement difference of an address change, folded: apply it to every checksum
/// that covers the address with [`apply`] (computed once, however many checksums change).
#[inline(always)]
pub fn delta<const N: usize>(old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    fold(sum)
}

/// A checksum after a change whose [`delta`] is `d`.
#[inline(always)]
pub fn apply(check: u16, d: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(d))
}

/// UDP over IPv6: the checksum is mandatory (RFC 8200), so a computed zero is sent as 0xffff.
#[inline(always)]
pub fn udp6_fixup(computed: u16) -> u16 {
    if computed == 0 { 0xffff } else { computed }
}

/// UDP over IPv4: a zero checksum means "none" and must stay zero; a computed zero is sent as
/// 0xffff (RFC 768).
#[inline(always)]
pub fn udp_fixup(old_check: u16, computed: u16) -> u16 {
    if old_check == 0 {
        0
    } else if computed == 0 {
        0xffff
    } else {
        computed
    }
}

#[cfg(test)]
mod header_tests {
    use super::*;

    #[test]
    fn an_ipv4_header_checksum_matches_etherparse() {
        let h = etherparse::Ipv4Header::new(
            40,
            64,
            etherparse::IpNumber::IPV4,
            [198, 18, 250, 7],
            [198, 18, 1, 2],
        )
        .unwrap();
        let mut b = [0u8; 20];
        b.copy_from_slice(&h.to_bytes());
        assert_eq!(ipv4_header(&b), h.calc_header_checksum());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full one's-complement checksum over `data`, written here only as a test oracle.
    fn full(data: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            sum += u32::from(w);
        }
        !fold(sum)
    }

    #[test]
    fn replace16_matches_a_full_recompute() {
        let mut data = [0x45u8, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06];
        let before = full(&data);
        let old = u16::from_be_bytes([data[8], data[9]]);
        data[8] = 0x3f;
        let new = u16::from_be_bytes([data[8], data[9]]);
        assert_eq!(replace16(before, old, new), full(&data));
    }

    #[test]
    fn replace32_matches_a_full_recompute_for_many_addresses() {
        let mut data = [0u8; 12];
        for i in 0..2000u32 {
            let old = (i.wrapping_mul(2_654_435_761)).to_be_bytes();
            let new = (i.wrapping_mul(40_503) ^ 0xc612_640a).to_be_bytes();
            data[4..8].copy_from_slice(&old);
            data[0] = i as u8;
            let before = full(&data);
            data[4..8].copy_from_slice(&new);
            assert_eq!(replace32(before, old, new), full(&data), "case {i}");
        }
    }

    #[test]
    fn replace128_matches_a_full_recompute_for_many_addresses() {
        let mut data = [0u8; 40];
        for i in 0..2000u32 {
            let mut old = [0u8; 16];
            let mut new = [0u8; 16];
            for w in 0..4u32 {
                let o = i.wrapping_mul(2_654_435_761).rotate_left(w * 7) ^ w;
                let n = (i.wrapping_mul(40_503) ^ 0x2001_0db8).rotate_left(w * 5);
                old[w as usize * 4..][..4].copy_from_slice(&o.to_be_bytes());
                new[w as usize * 4..][..4].copy_from_slice(&n.to_be_bytes());
            }
            data[8..24].copy_from_slice(&old);
            data[0] = i as u8;
            let before = full(&data);
            data[8..24].copy_from_slice(&new);
            assert_eq!(replace128(before, old, new), full(&data), "case {i}");
        }
    }

    #[test]
    fn a_delta_applied_equals_replacing_the_address() {
        for i in 0..2000u32 {
            let mut old = [0u8; 16];
            let mut new = [0u8; 16];
            for w in 0..4u32 {
                let o = i.wrapping_mul(2_654_435_761).rotate_left(w * 3) ^ w;
                let n = (i.wrapping_mul(97) ^ 0xfe80_0000).rotate_left(w * 11);
                old[w as usize * 4..][..4].copy_from_slice(&o.to_be_bytes());
                new[w as usize * 4..][..4].copy_from_slice(&n.to_be_bytes());
            }
            let check = (i.wrapping_mul(7919) & 0xffff) as u16;
            assert_eq!(
                apply(check, delta(&old, &new)),
                replace128(check, old, new),
                "case {i}"
            );
            let (o4, n4) = (
                [old[0], old[1], old[2], old[3]],
                [new[4], new[5], new[6], new[7]],
            );
            assert_eq!(
                apply(check, delta(&o4, &n4)),
                replace32(check, o4, n4),
                "v4 case {i}"
            );
        }
    }

    #[test]
    fn udp6_computed_zero_becomes_ffff() {
        assert_eq!(udp6_fixup(0), 0xffff);
        assert_eq!(udp6_fixup(0x1234), 0x1234);
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_computed_zero_becomes_ffff() {
        assert_eq!(udp_fixup(0, 0x1234), 0);
        assert_eq!(udp_fixup(0x1111, 0), 0xffff);
        assert_eq!(udp_fixup(0x1111, 0x2222), 0x2222);
    }
}
