//! Section 5: real clients. wrk (keep-alive and `Connection: close`) and iperf3 from the client
//! namespace of a rig like the demo's, through xlb, nftables DNAT, HAProxy `mode tcp` and
//! plain routing, interleaved per repetition. Every path reaches target 1 only, as the routed
//! baseline does. The clients run on CPU 0, the servers (and HAProxy) on CPU 1. xlb's own cost
//! comes from the kernel's run-time statistics of its program (BPF_ENABLE_STATS), HAProxy's
//! from its process. Peer configs are files in `tests/bench/`.
use std::time::Duration;

use xlb_rig::{Rig, RigSpec, Setup, lab::VIP};

use crate::{
    Args,
    report::{Figure, figure},
};

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

/// CPU the clients (wrk, iperf3's client) run on; the servers and HAProxy run on the other.
const CLIENT_CPU: &str = "0";
const SERVER_CPU: &str = "1";

/// Run time and runs of the balancer's XDP programs (`xlb`, `xlb6`) as the kernel counts
/// them while BPF_ENABLE_STATS is on: (ns, runs).
fn xlb_program_stats() -> (u64, u64) {
    let mut t = (0, 0);
    for p in aya::programs::loaded_programs().flatten() {
        if matches!(p.name_as_str(), Some("xlb" | "xlb6")) {
            t.0 += p.run_time().as_nanos() as u64;
            t.1 += p.run_count();
        }
    }
    t
}

/// CPU time (user + system, ns) process `pid` used so far.
fn process_cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = f.iter().sum::<u64>();
    ticks * 1_000_000_000 / 100
}

/// What the balancer itself cost during a run, where it can be attributed.
#[derive(Clone, Copy, Default)]
struct Own {
    /// xlb: the program's ns per packet, in situ.
    ns_per_packet: Option<f64>,
    /// Share of one CPU the balancer used (xlb: its program; HAProxy: its process).
    cpu_share: Option<f64>,
}

/// Measure what `f` costs the balancer of `path` (`haproxy`: its PID).
fn own_cost<T>(path: Path4, haproxy: Option<u32>, f: impl FnOnce() -> T) -> (T, Own) {
    let t0 = std::time::Instant::now();
    let (x0, h0) = (xlb_program_stats(), haproxy.map(process_cpu_ns));
    let r = f();
    let wall = t0.elapsed().as_nanos() as f64;
    let own = match path {
        Path4::Xlb => {
            let (t1, n1) = xlb_program_stats();
            let (dt, dn) = (t1 - x0.0, n1 - x0.1);
            Own {
                ns_per_packet: (dn > 0).then(|| dt as f64 / dn as f64),
                cpu_share: Some(dt as f64 / wall),
            }
        }
        Path4::Haproxy => Own {
            ns_per_packet: None,
            cpu_share: haproxy.map(|pid| (process_cpu_ns(pid) - h0.unwrap_or(0)) as f64 / wall),
        },
        _ => Own::default(),
    };
    (r, own)
}

/// A server started for the benchmark: killed and reaped when dropped, on a panic too (a
/// child process is not ended by dropping its handle).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one bounded wrk run found.
#[derive(Clone, Copy)]
struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Busy CPU of the whole machine per request.
    cpu_us: f64,
    own: Own,
}

/// A count wrk prints after `prefix` (`Socket errors: connect 0, read 0, ...` or
/// `Non-2xx or 3xx responses: 12`), summed.
fn wrk_errors(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix(prefix))
        .flat_map(|rest| {
            rest.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
        })
        .sum()
}

/// One bounded wrk run; `Err` (with wrk's report) if it saw socket errors or non-2xx answers.
fn wrk(rig: &Rig, url: &str, close: bool) -> Result<WrkResult, String> {
    let busy = cpu_busy();
    let mut c = rig.client.command("taskset");
    c.args(["-c", CLIENT_CPU, "wrk"]);
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
    // A run with errors measures something else than serving: it does not count.
    let socket = wrk_errors(&text, "Socket errors:");
    let non2xx = wrk_errors(&text, "Non-2xx or 3xx responses:");
    if socket != 0 || non2xx != 0 {
        return Err(format!(
            "wrk {url}: {socket} socket errors, {non2xx} non-2xx responses:\n{text}"
        ));
    }
    let requests = rps * 3.0;
    let cpu_us = jiffies as f64 * 10_000.0 / requests.max(1.0);
    let latency =
        |p: &str| field(p).unwrap_or_else(|| panic!("wrk printed no {p} latency: {text}"));
    Ok(WrkResult {
        rps,
        p50_ms: latency("50%"),
        p99_ms: latency("99%"),
        cpu_us,
        own: Own::default(),
    })
}

