//! Runtime registrations, kept as an [`Overlay`] on top of the config file and saved to the
//! state file on every change, so a restart keeps them. An overlay entry disappears once the
//! file says the same thing (a registered target written into the file, a deregistered one
//! removed from it), so the file stays the place to make a change permanent.
use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use crate::model::{
    Endpoint, Target,
    config::{Config, TargetGroup},
};

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
    /// Registered at run time (or re-weighted).
    #[serde(default)]
    pub registered: Vec<Target>,
    /// In the config file but deregistered at run time.
    #[serde(default)]
    pub deregistered: Vec<Endpoint>,
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

    /// This overlay as it stands against `cfg` ([`Overlay::normalise`]), saved to `path` if
    /// that changed it. On error nothing is saved and `self` is untouched.
    pub fn normalised_and_saved(&self, cfg: &Config, path: &Path) -> Result<Self, StateFileError> {
        let mut next = self.clone();
        for d in next.normalise(cfg) {
            log::info!("state file: {d}");
        }
        if next != *self {
            next.save(path)?;
        }
        Ok(next)
    }

    /// The group's targets: the file's, less the deregistered, plus the registered.
    pub fn effective(&self, g: &TargetGroup) -> Vec<Target> {
        let o = self.groups.get(&g.name);
        let mut out: Vec<Target> = g
            .targets
            .iter()
            .filter(|t| !o.is_some_and(|o| o.deregistered.contains(&t.endpoint)))
            .copied()
            .collect();
        for r in o.map(|o| o.registered.as_slice()).unwrap_or_default() {
            match out.iter_mut().find(|t| t.endpoint == r.endpoint) {
                Some(t) => t.weight = r.weight,
                None => out.push(*r),
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
            o.registered.retain(|r| {
                let same = g.targets.contains(r);
                if same {
                    dropped.push(format!("{name}: {} is now in the config file", r.endpoint));
                }
                !same
            });
            o.deregistered.retain(|e| {
                let present = g.targets.iter().any(|t| t.endpoint == *e);
                if !present {
                    dropped.push(format!("{name}: {e} is no longer in the config file"));
                }
                present
            });
            !o.registered.is_empty() || !o.deregistered.is_empty()
        });
        dropped
    }
}
