//! The configuration file: TOML modelled on a cloud NLB (listeners, target groups), parsed with
//! spans so every error names the file, line and column.
use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use lb_common::limits::{
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_LISTENERS, DEFAULT_RING_SIZE, DEFAULT_UDP_IDLE_TIMEOUT_S,
    MAX_CONNECTIONS, MAX_LISTENERS, MAX_NEW_FLOW_RATE, MAX_RING_BYTES, MAX_RING_SIZE,
    MAX_SOURCE_RULES, MAX_TARGETS, MAX_UDP_IDLE_TIMEOUT_S, MIN_CONNECTIONS, MIN_RING_SIZE,
    MIN_UDP_IDLE_TIMEOUT_S, RINGS_PER_LISTENER,
};
use serde::Deserialize;
use toml::Spanned;

use super::{Cidr, DEFAULT_WEIGHT, Endpoint, FlowPolicy, MAX_WEIGHT, Mode, Protocol, Target};
use crate::health::{self, CheckProtocol, HealthCheck, Matcher};

/// Where the agent listens for `xlb status` / `xlb reload` unless the config says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/xlb/xlb.sock";
/// Where runtime registrations are kept across restarts unless the config says otherwise.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/xlb/state.json";
/// Deregistration delay (seconds) of a group that names none, and its bounds (as AWS NLB).
pub const DEFAULT_DEREGISTRATION_DELAY_S: u32 = 300;
pub const MAX_DEREGISTRATION_DELAY_S: u32 = 3600;
/// `tables.previous_table_window` unless the config says otherwise, and its bound (seconds).
pub const DEFAULT_PREVIOUS_TABLE_WINDOW_S: u32 = 60;
pub const MAX_PREVIOUS_TABLE_WINDOW_S: u32 = 3600;
const MAX_IFNAME_LEN: usize = 15;

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in a config file (all of them, not only the first).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigError>),
}

// ---- the file as written (with spans) ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interfaces: Spanned<Vec<Spanned<String>>>,
    control_socket: Option<PathBuf>,
    state_file: Option<PathBuf>,
    #[serde(default)]
    tables: Option<Spanned<RawTables>>,
    #[serde(default)]
    tunnel: Option<Spanned<RawTunnel>>,
    icmp_echo: Option<bool>,
    metrics: Option<Spanned<String>>,
    pin_dir: Option<PathBuf>,
    keep_dataplane: Option<bool>,
    #[serde(default)]
    listener: Vec<Spanned<RawListener>>,
    #[serde(default)]
    target_group: Vec<Spanned<RawGroup>>,
    #[serde(default)]
    source_rules: Vec<Spanned<RawRuleSet>>,
    bgp: Option<Spanned<RawBgp>>,
}

/// `[bgp]`: announce VIPs over BGP through BIRD (see `crate::announce`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBgp {
    table: Option<Spanned<u32>>,
    device: Option<Spanned<String>>,
    local_as: Option<Spanned<u32>>,
    router_id: Option<Spanned<String>>,
    hold_time: Option<Spanned<u32>>,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    address: Spanned<String>,
    #[serde(rename = "as")]
    remote_as: Spanned<u32>,
}

/// `[[source_rules]]`: a named set of rules several listeners can share (as a security group
/// is shared by several load balancers).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleSet {
    name: Spanned<String>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
}

