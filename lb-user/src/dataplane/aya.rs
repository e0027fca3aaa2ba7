//! The real data plane: the XDP object loaded into the kernel, its maps and its links.
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, MapData, PerCpuArray, ProgramArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        SchedClassifier, TcAttachType, TestRun as _, Xdp, XdpMode, tc::SchedClassifierLinkId,
        xdp::XdpLinkId,
    },
};
use lb_common::{
    Counters, ListenerKey, ListenerKey6, ListenerValue, OwnerKey, OwnerKey6, ReverseValue,
    RuleKey4, RuleKey6, Settings, TargetValue, VipKey, VipKey6,
    limits::{MAX_TARGETS, RINGS_PER_LISTENER, RULE_STAT_SLOTS, STAT_SLOTS},
    maps,
};
use lb_sys::SharedSlots;

use super::{
    AttachMode, Dataplane, DataplaneError, ListenerMapKey, OwnerMapKey, Result, RuleMapKey,
    Snapshot, VipMapKey,
};
use crate::model::config::Tables;

/// The real data plane: the XDP object loaded into the kernel.
pub struct AyaDataplane {
    ebpf: Ebpf,
    listeners: BpfHashMap<MapData, ListenerKey, ListenerValue>,
    vips: BpfHashMap<MapData, VipKey, u32>,
    listeners6: BpfHashMap<MapData, ListenerKey6, ListenerValue>,
    vips6: BpfHashMap<MapData, VipKey6, u32>,
    owners: BpfHashMap<MapData, OwnerKey, ReverseValue>,
    owners6: BpfHashMap<MapData, OwnerKey6, ReverseValue>,
    /// Holds `xlb6` and `xlb6_icmp` in their slots for as long as the object is loaded.
    _tail_calls: ProgramArray<MapData>,
    ring_memory: SharedSlots,
    /// Kept open: programs loaded later (by tests, from the same object) are relocated
    /// against its fd.
    _ring_map: aya::maps::Map,
    targets: Array<MapData, TargetValue>,
    port_flags: Array<MapData, u8>,
    vip_hints: Array<MapData, u8>,
    settings: Array<MapData, Settings>,
    stats: PerCpuArray<MapData, u64>,
    listener_stats: PerCpuArray<MapData, Counters>,
    allow4: LpmTrie<MapData, RuleKey4, u32>,
    deny4: LpmTrie<MapData, RuleKey4, u32>,
    allow6: LpmTrie<MapData, RuleKey6, u32>,
    deny6: LpmTrie<MapData, RuleKey6, u32>,
    rule_stats: PerCpuArray<MapData, u64>,
    target_stats: PerCpuArray<MapData, Counters>,
    /// (interface, link, mode)
    links: Vec<(String, XdpLinkId, AttachMode)>,
    /// With a pinned data plane: its folder, the links pinned there (interface, pin, the
    /// link while this process holds it), and whether `TARGETS` was a previous agent's.
    pins: Option<std::path::PathBuf>,
    pinned_links: Vec<(
        String,
        std::path::PathBuf,
        Option<aya::programs::links::PinnedLink>,
    )>,
    adopted: bool,
    /// Probe encapsulation on egress: (interface, link).
    encap_links: Vec<(String, SchedClassifierLinkId)>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(|source| DataplaneError::Map { map: name, source })
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// The maps that outlive the agent when the data plane is pinned: the connection tables (so
/// established flows keep their target), the targets (flow entries hold target ids) and the
/// reply owners (a flow of an owner has no `REVERSE` entry).
pub const PINNED_MAPS: [&str; 11] = [
    maps::FLOWS,
    maps::REVERSE,
    maps::EMBRYONIC,
    maps::EMBRYONIC_REVERSE,
    maps::FLOWS6,
    maps::REVERSE6,
    maps::EMBRYONIC6,
    maps::EMBRYONIC_REVERSE6,
    maps::TARGETS,
    maps::OWNERS,
    maps::OWNERS6,
];

/// Where a data plane of this ABI and these table sizes pins its maps and links, under the
/// configured `pin_dir`: a layout or size change gets a folder of its own, never a map of the
/// wrong shape.
pub fn pin_root(pin_dir: &std::path::Path, tables: &Tables) -> std::path::PathBuf {
    pin_dir.join(format!(
        "abi{}-c{}",
        lb_common::ABI_VERSION,
        tables.max_connections
    ))
}

impl AyaDataplane {
    /// Load the object with map sizes from `tables` and run the verifier. Attaches nothing.
    pub fn load(object: &[u8], tables: &Tables) -> Result<Self> {
        Self::load_pinned(object, tables, None)
    }

