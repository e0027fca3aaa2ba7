//! The one typed model of what xlb balances, from the config file and the control API down to
//! the data plane: addresses (IPv4 or IPv6 from the start), endpoints, targets, protocols.
//! Defaults are filled and values checked here, once; the config validator, the API server,
//! the CLI and the registry all call these functions.
pub mod config;

use std::{fmt, net::IpAddr, str::FromStr};

use serde::{Deserialize, Serialize};

/// Weight of a target that names none.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest weight of one target.
pub const MAX_WEIGHT: u32 = 1000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    NotAnAddress(String),
    #[error("bad port in {0:?}")]
    BadPort(String),
    #[error("weight {0} is out of range (0-{MAX_WEIGHT})")]
    BadWeight(u32),
}

/// Parse an address as a user writes it (IPv4 or IPv6, no brackets).
pub fn parse_addr(s: &str) -> Result<IpAddr, ModelError> {
    s.parse()
        .map_err(|_| ModelError::NotAnAddress(s.to_owned()))
}

/// Why a target cannot serve a listener: their address families do not fit its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FamilyMismatch {
    #[error(
        "mode {mode:?} sends the client's packet to the target with only the {what} changed, so the target must be {family} like the VIP"
    )]
    SameFamily {
        mode: &'static str,
        what: &'static str,
        family: &'static str,
    },
    #[error(
        "mode \"tunnel\" carries an IPv6 VIP to IPv6 targets only (IPv6-in-IPv6; IPv6-in-IPv4 is not built)"
    )]
    TunnelIpv6ToIpv4,
}

fn family_name(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// Can a listener on `vip` in `mode` send to a target at `target`? NAT rewrites addresses
/// within one family (NAT44, NAT66); DSR changes only the MAC, so the target holds the VIP in
/// the same family; a tunnel carries an IPv4 VIP to IPv4 or IPv6 targets (IPv4-in-IPv4,
/// IPv4-in-IPv6) and an IPv6 VIP to IPv6 targets (IPv6-in-IPv6).
pub fn family_fits(mode: Mode, vip: IpAddr, target: IpAddr) -> Result<(), FamilyMismatch> {
    match mode {
        Mode::Tunnel if vip.is_ipv6() && target.is_ipv4() => Err(FamilyMismatch::TunnelIpv6ToIpv4),
        Mode::Nat | Mode::Dsr if vip.is_ipv4() != target.is_ipv4() => {
            Err(FamilyMismatch::SameFamily {
                mode: mode.as_str(),
                what: if mode == Mode::Nat {
                    "destination address"
                } else {
                    "MAC address"
                },
                family: family_name(vip),
            })
        }
        _ => Ok(()),
    }
}

/// A weight as given (or not), defaulted and range-checked.
pub fn weight(w: Option<u32>) -> Result<u32, ModelError> {
    match w.unwrap_or(DEFAULT_WEIGHT) {
        w if w <= MAX_WEIGHT => Ok(w),
        w => Err(ModelError::BadWeight(w)),
    }
}

/// An address and a port: where a target (or a listener) lives. Kept in the state file as
/// `[address, port]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "(IpAddr, u16)", into = "(IpAddr, u16)")]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub const fn new(addr: IpAddr, port: u16) -> Self {
        Self { addr, port }
    }
}

impl From<(IpAddr, u16)> for Endpoint {
    fn from((addr, port): (IpAddr, u16)) -> Self {
        Self { addr, port }
    }
}

impl From<Endpoint> for (IpAddr, u16) {
    fn from(e: Endpoint) -> Self {
        (e.addr, e.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{}", self.port),
            IpAddr::V6(a) => write!(f, "[{a}]:{}", self.port),
        }
    }
}

/// A target as a user names it: `ADDR` or `ADDR:PORT` (`[V6]:PORT` for IPv6). Without a port,
/// the target group's port applies ([`TargetRef::resolve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetRef {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

impl TargetRef {
    /// The endpoint, with the group's port when none was named.
    pub fn resolve(self, group_port: u16) -> Endpoint {
        Endpoint::new(self.addr, self.port.unwrap_or(group_port))
    }
}

