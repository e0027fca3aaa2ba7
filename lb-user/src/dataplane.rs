//! The data plane as the agent sees it: a trait, the real (aya) implementation, and an
//! in-memory fake for unit tests. No `if testing` in the logic that drives it.
use std::collections::HashMap;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::{
    Counters, ListenerKey, ListenerValue, TargetValue, VipKey,
    limits::{MAX_TARGETS, PORT_FLAG_ENTRIES, RINGS_PER_LISTENER, STAT_SLOTS},
    maps,
};

use crate::config::Tables;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("ring write at {base}+{len} is outside the RINGS map")]
    RingOutOfBounds { base: usize, len: usize },
    #[error("mapping RINGS into memory: {0}")]
    Mmap(std::io::Error),
    #[error(
        "interface {iface}: cannot attach XDP in native mode ({native}) nor in generic mode ({generic})"
    )]
    Attach {
        iface: String,
        native: String,
        generic: String,
    },
}

type Result<T> = std::result::Result<T, DataplaneError>;

/// Counters read back from the data plane, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Indexed by `lb_common::Stat` code.
    pub stats: Vec<u64>,
    /// Indexed by listener id.
    pub listeners: Vec<Counters>,
    /// Indexed by target id.
    pub targets: Vec<Counters>,
}

/// Everything the control plane writes to, or reads from, the data plane.
pub trait Dataplane {
    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<()>;
    /// Write `ring` into `RINGS` starting at `base`.
    fn write_ring(&mut self, base: u32, ring: &[u32]) -> Result<()>;
    fn set_listener(&mut self, key: ListenerKey, value: ListenerValue) -> Result<()>;
    fn remove_listener(&mut self, key: &ListenerKey) -> Result<()>;
    fn set_vip(&mut self, key: VipKey, listeners: u32) -> Result<()>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<()>;
    fn set_port_flags(&mut self, port: u16, flags: u8) -> Result<()>;
    /// `VIP_HINTS[index]`: non-zero when some VIP maps to `index`.
    fn set_vip_hint(&mut self, index: u32, on: bool) -> Result<()>;
    fn snapshot(&self) -> Result<Snapshot>;
}

/// How an interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Native,
    Generic,
}

/// The real data plane: the XDP object loaded into the kernel.
pub struct AyaDataplane {
    ebpf: Ebpf,
    listeners: BpfHashMap<MapData, ListenerKey, ListenerValue>,
    vips: BpfHashMap<MapData, VipKey, u32>,
    ring_memory: RingMemory,
    /// Kept open: programs loaded later (the benchmark's) are relocated against its fd.
    _ring_map: aya::maps::Map,
    targets: Array<MapData, TargetValue>,
    port_flags: Array<MapData, u8>,
    vip_hints: Array<MapData, u8>,
    stats: PerCpuArray<MapData, u64>,
    listener_stats: PerCpuArray<MapData, Counters>,
    target_stats: PerCpuArray<MapData, Counters>,
    /// (program, interface, link, mode)
    links: Vec<(String, String, XdpLinkId, AttachMode)>,
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

impl AyaDataplane {
    /// Load the object with map sizes from `tables` and run the verifier. Attaches nothing.
    pub fn load(object: &[u8], tables: &Tables) -> Result<Self> {
        let rings = tables.max_listeners * RINGS_PER_LISTENER * tables.maglev_size;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::LISTENERS, tables.max_listeners)
            .map_max_entries(maps::VIPS, tables.max_listeners)
            .map_max_entries(maps::RINGS, rings)
            .map_max_entries(maps::FLOWS, tables.max_connections)
            .map_max_entries(maps::REVERSE, tables.max_connections)
            .map_max_entries(maps::LISTENER_STATS, tables.max_listeners + 1)
            .load(object)?;
        let prog: &mut Xdp = program_mut(&mut ebpf)?;
        prog.load()?;
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
        let ring_memory = RingMemory::map(ring_fd, rings)?;
        Ok(Self {
            listeners: take(&mut ebpf, maps::LISTENERS)?,
            vips: take(&mut ebpf, maps::VIPS)?,
            ring_memory,
            _ring_map: ring_map,
            targets: take(&mut ebpf, maps::TARGETS)?,
            port_flags: take(&mut ebpf, maps::PORT_FLAGS)?,
            vip_hints: take(&mut ebpf, maps::VIP_HINTS)?,
            stats: take(&mut ebpf, maps::STATS)?,
            listener_stats: take(&mut ebpf, maps::LISTENER_STATS)?,
            target_stats: take(&mut ebpf, maps::TARGET_STATS)?,
            ebpf,
            links: Vec::new(),
        })
    }

