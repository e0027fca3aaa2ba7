//! The authoritative model of what the data plane should hold, and how a config becomes map
//! writes. Writes are ordered so the XDP program never sees a half-built listener:
//! targets -> port flags (union) -> idle ring -> listener flip -> VIPs on the way in;
//! listeners -> VIPs -> port flags -> targets on the way out.
use std::{collections::HashMap, net::Ipv4Addr};

use lb_common::{
    FAMILY_IPV4, ListenerKey, ListenerValue, MODE_NAT, PORT_LISTENER, PORT_TARGET, TARGET_ACTIVE,
    TargetValue, VipKey, addr_from_ipv4,
    limits::{MAX_TARGETS, PORT_FLAG_ENTRIES, RINGS_PER_LISTENER},
};

use crate::{
    config::{Config, Listener, Tables},
    dataplane::{Dataplane, DataplaneError, Snapshot},
    maglev,
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("table sizes changed ({old:?} -> {new:?}); they take effect only on restart")]
    TablesChanged { old: Tables, new: Tables },
    #[error("interfaces changed ({old:?} -> {new:?}); they take effect only on restart")]
    InterfacesChanged { old: Vec<String>, new: Vec<String> },
    #[error("no free target id: more than {} distinct targets", MAX_TARGETS - 1)]
    TargetIdsExhausted,
    #[error("no free listener slot (tables.max_listeners)")]
    ListenerSlotsExhausted,
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// What one apply changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyReport {
    pub listeners_added: Vec<String>,
    pub listeners_changed: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub listeners_unchanged: Vec<String>,
    pub targets_added: usize,
    pub targets_removed: usize,
    /// Ring slots that now point at another target, per changed listener.
    pub slots_moved: Vec<(String, usize)>,
}

struct Installed {
    name: String,
    slot: u32,
    generation: u32,
    ring: Vec<u32>,
    value: ListenerValue,
}

type TargetAddr = (Ipv4Addr, u16);

pub struct Balancer<D> {
    dp: D,
    tables: Tables,
    interfaces: Option<Vec<String>>,
    config: Option<Config>,
    listeners: HashMap<ListenerKey, Installed>,
    target_ids: HashMap<TargetAddr, u32>,
    /// Last id handed out; ids are not reused until the space wraps, so a stale flow entry of a
    /// removed target never lands on a new one.
    last_target_id: u32,
    port_flags: Vec<u8>,
    vips: HashMap<VipKey, u32>,
}

pub fn listener_key(l: &Listener) -> ListenerKey {
    ListenerKey {
        addr: addr_from_ipv4(l.vip.octets()),
        port: l.port.to_be_bytes(),
        proto: l.protocol.number(),
        family: FAMILY_IPV4,
    }
}

fn vip_key(a: Ipv4Addr) -> VipKey {
    VipKey {
        addr: addr_from_ipv4(a.octets()),
        family: FAMILY_IPV4,
        _pad: [0; 3],
    }
}

impl<D: Dataplane> Balancer<D> {
    pub fn new(dp: D, tables: Tables) -> Self {
        Self {
            dp,
            tables,
            interfaces: None,
            config: None,
            listeners: HashMap::new(),
            target_ids: HashMap::new(),
            last_target_id: 0,
            port_flags: vec![0; PORT_FLAG_ENTRIES as usize],
            vips: HashMap::new(),
        }
    }

    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    pub fn target_id(&self, address: Ipv4Addr, port: u16) -> Option<u32> {
        self.target_ids.get(&(address, port)).copied()
    }

    pub fn listener_id(&self, l: &Listener) -> Option<u32> {
        self.listeners.get(&listener_key(l)).map(|i| i.value.id)
    }

    pub fn snapshot(&self) -> Result<Snapshot, DataplaneError> {
        self.dp.snapshot()
    }