/// A parsed `[[source_rules]]` set: its prefixes of both families.
struct RuleSet {
    name: String,
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTables {
    maglev_size: Option<Spanned<u32>>,
    max_listeners: Option<Spanned<u32>>,
    max_connections: Option<Spanned<u32>>,
    previous_table_window: Option<Spanned<u32>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    source_prefix: Option<Spanned<String>>,
    source_prefix6: Option<Spanned<String>>,
    icmp_frag_needed: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    vip: Spanned<String>,
    port: Spanned<u32>,
    protocol: Spanned<Protocol>,
    target_group: Spanned<String>,
    udp_idle_timeout: Option<Spanned<u32>>,
    mode: Option<Spanned<Mode>>,
    #[serde(default)]
    allow_sources: Vec<Spanned<String>>,
    #[serde(default)]
    deny_sources: Vec<Spanned<String>>,
    /// Names of `[[source_rules]]` sets whose rules this listener takes too.
    #[serde(default)]
    source_rules: Vec<Spanned<String>>,
    new_flows_per_second: Option<Spanned<u32>>,
    new_flows_per_second_per_source: Option<Spanned<u32>>,
    min_healthy_targets: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    port: Spanned<u32>,
    #[serde(default)]
    targets: Vec<Spanned<RawTarget>>,
    deregistration_delay: Option<Spanned<u32>>,
    unhealthy_flows: Option<Spanned<FlowPolicy>>,
    health_check: Option<Spanned<RawHealthCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    enabled: Option<bool>,
    protocol: Option<Spanned<CheckProtocol>>,
    port: Option<Spanned<u32>>,
    path: Option<Spanned<String>>,
    matcher: Option<Spanned<String>>,
    interval: Option<Spanned<u32>>,
    timeout: Option<Spanned<u32>>,
    healthy_threshold: Option<Spanned<u32>>,
    unhealthy_threshold: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    address: Spanned<String>,
    port: Option<Spanned<u32>>,
    weight: Option<Spanned<u32>>,
}

// ---- the validated config ----

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub control_socket: PathBuf,
    pub state_file: PathBuf,
    pub tables: Tables,
    pub listeners: Vec<Listener>,
    pub target_groups: Vec<TargetGroup>,
    /// Set when a `tunnel` listener exists (then `tunnel.source_prefix` is required).
    pub tunnel: Option<Tunnel>,
    /// Answer ICMP echo requests to VIPs (default true).
    pub icmp_echo: bool,
    /// Announce VIPs over BGP (`[bgp]`); `None`: no announcements.
    pub bgp: Option<Bgp>,
    /// Where to serve Prometheus metrics (`metrics = "127.0.0.1:9469"`); `None`: nowhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where the data plane pins its links and connection tables (`pin_dir`, default
    /// [`DEFAULT_PIN_DIR`]; `""`: nowhere, the data plane goes with the agent).
    pub pin_dir: Option<PathBuf>,
    /// On a clean stop (SIGTERM, SIGINT), leave the pinned data plane forwarding for the next
    /// agent (`keep_dataplane`, default false: detach and unpin).
    pub keep_dataplane: bool,
}

/// Where the data plane is pinned unless the config says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";

/// Kernel routing table the announced VIPs are kept in unless `bgp.table` says otherwise.
pub const DEFAULT_BGP_TABLE: u32 = 200;
/// The agent's own device those routes point at (it vanishes with the agent).
pub const DEFAULT_BGP_DEVICE: &str = "xlb-vips";
/// BGP hold time (seconds) `xlb bird-config` writes unless `bgp.hold_time` says otherwise.
pub const DEFAULT_HOLD_TIME_S: u32 = 9;

/// `[bgp]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bgp {
    /// The kernel routing table the agent keeps one route per announced VIP in; BIRD's kernel
    /// protocol learns them from there and exports them to the peers.
    pub table: u32,
    /// The device those routes use: the agent creates it and it disappears with the agent's
    /// process, routes and all, so a dead agent announces nothing.
    pub device: String,
    /// For `xlb bird-config`: this node's AS, router id, BGP hold time and peers.
    pub local_as: Option<u32>,
    pub router_id: Option<std::net::Ipv4Addr>,
    pub hold_time_s: u32,
    pub peers: Vec<Peer>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub address: IpAddr,
    pub remote_as: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tables {
    /// Maglev table size M (prime).
    pub maglev_size: u32,
    pub max_listeners: u32,
    pub max_connections: u32,
    /// Seconds after a listener's Maglev table changes during which a TCP packet with no
    /// connection entry (met mid-flow: another node's flow, an agent restart) goes where the
    /// previous table sent it, if that target is still active (0: never).
    pub previous_table_window_s: u32,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            maglev_size: DEFAULT_RING_SIZE,
            max_listeners: DEFAULT_MAX_LISTENERS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            previous_table_window_s: DEFAULT_PREVIOUS_TABLE_WINDOW_S,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub target_group: String,
    pub udp_idle_timeout_s: u32,
    pub mode: Mode,
    /// Source rules, evaluated in XDP before any connection state: a source a deny rule
    /// matches is dropped (deny wins); with allow rules, so is one none of them matches.
    pub allow_sources: Vec<Cidr>,
    pub deny_sources: Vec<Cidr>,
    /// New flows (TCP SYNs, UDP flows' first packets) per second the listener accepts, all
    /// sources together, and per source /32 or /64; 0: no limit (the default). Excess is
    /// dropped in XDP before any connection state (`lb_common::rate`).
    pub new_flows_per_second: u32,
    pub new_flows_per_second_per_source: u32,
    /// With `[bgp]`: the VIP is announced while some listener on it has at least this many
    /// healthy targets (default 1).
    pub min_healthy_targets: u32,
}

