//! `xlb-rig`: the demo rig. `up` / `down` leave it standing or remove it; `demo` brings it up,
//! starts the backends and the agent, and tears everything down on Ctrl-C.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use signal_hook::{
    consts::{SIGINT, SIGTERM},
    iterator::Signals,
};
use xlb_rig::{
    Rig, RigSpec, Setup,
    dsr_rig::{DSR_VIP, DsrRig, TUNNEL_VIP, dsr_target},
    fleet_rig::{FLEET_VIP, FleetRig, NodeExtra, TARGETS as FLEET_TARGETS},
    rig::{VIP, VIP6},
    sh,
};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the rig and start the backends; leave them running.
    Up {
        #[arg(long)]
        backend: PathBuf,
    },
    /// Remove the rig (namespaces `xlb-client`, `xlb-lb`, `xlb-t*` and the processes in them).
    Down,
    /// Rig + backends + agent in the foreground; Ctrl-C stops and removes everything.
    Demo {
        #[arg(long)]
        xlb: PathBuf,
        #[arg(long)]
        backend: PathBuf,
        /// The direct-server-return rig instead: a router, `dsr` and `tunnel` listeners.
        #[arg(long)]
        dsr: bool,
        /// The fleet rig instead: a router with BIRD spreading flows over three nodes by ECMP.
        #[arg(long)]
        fleet: bool,
    },
}

const PREFIX: &str = "xlb";
const TARGETS: usize = 2;
const DEMO_SOCKET: &str = "/run/xlb/xlb.sock";

fn main() -> anyhow::Result<()> {
    // Register before anything starts, so Ctrl-C during setup still tears down.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    match Cli::parse().cmd {
        Cmd::Up { backend } => {
            let (rig, cfg) = bring_up(&backend)?;
            println!("rig is up; a config for it: {}", cfg.display());
            println!(
                "run the agent: ip netns exec xlb-lb target/release/xlb run --config {}",
                cfg.display()
            );
            println!("remove it:     cargo xtask rig down");
            // Leave namespaces and backends in place.
            std::mem::forget(rig);
            Ok(())
        }
        Cmd::Down => down(),
        Cmd::Demo {
            xlb,
            backend,
            dsr: true,
            ..
        } => dsr_demo(&xlb, &backend, &mut signals),
        Cmd::Demo {
            xlb,
            backend,
            fleet: true,
            ..
        } => fleet_demo(&xlb, &backend, &mut signals),
        Cmd::Demo { xlb, backend, .. } => {
            let (mut rig, cfg) = bring_up(&backend)?;
            rig.start_agent(&xlb, &cfg).context("starting the agent")?;
            let x = xlb.display();
            println!(
                "\n\
xlb is balancing VIP {VIP} and [{VIP6}] on the demo rig (config: {cfg}).
  client ns xlb-client 198.18.0.2 / 2001:db8::2 -> balancer ns xlb-lb
    -> targets xlb-t1 198.18.1.2 / 2001:db8:1::2, xlb-t2 198.18.2.2 / 2001:db8:2::2

Try it from another shell:
  ip netns exec xlb-client curl -s http://{VIP}/            # backend-1 or backend-2
  ip netns exec xlb-client curl -s 'http://[{VIP6}]/'      # the same over IPv6
  for i in $(seq 10); do ip netns exec xlb-client curl -s http://{VIP}/; done
  echo hello | ip netns exec xlb-client nc -u -w1 {VIP} 9000  # UDP echo
  ip netns exec xlb-client ping -c2 {VIP6}       # answered by the balancer
  {x} status                                             # listeners, targets, counters
  {x} targets health                                     # health checks, states, reasons
  {x} targets deregister web 198.18.2.2             # drain backend-2 (10 s here)
  {x} targets register web 198.18.2.2               # and back
  edit {cfg}, then {x} reload                      # live reload

Ctrl-C stops the agent, detaches XDP and removes the rig.",
                cfg = cfg.display()
            );
            let mut exited = None;
            'wait: loop {
                if let Some(s) = signals.pending().next() {
                    println!("\nsignal {s}: stopping");
                    break 'wait;
                }
                if let Some(status) = rig.exited("xlb") {
                    exited = Some(status);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let status = rig.stop("xlb").or(exited);
            drop(rig);
            // The demo's runtime registrations belong to a rig that no longer exists.
            let _ = std::fs::remove_file(
                std::path::Path::new(DEMO_SOCKET).with_extension("state.json"),
            );
            println!(
                "agent exited ({}); rig removed",
                status.map(|s| s.to_string()).unwrap_or_default()
            );
            Ok(())
        }
    }
}

/// Names of the DSR demo's namespaces.
const DSR_PREFIX: &str = "xlb-dsr";
const DSR_SOCKET: &str = "/run/xlb/xlb-dsr.sock";

