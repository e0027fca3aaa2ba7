//! Who runs the health checks. The agent says which targets to probe ([`Prober::set`]); the
//! results come back to its loop as [`ProbeResult`]s. [`TaskProber`] runs one tokio task per
//! target; tests use a fake that only records what it was told and feed results by hand.
//!
//! **Through the data path** (`dsr` listeners): a probe to a target's own address proves
//! nothing about the VIP. Such a probe connects to VIP:port instead, from a socket marked
//! [`PROBE_MARK_BASE`] | target id; a policy rule sends that mark to a table of its own whose one
//! route is `VIP via TARGET`, so the SYN leaves exactly as balanced packets do — the VIP as
//! destination, the target's MAC on the wire. A target without the VIP on its loopback does
//! not answer, and is unhealthy with a reason that says so. The rules and tables (ids
//! `PROBE_MARK_BASE | id`, preference [`PROBE_RULE_PREF`]) are the agent's: made as probes
//! start, removed as they stop and on exit, stale ones cleared at start.
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    health::{self, HealthCheck, Probe},
    iproute::{ip, ip_output},
    model::Endpoint,
};

pub use lb_common::{PROBE_MARK_BASE, PROBE_MARK_MASK};
/// Preference of the agent's policy rules (before the main table's 32766).
pub const PROBE_RULE_PREF: u32 = 1000;

/// How a probe reaches the VIP along the data path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePath {
    /// Where the probe connects: the listener's VIP and the check's port.
    pub vip: SocketAddr,
    /// `PROBE_MARK_BASE | target id`.
    pub mark: u32,
    /// "dsr" or "tunnel": how the route is made, and said in the reason when the VIP does not
    /// answer.
    pub mode: &'static str,
}

/// Probe this group's target with this check, along `path` if set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub group: String,
    pub endpoint: Endpoint,
    pub check: HealthCheck,
    pub path: Option<ProbePath>,
}
/// What one probe of a group's target found.
/// (group, target, result, how long the check took).
pub type ProbeResult = (String, Endpoint, Probe, std::time::Duration);

pub trait Prober {
    /// Probe exactly these targets from now on: start what is new or changed, stop the rest.
    fn set(&mut self, wanted: Vec<ProbeSpec>);
    /// The interfaces `tunnel` probes leave by (they need the probe encapsulation there).
    fn encap_interfaces(&self) -> Vec<String> {
        Vec::new()
    }
}

/// One tokio task per probed target, each on its own timer (the first probe at once).
pub struct TaskProber {
    tx: mpsc::Sender<ProbeResult>,
    tasks: HashMap<(String, Endpoint), (ProbeSpec, JoinHandle<()>)>,
    /// Policy routes of data-path probes: mark -> (VIP, target) as installed, and for tunnel
    /// probes the interface they leave by.
    routes: HashMap<u32, ((IpAddr, IpAddr), Option<String>)>,
}

impl TaskProber {
    /// Results go to `tx`. Clears data-path rules a previous agent left behind.
    pub fn new(tx: mpsc::Sender<ProbeResult>) -> Self {
        clear_stale_rules();
        Self {
            tx,
            tasks: HashMap::new(),
            routes: HashMap::new(),
        }
    }

    /// Make the policy routes match the paths wanted; a path whose route cannot be made is
    /// dropped from its spec (the probe then goes to the target's address), with a warning.
    fn set_routes(&mut self, wanted: &mut [ProbeSpec]) {
        let want: HashMap<u32, (IpAddr, IpAddr)> = wanted
            .iter()
            .filter_map(|s| {
                s.path
                    .as_ref()
                    .map(|p| (p.mark, (p.vip.ip(), s.endpoint.addr)))
            })
            .collect();
        let stale: Vec<u32> = self
            .routes
            .iter()
            .filter(|(m, (r, _))| want.get(m) != Some(r))
            .map(|(m, _)| *m)
            .collect();
        for mark in stale {
            remove_route(mark);
            self.routes.remove(&mark);
        }
        for s in wanted.iter_mut() {
            let Some(p) = &s.path else { continue };
            if self.routes.contains_key(&p.mark) {
                continue;
            }
            match add_route(p.mark, p.vip.ip(), s.endpoint.addr, p.mode == "tunnel") {
                Ok(dev) => {
                    self.routes
                        .insert(p.mark, ((p.vip.ip(), s.endpoint.addr), dev));
                }
                Err(e) => {
                    log::warn!(
                        "{}: {}: cannot probe {} through the {} path ({e}); probing the target's own address",
                        s.group,
                        s.endpoint,
                        p.vip,
                        p.mode
                    );
                    s.path = None;
                }
            }
        }
    }
}

