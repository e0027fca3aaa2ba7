//! The agent: the one owner of all state. It reacts, one event at a time, to control requests,
//! health-check results and the clock, and keeps the data plane in step with the model.
//!
//! [`Agent`] is generic over the data plane and the prober and takes the time as an argument,
//! so its logic runs in unit tests on the fake data plane with a fake prober and a hand-moved
//! clock (`tests.rs`). [`run`] wires the real pieces: the XDP object, probe tasks, signals, the
//! control socket and the wall clock.
mod explain;
mod probes;
mod serve;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use probes::{PROBE_MARK_BASE, ProbePath, ProbeResult, ProbeSpec, Prober, TaskProber};
pub use serve::run;

use crate::{
    api::{
        ApplyReport, Message,
        server::{Failure, FailureKind, Reply, Request},
        status::{self, Announcement, DrainStatus, Sources, Status},
    },
    dataplane::{AttachMode, Dataplane, reconcile::Reconciler},
    model::{
        Mode,
        config::{self, Config},
    },
    state::{Overlay, Registry, RegistryError},
};

pub struct Agent<D, P> {
    config_path: PathBuf,
    cfg: Config,
    overlay: Overlay,
    registry: Registry,
    reconciler: Reconciler<D>,
    prober: P,
    attached: Vec<(String, AttachMode)>,
    failing_open: HashSet<String>,
    /// The last failure to bring the data plane in line with the model, until a retry works.
    dataplane_error: Option<String>,
    /// Set by `xlb node drain`: since when, and when to stop (`--stop-after`).
    drain: Option<(Instant, Option<Instant>)>,
    /// How long each target's last health check took.
    check_latency: std::collections::HashMap<(String, crate::model::Endpoint), std::time::Duration>,
}

fn registry_failure(e: RegistryError) -> Failure {
    let kind = match e {
        RegistryError::UnknownGroup(_) | RegistryError::NotRegistered { .. } => {
            FailureKind::NotFound
        }
        RegistryError::AlreadyRegistered { .. } => FailureKind::Conflict,
        RegistryError::Invalid(_)
        | RegistryError::PortFixedByMode { .. }
        | RegistryError::WrongFamily { .. }
        | RegistryError::TooManyTargets { .. } => FailureKind::BadRequest,
    };
    Failure::new(kind, e.to_string())
}

fn rule_failure(e: crate::state::RuleError) -> Failure {
    use crate::state::RuleError;
    let kind = match e {
        RuleError::UnknownListener(_) | RuleError::Absent { .. } => FailureKind::NotFound,
        RuleError::Present { .. } => FailureKind::Conflict,
        RuleError::WrongFamily { .. } | RuleError::TooMany => FailureKind::BadRequest,
    };
    Failure::new(kind, e.to_string())
}

fn rejected(m: String) -> Failure {
    Failure::new(FailureKind::Rejected, m)
}

