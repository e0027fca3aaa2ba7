//! The authoritative model of what the data plane should hold, and how a config becomes map
//! writes. Writes are ordered so the XDP program never sees a half-built listener:
//! targets -> port flags (union) -> idle ring -> listener flip -> VIPs on the way in;
//! listeners -> VIPs -> port flags -> targets on the way out.
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

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
    /// What the table was built from: (target id, identity, weight) of the in-table targets.
    members: Vec<(u32, u64, u32)>,
    ring: Vec<u32>,
    value: ListenerValue,
}

type TargetAddr = (Ipv4Addr, u16);

/// What the data plane should hold: the listeners, and per target group the targets it knows
/// of — which take new flows (in the Maglev table) and which may keep their established flows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub tables: Tables,
    pub interfaces: Vec<String>,
    pub listeners: Vec<Listener>,
    pub groups: BTreeMap<String, Vec<PlannedTarget>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedTarget {
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    /// Takes new flows (weight permitting).
    pub in_ring: bool,
    /// Its established flows stay on it. False: they are balanced afresh on their next packet.
    pub keeps_flows: bool,
}

impl Plan {
    /// Every configured target takes traffic: no health checks, no drains.
    pub fn from_config(cfg: &Config) -> Self {
        let groups = cfg
            .target_groups
            .iter()
            .map(|g| {
                let targets = g
                    .targets
                    .iter()
                    .map(|t| PlannedTarget {
                        address: t.address,
                        port: t.port,
                        weight: t.weight,
                        in_ring: true,
                        keeps_flows: true,
                    })
                    .collect();
                (g.name.clone(), targets)
            })
            .collect();
        Self {
            tables: cfg.tables,
            interfaces: cfg.interfaces.clone(),
            listeners: cfg.listeners.clone(),
            groups,
        }
    }
}

pub struct Balancer<D> {
    dp: D,
    tables: Tables,
    interfaces: Option<Vec<String>>,
    plan: Option<Plan>,
    listeners: HashMap<ListenerKey, Installed>,
    target_ids: HashMap<TargetAddr, u32>,
    /// `TARGETS[id].flags` as last written.
    target_flags: HashMap<u32, u8>,
    /// Last id handed out; ids are not reused until the space wraps, so a stale flow entry of a
    /// removed target never lands on a new one.
    last_target_id: u32,
    port_flags: Vec<u8>,
    vips: HashMap<VipKey, u32>,
}

pub fn listener_key(l: &Listener) -> ListenerKey {
    ListenerKey {
        addr: l.vip.octets(),
        port: l.port.to_be_bytes(),
        proto: l.protocol.number(),
        family: FAMILY_IPV4,
    }
}