    /// The loaded program (tests run it through BPF_PROG_TEST_RUN).
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program_mut(&mut self.ebpf)
    }

    /// A map the agent does not use itself (the benchmark's template).
    pub fn extra_map(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.ebpf.map_mut(name)
    }

    /// Another XDP program of the object (the benchmark's programs), loaded on first use.
    pub fn extra_program(&mut self, name: &str) -> Result<&mut Xdp> {
        let prog = program_named(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        Ok(prog)
    }

    /// Attach in native (driver) mode, falling back to generic (SKB) mode.
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode> {
        self.attach_program(lb_common::PROGRAM_NAME, iface)
    }

    /// Attach the object's program `name` (the balancer, or a benchmark program) to `iface`.
    pub fn attach_program(&mut self, name: &str, iface: &str) -> Result<AttachMode> {
        let prog = if name == lb_common::PROGRAM_NAME {
            program_named(&mut self.ebpf, name)?
        } else {
            self.extra_program(name)?
        };
        let (id, mode) = match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Native),
            Err(native) => match prog.attach(iface, XdpMode::Skb) {
                Ok(id) => {
                    log::warn!(
                        "{iface}: native XDP refused ({native}); attached in generic (SKB) mode, which is much slower"
                    );
                    (id, AttachMode::Generic)
                }
                Err(generic) => {
                    return Err(DataplaneError::Attach {
                        iface: iface.to_owned(),
                        native: native.to_string(),
                        generic: generic.to_string(),
                    });
                }
            },
        };
        self.links
            .push((name.to_owned(), iface.to_owned(), id, mode));
        Ok(mode)
    }

    pub fn attached(&self) -> impl Iterator<Item = (&str, AttachMode)> {
        self.links.iter().map(|(_, i, _, m)| (i.as_str(), *m))
    }

    /// Detach from every interface (also done on drop).
    pub fn detach_all(&mut self) {
        for (name, iface, id, _) in std::mem::take(&mut self.links) {
            let prog: Option<&mut Xdp> =
                self.ebpf.program_mut(&name).and_then(|p| p.try_into().ok());
            match prog.map(|p| p.detach(id)) {
                Some(Ok(())) => {}
                Some(Err(e)) => log::warn!("{iface}: detach failed: {e}"),
                None => log::warn!("{iface}: program {name} is gone"),
            }
        }
    }
}