impl FromStr for TargetRef {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, ModelError> {
        let port = |p: &str| match p.parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(ModelError::BadPort(s.to_owned())),
        };
        let (addr, port) = if let Some(rest) = s.strip_prefix('[') {
            // [V6] or [V6]:PORT
            let (a, tail) = rest
                .split_once(']')
                .ok_or_else(|| ModelError::NotAnAddress(s.to_owned()))?;
            match tail.strip_prefix(':') {
                Some(p) => (a, Some(port(p)?)),
                None if tail.is_empty() => (a, None),
                None => return Err(ModelError::NotAnAddress(s.to_owned())),
            }
        } else {
            match s.rsplit_once(':') {
                // More than one colon and no brackets: a bare IPv6 address.
                Some((a, _)) if a.contains(':') => (s, None),
                Some((a, p)) => (a, Some(port(p)?)),
                None => (s, None),
            }
        };
        Ok(Self {
            addr: parse_addr(addr)?,
            port,
        })
    }
}

/// One target of a group: where it lives and its share of new flows. Kept in the state file as
/// `[address, port, weight]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "(IpAddr, u16, u32)", into = "(IpAddr, u16, u32)")]
pub struct Target {
    pub endpoint: Endpoint,
    pub weight: u32,
}

impl From<(IpAddr, u16, u32)> for Target {
    fn from((addr, port, weight): (IpAddr, u16, u32)) -> Self {
        Self {
            endpoint: Endpoint::new(addr, port),
            weight,
        }
    }
}

impl From<Target> for (IpAddr, u16, u32) {
    fn from(t: Target) -> Self {
        (t.endpoint.addr, t.endpoint.port, t.weight)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// How a listener's packets reach their target (`mode` in the config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Destination rewritten to the target; replies come back through the balancer.
    #[default]
    Nat,
    /// Direct server return on one L2 segment: only the destination MAC changes; targets hold
    /// the VIP and answer clients directly.
    Dsr,
    /// Direct server return over IP: the packet inside an outer header to the target, which
    /// decapsulates (IPv4-in-IPv4, IPv4-in-IPv6, IPv6-in-IPv6).
    Tunnel,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
            Mode::Tunnel => "tunnel",
        }
    }
    /// The data plane's code (`ListenerValue::mode`).
    pub fn code(self) -> u8 {
        match self {
            Mode::Nat => lb_common::MODE_NAT,
            Mode::Dsr => lb_common::MODE_DSR,
            Mode::Tunnel => lb_common::MODE_TUNNEL,
        }
    }
}

/// A source prefix of a listener's `allow_sources` / `deny_sources`: `198.18.0.0/16`,
/// `2001:db8::/32`, or one address (`/32`, `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not a prefix like \"198.18.0.0/16\" or \"2001:db8::/32\"")]
    Syntax(String),
    #[error("{given} has host bits set: the prefix is {network}")]
    HostBits { given: String, network: Cidr },
}

impl Cidr {
    /// The address with every bit past `len` cleared.
    fn network(addr: IpAddr, len: u8) -> IpAddr {
        match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }

