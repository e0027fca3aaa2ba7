use std::path::Path;

use super::*;
use crate::{
    dataplane::fake::{FakeDataplane, Write},
    model::config,
};

fn cfg(web_targets: &[&str], extra: &str) -> Config {
    cfg_at("198.18.100.10", web_targets, extra)
}

/// As [`cfg`], the "web" listener on `vip`.
fn cfg_at(vip: &str, web_targets: &[&str], extra: &str) -> Config {
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
vip = "{vip}"
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

fn reconciler(c: &Config) -> Reconciler<FakeDataplane> {
    let mut b = Reconciler::new(FakeDataplane::default(), c.tables);
    b.apply(&Plan::from_config(c)).unwrap();
    b
}

/// Where the first write matching `what` is.
fn pos(b: &Reconciler<FakeDataplane>, what: impl Fn(&Write) -> bool) -> usize {
    let dp = b.dataplane();
    dp.position(what)
        .unwrap_or_else(|| panic!("not in {:#?}", dp.log))
}

/// Where the last write matching `what` is.
fn last(b: &Reconciler<FakeDataplane>, what: impl Fn(&Write) -> bool) -> usize {
    let dp = b.dataplane();
    dp.last_position(what)
        .unwrap_or_else(|| panic!("not in {:#?}", dp.log))
}

fn key(c: &Config, name: &str) -> ListenerMapKey {
    keys::listener_key(c.listeners.iter().find(|l| l.name == name).unwrap())
}

fn ep(a: &str) -> Endpoint {
    Endpoint::new(a.parse().unwrap(), 8080)
}

fn is_target(w: &Write) -> bool {
    matches!(w, Write::Target { .. })
}
fn is_ring(w: &Write) -> bool {
    matches!(w, Write::Ring { .. })
}
fn is_listener(w: &Write) -> bool {
    matches!(w, Write::Listener { .. })
}
fn is_vip(w: &Write) -> bool {
    matches!(w, Write::Vip { .. })
}

#[test]
fn first_apply_writes_targets_then_rings_then_listeners_then_vips() {
    let c = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let b = reconciler(&c);
    let web = key(&c, "web");
    assert!(last(&b, is_target) < pos(&b, is_ring));
    assert!(
        pos(&b, |w| matches!(w, Write::PortFlags { port: 80, .. }))
            < pos(
                &b,
                |w| matches!(w, Write::Listener { key, .. } if *key == web)
            )
    );
    assert!(pos(&b, is_ring) < pos(&b, is_listener));
    assert!(last(&b, is_listener) < pos(&b, is_vip));
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
        pos(&b, |w| *w
            == Write::VipHint {
                index: hint,
                on: true
            })
            < pos(&b, is_vip),
        "the hint goes in before the VIP"
    );
}
#[test]
fn the_ring_in_the_dataplane_is_the_maglev_table_of_the_group() {
    let c = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let b = reconciler(&c);
    let ring = b.dataplane().ring_of(&key(&c, "web"));
    let ids = [
        b.target_id(&ep("198.18.1.2")).unwrap(),
        b.target_id(&ep("198.18.2.2")).unwrap(),
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
    let mut b = reconciler(&c);
    b.dataplane_mut().log.clear();
    let r = b.apply(&Plan::from_config(&c)).unwrap();
    assert!(b.dataplane().log.is_empty(), "{:#?}", b.dataplane().log);
    assert_eq!(r.listeners_unchanged.len(), 2);
}

#[test]
fn adding_a_target_rewrites_the_idle_ring_then_flips_and_moves_about_a_third() {
    let c1 = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let mut b = reconciler(&c1);
    let k = key(&c1, "web");
    let before = b.dataplane().ring_of(&k);
    let old_base = b.dataplane().listeners[&k].ring_base;
    b.dataplane_mut().log.clear();

    let c2 = cfg(&["198.18.1.2", "198.18.2.2", "198.18.3.2"], "");
    let r = b.apply(&Plan::from_config(&c2)).unwrap();
    let dns = key(&c2, "dns");
    assert_eq!(r.listeners_changed, ["web"]);
    assert_eq!(
        r.listeners_unchanged,
        ["dns"],
        "the other listener is untouched"
    );
    assert!(
        b.dataplane()
            .position(|w| matches!(w, Write::Listener { key, .. } if *key == dns))
            .is_none(),
        "{:#?}",
        b.dataplane().log
    );
    let new_base = b.dataplane().listeners[&k].ring_base;
    assert_ne!(new_base, old_base, "the new table goes to the idle ring");
    let new_ring = |w: &Write| matches!(w, Write::Ring { base, .. } if *base == new_base);
    assert!(pos(&b, is_target) < pos(&b, new_ring));
    assert!(
        pos(&b, new_ring)
            < pos(
                &b,
                |w| matches!(w, Write::Listener { key, .. } if *key == k)
            )
    );
    // The ring the program used until the flip was not written to.
    assert!(
        b.dataplane()
            .position(|w| matches!(w, Write::Ring { base, .. } if *base == old_base))
            .is_none()
    );

    let after = b.dataplane().ring_of(&k);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(r.slots_moved, vec![("web".to_owned(), moved)]);
    let frac = moved as f64 / 251.0;
    assert!(
        (0.25..0.45).contains(&frac),
        "moved {frac:.2} of the slots, about 1/3 expected"
    );
    let new_id = b.target_id(&ep("198.18.3.2")).unwrap();
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
    let mut b = reconciler(&c1);
    let gone = b.target_id(&ep("198.18.2.2")).unwrap();
    b.dataplane_mut().log.clear();
    let r = b
        .apply(&Plan::from_config(&cfg(&["198.18.1.2"], "")))
        .unwrap();
    assert_eq!(r.targets_removed, 1);
    let web = key(&c1, "web");
    assert!(
        pos(
            &b,
            |w| matches!(w, Write::Listener { key, .. } if *key == web)
        ) < pos(&b, |w| *w == Write::Target { id: gone, flags: 0 })
    );
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
    let mut b = reconciler(&cfg(&["198.18.1.2", "198.18.2.2"], ""));
    let old = b.target_id(&ep("198.18.2.2")).unwrap();
    b.apply(&Plan::from_config(&cfg(&["198.18.1.2"], "")))
        .unwrap();
    b.apply(&Plan::from_config(&cfg(&["198.18.1.2", "198.18.4.2"], "")))
        .unwrap();
    let new = b.target_id(&ep("198.18.4.2")).unwrap();
    assert_ne!(
        old, new,
        "a stale flow of the removed target must not land on the new one"
    );
}

#[test]
fn removing_a_listener_removes_it_and_its_vip_and_port_flag_when_unused() {
    let c = cfg(&["198.18.1.2"], "");
    let mut b = reconciler(&c);
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
fn a_group_with_no_targets_gives_an_empty_ring() {
    let c = cfg(&[], "");
    let b = reconciler(&c);
    assert!(
        b.dataplane()
            .ring_of(&key(&c, "web"))
            .iter()
            .all(|&t| t == 0)
    );
}

/// Every write of a first apply, then of a change, fails once in turn: the data plane is left
/// in a state packets can use, and applying the plan again makes it exactly what an apply
/// that never failed gives.
#[test]
fn a_failure_at_any_write_is_repaired_by_applying_again() {
    let c1 = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let mut c2 = cfg(&["198.18.2.2", "198.18.3.2"], "");
    c2.listeners.retain(|l| l.name == "web");
    let want1 = reconciler(&c1).dataplane().contents();
    let mut clean = reconciler(&c1);
    let writes_first = clean.dataplane().log.len();
    clean.apply(&Plan::from_config(&c2)).unwrap();
    let writes_change = clean.dataplane().log.len() - writes_first;
    let want2 = clean.dataplane().contents();
    assert!(writes_first > 5 && writes_change > 5);

    for n in 0..writes_first {
        let dp = FakeDataplane {
            fail_at: Some(n),
            ..FakeDataplane::default()
        };
        let mut b = Reconciler::new(dp, c1.tables);
        assert!(b.apply(&Plan::from_config(&c1)).is_err(), "write {n}");
        assert!(b.plan().is_none(), "a failed apply is not recorded as done");
        b.apply(&Plan::from_config(&c1)).unwrap();
        assert_eq!(
            b.dataplane().contents(),
            want1,
            "first apply, write {n} failed"
        );
    }
    for n in 0..writes_change {
        let mut b = reconciler(&c1);
        let at = b.dataplane().log.len() + n;
        b.dataplane_mut().fail_at = Some(at);
        assert!(b.apply(&Plan::from_config(&c2)).is_err(), "write {n}");
        // Whatever a packet finds now points at a target the data plane has.
        let mid = b.dataplane().contents();
        for (_, _, ring) in mid.listeners.values() {
            assert!(ring.iter().all(|t| t.is_some_and(|t| t.2 == TARGET_ACTIVE)));
        }
        b.apply(&Plan::from_config(&c2)).unwrap();
        assert_eq!(b.dataplane().contents(), want2, "change, write {n} failed");
    }
}

#[test]
fn an_ipv6_listener_goes_into_the_ipv6_maps_without_a_vip_hint() {
    let c = cfg_at("2001:db8:100::10", &["[2001:db8:1::2]"], "");
    let b = reconciler(&c);
    let dp = b.dataplane();
    let ListenerMapKey::V6(k) = key(&c, &c.listeners[0].name) else {
        panic!("an IPv6 VIP must give an IPv6 key");
    };
    assert_eq!(
        k.addr,
        "2001:db8:100::10"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
    );
    assert!(dp.listeners.contains_key(&ListenerMapKey::V6(k)));
    // The "dns" listener stays on the IPv4 VIP: one key per family, a hint for IPv4 only.
    let v6 = keys::vip_key("2001:db8:100::10".parse().unwrap());
    let v4 = keys::vip_key("198.18.100.10".parse().unwrap());
    assert!(matches!(v6, VipMapKey::V6(_)));
    assert_eq!(
        (dp.vips.get(&v6), dp.vips.get(&v4), dp.vips.len()),
        (Some(&1), Some(&1), 2)
    );
    let on: Vec<u32> = dp
        .vip_hints
        .iter()
        .filter(|(_, on)| **on)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(on, [keys::vip_hint(&v4).unwrap()]);
    let ring = dp.ring_of(&ListenerMapKey::V6(k));
    let t = dp.targets[&ring[0]];
    assert_eq!(
        (t.family, t.addr),
        (
            lb_common::FAMILY_IPV6,
            "2001:db8:1::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        )
    );
}

#[test]
fn a_mode_change_rewrites_the_listener_and_settings_go_in_before_anything_else() {
    let c = cfg(&["198.18.1.2"], "");
    let mut b = reconciler(&c);
    assert_eq!(
        b.dataplane().log.first(),
        Some(&Write::Settings(Settings {
            flags: lb_common::SETTING_ICMP_ECHO,
            ..Settings::default()
        })),
        "echo answers are on by default"
    );
    let web = key(&c, "web");
    assert_eq!(b.dataplane().listeners[&web].mode, lb_common::MODE_NAT);
    let mut c2 = c.clone();
    c2.listeners[0].mode = crate::model::Mode::Tunnel;
    c2.tunnel = Some(crate::model::config::Tunnel {
        source: "198.18.250.0".parse().unwrap(),
        source_prefix_len: 24,
        source6: None,
        icmp_frag_needed: true,
    });
    b.dataplane_mut().log.clear();
    let r = b.apply(&Plan::from_config(&c2)).unwrap();
    assert_eq!(r.listeners_changed, ["web"]);
    assert_eq!(b.dataplane().listeners[&web].mode, lb_common::MODE_TUNNEL);
    let s = b.dataplane().settings;
    assert_eq!(
        (s.tunnel_src, s.tunnel_src_hostmask, s.flags),
        (
            [198, 18, 250, 0],
            [0, 0, 0, 255],
            lb_common::SETTING_FRAG_NEEDED | lb_common::SETTING_ICMP_ECHO
        )
    );
    assert!(matches!(
        b.dataplane().log.first(),
        Some(Write::Settings(_))
    ));
}

#[test]
fn source_rules_go_in_before_the_listener_points_at_them_and_out_after() {
    let c = cfg(&["198.18.1.2"], "");
    let mut b = reconciler(&c);
    let web = key(&c, "web");
    let mut c2 = c.clone();
    c2.listeners[0].deny_sources = vec!["198.18.9.0/24".parse().unwrap()];
    c2.listeners[0].allow_sources = vec!["198.18.0.0/16".parse().unwrap()];
    b.dataplane_mut().log.clear();
    let r = b.apply(&Plan::from_config(&c2)).unwrap();
    assert_eq!(r.listeners_changed, ["web"]);
    let dp = b.dataplane();
    let flip = dp
        .position(|w| matches!(w, Write::Listener { key, .. } if *key == web))
        .unwrap();
    let rules: Vec<usize> = (0..dp.log.len())
        .filter(|i| matches!(dp.log[*i], Write::Rule { .. }))
        .collect();
    assert_eq!(rules.len(), 2, "{:#?}", dp.log);
    assert!(
        rules.iter().all(|i| *i < flip),
        "rules before the flags: {:#?}",
        dp.log
    );
    assert_eq!(
        dp.listeners[&web].flags,
        lb_common::LISTENER_HAS_ALLOW | lb_common::LISTENER_HAS_DENY
    );
    let deny = b
        .rule_id(&c2.listeners[0], false, &"198.18.9.0/24".parse().unwrap())
        .unwrap();
    let allow = b
        .rule_id(&c2.listeners[0], true, &"198.18.0.0/16".parse().unwrap())
        .unwrap();
    assert_ne!(deny, allow);
    // Applying the same plan writes nothing.
    b.dataplane_mut().log.clear();
    b.apply(&Plan::from_config(&c2)).unwrap();
    assert!(b.dataplane().log.is_empty(), "{:#?}", b.dataplane().log);
    // Without rules: the flags go first, then the entries.
    b.dataplane_mut().log.clear();
    b.apply(&Plan::from_config(&c)).unwrap();
    let dp = b.dataplane();
    let flip = dp
        .position(|w| matches!(w, Write::Listener { key, .. } if *key == web))
        .unwrap();
    let removed: Vec<usize> = (0..dp.log.len())
        .filter(|i| matches!(dp.log[*i], Write::RemoveRule { .. }))
        .collect();
    assert_eq!(removed.len(), 2);
    assert!(removed.iter().all(|i| *i > flip), "{:#?}", dp.log);
    assert_eq!(dp.listeners[&web].flags, 0);
    assert!(dp.rules.is_empty());
}

#[test]
fn two_balancers_with_different_histories_build_the_same_tables() {
    // The cross-node promise: the Maglev table depends on the targets' addresses and ports,
    // never on their ids or the order they came in.
    let all = ["198.18.1.2", "198.18.2.2", "198.18.3.2", "198.18.4.2"];
    let a = reconciler(&cfg(&all, ""));
    let mut b = reconciler(&cfg(&["198.18.4.2"], ""));
    for step in [
        &["198.18.9.9", "198.18.4.2"][..],
        &["198.18.3.2", "198.18.4.2", "198.18.1.2"],
        &all,
    ] {
        b.apply(&Plan::from_config(&cfg(step, ""))).unwrap();
    }
    let web = key(&cfg(&all, ""), "web");
    assert_ne!(
        a.dataplane().ring_of(&web),
        b.dataplane().ring_of(&web),
        "the ids differ (the histories did)"
    );
    assert_eq!(
        a.dataplane().contents().listeners,
        b.dataplane().contents().listeners
    );
}

#[test]
fn a_changed_udp_idle_timeout_reaches_the_data_plane() {
    let c = cfg(&["198.18.1.2"], "");
    let mut b = reconciler(&c);
    let dns = key(&c, "dns");
    assert_eq!(
        b.dataplane().listeners[&dns].udp_idle_timeout_s,
        lb_common::limits::DEFAULT_UDP_IDLE_TIMEOUT_S
    );
    let mut c2 = c.clone();
    c2.listeners[1].udp_idle_timeout_s = 7;
    let r = b.apply(&Plan::from_config(&c2)).unwrap();
    assert_eq!(r.listeners_changed, ["dns"]);
    assert_eq!(b.dataplane().listeners[&dns].udp_idle_timeout_s, 7);
}

#[test]
fn changed_new_flow_limits_reach_the_data_plane_and_nothing_else_moves() {
    let c = cfg(&["198.18.1.2"], "");
    let mut b = reconciler(&c);
    let dns = key(&c, "dns");
    let before = b.dataplane().listeners[&dns];
    assert_eq!((before.new_flow_rate, before.source_flow_rate), (0, 0));
    // Each limit alone is a change.
    let mut c2 = c.clone();
    c2.listeners[1].new_flows_per_second = 900;
    let r = b.apply(&Plan::from_config(&c2)).unwrap();
    assert_eq!(r.listeners_changed, ["dns"]);
    c2.listeners[1].new_flows_per_second_per_source = 30;
    let r = b.apply(&Plan::from_config(&c2)).unwrap();
    assert_eq!(r.listeners_changed, ["dns"]);
    let after = b.dataplane().listeners[&dns];
    assert_eq!((after.new_flow_rate, after.source_flow_rate), (900, 30));
    // Same id (its counters and buckets stay its own), and the same table.
    assert_eq!(after.id, before.id);
    // Applying it again changes nothing.
    let r = b.apply(&Plan::from_config(&c2)).unwrap();
    assert!(r.listeners_changed.is_empty(), "{r:?}");
}

#[test]
fn exactly_max_source_rules_fit_the_data_plane_and_one_more_is_refused() {
    use lb_common::limits::MAX_SOURCE_RULES;
    let prefix = |i: u32| -> crate::model::Cidr {
        format!("10.{}.{}.0/24", i >> 8, i & 0xff).parse().unwrap()
    };
    let mut c = cfg(&["198.18.1.2"], "");
    c.listeners[0].deny_sources = (0..MAX_SOURCE_RULES).map(prefix).collect();
    let mut b = reconciler(&c);
    // Every rule has its own id, and the last one is MAX_SOURCE_RULES (no id 0).
    let ids: HashSet<u32> = c.listeners[0]
        .deny_sources
        .iter()
        .map(|p| b.rule_id(&c.listeners[0], false, p).expect("installed"))
        .collect();
    assert_eq!(ids.len(), MAX_SOURCE_RULES as usize);
    assert!(!ids.contains(&0) && ids.contains(&MAX_SOURCE_RULES));
    // The config validator refuses more; the reconciler refuses them too.
    c.listeners[0].deny_sources.push(prefix(MAX_SOURCE_RULES));
    let err = b.apply(&Plan::from_config(&c)).unwrap_err();
    assert!(err.to_string().contains("more than 4096 rules"), "{err}");
}

/// The reconciler's clock in the previous-table test, moved by hand.
static CLOCK_S: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1000);

fn test_clock() -> u32 {
    CLOCK_S.load(std::sync::atomic::Ordering::Relaxed)
}

fn set_time(s: u32) {
    CLOCK_S.store(s, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn a_table_change_keeps_the_previous_table_for_the_window_and_closes_it_before_rewriting() {
    set_time(1000);
    let c = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let mut b = Reconciler::new(FakeDataplane::default(), c.tables);
    b.set_clock(test_clock);
    b.apply(&Plan::from_config(&c)).unwrap();
    let web = key(&c, "web");
    let first = b.dataplane().listeners[&web];
    assert_eq!(
        first.prev_until_s, 0,
        "a new listener has no previous table"
    );
    // A target joins after the table has been in force for 500 s: the old ring becomes the
    // previous one for the whole window (60 s by default).
    set_time(1500);
    let c2 = cfg(&["198.18.1.2", "198.18.2.2", "198.18.3.2"], "");
    b.apply(&Plan::from_config(&c2)).unwrap();
    let second = b.dataplane().listeners[&web];
    assert_eq!(second.prev_ring_base, first.ring_base);
    assert_ne!(second.ring_base, first.ring_base);
    assert_eq!(second.prev_until_s, 1560);
    // Another change 5 s later: the window is closed (the listener rewritten with no
    // previous table) before the idle ring, the previous one, is overwritten; the new window
    // lasts only as long as the table it replaces was in force.
    set_time(1505);
    b.dataplane_mut().log.clear();
    b.apply(&Plan::from_config(&c)).unwrap();
    let log = &b.dataplane().log;
    let closed = log
        .iter()
        .position(|w| matches!(w, Write::Listener { key, ring_base } if *key == web && *ring_base == second.ring_base))
        .expect("the window closed first");
    let ring = log
        .iter()
        .position(|w| matches!(w, Write::Ring { base, .. } if *base == first.ring_base))
        .expect("the idle ring rewritten");
    assert!(closed < ring, "{log:#?}");
    let third = b.dataplane().listeners[&web];
    assert_eq!(third.prev_ring_base, second.ring_base);
    assert_eq!(third.prev_until_s, 1510);
    // With the window at 0, no previous table is ever consulted.
    let mut c0 = c.clone();
    c0.tables.previous_table_window_s = 0;
    let mut b0 = Reconciler::new(FakeDataplane::default(), c0.tables);
    b0.set_clock(test_clock);
    b0.apply(&Plan::from_config(&c0)).unwrap();
    set_time(2000);
    let mut c3 = c2.clone();
    c3.tables.previous_table_window_s = 0;
    b0.apply(&Plan::from_config(&c3)).unwrap();
    assert_eq!(b0.dataplane().listeners[&web].prev_until_s, 0);
}

#[test]
fn a_pinned_data_planes_targets_keep_their_ids_and_those_gone_are_retired() {
    // A previous agent's TARGETS: ids 7 and 9, as flow entries in the pinned tables name them.
    let c = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let mut dp = FakeDataplane::default();
    dp.targets
        .insert(7, keys::target_value(&ep("198.18.2.2"), TARGET_ACTIVE));
    dp.targets
        .insert(9, keys::target_value(&ep("198.18.5.5"), TARGET_ACTIVE));
    let mut b = Reconciler::new(dp, c.tables);
    assert_eq!(b.adopt_targets().unwrap(), 2);
    b.apply(&Plan::from_config(&c)).unwrap();
    // Kept: its flows still find it under id 7.
    assert_eq!(b.target_id(&ep("198.18.2.2")), Some(7));
    assert_eq!(b.dataplane().targets[&7].flags, TARGET_ACTIVE);
    // Not in the plan: inactive, so its flows are balanced afresh, and its id is free.
    assert_eq!(b.target_id(&ep("198.18.5.5")), None);
    assert_eq!(b.dataplane().targets[&9].flags, 0);
    // The new one got an id no one holds.
    let new = b.target_id(&ep("198.18.1.2")).unwrap();
    assert!(new != 7 && new != 9 && new != 0);
}

/// The VIP and port `OWNERS` names for target `a:8080` over TCP, if any.
fn owner_of(b: &Reconciler<FakeDataplane>, a: &str) -> Option<(String, u16)> {
    let v = b
        .dataplane()
        .owners
        .get(&keys::owner_key(&ep(a), lb_common::PROTO_TCP))?;
    let vip = std::net::Ipv4Addr::new(v.vip[0], v.vip[1], v.vip[2], v.vip[3]);
    Some((vip.to_string(), u16::from_be_bytes(v.vport)))
}

/// A second NAT listener "web2" on `vip`, sharing the group "web".
fn web2_at(vip: &str) -> String {
    format!(
        "[[listener]]\nname = \"web2\"\nvip = \"{vip}\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web\"\n"
    )
}

#[test]
fn each_nat_target_gets_the_first_listener_sending_to_it_as_its_reply_owner() {
    let c = cfg(&["198.18.1.2", "198.18.2.2"], &web2_at("198.18.100.20"));
    let b = reconciler(&c);
    for t in ["198.18.1.2", "198.18.2.2"] {
        assert_eq!(owner_of(&b, t), Some(("198.18.100.10".into(), 80)));
    }
    // The UDP listener owns its own target; DSR and tunnel listeners own nothing.
    let dns = keys::owner_key(
        &Endpoint::new("198.18.9.9".parse().unwrap(), 53),
        lb_common::PROTO_UDP,
    );
    assert_eq!(b.dataplane().owners[&dns].vport, 53u16.to_be_bytes());
    assert_eq!(b.dataplane().owners.len(), 3);
    let dsr = "[[listener]]\nname = \"d\"\nvip = \"198.18.100.30\"\nport = 8080\nprotocol = \"tcp\"\ntarget_group = \"dsr\"\nmode = \"dsr\"\n[[target_group]]\nname = \"dsr\"\nport = 8080\ntargets = [{ address = \"198.18.3.2\" }]\n";
    let b = reconciler(&cfg(&["198.18.1.2"], dsr));
    assert_eq!(owner_of(&b, "198.18.3.2"), None);
    // The owner's value is written after the listener it names.
    let w = pos(&b, |w| matches!(w, Write::Owner { .. }));
    assert!(w > last(&b, |w| matches!(w, Write::Listener { .. })));
}

#[test]
fn a_reply_owner_stays_while_it_sends_to_the_target_and_moves_when_it_goes() {
    // web owns; web2 is added *before* it in the config: web stays the owner (its flows have
    // no return-path entries).
    let c0 = cfg(&["198.18.1.2", "198.18.2.2"], "");
    let mut b = reconciler(&c0);
    assert_eq!(
        owner_of(&b, "198.18.1.2"),
        Some(("198.18.100.10".into(), 80))
    );
    let mut c1 = cfg(&["198.18.1.2", "198.18.2.2"], &web2_at("198.18.100.20"));
    c1.listeners.rotate_right(1);
    assert_eq!(c1.listeners[0].name, "web2");
    b.apply(&Plan::from_config(&c1)).unwrap();
    assert_eq!(
        owner_of(&b, "198.18.1.2"),
        Some(("198.18.100.10".into(), 80))
    );
    // web goes: web2 takes over.
    let mut c2 = c1.clone();
    c2.listeners.retain(|l| l.name != "web");
    b.apply(&Plan::from_config(&c2)).unwrap();
    assert_eq!(
        owner_of(&b, "198.18.1.2"),
        Some(("198.18.100.20".into(), 80))
    );
    // A target no group names any more has no owner.
    let mut c3 = cfg(&["198.18.1.2"], &web2_at("198.18.100.20"));
    c3.listeners.retain(|l| l.name != "web");
    b.apply(&Plan::from_config(&c3)).unwrap();
    assert_eq!(owner_of(&b, "198.18.2.2"), None);
    assert!(owner_of(&b, "198.18.1.2").is_some());
    // Applying the same plan again writes nothing.
    let n = b.dataplane().log.len();
    b.apply(&Plan::from_config(&c3)).unwrap();
    assert_eq!(b.dataplane().log.len(), n);
}

#[test]
fn a_pinned_data_planes_reply_owners_are_kept_by_the_next_agent() {
    // The previous agent's owner is web2; the next agent's plan lists web first. web2 stays
    // the owner: its flows (no return-path entries) must keep finding their way back.
    let c0 = cfg(&["198.18.1.2"], &web2_at("198.18.100.20"));
    let mut first = cfg(&["198.18.1.2"], &web2_at("198.18.100.20"));
    first.listeners.rotate_right(1);
    let dp = reconciler(&first).into_dataplane();
    let mut b = Reconciler::new(dp, c0.tables);
    b.adopt_targets().unwrap();
    b.apply(&Plan::from_config(&c0)).unwrap();
    assert_eq!(
        owner_of(&b, "198.18.1.2"),
        Some(("198.18.100.20".into(), 80))
    );
    // ...with the id the new agent gave web2.
    let v = b.dataplane().owners[&keys::owner_key(&ep("198.18.1.2"), lb_common::PROTO_TCP)];
    assert_eq!(
        Some(v.listener_id),
        b.listener_id(c0.listeners.iter().find(|l| l.name == "web2").unwrap())
    );
}
