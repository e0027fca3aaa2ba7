//! The maps. Sizes here are placeholders: the agent sets the real ones from the config at load.
use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    Counters, FlowKey, FlowKey6, FlowValue, ListenerKey, ListenerKey6, ListenerValue, OwnerKey,
    OwnerKey6, RateKey, ReverseValue, RuleKey4, RuleKey6, Settings, TAIL_SLOTS, TargetValue,
    VipKey, VipKey6,
    limits::{
        DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_LISTENERS, DEFAULT_RING_SIZE, MAX_LISTENERS,
        MAX_SOURCE_RULES, MAX_TARGETS, MIN_EMBRYONIC, OWNER_ENTRIES, PORT_FLAG_ENTRIES,
        RATE_SOURCES, REPLY_HOP_SLOTS, RINGS_PER_LISTENER, RULE_STAT_SLOTS, STAT_SLOTS,
        VIP_HINT_ENTRIES,
    },
};

#[map]
pub static LISTENERS: HashMap<ListenerKey, ListenerValue> =
    HashMap::with_max_entries(DEFAULT_MAX_LISTENERS, 0);

#[map]
pub static VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_LISTENERS, 0);

/// IPv6 listeners, VIPs, connections and return paths: the same values, 16-byte addresses in
/// the keys. Apart from the IPv4 maps so an IPv4 lookup never hashes a 16-byte address.
#[map]
pub static LISTENERS6: HashMap<ListenerKey6, ListenerValue> =
    HashMap::with_max_entries(DEFAULT_MAX_LISTENERS, 0);

#[map]
pub static VIPS6: HashMap<VipKey6, u32> = HashMap::with_max_entries(DEFAULT_MAX_LISTENERS, 0);

#[map]
pub static FLOWS6: LruHashMap<FlowKey6, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, BPF_F_NO_COMMON_LRU);

#[map]
pub static REVERSE6: LruHashMap<FlowKey6, ReverseValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, BPF_F_NO_COMMON_LRU);

/// Maglev rings of all listeners, back to back: entry = target id, 0 = empty. Mappable, so
/// the agent writes a whole table with one copy instead of M syscalls.
#[map]
pub static RINGS: Array<u32> = Array::with_max_entries(
    DEFAULT_MAX_LISTENERS * RINGS_PER_LISTENER * DEFAULT_RING_SIZE,
    BPF_F_MMAPABLE,
);

#[map]
pub static TARGETS: Array<TargetValue> = Array::with_max_entries(MAX_TARGETS, 0);

/// The connection table. One table shared by all CPUs (a flow keeps its target whichever CPU
/// sees its packets; veth and many NICs do not pin a flow to a CPU), with per-CPU LRU lists so
/// inserts never contend on one list lock.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, BPF_F_NO_COMMON_LRU);

/// Return path, keyed by the reply's 5-tuple (target -> client).
#[map]
pub static REVERSE: LruHashMap<FlowKey, ReverseValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, BPF_F_NO_COMMON_LRU);

/// The listener owning each NAT target's replies, per protocol (see `lb_common::OwnerKey`):
/// its flows need no `REVERSE` entry, so a new flow costs one insert.
#[map]
pub static OWNERS: HashMap<OwnerKey, ReverseValue> = HashMap::with_max_entries(OWNER_ENTRIES, 0);
#[map]
pub static OWNERS6: HashMap<OwnerKey6, ReverseValue> = HashMap::with_max_entries(OWNER_ENTRIES, 0);

/// Pre-filter indexed by port: `PORT_LISTENER` / `PORT_TARGET` bits.
#[map]
pub static PORT_FLAGS: Array<u8> = Array::with_max_entries(PORT_FLAG_ENTRIES, 0);

/// Pre-filter before `VIPS`: see `lb_common::vip_hint_index`.
#[map]
pub static VIP_HINTS: Array<u8> = Array::with_max_entries(VIP_HINT_ENTRIES, 0);

/// A target's next hop as the FIB last gave it, per CPU (see `forward`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    pub expires_ns: u64,
    pub ingress: u32,
    pub egress: u32,
    /// Largest IPv4 total length that passed the FIB's MTU check on this route.
    pub max_len: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad: [u8; 2],
}

