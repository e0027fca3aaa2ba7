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
    CLIENT, CLIENT6, Flags, Lab, VIP, VIP_DSR, VIP_TUN, VIP6, VIP6_DSR, XDP_PASS, XDP_REDIRECT,
    run_once, run_repeated, target, target_mac, target6, tcp, tcp6, v6,
};

use crate::{
    Args, object,
    report::{Figure, figure},
};

/// ns per repetition of `program` on `pkt` (kernel-timed average over `repeat`).
pub fn timed(lab: &mut Lab, program: &str, pkt: &[u8], repeat: u32, want: u32) -> f64 {
    let in0 = lab.in0;
    let prog = object::program(lab.b.dataplane_mut(), program);
    let (ret, out, duration) = run_repeated(prog, pkt, in0, repeat);
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
    packet: Vec<u8>,
    mode: u32,
    verdict: u32,
    stat: Stat,
}

pub fn program_cost(args: &Args, lab: &mut Lab) -> Vec<Figure> {
    let est = tcp(CLIENT, 40_000, VIP, 80, Flags::Ack, 64);
    let cases = [
        Case {
            name: "xlb: established TCP flow",
            wrapper: "xlb_bench",
            packet: est.clone(),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb: new TCP flow (SYN)",
            wrapper: "xlb_bench",
            packet: tcp(CLIENT, 1024, VIP, 80, Flags::Syn, 64),
            mode: NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb: non-listener packet",
            wrapper: "xlb_bench",
            packet: tcp(CLIENT, 40_000, [198, 18, 5, 5], 22, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_PASS,
            stat: Stat::PassNotListener,
        },
        Case {
            name: "xlb dsr: established TCP flow",
            wrapper: "xlb_bench",
            packet: tcp(CLIENT, 40_000, VIP_DSR, 8080, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb dsr: new TCP flow (SYN)",
            wrapper: "xlb_bench",
            packet: tcp(CLIENT, 1024, VIP_DSR, 8080, Flags::Syn, 64),
            mode: NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb tunnel: established TCP flow (+ undoing the encapsulation)",
            wrapper: "xlb_bench_tunnel",
            packet: tcp(CLIENT, 40_000, VIP_TUN, 8080, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb tunnel: new TCP flow (SYN) (+ undoing the encapsulation)",
            wrapper: "xlb_bench_tunnel",
            packet: tcp(CLIENT, 1024, VIP_TUN, 8080, Flags::Syn, 64),
            mode: NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb6: established TCP flow (NAT66; xlb6 entered directly)",
            wrapper: "xlb_bench6",
            packet: tcp6(CLIENT6, 40_000, VIP6, 80, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb6: new TCP flow (SYN) (NAT66; xlb6 entered directly)",
            wrapper: "xlb_bench6",
            packet: tcp6(CLIENT6, 1024, VIP6, 80, Flags::Syn, 64),
            mode: NEW_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb6 dsr: established TCP flow (xlb6 entered directly)",
            wrapper: "xlb_bench6",
            packet: tcp6(CLIENT6, 40_000, VIP6_DSR, 8080, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_REDIRECT,
            stat: Stat::FwdRedirect,
        },
        Case {
            name: "xlb: non-listener IPv4 packet, unwrapped",
            wrapper: UNWRAPPED,
            packet: tcp(CLIENT, 40_000, [198, 18, 5, 5], 22, Flags::Ack, 64),
            mode: SAME_FLOW,
            verdict: XDP_PASS,
            stat: Stat::PassNotListener,
        },
        Case {
            name: "xlb: non-listener IPv6 packet, unwrapped (xlb, tail call, xlb6)",
            wrapper: UNWRAPPED,
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
        },
    ];
    // The real program, once per case: verdict and the rewritten packet.
    let prog = lab.b.dataplane_mut().program().unwrap();
    for c in &cases {
        let (ret, out, _) = run_once(prog, &c.packet, lab.in0);
        assert_eq!(ret, c.verdict, "{}", c.name);
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let to_target = |k: u8| match p.net.as_ref().unwrap() {
            etherparse::NetSlice::Ipv4(ip) => ip.header().destination() == target(k),
            etherparse::NetSlice::Ipv6(ip) => ip.header().destination() == target6(k),
        };
        if c.verdict == XDP_REDIRECT {
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
    let mut pass = Vec::new();
    let mut floor = Vec::new();
    let mut wrapper = Vec::new();
    let mut per_case: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..args.reps {
        pass.push(timed(lab, "xlb_bench_pass", &est, args.repeat, XDP_PASS));
        floor.push(timed(lab, "xlb_bench_floor", &est, args.repeat, 3));
        object::set_template(lab.b.dataplane_mut(), &est, SAME_FLOW);
        let w = timed(lab, "xlb_bench_restore", &est, args.repeat, XDP_PASS);
        wrapper.push(w);
        for (i, c) in cases.iter().enumerate() {
            object::set_template(lab.b.dataplane_mut(), &c.packet, c.mode);
            let before = lab.stats();
            let t = timed(lab, c.wrapper, &c.packet, args.repeat, c.verdict);
            let after = lab.stats();
            let moved = after[c.stat as usize] - before[c.stat as usize];
            assert_eq!(
                moved,
                u64::from(args.repeat),
                "{}: {:?} must count every repetition",
                c.name,
                c.stat
            );
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
    let mut out = vec![pass.clone(), floor.clone(), wrapper];
    for (c, v) in cases.iter().zip(per_case) {
        let f = figure("program", c.name, "ns/packet", v);
        let f = match c.mode {
            NEW_FLOW => {
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
