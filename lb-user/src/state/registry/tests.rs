use std::{path::Path, time::Duration};

use super::*;
use crate::{
    model::config,
    state::{Overlay, StateFileError},
};

fn cfg(extra_group_keys: &str) -> Config {
    let text = format!(
        r#"interfaces = ["eth0"]
[[listener]]
name = "web"
vip = "198.18.100.10"
port = 80
protocol = "tcp"
target_group = "web"
[[target_group]]
name = "web"
port = 8080
deregistration_delay = 10
targets = [{{ address = "198.18.1.2" }}, {{ address = "198.18.2.2" }}]
{extra_group_keys}
"#
    );
    config::parse(Path::new("t.toml"), &text).unwrap()
}

const fn ep(k: u8) -> Endpoint {
    Endpoint::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 18, k, 2)),
        8080,
    )
}
const T1: Endpoint = ep(1);
const T2: Endpoint = ep(2);
const T3: Endpoint = ep(3);

/// How a user names an endpoint: address and port.
fn named(e: Endpoint) -> TargetRef {
    TargetRef {
        addr: e.addr,
        port: Some(e.port),
    }
}

fn setup(extra: &str) -> (Config, Overlay, Registry, Instant) {
    let c = cfg(extra);
    let o = Overlay::default();
    let mut r = Registry::default();
    let now = Instant::now();
    r.sync(&c, &o, now);
    (c, o, r, now)
}

fn state(r: &Registry, a: Endpoint) -> State {
    r.groups["web"].members[&a].tracker.state
}

fn planned(r: &Registry, c: &Config, a: Endpoint) -> Option<PlannedTarget> {
    r.plan(c).groups["web"]
        .iter()
        .find(|t| t.target.endpoint == a)
        .copied()
}

/// Drive a target to a state with probe results.
fn probe_until(r: &mut Registry, a: Endpoint, p: Probe, n: usize) {
    for _ in 0..n {
        r.observe("web", a, &p);
    }
}

#[test]
fn new_targets_start_initial_and_the_group_fails_open_until_one_is_healthy() {
    let (c, _, mut r, _) = setup("");
    assert_eq!(state(&r, T1), State::Initial);
    assert!(r.groups["web"].fail_open());
    assert!(planned(&r, &c, T1).unwrap().in_ring && planned(&r, &c, T2).unwrap().in_ring);
    probe_until(&mut r, T1, Probe::Ok, 1);
    assert!(!r.groups["web"].fail_open());
    assert!(planned(&r, &c, T1).unwrap().in_ring);
    assert!(
        !planned(&r, &c, T2).unwrap().in_ring,
        "initial targets take no new flows once one is healthy"
    );
}

#[test]
fn an_unhealthy_target_leaves_the_ring_and_its_flows_are_rebalanced_by_default() {
    let (c, _, mut r, _) = setup("");
    probe_until(&mut r, T1, Probe::Ok, 1);
    probe_until(&mut r, T2, Probe::Ok, 1);
    probe_until(&mut r, T2, Probe::Refused, 2);
    assert_eq!(state(&r, T2), State::Unhealthy);
    let p = planned(&r, &c, T2).unwrap();
    assert!(!p.in_ring && !p.keeps_flows);
}

#[test]
fn unhealthy_flows_keep_leaves_established_flows_on_the_target() {
    let (c, _, mut r, _) = setup("unhealthy_flows = \"keep\"");
    probe_until(&mut r, T1, Probe::Ok, 1);
    probe_until(&mut r, T2, Probe::Refused, 2);
    let p = planned(&r, &c, T2).unwrap();
    assert!(!p.in_ring && p.keeps_flows);
}

#[test]
fn all_unhealthy_means_fail_open_to_every_registered_target() {
    let (c, _, mut r, _) = setup("");
    probe_until(&mut r, T1, Probe::Refused, 2);
    probe_until(&mut r, T2, Probe::Timeout, 2);
    assert!(r.groups["web"].fail_open());
    assert!(planned(&r, &c, T1).unwrap().in_ring && planned(&r, &c, T2).unwrap().in_ring);
}

