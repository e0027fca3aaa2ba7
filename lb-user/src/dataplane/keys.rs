//! Model types to map keys and values: the one place that knows the ABI's byte layouts.
//! Hash-map keys hold IPv4 addresses in 4 bytes (see lb-common); an IPv6 address cannot be a
//! key until the data plane has IPv6 maps, and says so.
use std::net::IpAddr;

use lb_common::{
    FAMILY_IPV4, FAMILY_IPV6, ListenerKey, SETTING_FRAG_NEEDED, SETTING_ICMP_ECHO, Settings,
    TargetValue, VipKey, addr_from_ipv4,
};

use crate::model::{
    Endpoint,
    config::{Listener, Tunnel},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}: IPv6 listeners are not supported by the data plane yet")]
pub struct Ipv6Unsupported(pub IpAddr);

fn ipv4_octets(a: IpAddr) -> Result<[u8; 4], Ipv6Unsupported> {
    match a {
        IpAddr::V4(v4) => Ok(v4.octets()),
        IpAddr::V6(_) => Err(Ipv6Unsupported(a)),
    }
}

pub fn listener_key(l: &Listener) -> Result<ListenerKey, Ipv6Unsupported> {
    Ok(ListenerKey {
        addr: ipv4_octets(l.vip)?,
        port: l.port.to_be_bytes(),
        proto: l.protocol.number(),
        family: FAMILY_IPV4,
    })
}

pub fn vip_key(a: IpAddr) -> Result<VipKey, Ipv6Unsupported> {
    Ok(VipKey {
        addr: ipv4_octets(a)?,
        family: FAMILY_IPV4,
        _pad: [0; 3],
    })
}

/// `VIP_HINTS` index of a VIP.
pub fn vip_hint(k: &VipKey) -> u32 {
    lb_common::vip_hint_index(k.addr)
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
    Settings {
        tunnel_src: t.source.octets(),
        tunnel_src_hostmask: hostmask.to_be_bytes(),
        flags: echo
            | if t.icmp_frag_needed {
                SETTING_FRAG_NEEDED
            } else {
                0
            },
    }
}
