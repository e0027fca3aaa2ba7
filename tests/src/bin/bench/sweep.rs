//! Section 1b: how the cost per packet grows with the work (BPF_PROG_TEST_RUN, the same
//! measuring wrapper as section 1): against the live flows in the connection table, the
//! listeners, and the targets per listener. Each point is a data plane of its own, filled
//! before timing and checked after it.
use lb_common::Stat;
use xlb::model::config::{self, Config};
use xlb_bench_abi::{
    FIRST_PORT, MANY_CLIENTS, MANY_FLOWS, NEW_FLOW, REPLIES_TO_MANY_CLIENTS, SAME_FLOW,
};
use xlb_rig::lab::{CLIENT, Flags, Lab, XDP_PASS, XDP_REDIRECT, tcp, udp};

use crate::{
    Args, object,
    program_cost::{timed, timed_on},
    report::{Figure, figure},
};

/// Entries of the connection table for the flow sweep: an LRU table with per-CPU lists gives
/// each of the 2 possible CPUs half, and the benchmark runs on one, so 1M flows need 2M.
const SWEEP_CONNECTIONS: u32 = 2_200_000;

/// A data plane's config: `listeners` NAT listeners on port 80 (VIPs 198.18.100.10 on), all
/// sending to one group of `targets` targets at 198.18.64.1 on (reached through t1).
fn config(listeners: u32, targets: u32, connections: u32, maglev: u32) -> Config {
    // Rings take max_listeners x 2 x M x 4 bytes (at most 512 MiB): room for 1,024 listeners
    // with the small Maglev table (every point of the listener sweep the same), 16 with the
    // big one.
    let max_listeners = if maglev <= 1021 { 1024 } else { 16 };
    let mut t = format!(
        "interfaces = [\"in0\"]\n[tables]\nmaglev_size = {maglev}\nmax_listeners = {max_listeners}\nmax_connections = {connections}\n"
    );
    for i in 0..listeners {
        let [a, b] = vip_octets(i);
        t += &format!(
            "[[listener]]\nname = \"l{i}\"\nvip = \"198.18.{a}.{b}\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"g\"\n"
        );
    }
    t += "[[listener]]\nname = \"u\"\nvip = \"198.18.100.10\"\nport = 9000\nprotocol = \"udp\"\ntarget_group = \"g\"\n";
    let list: Vec<String> = (0..targets)
        .map(|i| {
            let [c, d] = target_octets(i);
            format!("{{ address = \"198.18.{c}.{d}\" }}")
        })
        .collect();
    t += &format!(
        "[[target_group]]\nname = \"g\"\nport = 8080\ntargets = [{}]\nhealth_check = {{ enabled = false }}\n",
        list.join(", ")
    );
    config::parse(std::path::Path::new("sweep.toml"), &t).expect("sweep config is valid")
}

/// Third and fourth octets of listener `i`'s VIP: 198.18.100.10 and on, 200 per /24.
fn vip_octets(i: u32) -> [u8; 2] {
    [(100 + i / 200) as u8, (10 + i % 200) as u8]
}

/// Third and fourth octets of target `i`: 198.18.64.1 and on.
fn target_octets(i: u32) -> [u8; 2] {
    let n = i + 1;
    [(64 + n / 256) as u8, (n % 256) as u8]
}

fn lab(tag: &str, c: &Config) -> Lab {
    let lab = Lab::with_config_object(tag, c, object::BENCH_OBJECT);
    lab.exec("ip route add 198.18.64.0/18 via 198.18.1.2 dev t1");
    lab
}

/// ns per packet of `pkt` through `xlb_bench` in `mode` (cycling `flows` tuples), the
/// wrapper's own cost with the same template subtracted and the harness's added back, as in
/// section 1; checks every repetition was forwarded and, if `all_found`, none missed the table.
fn cost(lab: &mut Lab, pkt: &[u8], mode: u32, flows: u32, repeat: u32, all_found: bool) -> f64 {
    let in0 = lab.in0;
    cost_on(lab, pkt, mode, flows, repeat, all_found, in0)
}

