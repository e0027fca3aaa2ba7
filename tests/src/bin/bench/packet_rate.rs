//! Section 3: packet rate. A live-frames XDP generator sends over a direct veth to the
//! balancer namespace, which forwards over a second veth to a sink whose native XDP program
//! counts and drops. Compared: XDP_DROP at the ingress, an XDP fib+redirect floor, xlb (the
//! product's object), kernel routing, nftables DNAT.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions};
use xlb::{
    dataplane::{
        AyaDataplane, Dataplane,
        reconcile::{Plan, Reconciler},
    },
    model::config,
};
use xlb_rig::{Netns, lab::VIP};

use crate::{
    Args, object,
    report::{Figure, figure},
};

/// Attempts of a packet-rate run before a loss of frames fails the benchmark.
const RATE_ATTEMPTS: u32 = 3;

/// What runs on the balancer node during a packet-rate run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fwd {
    /// XDP_DROP at the balancer's ingress: the generator's and the veth's own cost.
    Drop,
    /// An XDP program doing only `bpf_fib_lookup` + redirect.
    Floor,
    /// xlb's forwarding stage alone, with its per-target next-hop cache: MAC rewrite +
    /// redirect. The true limit of this path, and the floor xlb is compared with.
    FloorCached,
    XlbTcp,
    /// Every SYN a tuple never seen: each one a new flow, inserted, evicting once full.
    XlbTcpNew,
    XlbUdp,
    /// `dsr` listener: MAC rewrite only.
    XlbDsr,
    /// `tunnel` listener: IP-in-IP to the target.
    XlbTunnel,
    /// No XDP on the balancer: the kernel routes.
    Routing,
    /// No XDP: nftables DNAT (conntrack) then routing.
    Nftables,
}

