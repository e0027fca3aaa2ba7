//! Model types to map keys and values: the one place that knows the ABI's byte layouts.
//! Hash-map keys hold IPv4 addresses in 4 bytes and IPv6 addresses in 16, in maps of their
//! own (see lb-common); [`ListenerMapKey`] and [`VipMapKey`] say which.
use std::net::IpAddr;

use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, LISTENER_HAS_ALLOW, LISTENER_HAS_DENY, ListenerKey, ListenerKey6,
    OwnerKey, OwnerKey6, ReverseValue, RuleKey4, RuleKey6, SETTING_FRAG_NEEDED, SETTING_ICMP_ECHO,
    Settings, TargetValue, VipKey, VipKey6, addr_from_ipv4, rule_key as rule_key_data,
};

use crate::model::{
    Cidr, Endpoint,
    config::{Listener, Tunnel},
};

/// A listener's key, in `LISTENERS` or `LISTENERS6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerMapKey {
    V4(ListenerKey),
    V6(ListenerKey6),
}

/// A VIP's key, in `VIPS` or `VIPS6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VipMapKey {
    V4(VipKey),
    V6(VipKey6),
}

pub fn listener_key(l: &Listener) -> ListenerMapKey {
    let (port, proto) = (l.port.to_be_bytes(), l.protocol.number());
    match l.vip {
        IpAddr::V4(a) => ListenerMapKey::V4(ListenerKey {
            addr: a.octets(),
            port,
            proto,
            family: FAMILY_IPV4,
        }),
        IpAddr::V6(a) => ListenerMapKey::V6(ListenerKey6 {
            addr: a.octets(),
            port,
            proto,
            family: FAMILY_IPV6,
        }),
    }
}

pub fn vip_key(a: IpAddr) -> VipMapKey {
    match a {
        IpAddr::V4(a) => VipMapKey::V4(VipKey {
            addr: a.octets(),
            family: FAMILY_IPV4,
            _pad: [0; 3],
        }),
        IpAddr::V6(a) => VipMapKey::V6(VipKey6 { addr: a.octets() }),
    }
}

/// The reply owner of a NAT target and protocol, in `OWNERS` or `OWNERS6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OwnerMapKey {
    V4(OwnerKey),
    V6(OwnerKey6),
}

/// The `OWNERS` key of target `e` for protocol `proto`.
pub fn owner_key(e: &Endpoint, proto: u8) -> OwnerMapKey {
    let port = e.port.to_be_bytes();
    match e.addr {
        IpAddr::V4(a) => OwnerMapKey::V4(OwnerKey {
            addr: a.octets(),
            port,
            proto,
            family: FAMILY_IPV4,
        }),
        IpAddr::V6(a) => OwnerMapKey::V6(OwnerKey6 {
            addr: a.octets(),
            port,
            proto,
            family: FAMILY_IPV6,
        }),
    }
}

/// The target and protocol an `OWNERS` key stands for.
pub fn owner_key_parts(k: &OwnerMapKey) -> (Endpoint, u8) {
    match k {
        OwnerMapKey::V4(k) => (
            Endpoint::new(IpAddr::from(k.addr), u16::from_be_bytes(k.port)),
            k.proto,
        ),
        OwnerMapKey::V6(k) => (
            Endpoint::new(IpAddr::from(k.addr), u16::from_be_bytes(k.port)),
            k.proto,
        ),
    }
}

/// The `OWNERS` value naming listener `l` (id `listener_id`) as the owner of target
/// `target_id`'s replies.
pub fn owner_value(l: &Listener, listener_id: u32, target_id: u32) -> ReverseValue {
    let (vip, family) = match l.vip {
        IpAddr::V4(a) => (addr_from_ipv4(a.octets()), FAMILY_IPV4),
        IpAddr::V6(a) => (a.octets(), FAMILY_IPV6),
    };
    ReverseValue {
        vip,
        vport: l.port.to_be_bytes(),
        family,
        _pad: 0,
        listener_id,
        target_id,
    }
}

