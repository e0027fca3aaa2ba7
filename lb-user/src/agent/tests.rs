//! The agent's logic on the fake data plane, with a fake prober (results are fed by hand) and a
//! clock moved by hand: registration, drains, reloads, health transitions, fail-open, and what
//! a data-plane failure in the middle of a change leaves behind.
use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use lb_common::TARGET_ACTIVE;

use super::*;
use crate::{
    dataplane::{
        fake::FakeDataplane,
        keys,
        reconcile::{Plan, Reconciler},
    },
    health::{Probe, State},
    model::{Endpoint, TargetRef},
};

/// Remembers what it was told to probe; results come from the test.
#[derive(Default)]
struct FakeProber {
    wanted: Vec<ProbeSpec>,
}

impl Prober for FakeProber {
    fn set(&mut self, wanted: Vec<ProbeSpec>) {
        self.wanted = wanted;
    }
}

const DELAY_S: u64 = 10;

fn ep(k: u8) -> Endpoint {
    Endpoint::new(IpAddr::from([198, 18, k, 2]), 8080)
}

/// A temporary directory holding the config file and the state file.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("xlb-agent-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    fn config(&self) -> PathBuf {
        self.0.join("xlb.toml")
    }
    fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    fn write_config(&self, web: &[u8], extra: &str) {
        let targets = web
            .iter()
            .map(|k| format!("{{ address = \"198.18.{k}.2\" }}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!(
            r#"interfaces = ["eth0"]
control_socket = "{dir}/xlb.sock"
state_file = "{state}"
{extra}
[[listener]]
name = "web"
vip = "198.18.100.10"
port = 80
protocol = "tcp"
target_group = "web"
[[target_group]]
name = "web"
port = 8080
deregistration_delay = {DELAY_S}
targets = [{targets}]
"#,
            dir = self.0.display(),
            state = self.state().display(),
        );
        std::fs::write(self.config(), text).unwrap();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TABLES: &str = "[tables]\nmaglev_size = 251";

type TestAgent = Agent<FakeDataplane, FakeProber>;

fn start(dir: &Dir, web: &[u8], now: Instant) -> TestAgent {
    dir.write_config(web, TABLES);
    start_as_written(dir, now)
}

/// The agent on the fake, started from the config file `dir` holds.
fn start_as_written(dir: &Dir, now: Instant) -> TestAgent {
    let cfg = config::load(&dir.config()).unwrap();
    Agent::start(
        &dir.config(),
        cfg,
        FakeDataplane::default(),
        FakeProber::default(),
        now,
    )
    .unwrap()
}

/// The targets the "web" listener's table sends new flows to, read from the fake maps.
fn in_ring(a: &TestAgent) -> BTreeSet<Endpoint> {
    let dp = a.reconciler().dataplane();
    let key = keys::listener_key(&a.config().listeners[0]);
    let by_id = |id: u32| {
        let r = a.reconciler();
        a.registry().groups["web"]
            .members
            .keys()
            .copied()
            .find(|e| r.target_id(e) == Some(id))
    };
    dp.ring_of(&key)
        .into_iter()
        .filter(|id| *id != 0)
        .map(|id| by_id(id).expect("a ring slot names a known target"))
        .collect()
}

/// Whether a target's established flows stay on it (its TARGETS entry is active).
fn keeps_flows(a: &TestAgent, e: Endpoint) -> bool {
    a.reconciler()
        .target_id(&e)
        .and_then(|id| a.reconciler().dataplane().targets.get(&id))
        .is_some_and(|t| t.flags & TARGET_ACTIVE != 0)
}

fn state(a: &TestAgent, e: Endpoint) -> State {
    a.registry().groups["web"].members[&e].tracker.state
}

fn probed(a: &TestAgent) -> BTreeSet<Endpoint> {
    a.prober().wanted.iter().map(|s| s.endpoint).collect()
}

fn probe(a: &mut TestAgent, e: Endpoint, p: Probe, times: usize, now: Instant) {
    for _ in 0..times {
        a.on_probe(("web".into(), e, p.clone(), Duration::from_millis(3)), now);
    }
}

fn named(e: Endpoint) -> TargetRef {
    TargetRef {
        addr: e.addr,
        port: Some(e.port),
    }
}

fn set(e: &[Endpoint]) -> BTreeSet<Endpoint> {
    e.iter().copied().collect()
}

fn failure(r: Reply) -> Failure {
    match r {
        Reply::Error(f) => f,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn done(r: Reply) -> String {
    match r {
        Reply::Done(m) => m.message,
        other => panic!("expected success, got {other:?}"),
    }
}

#[test]
fn start_fills_the_maps_attaches_and_probes_every_registered_target() {
    let dir = Dir::new("start");
    let a = start(&dir, &[1, 2], Instant::now());
    assert_eq!(a.reconciler().dataplane().attached, ["eth0"]);
    assert_eq!(probed(&a), set(&[ep(1), ep(2)]));
    // Nothing has answered yet: every target is initial, the group fails open to all.
    assert_eq!(in_ring(&a), set(&[ep(1), ep(2)]));
    assert!(a.status(Instant::now()).unwrap().groups[0].fail_open);
    assert_eq!(a.dataplane_error(), None);
}

#[test]
fn health_transitions_move_targets_in_and_out_of_the_table() {
    let dir = Dir::new("health");
    let now = Instant::now();
    let mut a = start(&dir, &[1, 2], now);
    probe(&mut a, ep(1), Probe::Ok, 1, now);
    assert_eq!(
        in_ring(&a),
        set(&[ep(1)]),
        "fail-open ends with one healthy"
    );
    assert!(
        keeps_flows(&a, ep(2)),
        "an initial target keeps what it has"
    );
    probe(&mut a, ep(2), Probe::Ok, 1, now);
    assert_eq!(in_ring(&a), set(&[ep(1), ep(2)]));
    // Two consecutive failures (the default threshold): out, and its flows re-balanced.
    probe(&mut a, ep(1), Probe::Refused, 1, now);
    assert_eq!(state(&a, ep(1)), State::Healthy);
    probe(&mut a, ep(1), Probe::Refused, 1, now);
    assert_eq!(state(&a, ep(1)), State::Unhealthy);
    assert_eq!(in_ring(&a), set(&[ep(2)]));
    assert!(!keeps_flows(&a, ep(1)));
    let g = &a.status(now).unwrap().groups[0];
    let t1 = g
        .targets
        .iter()
        .find(|t| t.address == "198.18.1.2")
        .unwrap();
    assert_eq!(
        (t1.state.as_str(), t1.reason.as_str()),
        ("unhealthy", "connection refused")
    );
}

#[test]
fn with_every_target_failing_the_group_fails_open_to_all_and_says_so() {
    let dir = Dir::new("failopen");
    let now = Instant::now();
    let mut a = start(&dir, &[1, 2], now);
    probe(&mut a, ep(1), Probe::Ok, 1, now);
    probe(&mut a, ep(2), Probe::Ok, 1, now);
    probe(&mut a, ep(1), Probe::Timeout, 2, now);
    assert!(!a.status(now).unwrap().groups[0].fail_open);
    probe(&mut a, ep(2), Probe::Refused, 2, now);
    assert!(a.status(now).unwrap().groups[0].fail_open);
    assert_eq!(in_ring(&a), set(&[ep(1), ep(2)]));
    probe(&mut a, ep(2), Probe::Ok, 5, now);
    assert!(!a.status(now).unwrap().groups[0].fail_open);
    assert_eq!(in_ring(&a), set(&[ep(2)]));
}

#[test]
fn a_registered_target_is_saved_probed_and_drains_for_the_delay_when_deregistered() {
    let dir = Dir::new("register");
    let t0 = Instant::now();
    let mut a = start(&dir, &[1], t0);
    probe(&mut a, ep(1), Probe::Ok, 1, t0);

    let m = done(a.handle(
        Request::Register {
            group: "web".into(),
            target: "198.18.3.2".parse().unwrap(),
            weight: Some(2),
        },
        t0,
    ));
    assert_eq!(
        m,
        "registered 198.18.3.2:8080 in web (weight 2); initial health checks in progress"
    );
    let saved = std::fs::read_to_string(dir.state()).unwrap();
    assert!(saved.contains("198.18.3.2"), "{saved}");
    assert!(probed(&a).contains(&ep(3)));
    assert_eq!(in_ring(&a), set(&[ep(1)]), "initial: no new flows yet");
    probe(&mut a, ep(3), Probe::Ok, 1, t0);
    assert_eq!(in_ring(&a), set(&[ep(1), ep(3)]));

    let m = done(a.handle(
        Request::Deregister {
            group: "web".into(),
            target: named(ep(3)),
        },
        t0,
    ));
    assert_eq!(
        m,
        "deregistered 198.18.3.2:8080 from web; draining for 10 s"
    );
    assert_eq!(state(&a, ep(3)), State::Draining);
    assert_eq!(in_ring(&a), set(&[ep(1)]), "no new flows while draining");
    assert!(keeps_flows(&a, ep(3)), "its open flows continue");
    assert!(
        !probed(&a).contains(&ep(3)),
        "draining targets are not probed"
    );

    a.on_tick(t0 + Duration::from_secs(DELAY_S - 1));
    assert_eq!(state(&a, ep(3)), State::Draining);
    a.on_tick(t0 + Duration::from_secs(DELAY_S));
    assert_eq!(state(&a, ep(3)), State::Unused);
    assert!(
        !keeps_flows(&a, ep(3)),
        "after the drain its flows are balanced afresh"
    );
    assert_eq!(
        a.reconciler().target_id(&ep(3)),
        None,
        "and its id is given up"
    );
}

#[test]
fn rejected_changes_answer_why_and_change_nothing() {
    let dir = Dir::new("errors");
    let now = Instant::now();
    let mut a = start(&dir, &[1], now);
    let writes = a.reconciler().dataplane().log.len();
    let cases = [
        (
            Request::Register {
                group: "api".into(),
                target: named(ep(3)),
                weight: None,
            },
            FailureKind::NotFound,
            "no target group \"api\"",
        ),
        (
            Request::Register {
                group: "web".into(),
                target: named(ep(1)),
                weight: None,
            },
            FailureKind::Conflict,
            "already registered",
        ),
        (
            Request::Register {
                group: "web".into(),
                target: named(ep(3)),
                weight: Some(1001),
            },
            FailureKind::BadRequest,
            "weight 1001 is out of range (0-1000)",
        ),
        (
            Request::Deregister {
                group: "web".into(),
                target: named(ep(9)),
            },
            FailureKind::NotFound,
            "198.18.9.2:8080 is not registered",
        ),
    ];
    for (req, kind, needle) in cases {
        let f = failure(a.handle(req, now));
        assert_eq!(f.kind, kind, "{}", f.message);
        assert!(f.message.contains(needle), "{}", f.message);
    }
    assert_eq!(a.reconciler().dataplane().log.len(), writes, "no write");
    assert!(!dir.state().exists(), "nothing saved");
    assert_eq!(probed(&a), set(&[ep(1)]));
}

#[test]
fn a_reload_applies_a_changed_file_and_a_rejected_one_changes_nothing() {
    let dir = Dir::new("reload");
    let now = Instant::now();
    let mut a = start(&dir, &[1, 2], now);
    probe(&mut a, ep(1), Probe::Ok, 1, now);

    dir.write_config(&[1, 2, 3], TABLES);
    let r = a.reload(now).unwrap();
    assert_eq!(r.targets_added, 1);
    assert_eq!(
        state(&a, ep(1)),
        State::Healthy,
        "unchanged targets keep their health"
    );
    assert_eq!(state(&a, ep(3)), State::Initial);
    assert!(probed(&a).contains(&ep(3)));

    let writes = a.reconciler().dataplane().log.len();
    let before = a.reconciler().dataplane().contents();
    std::fs::write(
        dir.config(),
        "interfaces = [\"eth0\"]\n[[listener]]\nname = 1\n",
    )
    .unwrap();
    let f = a.reload(now).unwrap_err();
    assert_eq!(f.kind, FailureKind::Rejected);
    assert!(f.message.contains("xlb.toml:3:"), "{}", f.message);

    dir.write_config(&[1], "[tables]\nmaglev_size = 257");
    let f = a.reload(now).unwrap_err();
    assert_eq!(f.kind, FailureKind::Rejected);
    assert!(
        f.message
            .contains("tables changed, which takes effect only on restart"),
        "{}",
        f.message
    );
    // A file that parses but does not validate (a listener naming no group), and each
    // restart-only field changed: rejected, nothing changed.
    dir.write_config(&[1, 2, 3], TABLES);
    let good = std::fs::read_to_string(dir.config()).unwrap();
    let unknown_group = good.replacen("target_group = \"web\"", "target_group = \"nope\"", 1);
    assert_ne!(unknown_group, good);
    for (text, needle) in [
        (unknown_group, "names unknown target group \"nope\""),
        (
            good.replace("[\"eth0\"]", "[\"eth1\"]"),
            "interfaces changed",
        ),
        (
            good.replace("state.json", "other-state.json"),
            "state_file changed",
        ),
    ] {
        std::fs::write(dir.config(), text).unwrap();
        let f = a.reload(now).unwrap_err();
        assert_eq!(f.kind, FailureKind::Rejected);
        assert!(f.message.contains(needle), "{needle}: {}", f.message);
    }
    assert_eq!(a.reconciler().dataplane().log.len(), writes);
    assert_eq!(a.reconciler().dataplane().contents(), before);
    assert_eq!(
        a.config().target_groups[0].targets.len(),
        3,
        "the old config stays"
    );
}

#[test]
fn a_data_plane_failure_is_reported_and_repaired_on_the_next_tick() {
    let dir = Dir::new("repair");
    let now = Instant::now();
    let mut a = start(&dir, &[1, 2], now);
    probe(&mut a, ep(1), Probe::Ok, 1, now);
    probe(&mut a, ep(2), Probe::Ok, 1, now);
    // The first write of the next change fails.
    let next = a.reconciler().dataplane().log.len();
    a.reconciler_mut().dataplane_mut().fail_at = Some(next);
    let f = failure(a.handle(
        Request::Register {
            group: "web".into(),
            target: named(ep(3)),
            weight: None,
        },
        now,
    ));
    assert_eq!(f.kind, FailureKind::Internal);
    assert!(f.message.contains("injected failure"), "{}", f.message);
    assert!(f.message.contains("retries"), "{}", f.message);
    let status = a.status(now).unwrap();
    assert!(status.dataplane_error.is_some(), "status tells");
    // The registration itself stands (it was saved before the data plane was touched).
    assert_eq!(state(&a, ep(3)), State::Initial);

    a.on_tick(now + Duration::from_secs(1));
    assert_eq!(a.dataplane_error(), None, "repaired");
    assert!(a.status(now).unwrap().dataplane_error.is_none());
    // What the maps hold is what a data plane that never failed holds for the same model.
    let plan: Plan = a.registry().plan(a.config());
    let mut clean = Reconciler::new(FakeDataplane::default(), a.config().tables);
    clean.apply(&plan).unwrap();
    assert_eq!(
        a.reconciler().dataplane().contents(),
        clean.dataplane().contents()
    );
    assert!(keeps_flows(&a, ep(3)));
}

#[test]
fn a_corrupt_state_file_refuses_the_start_and_attaches_nothing() {
    let dir = Dir::new("corrupt");
    dir.write_config(&[1], TABLES);
    std::fs::write(dir.state(), b"{ not json").unwrap();
    let cfg = config::load(&dir.config()).unwrap();
    let e = Agent::start(
        &dir.config(),
        cfg,
        FakeDataplane::default(),
        FakeProber::default(),
        Instant::now(),
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("is not valid"), "{e}");
}

#[test]
fn shutdown_stops_probing_and_detaches() {
    let dir = Dir::new("shutdown");
    let mut a = start(&dir, &[1], Instant::now());
    assert_eq!(a.shutdown(), 1);
    assert!(a.reconciler().dataplane().attached.is_empty());
    assert!(a.prober().wanted.is_empty());
}

#[test]
fn targets_of_a_dsr_listener_are_probed_at_the_vip_through_the_data_path() {
    let dir = Dir::new("dsrpath");
    dir.write_config(&[1, 2], TABLES);
    let text = std::fs::read_to_string(dir.config())
        .unwrap()
        .replace("port = 8080", "port = 80")
        .replace(
            "target_group = \"web\"\n",
            "target_group = \"web\"\nmode = \"dsr\"\n",
        );
    std::fs::write(dir.config(), text).unwrap();
    let cfg = config::load(&dir.config()).unwrap();
    let a = Agent::start(
        &dir.config(),
        cfg,
        FakeDataplane::default(),
        FakeProber::default(),
        Instant::now(),
    )
    .unwrap();
    let specs = &a.prober().wanted;
    assert_eq!(specs.len(), 2);
    for s in specs {
        let p = s.path.as_ref().expect("probed through the data path");
        assert_eq!(p.vip, "198.18.100.10:80".parse().unwrap());
        let id = a.reconciler().target_id(&s.endpoint).unwrap();
        assert_eq!(p.mark, PROBE_MARK_BASE | id, "the mark names the target");
        assert_eq!(p.mode, "dsr");
    }
    // NAT listeners' targets are probed at their own address.
    let dir2 = Dir::new("natpath");
    let b = start(&dir2, &[1], Instant::now());
    assert!(b.prober().wanted.iter().all(|s| s.path.is_none()));
}

fn announced(a: &TestAgent) -> Vec<(String, bool, String)> {
    a.announcements()
        .into_iter()
        .map(|x| (x.vip, x.announced, x.reason))
        .collect()
}

#[test]
fn a_vip_is_announced_while_enough_targets_are_healthy_and_not_while_drained() {
    let dir = Dir::new("announce");
    let now = Instant::now();
    dir.write_config(&[1, 2], &format!("{TABLES}\n[bgp]\ntable = 200"));
    // The listener wants two healthy targets.
    let text = std::fs::read_to_string(dir.config()).unwrap().replacen(
        "target_group = \"web\"\n",
        "target_group = \"web\"\nmin_healthy_targets = 2\n",
        1,
    );
    std::fs::write(dir.config(), text).unwrap();
    let mut a = start_as_written(&dir, now);
    // Targets start initial (not healthy): nothing announced, though the group fails open.
    let vip = "198.18.100.10".to_owned();
    assert_eq!(
        announced(&a),
        [(
            vip.clone(),
            false,
            "too few healthy targets (web: 0 healthy, 2 needed)".to_owned()
        )]
    );
    probe(&mut a, ep(1), Probe::Ok, 1, now);
    assert!(a.announced_vips().is_empty(), "one of two is not enough");
    probe(&mut a, ep(2), Probe::Ok, 1, now);
    assert_eq!(
        announced(&a),
        [(vip.clone(), true, "web: 2 healthy, 2 needed".to_owned())]
    );
    // A target turning unhealthy withdraws it; recovering announces it again.
    probe(&mut a, ep(2), Probe::Refused, 2, now);
    assert!(a.announced_vips().is_empty());
    probe(&mut a, ep(2), Probe::Ok, 5, now);
    assert_eq!(a.announced_vips().len(), 1);
    // Drained: withdrawn whatever the health; resumed: back. Resuming twice is a conflict.
    done(a.handle(Request::Drain { stop_after_s: None }, now));
    assert_eq!(
        announced(&a),
        [(
            vip.clone(),
            false,
            "node drained (xlb node drain)".to_owned()
        )]
    );
    assert!(!a.should_stop(now + Duration::from_secs(3600)));
    assert_eq!(a.status(now).unwrap().drain.unwrap().since_s, 0);
    done(a.handle(Request::Resume, now));
    assert_eq!(a.announced_vips().len(), 1);
    assert_eq!(
        failure(a.handle(Request::Resume, now)).kind,
        FailureKind::Conflict
    );
    // A drain with a stop time: the agent is told to stop once it has passed.
    done(a.handle(
        Request::Drain {
            stop_after_s: Some(30),
        },
        now,
    ));
    assert!(!a.should_stop(now + Duration::from_secs(29)));
    assert!(a.should_stop(now + Duration::from_secs(30)));
    // Without [bgp], nothing is announced and status says nothing about it.
    let plain = start(&Dir::new("announce-none"), &[1], now);
    assert!(plain.announcements().is_empty());
}

#[test]
fn bgp_table_and_device_take_effect_only_on_restart() {
    let dir = Dir::new("announce-reload");
    let now = Instant::now();
    dir.write_config(&[1], &format!("{TABLES}\n[bgp]\ntable = 200"));
    let mut a = start_as_written(&dir, now);
    dir.write_config(&[1], &format!("{TABLES}\n[bgp]\ntable = 201"));
    let f = a.reload(now).unwrap_err();
    assert!(f.message.contains("bgp (table, device"), "{}", f.message);
    assert_eq!(a.config().bgp.as_ref().unwrap().table, 200);
}

#[test]
fn metrics_carry_every_target_state_and_both_formats_name_counters_right() {
    let dir = Dir::new("metrics");
    let now = Instant::now();
    let mut a = start(&dir, &[1, 2], now);
    probe(&mut a, ep(1), Probe::Ok, 1, now);
    let s = a.status(now).unwrap();
    let om = crate::metrics::render(&s, &[("flows".into(), 3, 1024)]);
    let one = |state: &str, k: u8| {
        format!("xlb_target_state{{group=\"web\",target=\"198.18.{k}.2:8080\",state=\"{state}\"}}")
    };
    assert!(om.contains(&format!("{} 1", one("healthy", 1))), "{om}");
    assert!(om.contains(&format!("{} 0", one("healthy", 2))), "{om}");
    assert!(om.contains(&format!("{} 1", one("initial", 2))), "{om}");
    for st in ["initial", "healthy", "unhealthy", "draining", "unused"] {
        assert!(om.contains(&one(st, 2)), "{st} missing\n{om}");
    }
    assert!(om.contains("# TYPE xlb_listener_new_flows counter"));
    // The health check's duration, as the prober measured it (3 ms here).
    assert_eq!(s.groups[0].targets[0].check_ms, Some(3.0));
    assert!(
        om.contains(
            "xlb_target_check_duration_seconds{group=\"web\",target=\"198.18.1.2:8080\"} 0.003"
        ),
        "{om}"
    );
    assert!(om.contains("xlb_group_fail_open{group=\"web\"} 0"));
    let text = crate::metrics::to_text_format(&om);
    assert!(
        text.contains("# TYPE xlb_listener_new_flows_total counter"),
        "{text}"
    );
    assert!(text.contains("# HELP xlb_listener_bytes_total "), "{text}");
    assert!(
        !text.contains("# EOF") && !text.contains("# UNIT"),
        "{text}"
    );
    // Gauges keep their names.
    assert!(text.contains("# TYPE xlb_target_state gauge"), "{text}");
}
