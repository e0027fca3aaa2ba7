//! Stages 2-4: listener lookup, connection table, Maglev ring.
use lb_common::{
    FAMILY_IPV4, FlowKey, FlowValue, ListenerKey, ListenerValue, MODE_NAT, PORT_LISTENER,
    PORT_TARGET, PROTO_TCP, PROTO_UDP, ReverseValue, Stat, TARGET_ACTIVE, TargetValue, VipKey,
    addr_from_ipv4, hash::flow_hash_v4,
};

use crate::{
    hdr::{TCP_ACK, TCP_SYN},
    maps::{FLOWS, LISTENERS, PORT_FLAGS, REVERSE, RINGS, TARGETS, VIP_HINTS, VIPS},
    parse::{Flow, Verdict},
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

/// Could this packet be for a listener? Only if its destination may be a VIP and its port is
/// some listener's: array reads only, before any hash lookup.
#[inline(always)]
pub fn maybe_listener(f: &Flow) -> bool {
    may_be_vip(f.dst) && port_flags(f.dport) & PORT_LISTENER != 0
}

/// Could this packet be a reply from a target? Only if its source port is some target's.
#[inline(always)]
pub fn maybe_reply(f: &Flow) -> bool {
    port_flags(f.sport) & PORT_TARGET != 0
}

/// Could `port` be a target's? (The port pre-filter, before any hash lookup.)
#[inline(always)]
pub fn is_target_port(port: [u8; 2]) -> bool {
    port_flags(port) & PORT_TARGET != 0
}

#[inline(always)]
pub fn listener(f: &Flow) -> Option<&'static ListenerValue> {
    let key = ListenerKey {
        addr: f.dst,
        port: f.dport,
        proto: f.proto,
        family: FAMILY_IPV4,
    };
    sys::value(&LISTENERS, &key)
}

/// The listener on `addr:port/proto`, if any.
#[inline(always)]
pub fn listener_at(addr: [u8; 4], port: [u8; 2], proto: u8) -> Option<&'static ListenerValue> {
    let key = ListenerKey {
        addr,
        port,
        proto,
        family: FAMILY_IPV4,
    };
    sys::value(&LISTENERS, &key)
}

/// False: `dst` is certainly not a VIP (one array read). True: it may be.
#[inline(always)]
pub fn may_be_vip(dst: [u8; 4]) -> bool {
    VIP_HINTS
        .get(lb_common::vip_hint_index(dst))
        .copied()
        .unwrap_or(0)
        != 0
}

#[inline(always)]
pub fn is_vip(dst: [u8; 4]) -> bool {
    if !may_be_vip(dst) {
        return false;
    }
    let key = VipKey {
        addr: dst,
        family: FAMILY_IPV4,
        _pad: [0; 3],
    };
    VIPS.get_ptr(key).is_some()
}

#[inline(always)]
fn forward_key(f: &Flow) -> FlowKey {
    FlowKey {
        src: f.src,
        dst: f.dst,
        sport: f.sport,
        dport: f.dport,
        proto: f.proto,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    }
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
pub fn pick(f: &Flow, l: &ListenerValue) -> Result<Pick, Verdict> {
    let key = forward_key(f);
    // The coarse clock (jiffies resolution) is ample for idle timeouts in seconds, and cheaper.
    let now = if f.proto == PROTO_UDP {
        sys::coarse_ns()
    } else {
        0
    };
    let hit = sys::with_value_mut(&FLOWS, &key, |entry| {
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
    match hit {
        Some(Some(pick)) => return Ok(pick),
        Some(None) => stats::count(Stat::EvFlowRebalanced),
        None if f.proto == PROTO_TCP && f.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN => {
            stats::count(Stat::EvMidFlowMiss);
        }
        None => {}
    }
    let hash = flow_hash_v4(f.src, f.dst, f.sport, f.dport, f.proto);
    let slot = l.ring_base + hash % l.ring_size.max(1);
    let target_id = RINGS.get(slot).copied().unwrap_or(0);
    let Some(target) = active_target(target_id) else {
        return Err(Verdict::drop(Stat::DropNoTarget));
    };
    let value = FlowValue {
        target_id,
        listener_id: l.id,
        last_seen_ns: now,
    };
    let reply_key = FlowKey {
        src: lb_common::ipv4_of(&target.addr),
        dst: key.src,
        sport: target.port,
        dport: f.sport,
        proto: f.proto,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    };
    let reverse = ReverseValue {
        vip: addr_from_ipv4(key.dst),
        vport: f.dport,
        family: FAMILY_IPV4,
        _pad: 0,
        listener_id: l.id,
        target_id,
    };
    // Reverse first: once the forward entry exists, replies must find their way back. DSR
    // and tunnel replies go from the target straight to the client: no reverse entry.
    let nat = l.mode == MODE_NAT;
    if (nat && REVERSE.insert(reply_key, reverse, 0).is_err())
        || FLOWS.insert(key, value, 0).is_err()
    {
        return Err(Verdict::drop(Stat::DropFlowTableFull));
    }
    Ok(Pick {
        target_id,
        target,
        new_flow: true,
    })
}

/// The return-path entry of a packet coming from a target, if it is a reply to a balanced flow.
#[inline(always)]
pub fn reply(f: &Flow) -> Option<&'static ReverseValue> {
    let key = forward_key(f);
    sys::lru_value(&REVERSE, &key)
}

/// The return-path entry of the reply 5-tuple `src:sport -> dst:dport`.
#[inline(always)]
pub fn reply_of(
    src: [u8; 4],
    sport: [u8; 2],
    dst: [u8; 4],
    dport: [u8; 2],
    proto: u8,
) -> Option<&'static ReverseValue> {
    let key = FlowKey {
        src,
        dst,
        sport,
        dport,
        proto,
        family: FAMILY_IPV4,
        _pad: [0; 2],
    };
    sys::lru_value(&REVERSE, &key)
}