/// How `tunnel` listeners build the outer header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// Outer source addresses toward IPv4 targets: this prefix, host bits from each flow's
    /// hash (`tunnel.source_prefix`; unset when no tunnel listener can have IPv4 targets).
    pub source: std::net::Ipv4Addr,
    pub source_prefix_len: u8,
    /// The same toward IPv6 targets (`tunnel.source_prefix6`), host bits from the hash in at
    /// most the last 32 bits.
    pub source6: Option<(std::net::Ipv6Addr, u8)>,
    /// Answer a packet that would not fit the MTU once encapsulated with ICMP "fragmentation
    /// needed" (default), instead of dropping it.
    pub icmp_frag_needed: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetGroup {
    pub name: String,
    pub port: u16,
    pub targets: Vec<Target>,
    pub health_check: HealthCheck,
    pub deregistration_delay: std::time::Duration,
    pub unhealthy_flows: FlowPolicy,
}

impl Config {
    pub fn group(&self, name: &str) -> Option<&TargetGroup> {
        self.target_groups.iter().find(|g| g.name == name)
    }

    /// The settings that `new` changes but that take effect only on restart (empty: `new`
    /// may be applied by a reload).
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.tables != new.tables {
            changed.push("tables");
        }
        if self.interfaces != new.interfaces {
            changed.push("interfaces");
        }
        if self.state_file != new.state_file {
            changed.push("state_file");
        }
        if self.metrics != new.metrics {
            changed.push("metrics");
        }
        if self.pin_dir != new.pin_dir {
            changed.push("pin_dir");
        }
        if self.keep_dataplane != new.keep_dataplane {
            changed.push("keep_dataplane");
        }
        let routes = |c: &Config| c.bgp.as_ref().map(|b| (b.table, b.device.clone()));
        if routes(self) != routes(new) {
            changed.push("bgp (table, device, or the section itself)");
        }
        changed
    }
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text).map_err(LoadError::Invalid)
}