impl Drop for AyaDataplane {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// The RINGS array mapped into the agent's memory (the map is BPF_F_MMAPABLE). The kernel
/// stores array elements 8-byte aligned, so each u32 slot is the low half of a u64 here.
///
/// Only the idle copy of a listener's table is ever written; the program starts reading it
/// after the listener update that flips to it, a syscall that orders the writes before it.
struct RingMemory {
    ptr: std::ptr::NonNull<u64>,
    entries: usize,
    len: usize,
    /// Keeps the map alive as long as the mapping.
    _fd: std::os::fd::OwnedFd,
}

impl RingMemory {
    fn map(fd: std::os::fd::OwnedFd, entries: u32) -> Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let entries = entries as usize;
        let len = (entries * std::mem::size_of::<u64>()).div_ceil(page) * page;
        let raw = fd.as_raw_fd();
        // SAFETY: mapping `len` bytes of a BPF_F_MMAPABLE array map of at least that size,
        // shared, from offset 0; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap(std::io::Error::last_os_error()));
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u64>())
            .ok_or(DataplaneError::Mmap(std::io::ErrorKind::Other.into()))?;
        Ok(Self {
            ptr,
            entries,
            len,
            _fd: fd,
        })
    }

    fn slots(&mut self) -> &mut [u64] {
        // SAFETY: the mapping holds `entries` 8-byte slots, lives until drop, and `&mut self` makes
        // this the only view of it in the agent.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.entries) }
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
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

impl Dataplane for AyaDataplane {
    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<()> {
        self.targets
            .set(id, value, 0)
            .map_err(map_err(maps::TARGETS))
    }

    fn write_ring(&mut self, base: u32, ring: &[u32]) -> Result<()> {
        let base = base as usize;
        let slots = self.ring_memory.slots();
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

    fn set_listener(&mut self, key: ListenerKey, value: ListenerValue) -> Result<()> {
        self.listeners
            .insert(key, value, 0)
            .map_err(map_err(maps::LISTENERS))
    }

    fn remove_listener(&mut self, key: &ListenerKey) -> Result<()> {
        self.listeners.remove(key).map_err(map_err(maps::LISTENERS))
    }

    fn set_vip(&mut self, key: VipKey, listeners: u32) -> Result<()> {
        self.vips
            .insert(key, listeners, 0)
            .map_err(map_err(maps::VIPS))
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.vips.remove(key).map_err(map_err(maps::VIPS))
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

    fn snapshot(&self) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        for i in 0..STAT_SLOTS {
            let v = self.stats.get(&i, 0).map_err(map_err(maps::STATS))?;
            s.stats.push(sum(&v, |a, b| *a += *b));
        }
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
        Ok(s)
    }
}

/// An in-memory data plane that records every write, in order.
#[derive(Default, Debug)]
pub struct FakeDataplane {
    pub targets: HashMap<u32, TargetValue>,
    pub rings: HashMap<u32, u32>,
    pub listeners: HashMap<ListenerKey, ListenerValue>,
    pub vips: HashMap<VipKey, u32>,
    pub port_flags: HashMap<u16, u8>,
    pub vip_hints: HashMap<u32, bool>,
    /// One line per write, e.g. "target 3", "ring 0", "listener 198.18.100.10:80/6".
    pub log: Vec<String>,
}

impl FakeDataplane {
    /// The ring a listener currently points at, read back as the XDP program would.
    pub fn ring_of(&self, key: &ListenerKey) -> Vec<u32> {
        let l = &self.listeners[key];
        (l.ring_base..l.ring_base + l.ring_size)
            .map(|i| self.rings.get(&i).copied().unwrap_or(0))
            .collect()
    }
}

impl Dataplane for FakeDataplane {
    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<()> {
        self.log.push(format!("target {id} flags={}", value.flags));
        self.targets.insert(id, value);
        Ok(())
    }
    fn write_ring(&mut self, base: u32, ring: &[u32]) -> Result<()> {
        self.log.push(format!("ring {base}"));
        for (i, id) in (base..).zip(ring) {
            self.rings.insert(i, *id);
        }
        Ok(())
    }
    fn set_listener(&mut self, key: ListenerKey, value: ListenerValue) -> Result<()> {
        self.log.push(format!(
            "listener {} base={}",
            describe(&key),
            value.ring_base
        ));
        self.listeners.insert(key, value);
        Ok(())
    }
    fn remove_listener(&mut self, key: &ListenerKey) -> Result<()> {
        self.log.push(format!("remove listener {}", describe(key)));
        self.listeners.remove(key);
        Ok(())
    }
    fn set_vip(&mut self, key: VipKey, listeners: u32) -> Result<()> {
        self.log.push(format!("vip {:?} {listeners}", key.addr));
        self.vips.insert(key, listeners);
        Ok(())
    }
    fn remove_vip(&mut self, key: &VipKey) -> Result<()> {
        self.log.push(format!("remove vip {:?}", key.addr));
        self.vips.remove(key);
        Ok(())
    }
    fn set_port_flags(&mut self, port: u16, flags: u8) -> Result<()> {
        self.log.push(format!("port {port} {flags}"));
        self.port_flags.insert(port, flags);
        Ok(())
    }
    fn set_vip_hint(&mut self, index: u32, on: bool) -> Result<()> {
        self.log.push(format!("vip hint {index} {on}"));
        self.vip_hints.insert(index, on);
        Ok(())
    }
    fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot {
            stats: vec![0; STAT_SLOTS as usize],
            listeners: vec![Counters::default(); 1 + self.listeners.len()],
            targets: vec![Counters::default(); MAX_TARGETS as usize],
        })
    }
}

fn describe(k: &ListenerKey) -> String {
    let a = k.addr;
    format!(
        "{}.{}.{}.{}:{}/{}",
        a[0],
        a[1],
        a[2],
        a[3],
        u16::from_be_bytes(k.port),
        k.proto
    )
}

const _: () = assert!(PORT_FLAG_ENTRIES == 65_536);
