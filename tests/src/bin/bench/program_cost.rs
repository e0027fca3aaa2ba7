//! Section 1: the program's cost per packet through BPF_PROG_TEST_RUN. The kernel does not
//! restore the packet between repetitions, so the balancer runs inside a measuring wrapper
//! (`xlb_bench`) that puts the template back after each run; the wrapper alone
//! (`xlb_bench_restore`) is measured and subtracted, and the bare `XDP_PASS` program (the
//! harness) added back, so every figure compares with the floor (MAC-swap `XDP_TX`) and with
//! `XDP_PASS`. Verdicts and counters are checked for every configuration, and the real
//! program's output is checked once per case with etherparse.
use etherparse::SlicedPacket;
use lb_common::Stat;
use xlb_bench_abi::{NEW_FLOW, SAME_FLOW};
use xlb_rig::lab::{
    CLIENT, CLIENT6, Flags, Lab, VIP, VIP_DSR, VIP_TUN, VIP2, VIP6, VIP6_DSR, XDP_PASS,
    XDP_REDIRECT, run_once, run_repeated, target, target_mac, target6, tcp, tcp6, udp, v6,
};

use crate::{
    Args, object,
    report::{Figure, figure},
};

/// ns per repetition of `program` on `pkt` (kernel-timed average over `repeat`).
pub fn timed(lab: &mut Lab, program: &str, pkt: &[u8], repeat: u32, want: u32) -> f64 {
    let in0 = lab.in0;
    timed_on(lab, program, pkt, repeat, want, in0)
}

/// As [`timed`], the packet arriving on interface `ingress` (an ifindex).
pub fn timed_on(
    lab: &mut Lab,
    program: &str,
    pkt: &[u8],
    repeat: u32,
    want: u32,
    ingress: u32,
) -> f64 {
    let prog = object::program(lab.b.dataplane_mut(), program);
    let (ret, out, duration) = run_repeated(prog, pkt, ingress, repeat);
    assert_eq!(ret, want, "{program}: unexpected verdict");
    // The wrapper restores the template: what comes out is what went in (new-flow mode
    // changes the source port only).
    assert_eq!(out[..12], pkt[..12], "{program}: output MACs not restored");
    duration.as_nanos() as f64
}

/// A case run by the product's entry point itself, with no measuring wrapper: only for
/// packets it passes untouched (nothing to restore).
const UNWRAPPED: &str = "xlb";

struct Case {
    name: &'static str,
    /// The measuring wrapper that runs it (`xlb_bench`, `xlb_bench_tunnel`, `xlb_bench6`), or
    /// [`UNWRAPPED`].
    wrapper: &'static str,
    /// Where the packet arrives: the client's interface (`None`) or target K's.
    from_target: Option<u8>,
    packet: Vec<u8>,
    mode: u32,
    verdict: u32,
    stat: Stat,
    goal: Goal,
}

