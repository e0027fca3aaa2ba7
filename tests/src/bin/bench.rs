//! `xlb-bench` (run by `cargo xtask bench`): what xlb costs, against baselines measured in the
//! same run. Prints a table, writes JSON, a PNG plot and BENCHMARKS.md.
//!
//! Program cost: BPF_PROG_TEST_RUN with `repeat`. The kernel does not restore the packet
//! between repetitions, so the balancer runs inside a measuring wrapper (`xlb_bench`) that puts
//! the template packet back after each run; the wrapper alone (`xlb_bench_restore`) is measured
//! too and subtracted, and the bare `XDP_PASS` program (the harness) added back, so every
//! figure is comparable to the floor (MAC-swap `XDP_TX`) and to `XDP_PASS`. Verdicts and
//! counters are checked for every measured configuration, and the real program's output
//! packet is checked once per case with etherparse.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aya::{
    maps::Array,
    programs::{TestRun, TestRunOptions},
};
use clap::Parser;
use etherparse::SlicedPacket;
use lb_common::{BENCH_NEW_FLOW, BENCH_RESTORE_WORDS, BENCH_SAME_FLOW, BenchPacket, Stat, maps};
use serde::Serialize;
use xlb::{
    balancer::{Balancer, Plan},
    config,
    dataplane::AyaDataplane,
    maglev,
};
use xlb_rig::{
    Netns, Rig, RigSpec, Setup,
    lab::{CLIENT, Flags, Lab, VIP, XDP_PASS, XDP_REDIRECT, run_once, run_repeated, target, tcp},
};

#[derive(Parser)]
struct Args {
    /// Repetitions per BPF_PROG_TEST_RUN call.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Times every figure is measured (min/median/max over them).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// The agent binary (for the health-check detection latency).
    #[arg(long)]
    xlb: PathBuf,
    /// The backend binary.
    #[arg(long)]
    backend: PathBuf,
    /// Where JSON and the plot go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The Markdown report to (re)write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    report: PathBuf,
    /// The plot that the report shows.
    #[arg(long, default_value = "docs/bench.png")]
    plot: PathBuf,
    /// Frames per packet-rate run.
    #[arg(long, default_value_t = 1_000_000)]
    frames: u32,
    /// Only loop the established-flow case for SECONDS (to sample with `perf record`).
    #[arg(long)]
    profile: Option<u64>,
}

/// One measured figure: min/median/max over the repetitions, and its ratio to a baseline.
#[derive(Serialize, Clone)]
struct Figure {
    section: &'static str,
    name: String,
    unit: &'static str,
    min: f64,
    median: f64,
    max: f64,
    baseline: Option<String>,
    ratio: Option<f64>,
    /// The goal from the issue, if any, and whether this run met it.
    goal: Option<String>,
    met: Option<bool>,
}

fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn figure(section: &'static str, name: &str, unit: &'static str, v: Vec<f64>) -> Figure {
    let (min, median, max) = spread(v);
    Figure {
        section,
        name: name.into(),
        unit,
        min,
        median,
        max,
        baseline: None,
        ratio: None,
        goal: None,
        met: None,
    }
}

impl Figure {
    fn vs(mut self, base: &Figure) -> Self {
        self.baseline = Some(base.name.clone());
        self.ratio = Some(self.median / base.median);
        self
    }
    fn goal(mut self, text: &str, met: bool) -> Self {
        self.goal = Some(text.into());
        self.met = Some(met);
        self
    }
}

// ---- 1. program cost ----

/// ns per repetition of `program` on `pkt` (kernel-timed average over `repeat`).
fn timed(lab: &mut Lab, program: &str, pkt: &[u8], repeat: u32, want: u32) -> f64 {
    let in0 = lab.in0;
    let prog = lab.b.dataplane_mut().extra_program(program).unwrap();
    let (ret, out, duration) = run_repeated(prog, pkt, in0, repeat);
    assert_eq!(ret, want, "{program}: unexpected verdict");
    // The wrapper restores the template: what comes out is what went in (new-flow mode
    // changes the source port only).
    assert_eq!(out[..12], pkt[..12], "{program}: output MACs not restored");
    duration.as_nanos() as f64
}

fn set_template(lab: &mut Lab, pkt: &[u8], mode: u32) {
    let mut t = BenchPacket {
        mode,
        ..BenchPacket::default()
    };
    for (w, chunk) in t
        .words
        .iter_mut()
        .zip(pkt[..BENCH_RESTORE_WORDS * 8].chunks_exact(8))
    {
        *w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
    }
    let map = lab
        .b
        .dataplane_mut()
        .extra_map(maps::BENCH)
        .expect("BENCH map");
    let mut a: Array<&mut aya::maps::MapData, BenchPacket> = Array::try_from(map).unwrap();
    a.set(0, t, 0).unwrap();
}

struct Case {
    name: &'static str,
    packet: Vec<u8>,
    mode: u32,
    verdict: u32,
    stat: Stat,
}