#[test]
fn deregistering_drains_for_the_delay_then_the_target_is_unused() {
    let (c, mut o, mut r, now) = setup("");
    probe_until(&mut r, T1, Probe::Ok, 1);
    probe_until(&mut r, T2, Probe::Ok, 1);
    r.deregister(&c, &mut o, "web", named(T2), now).unwrap();
    assert_eq!(state(&r, T2), State::Draining);
    let p = planned(&r, &c, T2).unwrap();
    assert!(
        !p.in_ring && p.keeps_flows,
        "no new flows, established ones continue"
    );
    assert!(
        !r.probes().iter().any(|(_, a, _)| *a == T2),
        "draining targets are not probed"
    );
    assert!(!r.tick(now + Duration::from_secs(9)));
    assert!(r.tick(now + Duration::from_secs(10)));
    assert_eq!(state(&r, T2), State::Unused);
    assert!(planned(&r, &c, T2).is_none(), "gone from the data plane");
    assert_eq!(o.groups["web"].deregistered, vec![T2]);
}

#[test]
fn a_zero_delay_makes_a_deregistered_target_unused_at_once() {
    let (c, mut o, mut r, now) = setup("");
    let mut c0 = c.clone();
    c0.target_groups[0].deregistration_delay = Duration::ZERO;
    r.sync(&c0, &o, now);
    r.deregister(&c0, &mut o, "web", named(T1), now).unwrap();
    assert_eq!(state(&r, T1), State::Unused);
}

#[test]
fn register_and_deregister_errors() {
    let (c, mut o, mut r, now) = setup("");
    assert_eq!(
        r.register(&c, &mut o, "api", named(T3), Some(1), now),
        Err(RegistryError::UnknownGroup("api".into()))
    );
    assert!(matches!(
        r.register(&c, &mut o, "web", named(T1), Some(1), now),
        Err(RegistryError::AlreadyRegistered { .. })
    ));
    assert!(matches!(
        r.deregister(&c, &mut o, "web", named(T3), now),
        Err(RegistryError::NotRegistered { .. })
    ));
    assert_eq!(
        r.register(&c, &mut o, "web", named(T3), Some(5000), now),
        Err(RegistryError::Invalid(ModelError::BadWeight(5000)))
    );
    let v6: TargetRef = "[2001:db8:1::2]:8080".parse().unwrap();
    let e = r.register(&c, &mut o, "web", v6, None, now).unwrap_err();
    assert!(matches!(e, RegistryError::WrongFamily { .. }), "{e:?}");
    assert!(e.to_string().contains("must be IPv4 like the VIP"), "{e}");
    assert_eq!(o, Overlay::default(), "failed calls change nothing");
}

#[test]
fn runtime_registration_lives_in_the_overlay_until_the_file_says_the_same() {
    let (c, mut o, mut r, now) = setup("");
    r.register(&c, &mut o, "web", named(T3), Some(2), now)
        .unwrap();
    assert_eq!(state(&r, T3), State::Initial);
    assert_eq!(
        o.groups["web"].registered,
        vec![Target {
            endpoint: T3,
            weight: 2
        }]
    );
    // A restart: a fresh registry from the same file and overlay has it again.
    let mut fresh = Registry::default();
    fresh.sync(&c, &o, now);
    assert_eq!(fresh.groups["web"].members[&T3].weight, 2);
    // The file now lists it with the same weight: the overlay entry is dropped.
    let mut c2 = c.clone();
    c2.target_groups[0].targets.push(Target {
        endpoint: T3,
        weight: 2,
    });
    let dropped = o.normalise(&c2);
    assert_eq!(dropped.len(), 1);
    assert!(o.groups.is_empty());
}

