//! Target groups at run time: which targets are registered (the config file plus the runtime
//! [`Overlay`]), their health, their drains, and the [`Plan`] the data plane follows.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use crate::{
    dataplane::reconcile::{Plan, PlannedTarget},
    health::{HealthCheck, Probe, State, Tracker},
    model::{
        Endpoint, FlowPolicy, Mode, ModelError, Target, TargetRef,
        config::{Config, TargetGroup},
        family_fits,
    },
    state::Overlay,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("no target group {0:?}")]
    UnknownGroup(String),
    #[error("{target} is already registered in group {group:?}")]
    AlreadyRegistered { group: String, target: Endpoint },
    #[error("{target} is not registered in group {group:?}")]
    NotRegistered { group: String, target: Endpoint },
    #[error(
        "{target} cannot join group {group:?}: listener {listener:?} sends to it in mode {mode:?}, which keeps the listener's port {port}"
    )]
    PortFixedByMode {
        group: String,
        target: Endpoint,
        listener: String,
        mode: &'static str,
        port: u16,
    },
    #[error("{target} cannot join group {group:?}: listener {listener:?} on {vip}: {reason}")]
    WrongFamily {
        group: String,
        target: Endpoint,
        listener: String,
        vip: std::net::IpAddr,
        /// What [`crate::model::FamilyMismatch`] says.
        reason: String,
    },
    #[error(
        "{target} cannot join group {group:?}: the data plane holds at most {max} distinct targets, all in use (deregistered ones count until their drain ends)"
    )]
    TooManyTargets {
        group: String,
        target: Endpoint,
        max: u32,
    },
    #[error(transparent)]
    Invalid(#[from] ModelError),
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
    pub members: BTreeMap<Endpoint, Member>,
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
                let m = group.members.entry(t.endpoint).or_insert_with(|| Member {
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
                if m.registered() && !wanted.iter().any(|t| t.endpoint == *addr) {
                    start_drain(m, spec, now);
                }
            }
        }
    }

    fn group(&self, name: &str) -> Result<&Group, RegistryError> {
        self.groups
            .get(name)
            .ok_or_else(|| RegistryError::UnknownGroup(name.into()))
    }

    /// Register `target` at run time (in `overlay`, then in the registry): the group's port
    /// unless it names one, weight 1 unless given. Returns the target as registered.
    pub fn register(
        &mut self,
        cfg: &Config,
        overlay: &mut Overlay,
        group: &str,
        target: TargetRef,
        weight: Option<u32>,
        now: Instant,
    ) -> Result<Target, RegistryError> {
        let g = self.group(group)?;
        let target = Target {
            endpoint: target.resolve(g.spec.port),
            weight: crate::model::weight(weight)?,
        };
        if let Some(l) = cfg.listeners.iter().find(|l| {
            l.target_group == group && l.mode != Mode::Nat && l.port != target.endpoint.port
        }) {
            return Err(RegistryError::PortFixedByMode {
                group: group.into(),
                target: target.endpoint,
                listener: l.name.clone(),
                mode: l.mode.as_str(),
                port: l.port,
            });
        }
        for l in cfg.listeners.iter().filter(|l| l.target_group == group) {
            let no_source6 = l.mode == Mode::Tunnel
                && target.endpoint.addr.is_ipv6()
                && cfg.tunnel.and_then(|t| t.source6).is_none();
            if no_source6 {
                return Err(RegistryError::WrongFamily {
                    group: group.into(),
                    target: target.endpoint,
                    listener: l.name.clone(),
                    vip: l.vip,
                    reason: "a tunnel to an IPv6 target needs tunnel.source_prefix6 in the config"
                        .into(),
                });
            }
            if let Err(reason) = family_fits(l.mode, l.vip, target.endpoint.addr) {
                return Err(RegistryError::WrongFamily {
                    group: group.into(),
                    target: target.endpoint,
                    listener: l.name.clone(),
                    vip: l.vip,
                    reason: reason.to_string(),
                });
            }
        }
        if g.members
            .get(&target.endpoint)
            .is_some_and(Member::registered)
        {
            return Err(RegistryError::AlreadyRegistered {
                group: group.into(),
                target: target.endpoint,
            });
        }
        // Every distinct target holds one of the data plane's target ids (MAX_TARGETS, id 0
        // unused) while registered or draining.
        let in_use: BTreeSet<Endpoint> = self
            .groups
            .values()
            .flat_map(|g| g.members.iter())
            .filter(|(_, m)| m.tracker.state != State::Unused)
            .map(|(e, _)| *e)
            .collect();
        let max = lb_common::limits::MAX_TARGETS - 1;
        if !in_use.contains(&target.endpoint) && in_use.len() >= max as usize {
            return Err(RegistryError::TooManyTargets {
                group: group.into(),
                target: target.endpoint,
                max,
            });
        }
        let o = overlay.groups.entry(group.into()).or_default();
        o.deregistered.retain(|e| *e != target.endpoint);
        o.registered.retain(|r| r.endpoint != target.endpoint);
        o.registered.push(target);
        overlay.normalise(cfg);
        self.sync(cfg, overlay, now);
        Ok(target)
    }

    /// Deregister `target` at run time: it drains, then becomes unused. Returns the endpoint.
    pub fn deregister(
        &mut self,
        cfg: &Config,
        overlay: &mut Overlay,
        group: &str,
        target: TargetRef,
        now: Instant,
    ) -> Result<Endpoint, RegistryError> {
        let g = self.group(group)?;
        let endpoint = target.resolve(g.spec.port);
        if !g.members.get(&endpoint).is_some_and(Member::registered) {
            return Err(RegistryError::NotRegistered {
                group: group.into(),
                target: endpoint,
            });
        }
        let in_file = g.spec.targets.iter().any(|t| t.endpoint == endpoint);
        let o = overlay.groups.entry(group.into()).or_default();
        o.registered.retain(|r| r.endpoint != endpoint);
        if in_file {
            o.deregistered.push(endpoint);
        }
        overlay.normalise(cfg);
        self.sync(cfg, overlay, now);
        Ok(endpoint)
    }

    /// Record a probe result; true if the target's state changed.
    pub fn observe(&mut self, group: &str, addr: Endpoint, probe: &Probe) -> bool {
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
    pub fn probes(&self) -> Vec<(String, Endpoint, HealthCheck)> {
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
                .map(|(&endpoint, m)| {
                    let state = m.tracker.state;
                    let in_ring = state == State::Healthy || (open && m.registered());
                    let keeps_flows = in_ring
                        || matches!(state, State::Healthy | State::Initial | State::Draining)
                        || (state == State::Unhealthy
                            && g.spec.unhealthy_flows == FlowPolicy::Keep);
                    PlannedTarget {
                        target: Target {
                            endpoint,
                            weight: m.weight,
                        },
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