fn program_cost(args: &Args, lab: &mut Lab) -> Vec<Figure> {
    let est = tcp(CLIENT, 40_000, VIP, 80, Flags::Ack, 64);
    let cases = [
        Case {
            name: "xlb: established TCP flow",
            packet: est.clone(),
            mode: BENCH_SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb: new TCP flow (SYN)",
            packet: tcp(CLIENT, 1024, VIP, 80, Flags::Syn, 64),
            mode: BENCH_NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb: non-listener packet",
            packet: tcp(CLIENT, 40_000, [198, 18, 5, 5], 22, Flags::Ack, 64),
            mode: BENCH_SAME_FLOW,
            verdict: XDP_PASS,
            stat: Stat::PassNotListener,
        },
    ];
    // The real program, once per case: verdict and the rewritten packet.
    let prog = lab.b.dataplane_mut().program().unwrap();
    for c in &cases {
        let (ret, out, _) = run_once(prog, &c.packet, lab.in0);
        assert_eq!(ret, c.verdict, "{}", c.name);
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let etherparse::NetSlice::Ipv4(ip) = p.net.unwrap() else {
            panic!()
        };
        let dst = ip.header().destination();
        if c.verdict == XDP_REDIRECT {
            assert!(
                (1..=2).any(|k| dst == target(k)),
                "{}: sent to a target",
                c.name
            );
        } else {
            assert_eq!(out, c.packet, "{}: passed untouched", c.name);
        }
    }
    let mut pass = Vec::new();
    let mut floor = Vec::new();
    let mut wrapper = Vec::new();
    let mut per_case: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..args.reps {
        pass.push(timed(lab, "xlb_bench_pass", &est, args.repeat, XDP_PASS));
        floor.push(timed(lab, "xlb_bench_floor", &est, args.repeat, 3));
        set_template(lab, &est, BENCH_SAME_FLOW);
        let w = timed(lab, "xlb_bench_restore", &est, args.repeat, XDP_PASS);
        wrapper.push(w);
        for (i, c) in cases.iter().enumerate() {
            set_template(lab, &c.packet, c.mode);
            let before = lab.stats();
            let t = timed(lab, "xlb_bench", &c.packet, args.repeat, c.verdict);
            let after = lab.stats();
            let moved = after[c.stat as usize] - before[c.stat as usize];
            assert_eq!(
                moved,
                u64::from(args.repeat),
                "{}: {:?} must count every repetition",
                c.name,
                c.stat
            );
            per_case[i].push(t - w + pass[pass.len() - 1]);
        }
    }
    let pass = figure(
        "program",
        "bare XDP_PASS program (harness)",
        "ns/packet",
        pass,
    );
    let floor = figure(
        "program",
        "floor: MAC-swap XDP_TX program",
        "ns/packet",
        floor,
    )
    .vs(&pass);
    let wrapper = figure(
        "program",
        "measuring wrapper alone (subtracted)",
        "ns/packet",
        wrapper,
    );
    let mut out = vec![pass.clone(), floor.clone(), wrapper];
    for (c, v) in cases.iter().zip(per_case) {
        let f = figure("program", c.name, "ns/packet", v);
        let f = match c.mode {
            BENCH_NEW_FLOW => {
                let met = f.median <= 210.0;
                f.vs(&floor).goal("<= 210 ns", met)
            }
            _ if c.verdict == XDP_PASS => {
                let met = f.median <= 1.5 * pass.median;
                f.vs(&pass).goal("<= 1.5x XDP_PASS", met)
            }
            _ => {
                let met = f.median <= 100.0;
                f.vs(&floor).goal("<= 100 ns", met)
            }
        };
        out.push(f);
    }
    out
}

// ---- 2. control plane ----

fn maglev_builds(reps: usize) -> Vec<Figure> {
    [10u32, 100, 1000]
        .iter()
        .map(|&n| {
            let entries: Vec<maglev::Entry> = (1..=n)
                .map(|i| maglev::Entry {
                    id: i,
                    key: maglev::identity([198, 18, (i >> 8) as u8, i as u8], 8080),
                    weight: 1,
                })
                .collect();
            let v = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    let table = maglev::build(&entries, 65_537);
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    assert!(table.iter().all(|&s| s != 0));
                    ms
                })
                .collect();
            let f = figure(
                "control",
                &format!("Maglev table, {n} targets, M = 65,537"),
                "ms",
                v,
            );
            if n == 1000 {
                let met = f.median < 20.0;
                f.goal("< 20 ms", met)
            } else {
                f
            }
        })
        .collect()
}

fn thousand_listeners(reps: usize) -> Vec<Figure> {
    let mut text = String::from(
        "interfaces = [\"lo\"]\n[tables]\nmaglev_size = 65537\nmax_listeners = 1000\n",
    );
    for i in 0..1000u32 {
        text += &format!(
            "[[listener]]\nname = \"l{i}\"\nvip = \"198.18.{}.{}\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"g{}\"\n",
            200 + i / 250,
            i % 250 + 1,
            i % 100
        );
    }
    for g in 0..100u32 {
        text += &format!(
            "[[target_group]]\nname = \"g{g}\"\nport = 8080\nhealth_check = {{ enabled = false }}\ntargets = ["
        );
        text += &(1..=10u32)
            .map(|t| format!("{{ address = \"198.18.{}.{t}\" }}", g + 1))
            .collect::<Vec<_>>()
            .join(", ");
        text += "]\n";
    }
    let cfg =
        config::parse(Path::new("bench-1000.toml"), &text).expect("benchmark config is valid");
    let plan = Plan::from_config(&cfg);
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let dp =
            AyaDataplane::load(xlb::EBPF_OBJECT, &cfg.tables).expect("load with 1,000 listeners");
        let mut b = Balancer::new(dp, cfg.tables);
        let t = Instant::now();
        let r = b.apply(&plan).unwrap();
        first.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.listeners_added.len(), 1000);
        let t = Instant::now();
        let r = b.apply(&plan).unwrap();
        again.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.listeners_unchanged.len(), 1000);
    }
    vec![
        figure(
            "control",
            "apply 1,000 listeners (100 groups x 10 targets) to the data plane",
            "ms",
            first,
        ),
        figure(
            "control",
            "re-apply the same 1,000 listeners (no change)",
            "ms",
            again,
        ),
    ]
}