/// Issue 13's targets. Katran's figures on this machine (the anchor, its own XDP
/// program in the same kind of harness): established 128 ns, new flow 342 ns.
#[derive(Clone, Copy)]
enum Goal {
    /// At most this many ns per packet.
    Ns(f64, &'static str),
    /// At most this multiple of the bare `XDP_PASS` program.
    PassRatio(f64),
    None,
}

const NAT_NEW: Goal = Goal::Ns(250.0, "<= 250 ns (0.75x Katran)");
const NAT_EST: Goal = Goal::Ns(80.0, "<= 80 ns (0.6x Katran)");
const KATRAN_NEW: Goal = Goal::Ns(256.5, "<= 0.75x Katran's 342 ns");
const KATRAN_EST: Goal = Goal::Ns(76.8, "<= 0.6x Katran's 128 ns");

/// `small`: the data plane has the fixture's small tables (4,096 connections, 1,024 embryonic:
/// they stay in a core's cache), and only the new-flow cases run; else the default sizes.
pub fn program_cost(args: &Args, lab: &mut Lab, small: bool) -> Vec<Figure> {
    let est = tcp(CLIENT, 40_000, VIP, 80, Flags::Ack, 64);
    // The established flow, and its target: the reply case answers it.
    let (_, fwd, _) = run_once(lab.b.dataplane_mut().program().unwrap(), &est, lab.in0);
    let k = (1..=2u8)
        .find(|k| fwd[30..34] == target(*k))
        .expect("the established flow goes to a target");
    let cases = [
        Case {
            name: "xlb: established TCP flow",
            wrapper: "xlb_bench",
            from_target: None,
            packet: est.clone(),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: NAT_EST,
        },
        Case {
            name: "xlb: reply of the established flow (target -> client, rewritten to the VIP)",
            wrapper: "xlb_bench",
            from_target: Some(k),
            packet: tcp(target(k), 8080, CLIENT, 40_000, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: Goal::None,
        },
        Case {
            name: "xlb: new TCP flow (SYN; a new tuple every packet, embryonic table full: each insert evicts)",
            wrapper: "xlb_bench",
            from_target: None,
            packet: tcp(CLIENT, 1024, VIP, 80, Flags::Syn, 64),
            mode: NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: NAT_NEW,
        },
        Case {
            name: "xlb: new TCP flow (SYN) of a listener not owning its targets' replies (2 inserts)",
            wrapper: "xlb_bench",
            from_target: None,
            packet: tcp(CLIENT, 1024, VIP2, 80, Flags::Syn, 64),
            mode: NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: Goal::None,
        },
        Case {
            name: "xlb: new UDP flow (first datagram; a new tuple every packet, table full)",
            wrapper: "xlb_bench",
            from_target: None,
            packet: udp(CLIENT, 1024, VIP, 9000),
            mode: NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: NAT_NEW,
        },
        Case {
            name: "xlb: non-listener packet",
            wrapper: "xlb_bench",
            from_target: None,
            packet: tcp(CLIENT, 40_000, [198, 18, 5, 5], 22, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_PASS,
            stat: Stat::PassNotListener,
            goal: Goal::PassRatio(1.3),
        },
        Case {
            name: "xlb dsr: established TCP flow",
            wrapper: "xlb_bench",
            from_target: None,
            packet: tcp(CLIENT, 40_000, VIP_DSR, 8080, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: KATRAN_EST,
        },
        Case {
            name: "xlb dsr: new TCP flow (SYN)",
            wrapper: "xlb_bench",
            from_target: None,
            packet: tcp(CLIENT, 1024, VIP_DSR, 8080, Flags::Syn, 64),
            mode: NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: KATRAN_NEW,
        },
        Case {
            name: "xlb tunnel: established TCP flow (+ undoing the encapsulation)",
            wrapper: "xlb_bench_tunnel",
            from_target: None,
            packet: tcp(CLIENT, 40_000, VIP_TUN, 8080, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: KATRAN_EST,
        },
        Case {
            name: "xlb tunnel: new TCP flow (SYN) (+ undoing the encapsulation)",
            wrapper: "xlb_bench_tunnel",
            from_target: None,
            packet: tcp(CLIENT, 1024, VIP_TUN, 8080, Flags::Syn, 64),
            mode: NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: KATRAN_NEW,
        },
        Case {
            name: "xlb6: established TCP flow (NAT66; xlb6 entered directly)",
            wrapper: "xlb_bench6",
            from_target: None,
            packet: tcp6(CLIENT6, 40_000, VIP6, 80, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: Goal::None,
        },
        Case {
            name: "xlb6: new TCP flow (SYN) (NAT66; xlb6 entered directly)",
            wrapper: "xlb_bench6",
            from_target: None,
            packet: tcp6(CLIENT6, 1024, VIP6, 80, Flags::Syn, 64),
            mode: NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: Goal::None,
        },
        Case {
            name: "xlb6 dsr: established TCP flow (xlb6 entered directly)",
            wrapper: "xlb_bench6",
            from_target: None,
            packet: tcp6(CLIENT6, 40_000, VIP6_DSR, 8080, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
            goal: Goal::None,
        },
        Case {
            name: "xlb: non-listener IPv4 packet, unwrapped",
            wrapper: UNWRAPPED,
            from_target: None,
            packet: tcp(CLIENT, 40_000, [198, 18, 5, 5], 22, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_PASS,
            stat: Stat::PassNotListener,
            goal: Goal::PassRatio(1.3),
        },
        Case {
            name: "xlb: non-listener IPv6 packet, unwrapped (xlb, tail call, xlb6)",
            wrapper: UNWRAPPED,
            from_target: None,
            packet: tcp6(
                CLIENT6,
                40_000,
                v6([0x2001, 0xdb8, 5, 0, 0, 0, 0, 5]),
                22,
                Flags::Ack,
                64,
            ),
            mode: SAME_FLOW,
            verdict: XDP_PASS,
            stat: Stat::PassNotListener,
            goal: Goal::None,
        },
    ];
    let cases: Vec<Case> = cases
        .into_iter()
        .filter(|c| !small || c.mode == NEW_FLOW)
        .collect();
    let suffix = if small {
        " [small tables: 4,096 connections]"
    } else {
        ""
    };
    // The real program, once per case: verdict and the rewritten packet.
    let (in0, ifaces) = (lab.in0, lab.t.clone());
    let ingress = move |c: &Case| c.from_target.map_or(in0, |k| ifaces[usize::from(k) - 1]);
    let prog = lab.b.dataplane_mut().program().unwrap();
    for c in &cases {
        let (ret, out, _) = run_once(prog, &c.packet, ingress(c));
        assert_eq!(ret, c.verdict, "{}", c.name);
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let to_target = |k: u8| match p.net.as_ref().unwrap() {
            etherparse::NetSlice::Ipv4(ip) => ip.header().destination() == target(k),
            etherparse::NetSlice::Ipv6(ip) => ip.header().destination() == target6(k),
        };
        if c.from_target.is_some() {
            // A reply: from the VIP to the client.
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net.as_ref() else {
                panic!("{}: not IPv4", c.name)
            };
            assert_eq!(
                (ip.header().source(), ip.header().destination()),
                (VIP, CLIENT),
                "{}: from the VIP to the client",
                c.name
            );
        } else if c.verdict == XDP_REDIRECT {
            // NAT and tunnel: the (outer) destination is the target; dsr: its MAC.
            assert!(
                (1..=2).any(|k| to_target(k) || out[0..6] == target_mac(k)),
                "{}: sent to a target",
                c.name
            );
        } else {
            assert_eq!(out, c.packet, "{}: passed untouched", c.name);
        }
    }
    // Fill the tables first: from the first timed repetition on, every new flow evicts.
    for c in cases.iter().filter(|c| c.mode == NEW_FLOW) {
        object::set_template(lab.b.dataplane_mut(), &c.packet, c.mode);
        timed(lab, c.wrapper, &c.packet, WARM_UP, c.verdict);
    }
    let mut pass = Vec::new();
    let mut floor = Vec::new();
    let mut wrapper = Vec::new();
    let mut per_case: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..args.reps {
        pass.push(timed(lab, "xlb_bench_pass", &est, args.repeat, XDP_PASS));
        floor.push(timed(lab, "xlb_bench_floor", &est, args.repeat, 3));
        object::set_template(lab.b.dataplane_mut(), &est, SAME_FLOW);
        wrapper.push(timed(lab, "xlb_bench_restore", &est, args.repeat, XDP_PASS));
        for (i, c) in cases.iter().enumerate() {
            object::set_template(lab.b.dataplane_mut(), &c.packet, c.mode);
            // The wrapper's own cost with this template and mode (a mode that varies the
            // tuple costs the wrapper more).
            let on = ingress(c);
            let w = timed_on(
                lab,
                "xlb_bench_restore",
                &c.packet,
                args.repeat,
                XDP_PASS,
                on,
            );
            let before = lab.stats();
            let t = timed_on(lab, c.wrapper, &c.packet, args.repeat, c.verdict, on);
            let after = lab.stats();
            let moved = after[c.stat as usize] - before[c.stat as usize];
            assert_eq!(
                moved,
                u64::from(args.repeat),
                "{}: {:?} must count every repetition",
                c.name,
                c.stat
            );
            if c.mode == NEW_FLOW {
                // Each repetition a new flow: balanced by the table, never found.
                let missed = |s: &[u64]| s[Stat::EvMidFlowMiss as usize];
                assert_eq!(
                    missed(&after),
                    missed(&before),
                    "{}: a SYN is no miss",
                    c.name
                );
            }
            if c.wrapper == UNWRAPPED {
                per_case[i].push(t);
            } else {
                per_case[i].push(t - w + pass[pass.len() - 1]);
            }
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
    let mut out = if small {
        Vec::new()
    } else {
        vec![pass.clone(), floor.clone(), wrapper]
    };
    for (c, v) in cases.iter().zip(per_case) {
        let f = figure("program", &format!("{}{suffix}", c.name), "ns/packet", v);
        let f = if c.verdict == XDP_PASS {
            f.vs(&pass)
        } else {
            f.vs(&floor)
        };
        let f = match c.goal {
            Goal::Ns(limit, text) => {
                let met = f.median <= limit;
                f.goal(text, met)
            }
            Goal::PassRatio(r) => {
                let met = f.median <= r * pass.median;
                f.goal(&format!("<= {r}x XDP_PASS"), met)
            }
            Goal::None => f,
        };
        out.push(f);
    }
    out
}

/// Repetitions that fill the tables before new flows are timed: the default connection table
/// (262,144 entries; 131,072 on one CPU's LRU list of two) and embryonic table (65,536).
const WARM_UP: u32 = 400_000;