impl<D: Dataplane, P: Prober> Agent<D, P> {
    /// Fill the maps and attach. `cfg` was validated by the caller (config errors exit 64
    /// there). On error whatever was attached is detached.
    pub fn start(
        config_path: &Path,
        cfg: Config,
        dp: D,
        prober: P,
        now: Instant,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let overlay =
            Overlay::load(&cfg.state_file)?.normalised_and_saved(&cfg, &cfg.state_file)?;
        let mut registry = Registry::default();
        registry.sync(&cfg, &overlay, now);
        let mut reconciler = Reconciler::new(dp, cfg.tables);
        // A pinned data plane a previous agent left: keep its target ids (its flows name them).
        let adopted = reconciler
            .adopt_targets()
            .context("reading the pinned targets")?;
        if adopted > 0 {
            log::info!("adopted the pinned data plane: {adopted} target(s), connections kept");
        }
        let report = reconciler
            .apply(&registry.plan(&cfg))
            .context("filling the maps")?;
        log::info!(
            "loaded {} listener(s), {} target(s)",
            report.listeners_added.len(),
            report.targets_added
        );
        let mut attached = Vec::new();
        for i in &cfg.interfaces {
            match reconciler.dataplane_mut().attach(i) {
                Ok(mode) => {
                    log::info!("attached to {i} ({mode:?})");
                    attached.push((i.clone(), mode));
                }
                Err(e) => {
                    reconciler.dataplane_mut().detach_all();
                    return Err(e.into());
                }
            }
        }
        let mut agent = Self {
            config_path: config_path.to_owned(),
            cfg,
            overlay,
            registry,
            reconciler,
            prober,
            attached,
            failing_open: HashSet::new(),
            dataplane_error: None,
            drain: None,
            check_latency: std::collections::HashMap::new(),
        };
        // Probes start, fail-open is logged; the maps are already in step.
        let _ = agent.sync_dataplane();
        Ok(agent)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn reconciler(&self) -> &Reconciler<D> {
        &self.reconciler
    }

    pub fn reconciler_mut(&mut self) -> &mut Reconciler<D> {
        &mut self.reconciler
    }

    pub fn prober(&self) -> &P {
        &self.prober
    }

    /// The last data-plane failure not yet repaired.
    pub fn dataplane_error(&self) -> Option<&str> {
        self.dataplane_error.as_deref()
    }

    /// Push the registry's plan to the data plane and keep the probes in step with it. A
    /// failure is kept, shown in status, and retried on every tick until it succeeds.
    fn sync_dataplane(&mut self) -> Result<ApplyReport, Failure> {
        for (name, g) in &self.registry.groups {
            let open = g.fail_open();
            if open && self.failing_open.insert(name.clone()) {
                log::warn!("{name}: no healthy target: failing open to every registered target");
            } else if !open && self.failing_open.remove(name) {
                log::info!("{name}: a target is healthy again: fail-open ended");
            }
        }
        let mut plan = self.registry.plan(&self.cfg);
        // Source rules as the file says, with the runtime changes.
        plan.listeners = self.overlay.listeners(&self.cfg);
        let applied = self.reconciler.apply(&plan);
        // After the apply: data-path probes need the targets' ids.
        self.prober.set(self.probe_specs());
        let encap = self.prober.encap_interfaces();
        if let Err(e) = self.reconciler.dataplane_mut().set_probe_encap(&encap) {
            log::error!("tunnel health checks cannot take the data path: {e}");
        }
        match applied {
            Ok(report) => {
                if let Some(e) = self.dataplane_error.take() {
                    log::info!("data plane back in step with the model (it failed with: {e})");
                }
                Ok(report)
            }
            Err(e) => {
                let msg = format!("{e:#}");
                log::error!("data plane out of step with the model: {msg}; retrying every second");
                self.dataplane_error = Some(msg.clone());
                Err(Failure::new(
                    FailureKind::Internal,
                    format!(
                        "the data plane could not be updated ({msg}); the agent retries every second"
                    ),
                ))
            }
        }
    }

    /// What to probe: every registered target of a group with checks on; a target of a group
    /// a `dsr` or `tunnel` listener uses is probed at that listener's VIP, through the data path.
    fn probe_specs(&self) -> Vec<ProbeSpec> {
        self.registry
            .probes()
            .into_iter()
            .map(|(group, endpoint, check)| {
                let path = self
                    .cfg
                    .listeners
                    .iter()
                    .find(|l| l.target_group == group && l.mode != Mode::Nat)
                    .zip(self.reconciler.target_id(&endpoint))
                    .map(|(l, id)| ProbePath {
                        vip: std::net::SocketAddr::new(l.vip, check.port.unwrap_or(l.port)),
                        mark: PROBE_MARK_BASE | id,
                        mode: l.mode.as_str(),
                    });
                ProbeSpec {
                    group,
                    endpoint,
                    check,
                    path,
                }
            })
            .collect()
    }

    pub fn on_probe(&mut self, (group, endpoint, probe, took): ProbeResult, _now: Instant) {
        self.check_latency.insert((group.clone(), endpoint), took);
        let before = self
            .registry
            .groups
            .get(&group)
            .and_then(|g| g.members.get(&endpoint))
            .map(|m| m.tracker.state);
        if self.registry.observe(&group, endpoint, &probe) {
            let m = &self.registry.groups[&group].members[&endpoint];
            log::info!(
                "{group}: {endpoint} {} -> {} ({})",
                before.map(|s| s.as_str()).unwrap_or("?"),
                m.tracker.state.as_str(),
                m.tracker.reason
            );
            let _ = self.sync_dataplane();
        }
    }

    /// Once a second: end drains whose time has come, retry a failed data-plane update.
    pub fn on_tick(&mut self, now: Instant) {
        if self.registry.tick(now) {
            log::info!("drain finished; targets unused");
            let _ = self.sync_dataplane();
        } else if self.dataplane_error.is_some() {
            let _ = self.sync_dataplane();
        }
    }

    pub fn status(&self, now: Instant) -> Result<Status, Failure> {
        // The listeners as they run: with the runtime rule changes.
        let mut cfg = self.cfg.clone();
        cfg.listeners = self.overlay.listeners(&self.cfg);
        status::collect(
            Sources {
                reconciler: &self.reconciler,
                cfg: &cfg,
                registry: &self.registry,
                config_path: &self.config_path.display().to_string(),
                interfaces: &self.attached,
                dataplane_error: self.dataplane_error.as_deref(),
                announcements: self.announcements(),
                check_latency: &self.check_latency,
                drain: self.drain.map(|(since, stop)| DrainStatus {
                    since_s: now.saturating_duration_since(since).as_secs(),
                    stops_in_s: stop.map(|t| t.saturating_duration_since(now).as_secs()),
                }),
            },
            now,
        )
        .map_err(|e| Failure::new(FailureKind::Internal, e.to_string()))
    }

    /// Re-read the config file; on any error nothing changes.
    pub fn reload(&mut self, now: Instant) -> Result<ApplyReport, Failure> {
        let cfg = config::load(&self.config_path)
            .map_err(|e| rejected(format!("config rejected, nothing changed:\n{e}")))?;
        let changed = self.cfg.restart_only_changes(&cfg);
        if !changed.is_empty() {
            return Err(rejected(format!(
                "reload rejected, nothing changed: {} changed, which takes effect only on restart (as tables, interfaces, state_file, metrics, pin_dir, keep_dataplane and bgp's table and device do)",
                changed.join(", ")
            )));
        }
        let overlay = self
            .overlay
            .normalised_and_saved(&cfg, &cfg.state_file)
            .map_err(|e| rejected(format!("reload rejected, nothing changed: {e}")))?;
        self.registry.sync(&cfg, &overlay, now);
        self.cfg = cfg;
        self.overlay = overlay;
        self.sync_dataplane()
    }

    /// Register or deregister: checked and saved to the state file before anything changes.
    fn change(&mut self, req: Request, now: Instant) -> Result<String, Failure> {
        let mut registry = self.registry.clone();
        let mut overlay = self.overlay.clone();
        let message = match req {
            Request::Register {
                group,
                target,
                weight,
            } => {
                let t = registry
                    .register(&self.cfg, &mut overlay, &group, target, weight, now)
                    .map_err(registry_failure)?;
                format!(
                    "registered {} in {group} (weight {}); initial health checks in progress",
                    t.endpoint, t.weight
                )
            }
            Request::Deregister { group, target } => {
                let e = registry
                    .deregister(&self.cfg, &mut overlay, &group, target, now)
                    .map_err(registry_failure)?;
                let delay = self
                    .cfg
                    .group(&group)
                    .map(|g| g.deregistration_delay.as_secs())
                    .unwrap_or(0);
                format!("deregistered {e} from {group}; draining for {delay} s")
            }
            Request::AddRule { listener, rule } => {
                overlay
                    .add_rule(&self.cfg, &listener, rule)
                    .map_err(rule_failure)?;
                format!("{listener}: {} {} added", rule.kind.as_str(), rule.source)
            }
            Request::RemoveRule { listener, rule } => {
                overlay
                    .remove_rule(&self.cfg, &listener, rule)
                    .map_err(rule_failure)?;
                format!("{listener}: {} {} removed", rule.kind.as_str(), rule.source)
            }
            _ => unreachable!("only register/deregister and rule changes come here"),
        };
        overlay
            .save(&self.cfg.state_file)
            .map_err(|e| Failure::new(FailureKind::Internal, format!("not changed: {e}")))?;
        self.registry = registry;
        self.overlay = overlay;
        log::info!("{message}");
        self.sync_dataplane()?;
        Ok(message)
    }

    pub fn handle(&mut self, req: Request, now: Instant) -> Reply {
        let result = match req {
            Request::Status => self.status(now).map(|s| Reply::Status(Box::new(s))),
            Request::Listeners => self.status(now).map(|s| Reply::Listeners(s.listeners)),
            Request::Health { group } => self.status(now).and_then(|s| match group {
                None => Ok(Reply::Health(s.groups)),
                Some(g) => {
                    let found: Vec<_> = s.groups.into_iter().filter(|x| x.name == g).collect();
                    if found.is_empty() {
                        Err(Failure::new(
                            FailureKind::NotFound,
                            format!("no target group {g:?}"),
                        ))
                    } else {
                        Ok(Reply::Health(found))
                    }
                }
            }),
            Request::Reload => self.reload(now).map(|r| {
                log::info!("reloaded: {r:?}");
                Reply::Reloaded(r)
            }),
            Request::Drain { stop_after_s } => Ok(Reply::Done(Message {
                message: self.start_drain(stop_after_s, now),
            })),
            Request::Resume => self
                .resume()
                .map(|message| Reply::Done(Message { message })),
            Request::Explain(req) => self.explain(&req).map(|x| Reply::Explained(Box::new(x))),
            Request::Metrics => self.status(now).map(|s| {
                let conn = self.cfg.tables.max_connections;
                let embryonic = lb_common::limits::embryonic_entries(conn);
                let tables = self
                    .reconciler
                    .dataplane()
                    .table_entries()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, n)| {
                        let cap = if name.starts_with("EMBRYONIC") {
                            embryonic
                        } else {
                            conn
                        };
                        (name.to_ascii_lowercase(), n, cap)
                    })
                    .collect();
                Reply::Metrics(Box::new(s), tables)
            }),
            change @ (Request::Register { .. }
            | Request::Deregister { .. }
            | Request::AddRule { .. }
            | Request::RemoveRule { .. }) => self
                .change(change, now)
                .map(|message| Reply::Done(Message { message })),
        };
        result.unwrap_or_else(|f| {
            log::warn!("control request failed: {}", f.message);
            Reply::Error(f)
        })
    }

    /// With `[bgp]`: each VIP of the config, whether to announce it now, and why. A VIP is
    /// announced while the data plane is attached, the node is not drained, and some listener
    /// on it has at least its `min_healthy_targets` healthy targets (weight > 0).
    pub fn announcements(&self) -> Vec<Announcement> {
        if self.cfg.bgp.is_none() {
            return Vec::new();
        }
        let vips: BTreeSet<IpAddr> = self.cfg.listeners.iter().map(|l| l.vip).collect();
        vips.into_iter()
            .map(|vip| {
                let (announced, reason) = self.verdict(vip);
                Announcement {
                    vip: vip.to_string(),
                    announced,
                    reason,
                }
            })
            .collect()
    }

    fn verdict(&self, vip: IpAddr) -> (bool, String) {
        if self.attached.is_empty() {
            return (false, "the data plane is not attached".into());
        }
        if self.drain.is_some() {
            return (false, "node drained (xlb node drain)".into());
        }
        let mut counts = Vec::new();
        for l in self.cfg.listeners.iter().filter(|l| l.vip == vip) {
            let healthy = self.registry.groups.get(&l.target_group).map_or(0, |g| {
                g.members
                    .values()
                    .filter(|m| m.tracker.state == crate::health::State::Healthy && m.weight > 0)
                    .count()
            });
            let line = format!(
                "{}: {healthy} healthy, {} needed",
                l.name, l.min_healthy_targets
            );
            if healthy >= l.min_healthy_targets as usize {
                return (true, line);
            }
            counts.push(line);
        }
        (
            false,
            format!("too few healthy targets ({})", counts.join("; ")),
        )
    }

    /// Every target has had a health verdict (none is still `initial`): announcements
    /// reflect the targets' health, not the start.
    pub fn health_settled(&self) -> bool {
        !self
            .registry
            .groups
            .values()
            .flat_map(|g| g.members.values())
            .any(|m| m.tracker.state == crate::health::State::Initial)
    }

    /// The VIPs to announce now (see [`Agent::announcements`]).
    pub fn announced_vips(&self) -> BTreeSet<IpAddr> {
        self.announcements()
            .into_iter()
            .filter(|a| a.announced)
            .filter_map(|a| a.vip.parse().ok())
            .collect()
    }

    fn start_drain(&mut self, stop_after_s: Option<u32>, now: Instant) -> String {
        let stop = stop_after_s.map(|s| now + Duration::from_secs(s.into()));
        let since = self.drain.map_or(now, |(since, _)| since);
        self.drain = Some((since, stop));
        let m = match stop_after_s {
            Some(s) => format!(
                "node drained: VIPs withdrawn; still serving what arrives; stopping in {s} s"
            ),
            None => "node drained: VIPs withdrawn; still serving what arrives (xlb node resume announces again)".to_owned(),
        };
        log::info!("{m}");
        m
    }

    fn resume(&mut self) -> Result<String, Failure> {
        if self.drain.take().is_none() {
            return Err(Failure::new(
                FailureKind::Conflict,
                "the node is not drained".to_owned(),
            ));
        }
        log::info!("node resumed: healthy VIPs are announced again");
        Ok("node resumed: healthy VIPs are announced again".to_owned())
    }

    /// True once a drain with `--stop-after` has run its time: the agent should stop.
    pub fn should_stop(&self, now: Instant) -> bool {
        matches!(self.drain, Some((_, Some(t))) if now >= t)
    }

    /// Stop probing and detach from every interface; returns how many were attached.
    pub fn shutdown(&mut self) -> usize {
        self.prober.set(Vec::new());
        if self.cfg.keep_dataplane && self.cfg.pin_dir.is_some() {
            log::info!("keep_dataplane: the pinned data plane keeps forwarding for the next agent");
            self.reconciler.dataplane_mut().release();
            return 0;
        }
        self.reconciler.dataplane_mut().detach_all();
        self.attached.len()
    }
}
