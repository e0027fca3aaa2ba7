//! `xlb-bench`: what one packet costs the XDP program, via BPF_PROG_TEST_RUN, against a bare
//! `XDP_PASS` program measured the same way in the same run.
//!
//! Method: every figure is the median over many single runs (repeat = 1), because the kernel
//! does not restore the packet between repetitions and a rewriting program would measure its
//! own output from the second repetition on. Each single run carries the harness's fixed cost,
//! which the bare program shows. Every run's verdict is checked.
use std::time::Duration;

use clap::Parser;
use xlb_rig::lab::{CLIENT, Flags, Lab, VIP, XDP_PASS, XDP_REDIRECT, run_once, tcp};

#[derive(Parser)]
struct Args {
    /// Single runs per measurement.
    #[arg(long, default_value_t = 20_000)]
    runs: u32,
    /// Repetitions of every measurement (min/median/max over them).
    #[arg(long, default_value_t = 3)]
    reps: u32,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median ns of `runs` single runs; `packet(i)` is the i-th input, `want` the verdict.
fn measure(
    lab: &mut Lab,
    bare: bool,
    runs: u32,
    want: u32,
    packet: &dyn Fn(u32) -> Vec<u8>,
) -> f64 {
    let in0 = lab.in0;
    let prog = if bare {
        lab.b
            .dataplane_mut()
            .extra_program("xlb_bench_pass")
            .unwrap()
    } else {
        lab.b.dataplane_mut().program().unwrap()
    };
    let mut d = Vec::with_capacity(runs as usize);
    for i in 0..runs {
        let (ret, _, t) = run_once(prog, &packet(i), in0);
        assert_eq!(ret, want, "run {i}: unexpected verdict");
        d.push(t);
    }
    median(d).as_nanos() as f64
}

fn main() {
    let args = Args::parse();
    let mut lab = Lab::new("bench", &[1, 2]);
    // An established flow: its entry exists before the timed runs.
    let est = tcp(CLIENT, 40_000, VIP, 80, Flags::Ack, 64);
    let (ret, _, _) = run_once(lab.b.dataplane_mut().program().unwrap(), &est, lab.in0);
    assert_eq!(ret, XDP_REDIRECT);

    type Case<'a> = (&'a str, bool, u32, Box<dyn Fn(u32) -> Vec<u8>>);
    let cases: Vec<Case> = vec![
        (
            "bare XDP_PASS program (harness)",
            true,
            XDP_PASS,
            Box::new(|_| tcp(CLIENT, 40_000, VIP, 80, Flags::Ack, 64)),
        ),
        (
            "xlb: non-listener packet (pass)",
            false,
            XDP_PASS,
            Box::new(|_| tcp(CLIENT, 40_000, [198, 18, 5, 5], 22, Flags::Ack, 64)),
        ),
        (
            "xlb: established TCP flow",
            false,
            XDP_REDIRECT,
            Box::new(move |_| est.clone()),
        ),
        (
            "xlb: new TCP flow (SYN)",
            false,
            XDP_REDIRECT,
            Box::new(|i| tcp(CLIENT, 1024 + (i % 60_000) as u16, VIP, 80, Flags::Syn, 64)),
        ),
    ];
    let mut rows = Vec::new();
    for (name, bare, want, pkt) in &cases {
        let mut figures: Vec<f64> = (0..args.reps)
            .map(|_| measure(&mut lab, *bare, args.runs, *want, pkt.as_ref()))
            .collect();
        figures.sort_by(f64::total_cmp);
        rows.push((*name, figures));
    }
    let base = rows[0].1[rows[0].1.len() / 2];
    println!(
        "BPF_PROG_TEST_RUN, one packet per run, median of {} runs; min/median/max over {} repetitions",
        args.runs, args.reps
    );
    println!(
        "{:<36} {:>8} {:>8} {:>8} {:>10}",
        "case", "min ns", "med ns", "max ns", "x bare"
    );
    for (name, f) in &rows {
        let med = f[f.len() / 2];
        println!(
            "{name:<36} {:>8.0} {med:>8.0} {:>8.0} {:>9.2}x",
            f[0],
            f[f.len() - 1],
            med / base
        );
    }
    println!("(each single run includes the harness's fixed cost, shown by the bare program)");
}
