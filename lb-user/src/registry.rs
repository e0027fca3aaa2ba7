//! Target groups at run time: which targets are registered (the config file plus runtime
//! registrations), their health, their drains, and the [`Plan`] the data plane follows.
//!
//! Runtime registrations live in an [`Overlay`] on top of the config file, saved to the state
//! file on every change, so a restart keeps them. An overlay entry disappears once the file
//! says the same thing (a registered target written into the file, a deregistered one removed
//! from it), so the file stays the place to make a change permanent.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Instant};

use serde::{Deserialize, Serialize};

use crate::{
    balancer::{Plan, PlannedTarget},
    config::{Config, FlowPolicy, Target, TargetGroup},
    health::{HealthCheck, Probe, State, Tracker},
};

pub type TargetAddr = (Ipv4Addr, u16);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("no target group {0:?}")]
    UnknownGroup(String),
    #[error("{address}:{port} is already registered in group {group:?}")]
    AlreadyRegistered {
        group: String,
        address: Ipv4Addr,
        port: u16,
    },
    #[error("{address}:{port} is not registered in group {group:?}")]
    NotRegistered {
        group: String,
        address: Ipv4Addr,
        port: u16,
    },
    #[error("weight {0} is out of range (0-{max})", max = crate::config::MAX_WEIGHT)]
    BadWeight(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("state file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "state file {path} is not valid ({source}); fix or remove it (it holds runtime registrations)"
    )]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
}

/// Runtime changes on top of the config file, per group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    pub groups: BTreeMap<String, GroupOverlay>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOverlay {
    /// Registered at run time (or re-weighted): address, port, weight.
    #[serde(default)]
    pub registered: Vec<(Ipv4Addr, u16, u32)>,
    /// In the config file but deregistered at run time.
    #[serde(default)]
    pub deregistered: Vec<(Ipv4Addr, u16)>,
}

