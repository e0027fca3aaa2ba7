//! Weighted Maglev lookup tables (Eisenbud et al., NSDI 2016), computed in userspace.
//!
//! Each target's preference list is a permutation of the M slots derived from a hash of its
//! address and port only — not of its id, its position in the config or the node — so every
//! node builds the same table for the same target set. Weights: in each round a target claims
//! as many slots as its weight, so shares follow weights at any scale (1:10 gives 1:10).

use std::net::IpAddr;

use crate::model::Endpoint;

/// One entry of a table: the target's data-plane id, its stable identity and its weight.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub id: u32,
    /// Stable identity (see [`identity`]).
    pub key: u64,
    pub weight: u32,
}

/// The stable identity of a target: its address and port (an IPv4 target hashes its 4 address
/// bytes and 2 port bytes, as it always has, so tables stay the same across versions).
pub fn identity(e: &Endpoint) -> u64 {
    let mut bytes = [0u8; 18];
    let n = match e.addr {
        IpAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            bytes[..16].copy_from_slice(&a.octets());
            16
        }
    };
    bytes[n..n + 2].copy_from_slice(&e.port.to_be_bytes());
    fnv1a(&bytes[..n + 2], 0)
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so nearby addresses get unrelated permutations.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Build a table of `m` slots (m prime). Slots hold target ids; 0 means empty, which happens
/// only when no entry has a non-zero weight.
pub fn build(entries: &[Entry], m: u32) -> Vec<u32> {
    let m64 = u64::from(m);
    let mut table = vec![0u32; m as usize];
    let live: Vec<&Entry> = entries.iter().filter(|e| e.weight > 0).collect();
    if live.is_empty() || m < 2 {
        return table;
    }
    // Sort by identity so the input order (config order, id assignment) does not matter.
    let mut live = live;
    live.sort_by_key(|e| (e.key, e.id));
    let perms: Vec<(u64, u64)> = live
        .iter()
        .map(|e| {
            (
                fnv1a(&e.key.to_le_bytes(), 1) % m64,
                fnv1a(&e.key.to_le_bytes(), 2) % (m64 - 1) + 1,
            )
        })
        .collect();
    let mut next = vec![0u64; live.len()];
    let mut filled = 0u32;
    'fill: loop {
        for (i, e) in live.iter().enumerate() {
            let (offset, skip) = perms[i];
            for _ in 0..e.weight {
                let mut slot = (offset + next[i] * skip) % m64;
                while table[slot as usize] != 0 {
                    next[i] += 1;
                    slot = (offset + next[i] * skip) % m64;
                }
                table[slot as usize] = e.id;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 65_537;

    fn targets(n: u32) -> Vec<Entry> {
        (1..=n)
            .map(|i| Entry {
                id: i,
                key: identity(&Endpoint::new(
                    IpAddr::V4([198, 18, (i >> 8) as u8, i as u8].into()),
                    8080,
                )),
                weight: 1,
            })
            .collect()
    }

    fn shares(table: &[u32], max_id: u32) -> Vec<usize> {
        let mut c = vec![0usize; max_id as usize + 1];
        for &t in table {
            c[t as usize] += 1;
        }
        c
    }

    #[test]
    fn every_target_gets_m_over_n_slots_within_one_percent() {
        for n in [2u32, 3, 10, 100, 655] {
            let table = build(&targets(n), M);
            let c = shares(&table, n);
            assert_eq!(c[0], 0, "no empty slots");
            let ideal = f64::from(M) / f64::from(n);
            for (id, &k) in c.iter().enumerate().skip(1) {
                let dev = (k as f64 - ideal).abs() / ideal;
                assert!(
                    dev <= 0.01,
                    "n={n} target {id}: {k} slots, ideal {ideal:.1}"
                );
            }
        }
    }

    #[test]
    fn removing_one_of_n_targets_moves_about_one_nth_of_the_slots() {
        let n = 10;
        let all = targets(n);
        let before = build(&all, M);
        let after = build(&all[..(n as usize - 1)], M);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        // The removed target keeps no slot, and of the others' slots only a small fraction is
        // reshuffled (Maglev's minimal disruption; a table rebuilt from scratch would move
        // about (n-1)/n of them).
        assert!(!after.contains(&n), "the removed target keeps slots");
        let reshuffled = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| **a != n && a != b)
            .count();
        assert!(
            (reshuffled as f64) < 0.01 * f64::from(M),
            "{reshuffled} slots of staying targets moved"
        );
        let frac = moved as f64 / f64::from(M);
        assert!(frac < 1.0 / f64::from(n) * 1.25, "moved {frac:.3} of slots");
    }

    #[test]
    fn adding_a_target_moves_about_one_over_n_plus_one() {
        let before = build(&targets(2), M);
        let after = build(&targets(3), M);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let frac = moved as f64 / f64::from(M);
        assert!(
            (0.30..0.40).contains(&frac),
            "moved {frac:.3}, expected about 1/3"
        );
    }

    #[test]
    fn same_input_same_table_whatever_the_order_or_ids_order() {
        let a = targets(7);
        let mut b = a.clone();
        b.reverse();
        assert_eq!(build(&a, M), build(&b, M));
        // And again: no hidden state, no per-process seed.
        assert_eq!(build(&a, M), build(&a, M));
    }

    #[test]
    fn weights_one_to_three_give_a_quarter_and_three_quarters() {
        let mut t = targets(2);
        t[1].weight = 3;
        let c = shares(&build(&t, M), 2);
        let f1 = c[1] as f64 / f64::from(M);
        assert!((f1 - 0.25).abs() < 0.01, "weight 1 share {f1:.3}");
    }

    #[test]
    fn weights_one_to_ten_mean_one_to_ten() {
        let mut t = targets(2);
        t[1].weight = 10;
        let c = shares(&build(&t, M), 2);
        let ratio = c[2] as f64 / c[1] as f64;
        assert!((ratio - 10.0).abs() < 0.2, "ratio {ratio:.2}");
    }

    #[test]
    fn weight_zero_takes_no_slots_and_all_zero_leaves_the_table_empty() {
        let mut t = targets(3);
        t[0].weight = 0;
        assert_eq!(shares(&build(&t, M), 3)[1], 0);
        for e in &mut t {
            e.weight = 0;
        }
        assert!(build(&t, M).iter().all(|&s| s == 0));
    }
}