    /// Make the data plane match `cfg`, touching only what differs.
    pub fn apply(&mut self, cfg: &Config) -> Result<ApplyReport, ApplyError> {
        if cfg.tables != self.tables {
            return Err(ApplyError::TablesChanged {
                old: self.tables,
                new: cfg.tables,
            });
        }
        if let Some(old) = &self.interfaces
            && *old != cfg.interfaces
        {
            return Err(ApplyError::InterfacesChanged {
                old: old.clone(),
                new: cfg.interfaces.clone(),
            });
        }

        let mut report = ApplyReport::default();

        // 1. Targets that are new become active before any ring can point at them.
        let wanted: Vec<TargetAddr> = cfg
            .target_groups
            .iter()
            .flat_map(|g| g.targets.iter().map(|t| (t.address, t.port)))
            .collect();
        for &(address, port) in &wanted {
            if self.target_ids.contains_key(&(address, port)) {
                continue;
            }
            let id = self.allocate_target_id()?;
            self.dp.set_target(
                id,
                TargetValue {
                    addr: addr_from_ipv4(address.octets()),
                    port: port.to_be_bytes(),
                    family: FAMILY_IPV4,
                    flags: TARGET_ACTIVE,
                },
            )?;
            self.target_ids.insert((address, port), id);
            report.targets_added += 1;
        }

        // 2. Port pre-filter: the union of old and new, so nothing new is filtered out early.
        let new_flags = port_flags_for(cfg);
        let union: Vec<u8> = self
            .port_flags
            .iter()
            .zip(&new_flags)
            .map(|(a, b)| a | b)
            .collect();
        self.write_port_flags(union)?;

        // 3+4. Listeners: write the idle ring, then flip the listener to it in one update.
        let mut keep = HashMap::new();
        for l in &cfg.listeners {
            let key = listener_key(l);
            let ring = self.ring_for(cfg, l);
            let value_for = |slot: u32, generation: u32, id: u32| ListenerValue {
                id,
                ring_base: (slot * RINGS_PER_LISTENER + generation) * self.tables.maglev_size,
                ring_size: self.tables.maglev_size,
                mode: MODE_NAT,
                flags: 0,
                _pad: [0; 2],
                udp_idle_timeout_s: l.udp_idle_timeout_s,
            };
            match self.listeners.remove(&key) {
                Some(inst)
                    if inst.ring == ring
                        && inst.value.udp_idle_timeout_s == l.udp_idle_timeout_s =>
                {
                    report.listeners_unchanged.push(l.name.clone());
                    keep.insert(
                        key,
                        Installed {
                            name: l.name.clone(),
                            ..inst
                        },
                    );
                }
                Some(inst) => {
                    let generation = 1 - inst.generation;
                    let value = value_for(inst.slot, generation, inst.value.id);
                    self.dp.write_ring(value.ring_base, &ring)?;
                    self.dp.set_listener(key, value)?;
                    let moved = inst.ring.iter().zip(&ring).filter(|(a, b)| a != b).count();
                    report.slots_moved.push((l.name.clone(), moved));
                    report.listeners_changed.push(l.name.clone());
                    keep.insert(
                        key,
                        Installed {
                            name: l.name.clone(),
                            slot: inst.slot,
                            generation,
                            ring,
                            value,
                        },
                    );
                }
                None => {
                    let slot = self.free_slot(&keep)?;
                    let value = value_for(slot, 0, slot + 1);
                    self.dp.write_ring(value.ring_base, &ring)?;
                    self.dp.set_listener(key, value)?;
                    report.listeners_added.push(l.name.clone());
                    keep.insert(
                        key,
                        Installed {
                            name: l.name.clone(),
                            slot,
                            generation: 0,
                            ring,
                            value,
                        },
                    );
                }
            }
        }
        // Listeners not in the new config.
        for (key, inst) in std::mem::replace(&mut self.listeners, keep) {
            self.dp.remove_listener(&key)?;
            report.listeners_removed.push(inst.name);
        }

        // 5. VIPs, then the final port flags.
        let mut vips: HashMap<VipKey, u32> = HashMap::new();
        for l in &cfg.listeners {
            *vips.entry(vip_key(l.vip)).or_default() += 1;
        }
        for (k, n) in &vips {
            if self.vips.get(k) != Some(n) {
                self.dp.set_vip(*k, *n)?;
            }
        }
        for k in self.vips.keys() {
            if !vips.contains_key(k) {
                self.dp.remove_vip(k)?;
            }
        }
        self.vips = vips;
        self.write_port_flags(new_flags)?;

        // 6. Targets no longer configured: inactive, so their flows re-balance on the next packet.
        let gone: Vec<TargetAddr> = self
            .target_ids
            .keys()
            .filter(|k| !wanted.contains(k))
            .copied()
            .collect();
        for k in gone {
            if let Some(id) = self.target_ids.remove(&k) {
                self.dp.set_target(id, TargetValue::default())?;
                report.targets_removed += 1;
            }
        }

        self.interfaces = Some(cfg.interfaces.clone());
        self.config = Some(cfg.clone());
        Ok(report)
    }

    fn ring_for(&self, cfg: &Config, l: &Listener) -> Vec<u32> {
        let entries: Vec<maglev::Entry> = cfg
            .group(&l.target_group)
            .map(|g| {
                g.targets
                    .iter()
                    .map(|t| maglev::Entry {
                        id: self.target_ids[&(t.address, t.port)],
                        key: maglev::identity(t.address.octets(), t.port),
                        weight: t.weight,
                    })
                    .collect()
            })
            .unwrap_or_default();
        maglev::build(&entries, self.tables.maglev_size)
    }

    fn allocate_target_id(&mut self) -> Result<u32, ApplyError> {
        let used: std::collections::HashSet<u32> = self.target_ids.values().copied().collect();
        for step in 1..MAX_TARGETS {
            let id = (self.last_target_id + step - 1) % (MAX_TARGETS - 1) + 1;
            if !used.contains(&id) {
                self.last_target_id = id;
                return Ok(id);
            }
        }
        Err(ApplyError::TargetIdsExhausted)
    }

    fn free_slot(&self, keep: &HashMap<ListenerKey, Installed>) -> Result<u32, ApplyError> {
        (0..self.tables.max_listeners)
            .find(|s| {
                !keep.values().any(|i| i.slot == *s)
                    && !self.listeners.values().any(|i| i.slot == *s)
            })
            .ok_or(ApplyError::ListenerSlotsExhausted)
    }

    fn write_port_flags(&mut self, flags: Vec<u8>) -> Result<(), DataplaneError> {
        for (port, (old, new)) in self.port_flags.iter().zip(&flags).enumerate() {
            if old != new {
                let port = u16::try_from(port).expect("65536 entries");
                self.dp.set_port_flags(port, *new)?;
            }
        }
        self.port_flags = flags;
        Ok(())
    }
}

fn port_flags_for(cfg: &Config) -> Vec<u8> {
    let mut flags = vec![0u8; PORT_FLAG_ENTRIES as usize];
    for l in &cfg.listeners {
        flags[usize::from(l.port)] |= PORT_LISTENER;
    }
    for g in &cfg.target_groups {
        for t in &g.targets {
            flags[usize::from(t.port)] |= PORT_TARGET;
        }
    }
    flags
}

#[cfg(test)]
mod tests;
