//! Counting. Per-CPU slots only: no shared read-modify-write on the fast path.
use lb_common::{Counters, Stat};

use crate::maps::{LISTENER_STATS, STATS, TARGET_STATS};

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: a per-CPU array slot, written only by this CPU.
        unsafe { *slot += 1 };
    }
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
    if let Some(c) = LISTENER_STATS.get_ptr_mut(listener_id) {
        // SAFETY: a per-CPU array slot, written only by this CPU.
        bump(unsafe { &mut *c }, dir, bytes);
    }
    if let Some(c) = TARGET_STATS.get_ptr_mut(target_id) {
        // SAFETY: as above.
        bump(unsafe { &mut *c }, dir, bytes);
    }
}
