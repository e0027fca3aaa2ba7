//! What `xlb status`, `xlb listeners` and `xlb targets health` show: built from the model and a
//! counter snapshot; tables for people, JSON for scripts.
use std::fmt::Write as _;

use lb_common::{Counters, Stat};
use serde::{Deserialize, Serialize};

use crate::{
    balancer::Balancer,
    config::Config,
    dataplane::{AttachMode, Dataplane, DataplaneError},
    health::CheckProtocol,
    registry::Registry,
};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl From<Counters> for Traffic {
    fn from(c: Counters) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            reply_packets: c.reply_packets,
            reply_bytes: c.reply_bytes,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub config: String,
    pub interfaces: Vec<Interface>,
    pub listeners: Vec<ListenerStatus>,
    pub groups: Vec<GroupStatus>,
    pub reasons: Vec<Reason>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub mode: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub target_group: String,
    pub traffic: Traffic,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    /// No registered target is healthy: new flows go to every registered target.
    pub fail_open: bool,
    pub health_check: String,
    pub deregistration_delay_s: u64,
    pub targets: Vec<TargetStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetStatus {
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub state: String,
    pub reason: String,
    /// Seconds left of the drain, while draining.
    pub drain_remaining_s: Option<u64>,
    /// All traffic of this target, over every listener that uses it.
    pub traffic: Traffic,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reason {
    pub name: String,
    pub kind: String,
    pub code: u32,
    pub packets: u64,
}

pub fn collect<D: Dataplane>(
    b: &Balancer<D>,
    cfg: &Config,
    registry: &Registry,
    config_path: &str,
    interfaces: &[(String, AttachMode)],
) -> Result<Status, DataplaneError> {
    let snap = b.snapshot()?;
    let traffic = |v: &Vec<Counters>, id: Option<u32>| -> Traffic {
        id.and_then(|i| v.get(i as usize))
            .copied()
            .unwrap_or_default()
            .into()
    };
    let listeners = cfg
        .listeners
        .iter()
        .map(|l| ListenerStatus {
            name: l.name.clone(),
            vip: l.vip.to_string(),
            port: l.port,
            protocol: l.protocol.as_str().to_owned(),
            target_group: l.target_group.clone(),
            traffic: traffic(&snap.listeners, b.listener_id(l)),
        })
        .collect();
    let now = std::time::Instant::now();
    let groups = registry
        .groups
        .iter()
        .map(|(name, g)| {
            let hc = &g.spec.health_check;
            let health_check = if !hc.enabled {
                "disabled".to_owned()
            } else {
                let port = hc
                    .port
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "traffic port".into());
                let what = match hc.protocol {
                    CheckProtocol::Tcp => format!("tcp {port}"),
                    CheckProtocol::Http => format!("http {port} {} codes {}", hc.path, hc.matcher),
                };
                format!(
                    "{what}, every {}s, timeout {}s, healthy {}, unhealthy {}",
                    hc.interval.as_secs(),
                    hc.timeout.as_secs(),
                    hc.healthy_threshold,
                    hc.unhealthy_threshold
                )
            };
            GroupStatus {
                name: name.clone(),
                fail_open: g.fail_open(),
                health_check,
                deregistration_delay_s: g.spec.deregistration_delay.as_secs(),
                targets: g
                    .members
                    .iter()
                    .map(|(&(address, port), m)| TargetStatus {
                        address: address.to_string(),
                        port,
                        weight: m.weight,
                        state: m.tracker.state.as_str().to_owned(),
                        reason: m.tracker.reason.clone(),
                        drain_remaining_s: m
                            .drain_until
                            .map(|t| t.saturating_duration_since(now).as_secs()),
                        traffic: traffic(&snap.targets, b.target_id(address, port)),
                    })
                    .collect(),
            }
        })
        .collect();
    let reasons = Stat::ALL
        .iter()
        .map(|s| Reason {
            name: s.label().to_owned(),
            kind: s.kind().to_owned(),
            code: *s as u32,
            packets: snap.stats.get(*s as usize).copied().unwrap_or(0),
        })
        .collect();
    Ok(Status {
        config: config_path.to_owned(),
        interfaces: interfaces
            .iter()
            .map(|(n, m)| Interface {
                name: n.clone(),
                mode: match m {
                    AttachMode::Native => "native".into(),
                    AttachMode::Generic => "generic".into(),
                },
            })
            .collect(),
        listeners,
        groups,
        reasons,
    })
}

pub fn render_listeners(o: &mut String, listeners: &[ListenerStatus]) {
    let _ = writeln!(
        o,
        "{:<16} {:<22} {:<5} {:<12} {:>10} {:>12} {:>9} {:>10}",
        "LISTENER", "VIP:PORT", "PROTO", "GROUP", "PACKETS", "BYTES", "NEW", "REPLIES"
    );
    for l in listeners {
        let _ = writeln!(
            o,
            "{:<16} {:<22} {:<5} {:<12} {:>10} {:>12} {:>9} {:>10}",
            l.name,
            format!("{}:{}", l.vip, l.port),
            l.protocol,
            l.target_group,
            l.traffic.packets,
            l.traffic.bytes,
            l.traffic.new_flows,
            l.traffic.reply_packets
        );
    }
}

pub fn render_groups(o: &mut String, groups: &[GroupStatus]) {
    for g in groups {
        let open = if g.fail_open {
            "  FAIL-OPEN: no healthy target, all registered targets take traffic"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "target group {} (health check: {}){open}",
            g.name, g.health_check
        );
        let _ = writeln!(
            o,
            "  {:<22} {:>6} {:<10} {:>10} {:>9}  REASON",
            "TARGET", "WEIGHT", "STATE", "PACKETS", "NEW"
        );
        for t in &g.targets {
            let reason = match t.drain_remaining_s {
                Some(s) => format!("{} ({s} s left)", t.reason),
                None => t.reason.clone(),
            };
            let _ = writeln!(
                o,
                "  {:<22} {:>6} {:<10} {:>10} {:>9}  {reason}",
                format!("{}:{}", t.address, t.port),
                t.weight,
                t.state,
                t.traffic.packets,
                t.traffic.new_flows,
            );
        }
    }
}

/// The full status for people. Reasons with no packets are left out (`--json` has them all).
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let ifs: Vec<String> = s
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.mode))
        .collect();
    let _ = writeln!(o, "config:     {}", s.config);
    let _ = writeln!(o, "interfaces: {}", ifs.join(", "));
    let _ = writeln!(o);
    render_listeners(&mut o, &s.listeners);
    let _ = writeln!(o);
    render_groups(&mut o, &s.groups);
    let _ = writeln!(o);
    let _ = writeln!(o, "{:<24} {:<8} {:>12}", "REASON", "KIND", "PACKETS");
    for r in s.reasons.iter().filter(|r| r.packets > 0) {
        let _ = writeln!(o, "{:<24} {:<8} {:>12}", r.name, r.kind, r.packets);
    }
    o
}
