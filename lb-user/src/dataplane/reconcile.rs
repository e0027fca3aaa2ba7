//! The [`Reconciler`] makes the data plane hold what a [`Plan`] says, touching only what
//! differs, in phases ordered so the XDP program never sees a half-built listener:
//!
//! 1. [`install_targets`](Reconciler::install_targets): new and re-activated targets;
//! 2. [`widen_port_flags`](Reconciler::widen_port_flags): the port pre-filter becomes the union
//!    of old and new, so nothing new is filtered out early;
//! 3. [`install_listeners`](Reconciler::install_listeners): each new or changed listener's
//!    table goes into its idle copy, then one map update flips the listener to it;
//! 4. [`remove_listeners`](Reconciler::remove_listeners): listeners the plan no longer has;
//! 5. [`install_owners`](Reconciler::install_owners): per NAT target and protocol, the
//!    listener whose flows need no `REVERSE` entry (kept while it still sends there);
//! 6. [`install_vips`](Reconciler::install_vips): VIP hints and VIPs (hints on before, off
//!    after);
//! 7. [`narrow_port_flags`](Reconciler::narrow_port_flags): the port pre-filter as the plan
//!    says;
//! 8. [`retire_targets`](Reconciler::retire_targets): targets no table points at any more are
//!    marked inactive (their flows are balanced afresh), and forgotten if the plan no longer
//!    names them.
//!
//! The reconciler's record of the data plane is updated right after each write succeeds, so a
//! failed write leaves the record equal to what the maps hold: applying the same plan again
//! repairs the rest. The agent does exactly that (see `agent`).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use lb_common::{
    ListenerValue, MODE_NAT, PORT_LISTENER, PORT_TARGET, ReverseValue, Settings, TARGET_ACTIVE,
    limits::{MAX_TARGETS, PORT_FLAG_ENTRIES, RINGS_PER_LISTENER},
};

use super::{
    Dataplane, DataplaneError, ListenerMapKey, RuleMapKey, Snapshot, VipMapKey, keys, maglev,
};

/// A NAT target and protocol (`OWNERS` key, in model terms).
type OwnerOf = (Endpoint, u8);
use crate::model::{
    Endpoint, Target,
    config::{Config, Listener, Tables, Tunnel},
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no free target id: more than {} distinct targets", MAX_TARGETS - 1)]
    TargetIdsExhausted,
    #[error("no free listener slot (tables.max_listeners)")]
    ListenerSlotsExhausted,
    #[error(
        "no free source-rule id: more than {} rules",
        lb_common::limits::MAX_SOURCE_RULES
    )]
    RuleIdsExhausted,
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

/// What the data plane should hold: the listeners, and per target group the targets it knows
/// of — which take new flows (in the Maglev table) and which may keep their established flows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub listeners: Vec<Listener>,
    pub groups: BTreeMap<String, Vec<PlannedTarget>>,
    pub tunnel: Option<Tunnel>,
    pub icmp_echo: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedTarget {
    pub target: Target,
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
                    .map(|&target| PlannedTarget {
                        target,
                        in_ring: true,
                        keeps_flows: true,
                    })
                    .collect();
                (g.name.clone(), targets)
            })
            .collect();
        Self {
            listeners: cfg.listeners.clone(),
            groups,
            tunnel: cfg.tunnel,
            icmp_echo: cfg.icmp_echo,
        }
    }

    /// Every target the plan names, and whether any group lets it carry traffic.
    fn wanted_targets(&self) -> BTreeMap<Endpoint, u8> {
        let mut wanted = BTreeMap::new();
        for t in self.groups.values().flatten() {
            let flags = wanted.entry(t.target.endpoint).or_default();
            if t.in_ring || t.keeps_flows {
                *flags = TARGET_ACTIVE;
            }
        }
        wanted
    }

    fn port_flags(&self) -> Vec<u8> {
        let mut flags = vec![0u8; PORT_FLAG_ENTRIES as usize];
        for l in &self.listeners {
            flags[usize::from(l.port)] |= PORT_LISTENER;
        }
        for t in self.groups.values().flatten() {
            flags[usize::from(t.target.endpoint.port)] |= PORT_TARGET;
        }
        flags
    }
}

