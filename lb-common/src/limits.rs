//! Every limit of the data plane, with its unit. Userspace validates configs against these.

/// Maglev table size M used when the config names none. Prime; M > 100 * targets keeps the
/// imbalance under 1 %.
pub const DEFAULT_RING_SIZE: u32 = 65_537;
/// Smallest accepted Maglev table size (must also be prime).
pub const MIN_RING_SIZE: u32 = 251;
/// Largest accepted Maglev table size.
pub const MAX_RING_SIZE: u32 = 1_048_573;
/// Largest Maglev ring memory (bytes) the agent will allocate: listeners * 2 rings * M * 4 bytes.
pub const MAX_RING_BYTES: u64 = 512 * 1024 * 1024;
/// Each listener owns two ring slots; a table update writes the idle one and then flips.
pub const RINGS_PER_LISTENER: u32 = 2;

/// Listeners the data plane holds when the config names no number.
pub const DEFAULT_MAX_LISTENERS: u32 = 16;
/// Upper bound for `tables.max_listeners`.
pub const MAX_LISTENERS: u32 = 1024;

/// Size of the target array. Target id 0 is never used ("unset"), so 4095 targets fit.
pub const MAX_TARGETS: u32 = 4096;
/// Entries of `OWNERS` (and of `OWNERS6`): one per target and protocol.
pub const OWNER_ENTRIES: u32 = 2 * MAX_TARGETS;

/// Connection-table entries when the config names no number.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 262_144;
/// Bounds for `tables.max_connections`.
pub const MIN_CONNECTIONS: u32 = 1024;
pub const MAX_CONNECTIONS: u32 = 16_777_216;

/// A UDP flow idle this long (seconds) is balanced afresh on its next packet (AWS NLB: 120 s).
pub const DEFAULT_UDP_IDLE_TIMEOUT_S: u32 = 120;
/// Bounds for a listener's `udp_idle_timeout`.
pub const MIN_UDP_IDLE_TIMEOUT_S: u32 = 1;
pub const MAX_UDP_IDLE_TIMEOUT_S: u32 = 3600;

/// Entries of the per-port pre-filter array: one per TCP/UDP port.
pub const PORT_FLAG_ENTRIES: u32 = 65_536;

/// Number of slots in the per-reason counter array (see [`crate::Stat`]).
pub const STAT_SLOTS: u32 = 64;

/// Entries of the VIP pre-filter array (indexed by a VIP's last two octets).
pub const VIP_HINT_ENTRIES: u32 = 65_536;

/// How long the program reuses a target's next hop (egress interface and MACs) from its last
/// FIB lookup before asking the kernel again: a route or neighbour change is seen within this.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// Slots of the per-CPU next-hop cache of replies, direct-mapped by the client's address (a
/// power of two): a reply to a client seen in the last [`NEXT_HOP_TTL_NS`] whose slot no other
/// client took meanwhile skips the FIB lookup. Past this many active clients per CPU, replies
/// ask the FIB as they did without the cache.
pub const REPLY_HOP_SLOTS: u32 = 4096;

/// Slots of the decapsulation program's counter array (see [`crate::DecapStat`]).
pub const DECAP_STAT_SLOTS: u32 = 8;

/// Addresses one decapsulation program accepts as outer destinations.
pub const DECAP_ADDRS_MAX: u32 = 64;

/// Source rules (`allow_sources`, `deny_sources`) of all listeners together; rule ids are
/// 1..MAX_SOURCE_RULES (0 unused).
pub const MAX_SOURCE_RULES: u32 = 4096;

/// Slots of `RULE_STATS`: one per rule id, then three per listener id ("no allow rule
/// matched", "over `new_flows_per_second`", "over `new_flows_per_second_per_source`").
pub const RULE_STAT_SLOTS: u32 = MAX_SOURCE_RULES + 3 * (MAX_LISTENERS + 1);

/// Largest `new_flows_per_second` / `new_flows_per_second_per_source` (flows per second).
pub const MAX_NEW_FLOW_RATE: u32 = 10_000_000;

/// Sources whose new-flow rate is tracked at once, all listeners together (an LRU table: a
/// source unseen for long gives its slot to a new one, which starts with a full bucket).
pub const RATE_SOURCES: u32 = 65_536;

/// Entries of the embryonic tables (TCP flows seen only as a SYN): this fraction of
/// `tables.max_connections`, at least [`MIN_EMBRYONIC`]. A SYN flood churns these alone. A
/// sixteenth (16,384 of the default 262,144) keeps the table of every SYN's insert within a
/// core's cache: a new TCP flow cost 455-477 ns with a quarter, 345-363 with a sixteenth
/// (BENCHMARKS.md). Handshakes in flight are far fewer; one churned out by a flood still
/// reaches its target (Maglev) and is inserted with its next packet.
pub const EMBRYONIC_DIVISOR: u32 = 16;
pub const MIN_EMBRYONIC: u32 = 1024;

/// Entries of each embryonic table for a connection table of `max_connections`.
pub const fn embryonic_entries(max_connections: u32) -> u32 {
    let n = max_connections / EMBRYONIC_DIVISOR;
    if n < MIN_EMBRYONIC { MIN_EMBRYONIC } else { n }
}