impl NextHop {
    /// No hop: expired since boot.
    pub const NONE: Self = Self {
        expires_ns: 0,
        ingress: 0,
        egress: 0,
        max_len: 0,
        smac: [0; 6],
        dmac: [0; 6],
        _pad: [0; 2],
    };
}

#[map]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(MAX_TARGETS, 0);

/// A client's next hop as the FIB last gave it for a reply, per CPU, in the slot its address
/// hashes to (see `forward::Cache::Client`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ReplyHop {
    pub hop: NextHop,
    /// The client's address (an address slot's four words) and family: whose hop it is.
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 7],
}

#[map]
pub static REPLY_HOPS: PerCpuArray<ReplyHop> = PerCpuArray::with_max_entries(REPLY_HOP_SLOTS, 0);

/// Packets per verdict / event code (`lb_common::Stat`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

#[map]
pub static LISTENER_STATS: PerCpuArray<Counters> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_LISTENERS + 1, 0);

#[map]
pub static TARGET_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_TARGETS, 0);

/// Node-wide settings (tunnel source prefix, ICMP answers), written by the agent.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Programs the balancer hands packets to: `TAIL_CALLS[TAIL_IPV6]` is `xlb6`,
/// `TAIL_CALLS[TAIL_ICMP6]` is `xlb6_icmp`, `TAIL_CALLS[TAIL_TUNNEL6]` is `xlb_tunnel6`.
#[map]
pub static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(TAIL_SLOTS, 0);

/// What a program hands to the one it tail-calls, per CPU (a tail call runs on the same CPU in
/// the same run, so the slot cannot change in between): the target id for `xlb_tunnel6`.
#[map]
pub static HANDOFF: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Source rules of all listeners: LPM tries keyed by (listener id, source prefix), value the
/// rule id (for `RULE_STATS`).
#[map]
pub static ALLOW4: LpmTrie<RuleKey4, u32> = LpmTrie::with_max_entries(MAX_SOURCE_RULES, 0);
#[map]
pub static DENY4: LpmTrie<RuleKey4, u32> = LpmTrie::with_max_entries(MAX_SOURCE_RULES, 0);
#[map]
pub static ALLOW6: LpmTrie<RuleKey6, u32> = LpmTrie::with_max_entries(MAX_SOURCE_RULES, 0);
#[map]
pub static DENY6: LpmTrie<RuleKey6, u32> = LpmTrie::with_max_entries(MAX_SOURCE_RULES, 0);

/// Packets per rule id, then per listener id those no allow rule matched.
#[map]
pub static RULE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(RULE_STAT_SLOTS, 0);

/// TCP flows seen only as a SYN (and their return paths, NAT), apart from `FLOWS`/`REVERSE`:
/// a flow moves to the connection table with its first packet after the SYN, so a SYN flood
/// (spoofed sources never send one) churns these tables only.
#[map]
pub static EMBRYONIC: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(MIN_EMBRYONIC, BPF_F_NO_COMMON_LRU);
#[map]
pub static EMBRYONIC_REVERSE: LruHashMap<FlowKey, ReverseValue> =
    LruHashMap::with_max_entries(MIN_EMBRYONIC, BPF_F_NO_COMMON_LRU);
#[map]
pub static EMBRYONIC6: LruHashMap<FlowKey6, FlowValue> =
    LruHashMap::with_max_entries(MIN_EMBRYONIC, BPF_F_NO_COMMON_LRU);
#[map]
pub static EMBRYONIC_REVERSE6: LruHashMap<FlowKey6, ReverseValue> =
    LruHashMap::with_max_entries(MIN_EMBRYONIC, BPF_F_NO_COMMON_LRU);

/// New-flow rate buckets (`lb_common::rate`): per listener id (`new_flows_per_second`),
/// shared by all CPUs so the limit is the listener's, not each CPU's.
#[map]
pub static LISTENER_RATE: Array<u64> = Array::with_max_entries(MAX_LISTENERS + 1, 0);

/// Per (listener, source /32 or /64) (`new_flows_per_second_per_source`); LRU, so a flood of
/// spoofed sources churns this table, never the connection table.
#[map]
pub static SOURCE_RATE: LruHashMap<RateKey, u64> = LruHashMap::with_max_entries(RATE_SOURCES, 0);
