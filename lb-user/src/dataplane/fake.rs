//! An in-memory data plane for unit tests: it holds what the maps would hold, records every
//! write as a typed [`Write`], and fails on request, so tests can check the order of writes and
//! what a failure in the middle of an apply leaves behind.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::{
    Counters, ListenerValue, ReverseValue, Settings, TargetValue,
    limits::{MAX_TARGETS, STAT_SLOTS},
};

use super::{
    AttachMode, Dataplane, DataplaneError, ListenerMapKey, OwnerMapKey, Result, RuleMapKey,
    Snapshot, VipMapKey,
};

/// One write, in the order it reached the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Target { id: u32, flags: u8 },
    Ring { base: u32, len: usize },
    Listener { key: ListenerMapKey, ring_base: u32 },
    Rule { key: RuleMapKey, id: u32 },
    RemoveRule { key: RuleMapKey },
    Owner { key: OwnerMapKey, listener_id: u32 },
    RemoveOwner { key: OwnerMapKey },
    RemoveListener { key: ListenerMapKey },
    Vip { key: VipMapKey, listeners: u32 },
    RemoveVip { key: VipMapKey },
    PortFlags { port: u16, flags: u8 },
    VipHint { index: u32, on: bool },
    Settings(Settings),
    Attach { iface: String },
}

/// A target as a packet sees it: address slot, port, flags.
pub type SeenTarget = ([u8; 16], [u8; 2], u8);

/// A listener as a packet sees it: UDP idle timeout, mode, and its table slot by slot.
pub type SeenListener = (u32, u8, Vec<Option<SeenTarget>>);

/// What a data plane holds, in a form two runs can compare whatever ids they handed out: the
/// active targets, and each listener with the table it points at, read as the XDP program
/// would, slot by slot, as the target each slot sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents {
    pub active_targets: BTreeSet<SeenTarget>,
    pub listeners: BTreeMap<String, SeenListener>,
    pub vips: BTreeMap<String, u32>,
    pub port_flags: BTreeMap<u16, u8>,
    pub vip_hints: BTreeSet<u32>,
    pub settings: Settings,
    /// Source-rule entries present (their ids are allocation details).
    pub rules: BTreeSet<String>,
    /// Reply owners: per target and protocol, the owning listener's VIP and port.
    pub owners: BTreeMap<String, ([u8; 16], [u8; 2])>,
}

#[derive(Default, Debug)]
pub struct FakeDataplane {
    pub targets: HashMap<u32, TargetValue>,
    pub rings: HashMap<u32, u32>,
    pub listeners: HashMap<ListenerMapKey, ListenerValue>,
    pub vips: HashMap<VipMapKey, u32>,
    pub rules: HashMap<RuleMapKey, u32>,
    pub owners: HashMap<OwnerMapKey, ReverseValue>,
    pub port_flags: HashMap<u16, u8>,
    pub vip_hints: HashMap<u32, bool>,
    pub settings: Settings,
    pub attached: Vec<String>,
    /// Interfaces running the probe encapsulation.
    pub probe_encap: Vec<String>,
    pub log: Vec<Write>,
    /// Fail the write that would be number `n` of `log` (0-based), once.
    pub fail_at: Option<usize>,
}

impl FakeDataplane {
    /// The ring a listener currently points at, read back as the XDP program would.
    pub fn ring_of(&self, key: &ListenerMapKey) -> Vec<u32> {
        let l = &self.listeners[key];
        (l.ring_base..l.ring_base + l.ring_size)
            .map(|i| self.rings.get(&i).copied().unwrap_or(0))
            .collect()
    }

    /// Where the first write matching `what` is in the log.
    pub fn position(&self, what: impl Fn(&Write) -> bool) -> Option<usize> {
        self.log.iter().position(what)
    }

    /// Where the last write matching `what` is in the log.
    pub fn last_position(&self, what: impl Fn(&Write) -> bool) -> Option<usize> {
        self.log.iter().rposition(what)
    }

    /// What a packet could observe: ids are kept (flows refer to them), ring slots are
    /// compared through the listeners that point at them.
    pub fn contents(&self) -> Contents {
        // Keys compared by what they say (family, address, port, protocol).
        let lk = |k: &ListenerMapKey| format!("{k:?}");
        let vk = |k: &VipMapKey| format!("{k:?}");
        Contents {
            active_targets: self
                .targets
                .values()
                .filter(|t| t.flags != 0)
                .map(|t| (t.addr, t.port, t.flags))
                .collect(),
            listeners: self
                .listeners
                .iter()
                .map(|(k, v)| {
                    let ring = self
                        .ring_of(k)
                        .iter()
                        .map(|id| self.targets.get(id).map(|t| (t.addr, t.port, t.flags)))
                        .collect();
                    (lk(k), (v.udp_idle_timeout_s, v.mode, ring))
                })
                .collect(),
            vips: self.vips.iter().map(|(k, n)| (vk(k), *n)).collect(),
            port_flags: self
                .port_flags
                .iter()
                .filter(|(_, f)| **f != 0)
                .map(|(p, f)| (*p, *f))
                .collect(),
            vip_hints: self
                .vip_hints
                .iter()
                .filter(|(_, on)| **on)
                .map(|(i, _)| *i)
                .collect(),
            settings: self.settings,
            rules: self.rules.keys().map(|k| format!("{k:?}")).collect(),
            owners: self
                .owners
                .iter()
                .map(|(k, v)| (format!("{k:?}"), (v.vip, v.vport)))
                .collect(),
        }
    }

