//! `xlb run`: load, fill the maps, attach, then serve control requests and SIGHUP reloads until
//! told to stop; detach on the way out.
use std::{
    future::Future,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    EBPF_OBJECT,
    balancer::{ApplyReport, Balancer},
    config::{self, Config},
    control::{self, Pending, Request, Response},
    dataplane::{AttachMode, AyaDataplane},
    status,
};

pub struct Agent {
    config_path: PathBuf,
    balancer: Balancer<AyaDataplane>,
    attached: Vec<(String, AttachMode)>,
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

impl Agent {
    /// Load and attach. `cfg` was validated by the caller (config errors exit 64 there).
    pub fn start(config_path: &Path, cfg: &Config) -> anyhow::Result<Self> {
        preflight(cfg)?;
        let dp = AyaDataplane::load(EBPF_OBJECT, &cfg.tables).context("loading the XDP program")?;
        let mut balancer = Balancer::new(dp, cfg.tables);
        let report = balancer.apply(cfg).context("filling the maps")?;
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
        Ok(Self {
            config_path: config_path.to_owned(),
            balancer,
            attached,
        })
    }

    fn status(&self) -> Response {
        match status::collect(
            &self.balancer,
            &self.config_path.display().to_string(),
            &self.attached,
        ) {
            Ok(s) => Response::Status(Box::new(s)),
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        }
    }

    /// Re-read the config file; on any error nothing changes.
    pub fn reload(&mut self) -> Result<ApplyReport, String> {
        let cfg = config::load(&self.config_path)
            .map_err(|e| format!("config rejected, nothing changed:\n{e}"))?;
        self.balancer
            .apply(&cfg)
            .map_err(|e| format!("reload rejected, nothing changed: {e}"))
    }

    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => self.status(),
            Request::Reload => match self.reload() {
                Ok(r) => {
                    log::info!("reloaded: {r:?}");
                    Response::Reloaded(r)
                }
                Err(message) => {
                    log::error!("{message}");
                    Response::Error { message }
                }
            },
        }
    }

    /// Serve until `shutdown` completes or SIGINT/SIGTERM arrives.
    pub async fn serve(
        mut self,
        socket: &Path,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let listener = control::bind(socket).await?;
        let (tx, mut rx) = mpsc::channel::<Pending>(16);
        let server = tokio::spawn(control::serve(listener, tx));
        let mut hup = signal(SignalKind::hangup())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::pin!(shutdown);
        log::info!("ready; control socket {}", socket.display());
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    match self.reload() {
                        Ok(r) => log::info!("SIGHUP: reloaded: {r:?}"),
                        Err(e) => log::error!("SIGHUP: {e}"),
                    }
                }
                Some((req, reply)) = rx.recv() => {
                    let _ = reply.send(self.handle(req));
                }
            }
        }
        server.abort();
        let _ = std::fs::remove_file(socket);
        self.balancer.dataplane_mut().detach_all();
        log::info!(
            "detached XDP from {} interface(s); bye",
            self.attached.len()
        );
        Ok(())
    }
}