impl Overlay {
    pub fn load(path: &Path) -> Result<Self, StateFileError> {
        match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(StateFileError::Io {
                path: path.display().to_string(),
                source,
            }),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateFileError::Corrupt {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Write atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), StateFileError> {
        let io = |source| StateFileError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_vec_pretty(self).expect("overlay serialises");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The group's targets: the file's, less the deregistered, plus the registered.
    pub fn effective(&self, g: &TargetGroup) -> Vec<Target> {
        let o = self.groups.get(&g.name);
        let mut out: Vec<Target> = g
            .targets
            .iter()
            .filter(|t| !o.is_some_and(|o| o.deregistered.contains(&(t.address, t.port))))
            .copied()
            .collect();
        for &(address, port, weight) in o.map(|o| o.registered.as_slice()).unwrap_or_default() {
            match out
                .iter_mut()
                .find(|t| t.address == address && t.port == port)
            {
                Some(t) => t.weight = weight,
                None => out.push(Target {
                    address,
                    port,
                    weight,
                }),
            }
        }
        out
    }

    /// Drop what the config file now says itself; returns what was dropped, to log.
    pub fn normalise(&mut self, cfg: &Config) -> Vec<String> {
        let mut dropped = Vec::new();
        self.groups.retain(|name, o| {
            let Some(g) = cfg.group(name) else {
                dropped.push(format!("group {name:?} is no longer in the config: its runtime registrations are dropped"));
                return false;
            };
            o.registered.retain(|&(a, p, w)| {
                let same = g.targets.iter().any(|t| t.address == a && t.port == p && t.weight == w);
                if same {
                    dropped.push(format!("{name}: {a}:{p} is now in the config file"));
                }
                !same
            });
            o.deregistered.retain(|&(a, p)| {
                let present = g.targets.iter().any(|t| t.address == a && t.port == p);
                if !present {
                    dropped.push(format!("{name}: {a}:{p} is no longer in the config file"));
                }
                present
            });
            !o.registered.is_empty() || !o.deregistered.is_empty()
        });
        dropped
    }
}

/// One target of a group.
#[derive(Clone, Debug)]
pub struct Member {
    pub weight: u32,
    pub tracker: Tracker,
    /// While draining: when the drain ends.
    pub drain_until: Option<Instant>,
}

impl Member {
    pub fn registered(&self) -> bool {
        matches!(
            self.tracker.state,
            State::Initial | State::Healthy | State::Unhealthy
        )
    }
}

#[derive(Clone, Debug)]
pub struct Group {
    pub spec: TargetGroup,
    pub members: BTreeMap<TargetAddr, Member>,
}

impl Group {
    /// No registered target is healthy, but some are registered: traffic goes to all of them.
    pub fn fail_open(&self) -> bool {
        let mut registered = self.members.values().filter(|m| m.registered()).peekable();
        registered.peek().is_some()
            && !self
                .members
                .values()
                .any(|m| m.tracker.state == State::Healthy)
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    pub groups: BTreeMap<String, Group>,
}

impl Registry {
    /// Bring the registry in line with the config file and the overlay. Targets that left the
    /// effective set start draining; new ones start `initial` (or healthy if checks are off).
    pub fn sync(&mut self, cfg: &Config, overlay: &Overlay, now: Instant) {
        self.groups.retain(|name, _| cfg.group(name).is_some());
        for spec in &cfg.target_groups {
            let wanted = overlay.effective(spec);
            let group = self
                .groups
                .entry(spec.name.clone())
                .or_insert_with(|| Group {
                    spec: spec.clone(),
                    members: BTreeMap::new(),
                });
            let checks_changed = group.spec.health_check.enabled != spec.health_check.enabled;
            group.spec = spec.clone();
            for t in &wanted {
                let m = group
                    .members
                    .entry((t.address, t.port))
                    .or_insert_with(|| Member {
                        weight: t.weight,
                        tracker: Tracker::new(spec.health_check.enabled),
                        drain_until: None,
                    });
                m.weight = t.weight;
                if !m.registered() || checks_changed {
                    m.tracker = Tracker::new(spec.health_check.enabled);
                    m.drain_until = None;
                }
            }
            for (addr, m) in group.members.iter_mut() {
                if m.registered() && !wanted.iter().any(|t| (t.address, t.port) == *addr) {
                    start_drain(m, spec, now);
                }
            }
        }
    }

    /// Whether `addr` is registered (initial, healthy or unhealthy) in `group`.
    fn is_registered(&self, group: &str, addr: TargetAddr) -> Result<bool, RegistryError> {
        let g = self
            .groups
            .get(group)
            .ok_or_else(|| RegistryError::UnknownGroup(group.into()))?;
        Ok(g.members.get(&addr).is_some_and(Member::registered))
    }

    /// Register `addr` at run time (in `overlay`, then in the registry).
    pub fn register(
        &mut self,
        cfg: &Config,
        overlay: &mut Overlay,
        group: &str,
        addr: TargetAddr,
        weight: u32,
        now: Instant,
    ) -> Result<(), RegistryError> {
        let registered = self.is_registered(group, addr)?;
        if weight > crate::config::MAX_WEIGHT {
            return Err(RegistryError::BadWeight(weight));
        }
        if registered {
            return Err(RegistryError::AlreadyRegistered {
                group: group.into(),
                address: addr.0,
                port: addr.1,
            });
        }
        let o = overlay.groups.entry(group.into()).or_default();
        o.deregistered.retain(|a| *a != addr);
        o.registered.retain(|(a, p, _)| (*a, *p) != addr);
        o.registered.push((addr.0, addr.1, weight));
        overlay.normalise(cfg);
        self.sync(cfg, overlay, now);
        Ok(())
    }

    /// Deregister `addr` at run time: it drains, then becomes unused.
    pub fn deregister(
        &mut self,
        cfg: &Config,
        overlay: &mut Overlay,
        group: &str,
        addr: TargetAddr,
        now: Instant,
    ) -> Result<(), RegistryError> {
        if !self.is_registered(group, addr)? {
            return Err(RegistryError::NotRegistered {
                group: group.into(),
                address: addr.0,
                port: addr.1,
            });
        }
        let o = overlay.groups.entry(group.into()).or_default();
        o.registered.retain(|(a, p, _)| (*a, *p) != addr);
        if self.groups[group]
            .spec
            .targets
            .iter()
            .any(|t| (t.address, t.port) == addr)
        {
            o.deregistered.push(addr);
        }
        overlay.normalise(cfg);
        self.sync(cfg, overlay, now);
        Ok(())
    }

    /// Record a probe result; true if the target's state changed.
    pub fn observe(&mut self, group: &str, addr: TargetAddr, probe: &Probe) -> bool {
        let Some(g) = self.groups.get_mut(group) else {
            return false;
        };
        let hc = g.spec.health_check.clone();
        match g.members.get_mut(&addr) {
            Some(m) if m.registered() => m.tracker.observe(probe, &hc),
            _ => false,
        }
    }

    /// End drains whose time has come; true if any did.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for g in self.groups.values_mut() {
            for m in g.members.values_mut() {
                if m.tracker.state == State::Draining && m.drain_until.is_some_and(|t| t <= now) {
                    m.tracker
                        .set(State::Unused, "target deregistered; drain finished");
                    m.drain_until = None;
                    changed = true;
                }
            }
        }
        changed
    }

    /// The targets to probe now, with their check and probe address.
    pub fn probes(&self) -> Vec<(String, TargetAddr, HealthCheck)> {
        let mut out = Vec::new();
        for (name, g) in &self.groups {
            if !g.spec.health_check.enabled {
                continue;
            }
            for (addr, m) in &g.members {
                if m.registered() {
                    out.push((name.clone(), *addr, g.spec.health_check.clone()));
                }
            }
        }
        out
    }

    /// What the data plane should do: healthy targets take new flows (all registered ones in
    /// fail-open); draining targets keep their flows until the drain ends; unhealthy targets
    /// keep theirs only with `unhealthy_flows = "keep"`.
    pub fn plan(&self, cfg: &Config) -> Plan {
        let mut plan = Plan::from_config(cfg);
        for (name, g) in &self.groups {
            let open = g.fail_open();
            let targets = g
                .members
                .iter()
                .filter(|(_, m)| m.tracker.state != State::Unused)
                .map(|(&(address, port), m)| {
                    let state = m.tracker.state;
                    let in_ring = state == State::Healthy || (open && m.registered());
                    let keeps_flows = in_ring
                        || matches!(state, State::Healthy | State::Initial | State::Draining)
                        || (state == State::Unhealthy
                            && g.spec.unhealthy_flows == FlowPolicy::Keep);
                    PlannedTarget {
                        address,
                        port,
                        weight: m.weight,
                        in_ring,
                        keeps_flows,
                    }
                })
                .collect();
            plan.groups.insert(name.clone(), targets);
        }
        plan
    }
}

fn start_drain(m: &mut Member, spec: &TargetGroup, now: Instant) {
    if spec.deregistration_delay.is_zero() {
        m.tracker.set(State::Unused, "target deregistered");
        m.drain_until = None;
    } else {
        m.tracker.set(State::Draining, "deregistration in progress");
        m.drain_until = Some(now + spec.deregistration_delay);
    }
}

#[cfg(test)]
mod tests;
