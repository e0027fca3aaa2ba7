//! Several xlb nodes behind ECMP, VIPs announced over BGP by BIRD (`tests/src/fleet_rig.rs`),
//! real clients: flows spread over the nodes and reach both targets, a node lost or drained
//! moves its connections to the others without breaking one, and a node whose targets are
//! too few healthy withdraws its VIP.
mod common;

use std::{
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Conn, backend_bin, xlb_bin};
use xlb_rig::fleet_rig::{
    FLEET_VIP, FleetRig, HOLD_TIME_S, NodeExtra, PORT, TARGETS, fleet_target,
};

const NODES: usize = 3;

struct Fleet {
    rig: FleetRig,
    _one: std::sync::MutexGuard<'static, ()>,
}

/// One fleet at a time: each is eight namespaces and seven daemons on two cores, and the
/// timings (hold time, health checks) are what these tests look at.
static ONE_FLEET: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Fleet {
    /// The rig, both targets, the router's BIRD and every node (with `extra` on node K's
    /// listener from `extra(k)`); returns once the router routes the VIP to all nodes.
    fn start(tag: &str, extra: impl Fn(usize) -> NodeExtra) -> Self {
        let one = ONE_FLEET
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prefix = format!("xlb-f{tag}-{}", std::process::id());
        let mut rig = FleetRig::up(&prefix, NODES).unwrap();
        for k in 1..=TARGETS {
            rig.start_target(&xlb_bin(), backend_bin(), k).unwrap();
        }
        rig.start_router_bird().unwrap();
        for k in 1..=NODES {
            rig.start_node(&xlb_bin(), k, &extra(k)).unwrap();
        }
        let all: Vec<usize> = (1..=NODES).collect();
        rig.wait_next_hops(&all, Duration::from_secs(30)).unwrap();
        Self { rig, _one: one }
    }

    /// Wait (10 s at most) until node K's health check calls target `addr` `state`.
    fn wait_target_state(&self, k: usize, addr: &str, state: &str) {
        let start = Instant::now();
        loop {
            let s = self.status(k);
            let now = s["groups"][0]["targets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["address"] == addr)
                .map(|t| t["state"].as_str().unwrap().to_owned());
            if now.as_deref() == Some(state) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "node {k}: {addr} is {now:?}, not {state}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn xlb(&self, k: usize, args: &[&str]) -> Output {
        std::process::Command::new(xlb_bin())
            .args(args)
            .arg("--socket")
            .arg(self.rig.socket(k))
            .output()
            .unwrap()
    }

    fn status(&self, k: usize) -> serde_json::Value {
        let out = self.xlb(k, &["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// New flows node K's listener has balanced so far.
    fn new_flows(&self, k: usize) -> u64 {
        self.status(k)["listeners"][0]["traffic"]["new_flows"]
            .as_u64()
            .unwrap()
    }

    /// `n` curls to the VIP from the client, one after another: the backends that answered.
    fn curls(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let out = self
                    .rig
                    .client
                    .command("curl")
                    .args(["-s", "-m", "5", &format!("http://{FLEET_VIP}/")])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
            .collect()
    }

    /// Run `f` on a thread in the client's namespace.
    fn in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        common::in_netns(&self.rig.client, f)
    }
}

/// A keep-alive connection to the VIP; reads wait long enough to ride out a node's loss (the
/// hold time, then TCP's retransmission back-off).
fn open_conn() -> std::io::Result<Conn> {
    Conn::open_to(&format!("{FLEET_VIP}:{PORT}"), Duration::from_secs(20))
}

/// Long-lived connections, each asking every 100 ms until told to stop; a connection breaks
/// when a request fails or another backend answers. Returns (connections, broken, requests).
struct Load {
    stop: Arc<AtomicBool>,
    broken: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(fleet: &Fleet, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let broken = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let threads = (0..n)
            .map(|_| {
                let (stop, broken, requests) = (stop.clone(), broken.clone(), requests.clone());
                fleet.in_client(move || {
                    let mut c = open_conn().expect("connect to the VIP");
                    let first = c.get().expect("first request");
                    while !stop.load(Ordering::Relaxed) {
                        match c.get() {
                            Ok(b) if b == first => {
                                requests.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                eprintln!("connection on {first} broke: {other:?}");
                                broken.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
            })
            .collect();
        // Every connection open and asking before the test goes on.
        let start = Instant::now();
        while requests.load(Ordering::Relaxed) < n && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            stop,
            broken,
            requests,
            threads,
        }
    }

    /// Stop; (broken connections, requests made).
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        (
            self.broken.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn flows_spread_over_every_node_and_reach_both_targets() {
    let f = Fleet::start("spread", |_| NodeExtra::default());
    let before: Vec<u64> = (1..=NODES).map(|k| f.new_flows(k)).collect();
    let names = f.curls(60);
    let per_node: Vec<u64> = (1..=NODES)
        .map(|k| f.new_flows(k) - before[k - 1])
        .collect();
    eprintln!("60 connections: per node {per_node:?}");
    assert!(per_node.iter().all(|n| *n > 0), "per node {per_node:?}");
    assert_eq!(per_node.iter().sum::<u64>(), 60, "{per_node:?}");
    for b in ["backend-1", "backend-2"] {
        assert!(
            names.iter().any(|n| n == b),
            "{b} never answered: {names:?}"
        );
    }
    assert!(names.iter().all(|n| n.starts_with("backend-")), "{names:?}");
    // Each node says what it announces, and why.
    let s = f.status(1);
    assert_eq!(s["announcements"][0]["vip"], FLEET_VIP);
    assert_eq!(s["announcements"][0]["announced"], true, "{s}");
}

/// Long-lived connections until node `k` carries some of them: their load.
fn load_through(f: &Fleet, k: usize) -> Load {
    let before = f.new_flows(k);
    let load = Load::start(f, 18);
    assert!(
        f.new_flows(k) > before,
        "none of 18 connections went through node {k}"
    );
    load
}

#[test]
fn a_crashed_agent_leaves_its_node_announced_and_serving_and_the_next_takes_over_without_a_flap() {
    let mut f = Fleet::start("crash", |_| NodeExtra::default());
    let load = load_through(&f, 1);
    // SIGKILL: the pinned data plane keeps forwarding, and the node keeps announcing what
    // it serves.
    f.rig.children.kill("xlb-n1");
    let all = vec![
        xlb_rig::fleet_rig::node_addr(1),
        xlb_rig::fleet_rig::node_addr(2),
        xlb_rig::fleet_rig::node_addr(3),
    ];
    let watch = |f: &Fleet, d: Duration| {
        let start = Instant::now();
        while start.elapsed() < d {
            let hops = f.rig.next_hops().unwrap();
            assert_eq!(hops, all, "the router's next hops changed: a flap");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    watch(&f, Duration::from_secs(2));
    // The next agent takes the data plane and the announcement over.
    f.rig.start_agent(&xlb_bin(), 1).unwrap();
    watch(&f, Duration::from_secs(3));
    let (broken, requests) = load.finish();
    eprintln!(
        "node 1's agent killed and restarted: no flap; 18 connections: {broken} broken, {requests} requests"
    );
    assert_eq!(broken, 0);
    let s = f.status(1);
    assert_eq!(s["announcements"][0]["announced"], true, "{s}");
}

#[test]
fn a_stopped_node_is_withdrawn_at_once_and_its_connections_go_on_through_the_others() {
    let mut f = Fleet::start("stop", |_| NodeExtra::default());
    let load = load_through(&f, 1);
    let misses_before: u64 = (2..=NODES).map(|k| mid_flow_misses(&f, k)).sum();
    // A clean stop: VIPs withdrawn, XDP detached, pins removed.
    assert!(f.rig.children.stop("xlb-n1").unwrap().success());
    let t = f
        .rig
        .wait_next_hops(&[2, 3], Duration::from_secs(10))
        .unwrap();
    eprintln!("node 1 stopped: withdrawn at the router after {t:?}");
    std::thread::sleep(Duration::from_secs(2));
    let (broken, requests) = load.finish();
    eprintln!("18 connections: {broken} broken, {requests} requests");
    assert_eq!(broken, 0);
    // Its connections were picked up mid-flow by the other nodes (same target by Maglev).
    let misses: u64 = (2..=NODES).map(|k| mid_flow_misses(&f, k)).sum();
    assert!(misses > misses_before, "no mid-flow pick-up on nodes 2-3");
    assert!(f.curls(12).iter().all(|n| n.starts_with("backend-")));
}

#[test]
fn a_silent_node_is_withdrawn_after_the_hold_time_and_its_connections_go_on() {
    let f = Fleet::start("silent", |_| NodeExtra::default());
    let load = load_through(&f, 1);
    f.rig.silence_node(1).unwrap();
    let t = f
        .rig
        .wait_next_hops(&[2, 3], Duration::from_secs(3 * u64::from(HOLD_TIME_S)))
        .unwrap();
    eprintln!("node 1 silenced: withdrawn at the router after {t:?}");
    assert!(
        t >= Duration::from_secs(1),
        "withdrawn before BGP could tell: {t:?}"
    );
    // TCP retransmits ride out the hold time; give the back-off time to retry.
    std::thread::sleep(Duration::from_secs(6));
    let (broken, requests) = load.finish();
    eprintln!("18 connections: {broken} broken, {requests} requests");
    assert_eq!(broken, 0);
}

#[test]
fn a_drained_node_is_withdrawn_its_connections_go_on_and_it_takes_no_new_ones() {
    let f = Fleet::start("drain", |_| NodeExtra::default());
    let load = load_through(&f, 2);
    let out = f.xlb(2, &["node", "drain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node drained"));
    let t = f
        .rig
        .wait_next_hops(&[1, 3], Duration::from_secs(10))
        .unwrap();
    eprintln!("node 2 drained: withdrawn at the router after {t:?}");
    let before = f.new_flows(2);
    let names = f.curls(24);
    assert!(names.iter().all(|n| n.starts_with("backend-")), "{names:?}");
    assert_eq!(
        f.new_flows(2),
        before,
        "a drained node took new connections"
    );
    std::thread::sleep(Duration::from_secs(1));
    let (broken, requests) = load.finish();
    eprintln!("18 connections: {broken} broken, {requests} requests");
    assert_eq!(broken, 0);
    let s = f.status(2);
    assert_eq!(s["announcements"][0]["announced"], false);
    assert!(s["drain"]["since_s"].is_u64(), "{s}");
    // Resumed: announced again.
    assert!(f.xlb(2, &["node", "resume"]).status.success());
    f.rig
        .wait_next_hops(&[1, 2, 3], Duration::from_secs(10))
        .unwrap();
}

#[test]
fn a_node_with_too_few_healthy_targets_withdraws_and_announces_again_when_they_recover() {
    // Node 3 wants both targets healthy; the others one.
    let mut f = Fleet::start("health", |k| {
        let listener = if k == 3 {
            "min_healthy_targets = 2".into()
        } else {
            String::new()
        };
        NodeExtra {
            listener,
            ..NodeExtra::default()
        }
    });
    f.rig.children.stop("backend-2");
    let t = f
        .rig
        .wait_next_hops(&[1, 2], Duration::from_secs(10))
        .unwrap();
    eprintln!("backend-2 stopped: node 3 withdrew after {t:?}");
    let s = f.status(3);
    let reason = s["announcements"][0]["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("1 healthy, 2 needed"), "{reason}");
    // Nodes 1 and 2 still serve, from backend-1, once their own checks have seen backend-2 go.
    for k in 1..=2 {
        f.wait_target_state(k, &fleet_target(2), "unhealthy");
    }
    let names = f.curls(6);
    assert!(names.iter().all(|n| n == "backend-1"), "{names:?}");
    f.rig.start_backend(backend_bin(), 2).unwrap();
    let t = f
        .rig
        .wait_next_hops(&[1, 2, 3], Duration::from_secs(15))
        .unwrap();
    eprintln!("backend-2 back: node 3 announced again after {t:?}");
}

fn mid_flow_misses(f: &Fleet, k: usize) -> u64 {
    f.status(k)["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "ev_mid_flow_miss")
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or(0)
}

/// Open connections on every node; target 3 registered on every node; then node 1 drained,
/// so its connections reach nodes that never saw them. (broken, moved of [`JOIN_CURLS`] new
/// flows).
fn target_joins_then_a_node_drains(tag: &str, window: &str) -> (usize, usize) {
    let f = Fleet::start(tag, |_| NodeExtra {
        tables: window.to_owned(),
        ..NodeExtra::default()
    });
    let load = load_through(&f, 1);
    // The table has been in force a while (the previous table's window is at most as long).
    std::thread::sleep(Duration::from_secs(3));
    let t3 = fleet_target(3);
    for k in 1..=NODES {
        let out = f.xlb(k, &["targets", "register", "web", &t3]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for k in 1..=NODES {
        f.wait_target_state(k, &t3, "healthy");
    }
    let names = f.curls(JOIN_CURLS);
    let unanswered = names.iter().filter(|n| !n.starts_with("backend-")).count();
    assert_eq!(unanswered, 0, "new connections unanswered: {names:?}");
    let moved = names.iter().filter(|n| *n == "backend-3").count();
    eprintln!("target 3 joined: {moved} of {JOIN_CURLS} new connections went to it");
    assert!(f.xlb(1, &["node", "drain"]).status.success());
    f.rig
        .wait_next_hops(&[2, 3], Duration::from_secs(10))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (broken, requests) = load.finish();
    eprintln!(
        "node 1 drained after the change: {broken} of 18 connections broken, {requests} requests"
    );
    (broken, moved)
}

/// New connections opened once target 3 has joined (each from a fresh client port).
const JOIN_CURLS: usize = 90;

/// How many of [`JOIN_CURLS`] may reach the joining target: a third is 30, and the count is
/// binomial (n 90, p 1/3), so it falls outside 12..=50 by chance less than once in 100,000
/// runs (60 connections and 10..=32 failed about once in 600: CI saw 33). What it rules out
/// is a join that takes none or all of the new flows; the exact shares are Maglev's unit tests.
const JOIN_MOVED: std::ops::RangeInclusive<usize> = 12..=50;

#[test]
fn a_target_joining_moves_a_third_of_new_flows_and_no_open_connection_even_across_nodes() {
    let (broken, moved) = target_joins_then_a_node_drains("join", "");
    assert!(
        JOIN_MOVED.contains(&moved),
        "{moved} of {JOIN_CURLS} moved (about 30 expected)"
    );
    assert_eq!(broken, 0);
}

/// The same without the previous table (`previous_table_window = 0`): what breaks. A
/// measurement for the notes, not a check (how many break depends on which connections land
/// on node 1): `cargo test -p tests --test fleet -- --ignored`.
#[test]
#[ignore = "a measurement: run with --ignored"]
fn measure_a_target_joining_without_the_previous_table() {
    let (broken, _) = target_joins_then_a_node_drains("joinx", "previous_table_window = 0");
    eprintln!("without the previous table: {broken} of 18 broken");
}
