//! `xlb run`: load, fill the maps, attach, then serve until told to stop. One owner loop holds
//! all state and handles, in turn: signals, control requests, health-check results and drain
//! timers. Detaches on the way out.
use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    EBPF_OBJECT,
    balancer::{ApplyReport, Balancer},
    config::{self, Config},
    control::{self, Failure, FailureKind, Message, Pending, Reply, Request},
    dataplane::{AttachMode, AyaDataplane},
    health::{self, HealthCheck, Probe},
    registry::{Overlay, Registry, RegistryError, TargetAddr},
    status,
};

/// How often drains are checked for their end.
const TICK: Duration = Duration::from_secs(1);

type ProbeResult = (String, TargetAddr, Probe);

pub struct Agent {
    config_path: PathBuf,
    cfg: Config,
    overlay: Overlay,
    registry: Registry,
    balancer: Balancer<AyaDataplane>,
    attached: Vec<(String, AttachMode)>,
    probers: HashMap<(String, TargetAddr), (HealthCheck, JoinHandle<()>)>,
    probe_tx: mpsc::Sender<ProbeResult>,
    probe_rx: mpsc::Receiver<ProbeResult>,
    failing_open: HashSet<String>,
}

/// Refuse early what would make attaching fail halfway, and warn about host settings that make
/// the balancer drop traffic.
fn preflight(cfg: &Config) -> anyhow::Result<()> {
    for i in &cfg.interfaces {
        if !Path::new("/sys/class/net").join(i).exists() {
            anyhow::bail!("interface {i:?} does not exist");
        }
        let fwd = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{i}/forwarding"))
            .unwrap_or_default();
        if fwd.trim() != "1" {
            log::warn!(
                "{i}: IPv4 forwarding is off: balanced packets will be dropped (drop_fwd_disabled); \
                 set net.ipv4.ip_forward=1"
            );
        }
    }
    Ok(())
}

fn registry_failure(e: RegistryError) -> Failure {
    let kind = match e {
        RegistryError::UnknownGroup(_) | RegistryError::NotRegistered { .. } => {
            FailureKind::NotFound
        }
        RegistryError::AlreadyRegistered { .. } => FailureKind::Conflict,
        RegistryError::BadWeight(_) => FailureKind::BadRequest,
    };
    Failure::new(kind, e.to_string())
}

impl Agent {
    /// Load and attach. `cfg` was validated by the caller (config errors exit 64 there).
    pub fn start(config_path: &Path, cfg: Config) -> anyhow::Result<Self> {
        preflight(&cfg)?;
        let mut overlay = Overlay::load(&cfg.state_file)?;
        let before = overlay.clone();
        for d in overlay.normalise(&cfg) {
            log::info!("state file: {d}");
        }
        if overlay != before {
            overlay.save(&cfg.state_file)?;
        }
        let mut registry = Registry::default();
        registry.sync(&cfg, &overlay, Instant::now());

        let dp = AyaDataplane::load(EBPF_OBJECT, &cfg.tables).context("loading the XDP program")?;
        let mut balancer = Balancer::new(dp, cfg.tables);
        let report = balancer
            .apply(&registry.plan(&cfg))
            .context("filling the maps")?;
        log::info!(
            "loaded {} listener(s), {} target(s)",
            report.listeners_added.len(),
            report.targets_added
        );
        let mut attached = Vec::new();
        for i in &cfg.interfaces {
            // On error the dataplane drops here and detaches whatever was attached.
            let mode = balancer.dataplane_mut().attach(i)?;
            log::info!("attached to {i} ({mode:?})");
            attached.push((i.clone(), mode));
        }
        let (probe_tx, probe_rx) = mpsc::channel(256);
        Ok(Self {
            config_path: config_path.to_owned(),
            cfg,
            overlay,
            registry,
            balancer,
            attached,
            probers: HashMap::new(),
            probe_tx,
            probe_rx,
            failing_open: HashSet::new(),
        })
    }