/// `mark` -> its own table, whose one route sends the VIP to the target as next hop (dsr), or
/// (tunnel) along the route to the target, where the probe encapsulation wraps it. Returns the
/// interface of a tunnel route.
fn add_route(
    mark: u32,
    vip: IpAddr,
    target: IpAddr,
    tunnel: bool,
) -> Result<Option<String>, String> {
    let table = mark;
    let (f, host) = if vip.is_ipv6() {
        ("-6", 128)
    } else {
        ("-4", 32)
    };
    let dev = if tunnel {
        let (via, dev) = route_to(target)?;
        let via = via.unwrap_or(target);
        // An IPv4 VIP tunnelled to an IPv6 target: an IPv4 route with an IPv6 next hop.
        let inet6 = if vip.is_ipv4() && via.is_ipv6() {
            "inet6 "
        } else {
            ""
        };
        ip(&format!(
            "{f} route replace {vip}/{host} via {inet6}{via} dev {dev} table {table}"
        ))?;
        Some(dev)
    } else {
        ip(&format!(
            "{f} route replace {vip}/{host} via {target} table {table}"
        ))?;
        None
    };
    let _ = ip(&format!("{f} rule del fwmark {mark} lookup {table}"));
    ip(&format!(
        "{f} rule add fwmark {mark} lookup {table} pref {PROBE_RULE_PREF}"
    ))?;
    Ok(dev)
}

/// The kernel's route to `target`: the gateway (if any) and the interface.
fn route_to(target: IpAddr) -> Result<(Option<IpAddr>, String), String> {
    let text = ip_output(&format!("-o route get {target}"))?;
    let word_after = |w: &str| {
        text.split_whitespace()
            .skip_while(|x| *x != w)
            .nth(1)
            .map(str::to_owned)
    };
    let dev = word_after("dev").ok_or_else(|| format!("no route to {target}"))?;
    let via = word_after("via").and_then(|v| v.parse().ok());
    Ok((via, dev))
}

/// Remove the rule and table of `mark`, whichever family they are in.
fn remove_route(mark: u32) {
    for f in ["-4", "-6"] {
        let _ = ip(&format!("{f} rule del fwmark {mark} lookup {mark}"));
        let _ = ip(&format!("{f} route flush table {mark}"));
    }
}

/// Remove rules of the agent's mark range (a previous agent that did not exit cleanly).
fn clear_stale_rules() {
    let out = [ip_output("-4 rule show"), ip_output("-6 rule show")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    for line in out.lines() {
        let table = line
            .split_whitespace()
            .skip_while(|w| *w != "lookup")
            .nth(1)
            .and_then(|t| t.parse::<u32>().ok());
        if let Some(t) = table
            && t & PROBE_MARK_MASK == PROBE_MARK_BASE
        {
            remove_route(t);
        }
    }
}

impl Prober for TaskProber {
    fn encap_interfaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .routes
            .values()
            .filter_map(|(_, d)| d.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn set(&mut self, mut wanted: Vec<ProbeSpec>) {
        self.set_routes(&mut wanted);
        let keys: HashSet<(String, Endpoint)> = wanted
            .iter()
            .map(|s| (s.group.clone(), s.endpoint))
            .collect();
        self.tasks.retain(|k, (_, task)| {
            let keep = keys.contains(k);
            if !keep {
                task.abort();
            }
            keep
        });
        for spec in wanted {
            let key = (spec.group.clone(), spec.endpoint);
            if self.tasks.get(&key).is_some_and(|(s, _)| *s == spec) {
                continue;
            }
            if let Some((_, old)) = self.tasks.remove(&key) {
                old.abort();
            }
            let tx = self.tx.clone();
            let s = spec.clone();
            let task = tokio::spawn(async move {
                let e = s.endpoint;
                let (addr, mark) = match &s.path {
                    Some(p) => (p.vip, Some(p.mark)),
                    None => (
                        SocketAddr::new(e.addr, s.check.port.unwrap_or(e.port)),
                        None,
                    ),
                };
                loop {
                    let started = tokio::time::Instant::now();
                    let mut p = health::probe(&s.check, addr, mark).await;
                    let took = started.elapsed();
                    if let (Probe::Timeout, Some(path)) = (&p, &s.path) {
                        p = Probe::PathSilent {
                            vip: path.vip,
                            mode: path.mode,
                        };
                    }
                    if tx.send((s.group.clone(), e, p, took)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(s.check.interval).await;
                }
            });
            self.tasks.insert(key, (spec, task));
        }
    }
}

impl Drop for TaskProber {
    fn drop(&mut self) {
        for (_, (_, task)) in self.tasks.drain() {
            task.abort();
        }
        for mark in self.routes.keys() {
            remove_route(*mark);
        }
    }
}
