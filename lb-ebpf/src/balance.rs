//! Stages 2-4: listener lookup, connection table, Maglev ring, for either family.
use aya_ebpf::maps::LruHashMap;
use lb_common::{
    FlowValue, ListenerValue, MODE_NAT, PORT_LISTENER, PORT_TARGET, PROTO_TCP, PROTO_UDP,
    ReverseValue, Stat, TARGET_ACTIVE, TargetValue, rate, rate_key, rate_limited_slot,
    source_rate_limited_slot,
};

use crate::{
    family::{Family, V4},
    hdr::{TCP_ACK, TCP_SYN},
    maps::{LISTENER_RATE, PORT_FLAGS, RINGS, SOURCE_RATE, TARGETS},
    parse::{FlowOf, Verdict},
    stats, sys,
};

const NS_PER_S: u64 = 1_000_000_000;

#[inline(always)]
fn port_flags(port: [u8; 2]) -> u8 {
    PORT_FLAGS
        .get(u32::from(u16::from_be_bytes(port)))
        .copied()
        .unwrap_or(0)
}

/// Could this packet be for a listener, its destination possibly a VIP (`Family::may_be_vip`)?
/// Only if its port is some listener's: an array read, before any hash lookup.
#[inline(always)]
pub fn maybe_listener_port<F: Family>(f: &FlowOf<F>) -> bool {
    port_flags(f.dport) & PORT_LISTENER != 0
}

/// Could this packet be a reply from a target? Only if its source port is some target's.
#[inline(always)]
pub fn maybe_reply<F: Family>(f: &FlowOf<F>) -> bool {
    port_flags(f.sport) & PORT_TARGET != 0
}

/// Could `port` be a target's? (The port pre-filter, before any hash lookup.)
#[inline(always)]
pub fn is_target_port(port: [u8; 2]) -> bool {
    port_flags(port) & PORT_TARGET != 0
}

#[inline(always)]
pub fn listener<F: Family>(f: &FlowOf<F>) -> Option<&'static ListenerValue> {
    F::listener(f.dst, f.dport, f.proto)
}

/// The IPv4 listener on `addr:port/proto`, if any.
#[inline(always)]
pub fn listener_at(addr: [u8; 4], port: [u8; 2], proto: u8) -> Option<&'static ListenerValue> {
    V4::listener(addr, port, proto)
}

/// Is `dst` an IPv4 VIP?
#[inline(always)]
pub fn is_vip(dst: [u8; 4]) -> bool {
    V4::is_vip(dst)
}

#[inline(always)]
fn forward_key<F: Family>(f: &FlowOf<F>) -> F::FlowKey {
    F::flow_key(f.src, f.dst, f.sport, f.dport, f.proto)
}

#[inline(always)]
pub fn active_target(id: u32) -> Option<TargetValue> {
    let t = TARGETS.get(id)?;
    if id != 0 && t.flags & TARGET_ACTIVE != 0 {
        Some(*t)
    } else {
        None
    }
}

/// The target of a packet bound for a listener: from the connection table, else from the ring.
pub struct Pick {
    pub target_id: u32,
    pub target: TargetValue,
    pub new_flow: bool,
}