/// What the Maglev table of a listener is built from: (target id, identity, weight) of its
/// group's in-table targets.
type Members = Vec<(u32, u64, u32)>;

/// A listener as installed in the data plane.
struct Installed {
    name: String,
    slot: u32,
    generation: u32,
    members: Members,
    ring: Vec<u32>,
    value: ListenerValue,
    /// When `ring` was installed (`monotonic_s`): how long a table was in force bounds how
    /// long it is consulted as the previous one.
    since_s: u32,
}

pub struct Reconciler<D> {
    dp: D,
    tables: Tables,
    plan: Option<Plan>,
    listeners: HashMap<ListenerMapKey, Installed>,
    target_ids: HashMap<Endpoint, u32>,
    /// `TARGETS[id].flags` as last written.
    target_flags: HashMap<u32, u8>,
    /// Last id handed out; ids are not reused until the space wraps, so a stale flow entry of a
    /// removed target never lands on a new one.
    last_target_id: u32,
    port_flags: Vec<u8>,
    vips: HashMap<VipMapKey, u32>,
    vip_hints: HashSet<u32>,
    /// Source-rule entries as written, with their rule ids.
    rules: HashMap<RuleMapKey, u32>,
    /// Last rule id handed out (ids are not reused until the space wraps).
    last_rule_id: u32,
    /// `OWNERS` as written: the owning listener's key and the value.
    owners: BTreeMap<OwnerOf, (ListenerMapKey, ReverseValue)>,
    /// `SETTINGS[0]` as last written (`None`: never).
    settings: Option<Settings>,
    clock: fn() -> u32,
}

impl<D: Dataplane> Reconciler<D> {
    pub fn new(dp: D, tables: Tables) -> Self {
        Self {
            dp,
            tables,
            plan: None,
            listeners: HashMap::new(),
            target_ids: HashMap::new(),
            target_flags: HashMap::new(),
            last_target_id: 0,
            port_flags: vec![0; PORT_FLAG_ENTRIES as usize],
            vips: HashMap::new(),
            vip_hints: HashSet::new(),
            rules: HashMap::new(),
            last_rule_id: 0,
            owners: BTreeMap::new(),
            settings: None,
            clock: monotonic_s,
        }
    }

    /// Read the time (seconds, the data plane's coarse monotonic clock) from `clock`: tests
    /// move it by hand.
    pub fn set_clock(&mut self, clock: fn() -> u32) {
        self.clock = clock;
    }

    pub fn dataplane(&self) -> &D {
        &self.dp
    }

    pub fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    /// Give the data plane back (what it holds stays as it is).
    pub fn into_dataplane(self) -> D {
        self.dp
    }