    /// As [`AyaDataplane::load`]; with `pins`, the [`PINNED_MAPS`] are opened from that
    /// folder when they are pinned there (a previous agent's) and pinned there when not, and
    /// [`Dataplane::attach`] takes over links pinned there.
    pub fn load_pinned(
        object: &[u8],
        tables: &Tables,
        pins: Option<&std::path::Path>,
    ) -> Result<Self> {
        let rings = tables.max_listeners * RINGS_PER_LISTENER * tables.maglev_size;
        let embryonic = lb_common::limits::embryonic_entries(tables.max_connections);
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, std::path::PathBuf)> = match pins {
            Some(dir) => {
                std::fs::create_dir_all(dir.join("links"))
                    .map_err(|e| DataplaneError::Pin(format!("{}: {e}", dir.display())))?;
                PINNED_MAPS.iter().map(|m| (*m, dir.join(m))).collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let adopted = paths
            .iter()
            .any(|(name, path)| *name == maps::TARGETS && path.exists());
        let mut ebpf = loader
            .map_max_entries(maps::LISTENERS, tables.max_listeners)
            .map_max_entries(maps::VIPS, tables.max_listeners)
            .map_max_entries(maps::RINGS, rings)
            .map_max_entries(maps::FLOWS, tables.max_connections)
            .map_max_entries(maps::REVERSE, tables.max_connections)
            .map_max_entries(maps::LISTENERS6, tables.max_listeners)
            .map_max_entries(maps::VIPS6, tables.max_listeners)
            .map_max_entries(maps::FLOWS6, tables.max_connections)
            .map_max_entries(maps::REVERSE6, tables.max_connections)
            .map_max_entries(maps::EMBRYONIC, embryonic)
            .map_max_entries(maps::EMBRYONIC_REVERSE, embryonic)
            .map_max_entries(maps::EMBRYONIC6, embryonic)
            .map_max_entries(maps::EMBRYONIC_REVERSE6, embryonic)
            .map_max_entries(maps::LISTENER_STATS, tables.max_listeners + 1)
            .load(object)?;
        let prog: &mut Xdp = program_mut(&mut ebpf)?;
        prog.load()?;
        let mut tail_calls: ProgramArray<MapData> = take(&mut ebpf, maps::TAIL_CALLS)?;
        for (slot, name) in [
            (lb_common::TAIL_IPV6, lb_common::PROGRAM6_NAME),
            (lb_common::TAIL_ICMP6, lb_common::PROGRAM6_ICMP_NAME),
            (lb_common::TAIL_TUNNEL6, lb_common::PROGRAM_TUNNEL6_NAME),
        ] {
            let prog: &mut Xdp = program_named(&mut ebpf, name)?;
            prog.load()?;
            let fd = prog
                .fd()?
                .try_clone()
                .map_err(|e| DataplaneError::Pin(e.to_string()))?;
            tail_calls
                .set(slot, &fd, 0)
                .map_err(map_err(maps::TAIL_CALLS))?;
        }
        let ring_map = ebpf
            .take_map(maps::RINGS)
            .ok_or(DataplaneError::MissingMap(maps::RINGS))?;
        let ring_fd = match &ring_map {
            aya::maps::Map::Array(d) => {
                use std::os::fd::AsFd;
                d.fd()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(DataplaneError::Mmap)?
            }
            _ => return Err(DataplaneError::MissingMap(maps::RINGS)),
        };
        let ring_memory =
            SharedSlots::map(ring_fd, rings as usize).map_err(DataplaneError::Mmap)?;
        Ok(Self {
            listeners: take(&mut ebpf, maps::LISTENERS)?,
            vips: take(&mut ebpf, maps::VIPS)?,
            listeners6: take(&mut ebpf, maps::LISTENERS6)?,
            vips6: take(&mut ebpf, maps::VIPS6)?,
            owners: take(&mut ebpf, maps::OWNERS)?,
            owners6: take(&mut ebpf, maps::OWNERS6)?,
            _tail_calls: tail_calls,
            ring_memory,
            _ring_map: ring_map,
            targets: take(&mut ebpf, maps::TARGETS)?,
            port_flags: take(&mut ebpf, maps::PORT_FLAGS)?,
            vip_hints: take(&mut ebpf, maps::VIP_HINTS)?,
            settings: take(&mut ebpf, maps::SETTINGS)?,
            stats: take(&mut ebpf, maps::STATS)?,
            listener_stats: take(&mut ebpf, maps::LISTENER_STATS)?,
            allow4: take(&mut ebpf, maps::ALLOW4)?,
            deny4: take(&mut ebpf, maps::DENY4)?,
            allow6: take(&mut ebpf, maps::ALLOW6)?,
            deny6: take(&mut ebpf, maps::DENY6)?,
            rule_stats: take(&mut ebpf, maps::RULE_STATS)?,
            target_stats: take(&mut ebpf, maps::TARGET_STATS)?,
            ebpf,
            links: Vec::new(),
            encap_links: Vec::new(),
            pins: pins.map(std::path::Path::to_path_buf),
            pinned_links: Vec::new(),
            adopted,
        })
    }

    /// The per-reason counters alone (`STATS`, summed over CPUs), by code: what a snapshot
    /// holds first, without reading every listener and target.
    pub fn reason_counters(&self) -> Result<Vec<u64>> {
        (0..STAT_SLOTS)
            .map(|i| {
                let v = self.stats.get(&i, 0).map_err(map_err(maps::STATS))?;
                Ok(sum(&v, |a, b| *a += *b))
            })
            .collect()
    }

    /// The balancer program (tests run it through BPF_PROG_TEST_RUN).
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program_mut(&mut self.ebpf)
    }