/// The direct-server-return demo: targets set up with `xlb target-setup --apply`, the agent
/// with a `dsr` and a `tunnel` listener, until Ctrl-C.
fn dsr_demo(xlb: &Path, backend: &Path, signals: &mut Signals) -> anyhow::Result<()> {
    down()?;
    let mut rig = DsrRig::up(DSR_PREFIX)?;
    for k in 1..=4 {
        rig.set_up_target(xlb, k)?;
        rig.start_backend(backend, k)?;
    }
    let cfg = std::env::temp_dir().join("xlb-dsr-demo.toml");
    let state = std::env::temp_dir().join("xlb-dsr-demo-state.json");
    std::fs::write(&cfg, rig.config(DSR_SOCKET.as_ref(), &state))?;
    rig.start_agent(xlb, &cfg).context("starting the agent")?;
    let x = xlb.display();
    println!(
        "\n\
xlb is balancing with direct server return (config: {cfg}).
  client ns {p}-client 198.18.0.2 -> {p}-router -> balancer {p}-lb (one arm in, replies bypass it)
  dsr targets    {p}-t1 {t1}, {p}-t2 {t2} (L2 next to the balancer)   VIP {DSR_VIP}:80
  tunnel targets {p}-t3 {t3}, {p}-t4 {t4} (routed, IP-in-IP)        VIP {TUNNEL_VIP}:80
  every target's replies go through the router, never the balancer.

Try it from another shell:
  for i in $(seq 6); do ip netns exec {p}-client curl -s http://{DSR_VIP}/; done
  for i in $(seq 6); do ip netns exec {p}-client curl -s http://{TUNNEL_VIP}/; done
  {x} status --socket {DSR_SOCKET}                     # modes, counters
  {x} targets health --socket {DSR_SOCKET}             # probes go to the VIP through the dsr path
  ip netns exec {p}-t2 ip addr del {DSR_VIP}/32 dev lo    # t2 loses the VIP: unhealthy in ~2 s
  ip netns exec {p}-t3 {x} decap status --pin-dir /tmp/{p}-bpffs/t3

Ctrl-C stops the agent and removes the rig.",
        cfg = cfg.display(),
        p = DSR_PREFIX,
        t1 = dsr_target(1),
        t2 = dsr_target(2),
        t3 = dsr_target(3),
        t4 = dsr_target(4),
    );
    loop {
        if let Some(s) = signals.pending().next() {
            println!("\nsignal {s}: stopping");
            break;
        }
        if let Some(status) = rig.children.exited("xlb") {
            println!("agent exited ({status})");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(rig);
    let _ = std::fs::remove_file(&state);
    println!("rig removed");
    Ok(())
}

/// Names of the fleet demo's namespaces.
const FLEET_PREFIX: &str = "xlb-fleet";
const FLEET_NODES: usize = 3;

/// The fleet demo: a router with BIRD, three nodes (xlb + BIRD each, tunnel mode), three
/// targets (the third not in the config), until Ctrl-C.
fn fleet_demo(xlb: &Path, backend: &Path, signals: &mut Signals) -> anyhow::Result<()> {
    down()?;
    let mut rig = FleetRig::up(FLEET_PREFIX, FLEET_NODES)?;
    for k in 1..=FLEET_TARGETS {
        rig.start_target(xlb, backend, k)?;
    }
    rig.start_router_bird()?;
    for k in 1..=FLEET_NODES {
        rig.start_node(xlb, k, &NodeExtra::default())?;
    }
    let all: Vec<usize> = (1..=FLEET_NODES).collect();
    rig.wait_next_hops(&all, std::time::Duration::from_secs(30))?;
    let x = xlb.display();
    let d = rig.dir.display();
    println!(
        "\n\
Three xlb nodes announce VIP {FLEET_VIP} over BGP; the router spreads flows over them (ECMP).
  client ns {p}-client 198.18.0.2 -> {p}-router (BIRD) -> {p}-n1..n3 (xlb + BIRD, tunnel mode)
    -> targets {p}-t1 198.18.31.2, {p}-t2 198.18.32.2 (and {p}-t3 198.18.33.2, not in the config)
  node K's config {d}/nK.toml, control socket {d}/nK.sock, BIRD config {d}/nK-bird.conf

Try it from another shell:
  for i in $(seq 12); do ip netns exec {p}-client curl -s http://{FLEET_VIP}/; done
  ip netns exec {p}-router ip route show {FLEET_VIP}         # one next hop per node
  birdc -s {d}/bird0.sock show route                          # the router's BGP view
  {x} status --socket {d}/n1.sock                   # node 1: announced, and why
  {x} node drain --socket {d}/n2.sock               # node 2 withdraws; resume to undo
  for k in 1 2 3; do {x} targets register web 198.18.33.2 --socket {d}/n$k.sock; done

Ctrl-C stops everything and removes the rig.",
        p = FLEET_PREFIX,
    );
    loop {
        if let Some(s) = signals.pending().next() {
            println!("\nsignal {s}: stopping");
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(rig);
    println!("rig removed");
    Ok(())
}

/// A fresh rig with its backends running, and its config written: (rig, config path).
fn bring_up(backend: &std::path::Path) -> anyhow::Result<(Rig, PathBuf)> {
    down()?;
    let mut rig = Rig::up(&RigSpec {
        prefix: PREFIX.into(),
        targets: TARGETS,
    })?;
    rig.start_backends(backend)?;
    let cfg = std::env::temp_dir().join("xlb-demo.toml");
    std::fs::write(
        &cfg,
        rig.config(
            DEMO_SOCKET.as_ref(),
            &Setup {
                ipv6: true,
                ..Setup::demo(&[1, 2])
            },
        ),
    )?;
    Ok((rig, cfg))
}

/// Remove a rig left by `up` or by a demo that was killed: stop what runs inside its
/// namespaces (processes this rig started), then delete them.
fn down() -> anyhow::Result<()> {
    let list = sh("ip netns list")?;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let ours = name == "xlb-client"
            || name == "xlb-lb"
            || name
                .strip_prefix("xlb-t")
                .is_some_and(|n| n.parse::<u32>().is_ok())
            || name.starts_with(&format!("{DSR_PREFIX}-"))
            || name.starts_with(&format!("{FLEET_PREFIX}-"));
        if !ours {
            continue;
        }
        for pid in sh(&format!("ip netns pids {name}"))?.split_whitespace() {
            let _ = sh(&format!("kill {pid}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        sh(&format!("ip netns del {name}"))?;
        println!("removed namespace {name}");
    }
    Ok(())
}
