//! `xlb-bench` (run by `cargo xtask bench`): what xlb costs, against baselines measured in the
//! same run. Prints a table, writes JSON, and with every section a PNG plot and the generated
//! part of BENCHMARKS.md (whose method and findings prose is kept by hand).
//!
//! One module per section: [`program_cost`] (BPF_PROG_TEST_RUN through a measuring wrapper),
//! [`control_plane`] (Maglev builds, 1,000 listeners, health-check detection),
//! [`packet_rate`] (generator -> balancer -> sink), [`real_clients`] (wrk and iperf3 through
//! xlb, nftables, HAProxy, routed), [`report`] (table, plot, report). The measuring programs
//! are in an object of their own ([`object`], built from `bench-ebpf`); peer configs are files
//! in `tests/bench/`.
mod control_plane;
mod object;
mod packet_rate;
mod program_cost;
mod real_clients;
mod report;
mod sweep;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use report::Figure;
use xlb_rig::lab::{CLIENT, Flags, Lab, VIP, XDP_REDIRECT, run_once, tcp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    ProgramCost,
    Sweeps,
    ControlPlane,
    PacketRate,
    Health,
    RealClients,
}

#[derive(Parser)]
pub struct Args {
    /// Repetitions per BPF_PROG_TEST_RUN call.
    #[arg(long, default_value_t = 1_000_000)]
    pub repeat: u32,
    /// Times every figure is measured (min/median/max over them).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// The agent binary (for the health-check detection latency).
    #[arg(long)]
    pub xlb: PathBuf,
    /// The backend binary.
    #[arg(long)]
    pub backend: PathBuf,
    /// Where JSON and the plot go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// The Markdown report to (re)write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub report: PathBuf,
    /// The plot that the report shows.
    #[arg(long, default_value = "docs/bench.png")]
    pub plot: PathBuf,
    /// The sweeps' plot.
    #[arg(long, default_value = "docs/sweep.png")]
    pub sweep_plot: PathBuf,
    /// The CPU the benchmark (and so BPF_PROG_TEST_RUN and the packet generator) runs on.
    #[arg(long, default_value_t = 1)]
    pub cpu: usize,
    /// Frames per packet-rate run.
    #[arg(long, default_value_t = 1_000_000)]
    pub frames: u32,
    /// Sections to run (comma-separated): program-cost, sweeps, control-plane, packet-rate,
    /// health, real-clients. BENCHMARKS.md and the plots are written only when all of them run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "program-cost,sweeps,control-plane,packet-rate,health,real-clients"
    )]
    pub sections: Vec<Section>,
    /// Only loop one case for SECONDS (to sample with `perf record`): see `--profile-case`.
    #[arg(long)]
    pub profile: Option<u64>,
    /// The case `--profile` loops: `established`, `new-flow` (TCP SYN, a new tuple every
    /// packet) or `non-listener`.
    #[arg(long, default_value = "established")]
    pub profile_case: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    // One named CPU: BPF_PROG_TEST_RUN runs on the calling thread's, per-CPU counters and LRU
    // lists stay on one, and the packet generator's frames are forwarded and sunk there too.
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(args.cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)?;
    let on = |s: Section| args.sections.contains(&s);
    let mut figs: Vec<Figure> = Vec::new();
    if on(Section::ProgramCost) || args.profile.is_some() {
        eprintln!(
            "1/5 program cost: repeat {} x {} repetitions per figure",
            args.repeat, args.reps
        );
        // The default table sizes (262,144 connections, 65,536 embryonic): a new flow's insert
        // evicts from a table of the size users run, not from one that fits in the cache.
        let mut c = xlb_rig::lab::cfg(&[1, 2]);
        c.tables.max_connections = lb_common::limits::DEFAULT_MAX_CONNECTIONS;
        let mut lab = Lab::with_config_object("bench", &c, object::BENCH_OBJECT);
        if let Some(secs) = args.profile {
            let (pkt, mode, verdict) = match args.profile_case.as_str() {
                "new-flow" => (
                    tcp(CLIENT, 1024, VIP, 80, Flags::Syn, 64),
                    xlb_bench_abi::NEW_FLOW,
                    XDP_REDIRECT,
                ),
                "non-listener" => (
                    tcp(CLIENT, 40_000, [198, 18, 5, 5], 22, Flags::Ack, 64),
                    xlb_bench_abi::SAME_FLOW,
                    xlb_rig::lab::XDP_PASS,
                ),
                _ => (
                    tcp(CLIENT, 40_000, VIP, 80, Flags::Ack, 64),
                    xlb_bench_abi::SAME_FLOW,
                    XDP_REDIRECT,
                ),
            };
            run_once(lab.b.dataplane_mut().program().unwrap(), &pkt, lab.in0);
            object::set_template(lab.b.dataplane_mut(), &pkt, mode);
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(secs) {
                program_cost::timed(&mut lab, "xlb_bench", &pkt, args.repeat, verdict);
            }
            return Ok(());
        }
        figs.extend(program_cost::program_cost(&args, &mut lab, false));
        drop(lab);
        // The new flows again with tables that fit in the cache.
        let mut small = Lab::with_object("bench-s", &[1, 2], object::BENCH_OBJECT);
        figs.extend(program_cost::program_cost(&args, &mut small, true));
    }
    if on(Section::Sweeps) {
        eprintln!("1b/5 sweeps: live flows, replies, table sizes, listeners, targets");
        figs.extend(sweep::sweeps(&args));
    }
    if on(Section::ControlPlane) {
        eprintln!("2/5 control plane: Maglev builds, 1,000 listeners");
        figs.extend(control_plane::maglev_builds(args.reps));
        figs.extend(control_plane::thousand_listeners(args.reps));
    }
    if on(Section::PacketRate) {
        eprintln!(
            "3/5 packet rate: generator -> balancer -> sink, {} frames per run",
            args.frames
        );
        figs.extend(packet_rate::packet_rate(&args));
    }
    if on(Section::Health) {
        eprintln!("4/5 health-check detection on the rig");
        figs.push(control_plane::health_detection(&args));
    }
    if on(Section::RealClients) {
        eprintln!("5/5 real clients: wrk through xlb, nftables DNAT, HAProxy, and routed");
        figs.extend(real_clients::real_clients(&args));
    }

    let t = report::table(&figs);
    println!("{t}");
    let json = args.out.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&figs)?)?;
    if args.sections.len() < Section::value_variants().len() {
        eprintln!(
            "wrote {} (some sections only: BENCHMARKS.md and the plot are left as they are)",
            json.display()
        );
        return Ok(());
    }
    if let Some(dir) = args.plot.parent() {
        std::fs::create_dir_all(dir)?;
    }
    report::plot(&args.plot, &figs)?;
    report::plot_sweeps(&args.sweep_plot, &figs)?;
    let when = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let generated = format!(
        "Last run: {when}, on {machine}, `repeat` = {repeat}, {frames} frames per packet-rate run. \
Every figure is min/median/max over {reps} repetitions; ratios compare medians with a baseline measured in \
the same run. The machine is shared and noisy: compare ratios, not absolute figures across runs.\n\n\
![cost per packet]({plot})\n\n![cost against the work]({sweep})\n\n{t}",
        plot = args.plot.display(),
        sweep = args.sweep_plot.display(),
        machine = report::machine(),
        reps = args.reps,
        repeat = args.repeat,
        frames = args.frames,
    );
    report::write_report(&args.report, &generated)?;
    eprintln!(
        "wrote {}, {} and {}",
        args.report.display(),
        args.plot.display(),
        json.display()
    );
    Ok(())
}