#[inline(always)]
pub fn pick<F: Family>(f: &FlowOf<F>, l: &ListenerValue) -> Result<Pick, Verdict> {
    let key = forward_key(f);
    // The coarse clock (jiffies resolution) is ample for idle timeouts in seconds, and cheaper.
    let now = if f.proto == PROTO_UDP {
        sys::coarse_ns()
    } else {
        0
    };
    let hit = sys::with_value_mut(F::flows(), &key, |entry| {
        let idle_out = f.proto == PROTO_UDP
            && now.saturating_sub(entry.last_seen_ns) > u64::from(l.udp_idle_timeout_s) * NS_PER_S;
        if idle_out {
            return None;
        }
        let target = active_target(entry.target_id)?;
        entry.last_seen_ns = now;
        Some(Pick {
            target_id: entry.target_id,
            target,
            new_flow: false,
        })
    });
    // A SYN (no ACK) opens a flow only in the embryonic table: spoofed SYNs never get further,
    // so they cannot evict established flows from the connection table.
    let syn = f.proto == PROTO_TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    match hit {
        Some(Some(pick)) => {
            // A SYN on a tuple with an entry: the client reuses its port. A NAT flow of a
            // listener not owning the target's replies takes them back from the owner's
            // earlier flow on the same client port, as a new flow would.
            if syn && l.mode == MODE_NAT {
                claim_replies(f, pick.target_id, &pick.target);
            }
            return Ok(pick);
        }
        Some(None) => stats::count(Stat::EvFlowRebalanced),
        None if f.proto == PROTO_TCP && !syn => {
            // The flow's first packet after the SYN: it moves to the connection table (or,
            // its target gone meanwhile, is balanced afresh like a table entry's would be).
            match sys::lru_value(F::embryonic(), &key).map(|e| e.target_id) {
                Some(target_id) => match active_target(target_id) {
                    Some(target) => {
                        insert(f, l, &key, target_id, &target, false, now)?;
                        return Ok(Pick {
                            target_id,
                            target,
                            new_flow: false,
                        });
                    }
                    None => stats::count(Stat::EvFlowRebalanced),
                },
                None => {
                    stats::count(Stat::EvMidFlowMiss);
                    // Soon after a table change, a flow met mid-way most likely began before
                    // it (on another node, or before an agent restart): its target is where
                    // the previous table sent it, while that target is still active.
                    if l.prev_until_s != 0
                        && let Some((target_id, target)) = previous_pick(f, l)
                    {
                        stats::count(Stat::EvPreviousTable);
                        insert(f, l, &key, target_id, &target, false, now)?;
                        return Ok(Pick {
                            target_id,
                            target,
                            new_flow: true,
                        });
                    }
                }
            }
        }
        None => {}
    }
    // A flow that opens here (a SYN, a UDP flow's first packet) passes the listener's rate
    // limits first; a TCP flow met mid-way (no SYN seen) is an existing connection, not limited.
    let opens = syn || f.proto == PROTO_UDP;
    if opens && (l.new_flow_rate | l.source_flow_rate) != 0 {
        within_rates(f, l)?;
    }
    let hash = F::hash(f.src, f.dst, f.sport, f.dport, f.proto);
    let slot = l.ring_base + hash % l.ring_size.max(1);
    let target_id = RINGS.get(slot).copied().unwrap_or(0);
    let Some(target) = active_target(target_id) else {
        return Err(Verdict::drop(Stat::DropNoTarget));
    };
    insert(f, l, &key, target_id, &target, syn, now)?;
    Ok(Pick {
        target_id,
        target,
        new_flow: true,
    })
}

/// The previous table's target for `f`, while the listener's window for it is open and that
/// target is active.
#[inline(always)]
fn previous_pick<F: Family>(f: &FlowOf<F>, l: &ListenerValue) -> Option<(u32, TargetValue)> {
    if sys::coarse_ns() / NS_PER_S >= u64::from(l.prev_until_s) {
        return None;
    }
    let hash = F::hash(f.src, f.dst, f.sport, f.dport, f.proto);
    let slot = l.prev_ring_base + hash % l.ring_size.max(1);
    let id = RINGS.get(slot).copied().unwrap_or(0);
    active_target(id).map(|t| (id, t))
}

/// The listener's new-flow limits: the source's bucket first (a source over its own limit takes
/// no token from the listener's), then the listener's. Counted per listener when one refuses.
#[inline(always)]
fn within_rates<F: Family>(f: &FlowOf<F>, l: &ListenerValue) -> Result<(), Verdict> {
    let now = sys::now_ns();
    if l.source_flow_rate != 0 {
        let key = rate_key(l.id, f.src.as_ref());
        let rate_of = l.source_flow_rate;
        let ok = match sys::with_value_mut(&SOURCE_RATE, &key, |tat| rate::admit(tat, now, rate_of))
        {
            Some(ok) => ok,
            None => {
                // A source not seen lately: a full bucket, this flow its first token. (Should
                // the insert fail, the flow still passes: a limit is not a reason to lose it.)
                let mut tat = 0;
                let ok = rate::admit(&mut tat, now, rate_of);
                let _ = SOURCE_RATE.insert(key, tat, 0);
                ok
            }
        };
        if !ok {
            stats::rule(source_rate_limited_slot(l.id));
            return Err(Verdict::drop(Stat::DropSourceRateLimited));
        }
    }
    if l.new_flow_rate != 0 {
        let rate_of = l.new_flow_rate;
        let ok = sys::with_shared_slot(&LISTENER_RATE, l.id, |tat| rate::admit(tat, now, rate_of));
        if ok == Some(false) {
            stats::rule(rate_limited_slot(l.id));
            return Err(Verdict::drop(Stat::DropListenerRateLimited));
        }
    }
    Ok(())
}