/// The listener key (VIP, port, protocol) an `OWNERS` value names.
pub fn owner_listener(v: &ReverseValue, proto: u8) -> ListenerMapKey {
    if v.family == FAMILY_IPV6 {
        ListenerMapKey::V6(ListenerKey6 {
            addr: v.vip,
            port: v.vport,
            proto,
            family: FAMILY_IPV6,
        })
    } else {
        ListenerMapKey::V4(ListenerKey {
            addr: [v.vip[0], v.vip[1], v.vip[2], v.vip[3]],
            port: v.vport,
            proto,
            family: FAMILY_IPV4,
        })
    }
}

/// A source rule's entry: which trie (allow or deny, IPv4 or IPv6) and its LPM key (prefix
/// length, then listener id and address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleMapKey {
    Allow4(u32, RuleKey4),
    Deny4(u32, RuleKey4),
    Allow6(u32, RuleKey6),
    Deny6(u32, RuleKey6),
}

/// The entry of rule `c` (allow or deny) of listener `listener_id`.
pub fn rule_key(listener_id: u32, allow: bool, c: &Cidr) -> RuleMapKey {
    let len = 32 + u32::from(c.len);
    match (c.addr, allow) {
        (IpAddr::V4(a), true) => RuleMapKey::Allow4(len, rule_key_data(listener_id, &a.octets())),
        (IpAddr::V4(a), false) => RuleMapKey::Deny4(len, rule_key_data(listener_id, &a.octets())),
        (IpAddr::V6(a), true) => RuleMapKey::Allow6(len, rule_key_data(listener_id, &a.octets())),
        (IpAddr::V6(a), false) => RuleMapKey::Deny6(len, rule_key_data(listener_id, &a.octets())),
    }
}

/// `ListenerValue::flags` of a listener's rules.
pub fn rule_flags(l: &Listener) -> u8 {
    let mut f = 0;
    if !l.deny_sources.is_empty() {
        f |= LISTENER_HAS_DENY;
    }
    if !l.allow_sources.is_empty() {
        f |= LISTENER_HAS_ALLOW;
    }
    f
}

/// `VIP_HINTS` index of a VIP; IPv6 VIPs have no pre-filter array.
pub fn vip_hint(k: &VipMapKey) -> Option<u32> {
    match k {
        VipMapKey::V4(k) => Some(lb_common::vip_hint_index(k.addr)),
        VipMapKey::V6(_) => None,
    }
}

/// `TARGETS[id]` of an endpoint: the value's 16-byte slot holds either family.
pub fn target_value(e: &Endpoint, flags: u8) -> TargetValue {
    let (addr, family) = match e.addr {
        IpAddr::V4(a) => (addr_from_ipv4(a.octets()), FAMILY_IPV4),
        IpAddr::V6(a) => (a.octets(), FAMILY_IPV6),
    };
    TargetValue {
        addr,
        port: e.port.to_be_bytes(),
        family,
        flags,
    }
}

/// `SETTINGS[0]` for these tunnel settings (the tunnel part all zero without tunnel
/// listeners) and echo answers.
pub fn settings(t: Option<&Tunnel>, icmp_echo: bool) -> Settings {
    let echo = if icmp_echo { SETTING_ICMP_ECHO } else { 0 };
    let Some(t) = t else {
        return Settings {
            flags: echo,
            ..Settings::default()
        };
    };
    let host_bits = 32 - u32::from(t.source_prefix_len);
    let hostmask = if host_bits == 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    };
    let (src6, mask6) = match t.source6 {
        Some((a, len)) => {
            // Host bits in the last 32 bits only: a /64's upper host bits stay as written.
            let host = 128 - u32::from(len);
            let mask = match host {
                0 => 0,
                1..=31 => (1u32 << host) - 1,
                _ => u32::MAX,
            };
            (a.octets(), mask)
        }
        None => ([0; 16], 0),
    };
    Settings {
        tunnel_src: t.source.octets(),
        tunnel_src_hostmask: hostmask.to_be_bytes(),
        flags: echo
            | if t.icmp_frag_needed {
                SETTING_FRAG_NEEDED
            } else {
                0
            },
        tunnel_src6: src6,
        tunnel_src6_hostmask: mask6.to_be_bytes(),
    }
}
