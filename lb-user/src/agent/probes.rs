//! Who runs the health checks. The agent says which targets to probe ([`Prober::set`]); the
//! results come back to its loop as [`ProbeResult`]s. [`TaskProber`] runs one tokio task per
//! target; tests use a fake that only records what it was told and feed results by hand.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    health::{self, HealthCheck, Probe},
    model::Endpoint,
};

/// Probe this group's target with this check.
pub type ProbeSpec = (String, Endpoint, HealthCheck);
/// What one probe of a group's target found.
pub type ProbeResult = (String, Endpoint, Probe);

pub trait Prober {
    /// Probe exactly these targets from now on: start what is new or changed, stop the rest.
    fn set(&mut self, wanted: Vec<ProbeSpec>);
}

/// One tokio task per probed target, each on its own timer (the first probe at once).
pub struct TaskProber {
    tx: mpsc::Sender<ProbeResult>,
    tasks: HashMap<(String, Endpoint), (HealthCheck, JoinHandle<()>)>,
}

impl TaskProber {
    /// Results go to `tx`.
    pub fn new(tx: mpsc::Sender<ProbeResult>) -> Self {
        Self {
            tx,
            tasks: HashMap::new(),
        }
    }
}

impl Prober for TaskProber {
    fn set(&mut self, wanted: Vec<ProbeSpec>) {
        let keys: HashSet<(String, Endpoint)> =
            wanted.iter().map(|(g, e, _)| (g.clone(), *e)).collect();
        self.tasks.retain(|k, (_, task)| {
            let keep = keys.contains(k);
            if !keep {
                task.abort();
            }
            keep
        });
        for (group, endpoint, hc) in wanted {
            let key = (group.clone(), endpoint);
            if self.tasks.get(&key).is_some_and(|(h, _)| *h == hc) {
                continue;
            }
            if let Some((_, old)) = self.tasks.remove(&key) {
                old.abort();
            }
            let tx = self.tx.clone();
            let check = hc.clone();
            let task = tokio::spawn(async move {
                let target = SocketAddr::new(endpoint.addr, check.port.unwrap_or(endpoint.port));
                loop {
                    let p = health::probe(&check, target).await;
                    if tx.send((group.clone(), endpoint, p)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(check.interval).await;
                }
            });
            self.tasks.insert(key, (hc, task));
        }
    }
}

impl Drop for TaskProber {
    fn drop(&mut self) {
        for (_, (_, task)) in self.tasks.drain() {
            task.abort();
        }
    }
}