    fn record(&mut self, w: Write) -> Result<()> {
        let n = self.log.len();
        if self.fail_at == Some(n) {
            self.fail_at = None;
            return Err(DataplaneError::Injected(n));
        }
        self.log.push(w);
        Ok(())
    }
}

impl Dataplane for FakeDataplane {
    /// What a previous agent left, when a test filled `targets` before the reconciler ran.
    fn existing_targets(&self) -> Result<Vec<(u32, TargetValue)>> {
        let mut v: Vec<(u32, TargetValue)> = self.targets.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by_key(|(k, _)| *k);
        Ok(v)
    }

    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<()> {
        self.record(Write::Target {
            id,
            flags: value.flags,
        })?;
        self.targets.insert(id, value);
        Ok(())
    }
    fn write_ring(&mut self, base: u32, ring: &[u32]) -> Result<()> {
        self.record(Write::Ring {
            base,
            len: ring.len(),
        })?;
        for (i, id) in (base..).zip(ring) {
            self.rings.insert(i, *id);
        }
        Ok(())
    }
    fn set_listener(&mut self, key: ListenerMapKey, value: ListenerValue) -> Result<()> {
        self.record(Write::Listener {
            key,
            ring_base: value.ring_base,
        })?;
        self.listeners.insert(key, value);
        Ok(())
    }
    fn remove_listener(&mut self, key: &ListenerMapKey) -> Result<()> {
        self.record(Write::RemoveListener { key: *key })?;
        self.listeners.remove(key);
        Ok(())
    }
    fn set_vip(&mut self, key: VipMapKey, listeners: u32) -> Result<()> {
        self.record(Write::Vip { key, listeners })?;
        self.vips.insert(key, listeners);
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipMapKey) -> Result<()> {
        self.record(Write::RemoveVip { key: *key })?;
        self.vips.remove(key);
        Ok(())
    }
    fn set_port_flags(&mut self, port: u16, flags: u8) -> Result<()> {
        self.record(Write::PortFlags { port, flags })?;
        self.port_flags.insert(port, flags);
        Ok(())
    }
    fn set_vip_hint(&mut self, index: u32, on: bool) -> Result<()> {
        self.record(Write::VipHint { index, on })?;
        self.vip_hints.insert(index, on);
        Ok(())
    }
    fn set_rule(&mut self, key: RuleMapKey, id: u32) -> Result<()> {
        self.record(Write::Rule { key, id })?;
        self.rules.insert(key, id);
        Ok(())
    }
    fn remove_rule(&mut self, key: &RuleMapKey) -> Result<()> {
        self.record(Write::RemoveRule { key: *key })?;
        self.rules.remove(key);
        Ok(())
    }
    fn set_owner(&mut self, key: OwnerMapKey, value: ReverseValue) -> Result<()> {
        self.record(Write::Owner {
            key,
            listener_id: value.listener_id,
        })?;
        self.owners.insert(key, value);
        Ok(())
    }
    fn remove_owner(&mut self, key: &OwnerMapKey) -> Result<()> {
        self.record(Write::RemoveOwner { key: *key })?;
        self.owners.remove(key);
        Ok(())
    }
    fn existing_owners(&self) -> Result<Vec<(OwnerMapKey, ReverseValue)>> {
        Ok(self.owners.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn set_settings(&mut self, s: Settings) -> Result<()> {
        self.record(Write::Settings(s))?;
        self.settings = s;
        Ok(())
    }
    fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            stats: vec![0; STAT_SLOTS as usize],
            listeners: vec![Counters::default(); 1 + self.listeners.len()],
            targets: vec![Counters::default(); MAX_TARGETS as usize],
            rules: vec![0; lb_common::limits::RULE_STAT_SLOTS as usize],
        })
    }
    fn attach(&mut self, iface: &str) -> Result<AttachMode> {
        self.record(Write::Attach {
            iface: iface.to_owned(),
        })?;
        self.attached.push(iface.to_owned());
        Ok(AttachMode::Native)
    }
    fn detach_all(&mut self) {
        self.attached.clear();
        self.probe_encap.clear();
    }
    fn set_probe_encap(&mut self, ifaces: &[String]) -> Result<()> {
        self.probe_encap = ifaces.to_vec();
        Ok(())
    }
}
