//! The benchmark's own XDP object (bench-ebpf): the balancer built from the same stages as the
//! product's, plus the measuring programs. It is loaded through the agent's `AyaDataplane`, so
//! its maps are sized and filled exactly as the product's are.
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use xlb::{
    dataplane::{AyaDataplane, DataplaneError},
    model::config::Tables,
};
use xlb_bench_abi::{BENCH_MAP, BENCH_SINK_MAP, BenchPacket, RESTORE_WORDS};

/// The object, built by this crate's build script.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-bench-ebpf"));

pub fn load(tables: &Tables) -> AyaDataplane {
    AyaDataplane::load(BENCH_OBJECT, tables).expect("the benchmark object loads and verifies")
}

/// One of the object's programs, loaded on first use.
pub fn program<'a>(dp: &'a mut AyaDataplane, name: &str) -> &'a mut Xdp {
    let prog: &mut Xdp = dp
        .object_mut()
        .program_mut(name)
        .unwrap_or_else(|| panic!("no program {name} in the benchmark object"))
        .try_into()
        .expect("an XDP program");
    if prog.fd().is_err() {
        prog.load().expect("loads");
    }
    prog
}

/// Attach program `name` to `iface` in native mode (the packet-rate rig needs it); the link
/// goes when `dp` is dropped.
pub fn attach(dp: &mut AyaDataplane, name: &str, iface: &str) -> Result<(), DataplaneError> {
    program(dp, name).attach(iface, XdpMode::Driver)?;
    Ok(())
}

/// The template packet the measuring wrapper restores, and how it varies the flow.
pub fn set_template(dp: &mut AyaDataplane, pkt: &[u8], mode: u32) {
    set_template_flows(dp, pkt, mode, 1);
}

/// As [`set_template`], [`xlb_bench_abi::MANY_FLOWS`] cycling through `flows` tuples.
pub fn set_template_flows(dp: &mut AyaDataplane, pkt: &[u8], mode: u32, flows: u32) {
    let used = (pkt.len() / 8).min(RESTORE_WORDS);
    let mut t = BenchPacket {
        mode,
        flows,
        words_used: used as u32,
        ..BenchPacket::default()
    };
    for (w, chunk) in t.words.iter_mut().zip(pkt[..used * 8].chunks_exact(8)) {
        *w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
    }
    let map = dp.object_mut().map_mut(BENCH_MAP).expect("BENCH map");
    let mut a: Array<&mut MapData, BenchPacket> = Array::try_from(map).unwrap();
    a.set(0, t, 0).unwrap();
}

/// Frames counted by the sink (or by the XDP_DROP baseline) so far.
pub fn sink_count(dp: &mut AyaDataplane) -> u64 {
    let map = dp
        .object_mut()
        .map_mut(BENCH_SINK_MAP)
        .expect("BENCH_SINK map");
    let a: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(map).unwrap();
    a.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
}