    /// The loaded object, for programs and maps the agent itself does not use (an object built
    /// for measuring carries more than the balancer). Its maps that the agent owns are gone
    /// from it (taken at load).
    pub fn object_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn attached(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.links.iter().map(|(i, _, m)| (i.as_str(), *m))
    }
}

impl Drop for AyaDataplane {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Attach `prog` to `iface` in native (driver) mode, falling back to generic (SKB) mode with a
/// warning; the error names both refusals.
pub(super) fn attach_xdp(prog: &mut Xdp, iface: &str) -> Result<(XdpLinkId, AttachMode)> {
    match prog.attach(iface, XdpMode::Driver) {
        Ok(id) => Ok((id, AttachMode::Native)),
        Err(native) => match prog.attach(iface, XdpMode::Skb) {
            Ok(id) => {
                log::warn!(
                    "{iface}: native XDP refused ({native}); attached in generic (SKB) mode, which is much slower"
                );
                Ok((id, AttachMode::Generic))
            }
            Err(generic) => Err(DataplaneError::Attach {
                iface: iface.to_owned(),
                native: native.to_string(),
                generic: generic.to_string(),
            }),
        },
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    program_named(ebpf, lb_common::PROGRAM_NAME)
}

fn program_named<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let prog = ebpf.program_mut(name).ok_or(DataplaneError::Program(
        aya::programs::ProgramError::UnexpectedProgramType,
    ))?;
    Ok(prog.try_into()?)
}

fn sum<T: aya::Pod + Default>(values: &aya::maps::PerCpuValues<T>, add: impl Fn(&mut T, &T)) -> T {
    let mut total = T::default();
    for v in values.iter() {
        add(&mut total, v);
    }
    total
}

/// The target id in a connection table's entry for `key`, if there is one (read only).
fn entry<K: aya::Pod>(ebpf: &Ebpf, map: &'static str, key: &K) -> Result<Option<u32>> {
    let m = ebpf.map(map).ok_or(DataplaneError::MissingMap(map))?;
    let table: BpfHashMap<&MapData, K, lb_common::FlowValue> =
        BpfHashMap::try_from(m).map_err(|source| DataplaneError::Map { map, source })?;
    match table.get(key, 0) {
        Ok(v) => Ok(Some(v.target_id)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(DataplaneError::Map { map, source }),
    }
}

impl Dataplane for AyaDataplane {
    fn test_frame(&mut self, frame: &[u8], ingress: u32) -> Result<super::FrameRun> {
        let before = self.reason_counters()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ingress, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut out = vec![0u8; frame.len() + 256];
        let r = self.program()?.test_run(aya::programs::TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        let after = self.reason_counters()?;
        let rose = (0..STAT_SLOTS)
            .filter(|&i| after[i as usize] > before[i as usize])
            .collect();
        Ok(super::FrameRun {
            retval: r.return_value,
            out,
            rose,
        })
    }

    fn connection(&self, key: &super::ConnKey) -> Result<Option<(u32, bool)>> {
        let (flows, embryonic) = match key {
            super::ConnKey::V4(k) => (
                entry(&self.ebpf, maps::FLOWS, k)?,
                entry(&self.ebpf, maps::EMBRYONIC, k)?,
            ),
            super::ConnKey::V6(k) => (
                entry(&self.ebpf, maps::FLOWS6, k)?,
                entry(&self.ebpf, maps::EMBRYONIC6, k)?,
            ),
        };
        Ok(flows.map(|t| (t, false)).or(embryonic.map(|t| (t, true))))
    }

    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<()> {
        self.targets
            .set(id, value, 0)
            .map_err(map_err(maps::TARGETS))
    }

    fn write_ring(&mut self, base: u32, ring: &[u32]) -> Result<()> {
        let base = base as usize;
        let slots = self.ring_memory.slots_mut();
        let Some(dst) = slots.get_mut(base..base + ring.len()) else {
            return Err(DataplaneError::RingOutOfBounds {
                base,
                len: ring.len(),
            });
        };
        for (slot, id) in dst.iter_mut().zip(ring) {
            *slot = u64::from(*id);
        }
        Ok(())
    }

    fn set_listener(&mut self, key: ListenerMapKey, value: ListenerValue) -> Result<()> {
        match key {
            ListenerMapKey::V4(k) => self
                .listeners
                .insert(k, value, 0)
                .map_err(map_err(maps::LISTENERS)),
            ListenerMapKey::V6(k) => self
                .listeners6
                .insert(k, value, 0)
                .map_err(map_err(maps::LISTENERS6)),
        }
    }

    fn remove_listener(&mut self, key: &ListenerMapKey) -> Result<()> {
        match key {
            ListenerMapKey::V4(k) => self.listeners.remove(k).map_err(map_err(maps::LISTENERS)),
            ListenerMapKey::V6(k) => self.listeners6.remove(k).map_err(map_err(maps::LISTENERS6)),
        }
    }

    fn set_vip(&mut self, key: VipMapKey, listeners: u32) -> Result<()> {
        match key {
            VipMapKey::V4(k) => self
                .vips
                .insert(k, listeners, 0)
                .map_err(map_err(maps::VIPS)),
            VipMapKey::V6(k) => self
                .vips6
                .insert(k, listeners, 0)
                .map_err(map_err(maps::VIPS6)),
        }
    }

    fn remove_vip(&mut self, key: &VipMapKey) -> Result<()> {
        match key {
            VipMapKey::V4(k) => self.vips.remove(k).map_err(map_err(maps::VIPS)),
            VipMapKey::V6(k) => self.vips6.remove(k).map_err(map_err(maps::VIPS6)),
        }
    }

    fn set_port_flags(&mut self, port: u16, flags: u8) -> Result<()> {
        self.port_flags
            .set(u32::from(port), flags, 0)
            .map_err(map_err(maps::PORT_FLAGS))
    }

    fn set_vip_hint(&mut self, index: u32, on: bool) -> Result<()> {
        self.vip_hints
            .set(index, u8::from(on), 0)
            .map_err(map_err(maps::VIP_HINTS))
    }

    fn set_rule(&mut self, key: RuleMapKey, id: u32) -> Result<()> {
        let (map, r) = match key {
            RuleMapKey::Allow4(len, k) => (
                maps::ALLOW4,
                self.allow4.insert(&LpmKey::new(len, k), id, 0),
            ),
            RuleMapKey::Deny4(len, k) => {
                (maps::DENY4, self.deny4.insert(&LpmKey::new(len, k), id, 0))
            }
            RuleMapKey::Allow6(len, k) => (
                maps::ALLOW6,
                self.allow6.insert(&LpmKey::new(len, k), id, 0),
            ),
            RuleMapKey::Deny6(len, k) => {
                (maps::DENY6, self.deny6.insert(&LpmKey::new(len, k), id, 0))
            }
        };
        r.map_err(map_err(map))
    }

    fn remove_rule(&mut self, key: &RuleMapKey) -> Result<()> {
        let (map, r) = match *key {
            RuleMapKey::Allow4(len, k) => (maps::ALLOW4, self.allow4.remove(&LpmKey::new(len, k))),
            RuleMapKey::Deny4(len, k) => (maps::DENY4, self.deny4.remove(&LpmKey::new(len, k))),
            RuleMapKey::Allow6(len, k) => (maps::ALLOW6, self.allow6.remove(&LpmKey::new(len, k))),
            RuleMapKey::Deny6(len, k) => (maps::DENY6, self.deny6.remove(&LpmKey::new(len, k))),
        };
        r.map_err(map_err(map))
    }

    fn set_owner(&mut self, key: OwnerMapKey, value: ReverseValue) -> Result<()> {
        match key {
            OwnerMapKey::V4(k) => self
                .owners
                .insert(k, value, 0)
                .map_err(map_err(maps::OWNERS)),
            OwnerMapKey::V6(k) => self
                .owners6
                .insert(k, value, 0)
                .map_err(map_err(maps::OWNERS6)),
        }
    }

    fn remove_owner(&mut self, key: &OwnerMapKey) -> Result<()> {
        match key {
            OwnerMapKey::V4(k) => self.owners.remove(k).map_err(map_err(maps::OWNERS)),
            OwnerMapKey::V6(k) => self.owners6.remove(k).map_err(map_err(maps::OWNERS6)),
        }
    }

    fn set_settings(&mut self, s: Settings) -> Result<()> {
        self.settings.set(0, s, 0).map_err(map_err(maps::SETTINGS))
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let mut s = Snapshot {
            stats: self.reason_counters()?,
            ..Snapshot::default()
        };
        for i in 0..self.listener_stats.len() {
            let v = self
                .listener_stats
                .get(&i, 0)
                .map_err(map_err(maps::LISTENER_STATS))?;
            s.listeners.push(sum(&v, Counters::add));
        }
        for i in 0..MAX_TARGETS {
            let v = self
                .target_stats
                .get(&i, 0)
                .map_err(map_err(maps::TARGET_STATS))?;
            s.targets.push(sum(&v, Counters::add));
        }
        for i in 0..RULE_STAT_SLOTS {
            let v = self
                .rule_stats
                .get(&i, 0)
                .map_err(map_err(maps::RULE_STATS))?;
            s.rules.push(sum(&v, |a, b| *a += *b));
        }
        Ok(s)
    }

    fn attach(&mut self, iface: &str) -> Result<AttachMode> {
        let Some(dir) = self.pins.clone() else {
            let (id, mode) = attach_xdp(program_mut(&mut self.ebpf)?, iface)?;
            self.links.push((iface.to_owned(), id, mode));
            return Ok(mode);
        };
        let pin = dir.join("links").join(iface);
        let mode_file = dir.join("links").join(format!("{iface}.mode"));
        // A link pinned by an agent of another layout or table size (a sibling folder): its
        // program is replaced all the same (the interface has one XDP link), its tables are
        // not carried over; its folder goes.
        if !pin.exists()
            && let Some(parent) = dir.parent()
            && let Ok(entries) = std::fs::read_dir(parent)
        {
            for other in entries.flatten().map(|e| e.path()) {
                let old = other.join("links").join(iface);
                if other != dir && old.exists() {
                    log::warn!(
                        "{iface}: taking over the XDP link of {} (another map layout or table size: its connections are not carried over)",
                        other.display()
                    );
                    if std::fs::rename(&old, &pin).is_err() {
                        continue;
                    }
                    let _ = std::fs::rename(
                        other.join("links").join(format!("{iface}.mode")),
                        &mode_file,
                    );
                    for m in PINNED_MAPS {
                        let _ = std::fs::remove_file(other.join(m));
                    }
                    break;
                }
            }
        }
        if pin.exists() {
            // A previous agent's link, still forwarding: this program takes its place in
            // one step (bpf_link_update), no packet without a program.
            let adopted = aya::programs::links::PinnedLink::from_pin(&pin)
                .map_err(|e| DataplaneError::Pin(e.to_string()))
                .and_then(|p| {
                    let fd: aya::programs::links::FdLink = p.into();
                    let link = aya::programs::xdp::XdpLink::try_from(fd)
                        .map_err(|e| DataplaneError::Pin(e.to_string()))?;
                    Ok(program_mut(&mut self.ebpf)?.attach_to_link(link)?)
                });
            match adopted {
                Ok(id) => {
                    let mode = match std::fs::read_to_string(&mode_file).as_deref() {
                        Ok("generic") => AttachMode::Generic,
                        _ => AttachMode::Native,
                    };
                    log::info!(
                        "{iface}: took over the pinned XDP link (program replaced in place)"
                    );
                    self.links.push((iface.to_owned(), id, mode));
                    self.pinned_links.push((iface.to_owned(), pin, None));
                    return Ok(mode);
                }
                Err(e) => {
                    log::warn!(
                        "{iface}: the pinned link {} is unusable ({e}); attaching afresh",
                        pin.display()
                    );
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let prog = program_mut(&mut self.ebpf)?;
        let (id, mode) = attach_xdp(prog, iface)?;
        let link = prog.take_link(id)?;
        let fd = aya::programs::links::FdLink::try_from(link)
            .map_err(|e| DataplaneError::Pin(e.to_string()))?;
        let pinned = fd
            .pin(&pin)
            .map_err(|e| DataplaneError::Pin(e.to_string()))?;
        let _ = std::fs::write(
            &mode_file,
            if mode == AttachMode::Generic {
                "generic"
            } else {
                "native"
            },
        );
        self.pinned_links
            .push((iface.to_owned(), pin, Some(pinned)));
        Ok(mode)
    }

    fn table_entries(&self) -> Result<Vec<(&'static str, u64)>> {
        fn count<K: aya::Pod, V: aya::Pod>(ebpf: &Ebpf, map: &'static str) -> Result<u64> {
            let m = ebpf.map(map).ok_or(DataplaneError::MissingMap(map))?;
            let t: BpfHashMap<&MapData, K, V> =
                BpfHashMap::try_from(m).map_err(|source| DataplaneError::Map { map, source })?;
            Ok(t.keys().filter(|k| k.is_ok()).count() as u64)
        }
        use lb_common::{FlowKey, FlowKey6, FlowValue};
        let e = &self.ebpf;
        Ok(vec![
            (maps::FLOWS, count::<FlowKey, FlowValue>(e, maps::FLOWS)?),
            (maps::FLOWS6, count::<FlowKey6, FlowValue>(e, maps::FLOWS6)?),
            (
                maps::REVERSE,
                count::<FlowKey, ReverseValue>(e, maps::REVERSE)?,
            ),
            (
                maps::REVERSE6,
                count::<FlowKey6, ReverseValue>(e, maps::REVERSE6)?,
            ),
            (
                maps::EMBRYONIC,
                count::<FlowKey, FlowValue>(e, maps::EMBRYONIC)?,
            ),
            (
                maps::EMBRYONIC6,
                count::<FlowKey6, FlowValue>(e, maps::EMBRYONIC6)?,
            ),
            (
                maps::EMBRYONIC_REVERSE,
                count::<FlowKey, ReverseValue>(e, maps::EMBRYONIC_REVERSE)?,
            ),
            (
                maps::EMBRYONIC_REVERSE6,
                count::<FlowKey6, ReverseValue>(e, maps::EMBRYONIC_REVERSE6)?,
            ),
        ])
    }

    fn existing_targets(&self) -> Result<Vec<(u32, TargetValue)>> {
        if !self.adopted {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for id in 1..MAX_TARGETS {
            let v = self.targets.get(&id, 0).map_err(map_err(maps::TARGETS))?;
            if v.port != [0, 0] {
                out.push((id, v));
            }
        }
        Ok(out)
    }

    fn existing_owners(&self) -> Result<Vec<(OwnerMapKey, ReverseValue)>> {
        if !self.adopted {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for kv in self.owners.iter() {
            let (k, v) = kv.map_err(map_err(maps::OWNERS))?;
            out.push((OwnerMapKey::V4(k), v));
        }
        for kv in self.owners6.iter() {
            let (k, v) = kv.map_err(map_err(maps::OWNERS6))?;
            out.push((OwnerMapKey::V6(k), v));
        }
        Ok(out)
    }

    fn release(&mut self) {
        // Pinned links and maps stay in the kernel: dropping our handles detaches nothing.
        if !self.encap_links.is_empty() {
            let _ = self.set_probe_encap(&[]);
        }
        self.pinned_links.clear();
        self.links.clear();
    }

    fn set_probe_encap(&mut self, ifaces: &[String]) -> Result<()> {
        let name = lb_common::PROBE_ENCAP_PROGRAM_NAME;
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Program(
                aya::programs::ProgramError::UnexpectedProgramType,
            ))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        let mut kept = Vec::new();
        for (iface, id) in std::mem::take(&mut self.encap_links) {
            if ifaces.contains(&iface) {
                kept.push((iface, id));
            } else if let Err(e) = prog.detach(id) {
                log::warn!("{iface}: detaching the probe encapsulation: {e}");
            }
        }
        for iface in ifaces {
            if !kept.iter().any(|(i, _)| i == iface) {
                let id = prog.attach(iface, TcAttachType::Egress)?;
                log::info!("{iface}: tunnel health checks encapsulated on egress");
                kept.push((iface.clone(), id));
            }
        }
        self.encap_links = kept;
        Ok(())
    }

    fn detach_all(&mut self) {
        if !self.encap_links.is_empty() {
            let _ = self.set_probe_encap(&[]);
        }
        // Unpinned first: the link (and the maps) then go with our last handle.
        for (_, pin, held) in std::mem::take(&mut self.pinned_links) {
            let _ = std::fs::remove_file(&pin);
            let _ = std::fs::remove_file(pin.with_extension("mode"));
            drop(held);
        }
        if let Some(dir) = &self.pins {
            for m in PINNED_MAPS {
                let _ = std::fs::remove_file(dir.join(m));
            }
        }
        for (iface, id, _) in std::mem::take(&mut self.links) {
            match program_mut(&mut self.ebpf).map(|p| p.detach(id)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::warn!("{iface}: detach failed: {e}"),
                Err(e) => log::warn!("{iface}: program is gone: {e}"),
            }
        }
    }
}