/// As [`cost`], the packet arriving on interface `ingress` (an ifindex).
fn cost_on(
    lab: &mut Lab,
    pkt: &[u8],
    mode: u32,
    flows: u32,
    repeat: u32,
    all_found: bool,
    ingress: u32,
) -> f64 {
    let pass = timed_on(lab, "xlb_bench_pass", pkt, repeat, XDP_PASS, ingress);
    object::set_template_flows(lab.b.dataplane_mut(), pkt, mode, flows);
    let w = timed_on(lab, "xlb_bench_restore", pkt, repeat, XDP_PASS, ingress);
    let before = lab.stats();
    let t = timed_on(lab, "xlb_bench", pkt, repeat, XDP_REDIRECT, ingress);
    let after = lab.stats();
    let d = |s: Stat| after[s as usize] - before[s as usize];
    assert_eq!(
        d(Stat::FwdRedirect),
        u64::from(repeat),
        "every packet forwarded"
    );
    if all_found {
        assert_eq!(d(Stat::EvMidFlowMiss), 0, "every packet found its flow");
    }
    t - w + pass
}

/// Insert the `n` flows that `ack` gives in `mode` (each tuple once: a TCP packet met mid-flow
/// is balanced and inserted), checking that each was new.
fn insert_flows(lab: &mut Lab, ack: &[u8], mode: u32, n: u32) {
    object::set_template_flows(lab.b.dataplane_mut(), ack, mode, n);
    let before = lab.stats();
    timed(lab, "xlb_bench", ack, n, XDP_REDIRECT);
    let inserted = lab.stats()[Stat::EvMidFlowMiss as usize] - before[Stat::EvMidFlowMiss as usize];
    assert_eq!(inserted, u64::from(n), "{n} flows inserted");
}

fn point(series: &str, name: String, x: f64, v: Vec<f64>) -> Figure {
    figure("sweep", &name, "ns/packet", v).at(series, x)
}