#[test]
fn a_target_named_without_a_port_gets_the_group_port_and_weight_one() {
    let (c, mut o, mut r, now) = setup("");
    let t = r
        .register(&c, &mut o, "web", "198.18.3.2".parse().unwrap(), None, now)
        .unwrap();
    assert_eq!((t.endpoint, t.weight), (T3, 1));
    let e = r
        .deregister(&c, &mut o, "web", "198.18.3.2".parse().unwrap(), now)
        .unwrap();
    assert_eq!(e, T3);
}

#[test]
fn reregistering_a_draining_target_brings_it_back() {
    let (c, mut o, mut r, now) = setup("");
    r.deregister(&c, &mut o, "web", named(T1), now).unwrap();
    r.register(&c, &mut o, "web", named(T1), Some(1), now)
        .unwrap();
    assert_eq!(state(&r, T1), State::Initial);
    assert!(o.groups.is_empty(), "back to what the file says");
}

#[test]
fn removing_a_target_from_the_file_drains_it_too() {
    let (c, o, mut r, now) = setup("");
    let mut c2 = c.clone();
    c2.target_groups[0].targets.retain(|t| t.endpoint != T2);
    r.sync(&c2, &o, now);
    assert_eq!(state(&r, T2), State::Draining);
}

#[test]
fn the_overlay_survives_a_round_trip_through_the_state_file_and_a_corrupt_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("xlb-overlay-{}", std::process::id()));
    let path = dir.join("state.json");
    let mut o = Overlay::default();
    o.groups
        .entry("web".into())
        .or_default()
        .registered
        .push(Target {
            endpoint: T3,
            weight: 4,
        });
    o.save(&path).unwrap();
    assert_eq!(Overlay::load(&path).unwrap(), o);
    std::fs::write(&path, b"{ not json").unwrap();
    assert!(matches!(
        Overlay::load(&path),
        Err(StateFileError::Corrupt { .. })
    ));
    assert_eq!(
        Overlay::load(&dir.join("missing.json")).unwrap(),
        Overlay::default()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn checks_disabled_means_every_registered_target_takes_traffic() {
    let (c, _, r, _) = setup("health_check = { enabled = false }");
    assert_eq!(state(&r, T1), State::Healthy);
    assert!(!r.groups["web"].fail_open());
    assert!(r.probes().is_empty());
    assert!(planned(&r, &c, T2).unwrap().in_ring);
}

#[test]
fn a_registration_beyond_the_data_planes_targets_is_refused_and_changes_nothing() {
    let max = lb_common::limits::MAX_TARGETS - 1;
    let addr =
        |i: u32| std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, (i >> 8) as u8, i as u8, 1));
    // A file whose targets take every target id.
    let targets: Vec<String> = (0..max)
        .map(|i| format!("{{ address = \"{}\" }}", addr(i)))
        .collect();
    let text = format!(
        "interfaces = [\"eth0\"]\n[[listener]]\nname = \"web\"\nvip = \"198.18.100.10\"\nport = 80\n\
         protocol = \"tcp\"\ntarget_group = \"web\"\n[[target_group]]\nname = \"web\"\nport = 8080\n\
         deregistration_delay = 10\ntargets = [{}]\n",
        targets.join(", ")
    );
    let c = config::parse(Path::new("t.toml"), &text).unwrap();
    let mut o = Overlay::default();
    let mut r = Registry::default();
    let now = Instant::now();
    r.sync(&c, &o, now);
    let new = |i: u32| TargetRef {
        addr: addr(i),
        port: None,
    };
    let e = r
        .register(&c, &mut o, "web", new(max), None, now)
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::TooManyTargets { max: 4095, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("at most 4095 distinct targets"),
        "{e}"
    );
    assert_eq!(o, Overlay::default(), "the overlay is unchanged");
    // A deregistered target holds its id while it drains; once unused, its id is free again.
    r.deregister(&c, &mut o, "web", new(0), now).unwrap();
    assert!(r.register(&c, &mut o, "web", new(max), None, now).is_err());
    r.tick(now + Duration::from_secs(10));
    r.register(&c, &mut o, "web", new(max), None, now).unwrap();
}