    /// Does `a` fall inside?
    pub fn contains(&self, a: IpAddr) -> bool {
        a.is_ipv4() == self.addr.is_ipv4() && Self::network(a, self.len) == self.addr
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let bad = || CidrError::Syntax(s.to_owned());
        let (a, len) = match s.split_once('/') {
            Some((a, n)) => (a, Some(n.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(bad());
        }
        let network = Cidr {
            addr: Self::network(addr, len),
            len,
        };
        if network.addr != addr {
            return Err(CidrError::HostBits {
                given: s.to_owned(),
                network,
            });
        }
        Ok(network)
    }
}

impl TryFrom<String> for Cidr {
    type Error = CidrError;
    fn try_from(s: String) -> Result<Self, CidrError> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What happens to a target's established flows when it turns unhealthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowPolicy {
    /// Removed: the client's next packet goes to a healthy target (fails fast).
    #[default]
    Rebalance,
    /// Kept on the unhealthy target.
    Keep,
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn target_refs_parse_with_and_without_port() {
        assert_eq!(
            "198.18.3.2".parse::<TargetRef>(),
            Ok(TargetRef {
                addr: v4(198, 18, 3, 2),
                port: None
            })
        );
        assert_eq!(
            "198.18.3.2:8081".parse::<TargetRef>().unwrap().port,
            Some(8081)
        );
        for (bad, want) in [
            ("backend-3", ModelError::NotAnAddress("backend-3".into())),
            ("198.18.3.2:0", ModelError::BadPort("198.18.3.2:0".into())),
            ("198.18.3.2:x", ModelError::BadPort("198.18.3.2:x".into())),
            (
                "198.18.3.2:70000",
                ModelError::BadPort("198.18.3.2:70000".into()),
            ),
        ] {
            assert_eq!(bad.parse::<TargetRef>(), Err(want), "{bad}");
        }
    }

    #[test]
    fn ipv6_target_refs_parse_bare_bracketed_and_with_a_port() {
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        for (s, port) in [
            ("2001:db8::2", None),
            ("[2001:db8::2]", None),
            ("[2001:db8::2]:80", Some(80)),
        ] {
            assert_eq!(
                s.parse::<TargetRef>(),
                Ok(TargetRef { addr: v6, port }),
                "{s}"
            );
        }
        assert!("[2001:db8::2".parse::<TargetRef>().is_err());
        assert!("[2001:db8::2]80".parse::<TargetRef>().is_err());
        assert!("[198.18.0.1:80".parse::<TargetRef>().is_err());
    }

    #[test]
    fn cidrs_parse_normalised_and_refuse_host_bits() {
        let c: Cidr = "198.18.0.0/16".parse().unwrap();
        assert_eq!((c.addr, c.len), (v4(198, 18, 0, 0), 16));
        assert!(c.contains(v4(198, 18, 200, 1)) && !c.contains(v4(198, 19, 0, 1)));
        assert_eq!("198.18.0.7".parse::<Cidr>().unwrap().len, 32);
        assert_eq!(
            "2001:db8::/32".parse::<Cidr>().unwrap().to_string(),
            "2001:db8::/32"
        );
        assert!(
            !"2001:db8::/32"
                .parse::<Cidr>()
                .unwrap()
                .contains(v4(198, 18, 0, 1))
        );
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().len, 0);
        match "198.18.0.5/24".parse::<Cidr>() {
            Err(CidrError::HostBits { network, .. }) => {
                assert_eq!(network.to_string(), "198.18.0.0/24")
            }
            other => panic!("{other:?}"),
        }
        for bad in ["198.18.0.0/33", "2001:db8::/129", "nope/8", "198.18.0.0/x"] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn families_must_fit_the_mode() {
        let (a4, b4) = (v4(198, 18, 100, 10), v4(198, 18, 1, 2));
        let (a6, b6): (IpAddr, IpAddr) = (
            "2001:db8:100::10".parse().unwrap(),
            "2001:db8:1::2".parse().unwrap(),
        );
        for mode in [Mode::Nat, Mode::Dsr] {
            assert_eq!(family_fits(mode, a4, b4), Ok(()));
            assert_eq!(family_fits(mode, a6, b6), Ok(()));
            assert!(family_fits(mode, a4, b6).is_err());
            assert!(family_fits(mode, a6, b4).is_err());
        }
        assert_eq!(family_fits(Mode::Tunnel, a4, b4), Ok(()));
        assert_eq!(family_fits(Mode::Tunnel, a6, b6), Ok(()));
        assert_eq!(family_fits(Mode::Tunnel, a4, b6), Ok(()), "IPv4-in-IPv6");
        assert_eq!(
            family_fits(Mode::Tunnel, a6, b4),
            Err(FamilyMismatch::TunnelIpv6ToIpv4)
        );
    }

    #[test]
    fn the_group_port_fills_a_missing_port_and_weights_default_to_one() {
        let r: TargetRef = "198.18.3.2".parse().unwrap();
        assert_eq!(r.resolve(8080), Endpoint::new(v4(198, 18, 3, 2), 8080));
        let r: TargetRef = "198.18.3.2:81".parse().unwrap();
        assert_eq!(r.resolve(8080).port, 81);
        assert_eq!(weight(None), Ok(DEFAULT_WEIGHT));
        assert_eq!(weight(Some(0)), Ok(0));
        assert_eq!(
            weight(Some(MAX_WEIGHT + 1)),
            Err(ModelError::BadWeight(1001))
        );
    }

    #[test]
    fn endpoints_print_as_socket_addresses_and_keep_the_state_file_form() {
        let e = Endpoint::new(v4(198, 18, 1, 2), 8080);
        assert_eq!(e.to_string(), "198.18.1.2:8080");
        let v6 = Endpoint::new("2001:db8::2".parse().unwrap(), 80);
        assert_eq!(v6.to_string(), "[2001:db8::2]:80");
        // The state file written before this type existed held (address, port[, weight]).
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"["198.18.1.2",8080]"#);
        let t: Target = serde_json::from_str(r#"["198.18.1.2",8080,3]"#).unwrap();
        assert_eq!((t.endpoint, t.weight), (e, 3));
    }
}