/// Validate config text; `path` only names the file in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut v = Validator {
        path,
        text,
        errors: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let at = e.span().map(|s| s.start).unwrap_or(0);
            v.err(at, e.message().trim_end());
            return Err(v.errors);
        }
    };
    let config = v.config(raw);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        v.errors.sort_by_key(|e| (e.line, e.column));
        Err(v.errors)
    }
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, offset: usize, message: impl Into<String>) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
        self.errors.push(ConfigError {
            file: self.path.to_owned(),
            line,
            column,
            message: message.into(),
        });
    }

    fn at<T>(&mut self, s: &Spanned<T>, message: impl Into<String>) {
        self.err(s.span().start, message);
    }

    fn port(&mut self, p: &Spanned<u32>, what: &str) -> u16 {
        match u16::try_from(*p.get_ref()) {
            Ok(port) if port != 0 => port,
            _ => {
                self.at(
                    p,
                    format!("{what} {} is out of range (1-65535)", p.get_ref()),
                );
                0
            }
        }
    }

    fn addr(&mut self, s: &Spanned<String>, what: &str) -> IpAddr {
        // An IPv6 address may be written bracketed, as in "[2001:db8::2]:8080" elsewhere.
        let text = s.get_ref();
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        match super::parse_addr(bare) {
            Ok(a) if a.is_ipv6() || bare == text => a,
            _ => {
                self.at(s, format!("{what} {text:?} is not an IPv4 or IPv6 address"));
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }
        }
    }

    fn ranged(
        &mut self,
        s: &Option<Spanned<u32>>,
        what: &str,
        lo: u64,
        hi: u64,
        default: u32,
    ) -> u32 {
        match s {
            None => default,
            Some(v) if (lo..=hi).contains(&u64::from(*v.get_ref())) => *v.get_ref(),
            Some(v) => {
                self.at(
                    v,
                    format!("{what} {} is out of range ({lo}-{hi})", v.get_ref()),
                );
                default
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let mut interfaces = Vec::new();
        if raw.interfaces.get_ref().is_empty() {
            self.at(
                &raw.interfaces,
                "interfaces: name at least one interface to attach to",
            );
        }
        for i in raw.interfaces.get_ref() {
            let name = i.get_ref();
            if name.is_empty() || name.len() > MAX_IFNAME_LEN || name.contains(['/', ' ']) {
                self.at(
                    i,
                    format!(
                        "interface name {name:?} is not valid (1-15 characters, no '/' or space)"
                    ),
                );
            } else if interfaces.contains(name) {
                self.at(i, format!("interface {name:?} is listed twice"));
            } else {
                interfaces.push(name.clone());
            }
        }
        let tables = self.tables(raw.tables.as_ref());
        let target_groups = self.groups(&raw.target_group);
        let rule_sets = self.rule_sets(&raw.source_rules);
        let listeners = self.listeners(&raw.listener, &target_groups, &tables, &rule_sets);
        let tunnel = self.tunnel(
            raw.tunnel.as_ref(),
            &raw.listener,
            &listeners,
            &target_groups,
        );
        Config {
            interfaces,
            control_socket: raw
                .control_socket
                .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
            state_file: raw.state_file.unwrap_or_else(|| DEFAULT_STATE_FILE.into()),
            tables,
            listeners,
            target_groups,
            tunnel,
            icmp_echo: raw.icmp_echo.unwrap_or(true),
            bgp: raw.bgp.as_ref().map(|b| self.bgp(b)),
            pin_dir: match raw.pin_dir {
                None => Some(DEFAULT_PIN_DIR.into()),
                Some(p) if p.as_os_str().is_empty() => None,
                Some(p) => Some(p),
            },
            keep_dataplane: raw.keep_dataplane.unwrap_or(false),
            metrics: raw
                .metrics
                .as_ref()
                .and_then(|m| match m.get_ref().parse() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        self.at(
                            m,
                            format!(
                                "metrics {:?} is not an address and port (e.g. \"127.0.0.1:9469\")",
                                m.get_ref()
                            ),
                        );
                        None
                    }
                }),
        }
    }

    fn bgp(&mut self, raw: &Spanned<RawBgp>) -> Bgp {
        let b = raw.get_ref();
        // 0 and 253-255 are the kernel's own (unspec, default, main, local).
        let table = match &b.table {
            None => DEFAULT_BGP_TABLE,
            Some(t) if matches!(*t.get_ref(), 0 | 253..=255) => {
                self.at(
                    t,
                    format!(
                        "bgp.table {} is one of the kernel's own (0, 253-255): pick another (default {DEFAULT_BGP_TABLE})",
                        t.get_ref()
                    ),
                );
                DEFAULT_BGP_TABLE
            }
            Some(t) => *t.get_ref(),
        };
        let device = match &b.device {
            None => DEFAULT_BGP_DEVICE.to_owned(),
            Some(d) => {
                let n = d.get_ref();
                if n.is_empty() || n.len() > MAX_IFNAME_LEN || n.contains(['/', ' ']) {
                    self.at(
                        d,
                        format!("bgp.device {n:?} is not a valid interface name (1-15 characters, no '/' or space)"),
                    );
                }
                n.clone()
            }
        };
        let router_id = b
            .router_id
            .as_ref()
            .and_then(|r| match r.get_ref().parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.at(
                        r,
                        format!("bgp.router_id {:?} is not an IPv4 address", r.get_ref()),
                    );
                    None
                }
            });
        let local_as = b.local_as.as_ref().map(|a| {
            if *a.get_ref() == 0 {
                self.at(a, "bgp.local_as 0 is not an AS number");
            }
            *a.get_ref()
        });
        let hold_time_s = self.ranged(
            &b.hold_time,
            "bgp.hold_time",
            3,
            65_535,
            DEFAULT_HOLD_TIME_S,
        );
        let mut peers = Vec::new();
        for p in &b.peer {
            let r = p.get_ref();
            let address = match r.address.get_ref().parse() {
                Ok(a) => a,
                Err(_) => {
                    self.at(
                        &r.address,
                        format!(
                            "bgp.peer address {:?} is not an IP address",
                            r.address.get_ref()
                        ),
                    );
                    continue;
                }
            };
            if *r.remote_as.get_ref() == 0 {
                self.at(&r.remote_as, "bgp.peer as 0 is not an AS number");
            }
            peers.push(Peer {
                address,
                remote_as: *r.remote_as.get_ref(),
            });
        }
        Bgp {
            table,
            device,
            local_as,
            router_id,
            hold_time_s,
            peers,
        }
    }

    fn tunnel(
        &mut self,
        raw: Option<&Spanned<RawTunnel>>,
        raw_listeners: &[Spanned<RawListener>],
        listeners: &[Listener],
        groups: &[TargetGroup],
    ) -> Option<Tunnel> {
        // An IPv4 VIP's tunnel reaches IPv4 targets in IPv4 (and IPv6 targets in IPv6); an
        // IPv6 VIP's reaches IPv6 targets only.
        let tunnels = || {
            listeners
                .iter()
                .enumerate()
                .filter(|(_, l)| l.mode == Mode::Tunnel)
        };
        let has_v6_target = |l: &Listener| {
            groups
                .iter()
                .find(|g| g.name == l.target_group)
                .is_some_and(|g| g.targets.iter().any(|t| t.endpoint.addr.is_ipv6()))
        };
        let needs_v4 = tunnels().find(|(_, l)| l.vip.is_ipv4()).map(|(i, _)| i);
        let needs_v6 = tunnels()
            .find(|(_, l)| l.vip.is_ipv6() || has_v6_target(l))
            .map(|(i, _)| i);
        let t = raw.map(|t| t.get_ref());
        let missing = |this: &mut Self, i: usize, key: &str, example: &str, why: &str| {
            if let Some(mode) = raw_listeners[i].get_ref().mode.as_ref() {
                this.at(mode, format!(
                    "listener {:?} is mode \"tunnel\"{why}: set tunnel.{key} (e.g. \"{example}\"), the outer source addresses of encapsulated packets",
                    listeners[i].name
                ));
            }
        };
        let source6 = match (t.and_then(|t| t.source_prefix6.as_ref()), needs_v6) {
            (Some(p), _) => self.prefix6(p),
            (None, Some(i)) => {
                missing(
                    self,
                    i,
                    "source_prefix6",
                    "2001:db8:250::/64",
                    " with IPv6 targets",
                );
                None
            }
            (None, None) => None,
        };
        let prefix = t.and_then(|t| t.source_prefix.as_ref());
        let Some(p) = prefix else {
            if let Some(i) = needs_v4 {
                missing(self, i, "source_prefix", "198.18.250.0/24", "");
                return None;
            }
            // IPv6 tunnels only: no IPv4 outer source needed.
            return (needs_v6.is_some() && source6.is_some()).then_some(Tunnel {
                source: std::net::Ipv4Addr::UNSPECIFIED,
                source_prefix_len: 32,
                source6,
                icmp_frag_needed: t.and_then(|t| t.icmp_frag_needed).unwrap_or(true),
            });
        };
        let parsed = p.get_ref().split_once('/').and_then(|(a, n)| {
            let a: std::net::Ipv4Addr = a.parse().ok()?;
            let n: u8 = n.parse().ok().filter(|n| *n <= 32)?;
            Some((a, n))
        });
        let Some((source, source_prefix_len)) = parsed else {
            self.at(
                p,
                format!(
                    "tunnel.source_prefix {:?} is not an IPv4 prefix like \"198.18.250.0/24\"",
                    p.get_ref()
                ),
            );
            return None;
        };
        Some(Tunnel {
            source,
            source_prefix_len,
            source6,
            icmp_frag_needed: raw
                .and_then(|t| t.get_ref().icmp_frag_needed)
                .unwrap_or(true),
        })
    }

    /// The `[[source_rules]]` sets: unique names, valid prefixes (of either family), each once.
    fn rule_sets(&mut self, raw: &[Spanned<RawRuleSet>]) -> Vec<RuleSet> {
        let mut out: Vec<RuleSet> = Vec::new();
        for r in raw {
            let r = r.get_ref();
            let name = r.name.get_ref().clone();
            if name.is_empty() {
                self.at(&r.name, "source_rules name is empty");
            } else if out.iter().any(|s| s.name == name) {
                self.at(&r.name, format!("source_rules {name:?} is defined twice"));
            }
            let mut parse = |list: &[Spanned<String>], what: &str| {
                let mut v: Vec<Cidr> = Vec::new();
                for s in list {
                    match s.get_ref().parse::<Cidr>() {
                        Ok(c) if v.contains(&c) => self.at(
                            s,
                            format!("source_rules {name:?} {what}: {c} is listed twice"),
                        ),
                        Ok(c) => v.push(c),
                        Err(e) => self.at(s, format!("source_rules {name:?} {what}: {e}")),
                    }
                }
                v
            };
            let allow = parse(&r.allow, "allow");
            let deny = parse(&r.deny, "deny");
            out.push(RuleSet { name, allow, deny });
        }
        out
    }

    /// A listener's `allow_sources` or `deny_sources`: prefixes of the VIP's family (its clients
    /// come in that family), each once.
    fn sources(&mut self, raw: &[Spanned<String>], what: &str, vip: IpAddr) -> Vec<Cidr> {
        let mut out: Vec<Cidr> = Vec::new();
        for s in raw {
            match s.get_ref().parse::<Cidr>() {
                Ok(c) if c.addr.is_ipv4() != vip.is_ipv4() => self.at(
                    s,
                    format!(
                        "{what}: {c} is not of the VIP's family ({vip}): its clients arrive in that family"
                    ),
                ),
                Ok(c) if out.contains(&c) => self.at(s, format!("{what}: {c} is listed twice")),
                Ok(c) => out.push(c),
                Err(e) => self.at(s, format!("{what}: {e}")),
            }
        }
        out
    }

    /// An IPv6 prefix of at most /128 (`tunnel.source_prefix6`); host bits beyond the last 32
    /// stay as written.
    fn prefix6(&mut self, p: &Spanned<String>) -> Option<(std::net::Ipv6Addr, u8)> {
        let parsed = p.get_ref().split_once('/').and_then(|(a, n)| {
            let a: std::net::Ipv6Addr = a.parse().ok()?;
            let n: u8 = n.parse().ok().filter(|n| *n <= 128)?;
            Some((a, n))
        });
        if parsed.is_none() {
            self.at(
                p,
                format!(
                    "tunnel.source_prefix6 {:?} is not an IPv6 prefix like \"2001:db8:250::/64\"",
                    p.get_ref()
                ),
            );
        }
        parsed
    }

    fn tables(&mut self, raw: Option<&Spanned<RawTables>>) -> Tables {
        let d = Tables::default();
        let Some(raw) = raw else { return d };
        let t = raw.get_ref();
        let maglev_size = self.ranged(
            &t.maglev_size,
            "tables.maglev_size",
            MIN_RING_SIZE.into(),
            MAX_RING_SIZE.into(),
            d.maglev_size,
        );
        if let Some(m) = &t.maglev_size
            && !is_prime(*m.get_ref())
        {
            self.at(
                m,
                format!(
                    "tables.maglev_size {} is not prime (try 65537 or 131071)",
                    m.get_ref()
                ),
            );
        }
        let max_listeners = self.ranged(
            &t.max_listeners,
            "tables.max_listeners",
            1,
            MAX_LISTENERS.into(),
            d.max_listeners,
        );
        let max_connections = self.ranged(
            &t.max_connections,
            "tables.max_connections",
            MIN_CONNECTIONS.into(),
            MAX_CONNECTIONS.into(),
            d.max_connections,
        );
        let ring_bytes =
            u64::from(max_listeners) * u64::from(RINGS_PER_LISTENER) * u64::from(maglev_size) * 4;
        if ring_bytes > MAX_RING_BYTES {
            self.at(raw, format!(
                "tables: max_listeners x maglev_size needs {} MiB of rings, more than the {} MiB limit",
                ring_bytes >> 20, MAX_RING_BYTES >> 20
            ));
        }
        let previous_table_window_s = self.ranged(
            &t.previous_table_window,
            "tables.previous_table_window",
            0,
            MAX_PREVIOUS_TABLE_WINDOW_S.into(),
            d.previous_table_window_s,
        );
        Tables {
            maglev_size,
            max_listeners,
            max_connections,
            previous_table_window_s,
        }
    }

    fn groups(&mut self, raw: &[Spanned<RawGroup>]) -> Vec<TargetGroup> {
        let mut out: Vec<TargetGroup> = Vec::new();
        let mut total = 0usize;
        for g in raw {
            let r = g.get_ref();
            let name = r.name.get_ref().clone();
            if name.is_empty() {
                self.at(&r.name, "target group name is empty");
            } else if out.iter().any(|o| o.name == name) {
                self.at(&r.name, format!("target group {name:?} is defined twice"));
            }
            let port = self.port(&r.port, "target group port");
            let mut targets: Vec<Target> = Vec::new();
            for t in &r.targets {
                let rt = t.get_ref();
                let target = super::TargetRef {
                    addr: self.addr(&rt.address, "target address"),
                    port: rt.port.as_ref().map(|p| self.port(p, "target port")),
                };
                let endpoint = target.resolve(port);
                let weight = self.ranged(
                    &rt.weight,
                    "target weight",
                    0,
                    MAX_WEIGHT.into(),
                    DEFAULT_WEIGHT,
                );
                if targets.iter().any(|o| o.endpoint == endpoint) {
                    self.at(
                        t,
                        format!("target {endpoint} is listed twice in group {name:?}"),
                    );
                    continue;
                }
                targets.push(Target { endpoint, weight });
            }
            total += targets.len();
            let health_check = self.health_check(r.health_check.as_ref());
            let deregistration_delay = self.ranged(
                &r.deregistration_delay,
                "deregistration_delay",
                0,
                MAX_DEREGISTRATION_DELAY_S.into(),
                DEFAULT_DEREGISTRATION_DELAY_S,
            );
            out.push(TargetGroup {
                name,
                port,
                targets,
                health_check,
                deregistration_delay: std::time::Duration::from_secs(deregistration_delay.into()),
                unhealthy_flows: r
                    .unhealthy_flows
                    .as_ref()
                    .map(|p| *p.get_ref())
                    .unwrap_or_default(),
            });
        }
        if total >= MAX_TARGETS as usize
            && let Some(g) = raw.last()
        {
            self.at(
                g,
                format!("{total} targets in all; at most {} fit", MAX_TARGETS - 1),
            );
        }
        out
    }

    fn health_check(&mut self, raw: Option<&Spanned<RawHealthCheck>>) -> HealthCheck {
        let d = HealthCheck::default();
        let Some(raw) = raw else { return d };
        let h = raw.get_ref();
        let protocol = h
            .protocol
            .as_ref()
            .map(|p| *p.get_ref())
            .unwrap_or(d.protocol);
        let port = h.port.as_ref().map(|p| self.port(p, "health_check.port"));
        let interval = self.ranged(
            &h.interval,
            "health_check.interval",
            health::MIN_INTERVAL_S.into(),
            health::MAX_INTERVAL_S.into(),
            health::DEFAULT_INTERVAL_S,
        );
        let default_timeout = match protocol {
            CheckProtocol::Tcp => health::DEFAULT_TCP_TIMEOUT_S,
            CheckProtocol::Http => health::DEFAULT_HTTP_TIMEOUT_S,
        }
        .min(interval);
        let timeout = self.ranged(
            &h.timeout,
            "health_check.timeout",
            health::MIN_TIMEOUT_S.into(),
            health::MAX_TIMEOUT_S.into(),
            default_timeout,
        );
        if let Some(t) = &h.timeout
            && timeout > interval
        {
            self.at(
                t,
                format!(
                    "health_check.timeout {timeout} s is longer than the interval ({interval} s)"
                ),
            );
        }
        let threshold = |v: &mut Self, s: &Option<Spanned<u32>>, what: &str, default: u32| {
            v.ranged(
                s,
                what,
                health::MIN_THRESHOLD.into(),
                health::MAX_THRESHOLD.into(),
                default,
            )
        };
        let healthy_threshold = threshold(
            self,
            &h.healthy_threshold,
            "health_check.healthy_threshold",
            d.healthy_threshold,
        );
        let unhealthy_threshold = threshold(
            self,
            &h.unhealthy_threshold,
            "health_check.unhealthy_threshold",
            d.unhealthy_threshold,
        );
        let http_only = |v: &mut Self, s: &Option<Spanned<String>>, what: &str| {
            if let Some(x) = s
                && protocol != CheckProtocol::Http
            {
                v.at(
                    x,
                    format!("health_check.{what} applies to HTTP health checks only"),
                );
            }
        };
        http_only(self, &h.path, "path");
        http_only(self, &h.matcher, "matcher");
        let path = match &h.path {
            Some(p) if !p.get_ref().starts_with('/') || p.get_ref().contains(['\r', '\n', ' ']) => {
                self.at(
                    p,
                    format!(
                        "health_check.path {:?} must start with / and contain no spaces",
                        p.get_ref()
                    ),
                );
                d.path.clone()
            }
            Some(p) => p.get_ref().clone(),
            None => d.path.clone(),
        };
        let matcher = match &h.matcher {
            Some(m) => Matcher::parse(m.get_ref()).unwrap_or_else(|| {
                self.at(m, format!("health_check.matcher {:?}: use codes 100-599 like \"200\", \"200-399\" or \"200,204\"", m.get_ref()));
                d.matcher.clone()
            }),
            None => d.matcher.clone(),
        };
        HealthCheck {
            enabled: h.enabled.unwrap_or(true),
            protocol,
            port,
            path,
            matcher,
            interval: std::time::Duration::from_secs(interval.into()),
            timeout: std::time::Duration::from_secs(timeout.into()),
            healthy_threshold,
            unhealthy_threshold,
        }
    }

    fn listeners(
        &mut self,
        raw: &[Spanned<RawListener>],
        groups: &[TargetGroup],
        tables: &Tables,
        rule_sets: &[RuleSet],
    ) -> Vec<Listener> {
        let mut out: Vec<Listener> = Vec::new();
        let mut names = HashSet::new();
        let mut bound: HashMap<(IpAddr, u16, Protocol), String> = HashMap::new();
        let mut rules = 0usize;
        for l in raw {
            let r = l.get_ref();
            let name = r.name.get_ref().clone();
            if name.is_empty() {
                self.at(&r.name, "listener name is empty");
            } else if !names.insert(name.clone()) {
                self.at(&r.name, format!("listener {name:?} is defined twice"));
            }
            let vip = self.addr(&r.vip, "vip");
            let port = self.port(&r.port, "listener port");
            let protocol = *r.protocol.get_ref();
            if let Some(other) = bound.insert((vip, port, protocol), name.clone()) {
                self.at(
                    l,
                    format!(
                        "listener {name:?} uses {}/{} like listener {other:?}",
                        Endpoint::new(vip, port),
                        protocol.as_str()
                    ),
                );
            }
            let group = r.target_group.get_ref();
            if !groups.iter().any(|g| &g.name == group) {
                self.at(
                    &r.target_group,
                    format!("listener {name:?} names unknown target group {group:?}"),
                );
            }
            let udp_idle_timeout_s = match (&r.udp_idle_timeout, protocol) {
                (Some(t), Protocol::Tcp) => {
                    self.at(t, "udp_idle_timeout applies to UDP listeners only");
                    DEFAULT_UDP_IDLE_TIMEOUT_S
                }
                (t, _) => self.ranged(
                    t,
                    "udp_idle_timeout",
                    MIN_UDP_IDLE_TIMEOUT_S.into(),
                    MAX_UDP_IDLE_TIMEOUT_S.into(),
                    DEFAULT_UDP_IDLE_TIMEOUT_S,
                ),
            };
            if protocol == Protocol::Udp
                && let Some(g) = groups.iter().find(|g| &g.name == group)
                && g.health_check.enabled
                && g.health_check.port.is_none()
            {
                self.at(&r.protocol, format!(
                    "UDP listener {name:?} uses target group {group:?}, whose health check has no port: \
                     health checks run over TCP or HTTP, so set health_check.port in that group to a TCP \
                     port its targets serve (or health_check.enabled = false)"
                ));
            }
            let mode = r.mode.as_ref().map(|m| *m.get_ref()).unwrap_or_default();
            if mode != Mode::Nat
                && let Some(g) = groups.iter().find(|g| &g.name == group)
                && let Some(t) = g.targets.iter().find(|t| t.endpoint.port != port)
            {
                let m = r.mode.as_ref().expect("a non-default mode was written");
                self.at(m, format!(
                    "listener {name:?} is mode {:?}: its packets reach targets unchanged, so targets must use the listener's port {port}, but {} in target group {group:?} does not (set the group's port to {port})",
                    mode.as_str(),
                    t.endpoint
                ));
            }
            if let Some(g) = groups.iter().find(|g| &g.name == group) {
                for t in g
                    .targets
                    .iter()
                    .filter(|t| !t.endpoint.addr.is_unspecified())
                {
                    if let Err(e) = super::family_fits(mode, vip, t.endpoint.addr) {
                        self.at(
                            &r.vip,
                            format!(
                                "listener {name:?} on {vip} cannot send to target {} of group {group:?}: {e}",
                                t.endpoint
                            ),
                        );
                        break;
                    }
                }
            }
            let mut allow_sources = self.sources(&r.allow_sources, "allow_sources", vip);
            let mut deny_sources = self.sources(&r.deny_sources, "deny_sources", vip);
            // Named sets: their prefixes of the VIP's family (a set may serve IPv4 and IPv6
            // listeners alike).
            for set_name in &r.source_rules {
                let Some(set) = rule_sets.iter().find(|s| &s.name == set_name.get_ref()) else {
                    self.at(
                        set_name,
                        format!(
                            "listener {name:?} names unknown source_rules set {:?}",
                            set_name.get_ref()
                        ),
                    );
                    continue;
                };
                let fits = |c: &&Cidr| c.addr.is_ipv4() == vip.is_ipv4();
                for c in set.allow.iter().filter(fits) {
                    if !allow_sources.contains(c) {
                        allow_sources.push(*c);
                    }
                }
                for c in set.deny.iter().filter(fits) {
                    if !deny_sources.contains(c) {
                        deny_sources.push(*c);
                    }
                }
            }
            rules += allow_sources.len() + deny_sources.len();
            if rules > MAX_SOURCE_RULES as usize {
                self.at(
                    l,
                    format!("{rules} source rules in all; at most {MAX_SOURCE_RULES} fit"),
                );
            }
            let new_flows_per_second = self.ranged(
                &r.new_flows_per_second,
                "new_flows_per_second",
                1,
                MAX_NEW_FLOW_RATE.into(),
                0,
            );
            let new_flows_per_second_per_source = self.ranged(
                &r.new_flows_per_second_per_source,
                "new_flows_per_second_per_source",
                1,
                MAX_NEW_FLOW_RATE.into(),
                0,
            );
            let min_healthy_targets = self.ranged(
                &r.min_healthy_targets,
                "min_healthy_targets",
                1,
                (MAX_TARGETS - 1).into(),
                1,
            );
            out.push(Listener {
                name,
                vip,
                port,
                protocol,
                target_group: group.clone(),
                udp_idle_timeout_s,
                mode,
                allow_sources,
                deny_sources,
                new_flows_per_second,
                new_flows_per_second_per_source,
                min_healthy_targets,
            });
        }
        if out.len() > tables.max_listeners as usize
            && let Some(l) = raw.get(tables.max_listeners as usize)
        {
            self.at(
                l,
                format!(
                    "{} listeners, but tables.max_listeners is {}",
                    out.len(),
                    tables.max_listeners
                ),
            );
        }
        out
    }
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while u64::from(d) * u64::from(d) <= u64::from(n) {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

#[cfg(test)]
mod tests;
