//! What `xlb status`, `xlb listeners` and `xlb targets health` answer: built from the model
//! and a counter snapshot. The CLI renders these for people (`cli::render`); `--json` prints
//! them as they are.
use std::time::Instant;

use lb_common::{Counters, Stat};
use serde::{Deserialize, Serialize};

use crate::{
    dataplane::{AttachMode, Dataplane, DataplaneError, reconcile::Reconciler},
    health::CheckProtocol,
    model::config::Config,
    state::Registry,
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
    /// Set while the data plane could not be brought in line with the model (the last error);
    /// the agent retries every second until it succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_error: Option<String>,
    /// With `[bgp]`: each VIP, whether this node announces it, and why.
    #[serde(default)]
    pub announcements: Vec<Announcement>,
    /// Set while the node is drained (`xlb node drain`): its VIPs are withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Announcement {
    pub vip: String,
    pub announced: bool,
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrainStatus {
    pub since_s: u64,
    /// Seconds until the agent stops, when drained with `--stop-after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stops_in_s: Option<u64>,
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
    /// "nat", "dsr" or "tunnel".
    #[serde(default)]
    pub mode: String,
    pub traffic: Traffic,
    /// Source rules, with the packets each matched (deny: dropped; allow: let through).
    #[serde(default)]
    pub source_rules: Vec<RuleStatus>,
    /// Packets dropped because no allow rule matched their source.
    #[serde(default)]
    pub not_allowed: u64,
    /// New-flow limits and what they refused; absent when the listener has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimitStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// `new_flows_per_second` (0: none).
    pub new_flows_per_second: u32,
    /// `new_flows_per_second_per_source` (0: none).
    pub new_flows_per_second_per_source: u32,
    /// New flows dropped over the listener's limit.
    pub listener_limited: u64,
    /// New flows dropped over their source's limit.
    pub source_limited: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleStatus {
    /// "allow" or "deny".
    pub kind: String,
    pub source: String,
    pub packets: u64,
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
    /// How long its last health check took (ms); absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reason {
    pub name: String,
    pub kind: String,
    pub code: u32,
    pub packets: u64,
}

/// What the agent knows, for [`collect`].
pub struct Sources<'a, D> {
    pub reconciler: &'a Reconciler<D>,
    pub cfg: &'a Config,
    pub registry: &'a Registry,
    pub config_path: &'a str,
    pub interfaces: &'a [(String, AttachMode)],
    pub dataplane_error: Option<&'a str>,
    pub announcements: Vec<Announcement>,
    pub drain: Option<DrainStatus>,
    pub check_latency:
        &'a std::collections::HashMap<(String, crate::model::Endpoint), std::time::Duration>,
}

pub fn collect<D: Dataplane>(src: Sources<'_, D>, now: Instant) -> Result<Status, DataplaneError> {
    let Sources {
        reconciler: b,
        cfg,
        registry,
        config_path,
        interfaces,
        dataplane_error,
        announcements,
        drain,
        check_latency,
    } = src;
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
        .map(|l| {
            let rules = &snap.rules;
            ListenerStatus {
                name: l.name.clone(),
                vip: l.vip.to_string(),
                port: l.port,
                protocol: l.protocol.as_str().to_owned(),
                target_group: l.target_group.clone(),
                mode: l.mode.as_str().to_owned(),
                traffic: traffic(&snap.listeners, b.listener_id(l)),
                source_rules: [
                    ("allow", true, &l.allow_sources),
                    ("deny", false, &l.deny_sources),
                ]
                .into_iter()
                .flat_map(|(kind, allow, list)| {
                    list.iter().map(move |c| RuleStatus {
                        kind: kind.to_owned(),
                        source: c.to_string(),
                        packets: b
                            .rule_id(l, allow, c)
                            .and_then(|id| rules.get(id as usize))
                            .copied()
                            .unwrap_or(0),
                    })
                })
                .collect(),
                not_allowed: b
                    .listener_id(l)
                    .filter(|_| !l.allow_sources.is_empty())
                    .and_then(|id| rules.get(lb_common::not_allowed_slot(id) as usize))
                    .copied()
                    .unwrap_or(0),
                rate_limits: (l.new_flows_per_second != 0
                    || l.new_flows_per_second_per_source != 0)
                    .then(|| {
                        let slot = |f: fn(u32) -> u32| {
                            b.listener_id(l)
                                .and_then(|id| rules.get(f(id) as usize))
                                .copied()
                                .unwrap_or(0)
                        };
                        RateLimitStatus {
                            new_flows_per_second: l.new_flows_per_second,
                            new_flows_per_second_per_source: l.new_flows_per_second_per_source,
                            listener_limited: slot(lb_common::rate_limited_slot),
                            source_limited: slot(lb_common::source_rate_limited_slot),
                        }
                    }),
            }
        })
        .collect();
    let groups = registry
        .groups
        .iter()
        .map(|(name, g)| {
            let hc = &g.spec.health_check;
            let health_check = if !hc.enabled {
                "disabled".to_owned()
            } else {
                // Targets of a dsr/tunnel listener's group are probed at its VIP, along the
                // data path (see agent::probes).
                let path = cfg
                    .listeners
                    .iter()
                    .find(|l| &l.target_group == name && l.mode != crate::model::Mode::Nat);
                let port = match path {
                    Some(l) => format!(
                        "{} through the {} path",
                        crate::model::Endpoint::new(l.vip, hc.port.unwrap_or(l.port)),
                        l.mode.as_str()
                    ),
                    None => hc
                        .port
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "traffic port".into()),
                };
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
                    .map(|(endpoint, m)| TargetStatus {
                        address: endpoint.addr.to_string(),
                        port: endpoint.port,
                        weight: m.weight,
                        state: m.tracker.state.as_str().to_owned(),
                        reason: m.tracker.reason.clone(),
                        drain_remaining_s: m
                            .drain_until
                            .map(|t| t.saturating_duration_since(now).as_secs()),
                        traffic: traffic(&snap.targets, b.target_id(endpoint)),
                        check_ms: check_latency
                            .get(&(name.clone(), *endpoint))
                            .map(|d| d.as_secs_f64() * 1000.0),
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
                mode: m.as_str().into(),
            })
            .collect(),
        listeners,
        groups,
        reasons,
        dataplane_error: dataplane_error.map(str::to_owned),
        announcements,
        drain,
    })
}