    /// Push the registry's plan to the data plane and keep the probers in step with it.
    fn sync_dataplane(&mut self) -> anyhow::Result<ApplyReport> {
        let report = self.balancer.apply(&self.registry.plan(&self.cfg))?;
        for (name, g) in &self.registry.groups {
            let open = g.fail_open();
            if open && self.failing_open.insert(name.clone()) {
                log::warn!("{name}: no healthy target: failing open to every registered target");
            } else if !open && self.failing_open.remove(name) {
                log::info!("{name}: a target is healthy again: fail-open ended");
            }
        }
        self.reconcile_probers();
        Ok(report)
    }

    fn reconcile_probers(&mut self) {
        let wanted = self.registry.probes();
        let keys: HashSet<(String, TargetAddr)> =
            wanted.iter().map(|(g, a, _)| (g.clone(), *a)).collect();
        self.probers.retain(|k, (_, task)| {
            let keep = keys.contains(k);
            if !keep {
                task.abort();
            }
            keep
        });
        for (group, addr, hc) in wanted {
            let key = (group.clone(), addr);
            if self.probers.get(&key).is_some_and(|(h, _)| *h == hc) {
                continue;
            }
            if let Some((_, old)) = self.probers.remove(&key) {
                old.abort();
            }
            let tx = self.probe_tx.clone();
            let check = hc.clone();
            let task = tokio::spawn(async move {
                let target = SocketAddr::from((addr.0, check.port.unwrap_or(addr.1)));
                loop {
                    let p = health::probe(&check, target).await;
                    if tx.send((group.clone(), addr, p)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(check.interval).await;
                }
            });
            self.probers.insert(key, (hc, task));
        }
    }

    fn on_probe(&mut self, (group, addr, probe): ProbeResult) {
        let before = self
            .registry
            .groups
            .get(&group)
            .and_then(|g| g.members.get(&addr))
            .map(|m| m.tracker.state);
        if self.registry.observe(&group, addr, &probe) {
            let m = &self.registry.groups[&group].members[&addr];
            log::info!(
                "{group}: {}:{} {} -> {} ({})",
                addr.0,
                addr.1,
                before.map(|s| s.as_str()).unwrap_or("?"),
                m.tracker.state.as_str(),
                m.tracker.reason
            );
            if let Err(e) = self.sync_dataplane() {
                log::error!("applying a health change: {e:#}");
            }
        }
    }

    fn on_tick(&mut self) {
        if self.registry.tick(Instant::now()) {
            log::info!("drain finished; targets unused");
            if let Err(e) = self.sync_dataplane() {
                log::error!("ending a drain: {e:#}");
            }
        }
    }

    fn status(&self) -> Result<status::Status, Failure> {
        status::collect(
            &self.balancer,
            &self.cfg,
            &self.registry,
            &self.config_path.display().to_string(),
            &self.attached,
        )
        .map_err(|e| Failure::new(FailureKind::Internal, e.to_string()))
    }

    /// Re-read the config file; on any error nothing changes.
    pub fn reload(&mut self) -> Result<ApplyReport, Failure> {
        let rejected = |m: String| Failure::new(FailureKind::Rejected, m);
        let cfg = config::load(&self.config_path)
            .map_err(|e| rejected(format!("config rejected, nothing changed:\n{e}")))?;
        if cfg.tables != self.cfg.tables
            || cfg.interfaces != self.cfg.interfaces
            || cfg.state_file != self.cfg.state_file
        {
            return Err(rejected(
                "reload rejected, nothing changed: tables, interfaces and state_file take effect only on restart".into(),
            ));
        }
        let mut overlay = self.overlay.clone();
        for d in overlay.normalise(&cfg) {
            log::info!("state file: {d}");
        }
        if overlay != self.overlay {
            overlay
                .save(&cfg.state_file)
                .map_err(|e| rejected(format!("reload rejected, nothing changed: {e}")))?;
        }
        self.registry.sync(&cfg, &overlay, Instant::now());
        self.cfg = cfg;
        self.overlay = overlay;
        self.sync_dataplane()
            .map_err(|e| Failure::new(FailureKind::Internal, format!("{e:#}")))
    }

    /// Register or deregister: checked and saved to the state file before anything changes.
    fn change(&mut self, req: Request) -> Result<String, Failure> {
        let now = Instant::now();
        let mut registry = self.registry.clone();
        let mut overlay = self.overlay.clone();
        let group_port = |g: &str| self.cfg.group(g).map(|g| g.port);
        let message = match req {
            Request::Register {
                group,
                address,
                port,
                weight,
            } => {
                let port = port.or(group_port(&group)).unwrap_or(0);
                let weight = weight.unwrap_or(1);
                registry
                    .register(
                        &self.cfg,
                        &mut overlay,
                        &group,
                        (address, port),
                        weight,
                        now,
                    )
                    .map_err(registry_failure)?;
                format!(
                    "registered {address}:{port} in {group} (weight {weight}); initial health checks in progress"
                )
            }
            Request::Deregister {
                group,
                address,
                port,
            } => {
                let port = port.or(group_port(&group)).unwrap_or(0);
                registry
                    .deregister(&self.cfg, &mut overlay, &group, (address, port), now)
                    .map_err(registry_failure)?;
                let delay = self
                    .cfg
                    .group(&group)
                    .map(|g| g.deregistration_delay.as_secs())
                    .unwrap_or(0);
                format!("deregistered {address}:{port} from {group}; draining for {delay} s")
            }
            _ => unreachable!("only register/deregister change targets"),
        };
        overlay
            .save(&self.cfg.state_file)
            .map_err(|e| Failure::new(FailureKind::Internal, format!("not changed: {e}")))?;
        self.registry = registry;
        self.overlay = overlay;
        self.sync_dataplane()
            .map_err(|e| Failure::new(FailureKind::Internal, format!("{e:#}")))?;
        log::info!("{message}");
        Ok(message)
    }

    fn handle(&mut self, req: Request) -> Reply {
        let result = match req {
            Request::Status => self.status().map(|s| Reply::Status(Box::new(s))),
            Request::Listeners => self.status().map(|s| Reply::Listeners(s.listeners)),
            Request::Health { group } => self.status().and_then(|s| match group {
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
            Request::Reload => self.reload().map(|r| {
                log::info!("reloaded: {r:?}");
                Reply::Reloaded(r)
            }),
            change @ (Request::Register { .. } | Request::Deregister { .. }) => self
                .change(change)
                .map(|message| Reply::Done(Message { message })),
        };
        result.unwrap_or_else(|f| {
            log::warn!("control request failed: {}", f.message);
            Reply::Error(f)
        })
    }

    /// Serve until `shutdown` completes or SIGINT/SIGTERM arrives.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let socket = self.cfg.control_socket.clone();
        let listener = control::bind(&socket).await?;
        let (tx, mut rx) = mpsc::channel::<Pending>(16);
        let server = tokio::spawn(control::serve(listener, tx));
        let mut hup = signal(SignalKind::hangup())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut tick = tokio::time::interval(TICK);
        self.sync_dataplane()?;
        tokio::pin!(shutdown);
        log::info!("ready; control socket {}", socket.display());
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = hup.recv() => match self.reload() {
                    Ok(r) => log::info!("SIGHUP: reloaded: {r:?}"),
                    Err(e) => log::error!("SIGHUP: {}", e.message),
                },
                Some((req, reply)) = rx.recv() => {
                    let _ = reply.send(self.handle(req));
                }
                Some(result) = self.probe_rx.recv() => self.on_probe(result),
                _ = tick.tick() => self.on_tick(),
            }
        }
        server.abort();
        for (_, (_, task)) in self.probers.drain() {
            task.abort();
        }
        let _ = std::fs::remove_file(&socket);
        self.balancer.dataplane_mut().detach_all();
        log::info!(
            "detached XDP from {} interface(s); bye",
            self.attached.len()
        );
        Ok(())
    }
}
