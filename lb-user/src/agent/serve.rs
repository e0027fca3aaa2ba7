//! `xlb run`: the real pieces around the [`Agent`] — the XDP object, probe tasks, signals,
//! the control socket and the wall clock — and the loop that feeds it events one at a time.
//! Detaches on the way out.
use std::{future::Future, path::Path, time::Duration, time::Instant};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use super::{Agent, TaskProber};
use crate::{
    EBPF_OBJECT,
    announce::Announcer,
    api::server::{self, Pending},
    dataplane::AyaDataplane,
    model::config::Config,
};

/// How often drains are checked for their end (and a failed data-plane update retried).
const TICK: Duration = Duration::from_secs(1);
/// Probe results waiting for the loop.
const PROBE_QUEUE: usize = 256;
/// Control requests waiting for the loop.
const REQUEST_QUEUE: usize = 16;

/// Refuse early what would make attaching fail halfway, and warn about host settings that make
/// the balancer drop traffic.
fn preflight(cfg: &Config) -> anyhow::Result<()> {
    for i in &cfg.interfaces {
        if !Path::new("/sys/class/net").join(i).exists() {
            anyhow::bail!("interface {i:?} does not exist");
        }
        let ipv4_listeners = cfg.listeners.iter().any(|l| l.vip.is_ipv4());
        let fwd = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{i}/forwarding"))
            .unwrap_or_default();
        if ipv4_listeners && fwd.trim() != "1" {
            log::warn!(
                "{i}: IPv4 forwarding is off: balanced packets will be dropped (drop_fwd_disabled); \
                 set net.ipv4.ip_forward=1"
            );
        }
        let ipv6_listeners = cfg.listeners.iter().any(|l| l.vip.is_ipv6());
        let fwd6 = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{i}/forwarding"))
            .unwrap_or_default();
        if ipv6_listeners && fwd6.trim() != "1" {
            log::warn!(
                "{i}: IPv6 forwarding is off: balanced IPv6 packets will be dropped \
                 (drop_fwd_disabled); set net.ipv6.conf.all.forwarding=1"
            );
        }
    }
    Ok(())
}

/// Load, fill the maps, attach, then serve until `shutdown` completes or SIGINT/SIGTERM
/// arrives. `cfg` was validated by the caller.
pub async fn run(
    config_path: &Path,
    cfg: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    preflight(&cfg)?;
    // The control socket first: a second agent on this host fails here, before it could take
    // over the first one's pinned data plane.
    let listener = server::bind(&cfg.control_socket).await?;
    let _socket = RemoveOnDrop(cfg.control_socket.clone());
    // The data plane outlives this process when its pins are on a BPF filesystem that was
    // there before (one this process mounts may end with it, under `ip netns exec`).
    let (pins, survives) = match &cfg.pin_dir {
        Some(dir) => {
            let mounted = crate::dataplane::decap::ensure_bpffs_mounting(dir)
                .with_context(|| format!("pin_dir {}", dir.display()))?;
            (
                Some(crate::dataplane::aya::pin_root(dir, &cfg.tables)),
                !mounted,
            )
        }
        None => (None, false),
    };
    let dp = AyaDataplane::load_pinned(EBPF_OBJECT, &cfg.tables, pins.as_deref())
        .context("loading the XDP program")?;
    let (probe_tx, mut probe_rx) = mpsc::channel(PROBE_QUEUE);
    let socket = cfg.control_socket.clone();
    let mut agent = Agent::start(
        config_path,
        cfg,
        dp,
        TaskProber::new(probe_tx),
        Instant::now(),
    )?;
    // The announcement device exists only while this process does (see crate::announce).
    let mut announcer = match agent.config().bgp.as_ref() {
        Some(b) => match Announcer::create(b, survives) {
            Ok(a) => Some(a),
            Err(e) => {
                agent.shutdown();
                return Err(e.into());
            }
        },
        None => None,
    };
    let (tx, mut rx) = mpsc::channel::<Pending>(REQUEST_QUEUE);
    let metrics = match agent.config().metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics: listening on {addr}"));
            let l = match l {
                Ok(l) => l,
                Err(e) => {
                    agent.shutdown();
                    return Err(e);
                }
            };
            log::info!("metrics on http://{addr}/metrics");
            Some(tokio::spawn(server::serve_metrics(l, tx.clone())))
        }
        None => None,
    };
    let api = tokio::spawn(server::serve(listener, tx));
    let mut hup = signal(SignalKind::hangup())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(TICK);
    tokio::pin!(shutdown);
    log::info!("ready; control socket {}", socket.display());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match agent.reload(Instant::now()) {
                Ok(r) => log::info!("SIGHUP: reloaded: {r:?}"),
                Err(e) => log::error!("SIGHUP: {}", e.message),
            },
            Some((req, reply)) = rx.recv() => {
                let _ = reply.send(agent.handle(req, Instant::now()));
            }
            Some(result) = probe_rx.recv() => agent.on_probe(result, Instant::now()),
            _ = tick.tick() => agent.on_tick(Instant::now()),
        }
        if let Some(a) = announcer.as_mut()
            && let Err(e) = a.sync_settling(&agent.announced_vips(), agent.health_settled())
        {
            log::error!("announcing: {e}");
        }
        if agent.should_stop(Instant::now()) {
            log::info!("drain time over: stopping");
            break;
        }
    }
    // Withdraw first, so the routers stop sending before the data plane goes; a data plane
    // kept for the next agent keeps its announcements too.
    let keep = agent.config().keep_dataplane && survives;
    if let Some(a) = announcer.as_mut()
        && !keep
    {
        a.withdraw_all();
        a.remove_device();
    }
    api.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    let n = agent.shutdown();
    if n == 0 && agent.config().keep_dataplane {
        log::info!("XDP left attached for the next agent; bye");
    } else {
        log::info!("detached XDP from {n} interface(s); bye");
    }
    Ok(())
}

/// The control socket's file, removed when `run` returns, however it returns.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
