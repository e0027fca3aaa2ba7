use std::path::Path;

use super::*;
use crate::{config, dataplane::FakeDataplane};

fn cfg(web_targets: &[&str], extra: &str) -> Config {
    let list = web_targets
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"interfaces = ["eth0"]
[tables]
maglev_size = 251
[[listener]]
name = "web"
vip = "198.18.100.10"
port = 80
protocol = "tcp"
target_group = "web"
[[listener]]
name = "dns"
vip = "198.18.100.10"
port = 53
protocol = "udp"
target_group = "dns"
[[target_group]]
name = "web"
port = 8080
targets = [{list}]
[[target_group]]
name = "dns"
port = 53
targets = [{{ address = "198.18.9.9" }}]
health_check = {{ enabled = false }}
{extra}"#
    );
    config::parse(Path::new("t.toml"), &text).unwrap()
}

fn balancer(c: &Config) -> Balancer<FakeDataplane> {
    let mut b = Balancer::new(FakeDataplane::default(), c.tables);
    b.apply(&Plan::from_config(c)).unwrap();
    b
}

fn pos(log: &[String], prefix: &str) -> usize {
    log.iter()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {log:#?}"))
}

fn key(c: &Config, name: &str) -> ListenerKey {
    listener_key(c.listeners.iter().find(|l| l.name == name).unwrap())
}

#[test]
fn first_apply_writes_targets_then_rings_then_listeners_then_vips() {
    let c = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let b = balancer(&c);
    let log = &b.dataplane().log;
    let last_target = log.iter().rposition(|l| l.starts_with("target ")).unwrap();
    assert!(last_target < pos(log, "ring "));
    assert!(pos(log, "port 80 ") < pos(log, "listener 198.18.100.10:80/6"));
    assert!(pos(log, "ring ") < pos(log, "listener "));
    assert!(
        log.iter()
            .rposition(|l| l.starts_with("listener "))
            .unwrap()
            < pos(log, "vip ")
    );
    assert_eq!(
        b.dataplane().vips.values().copied().collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(b.dataplane().port_flags[&80], PORT_LISTENER);
    assert_eq!(b.dataplane().port_flags[&8080], PORT_TARGET);
    assert_eq!(b.dataplane().port_flags[&53], PORT_LISTENER | PORT_TARGET);
    let hint = lb_common::vip_hint_index([198, 18, 100, 10]);
    assert!(b.dataplane().vip_hints[&hint]);
    assert!(
        pos(log, &format!("vip hint {hint} true")) < pos(log, "vip ["),
        "the hint goes in before the VIP"
    );
}
#[test]
fn the_ring_in_the_dataplane_is_the_maglev_table_of_the_group() {
    let c = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let b = balancer(&c);
    let ring = b.dataplane().ring_of(&key(&c, "web"));
    let ids = [
        b.target_id("198.18.1.2".parse().unwrap(), 8080).unwrap(),
        b.target_id("198.18.2.2".parse().unwrap(), 8080).unwrap(),
    ];
    assert_eq!(ring.len(), 251);
    assert!(
        ring.iter().all(|t| ids.contains(t)),
        "only the group's targets"
    );
    for id in ids {
        let n = ring.iter().filter(|&&t| t == id).count();
        assert!((120..=131).contains(&n), "target {id}: {n} of 251 slots");
    }
}

#[test]
fn applying_the_same_config_again_writes_nothing() {
    let c = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let mut b = balancer(&c);
    b.dataplane_mut().log.clear();
    let r = b.apply(&Plan::from_config(&c)).unwrap();
    assert!(b.dataplane().log.is_empty(), "{:#?}", b.dataplane().log);
    assert_eq!(r.listeners_unchanged.len(), 2);
}

#[test]
fn adding_a_target_rewrites_the_idle_ring_then_flips_and_moves_about_a_third() {
    let c1 = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let mut b = balancer(&c1);
    let k = key(&c1, "web");
    let before = b.dataplane().ring_of(&k);
    let old_base = b.dataplane().listeners[&k].ring_base;
    b.dataplane_mut().log.clear();

    let c2 = cfg(&["198.18.1.2", "198.18.2.2", "198.18.3.2"], "");
    let r = b.apply(&Plan::from_config(&c2)).unwrap();
    let log = &b.dataplane().log;
    assert_eq!(r.listeners_changed, ["web"]);
    assert_eq!(
        r.listeners_unchanged,
        ["dns"],
        "the other listener is untouched"
    );
    assert!(!log.iter().any(|l| l.contains(":53/")), "{log:#?}");
    let new_base = b.dataplane().listeners[&k].ring_base;
    assert_ne!(new_base, old_base, "the new table goes to the idle ring");
    assert!(pos(log, "target ") < pos(log, &format!("ring {new_base}")));
    assert!(pos(log, &format!("ring {new_base}")) < pos(log, "listener 198.18.100.10:80/6"));
    // The ring the program used until the flip was not written to.
    assert!(!log.contains(&format!("ring {old_base}")));

    let after = b.dataplane().ring_of(&k);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(r.slots_moved, vec![("web".to_owned(), moved)]);
    let frac = moved as f64 / 251.0;
    assert!(
        (0.25..0.45).contains(&frac),
        "moved {frac:.2} of the slots, about 1/3 expected"
    );
    let new_id = b.target_id("198.18.3.2".parse().unwrap(), 8080).unwrap();
    // Maglev is not perfectly minimal: a few slots reshuffle between the old targets too.
    let elsewhere = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b && **b != new_id)
        .count();
    eprintln!("moved {moved} of 251, {elsewhere} of them not to the new target");
    assert!(
        elsewhere * 10 <= moved,
        "most moved slots go to the new target: {elsewhere} of {moved} did not"
    );
}

#[test]
fn removing_a_target_deactivates_it_after_the_listener_stopped_using_it() {
    let c1 = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let mut b = balancer(&c1);
    let gone = b.target_id("198.18.2.2".parse().unwrap(), 8080).unwrap();
    b.dataplane_mut().log.clear();
    let r = b
        .apply(&Plan::from_config(&cfg(&["198.18.1.2"], "")))
        .unwrap();
    assert_eq!(r.targets_removed, 1);
    let log = &b.dataplane().log;
    assert!(pos(log, "listener 198.18.100.10:80/6") < pos(log, &format!("target {gone} flags=0")));
    assert_eq!(b.dataplane().targets[&gone].flags & TARGET_ACTIVE, 0);
    assert!(
        b.dataplane()
            .ring_of(&key(&c1, "web"))
            .iter()
            .all(|&t| t != gone)
    );
}

#[test]
fn removed_target_ids_are_not_reused_at_once() {
    let mut b = balancer(&cfg(&["198.18.1.2", "198.18.2.2"], ""));
    let old = b.target_id("198.18.2.2".parse().unwrap(), 8080).unwrap();
    b.apply(&Plan::from_config(&cfg(&["198.18.1.2"], "")))
        .unwrap();
    b.apply(&Plan::from_config(&cfg(&["198.18.1.2", "198.18.4.2"], "")))
        .unwrap();
    let new = b.target_id("198.18.4.2".parse().unwrap(), 8080).unwrap();
    assert_ne!(
        old, new,
        "a stale flow of the removed target must not land on the new one"
    );
}

#[test]
fn removing_a_listener_removes_it_and_its_vip_and_port_flag_when_unused() {
    let c = cfg(&["198.18.1.2"], "");
    let mut b = balancer(&c);
    let mut only_web = c.clone();
    only_web.listeners.retain(|l| l.name == "web");
    let r = b.apply(&Plan::from_config(&only_web)).unwrap();
    assert_eq!(r.listeners_removed, ["dns"]);
    assert!(!b.dataplane().listeners.contains_key(&key(&c, "dns")));
    assert_eq!(
        b.dataplane().vips.values().copied().collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(
        b.dataplane().port_flags[&53],
        PORT_TARGET,
        "53 stays a target port of group dns"
    );
    only_web.listeners.clear();
    b.apply(&Plan::from_config(&only_web)).unwrap();
    assert!(b.dataplane().vips.is_empty());
    assert_eq!(b.dataplane().port_flags[&80], 0);
    assert!(!b.dataplane().vip_hints[&lb_common::vip_hint_index([198, 18, 100, 10])]);
}

#[test]
fn table_size_changes_are_refused_and_write_nothing() {
    let c = cfg(&["198.18.1.2"], "");
    let mut b = balancer(&c);
    b.dataplane_mut().log.clear();
    let mut bigger = c.clone();
    bigger.tables.maglev_size = 257;
    assert!(matches!(
        b.apply(&Plan::from_config(&bigger)),
        Err(ApplyError::TablesChanged { .. })
    ));
    let mut other_if = c.clone();
    other_if.interfaces = vec!["eth1".into()];
    assert!(matches!(
        b.apply(&Plan::from_config(&other_if)),
        Err(ApplyError::InterfacesChanged { .. })
    ));
    assert!(b.dataplane().log.is_empty());
}

#[test]
fn a_group_with_no_targets_gives_an_empty_ring() {
    let c = cfg(&[], "");
    let b = balancer(&c);
    assert!(
        b.dataplane()
            .ring_of(&key(&c, "web"))
            .iter()
            .all(|&t| t == 0)
    );
}
