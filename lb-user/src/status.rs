//! What `xlb status` shows: built from the model and a counter snapshot; a table for people,
//! JSON for scripts.
use std::fmt::Write as _;

use lb_common::{Counters, Stat};
use serde::{Deserialize, Serialize};

use crate::{
    balancer::Balancer,
    dataplane::{AttachMode, Dataplane, DataplaneError},
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
    pub targets: Vec<TargetStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetStatus {
    pub address: String,
    pub port: u16,
    pub weight: u32,
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
    config_path: &str,
    interfaces: &[(String, AttachMode)],
) -> Result<Status, DataplaneError> {
    let snap = b.snapshot()?;
    let counters = |v: &Vec<Counters>, id: Option<u32>| -> Traffic {
        id.and_then(|i| v.get(i as usize))
            .copied()
            .unwrap_or_default()
            .into()
    };
    let mut listeners = Vec::new();
    if let Some(cfg) = b.config() {
        for l in &cfg.listeners {
            let targets = cfg
                .group(&l.target_group)
                .map(|g| {
                    g.targets
                        .iter()
                        .map(|t| TargetStatus {
                            address: t.address.to_string(),
                            port: t.port,
                            weight: t.weight,
                            traffic: counters(&snap.targets, b.target_id(t.address, t.port)),
                        })
                        .collect()
                })
                .unwrap_or_default();
            listeners.push(ListenerStatus {
                name: l.name.clone(),
                vip: l.vip.to_string(),
                port: l.port,
                protocol: l.protocol.as_str().to_owned(),
                target_group: l.target_group.clone(),
                traffic: counters(&snap.listeners, b.listener_id(l)),
                targets,
            });
        }
    }
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
        reasons,
    })
}

/// The table for people. Reasons with no packets are left out (`--json` has them all).
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
    let _ = writeln!(
        o,
        "{:<16} {:<22} {:<5} {:<12} {:>10} {:>12} {:>9} {:>10}",
        "LISTENER", "VIP:PORT", "PROTO", "GROUP", "PACKETS", "BYTES", "NEW", "REPLIES"
    );
    for l in &s.listeners {
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
        for t in &l.targets {
            let _ = writeln!(
                o,
                "  -> {:<33} w={:<4} {:>12} {:>12} {:>9} {:>10}",
                format!("{}:{}", t.address, t.port),
                t.weight,
                t.traffic.packets,
                t.traffic.bytes,
                t.traffic.new_flows,
                t.traffic.reply_packets
            );
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "{:<24} {:<8} {:>12}", "REASON", "KIND", "PACKETS");
    for r in s.reasons.iter().filter(|r| r.packets > 0) {
        let _ = writeln!(o, "{:<24} {:<8} {:>12}", r.name, r.kind, r.packets);
    }
    o
}
