//! The decapsulation program on a `tunnel` target (`xlb decap attach|detach|status`). It runs
//! without an agent: `attach` pins its link and maps under [`PIN_ROOT`]/IFACE, so it stays
//! attached after the command exits, and `detach` removes the pins (which detaches it).
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::{
    DECAP_PROGRAM_NAME, DecapStat,
    limits::{DECAP_ADDRS_MAX, DECAP_STAT_SLOTS},
    maps,
};

use super::AttachMode;

/// Where `xlb decap attach` pins what must outlive it, one folder per interface.
pub const PIN_ROOT: &str = "/sys/fs/bpf/xlb/decap";

#[derive(Debug, thiserror::Error)]
pub enum DecapError {
    #[error("loading the decapsulation program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("decapsulation program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("link: {0}")]
    Link(#[from] aya::programs::links::LinkError),
    #[error("pinning under {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("interface {0:?} has no IPv4 or global IPv6 address: nothing would be decapsulated")]
    NoAddress(String),
    #[error(
        "interface {0:?} has {1} addresses; decapsulation accepts at most {max} (DECAP_ADDRS_MAX)",
        max = DECAP_ADDRS_MAX
    )]
    TooManyAddresses(String, usize),
    #[error("decapsulation is already attached to {0} (xlb decap detach {0} first)")]
    AlreadyAttached(String),
    #[error("decapsulation is not attached to {0}")]
    NotAttached(String),
    #[error(transparent)]
    Attach(#[from] super::DataplaneError),
}

type Result<T> = std::result::Result<T, DecapError>;

/// Counters of one attached program, by code.
pub type DecapCounters = Vec<(DecapStat, u64)>;

/// The folder of an interface's pins under `root`.
pub fn pin_dir(root: &Path, iface: &str) -> PathBuf {
    root.join(iface)
}

/// Make sure `root` is on a BPF filesystem, mounting one there if not.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    ensure_bpffs_mounting(root).map(drop)
}

/// As [`ensure_bpffs`]; true when this process had to mount the BPF filesystem (which may then
/// end with it, under `ip netns exec`), false when one was there already.
pub fn ensure_bpffs_mounting(root: &Path) -> Result<bool> {
    let io = |e| DecapError::Io(root.to_owned(), e);
    // Under the standard mount point, which a host may have as a bare directory of sysfs
    // (where nothing can be created): mount the BPF filesystem there first, as systemd does.
    let standard = Path::new(STANDARD_BPFFS);
    if root.starts_with(standard) && standard.is_dir() && !is_bpffs(standard) {
        mount_bpffs(standard)?;
        log::warn!(
            "mounted a BPF filesystem on {STANDARD_BPFFS}, which had none; if this runs under \
             `ip netns exec` (which gives each command its own /sys), that mount and the pins \
             in it end with this command and the program is detached: pass --pin-dir (the agent: \
             pin_dir) on a BPF filesystem that outlives it (mount -t bpf bpf DIR)"
        );
        std::fs::create_dir_all(root).map_err(io)?;
        return Ok(true);
    }
    std::fs::create_dir_all(root).map_err(io)?;
    if is_bpffs(root) {
        return Ok(false);
    }
    // The mount point is the root itself when it is not already inside a BPF filesystem.
    mount_bpffs(root).map(|()| true)
}

/// Where hosts mount the BPF filesystem.
const STANDARD_BPFFS: &str = "/sys/fs/bpf";

fn mount_bpffs(dir: &Path) -> Result<()> {
    let io = |e| DecapError::Io(dir.to_owned(), e);
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(dir)
        .status()
        .map_err(io)?;
    if !status.success() || !is_bpffs(dir) {
        return Err(DecapError::Io(
            dir.to_owned(),
            std::io::Error::other("cannot mount a BPF filesystem here (mount -t bpf bpf DIR)"),
        ));
    }
    Ok(())
}