    /// The last plan applied in full.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    pub fn target_id(&self, e: &Endpoint) -> Option<u32> {
        self.target_ids.get(e).copied()
    }

    /// Take over the targets a previous agent left in a pinned data plane, with their ids (its
    /// flow entries name them): the next apply keeps those the plan has and retires the
    /// others. Returns how many.
    pub fn adopt_targets(&mut self) -> Result<usize, DataplaneError> {
        let existing = self.dp.existing_targets()?;
        for (id, v) in &existing {
            let addr = if v.family == lb_common::FAMILY_IPV6 {
                IpAddr::from(v.addr)
            } else {
                IpAddr::from([v.addr[0], v.addr[1], v.addr[2], v.addr[3]])
            };
            let e = Endpoint::new(addr, u16::from_be_bytes(v.port));
            self.target_ids.insert(e, *id);
            self.target_flags.insert(*id, v.flags);
            self.last_target_id = self.last_target_id.max(*id);
        }
        // Its reply owners: their flows have no return-path entry, so they stay owners while
        // their listeners still send to the target.
        for (k, v) in self.dp.existing_owners()? {
            let (e, proto) = keys::owner_key_parts(&k);
            self.owners
                .insert((e, proto), (keys::owner_listener(&v, proto), v));
        }
        Ok(existing.len())
    }

    /// The endpoint that target id `id` stands for.
    pub fn endpoint_of(&self, id: u32) -> Option<Endpoint> {
        self.target_ids
            .iter()
            .find(|(_, i)| **i == id)
            .map(|(e, _)| *e)
    }

    /// The target id the listener's installed Maglev table gives a flow of hash `hash` (as
    /// the data plane reads it: slot `hash % M`; 0 for an empty slot).
    pub fn maglev_pick(&self, l: &Listener, hash: u32) -> Option<u32> {
        let inst = self.listeners.get(&keys::listener_key(l))?;
        let m = inst.ring.len() as u32;
        (m > 0).then(|| inst.ring[(hash % m) as usize])
    }

    pub fn listener_id(&self, l: &Listener) -> Option<u32> {
        let key = keys::listener_key(l);
        self.listeners.get(&key).map(|i| i.value.id)
    }

    pub fn snapshot(&self) -> Result<Snapshot, DataplaneError> {
        self.dp.snapshot()
    }

    /// Make the data plane match `plan`, touching only what differs. On error the data plane
    /// holds a mix of old and new that is safe for packets (see the phases), and applying a
    /// plan again completes it.
    pub fn apply(&mut self, plan: &Plan) -> Result<ApplyReport, ApplyError> {
        let listener_keys: Vec<ListenerMapKey> =
            plan.listeners.iter().map(keys::listener_key).collect();
        let mut report = ApplyReport::default();
        let wanted = plan.wanted_targets();
        let new_port_flags = plan.port_flags();
        self.install_settings(plan)?;
        self.install_targets(&wanted, &mut report)?;
        self.widen_port_flags(&new_port_flags)?;
        self.install_listeners(plan, &listener_keys, &mut report)?;
        self.remove_listeners(&listener_keys, &mut report)?;
        self.retire_rules(plan)?;
        self.install_owners(plan, &wanted)?;
        self.install_vips(plan)?;
        self.narrow_port_flags(new_port_flags)?;
        self.retire_targets(&wanted, &mut report)?;
        self.plan = Some(plan.clone());
        Ok(report)
    }

    /// Phase 0: node-wide settings, before any listener that needs them.
    fn install_settings(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        let s = keys::settings(plan.tunnel.as_ref(), plan.icmp_echo);
        if self.settings != Some(s) {
            self.dp.set_settings(s)?;
            self.settings = Some(s);
        }
        Ok(())
    }

    /// Phase 1: new targets, and targets becoming active, before any table can point at them.
    fn install_targets(
        &mut self,
        wanted: &BTreeMap<Endpoint, u8>,
        report: &mut ApplyReport,
    ) -> Result<(), ApplyError> {
        for (endpoint, &flags) in wanted {
            let (id, new) = match self.target_ids.get(endpoint) {
                Some(id) => (*id, false),
                None => (self.allocate_target_id()?, true),
            };
            let current = self.target_flags.get(&id).copied();
            if current.is_none() || (flags == TARGET_ACTIVE && current != Some(TARGET_ACTIVE)) {
                self.write_target(id, endpoint, flags)?;
            }
            if new {
                self.target_ids.insert(*endpoint, id);
                report.targets_added += 1;
            }
        }
        Ok(())
    }

    /// Phase 2: every port the old or the new plan uses passes the pre-filter.
    fn widen_port_flags(&mut self, new: &[u8]) -> Result<(), DataplaneError> {
        let union: Vec<u8> = self
            .port_flags
            .iter()
            .zip(new)
            .map(|(a, b)| a | b)
            .collect();
        self.write_port_flags(&union)
    }

    /// Phase 3: new and changed listeners, each table written before the listener points at it.
    fn install_listeners(
        &mut self,
        plan: &Plan,
        listener_keys: &[ListenerMapKey],
        report: &mut ApplyReport,
    ) -> Result<(), ApplyError> {
        // Listeners of one group share their table: build each distinct one once.
        let mut built: HashMap<Members, Vec<u32>> = HashMap::new();
        for (l, key) in plan.listeners.iter().zip(listener_keys) {
            let members = self.members_for(plan, l);
            let wanted = settings(&self.listener_value(l, 0, 0, 0));
            // Its id: kept, or the one a new listener gets from its slot.
            let id = match self.listeners.get(key) {
                Some(i) => i.value.id,
                None => self.free_slot()? + 1,
            };
            // The rules' entries before the listener's flags can point at them.
            self.install_rules(id, l)?;
            if let Some(inst) = self.listeners.get_mut(key)
                && inst.members == members
                && settings(&inst.value) == wanted
            {
                inst.name.clone_from(&l.name);
                report.listeners_unchanged.push(l.name.clone());
                continue;
            }
            let m = self.tables.maglev_size;
            let ring = built
                .entry(members.clone())
                .or_insert_with(|| maglev_table(&members, m))
                .clone();
            let installed = self
                .listeners
                .get(key)
                .map(|i| (i.slot, i.generation, i.value.id, settings(&i.value)));
            match installed {
                // Same table from other members (e.g. a weight-0 target left): nothing to write.
                Some((.., t)) if t == wanted && self.listeners[key].ring == ring => {
                    let inst = self.listeners.get_mut(key).expect("present");
                    inst.name.clone_from(&l.name);
                    inst.members = members;
                    report.listeners_unchanged.push(l.name.clone());
                }
                Some((slot, generation, id, _)) => {
                    let generation = 1 - generation;
                    let old = self.listeners[key].value;
                    let moved = self.listeners[key]
                        .ring
                        .iter()
                        .zip(&ring)
                        .filter(|(a, b)| a != b)
                        .count();
                    // The idle ring about to be written may be the one a mid-flow packet is
                    // sent to (the previous table): close that window first.
                    if old.prev_until_s != 0 {
                        self.dp.set_listener(
                            *key,
                            ListenerValue {
                                prev_until_s: 0,
                                ..old
                            },
                        )?;
                        self.listeners
                            .get_mut(key)
                            .expect("present")
                            .value
                            .prev_until_s = 0;
                    }
                    let mut value = self.listener_value(l, slot, generation, id);
                    // The table in use until now becomes the previous one, consulted for a
                    // while if flows moved.
                    value.prev_ring_base = old.ring_base;
                    // The window is at most as long as the old table was in force: a flow met
                    // mid-way more likely began under the old table than after the change only
                    // while the old table had been there longer than the change has (a table
                    // that lasted two seconds, as while targets turn healthy at start, is
                    // hardly anyone's previous table).
                    let now = (self.clock)();
                    let lasted = now.saturating_sub(self.listeners[key].since_s);
                    value.prev_until_s = match self.tables.previous_table_window_s.min(lasted) {
                        _ if moved == 0 => old.prev_until_s,
                        0 => 0,
                        w => now.saturating_add(w),
                    };
                    self.dp.write_ring(value.ring_base, &ring)?;
                    self.dp.set_listener(*key, value)?;
                    let inst = self.listeners.get_mut(key).expect("present");
                    let since_s = if moved == 0 { inst.since_s } else { now };
                    *inst = Installed {
                        name: l.name.clone(),
                        slot,
                        generation,
                        members,
                        ring,
                        value,
                        since_s,
                    };
                    report.slots_moved.push((l.name.clone(), moved));
                    report.listeners_changed.push(l.name.clone());
                }
                None => {
                    let slot = self.free_slot()?;
                    let value = self.listener_value(l, slot, 0, slot + 1);
                    self.dp.write_ring(value.ring_base, &ring)?;
                    self.dp.set_listener(*key, value)?;
                    self.listeners.insert(
                        *key,
                        Installed {
                            name: l.name.clone(),
                            slot,
                            generation: 0,
                            members,
                            ring,
                            value,
                            since_s: (self.clock)(),
                        },
                    );
                    report.listeners_added.push(l.name.clone());
                }
            }
        }
        Ok(())
    }

    /// Phase 4: listeners the plan no longer has.
    fn remove_listeners(
        &mut self,
        listener_keys: &[ListenerMapKey],
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        let keep: HashSet<&ListenerMapKey> = listener_keys.iter().collect();
        let mut gone: Vec<ListenerMapKey> = self
            .listeners
            .keys()
            .filter(|k| !keep.contains(k))
            .copied()
            .collect();
        gone.sort_by_key(|k| self.listeners[k].slot);
        for key in gone {
            self.dp.remove_listener(&key)?;
            let inst = self.listeners.remove(&key).expect("present");
            report.listeners_removed.push(inst.name);
        }
        Ok(())
    }

    /// Phase 5: the reply owner of each NAT target and protocol. A flow of the owner keeps
    /// one entry (no `REVERSE`): its reply finds it through the owner's VIP and port, so the
    /// owner stays while its listener is in the plan and the target is still wanted (its
    /// established flows may still go there). Otherwise the first NAT listener of the plan
    /// sending to the target becomes the owner; its flows made before that have `REVERSE`
    /// entries, which the reply path still finds. Runs after the listeners are installed (a
    /// new listener's id is known; until then its flows get `REVERSE` entries) and removed.
    fn install_owners(
        &mut self,
        plan: &Plan,
        wanted_targets: &BTreeMap<Endpoint, u8>,
    ) -> Result<(), DataplaneError> {
        let nat: Vec<&Listener> = plan
            .listeners
            .iter()
            .filter(|l| l.mode.code() == MODE_NAT)
            .collect();
        let mut wanted: BTreeMap<OwnerOf, (ListenerMapKey, ReverseValue)> = BTreeMap::new();
        let value_of = |this: &Self, l: &Listener, e: &Endpoint| {
            let lk = keys::listener_key(l);
            let id = this.listeners.get(&lk).map(|i| i.value.id)?;
            let target = this.target_ids.get(e).copied()?;
            Some((lk, keys::owner_value(l, id, target)))
        };
        // Owners kept: still in the plan, their target still wanted.
        for ((e, proto), (lk, _)) in &self.owners {
            let still = nat.iter().find(|l| keys::listener_key(l) == *lk);
            if let Some(l) = still
                && wanted_targets.contains_key(e)
                && let Some(v) = value_of(self, l, e)
            {
                wanted.insert((*e, *proto), v);
            }
        }
        // New owners: the first NAT listener sending to a target that has none.
        for l in &nat {
            let Some(targets) = plan.groups.get(&l.target_group) else {
                continue;
            };
            for t in targets {
                let e = t.target.endpoint;
                let key = (e, l.protocol.number());
                if e.addr.is_ipv4() != l.vip.is_ipv4() || wanted.contains_key(&key) {
                    continue;
                }
                if let Some(v) = value_of(self, l, &e) {
                    wanted.insert(key, v);
                }
            }
        }
        for (k, v) in &wanted {
            if self.owners.get(k).map(|(_, old)| old) != Some(&v.1) {
                self.dp.set_owner(keys::owner_key(&k.0, k.1), v.1)?;
                self.owners.insert(*k, *v);
            }
        }
        let gone: Vec<OwnerOf> = self
            .owners
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            self.dp.remove_owner(&keys::owner_key(&k.0, k.1))?;
            self.owners.remove(&k);
        }
        Ok(())
    }

    /// Phase 6: VIP hints on, VIP counts, removed VIPs, hints off.
    fn install_vips(&mut self, plan: &Plan) -> Result<(), ApplyError> {
        let mut vips: HashMap<VipMapKey, u32> = HashMap::new();
        for l in &plan.listeners {
            *vips.entry(keys::vip_key(l.vip)).or_default() += 1;
        }
        let hints: HashSet<u32> = vips.keys().filter_map(keys::vip_hint).collect();
        for h in sorted(hints.difference(&self.vip_hints)) {
            self.dp.set_vip_hint(h, true)?;
            self.vip_hints.insert(h);
        }
        for (k, n) in &vips {
            if self.vips.get(k) != Some(n) {
                self.dp.set_vip(*k, *n)?;
                self.vips.insert(*k, *n);
            }
        }
        let gone: Vec<VipMapKey> = self
            .vips
            .keys()
            .filter(|k| !vips.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            self.dp.remove_vip(&k)?;
            self.vips.remove(&k);
        }
        for h in sorted(self.vip_hints.difference(&hints)) {
            self.dp.set_vip_hint(h, false)?;
            self.vip_hints.remove(&h);
        }
        Ok(())
    }

    /// Phase 7: the port pre-filter exactly as the plan says.
    fn narrow_port_flags(&mut self, new: Vec<u8>) -> Result<(), DataplaneError> {
        self.write_port_flags(&new)
    }

    /// Phase 8: targets that may no longer carry flows, now that no table points at them, are
    /// inactive, so their flows are balanced afresh on the next packet. Targets the plan no
    /// longer names also give up their id.
    fn retire_targets(
        &mut self,
        wanted: &BTreeMap<Endpoint, u8>,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        let mut known: Vec<(Endpoint, u32)> =
            self.target_ids.iter().map(|(e, id)| (*e, *id)).collect();
        known.sort();
        for (endpoint, id) in known {
            let flags = wanted.get(&endpoint).copied().unwrap_or(0);
            if flags == 0 && self.target_flags.get(&id) != Some(&0) {
                self.write_target(id, &endpoint, 0)?;
            }
            if !wanted.contains_key(&endpoint) {
                self.target_ids.remove(&endpoint);
                self.target_flags.remove(&id);
                report.targets_removed += 1;
            }
        }
        Ok(())
    }

    fn write_target(&mut self, id: u32, e: &Endpoint, flags: u8) -> Result<(), DataplaneError> {
        self.dp.set_target(id, keys::target_value(e, flags))?;
        self.target_flags.insert(id, flags);
        Ok(())
    }

    fn listener_value(&self, l: &Listener, slot: u32, generation: u32, id: u32) -> ListenerValue {
        let m = self.tables.maglev_size;
        ListenerValue {
            id,
            ring_base: (slot * RINGS_PER_LISTENER + generation) * m,
            ring_size: m,
            mode: l.mode.code(),
            flags: keys::rule_flags(l),
            _pad: [0; 2],
            udp_idle_timeout_s: l.udp_idle_timeout_s,
            new_flow_rate: l.new_flows_per_second,
            source_flow_rate: l.new_flows_per_second_per_source,
            prev_ring_base: 0,
            prev_until_s: 0,
        }
    }

    /// The in-table targets of a listener's group.
    fn members_for(&self, plan: &Plan, l: &Listener) -> Members {
        plan.groups
            .get(&l.target_group)
            .map(|targets| {
                targets
                    .iter()
                    .filter(|t| t.in_ring)
                    .map(|t| {
                        let e = &t.target.endpoint;
                        (self.target_ids[e], maglev::identity(e), t.target.weight)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Write the entries of `l`'s rules (listener id `id`) that are not there yet.
    fn install_rules(&mut self, id: u32, l: &Listener) -> Result<(), ApplyError> {
        let wanted: Vec<RuleMapKey> = l
            .allow_sources
            .iter()
            .map(|c| keys::rule_key(id, true, c))
            .chain(l.deny_sources.iter().map(|c| keys::rule_key(id, false, c)))
            .collect();
        for key in wanted {
            if !self.rules.contains_key(&key) {
                let rule = self.allocate_rule_id()?;
                self.dp.set_rule(key, rule)?;
                self.rules.insert(key, rule);
            }
        }
        Ok(())
    }

    /// Phase 4b: entries of rules no listener has any more (their listeners' flags, or the
    /// listeners themselves, are already gone).
    fn retire_rules(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        let mut keep = HashSet::new();
        for l in &plan.listeners {
            if let Some(inst) = self.listeners.get(&keys::listener_key(l)) {
                let id = inst.value.id;
                keep.extend(l.allow_sources.iter().map(|c| keys::rule_key(id, true, c)));
                keep.extend(l.deny_sources.iter().map(|c| keys::rule_key(id, false, c)));
            }
        }
        let mut gone: Vec<RuleMapKey> = self
            .rules
            .keys()
            .filter(|k| !keep.contains(*k))
            .copied()
            .collect();
        gone.sort();
        for key in gone {
            self.dp.remove_rule(&key)?;
            self.rules.remove(&key);
        }
        Ok(())
    }

    /// The rule id of `l`'s allow (or deny) rule `c`, once installed.
    pub fn rule_id(&self, l: &Listener, allow: bool, c: &crate::model::Cidr) -> Option<u32> {
        let id = self.listeners.get(&keys::listener_key(l))?.value.id;
        self.rules.get(&keys::rule_key(id, allow, c)).copied()
    }

    fn allocate_rule_id(&mut self) -> Result<u32, ApplyError> {
        let max = lb_common::limits::MAX_SOURCE_RULES;
        let used: HashSet<u32> = self.rules.values().copied().collect();
        // Ids 1..=MAX_SOURCE_RULES (RULE_STATS slot 0 is unused; the per-listener slots
        // start after MAX_SOURCE_RULES + 1).
        for step in 0..max {
            let id = (self.last_rule_id + step) % max + 1;
            if !used.contains(&id) {
                self.last_rule_id = id;
                return Ok(id);
            }
        }
        Err(ApplyError::RuleIdsExhausted)
    }

    fn allocate_target_id(&mut self) -> Result<u32, ApplyError> {
        let used: HashSet<u32> = self.target_ids.values().copied().collect();
        for step in 1..MAX_TARGETS {
            let id = (self.last_target_id + step - 1) % (MAX_TARGETS - 1) + 1;
            if !used.contains(&id) {
                self.last_target_id = id;
                return Ok(id);
            }
        }
        Err(ApplyError::TargetIdsExhausted)
    }

    fn free_slot(&self) -> Result<u32, ApplyError> {
        (0..self.tables.max_listeners)
            .find(|s| !self.listeners.values().any(|i| i.slot == *s))
            .ok_or(ApplyError::ListenerSlotsExhausted)
    }

    /// Write the port flags that differ from the record, recording each as it succeeds.
    fn write_port_flags(&mut self, flags: &[u8]) -> Result<(), DataplaneError> {
        for (port, new) in flags.iter().enumerate() {
            if self.port_flags[port] != *new {
                let p = u16::try_from(port).expect("65536 entries");
                self.dp.set_port_flags(p, *new)?;
                self.port_flags[port] = *new;
            }
        }
        Ok(())
    }
}

fn maglev_table(members: &Members, m: u32) -> Vec<u32> {
    let entries: Vec<maglev::Entry> = members
        .iter()
        .map(|&(id, key, weight)| maglev::Entry { id, key, weight })
        .collect();
    maglev::build(&entries, m)
}

fn sorted<'a>(it: impl Iterator<Item = &'a u32>) -> Vec<u32> {
    it.copied().collect::<BTreeSet<u32>>().into_iter().collect()
}

const _: () = assert!(PORT_FLAG_ENTRIES == 65_536);

#[cfg(test)]
mod tests;

/// What of a listener's map value is not its place (id, ring): a listener whose settings
/// differ from the config's is rewritten.
fn settings(v: &ListenerValue) -> (u32, u8, u8, u32, u32) {
    (
        v.udp_idle_timeout_s,
        v.mode,
        v.flags,
        v.new_flow_rate,
        v.source_flow_rate,
    )
}

/// The data plane's coarse monotonic clock in seconds (`bpf_ktime_get_coarse_ns` reads the
/// same clock), for the previous table's window.
pub fn monotonic_s() -> u32 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|t| u32::try_from(t.tv_sec()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}
