//! Counting. Per-CPU slots only: no shared read-modify-write on the fast path.
use lb_common::{Counters, Stat};

use crate::{
    maps::{LISTENER_STATS, RULE_STATS, STATS, TARGET_STATS},
    sys,
};

#[inline(always)]
pub fn count(stat: Stat) {
    sys::with_slot(&STATS, stat as u32, |n| *n += 1);
}

/// One packet matched source rule `slot` (or a listener's "no allow rule matched" slot).
#[inline(always)]
pub fn rule(slot: u32) {
    sys::with_slot(&RULE_STATS, slot, |n| *n += 1);
}

/// Which way a packet went through the balancer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToTarget { new_flow: bool },
    Reply,
}

#[inline(always)]
fn bump(c: &mut Counters, dir: Dir, bytes: u64) {
    match dir {
        Dir::ToTarget { new_flow } => {
            c.packets += 1;
            c.bytes += bytes;
            if new_flow {
                c.new_flows += 1;
            }
        }
        Dir::Reply => {
            c.reply_packets += 1;
            c.reply_bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn traffic(listener_id: u32, target_id: u32, dir: Dir, bytes: u64) {
    sys::with_slot(&LISTENER_STATS, listener_id, |c| bump(c, dir, bytes));
    sys::with_slot(&TARGET_STATS, target_id, |c| bump(c, dir, bytes));
}