/// Attempts of one wrk measurement: a run with errors is discarded and repeated; the
/// benchmark fails if every attempt had them.
const WRK_ATTEMPTS: usize = 3;

/// Gbit/s received in one bounded iperf3 run (3 s) from the client namespace.
fn iperf(rig: &Rig, host: &str) -> f64 {
    let out = rig
        .client
        .command("taskset")
        .args([
            "-c", CLIENT_CPU, "iperf3", "-c", host, "-p", "5201", "-t", "3", "-J",
        ])
        .output()
        .expect("iperf3 runs");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64();
    bps.unwrap_or_else(|| panic!("iperf3 to {host}: {}", String::from_utf8_lossy(&out.stdout)))
        / 1e9
}

pub fn real_clients(args: &Args) -> Vec<Figure> {
    let mut rig = Rig::up(&RigSpec {
        prefix: format!("xlb-bench-{}", std::process::id()),
        targets: 2,
    })
    .unwrap();
    // The servers on their CPU (the benchmark itself was pinned for the earlier sections).
    let mut all = nix::sched::CpuSet::new();
    for c in 0..2 {
        let _ = all.set(c);
    }
    let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &all);
    for k in 1..=2 {
        let mut cmd = rig.targets[k - 1].command("taskset");
        cmd.args(["-c", SERVER_CPU]).arg(&args.backend);
        rig.start_server(cmd, &format!("backend-{k}"), "[::]:8080", "[::]:9000")
            .unwrap();
    }
    // The kernel counts each program's run time while this is held.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let dir = std::env::temp_dir().join("xlb-bench-clients");
    std::fs::create_dir_all(&dir).unwrap();
    let paths = [Path4::Routed, Path4::Xlb, Path4::Nftables, Path4::Haproxy];
    // (path, close) -> per-repetition results
    let mut results: Vec<((Path4, bool), Vec<WrkResult>)> = Vec::new();
    let mut throughput: Vec<(Path4, Vec<f64>)> = paths.iter().map(|p| (*p, Vec::new())).collect();
    let mut iperf_own: Vec<(Path4, Own)> = Vec::new();
    let mut discarded = 0u32;
    let _iperf_server = Reaped(
        rig.targets[0]
            .command("taskset")
            .args(["-c", SERVER_CPU, "iperf3", "-s", "-p", "5201"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("iperf3 server starts"),
    );
    std::thread::sleep(Duration::from_millis(300));
    rig.client
        .exec("ip route add 198.18.1.0/24 via 198.18.0.1")
        .unwrap();
    // Each path its own client address: every path reaches the same target port, and a
    // connection it closed (TIME_WAIT on the target) must not meet another path's new one on
    // the same tuple, with sequence numbers and timestamps drawn for another destination.
    // And each repetition: its connections closed on the target are in TIME_WAIT there for a
    // minute, longer than a repetition takes.
    for i in 0..paths.len() * args.reps {
        rig.client
            .exec(&format!("ip addr add 198.18.0.{}/24 dev eth0", 10 + i))
            .unwrap();
    }
    // Repetitions outside, paths inside: drift in the machine's load hits every path alike.
    for rep in 0..args.reps {
        for (i, &path) in paths.iter().enumerate() {
            let src = format!("198.18.0.{}", 10 + rep * paths.len() + i);
            for net in ["198.18.1.0/24", "198.18.100.0/24"] {
                rig.client
                    .exec(&format!("ip route replace {net} via 198.18.0.1 src {src}"))
                    .unwrap();
            }
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
                    // Target 1 only, as every other path.
                    let text = rig.config(&socket, &Setup::demo(&[1]))
                        + "\n"
                        + include_str!("../../../bench/iperf-listener.toml");
                    std::fs::write(&config, text).unwrap();
                    rig.start_agent(&args.xlb, &config).unwrap();
                }
                Path4::Nftables => {
                    std::fs::write(
                        dir.join("rules.nft"),
                        include_str!("../../../bench/dnat.nft"),
                    )
                    .unwrap();
                    rig.lb
                        .exec(&format!("nft -f {}", dir.join("rules.nft").display()))
                        .unwrap();
                }
                Path4::Haproxy => {
                    rig.lb.exec("ip addr add 198.18.100.10/32 dev lo").unwrap();
                    std::fs::write(
                        dir.join("haproxy.cfg"),
                        include_str!("../../../bench/haproxy.cfg"),
                    )
                    .unwrap();
                    let child = rig
                        .lb
                        .command("taskset")
                        .args(["-c", SERVER_CPU, "haproxy", "-db", "-f"])
                        .arg(dir.join("haproxy.cfg"))
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .expect("haproxy starts");
                    haproxy = Some(Reaped(child));
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
            let haproxy_pid = haproxy.as_ref().and_then(|Reaped(c)| {
                // `ip netns exec` may fork: HAProxy is the child's child then.
                let pid = c.id();
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse().ok())
                    .or(Some(pid))
            });
            for close in [false, true] {
                let (mut r, own) = (1..=WRK_ATTEMPTS)
                    .find_map(|attempt| {
                        let (r, own) = own_cost(path, haproxy_pid, || wrk(&rig, &url, close));
                        match r {
                            Ok(r) => Some((r, own)),
                            Err(e) if attempt < WRK_ATTEMPTS => {
                                eprintln!("  discarded, run again: {e}");
                                discarded += 1;
                                None
                            }
                            Err(e) => panic!("{WRK_ATTEMPTS} wrk runs in a row had errors: {e}"),
                        }
                    })
                    .expect("a run or a panic");
                r.own = own;
                eprintln!(
                    "  wrk {}{}: {:.0} req/s, p99 {:.1} ms",
                    path.name(),
                    if close { ", Connection: close" } else { "" },
                    r.rps,
                    r.p99_ms
                );
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
            let (gbps, own) = own_cost(path, haproxy_pid, || iperf(&rig, host));
            if let Some((_, v)) = throughput.iter_mut().find(|(p, _)| *p == path) {
                v.push(gbps);
            }
            iperf_own.push((path, own));
            match path {
                Path4::Xlb => {
                    rig.stop("xlb");
                }
                Path4::Nftables => {
                    rig.lb.exec("nft delete table ip xlb_bench").unwrap();
                }
                Path4::Haproxy => {
                    // Killed and reaped when dropped.
                    drop(haproxy);
                    let _ = rig.lb.exec("ip addr del 198.18.100.10/32 dev lo");
                }
                Path4::Routed => {}
            }
        }
    }
    drop(_iperf_server);
    drop(rig);
    let _ = std::fs::remove_dir_all(&dir);
    let mut figs = vec![figure(
        "clients",
        "wrk runs discarded and run again (socket errors or non-2xx answers)",
        "runs",
        vec![f64::from(discarded)],
    )];
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
        figs.extend(own_figures(
            &format!("iperf3 TCP, 3 s: {}", p.name()),
            iperf_own
                .iter()
                .filter(|(q, _)| q == p)
                .map(|(_, o)| *o)
                .collect(),
        ));
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
            figs.extend(own_figures(
                &format!("wrk {conn}: {}", p.name()),
                r.iter().map(|x| x.own).collect(),
            ));
        }
    }
    figs
}

/// The balancer's own cost figures of runs named `what`, where the runs have them.
fn own_figures(what: &str, runs: Vec<Own>) -> Vec<Figure> {
    let mut out = Vec::new();
    let ns: Vec<f64> = runs.iter().filter_map(|o| o.ns_per_packet).collect();
    if !ns.is_empty() {
        out.push(figure(
            "clients",
            &format!("{what}: its XDP program in situ (kernel run-time stats)"),
            "ns/packet",
            ns,
        ));
    }
    let cpu: Vec<f64> = runs
        .iter()
        .filter_map(|o| o.cpu_share.map(|c| c * 100.0))
        .collect();
    if !cpu.is_empty() {
        out.push(figure(
            "clients",
            &format!("{what}: the balancer's own CPU"),
            "% of 1 CPU",
            cpu,
        ));
    }
    out
}