/// Record the flow `key` on `target_id`: in the embryonic tables for a SYN, in the connection
/// table otherwise.
#[inline(always)]
fn insert<F: Family>(
    f: &FlowOf<F>,
    l: &ListenerValue,
    key: &F::FlowKey,
    target_id: u32,
    target: &TargetValue,
    embryonic: bool,
    now: u64,
) -> Result<(), Verdict> {
    let value = FlowValue {
        target_id,
        listener_id: l.id,
        last_seen_ns: now,
    };
    let reply_key = F::flow_key(
        *F::of_slot(&target.addr),
        f.src,
        target.port,
        f.sport,
        f.proto,
    );
    let reverse = ReverseValue {
        vip: F::to_slot(f.dst),
        vport: f.dport,
        family: F::CODE,
        _pad: 0,
        listener_id: l.id,
        target_id,
    };
    let (flows, reverses) = if embryonic {
        (F::embryonic(), F::embryonic_reverse())
    } else {
        (F::flows(), F::reverse())
    };
    // Reverse first: once the forward entry exists, replies must find their way back. DSR
    // and tunnel replies go from the target straight to the client: no reverse entry. Nor
    // does a flow of the target's owner need one: its reply finds the forward entry. So a
    // new flow costs one insert, unless two VIPs share the target and this is not the owner.
    if l.mode == MODE_NAT
        && !claim_replies(f, target_id, target)
        && reverses.insert(reply_key, reverse, 0).is_err()
    {
        return Err(Verdict::drop(Stat::DropFlowTableFull));
    }
    if flows.insert(*key, value, 0).is_err() {
        return Err(Verdict::drop(Stat::DropFlowTableFull));
    }
    Ok(())
}

/// Does the flow `f` (NAT, to `target`) belong to the listener owning the target's replies?
/// If not, the owner's flow from the same client port to the same target (an earlier
/// connection, over: the target cannot hold two on one tuple) is forgotten, since the reply
/// path asks the owner's flows first and would give it this flow's replies.
#[inline(always)]
fn claim_replies<F: Family>(f: &FlowOf<F>, target_id: u32, target: &TargetValue) -> bool {
    let owner = F::owner(F::of_slot(&target.addr), target.port, f.proto);
    let owns = owner.is_some_and(|o| *F::of_slot(&o.vip) == f.dst && o.vport == f.dport);
    if !owns && let Some(o) = owner {
        forget_owner_flow(f, o, target_id);
    }
    owns
}

/// Remove the owner's entries of the flow from this client address and port through the
/// owner's VIP and port, if they name `target_id`: that connection is over, since a new one
/// from the same client port to the same target is opening through another VIP.
#[inline(always)]
fn forget_owner_flow<F: Family>(f: &FlowOf<F>, o: &ReverseValue, target_id: u32) {
    let key = F::flow_key(f.src, *F::of_slot(&o.vip), f.sport, o.vport, f.proto);
    forget_in(F::flows(), &key, target_id);
    // Only TCP flows are ever embryonic.
    if f.proto == PROTO_TCP {
        forget_in(F::embryonic(), &key, target_id);
    }
}

#[inline(always)]
fn forget_in<K>(table: &'static LruHashMap<K, FlowValue>, key: &K, target_id: u32) {
    if names_target(table, key, target_id) {
        let _ = table.remove(key);
    }
}

/// Does `table` hold an entry for `key` that sends its flow to `target_id`?
#[inline(always)]
fn names_target<K>(table: &'static LruHashMap<K, FlowValue>, key: &K, target_id: u32) -> bool {
    sys::with_value_mut(table, key, |e| e.target_id == target_id) == Some(true)
}

/// The return-path entry of a packet coming from a target, if it is a reply to a balanced flow.
#[inline(always)]
pub fn reply<F: Family>(f: &FlowOf<F>) -> Option<&'static ReverseValue> {
    reply_to::<F>(&f.src, f.sport, &f.dst, f.dport, f.proto)
}

/// The return path of the reply `src:sport -> dst:dport` (target -> client). A flow of the
/// target's owner (`OWNERS`) is found by its own forward entry, rebuilt from the owner's VIP
/// and port: it must exist and name this target, so a packet of a connection the balancer did
/// not make (a health check, a client reaching the target directly) is never rewritten. Any
/// other listener's flow to the target (two VIPs sharing it) has a `REVERSE` entry.
#[inline(always)]
pub fn reply_to<F: Family>(
    src: &F::Addr,
    sport: [u8; 2],
    dst: &F::Addr,
    dport: [u8; 2],
    proto: u8,
) -> Option<&'static ReverseValue> {
    if let Some(o) = F::owner(src, sport, proto) {
        let key = F::flow_key(*dst, *F::of_slot(&o.vip), dport, o.vport, proto);
        // A SYN-ACK answers a flow still embryonic.
        if names_target(F::flows(), &key, o.target_id)
            || (proto == PROTO_TCP && names_target(F::embryonic(), &key, o.target_id))
        {
            return Some(o);
        }
    }
    let key = F::flow_key(*src, *dst, sport, dport, proto);
    sys::lru_value(F::reverse(), &key).or_else(|| {
        if proto == PROTO_TCP {
            sys::lru_value(F::embryonic_reverse(), &key)
        } else {
            None
        }
    })
}