/// Whether `p` is on a BPF filesystem (statfs magic 0xcafe4a11).
pub fn is_bpffs(p: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// `xlb decap attach`: load, accept the interface's IPv4 and global IPv6 addresses, attach, pin.
pub fn attach(root: &Path, iface: &str) -> Result<(AttachMode, Vec<IpAddr>)> {
    let addrs = interface_addresses(iface)?;
    if addrs.len() > DECAP_ADDRS_MAX as usize {
        return Err(DecapError::TooManyAddresses(iface.into(), addrs.len()));
    }
    ensure_bpffs(root)?;
    let mut d = Decap::load(crate::DECAP_OBJECT)?;
    for a in &addrs {
        d.add_address(*a)?;
    }
    let mode = d.attach_pinned(root, iface)?;
    Ok((mode, addrs))
}

/// The loaded (not attached) decapsulation object. It links the balancer's stage library,
/// whose maps come along: they are created with one entry, unused.
pub struct Decap {
    ebpf: Ebpf,
}

impl Decap {
    pub fn load(object: &[u8]) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for m in [
            maps::LISTENERS,
            maps::VIPS,
            maps::RINGS,
            maps::TARGETS,
            maps::FLOWS,
            maps::REVERSE,
            maps::PORT_FLAGS,
            maps::STATS,
            maps::LISTENER_STATS,
            maps::TARGET_STATS,
            maps::VIP_HINTS,
            maps::SETTINGS,
            maps::LISTENERS6,
            maps::VIPS6,
            maps::FLOWS6,
            maps::REVERSE6,
            "NEXT_HOPS",
            "REPLY_HOPS",
            "HANDOFF",
            maps::EMBRYONIC,
            maps::EMBRYONIC_REVERSE,
            maps::EMBRYONIC6,
            maps::EMBRYONIC_REVERSE6,
            maps::ALLOW4,
            maps::DENY4,
            maps::ALLOW6,
            maps::DENY6,
            maps::RULE_STATS,
        ] {
            loader.map_max_entries(m, 1);
        }
        let mut ebpf = loader.load(object)?;
        program(&mut ebpf)?.load()?;
        Ok(Self { ebpf })
    }

    /// Decapsulate packets whose outer destination is `a`.
    pub fn add_address(&mut self, a: IpAddr) -> Result<()> {
        match a {
            IpAddr::V4(a) => self.insert(maps::DECAP_ADDRS, a.octets()),
            IpAddr::V6(a) => self.insert(maps::DECAP_ADDRS6, a.octets()),
        }
    }

    fn insert<const N: usize>(&mut self, name: &'static str, key: [u8; N]) -> Result<()> {
        let err = |source| DecapError::Map { map: name, source };
        let map = self
            .ebpf
            .map_mut(name)
            .expect("the object declares its address maps");
        let mut addrs: BpfHashMap<&mut MapData, [u8; N], u8> =
            BpfHashMap::try_from(map).map_err(err)?;
        addrs.insert(key, 1, 0).map_err(err)
    }

    /// The program, for BPF_PROG_TEST_RUN.
    pub fn program(&mut self) -> Result<&mut Xdp> {
        program(&mut self.ebpf)
    }

    /// Counters, by code.
    pub fn stats(&self) -> Result<DecapCounters> {
        let map = self
            .ebpf
            .map(maps::DECAP_STATS)
            .expect("the object declares DECAP_STATS");
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(|source| DecapError::Map {
                map: maps::DECAP_STATS,
                source,
            })?;
        read_stats(&a)
    }

    /// Attach to `iface` in native mode for as long as this value lives (no pins). Rigs use it
    /// as the XDP program a veth needs to receive frames its peer sends with `XDP_TX`.
    pub fn attach(&mut self, iface: &str) -> Result<()> {
        program(&mut self.ebpf)?.attach(iface, XdpMode::Driver)?;
        Ok(())
    }

    /// Attach to `iface` and pin the link and the maps, so the program stays after this
    /// process exits. Returns the mode it got.
    pub fn attach_pinned(mut self, root: &Path, iface: &str) -> Result<AttachMode> {
        let dir = pin_dir(root, iface);
        if dir.join("link").exists() {
            return Err(DecapError::AlreadyAttached(iface.into()));
        }
        std::fs::create_dir_all(&dir).map_err(|e| DecapError::Io(dir.clone(), e))?;
        let prog = program(&mut self.ebpf)?;
        let (id, mode) = super::aya::attach_xdp(prog, iface)?;
        let link = prog.take_link(id)?;
        let fd: FdLink = link.try_into()?;
        let pin = |e| DecapError::Pin {
            path: dir.clone(),
            source: e,
        };
        for (name, file) in [(maps::DECAP_STATS, "stats"), (maps::DECAP_ADDRS, "addrs")] {
            let map = self.ebpf.map(name).expect("declared");
            map_data(map).pin(dir.join(file)).map_err(pin)?;
        }
        fd.pin(dir.join("link")).map_err(pin)?;
        Ok(mode)
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    let p = ebpf
        .program_mut(DECAP_PROGRAM_NAME)
        .ok_or(aya::programs::ProgramError::UnexpectedProgramType)?;
    Ok(p.try_into()?)
}

fn map_data(m: &Map) -> &MapData {
    match m {
        Map::HashMap(d) | Map::PerCpuArray(d) => d,
        _ => unreachable!("the decapsulation maps are a hash map and a per-CPU array"),
    }
}

fn read_stats<T: std::borrow::Borrow<MapData>>(a: &PerCpuArray<T, u64>) -> Result<DecapCounters> {
    let mut out = Vec::new();
    for s in DecapStat::ALL {
        let v = a.get(&(*s as u32), 0).map_err(|source| DecapError::Map {
            map: maps::DECAP_STATS,
            source,
        })?;
        out.push((*s, v.iter().sum()));
    }
    Ok(out)
}

/// Detach from `iface`: remove its pins (the link goes with the last reference).
pub fn detach_pinned(root: &Path, iface: &str) -> Result<()> {
    let dir = pin_dir(root, iface);
    let link = dir.join("link");
    if !link.exists() {
        return Err(DecapError::NotAttached(iface.into()));
    }
    let pinned = PinnedLink::from_pin(&link)?;
    let fd = pinned
        .unpin()
        .map_err(|e| DecapError::Io(link.clone(), e))?;
    drop(fd);
    for file in ["stats", "addrs"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    std::fs::remove_dir(&dir).map_err(|e| DecapError::Io(dir.clone(), e))?;
    Ok(())
}

/// Interfaces with decapsulation attached, and their counters.
pub fn status(root: &Path) -> Result<Vec<(String, DecapCounters)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for iface in names {
        let stats = pin_dir(root, &iface).join("stats");
        if !stats.exists() {
            continue;
        }
        let data = MapData::from_pin(&stats).map_err(|e| DecapError::Map {
            map: maps::DECAP_STATS,
            source: e,
        })?;
        let a: PerCpuArray<MapData, u64> =
            PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(|source| DecapError::Map {
                map: maps::DECAP_STATS,
                source,
            })?;
        out.push((iface, read_stats(&a)?));
    }
    Ok(out)
}

/// The IPv4 addresses and the IPv6 addresses other than link-local of `iface`.
pub fn interface_addresses(iface: &str) -> Result<Vec<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| DecapError::Io(PathBuf::from(iface), std::io::Error::from(e)))?;
    let mut out: Vec<IpAddr> = addrs
        .filter(|a| a.interface_name == iface)
        .filter_map(|a| {
            let a = a.address?;
            if let Some(s) = a.as_sockaddr_in() {
                return Some(IpAddr::V4(s.ip()));
            }
            let v6 = a.as_sockaddr_in6()?.ip();
            // fe80::/10 never carries a tunnel from the balancer.
            (v6.segments()[0] & 0xffc0 != 0xfe80).then_some(IpAddr::V6(v6))
        })
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(DecapError::NoAddress(iface.into()));
    }
    Ok(out)
}

const _: () = assert!(DECAP_STAT_SLOTS as usize > 4 && DECAP_ADDRS_MAX > 0);