fn health_detection(args: &Args) -> Figure {
    let mut v = Vec::new();
    for rep in 0..args.reps {
        let mut rig = Rig::up(&RigSpec {
            prefix: "xlb-bench".into(),
            targets: 2,
        })
        .unwrap();
        rig.start_backends(&args.backend).unwrap();
        let dir = std::env::temp_dir().join("xlb-bench");
        std::fs::create_dir_all(&dir).unwrap();
        let (config, socket) = (dir.join("xlb.toml"), dir.join("xlb.sock"));
        let setup = Setup {
            interval_s: 1,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            ..Setup::demo(&[1, 2])
        };
        std::fs::write(&config, rig.config(&socket, &setup)).unwrap();
        rig.start_agent(&args.xlb, &config).unwrap();
        let state = || {
            let out = Command::new(&args.xlb)
                .args(["targets", "health", "web", "--json", "--socket"])
                .arg(&socket)
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v[0]["targets"]
                .as_array()
                .and_then(|t| {
                    t.iter()
                        .find(|t| t["address"] == "198.18.2.2")
                        .map(|t| t["state"].as_str().unwrap_or("").to_owned())
                })
                .unwrap_or_default()
        };
        let wait = |want: &str| {
            let t0 = Instant::now();
            while state() != want {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "backend-2 never became {want}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            t0.elapsed()
        };
        wait("healthy");
        rig.stop("backend-2");
        let took = wait("unhealthy");
        eprintln!(
            "  health detection, run {}: {:.0} ms",
            rep + 1,
            took.as_secs_f64() * 1000.0
        );
        v.push(took.as_secs_f64() * 1000.0);
        drop(rig);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let f = figure(
        "control",
        "health-check detection (interval 1 s, unhealthy threshold 2)",
        "ms",
        v,
    );
    let met = f.median <= 3000.0;
    f.goal("<= interval x threshold + interval", met)
}

/// What profiling found, and what was done about it (kept with the generator, dated).
const FINDINGS: &str = "## Findings (profiled 2026-11-28)

Goals from the benchmark issue: established flow <= 100 ns, new flow <= 210 ns, non-listener
<= 1.5x the bare `XDP_PASS` program, Maglev for 1,000 targets < 20 ms. Only the last is met in
every run; the established flow meets its goal in some runs (medians 93-164 ns across runs on
this noisy machine).

- **Where an established packet's time went** (`xlb-bench --profile 6` under
  `perf record -e cpu-clock -a`): the kernel's `htab_map_hash` (jhash of the map keys) 26% of
  samples, the program body 31%, hash-bucket walk and compare ~12%, and BPF `memset`/`memmove`
  subprograms ~9% (building keys with 16-byte address slots). Hashing cost grows with key
  length, so IPv4 keys now hold 4-byte addresses (flow key 40 -> 16 bytes, listener and VIP
  keys 20 -> 8); IPv6 gets maps of its own. After: `htab_map_hash` 13%, no `memset`.
- **FIB lookup**: a per-target next-hop cache (egress and MACs reused for up to 1 s, only for
  packets no longer than one that passed the MTU check) took the established flow from 225 to
  187 ns before the key change.
- **Measuring wrapper**: restoring the template with 8-byte stores instead of byte stores cut
  the subtracted overhead from 65 to ~10 ns, which tightened every figure.
- **New flow** costs two LRU-hash inserts (connection and return path) into a full table, each
  evicting: ~380-740 ns. Per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`, kept) against the common LRU:
  512 vs 637-694 ns median, so the common LRU does not help. Next steps: insert the return-path
  entry lazily, or key both directions in one map.
- **Non-listener**: the extra over the bare program is ~15-50 ns (the noisiest figure) (parse, two array reads, one
  per-CPU counter). The 1.5x goal was set where the bare program cost 29 ns; here it costs
  ~10 ns, so the same absolute cost is a larger ratio. A packet that cannot be for a VIP now
  skips the listener lookup after one array read (`VIP_HINTS`).
- **Packet rate** (generator -> balancer -> sink on direct veths, one core for the whole chain),
  over five runs: xlb forwards TCP SYNs over 1,000 flows at 0.86-1.05x the XDP forwarding
  floor and 3.0-4.1x nftables DNAT. UDP first ran at 0.74x the floor: each UDP packet read the
  full-precision clock for its idle timeout. With the coarse clock it ran at 0.79-1.14x the
  floor and 2.7-3.7x nftables; the machine's load moves these figures by +/-20%.
- **Real clients on the veth rig** (five runs on 2026-11-28, ratios to routed): xlb 0.78-1.05x
  with keep-alive and 0.74-0.96x with `Connection: close`; nftables DNAT 0.85-1.14x and
  0.85-1.16x; HAProxy
  0.73-0.92x and 0.54-0.90x, using the most CPU per request. The routed baseline reaches one
  target while the balanced paths spread over two backends, so a balancer can exceed 1.0x.
  The early runs measured the paths one after another; they are now interleaved per repetition,
  as machine load drifts. Profiled during wrk through xlb (`perf record -a -g`): the xlb
  program itself is ~1% of samples; what costs is veth's XDP path, which the routed and
  nftables paths never take: `skb_pp_cow_data` (each skb copied into page-pool memory so XDP
  can run on it), redirects queued to the peer veth's ring and NAPI
  (`_raw_spin_unlock_irqrestore` ~11%, task switches ~6%). On a physical NIC XDP runs before
  an skb exists; this rig cannot show that. Not fixed here.
- **iperf3** (one TCP stream; three runs: routed 4.6-5.5 Gbit/s, xlb 0.56-0.91x, nftables
  0.68-0.83x, HAProxy 0.85-0.92x): attaching an XDP program to a veth turns TCP segmentation offload off on its peer
  (checked with `ethtool -k`: `tcp-segmentation-offload` on -> off), so through xlb the client
  sends MTU-sized frames while the skb paths carry 64 KB GSO super-packets, ~40x fewer per
  byte. A physical NIC puts MTU-sized frames on the wire for every path. Multi-buffer XDP
  (`xdp.frags`) would let veth keep GSO; not done.
- **Control plane**: listeners whose target set did not change keep their table without a
  rebuild, and listeners sharing a group share one build: re-applying 1,000 listeners went from
  2.3 s to ~2 ms, the first apply from 3.1 s to ~0.8 s (tables written through an mmap of
  `RINGS`).
";

// ---- 2b. packet rate ----

/// What runs on the balancer node during a packet-rate run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fwd {
    /// XDP_DROP at the balancer's ingress: the generator's and the veth's own cost.
    Drop,
    /// An XDP program doing only `bpf_fib_lookup` + redirect.
    Floor,
    XlbTcp,
    XlbUdp,
    /// No XDP on the balancer: the kernel routes.
    Routing,
    /// No XDP: nftables DNAT (conntrack) then routing.
    Nftables,
}

impl Fwd {
    fn name(self) -> &'static str {
        match self {
            Fwd::Drop => "XDP_DROP at the balancer's ingress (baseline)",
            Fwd::Floor => "XDP forwarding floor (fib lookup + redirect)",
            Fwd::XlbTcp => "xlb, TCP SYN to the VIP, 1,000 flows",
            Fwd::XlbUdp => "xlb, UDP to the VIP, 1,000 flows",
            Fwd::Routing => "kernel routing, no balancer",
            Fwd::Nftables => "nftables DNAT, TCP SYN, 1,000 flows",
        }
    }
}

fn mac_of(ns: &Netns, dev: &str) -> [u8; 6] {
    let text = ns
        .exec(&format!("cat /sys/class/net/{dev}/address"))
        .unwrap();
    let mut m = [0u8; 6];
    for (b, h) in m.iter_mut().zip(text.trim().split(':')) {
        *b = u8::from_str_radix(h, 16).unwrap();
    }
    m
}

fn sink_count(dp: &mut AyaDataplane) -> u64 {
    let map = dp.extra_map(maps::BENCH_SINK).expect("BENCH_SINK");
    let a: aya::maps::PerCpuArray<&mut aya::maps::MapData, u64> =
        aya::maps::PerCpuArray::try_from(map).unwrap();
    a.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

const PR_NFT: &str = "table ip xlb_bench_pr {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 198.18.100.10 tcp dport 80 dnat ip to 198.18.1.2:8080
  }
}
";

/// Generator -> balancer -> sink over direct veths; frames counted by a native XDP sink.
fn packet_rate(args: &Args) -> Vec<Figure> {
    // setns moves only the calling thread: keep it off the main thread.
    std::thread::scope(|s| {
        s.spawn(|| packet_rate_in_thread(args))
            .join()
            .expect("packet-rate thread")
    })
}

fn packet_rate_in_thread(args: &Args) -> Vec<Figure> {
    use xlb_rig::{Netns, netns::veth};
    let generator = Netns::create("xlb-pr-gen").unwrap();
    let lb = Netns::create("xlb-pr-lb").unwrap();
    let sink = Netns::create("xlb-pr-sink").unwrap();
    veth(&generator, "g0", &lb, "lb-g").unwrap();
    veth(&lb, "lb-s", &sink, "s0").unwrap();
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        lb.sysctl(key, value).unwrap();
    }
    lb.exec("ip addr add 198.18.0.1/24 dev lb-g").unwrap();
    lb.exec("ip addr add 198.18.1.1/24 dev lb-s").unwrap();
    generator.exec("ip addr add 198.18.0.2/24 dev g0").unwrap();
    sink.exec("ip addr add 198.18.1.2/24 dev s0").unwrap();
    // The sink's XDP_DROP eats ARP too: the balancer knows its MAC statically.
    lb.exec(&format!(
        "ip neigh replace 198.18.1.2 lladdr {} dev lb-s nud permanent",
        xlb_rig::lab::mac(mac_of(&sink, "s0"))
    ))
    .unwrap();
    // Without an XDP program, a veth receiving XDP_TX frames needs GRO to accept them.
    lb.exec("ethtool -K lb-g gro on").unwrap();
    let (lbg_mac, g0_mac) = (mac_of(&lb, "lb-g"), mac_of(&generator, "g0"));
    let g0 = generator.ifindex("g0").unwrap();

    let tables = config::Tables {
        maglev_size: 1021,
        max_listeners: 4,
        max_connections: 65_536,
    };
    sink.enter_current_thread().unwrap();
    let mut sinkdp = AyaDataplane::load(xlb::EBPF_OBJECT, &tables).unwrap();
    sinkdp.attach_program("xlb_bench_sink", "s0").unwrap();
    let cfg_text = "interfaces = [\"lb-g\", \"lb-s\"]\n[tables]\nmaglev_size = 1021\nmax_listeners = 4\nmax_connections = 65536\n\
[[listener]]\nname = \"t\"\nvip = \"198.18.100.10\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"g\"\n\
[[listener]]\nname = \"u\"\nvip = \"198.18.100.10\"\nport = 9000\nprotocol = \"udp\"\ntarget_group = \"g\"\n\
[[target_group]]\nname = \"g\"\nport = 8080\nhealth_check = { enabled = false }\ntargets = [{ address = \"198.18.1.2\" }]\n";
    let cfg = config::parse(Path::new("packet-rate.toml"), cfg_text).expect("packet-rate config");
    let nft_file = std::env::temp_dir().join("xlb-bench-pr.nft");
    std::fs::write(&nft_file, PR_NFT).unwrap();

    let modes = [
        Fwd::Drop,
        Fwd::Floor,
        Fwd::XlbTcp,
        Fwd::XlbUdp,
        Fwd::Routing,
        Fwd::Nftables,
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..args.reps {
        for (i, &mode) in modes.iter().enumerate() {
            // The balancer node.
            lb.enter_current_thread().unwrap();
            let mut lbdp = None;
            match mode {
                Fwd::Drop | Fwd::Floor => {
                    let mut dp = AyaDataplane::load(xlb::EBPF_OBJECT, &tables).unwrap();
                    let prog = if mode == Fwd::Drop {
                        "xlb_bench_drop"
                    } else {
                        "xlb_bench_fwd"
                    };
                    dp.attach_program(prog, "lb-g").unwrap();
                    lbdp = Some(dp);
                }
                Fwd::XlbTcp | Fwd::XlbUdp => {
                    let dp = AyaDataplane::load(xlb::EBPF_OBJECT, &tables).unwrap();
                    let mut b = Balancer::new(dp, tables);
                    b.apply(&Plan::from_config(&cfg)).unwrap();
                    b.dataplane_mut().attach("lb-g").unwrap();
                    b.dataplane_mut().attach("lb-s").unwrap();
                    lbdp = Some(std::mem::replace(
                        b.dataplane_mut(),
                        AyaDataplane::load(xlb::EBPF_OBJECT, &tables).unwrap(),
                    ));
                    // The Balancer (and the spare dataplane) go; the attached one stays in lbdp.
                }
                Fwd::Routing => {}
                Fwd::Nftables => {
                    lb.exec(&format!("nft -f {}", nft_file.display())).unwrap();
                }
            }
            // The frame: to the VIP, or straight to the sink for the floor and plain routing.
            let dst = if matches!(mode, Fwd::Floor | Fwd::Routing) {
                [198, 18, 1, 2]
            } else {
                VIP
            };
            let mut frame = Vec::new();
            let b = etherparse::PacketBuilder::ethernet2(g0_mac, lbg_mac).ipv4(
                [198, 18, 0, 2],
                dst,
                64,
            );
            if mode == Fwd::XlbUdp {
                b.udp(1024, 9000).write(&mut frame, &[0u8; 18]).unwrap();
            } else {
                b.tcp(1024, 80, 1, 64_240)
                    .syn()
                    .write(&mut frame, &[0u8; 10])
                    .unwrap();
            }
            let mut t = BenchPacket {
                mode: lb_common::BENCH_MANY_FLOWS,
                ..BenchPacket::default()
            };
            for (w, chunk) in t
                .words
                .iter_mut()
                .zip(frame[..BENCH_RESTORE_WORDS * 8].chunks_exact(8))
            {
                *w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
            }
            {
                let map = sinkdp.extra_map(maps::BENCH).expect("BENCH map");
                let mut a: Array<&mut aya::maps::MapData, BenchPacket> =
                    Array::try_from(map).unwrap();
                a.set(0, t, 0).unwrap();
            }
            let before = sink_count(&mut sinkdp) + lbdp.as_mut().map(sink_count).unwrap_or(0);
            generator.enter_current_thread().unwrap();
            let md: [u32; 6] = [0, u32::try_from(frame.len()).unwrap(), 0, g0, 0, 0];
            let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let prog = sinkdp.extra_program("xlb_bench_gen").unwrap();
            let t0 = Instant::now();
            prog.test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: args.frames,
                attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(64),
                ..Default::default()
            })
            .expect("live-frames run");
            let secs = t0.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_millis(50));
            let after = sink_count(&mut sinkdp) + lbdp.as_mut().map(sink_count).unwrap_or(0);
            let delivered = after - before;
            assert!(
                delivered * 10 >= u64::from(args.frames) * 9,
                "{}: only {delivered} of {} frames arrived",
                mode.name(),
                args.frames
            );
            rates[i].push(delivered as f64 / secs / 1e6);
            lb.enter_current_thread().unwrap();
            drop(lbdp);
            if mode == Fwd::Nftables {
                lb.exec("nft delete table ip xlb_bench_pr").unwrap();
            }
        }
    }
    let _ = std::fs::remove_file(&nft_file);
    let figs: Vec<Figure> = modes
        .iter()
        .zip(rates)
        .map(|(m, r)| figure("rate", m.name(), "Mpps", r))
        .collect();
    let (base, floor, routing, nft) = (
        figs[0].clone(),
        figs[1].clone(),
        figs[4].clone(),
        figs[5].clone(),
    );
    let mut out = vec![base.clone(), floor.clone().vs(&base)];
    for f in &figs[2..4] {
        let met = f.median >= 0.9 * floor.median;
        out.push(f.clone().vs(&floor).goal(">= 0.9x floor", met));
        let met = f.median >= 3.0 * nft.median;
        let mut vs_nft = f.clone().vs(&nft).goal(">= 3x nftables DNAT", met);
        vs_nft.name = format!("{} (against nftables)", f.name);
        out.push(vs_nft);
        // Extra cost per packet over the baseline: everything runs on one core.
        let extra = (1e3 / f.median - 1e3 / base.median).max(0.0);
        out.push(Figure {
            name: format!("{}: extra cost per packet over the baseline", f.name),
            unit: "ns",
            min: extra,
            median: extra,
            max: extra,
            ..figure("rate", "", "ns", vec![extra])
        });
    }
    out.push(routing.vs(&floor));
    out.push(nft.vs(&floor));
    drop(sinkdp);
    out
}

// ---- 3. real clients ----

/// A way of getting the client's traffic to the targets, set up on the rig's balancer node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path4 {
    /// No balancer: the client talks to target 1 directly, routed by the balancer node's kernel.
    Routed,
    Xlb,
    /// nftables DNAT (conntrack) in the balancer namespace.
    Nftables,
    /// HAProxy `mode tcp` in the balancer namespace, on the VIP as a local address.
    Haproxy,
}

impl Path4 {
    fn name(self) -> &'static str {
        match self {
            Path4::Routed => "routed (no balancer)",
            Path4::Xlb => "xlb",
            Path4::Nftables => "nftables DNAT",
            Path4::Haproxy => "HAProxy mode tcp",
        }
    }
}

/// Busy CPU jiffies of the whole machine (all but idle and iowait).
fn cpu_busy() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    v.iter().sum::<u64>() - v.get(3).copied().unwrap_or(0) - v.get(4).copied().unwrap_or(0)
}

/// What one bounded wrk run found.
#[derive(Clone, Copy)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Busy CPU of the whole machine per request.
    cpu_us: f64,
}

fn wrk(rig: &Rig, url: &str, close: bool) -> WrkResult {
    let busy = cpu_busy();
    let mut c = rig.client.command("wrk");
    c.args(["-t1", "-c32", "-d3s", "--timeout", "2s", "--latency"]);
    if close {
        c.args(["-H", "Connection: close"]);
    }
    let out = c.arg(url).output().expect("wrk runs");
    let jiffies = cpu_busy() - busy;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(prefix))?;
        let v = line.trim_start()[prefix.len()..]
            .split_whitespace()
            .next()?;
        let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix("us") {
            (n, 0.001)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1000.0)
        } else {
            (v, 1.0)
        };
        num.parse::<f64>().ok().map(|x| x * scale)
    };
    let rps = field("Requests/sec:").unwrap_or_else(|| panic!("wrk printed no rate: {text}"));
    let requests = rps * 3.0;
    let cpu_us = jiffies as f64 * 10_000.0 / requests.max(1.0);
    WrkResult {
        rps,
        p50_ms: field("50%").unwrap_or(f64::NAN),
        p99_ms: field("99%").unwrap_or(f64::NAN),
        cpu_us,
    }
}

const NFT_RULES: &str = "table ip xlb_bench {
  chain pre {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 198.18.100.10 tcp dport 80 dnat ip to numgen inc mod 2 map { 0 : 198.18.1.2 . 8080, 1 : 198.18.2.2 . 8080 }
    ip daddr 198.18.100.10 tcp dport 5201 dnat ip to 198.18.1.2:5201
  }
}
";

const HAPROXY_CFG: &str = "global
  maxconn 4096
defaults
  mode tcp
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend vip
  bind 198.18.100.10:80
  default_backend targets
backend targets
  balance roundrobin
  server t1 198.18.1.2:8080
  server t2 198.18.2.2:8080
frontend iperf
  bind 198.18.100.10:5201
  default_backend iperf
backend iperf
  server t1 198.18.1.2:5201
";

/// iperf3's control and data connections must reach the same server: a one-target group.
const IPERF_LISTENER: &str = "
[[listener]]
name = \"iperf\"
vip = \"198.18.100.10\"
port = 5201
protocol = \"tcp\"
target_group = \"iperf\"

[[target_group]]
name = \"iperf\"
port = 5201
targets = [{ address = \"198.18.1.2\" }]
health_check = { enabled = false }
";

/// Gbit/s received in one bounded iperf3 run (3 s) from the client namespace.
fn iperf(rig: &Rig, host: &str) -> f64 {
    let out = rig
        .client
        .command("iperf3")
        .args(["-c", host, "-p", "5201", "-t", "3", "-J"])
        .output()
        .expect("iperf3 runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64();
    bps.unwrap_or_else(|| panic!("iperf3 to {host}: {}", String::from_utf8_lossy(&out.stdout)))
        / 1e9
}

fn real_clients(args: &Args) -> Vec<Figure> {
    let mut rig = Rig::up(&RigSpec {
        prefix: "xlb-bench".into(),
        targets: 2,
    })
    .unwrap();
    rig.start_backends(&args.backend).unwrap();
    let dir = std::env::temp_dir().join("xlb-bench-clients");
    std::fs::create_dir_all(&dir).unwrap();
    let paths = [Path4::Routed, Path4::Xlb, Path4::Nftables, Path4::Haproxy];
    // (path, close) -> per-repetition results
    let mut results: Vec<((Path4, bool), Vec<WrkResult>)> = Vec::new();
    let mut throughput: Vec<(Path4, Vec<f64>)> = paths.iter().map(|p| (*p, Vec::new())).collect();
    let mut iperf_server = rig.targets[0]
        .command("iperf3")
        .args(["-s", "-p", "5201"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server starts");
    std::thread::sleep(Duration::from_millis(300));
    rig.client
        .exec("ip route add 198.18.1.0/24 via 198.18.0.1")
        .unwrap();
    // Repetitions outside, paths inside: drift in the machine's load hits every path alike.
    for _ in 0..args.reps {
        for &path in &paths {
            let url = if path == Path4::Routed {
                "http://198.18.1.2:8080/".to_owned()
            } else {
                format!("http://{}/", std::net::Ipv4Addr::from(VIP))
            };
            let mut haproxy = None;
            match path {
                Path4::Routed => {}
                Path4::Xlb => {
                    let (config, socket) = (dir.join("xlb.toml"), dir.join("xlb.sock"));
                    let text = rig.config(&socket, &Setup::demo(&[1, 2])) + IPERF_LISTENER;
                    std::fs::write(&config, text).unwrap();
                    rig.start_agent(&args.xlb, &config).unwrap();
                }
                Path4::Nftables => {
                    std::fs::write(dir.join("rules.nft"), NFT_RULES).unwrap();
                    rig.lb
                        .exec(&format!("nft -f {}", dir.join("rules.nft").display()))
                        .unwrap();
                }
                Path4::Haproxy => {
                    rig.lb.exec("ip addr add 198.18.100.10/32 dev lo").unwrap();
                    std::fs::write(dir.join("haproxy.cfg"), HAPROXY_CFG).unwrap();
                    let child = rig
                        .lb
                        .command("haproxy")
                        .args(["-db", "-f"])
                        .arg(dir.join("haproxy.cfg"))
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .expect("haproxy starts");
                    haproxy = Some(child);
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            // Every path must actually work before it is measured.
            let probe = rig
                .client
                .command("curl")
                .args(["-s", "-m", "3", &url])
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&probe.stdout).starts_with("backend-"),
                "{}: curl {url} failed",
                path.name()
            );
            for close in [false, true] {
                let r = wrk(&rig, &url, close);
                match results
                    .iter_mut()
                    .find(|((p, c), _)| *p == path && *c == close)
                {
                    Some((_, runs)) => runs.push(r),
                    None => results.push(((path, close), vec![r])),
                }
            }
            let host = if path == Path4::Routed {
                "198.18.1.2"
            } else {
                "198.18.100.10"
            };
            let gbps = iperf(&rig, host);
            if let Some((_, v)) = throughput.iter_mut().find(|(p, _)| *p == path) {
                v.push(gbps);
            }
            match path {
                Path4::Xlb => {
                    rig.stop("xlb");
                }
                Path4::Nftables => {
                    rig.lb.exec("nft delete table ip xlb_bench").unwrap();
                }
                Path4::Haproxy => {
                    if let Some(mut c) = haproxy {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    let _ = rig.lb.exec("ip addr del 198.18.100.10/32 dev lo");
                }
                Path4::Routed => {}
            }
        }
    }
    let _ = iperf_server.kill();
    let _ = iperf_server.wait();
    drop(rig);
    let _ = std::fs::remove_dir_all(&dir);
    let mut figs = Vec::new();
    let routed_gbps = figure(
        "clients",
        "iperf3 TCP, 3 s: routed (no balancer)",
        "Gbit/s",
        throughput[0].1.clone(),
    );
    for (p, v) in &throughput {
        let f = figure(
            "clients",
            &format!("iperf3 TCP, 3 s: {}", p.name()),
            "Gbit/s",
            v.clone(),
        );
        figs.push(if *p == Path4::Routed {
            f
        } else {
            f.vs(&routed_gbps)
        });
    }
    for close in [false, true] {
        let conn = if close {
            "Connection: close"
        } else {
            "keep-alive"
        };
        let runs = |p: Path4| {
            results
                .iter()
                .find(|((q, c), _)| *q == p && *c == close)
                .map(|(_, r)| r.clone())
                .unwrap()
        };
        let base = figure(
            "clients",
            &format!("wrk {conn}: {}", Path4::Routed.name()),
            "req/s",
            runs(Path4::Routed).iter().map(|r| r.rps).collect(),
        );
        for &p in &paths {
            let r = runs(p);
            let f = figure(
                "clients",
                &format!("wrk {conn}: {}", p.name()),
                "req/s",
                r.iter().map(|x| x.rps).collect(),
            );
            let f = if p == Path4::Routed {
                f
            } else if p == Path4::Xlb {
                let met = f.median >= 0.95 * base.median;
                f.vs(&base).goal(">= 0.95x routed", met)
            } else {
                f.vs(&base)
            };
            figs.push(f);
            figs.push(figure(
                "clients",
                &format!("wrk {conn}: {} p50 latency", p.name()),
                "ms",
                r.iter().map(|x| x.p50_ms).collect(),
            ));
            figs.push(figure(
                "clients",
                &format!("wrk {conn}: {} p99 latency", p.name()),
                "ms",
                r.iter().map(|x| x.p99_ms).collect(),
            ));
            figs.push(figure(
                "clients",
                &format!("wrk {conn}: {} machine CPU per request", p.name()),
                "us",
                r.iter().map(|x| x.cpu_us).collect(),
            ));
        }
    }
    figs
}

// ---- output ----

fn table(figs: &[Figure]) -> String {
    let mut o = format!(
        "| {:<62} | {:>10} | {:>10} | {:>10} | {:<9} | {:>24} | {:<28} |\n",
        "what", "min", "median", "max", "unit", "ratio (median)", "goal (this run)"
    );
    o += &format!(
        "|{:-<64}|{:->12}|{:->12}|{:->12}|{:-<11}|{:->26}|{:-<30}|\n",
        "", "", "", "", "", "", ""
    );
    for f in figs {
        let ratio = match (&f.ratio, &f.baseline) {
            (Some(r), Some(b)) => format!("{r:.2}x {}", short(b)),
            _ => String::new(),
        };
        let goal = match (&f.goal, f.met) {
            (Some(g), Some(true)) => format!("{g}: met"),
            (Some(g), Some(false)) => format!("{g}: NOT met"),
            _ => String::new(),
        };
        o += &format!(
            "| {:<62} | {:>10.1} | {:>10.1} | {:>10.1} | {:<9} | {:>24} | {:<28} |\n",
            f.name, f.min, f.median, f.max, f.unit, ratio, goal
        );
    }
    o
}

fn short(baseline: &str) -> &str {
    if baseline.starts_with("floor") {
        "floor"
    } else if baseline.starts_with("bare") {
        "XDP_PASS"
    } else if baseline.contains("routed") {
        "routed"
    } else if baseline.starts_with("XDP forwarding floor") {
        "XDP floor"
    } else if baseline.starts_with("XDP_DROP") {
        "XDP_DROP baseline"
    } else if baseline.starts_with("nftables") {
        "nftables"
    } else {
        baseline
    }
}

fn plot(path: &Path, figs: &[Figure]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let bars: Vec<&Figure> = figs
        .iter()
        .filter(|f| f.section == "program" && !f.name.starts_with("measuring"))
        .collect();
    let max = bars.iter().map(|f| f.max).fold(0.0, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "xlb: cost per packet (BPF_PROG_TEST_RUN, median; whiskers min-max)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(250)
        .build_cartesian_2d(0f64..max, (0..bars.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .x_desc("ns per packet")
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars
                .get(*i)
                .map(|f| f.name.replace("xlb: ", "xlb "))
                .unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    for (i, f) in bars.iter().enumerate() {
        let color = if f.name.starts_with("xlb") {
            RGBColor(31, 119, 180)
        } else {
            RGBColor(150, 150, 150)
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (f.median, SegmentValue::Exact(i + 1)),
            ],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (f.min, SegmentValue::CenterOf(i)),
                (f.max, SegmentValue::CenterOf(i)),
            ],
            BLACK.stroke_width(2),
        )))?;
    }
    root.present()?;
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    eprintln!(
        "1/5 program cost: repeat {} x {} repetitions per figure",
        args.repeat, args.reps
    );
    let mut lab = Lab::new("bench", &[1, 2]);
    if let Some(secs) = args.profile {
        let est = tcp(CLIENT, 40_000, VIP, 80, Flags::Ack, 64);
        run_once(lab.b.dataplane_mut().program().unwrap(), &est, lab.in0);
        set_template(&mut lab, &est, BENCH_SAME_FLOW);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            timed(&mut lab, "xlb_bench", &est, args.repeat, XDP_REDIRECT);
        }
        return Ok(());
    }
    let mut figs = program_cost(&args, &mut lab);
    drop(lab);
    eprintln!("2/5 control plane: Maglev builds, 1,000 listeners");
    figs.extend(maglev_builds(args.reps));
    figs.extend(thousand_listeners(args.reps));
    eprintln!(
        "3/5 packet rate: generator -> balancer -> sink, {} frames per run",
        args.frames
    );
    figs.extend(packet_rate(&args));
    eprintln!("4/5 health-check detection on the rig");
    figs.push(health_detection(&args));
    eprintln!("5/5 real clients: wrk through xlb, nftables DNAT, HAProxy, and routed");
    figs.extend(real_clients(&args));

    let t = table(&figs);
    println!("{t}");
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_vec_pretty(&figs)?,
    )?;
    if let Some(dir) = args.plot.parent() {
        std::fs::create_dir_all(dir)?;
    }
    plot(&args.plot, &figs)?;
    let when = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let report = format!(
        "# Benchmarks\n\nReproduce: `cargo xtask bench` (as root). This file, `{plot}` and `{json}` are written by it.\n\n\
Last run: {when}, on {machine}. Every figure is min/median/max over {reps} repetitions; ratios compare medians \
with a baseline measured in the same run. The machine is shared and noisy: compare ratios, not absolute figures \
across runs.\n\n![cost per packet]({plot})\n\n{t}\n\
## Method\n\n\
- **Program cost**: BPF_PROG_TEST_RUN with repeat = {repeat}. The kernel does not restore the packet between \
repetitions, so the balancer runs inside a measuring wrapper (`xlb_bench` in `lb-ebpf/src/bench.rs`) that \
writes the template packet back after each run; the wrapper alone is measured and subtracted, and the bare \
`XDP_PASS` program (the harness's own cost) added back, so each xlb figure compares with the floor (a MAC-swap \
`XDP_TX` program) and with `XDP_PASS` as measured in the same harness. Each configuration's verdict is checked, \
its verdict counter must rise by exactly `repeat`, and the real program's output packet is checked once per \
case. The established flow's entry exists before timing; the new-flow case gives each repetition a new source \
port, so every repetition inserts into the connection table (and, once it is full, evicts). The packet goes \
through `bpf_fib_lookup` with static neighbours, as on the rig.\n\
- **Control plane**: wall-clock time of `maglev::build` (weights 1) and of `Balancer::apply` on the real data \
plane (rings written through the mmap of the `RINGS` array). Detection: the agent on the demo rig with interval \
1 s and unhealthy threshold 2, from stopping a backend to `xlb targets health` showing it unhealthy (polled \
every 20 ms).\n\n\
{FINDINGS}\n\
- **Packet rate**: `xlb_bench_gen` runs in BPF_PROG_TEST_RUN's live-frames mode in a generator \
namespace and sends {frames} frames per run (64-byte TCP SYN or UDP, 1,000 flows, every header rewritten \
on every frame, L4 checksum kept valid) over a direct veth to the balancer namespace, which forwards them \
over a second veth to a sink whose native XDP program counts and drops them. Rate = frames counted at the \
sink / wall time of the run; a run counts only if >= 90% of the frames arrived. Modes: XDP_DROP at the \
balancer's ingress (what the generator and veth cost), an XDP floor doing only `bpf_fib_lookup` + redirect, \
xlb, kernel routing, nftables DNAT. All of it runs on one core, so the extra cost per packet over the \
baseline is given too.\n\
- **Real clients**: wrk (1 thread, 32 connections, 3 s, keep-alive and `Connection: close`) from the client \
namespace of a rig like the demo's, through xlb, nftables DNAT (numgen round robin, conntrack), HAProxy \
`mode tcp` (round robin) and routed with no balancer (to target 1 directly). All processes share the 2 cores: \
\"machine CPU per request\" is the whole machine's busy time (client, targets and balancer) divided by \
requests, not the balancer's alone. Paths are interleaved within each repetition. iperf3 (one TCP stream, \
3 s) runs to target 1 through each path (a one-target group or backend: its control and data connections \
must meet the same server).\n\n\
## Not measured yet\n\n\
The balancer's own CPU share (all hosts share 2 cores here): see the open benchmark issue.\n",
        plot = args.plot.display(),
        json = args.out.join("results.json").display(),
        machine = machine(),
        reps = args.reps,
        repeat = args.repeat,
        frames = args.frames,
    );
    std::fs::write(&args.report, report)?;
    eprintln!(
        "wrote {}, {} and {}",
        args.report.display(),
        args.plot.display(),
        args.out.join("results.json").display()
    );
    let _ = Ipv4Addr::LOCALHOST;
    Ok(())
}