fn vip_key(a: Ipv4Addr) -> VipKey {
    VipKey {
        addr: a.octets(),
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
            plan: None,
            listeners: HashMap::new(),
            target_ids: HashMap::new(),
            target_flags: HashMap::new(),
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

    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
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

    /// Make the data plane match `plan`, touching only what differs.
    pub fn apply(&mut self, plan: &Plan) -> Result<ApplyReport, ApplyError> {
        if plan.tables != self.tables {
            return Err(ApplyError::TablesChanged {
                old: self.tables,
                new: plan.tables,
            });
        }
        if let Some(old) = &self.interfaces
            && *old != plan.interfaces
        {
            return Err(ApplyError::InterfacesChanged {
                old: old.clone(),
                new: plan.interfaces.clone(),
            });
        }
        let mut report = ApplyReport::default();

        // Every target the plan names, and whether any group lets it carry traffic.
        let mut wanted: BTreeMap<TargetAddr, u8> = BTreeMap::new();
        for t in plan.groups.values().flatten() {
            let flags = wanted.entry((t.address, t.port)).or_default();
            if t.in_ring || t.keeps_flows {
                *flags = TARGET_ACTIVE;
            }
        }

        // 1. New targets, and targets becoming active, before any ring can point at them.
        for (&(address, port), &flags) in &wanted {
            let id = match self.target_ids.get(&(address, port)) {
                Some(id) => *id,
                None => {
                    let id = self.allocate_target_id()?;
                    self.target_ids.insert((address, port), id);
                    report.targets_added += 1;
                    id
                }
            };
            let current = self.target_flags.get(&id).copied();
            if (flags == TARGET_ACTIVE && current != Some(TARGET_ACTIVE)) || current.is_none() {
                self.write_target(id, address, port, flags)?;
            }
        }

        // 2. Port pre-filter: the union of old and new, so nothing new is filtered out early.
        let new_flags = port_flags_for(plan);
        let union: Vec<u8> = self
            .port_flags
            .iter()
            .zip(&new_flags)
            .map(|(a, b)| a | b)
            .collect();
        self.write_port_flags(union)?;

        // 3+4. Listeners: write the idle ring, then flip the listener to it in one update.
        let mut keep = HashMap::new();
        // Listeners of one group share their table: build each distinct one once.
        let mut built: HashMap<Vec<(u32, u64, u32)>, Vec<u32>> = HashMap::new();
        for l in &plan.listeners {
            let key = listener_key(l);
            let members = self.members_for(plan, l);
            if let Some(inst) = self.listeners.get(&key)
                && inst.members == members
                && inst.value.udp_idle_timeout_s == l.udp_idle_timeout_s
            {
                let inst = self.listeners.remove(&key).expect("present");
                report.listeners_unchanged.push(l.name.clone());
                keep.insert(
                    key,
                    Installed {
                        name: l.name.clone(),
                        ..inst
                    },
                );
                continue;
            }
            let ring = built
                .entry(members.clone())
                .or_insert_with(|| {
                    let entries: Vec<maglev::Entry> = members
                        .iter()
                        .map(|&(id, key, weight)| maglev::Entry { id, key, weight })
                        .collect();
                    maglev::build(&entries, self.tables.maglev_size)
                })
                .clone();
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
                            members,
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
                            members,
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
                            members,
                            ring,
                            value,
                        },
                    );
                }
            }
        }
        // Listeners not in the plan.
        for (key, inst) in std::mem::replace(&mut self.listeners, keep) {
            self.dp.remove_listener(&key)?;
            report.listeners_removed.push(inst.name);
        }

        // 5. VIPs, then the final port flags.
        let mut vips: HashMap<VipKey, u32> = HashMap::new();
        for l in &plan.listeners {
            *vips.entry(vip_key(l.vip)).or_default() += 1;
        }
        let hint = |k: &VipKey| lb_common::vip_hint_index(k.addr);
        let old_hints: std::collections::HashSet<u32> = self.vips.keys().map(hint).collect();
        let new_hints: std::collections::HashSet<u32> = vips.keys().map(hint).collect();
        for h in new_hints.difference(&old_hints) {
            self.dp.set_vip_hint(*h, true)?;
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
        for h in old_hints.difference(&new_hints) {
            self.dp.set_vip_hint(*h, false)?;
        }
        self.vips = vips;
        self.write_port_flags(new_flags)?;

        // 6. Targets that may no longer carry flows, now that no ring points at them: inactive,
        // so their flows are balanced afresh on the next packet. Targets the plan no longer
        // names also give up their id.
        let known: Vec<(TargetAddr, u32)> = self.target_ids.iter().map(|(k, v)| (*k, *v)).collect();
        for ((address, port), id) in known {
            let flags = wanted.get(&(address, port)).copied().unwrap_or(0);
            if flags == 0 && self.target_flags.get(&id) != Some(&0) {
                self.write_target(id, address, port, 0)?;
            }
            if !wanted.contains_key(&(address, port)) {
                self.target_ids.remove(&(address, port));
                self.target_flags.remove(&id);
                report.targets_removed += 1;
            }
        }

        self.interfaces = Some(plan.interfaces.clone());
        self.plan = Some(plan.clone());
        Ok(report)
    }

    fn write_target(
        &mut self,
        id: u32,
        address: Ipv4Addr,
        port: u16,
        flags: u8,
    ) -> Result<(), DataplaneError> {
        self.dp.set_target(
            id,
            TargetValue {
                addr: addr_from_ipv4(address.octets()),
                port: port.to_be_bytes(),
                family: FAMILY_IPV4,
                flags,
            },
        )?;
        self.target_flags.insert(id, flags);
        Ok(())
    }

    /// The in-table targets of a listener's group: (target id, identity, weight).
    fn members_for(&self, plan: &Plan, l: &Listener) -> Vec<(u32, u64, u32)> {
        plan.groups
            .get(&l.target_group)
            .map(|targets| {
                targets
                    .iter()
                    .filter(|t| t.in_ring)
                    .map(|t| {
                        (
                            self.target_ids[&(t.address, t.port)],
                            maglev::identity(t.address.octets(), t.port),
                            t.weight,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
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

fn port_flags_for(plan: &Plan) -> Vec<u8> {
    let mut flags = vec![0u8; PORT_FLAG_ENTRIES as usize];
    for l in &plan.listeners {
        flags[usize::from(l.port)] |= PORT_LISTENER;
    }
    for t in plan.groups.values().flatten() {
        flags[usize::from(t.port)] |= PORT_TARGET;
    }
    flags
}

#[cfg(test)]
mod tests;