impl Fwd {
    fn name(self) -> &'static str {
        match self {
            Fwd::Drop => "XDP_DROP at the balancer's ingress (baseline)",
            Fwd::Floor => "XDP forwarding, fib lookup on every frame + redirect",
            Fwd::FloorCached => "XDP floor: cached next hop, MAC rewrite + redirect",
            Fwd::XlbTcp => "xlb, TCP SYN, 1,000 tuples in turn (each SYN re-inserts its own)",
            Fwd::XlbTcpNew => "xlb, TCP SYN, a new tuple every frame (insert, evicting)",
            Fwd::XlbUdp => "xlb, UDP, 1,000 flows in turn (lookups after the first pass)",
            Fwd::XlbDsr => "xlb dsr, TCP SYN, 1,000 tuples in turn",
            Fwd::XlbTunnel => "xlb tunnel, TCP SYN, 1,000 tuples in turn",
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

/// Generator -> balancer -> sink over direct veths; frames counted by a native XDP sink.
pub fn packet_rate(args: &Args) -> Vec<Figure> {
    // setns moves only the calling thread: keep it off the main thread.
    std::thread::scope(|s| {
        s.spawn(|| packet_rate_in_thread(args))
            .join()
            .expect("packet-rate thread")
    })
}

fn packet_rate_in_thread(args: &Args) -> Vec<Figure> {
    use xlb_rig::{Netns, netns::veth};
    let id = std::process::id();
    let generator = Netns::create(&format!("xlb-pr-gen-{id}")).unwrap();
    let lb = Netns::create(&format!("xlb-pr-lb-{id}")).unwrap();
    let sink = Netns::create(&format!("xlb-pr-sink-{id}")).unwrap();
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
        max_listeners: 8,
        max_connections: 65_536,
        ..Default::default()
    };
    sink.enter_current_thread().unwrap();
    let mut sinkdp = object::load(&tables);
    object::attach(&mut sinkdp, "xlb_bench_sink", "s0").unwrap();
    let cfg_text = include_str!("../../../bench/packet-rate.toml");
    let cfg = config::parse(Path::new("packet-rate.toml"), cfg_text).expect("packet-rate config");
    let nft_file = std::env::temp_dir().join("xlb-bench-pr.nft");
    std::fs::write(
        &nft_file,
        include_str!("../../../bench/packet-rate-dnat.nft"),
    )
    .unwrap();

    let modes = [
        Fwd::Drop,
        Fwd::Floor,
        Fwd::XlbTcp,
        Fwd::XlbUdp,
        Fwd::Routing,
        Fwd::Nftables,
        Fwd::XlbDsr,
        Fwd::XlbTunnel,
        Fwd::FloorCached,
        Fwd::XlbTcpNew,
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut discarded = 0u32;
    for _ in 0..args.reps {
        for (i, &mode) in modes.iter().enumerate() {
            // The balancer node.
            lb.enter_current_thread().unwrap();
            let mut lbdp = None;
            match mode {
                Fwd::Drop | Fwd::Floor | Fwd::FloorCached => {
                    let mut dp = object::load(&tables);
                    let prog = match mode {
                        Fwd::Drop => "xlb_bench_drop",
                        Fwd::Floor => "xlb_bench_fwd",
                        _ => "xlb_bench_fwd_cached",
                    };
                    object::attach(&mut dp, prog, "lb-g").unwrap();
                    lbdp = Some(dp);
                }
                Fwd::XlbTcp | Fwd::XlbTcpNew | Fwd::XlbUdp | Fwd::XlbDsr | Fwd::XlbTunnel => {
                    // The product's own object, as the agent loads it.
                    let dp = AyaDataplane::load(xlb::EBPF_OBJECT, &tables).unwrap();
                    let mut b = Reconciler::new(dp, tables);
                    b.apply(&Plan::from_config(&cfg)).unwrap();
                    b.dataplane_mut().attach("lb-g").unwrap();
                    b.dataplane_mut().attach("lb-s").unwrap();
                    lbdp = Some(b.into_dataplane());
                }
                Fwd::Routing => {}
                Fwd::Nftables => {
                    lb.exec(&format!("nft -f {}", nft_file.display())).unwrap();
                }
            }
            // The frame: to the VIP, or straight to the sink for the floor and plain routing.
            let (dst, dport) = match mode {
                Fwd::Floor | Fwd::FloorCached | Fwd::Routing => ([198, 18, 1, 2], 80),
                Fwd::XlbDsr => ([198, 18, 100, 11], 8080),
                Fwd::XlbTunnel => ([198, 18, 100, 12], 8080),
                _ => (VIP, 80),
            };
            let mut frame = Vec::new();
            let b = etherparse::PacketBuilder::ethernet2(g0_mac, lbg_mac).ipv4(
                [198, 18, 0, 2],
                dst,
                64,
            );
            if mode == Fwd::XlbUdp {
                // 64 bytes, as the TCP frames: 14 + 20 + 8 + 22.
                b.udp(1024, 9000).write(&mut frame, &[0u8; 22]).unwrap();
            } else {
                b.tcp(1024, dport, 1, 64_240)
                    .syn()
                    .write(&mut frame, &[0u8; 10])
                    .unwrap();
            }
            assert_eq!(frame.len(), 64, "the frame size the report says");
            let vary = if mode == Fwd::XlbTcpNew {
                xlb_bench_abi::NEW_FLOW
            } else {
                xlb_bench_abi::MANY_FLOWS
            };
            object::set_template_flows(&mut sinkdp, &frame, vary, 1000);
            // A run that loses more than a tenth of its frames (a queue on the way overflowed:
            // it measured the loss, not the path) is discarded and run again, at most
            // RATE_ATTEMPTS times, and counted.
            let mut attempt = 1;
            let rate = loop {
                let before = object::sink_count(&mut sinkdp) + baseline_count(&mut lbdp, mode);
                generator.enter_current_thread().unwrap();
                let md: [u32; 6] = [0, u32::try_from(frame.len()).unwrap(), 0, g0, 0, 0];
                let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
                let prog = object::program(&mut sinkdp, "xlb_bench_gen");
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
                let after = object::sink_count(&mut sinkdp) + baseline_count(&mut lbdp, mode);
                let delivered = after - before;
                if delivered * 10 >= u64::from(args.frames) * 9 {
                    break delivered as f64 / secs / 1e6;
                }
                assert!(
                    attempt < RATE_ATTEMPTS,
                    "{}: only {delivered} of {} frames arrived, {attempt} times",
                    mode.name(),
                    args.frames
                );
                eprintln!(
                    "{}: only {delivered} of {} frames arrived: discarded, run again",
                    mode.name(),
                    args.frames
                );
                discarded += 1;
                attempt += 1;
            };
            rates[i].push(rate);
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
    let (base, fib, routing, nft, floor) = (
        figs[0].clone(),
        figs[1].clone(),
        figs[4].clone(),
        figs[5].clone(),
        figs[8].clone(),
    );
    let mut out = vec![base.clone(), floor.clone().vs(&base), fib.vs(&floor)];
    for f in figs[2..4].iter().chain(&figs[6..8]).chain(&figs[9..10]) {
        let met = f.median >= 0.9 * floor.median;
        out.push(f.clone().vs(&floor).goal(">= 0.9x floor", met));
        let met = f.median >= 3.0 * nft.median;
        let mut vs_nft = f.clone().vs(&nft).goal(">= 3x nftables DNAT", met);
        vs_nft.name = format!("{} (against nftables)", f.name);
        out.push(vs_nft);
        // Extra cost per packet over the floor: everything runs on one core.
        let extra = (1e3 / f.median - 1e3 / floor.median).max(0.0);
        out.push(Figure {
            name: format!("{}: extra cost per packet over the floor", f.name),
            unit: "ns",
            min: extra,
            median: extra,
            max: extra,
            ..figure("rate", "", "ns", vec![extra])
        });
    }
    out.push(routing.vs(&floor));
    out.push(nft.vs(&floor));
    out.push(figure(
        "rate",
        "packet-rate runs discarded and run again (over a tenth of the frames lost)",
        "runs",
        vec![f64::from(discarded)],
    ));
    drop(sinkdp);
    out
}

/// Frames the XDP_DROP baseline counted at the balancer's ingress (0 in every other mode: the
/// sink counts those).
fn baseline_count(lbdp: &mut Option<AyaDataplane>, mode: Fwd) -> u64 {
    match (lbdp, mode) {
        (Some(dp), Fwd::Drop) => object::sink_count(dp),
        _ => 0,
    }
}
