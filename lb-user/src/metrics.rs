//! Prometheus metrics: the agent's status as the text exposition format, written with the
//! `prometheus-client` crate (names, types, units and escaping are its job). Served on
//! `metrics = "ADDR:PORT"` at `/metrics` when the config names one (off by default).
//!
//! Every scrape builds a fresh registry from one status snapshot: counters carry the data
//! plane's totals (they only grow while the agent runs), gauges the current states.
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::api::Status;

type Labels = Vec<(&'static str, String)>;

fn counters() -> Family<Labels, Counter> {
    Family::default()
}

fn gauges() -> Family<Labels, Gauge> {
    Family::default()
}

fn add(f: &Family<Labels, Counter>, labels: Labels, v: u64) {
    f.get_or_create(&labels).inc_by(v);
}

fn set(f: &Family<Labels, Gauge>, labels: Labels, v: i64) {
    f.get_or_create(&labels).set(v);
}

/// States a target can be in, each a series of `xlb_target_state` (1 for the current one).
const STATES: [&str; 5] = ["initial", "healthy", "unhealthy", "draining", "unused"];

/// The text exposition of `s`, with the connection tables' (name, entries, capacity).
pub fn render(s: &Status, tables: &[(String, u64, u32)]) -> String {
    let mut r = Registry::with_prefix("xlb");
    let packets = counters();
    let bytes = counters();
    let new_flows = counters();
    for l in &s.listeners {
        for (dir, p, b) in [
            ("to_target", l.traffic.packets, l.traffic.bytes),
            ("reply", l.traffic.reply_packets, l.traffic.reply_bytes),
        ] {
            let labels = vec![("listener", l.name.clone()), ("direction", dir.into())];
            add(&packets, labels.clone(), p);
            add(&bytes, labels, b);
        }
        add(
            &new_flows,
            vec![("listener", l.name.clone())],
            l.traffic.new_flows,
        );
    }
    r.register(
        "listener_packets",
        "Packets through a listener, by direction",
        packets,
    );
    r.register_with_unit(
        "listener",
        "Bytes through a listener, by direction",
        Unit::Bytes,
        bytes,
    );
    r.register(
        "listener_new_flows",
        "Flows a listener balanced by its Maglev table (new, re-balanced, met mid-flow)",
        new_flows,
    );

    let t_packets = counters();
    let t_bytes = counters();
    let state = gauges();
    let weight = gauges();
    let drain_left = gauges();
    let fail_open = gauges();
    let check = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for g in &s.groups {
        set(
            &fail_open,
            vec![("group", g.name.clone())],
            g.fail_open.into(),
        );
        for t in &g.targets {
            let target = crate::model::Endpoint::new(
                t.address
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
                t.port,
            )
            .to_string();
            let who = || vec![("group", g.name.clone()), ("target", target.clone())];
            for (dir, p, b) in [
                ("to_target", t.traffic.packets, t.traffic.bytes),
                ("reply", t.traffic.reply_packets, t.traffic.reply_bytes),
            ] {
                let mut labels = who();
                labels.push(("direction", dir.into()));
                add(&t_packets, labels.clone(), p);
                add(&t_bytes, labels, b);
            }
            for st in STATES {
                let mut labels = who();
                labels.push(("state", st.into()));
                set(&state, labels, (t.state == st).into());
            }
            set(&weight, who(), t.weight.into());
            if let Some(ms) = t.check_ms {
                check.get_or_create(&who()).set(ms / 1000.0);
            }
            if let Some(left) = t.drain_remaining_s {
                set(&drain_left, who(), i64::try_from(left).unwrap_or(i64::MAX));
            }
        }
    }
    r.register(
        "target_packets",
        "Packets to and from a target (all listeners using it), by direction",
        t_packets,
    );
    r.register_with_unit(
        "target",
        "Bytes to and from a target, by direction",
        Unit::Bytes,
        t_bytes,
    );
    r.register(
        "target_state",
        "1 for a target's current health state (initial, healthy, unhealthy, draining, unused)",
        state,
    );
    r.register("target_weight", "A target's weight", weight);
    r.register_with_unit(
        "target_drain_remaining",
        "Seconds left of a draining target's deregistration delay",
        Unit::Seconds,
        drain_left,
    );
    r.register_with_unit(
        "target_check_duration",
        "How long a target's last health check took",
        Unit::Seconds,
        check,
    );
    r.register(
        "group_fail_open",
        "1 while no registered target of a group is healthy and all take traffic",
        fail_open,
    );

    let verdicts = counters();
    for v in &s.reasons {
        add(
            &verdicts,
            vec![("reason", v.name.clone()), ("kind", v.kind.clone())],
            v.packets,
        );
    }
    r.register(
        "packets",
        "Packets by the data plane's verdict or event (kind: forward, pass, drop, answer, event)",
        verdicts,
    );

    let rules = counters();
    let limited = counters();
    for l in &s.listeners {
        for rule in &l.source_rules {
            add(
                &rules,
                vec![
                    ("listener", l.name.clone()),
                    ("rule", rule.kind.clone()),
                    ("source", rule.source.clone()),
                ],
                rule.packets,
            );
        }
        if let Some(rl) = &l.rate_limits {
            for (limit, n) in [
                ("listener", rl.listener_limited),
                ("source", rl.source_limited),
            ] {
                add(
                    &limited,
                    vec![("listener", l.name.clone()), ("limit", limit.into())],
                    n,
                );
            }
        }
    }
    r.register(
        "source_rule_packets",
        "Packets a listener's source rule matched",
        rules,
    );
    r.register(
        "rate_limited_flows",
        "New flows dropped over a listener's new-flow limit (limit: listener, source)",
        limited,
    );

    let announced = gauges();
    for a in &s.announcements {
        set(&announced, vec![("vip", a.vip.clone())], a.announced.into());
    }
    r.register(
        "vip_announced",
        "1 while this node announces the VIP over BGP",
        announced,
    );
    let drained = Gauge::<i64>::default();
    drained.set(s.drain.is_some().into());
    r.register("node_drained", "1 while the node is drained", drained);

    let entries = gauges();
    let capacity = gauges();
    for (name, n, cap) in tables {
        set(
            &entries,
            vec![("table", name.clone())],
            i64::try_from(*n).unwrap_or(i64::MAX),
        );
        set(&capacity, vec![("table", name.clone())], (*cap).into());
    }
    r.register(
        "connection_table_entries",
        "Entries in a connection table (flows, reverse, embryonic, embryonic_reverse; 6: IPv6) at the scrape",
        entries,
    );
    r.register(
        "connection_table_capacity",
        "Entries a connection table holds before its least recently used one is evicted",
        capacity,
    );

    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}

/// The OpenMetrics text of [`render`] in the older Prometheus text format (0.0.4), for clients
/// that do not ask for OpenMetrics (curl, `promtool check metrics`). The samples are the same;
/// only the metadata differs: a counter's HELP and TYPE name its samples (`..._total`), and
/// there are no UNIT lines and no `# EOF`.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{p}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The content type and body for a scrape whose `Accept` header is `accept`: OpenMetrics
/// when asked for (Prometheus asks), the older text format otherwise.
pub fn negotiate(
    accept: &str,
    s: &Status,
    tables: &[(String, u64, u32)],
) -> (&'static str, String) {
    let om = render(s, tables);
    if accept.contains("application/openmetrics-text") {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            om,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            to_text_format(&om),
        )
    }
}
