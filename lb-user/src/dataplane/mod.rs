//! The data plane as the agent sees it: the [`Dataplane`] trait, its aya implementation (the
//! XDP object in the kernel), an in-memory fake for unit tests, the [`reconcile::Reconciler`]
//! that projects the model onto the maps, and the Maglev tables it writes.
//!
//! Everything that turns model types (addresses, endpoints) into map keys and values is in
//! [`keys`]; nothing else in the agent knows the ABI's byte layouts.
pub mod aya;
pub mod decap;
#[cfg(test)]
pub mod fake;
pub mod keys;
pub mod maglev;
pub mod reconcile;

use lb_common::{Counters, ListenerValue, ReverseValue, Settings, TargetValue};

pub use self::keys::{ListenerMapKey, OwnerMapKey, RuleMapKey, VipMapKey};

pub use self::aya::AyaDataplane;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP object failed: {0}")]
    Load(#[from] ::aya::EbpfError),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: ::aya::maps::MapError,
    },
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("program: {0}")]
    Program(#[from] ::aya::programs::ProgramError),
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
    #[error("pinning: {0}")]
    Pin(String),
    #[error("this data plane cannot do that: {0}")]
    Unsupported(&'static str),
    /// A failure the fake data plane was told to produce.
    #[cfg(test)]
    #[error("injected failure at write {0}")]
    Injected(usize),
}

pub type Result<T> = std::result::Result<T, DataplaneError>;

/// Counters read back from the data plane, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Indexed by `lb_common::Stat` code.
    pub stats: Vec<u64>,
    /// Indexed by listener id.
    pub listeners: Vec<Counters>,
    /// Indexed by target id.
    pub targets: Vec<Counters>,
    /// `RULE_STATS`: packets per source-rule id, then per listener id "no allow rule matched".
    pub rules: Vec<u64>,
}

/// How an interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    Native,
    Generic,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }
}

/// Everything the control plane writes to, or reads from, the data plane.
pub trait Dataplane {
    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<()>;
    /// Write `ring` into `RINGS` starting at `base`.
    fn write_ring(&mut self, base: u32, ring: &[u32]) -> Result<()>;
    fn set_listener(&mut self, key: ListenerMapKey, value: ListenerValue) -> Result<()>;
    fn remove_listener(&mut self, key: &ListenerMapKey) -> Result<()>;
    fn set_vip(&mut self, key: VipMapKey, listeners: u32) -> Result<()>;
    fn remove_vip(&mut self, key: &VipMapKey) -> Result<()>;
    fn set_port_flags(&mut self, port: u16, flags: u8) -> Result<()>;
    /// `VIP_HINTS[index]`: non-zero when some VIP maps to `index`.
    fn set_vip_hint(&mut self, index: u32, on: bool) -> Result<()>;
    /// A source rule's trie entry, its value the rule id (`RULE_STATS` slot).
    fn set_rule(&mut self, key: RuleMapKey, id: u32) -> Result<()>;
    fn remove_rule(&mut self, key: &RuleMapKey) -> Result<()>;
    /// `OWNERS[key]`: the listener whose flows to this NAT target keep no `REVERSE` entry.
    fn set_owner(&mut self, key: OwnerMapKey, value: ReverseValue) -> Result<()>;
    fn remove_owner(&mut self, key: &OwnerMapKey) -> Result<()>;
    /// `SETTINGS[0]`: node-wide settings (the tunnel source prefix, ICMP answers).
    fn set_settings(&mut self, s: Settings) -> Result<()>;
    fn snapshot(&self) -> Result<Snapshot>;
    /// Attach the balancer to `iface`: native mode, generic (SKB) mode as the fallback.
    fn attach(&mut self, iface: &str) -> Result<AttachMode>;
    /// Detach from every interface (also done when the data plane is dropped).
    fn detach_all(&mut self);
    /// Run the probe encapsulation (TC egress) on exactly these interfaces: the ones `tunnel`
    /// health-check probes leave by.
    fn set_probe_encap(&mut self, ifaces: &[String]) -> Result<()>;
    /// Run one frame through the real program (BPF_PROG_TEST_RUN) as if it arrived on
    /// `ingress` (an ifindex): the return value, the frame as it leaves, and the counters (by
    /// code) that rose. The run is a real one: it counts, and creates state as a packet does.
    fn test_frame(&mut self, _frame: &[u8], _ingress: u32) -> Result<FrameRun> {
        Err(DataplaneError::Unsupported("running a frame"))
    }
    /// The targets a previous agent left in a pinned `TARGETS` (id, value), for the
    /// reconciler to keep their ids; empty when nothing was adopted.
    fn existing_targets(&self) -> Result<Vec<(u32, TargetValue)>> {
        Ok(Vec::new())
    }
    /// The reply owners a previous agent left in a pinned data plane (its flows without a
    /// `REVERSE` entry depend on them); empty when nothing was adopted.
    fn existing_owners(&self) -> Result<Vec<(OwnerMapKey, ReverseValue)>> {
        Ok(Vec::new())
    }
    /// Entries in each connection table now (name, entries), by walking its keys: a cost
    /// that grows with the table (about a microsecond per entry), so for scrapes, not for
    /// every status.
    fn table_entries(&self) -> Result<Vec<(&'static str, u64)>> {
        Ok(Vec::new())
    }
    /// Let go of the data plane without detaching it (a pinned one keeps forwarding).
    fn release(&mut self) {
        self.detach_all();
    }
    /// The connection entry of `key`: the target id, and whether it is embryonic (a SYN seen
    /// only). Read only.
    fn connection(&self, _key: &ConnKey) -> Result<Option<(u32, bool)>> {
        Ok(None)
    }
}

/// A flow's key in the connection tables of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnKey {
    V4(lb_common::FlowKey),
    V6(lb_common::FlowKey6),
}

/// What [`Dataplane::test_frame`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameRun {
    pub retval: u32,
    pub out: Vec<u8>,
    /// Counter codes that rose (verdict and events).
    pub rose: Vec<u32>,
}
