//! Runtime registrations, kept as an [`Overlay`] on top of the config file and saved to the
//! state file on every change, so a restart keeps them. An overlay entry disappears once the
//! file says the same thing (a registered target written into the file, a deregistered one
//! removed from it), so the file stays the place to make a change permanent.
use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use crate::model::{
    Cidr, Endpoint, Target,
    config::{Config, Listener, TargetGroup},
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

/// Runtime changes on top of the config file, per group and per listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    pub groups: BTreeMap<String, GroupOverlay>,
    /// Source rules added or removed at run time (`xlb rules add|remove`), per listener.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, RulesOverlay>,
}

/// Which list a source rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleKind {
    Allow,
    Deny,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Allow => "allow",
            RuleKind::Deny => "deny",
        }
    }
}

impl std::str::FromStr for RuleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(RuleKind::Allow),
            "deny" => Ok(RuleKind::Deny),
            _ => Err(format!("{s:?} is not a rule kind (allow or deny)")),
        }
    }
}

/// One source rule: `allow` or `deny` of a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceRule {
    pub kind: RuleKind,
    pub source: Cidr,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesOverlay {
    #[serde(default)]
    pub added: Vec<SourceRule>,
    /// In the config file but removed at run time.
    #[serde(default)]
    pub removed: Vec<SourceRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("no listener {0:?}")]
    UnknownListener(String),
    #[error("listener {listener:?} already has {kind} {prefix}")]
    Present {
        listener: String,
        kind: &'static str,
        prefix: Cidr,
    },
    #[error("listener {listener:?} has no {kind} {prefix}")]
    Absent {
        listener: String,
        kind: &'static str,
        prefix: Cidr,
    },
    #[error("{prefix} is not of the family of listener {listener:?}'s VIP {vip}")]
    WrongFamily {
        listener: String,
        prefix: Cidr,
        vip: std::net::IpAddr,
    },
    #[error("at most {} source rules in all", lb_common::limits::MAX_SOURCE_RULES)]
    TooMany,
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

    /// The config's listeners with the runtime rule changes applied.
    pub fn listeners(&self, cfg: &Config) -> Vec<Listener> {
        cfg.listeners
            .iter()
            .map(|l| {
                let mut l = l.clone();
                if let Some(o) = self.rules.get(&l.name) {
                    for r in &o.removed {
                        list_of(&mut l, r.kind).retain(|c| *c != r.source);
                    }
                    for r in &o.added {
                        let list = list_of(&mut l, r.kind);
                        if !list.contains(&r.source) {
                            list.push(r.source);
                        }
                    }
                }
                l
            })
            .collect()
    }

    /// Add rule `r` to `listener` at run time; the overlay changes only if it may.
    pub fn add_rule(
        &mut self,
        cfg: &Config,
        listener: &str,
        r: SourceRule,
    ) -> Result<(), RuleError> {
        let effective = self.listeners(cfg);
        let l = effective
            .iter()
            .find(|l| l.name == listener)
            .ok_or_else(|| RuleError::UnknownListener(listener.into()))?;
        if r.source.addr.is_ipv4() != l.vip.is_ipv4() {
            return Err(RuleError::WrongFamily {
                listener: listener.into(),
                prefix: r.source,
                vip: l.vip,
            });
        }
        let mut l = l.clone();
        if list_of(&mut l, r.kind).contains(&r.source) {
            return Err(RuleError::Present {
                listener: listener.into(),
                kind: r.kind.as_str(),
                prefix: r.source,
            });
        }
        let total: usize = effective
            .iter()
            .map(|l| l.allow_sources.len() + l.deny_sources.len())
            .sum();
        if total >= lb_common::limits::MAX_SOURCE_RULES as usize {
            return Err(RuleError::TooMany);
        }
        let o = self.rules.entry(listener.into()).or_default();
        if let Some(i) = o.removed.iter().position(|x| *x == r) {
            o.removed.remove(i);
        } else {
            o.added.push(r);
        }
        Ok(())
    }

    /// Remove rule `r` of `listener` at run time (from the file's or from runtime additions).
    pub fn remove_rule(
        &mut self,
        cfg: &Config,
        listener: &str,
        r: SourceRule,
    ) -> Result<(), RuleError> {
        let mut l = self
            .listeners(cfg)
            .into_iter()
            .find(|l| l.name == listener)
            .ok_or_else(|| RuleError::UnknownListener(listener.into()))?;
        if !list_of(&mut l, r.kind).contains(&r.source) {
            return Err(RuleError::Absent {
                listener: listener.into(),
                kind: r.kind.as_str(),
                prefix: r.source,
            });
        }
        let o = self.rules.entry(listener.into()).or_default();
        if let Some(i) = o.added.iter().position(|x| *x == r) {
            o.added.remove(i);
        } else {
            o.removed.push(r);
        }
        if o.added.is_empty() && o.removed.is_empty() {
            self.rules.remove(listener);
        }
        Ok(())
    }

    /// Drop what the config file now says itself; returns what was dropped, to log.
    pub fn normalise(&mut self, cfg: &Config) -> Vec<String> {
        let mut dropped = Vec::new();
        self.rules.retain(|name, o| {
            let Some(l) = cfg.listeners.iter().find(|l| &l.name == name) else {
                dropped.push(format!(
                    "listener {name:?} is no longer in the config: its runtime rules are dropped"
                ));
                return false;
            };
            let mut file = l.clone();
            o.added.retain(|r| {
                let same = list_of(&mut file, r.kind).contains(&r.source);
                if same {
                    dropped.push(format!(
                        "{name}: {} {} is now in the config file",
                        r.kind.as_str(),
                        r.source
                    ));
                }
                !same
            });
            o.removed.retain(|r| {
                let present = list_of(&mut file, r.kind).contains(&r.source);
                if !present {
                    dropped.push(format!(
                        "{name}: {} {} is no longer in the config file",
                        r.kind.as_str(),
                        r.source
                    ));
                }
                present
            });
            !o.added.is_empty() || !o.removed.is_empty()
        });
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

fn list_of(l: &mut Listener, kind: RuleKind) -> &mut Vec<Cidr> {
    match kind {
        RuleKind::Allow => &mut l.allow_sources,
        RuleKind::Deny => &mut l.deny_sources,
    }
}

#[cfg(test)]
mod rule_tests {
    use std::path::Path;

    use super::*;

    fn cfg() -> Config {
        crate::model::config::parse(
            Path::new("t.toml"),
            r#"interfaces = ["eth0"]
[[listener]]
name = "web"
vip = "198.18.100.10"
port = 80
protocol = "tcp"
target_group = "web"
deny_sources = ["198.18.9.0/24"]
[[target_group]]
name = "web"
port = 8080
targets = []
"#,
        )
        .unwrap()
    }

    fn rule(kind: RuleKind, s: &str) -> SourceRule {
        SourceRule {
            kind,
            source: s.parse().unwrap(),
        }
    }

    #[test]
    fn runtime_rules_add_remove_and_fold_into_the_file_on_normalise() {
        let c = cfg();
        let mut o = Overlay::default();
        o.add_rule(&c, "web", rule(RuleKind::Allow, "198.18.0.0/16"))
            .unwrap();
        o.remove_rule(&c, "web", rule(RuleKind::Deny, "198.18.9.0/24"))
            .unwrap();
        let l = &o.listeners(&c)[0];
        assert_eq!(l.allow_sources, ["198.18.0.0/16".parse().unwrap()]);
        assert!(l.deny_sources.is_empty());
        // Errors change nothing.
        let before = o.clone();
        for (e, r) in [
            (
                o.clone()
                    .add_rule(&c, "api", rule(RuleKind::Deny, "10.0.0.0/8")),
                "unknown",
            ),
            (
                o.clone()
                    .add_rule(&c, "web", rule(RuleKind::Allow, "198.18.0.0/16")),
                "present",
            ),
            (
                o.clone()
                    .add_rule(&c, "web", rule(RuleKind::Deny, "2001:db8::/32")),
                "family",
            ),
            (
                o.clone()
                    .remove_rule(&c, "web", rule(RuleKind::Deny, "198.18.9.0/24")),
                "absent",
            ),
        ] {
            assert!(e.is_err(), "{r}");
        }
        assert_eq!(o, before);
        // Adding back what was removed, and removing what was added, leave no overlay.
        o.add_rule(&c, "web", rule(RuleKind::Deny, "198.18.9.0/24"))
            .unwrap();
        o.remove_rule(&c, "web", rule(RuleKind::Allow, "198.18.0.0/16"))
            .unwrap();
        assert!(o.rules.is_empty(), "{o:?}");
        // A runtime addition the file now has is dropped from the overlay.
        o.add_rule(&c, "web", rule(RuleKind::Allow, "198.18.0.0/16"))
            .unwrap();
        let mut c2 = c.clone();
        c2.listeners[0]
            .allow_sources
            .push("198.18.0.0/16".parse().unwrap());
        assert_eq!(o.normalise(&c2).len(), 1);
        assert!(o.rules.is_empty());
        // The state file keeps them (and reads files written before rules existed).
        o.add_rule(&c, "web", rule(RuleKind::Allow, "10.1.0.0/16"))
            .unwrap();
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(serde_json::from_str::<Overlay>(&json).unwrap(), o);
        assert_eq!(
            serde_json::from_str::<Overlay>(r#"{"groups":{}}"#).unwrap(),
            Overlay::default()
        );
    }
}