pub fn sweeps(args: &Args) -> Vec<Figure> {
    let mut out = Vec::new();
    // Live flows: an established flow's cost when the table holds 1k, 100k, 1M flows, each
    // timed packet another of them (round robin: the cache holds fewer and fewer).
    for n in [1_000u32, 100_000, 1_000_000] {
        let c = config(1, 2, SWEEP_CONNECTIONS, 1021);
        let mut lab = lab(&format!("sf{n}"), &c);
        let ack = tcp(CLIENT, FIRST_PORT, [198, 18, 100, 10], 80, Flags::Ack, 64);
        insert_flows(&mut lab, &ack, MANY_FLOWS, n);
        let repeat = args.repeat.max(n);
        let v = (0..args.reps)
            .map(|_| cost(&mut lab, &ack, MANY_FLOWS, n, repeat, true))
            .collect();
        out.push(point(
            "live flows (established flow, round robin over them)",
            format!("sweep: established flow, {n} live flows"),
            f64::from(n),
            v,
        ));
    }
    // Replies: the reply of an established flow to 1, 1,000 and 30,000 clients in turn (one
    // flow each, to one target). A reply's next hop is cached per client in REPLY_HOP_SLOTS
    // slots per CPU, direct-mapped by address: one client always hits, 1,000 mostly do, and
    // 30,000 in turn always miss, paying the FIB lookup and the cache write.
    for n in [1u32, 1_000, 30_000] {
        let c = config(1, 1, 262_144, 1021);
        let mut lab = lab(&format!("sr{n}"), &c);
        // The clients, 198.18.128.0/17, are reached through the client at 198.18.0.2.
        lab.exec("ip route add 198.18.128.0/17 via 198.18.0.2 dev in0");
        let client = [198, 18, 128, 0];
        let vip = [198, 18, 100, 10];
        let ack = tcp(client, FIRST_PORT, vip, 80, Flags::Ack, 64);
        insert_flows(&mut lab, &ack, MANY_CLIENTS, n);
        let [c3, c4] = target_octets(0);
        let reply = tcp([198, 18, c3, c4], 8080, client, FIRST_PORT, Flags::Ack, 64);
        let t1 = lab.t[0];
        let repeat = args.repeat.max(n);
        let v = (0..args.reps)
            .map(|_| {
                cost_on(
                    &mut lab,
                    &reply,
                    REPLIES_TO_MANY_CLIENTS,
                    n,
                    repeat,
                    false,
                    t1,
                )
            })
            .collect();
        out.push(point(
            "replies (established flows, round robin over the clients)",
            format!("sweep: reply of an established flow, {n} clients"),
            f64::from(n),
            v,
        ));
    }
    // Table size: a new flow's insert evicts from a table that fits in the cache, or not.
    // `max_connections` 4,096 .. 1,048,576 (the embryonic table a sixteenth of it; 262,144 is
    // the default); each table filled before timing.
    for conns in [4_096u32, 65_536, 262_144, 1_048_576] {
        let c = config(1, 2, conns, 1021);
        let mut lab = lab(&format!("sc{conns}"), &c);
        let vip = [198, 18, 100, 10];
        let cases = [
            (udp(CLIENT, FIRST_PORT, vip, 9000), "UDP first datagram"),
            (tcp(CLIENT, FIRST_PORT, vip, 80, Flags::Syn, 64), "TCP SYN"),
        ];
        // Full tables first, as in service: the connection table (UDP flows) and the
        // embryonic one (SYNs); each CPU's LRU list holds half.
        for (pkt, _) in &cases {
            object::set_template(lab.b.dataplane_mut(), pkt, NEW_FLOW);
            timed(&mut lab, "xlb_bench", pkt, conns.max(100_000), XDP_REDIRECT);
        }
        for (pkt, what) in cases {
            let v = (0..args.reps)
                .map(|_| cost(&mut lab, &pkt, NEW_FLOW, 1, args.repeat, true))
                .collect();
            let series = if what == "TCP SYN" {
                "table size (new TCP flow)"
            } else {
                "table size (new UDP flow)"
            };
            let f = point(
                series,
                format!("sweep: new flow ({what}), max_connections {conns}"),
                f64::from(conns),
                v,
            );
            let met = f.median <= 250.0;
            out.push(f.goal("<= 250 ns", met));
        }
    }
    // Listeners: established and new flows of one listener among 1, 100, 1,000. All send to
    // the same targets, so only the first owns their replies (the others' flows keep a
    // return-path entry too): the one measured is the first.
    for l in [1u32, 100, 1000] {
        let c = config(l, 2, 65_536, 1021);
        let mut lab = lab(&format!("sl{l}"), &c);
        let [a, b] = vip_octets(0);
        out.extend(established_and_new(
            args,
            &mut lab,
            [198, 18, a, b],
            ("listeners", "listeners"),
            l,
        ));
    }
    // Targets per listener: 2, 100, 4,000 (Maglev table M = 65,537).
    for n in [2u32, 100, 4000] {
        let c = config(1, n, 65_536, 65_537);
        let mut lab = lab(&format!("st{n}"), &c);
        out.extend(established_and_new(
            args,
            &mut lab,
            [198, 18, 100, 10],
            ("targets per listener", "targets"),
            n,
        ));
    }
    out
}

/// The established flow's and a new TCP flow's cost through listener `vip`:80, as points `x`
/// of the sweep named `(series, unit)` ("targets per listener", "targets").
fn established_and_new(
    args: &Args,
    lab: &mut Lab,
    vip: [u8; 4],
    (series, unit): (&str, &str),
    x: u32,
) -> [Figure; 2] {
    let est = tcp(CLIENT, 40_000, vip, 80, Flags::Ack, 64);
    object::set_template(lab.b.dataplane_mut(), &est, SAME_FLOW);
    timed(lab, "xlb_bench", &est, 1, XDP_REDIRECT);
    let syn = tcp(CLIENT, FIRST_PORT, vip, 80, Flags::Syn, 64);
    [
        (est, SAME_FLOW, "established flow", "established flow"),
        (syn, NEW_FLOW, "new flow", "new TCP flow"),
    ]
    .map(|(pkt, mode, case, name)| {
        let v = (0..args.reps)
            .map(|_| cost(lab, &pkt, mode, 1, args.repeat, true))
            .collect();
        point(
            &format!("{series} ({case})"),
            format!("sweep: {name}, {x} {unit}"),
            f64::from(x),
            v,
        )
    })
}
