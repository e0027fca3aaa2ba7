//! The benchmark object's ABI, shared by its XDP programs (`src/main.rs`) and the host-side
//! benchmark (`tests/src/bin/bench`). Nothing here is part of the product's ABI.
#![no_std]

/// Map names, as the benchmark object declares them.
pub const BENCH_MAP: &str = "BENCH";
pub const BENCH_SINK_MAP: &str = "BENCH_SINK";

/// Most 8-byte words of the template packet that the measuring wrapper restores after each
/// repetition (80 bytes: Ethernet + IPv6 + TCP headers fit; an IPv4 TCP packet of the
/// benchmark restores 7, as before IPv6).
pub const RESTORE_WORDS: usize = 10;

/// Modes of [`BenchPacket`]: the same flow every time.
pub const SAME_FLOW: u32 = 0;
/// Each repetition is a tuple never seen before (the next of 50,000 source ports x 65,536
/// source addresses: 3.2 billion repetitions before the first repeats).
pub const NEW_FLOW: u32 = 1;
/// Repetitions cycle through [`BenchPacket::flows`] tuples: many flows, each seen again and
/// again.
pub const MANY_FLOWS: u32 = 2;
/// Repetitions cycle through [`BenchPacket::flows`] clients: flow `i`'s source address is the
/// template's plus `i` in its last 16 bits, its ports the template's (one flow per client).
pub const MANY_CLIENTS: u32 = 3;
/// As [`MANY_CLIENTS`], on the destination: replies to `flows` clients in turn.
pub const REPLIES_TO_MANY_CLIENTS: u32 = 4;
/// Flow `i` of [`NEW_FLOW`] and [`MANY_FLOWS`] has source port `FIRST_PORT + i % PORTS` and
/// the template's source address plus `i / PORTS` in its last 16 bits.
pub const FIRST_PORT: u16 = 1024;
pub const PORTS: u32 = 50_000;

/// `BENCH[0]`: the packet the measuring wrapper restores.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchPacket {
    pub mode: u32,
    /// Tuples [`MANY_FLOWS`] cycles through.
    pub flows: u32,
    /// Words of `words` restored: as many as the packet holds, at most [`RESTORE_WORDS`].
    pub words_used: u32,
    pub _pad: u32,
    /// The packet's first bytes, as native-endian words.
    pub words: [u64; RESTORE_WORDS],
}

impl Default for BenchPacket {
    fn default() -> Self {
        Self {
            mode: SAME_FLOW,
            flows: 1,
            words_used: 0,
            _pad: 0,
            words: [0; RESTORE_WORDS],
        }
    }
}

const _: () = assert!(core::mem::size_of::<BenchPacket>() == 96);

// SAFETY: repr(C), Copy, no padding (asserted above), integers only: every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for BenchPacket {}
