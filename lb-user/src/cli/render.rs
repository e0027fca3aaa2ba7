//! Tables for people: what `xlb status`, `xlb listeners` and `xlb targets health` print.
use std::fmt::Write as _;

use crate::api::{ApplyReport, Explanation, GroupStatus, ListenerStatus, Status};

/// Width of an address column: 22, or the longest entry (IPv6 addresses run long).
fn width<'a>(cells: impl Iterator<Item = &'a String>) -> usize {
    cells.map(String::len).max().unwrap_or(0).max(22)
}

pub fn render_listeners(o: &mut String, listeners: &[ListenerStatus]) {
    let vips: Vec<String> = listeners
        .iter()
        .map(|l| host_port(&l.vip, l.port))
        .collect();
    let w = width(vips.iter());
    let _ = writeln!(
        o,
        "{:<16} {:<w$} {:<5} {:<6} {:<12} {:>10} {:>12} {:>9} {:>10}",
        "LISTENER", "VIP:PORT", "PROTO", "MODE", "GROUP", "PACKETS", "BYTES", "NEW", "REPLIES"
    );
    for (l, vip) in listeners.iter().zip(&vips) {
        let _ = writeln!(
            o,
            "{:<16} {:<w$} {:<5} {:<6} {:<12} {:>10} {:>12} {:>9} {:>10}",
            l.name,
            vip,
            l.protocol,
            l.mode,
            l.target_group,
            l.traffic.packets,
            l.traffic.bytes,
            l.traffic.new_flows,
            l.traffic.reply_packets
        );
    }
}

/// Each listener's source rules and what they matched (listeners without rules are left out).
pub fn render_rules(o: &mut String, listeners: &[ListenerStatus]) {
    for l in listeners.iter().filter(|l| !l.source_rules.is_empty()) {
        let _ = writeln!(o, "source rules of {} (deny wins over allow)", l.name);
        let _ = writeln!(o, "  {:<6} {:<44} {:>10}", "RULE", "SOURCE", "PACKETS");
        for r in &l.source_rules {
            let _ = writeln!(o, "  {:<6} {:<44} {:>10}", r.kind, r.source, r.packets);
        }
        if l.source_rules.iter().any(|r| r.kind == "allow") {
            let _ = writeln!(
                o,
                "  {:<6} {:<44} {:>10}",
                "deny", "(no allow rule matched)", l.not_allowed
            );
        }
    }
}

/// Each listener's new-flow limits and what they refused (listeners without limits left out).
pub fn render_rate_limits(o: &mut String, listeners: &[ListenerStatus]) {
    let limit = |n: u32| {
        if n == 0 {
            "none".to_owned()
        } else {
            format!("{n}/s")
        }
    };
    for l in listeners {
        let Some(r) = &l.rate_limits else { continue };
        let _ = writeln!(
            o,
            "new-flow limits of {}: listener {} (dropped {}), per source {} (dropped {})",
            l.name,
            limit(r.new_flows_per_second),
            r.listener_limited,
            limit(r.new_flows_per_second_per_source),
            r.source_limited
        );
    }
}

pub fn render_groups(o: &mut String, groups: &[GroupStatus]) {
    for g in groups {
        let open = if g.fail_open {
            "  FAIL-OPEN: no healthy target, all registered targets take traffic"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "target group {} (health check: {}){open}",
            g.name, g.health_check
        );
        let addrs: Vec<String> = g
            .targets
            .iter()
            .map(|t| host_port(&t.address, t.port))
            .collect();
        let w = width(addrs.iter());
        let _ = writeln!(
            o,
            "  {:<w$} {:>6} {:<10} {:>10} {:>9}  REASON",
            "TARGET", "WEIGHT", "STATE", "PACKETS", "NEW"
        );
        for (t, addr) in g.targets.iter().zip(&addrs) {
            let reason = match t.drain_remaining_s {
                Some(s) => format!("{} ({s} s left)", t.reason),
                None => t.reason.clone(),
            };
            let _ = writeln!(
                o,
                "  {:<w$} {:>6} {:<10} {:>10} {:>9}  {reason}",
                addr, t.weight, t.state, t.traffic.packets, t.traffic.new_flows,
            );
        }
    }
}

/// The full status for people. Reasons with no packets are left out (`--json` has them all).
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let ifs: Vec<String> = s
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.mode))
        .collect();
    let _ = writeln!(o, "config:     {}", s.config);
    let _ = writeln!(o, "interfaces: {}", ifs.join(", "));
    if let Some(e) = &s.dataplane_error {
        let _ = writeln!(o, "DATA PLANE OUT OF STEP (retrying every second): {e}");
    }
    let _ = writeln!(o);
    render_listeners(&mut o, &s.listeners);
    let _ = writeln!(o);
    if s.listeners.iter().any(|l| !l.source_rules.is_empty()) {
        render_rules(&mut o, &s.listeners);
        let _ = writeln!(o);
    }
    if s.listeners.iter().any(|l| l.rate_limits.is_some()) {
        render_rate_limits(&mut o, &s.listeners);
        let _ = writeln!(o);
    }
    if !s.announcements.is_empty() || s.drain.is_some() {
        if let Some(d) = &s.drain {
            let stop = d
                .stops_in_s
                .map(|t| format!(", stopping in {t} s"))
                .unwrap_or_default();
            let _ = writeln!(o, "NODE DRAINED for {} s{stop}: VIPs withdrawn", d.since_s);
        }
        let _ = writeln!(o, "{:<40} {:<10} REASON", "VIP (BGP)", "ANNOUNCED");
        for a in &s.announcements {
            let yes = if a.announced { "yes" } else { "no" };
            let _ = writeln!(o, "{:<40} {:<10} {}", a.vip, yes, a.reason);
        }
        let _ = writeln!(o);
    }
    render_groups(&mut o, &s.groups);
    let _ = writeln!(o);
    let _ = writeln!(o, "{:<24} {:<8} {:>12}", "REASON", "KIND", "PACKETS");
    for r in s.reasons.iter().filter(|r| r.packets > 0) {
        let _ = writeln!(o, "{:<24} {:<8} {:>12}", r.name, r.kind, r.packets);
    }
    o
}

/// One line for `xlb reload`.
pub fn reload(r: &ApplyReport) -> String {
    format!(
        "reloaded: listeners +{} ~{} -{} ={}; targets +{} -{}\n",
        r.listeners_added.len(),
        r.listeners_changed.len(),
        r.listeners_removed.len(),
        r.listeners_unchanged.len(),
        r.targets_added,
        r.targets_removed
    )
}

/// `addr:port`, with an IPv6 address in brackets (`[2001:db8::2]:8080`).
fn host_port(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// `xlb explain`: one line per question.
pub fn explanation(x: &Explanation) -> String {
    let mut o = String::new();
    let events = if x.events.is_empty() {
        String::new()
    } else {
        format!(" + {}", x.events.join(", "))
    };
    for (k, v) in [
        ("flow", x.flow.clone()),
        ("listener", x.listener.clone()),
        ("source rules", x.source_rules.clone()),
        ("connection", x.connection.clone()),
        ("maglev now", x.maglev.clone()),
        ("next hop", x.next_hop.clone()),
        ("packet run", x.packet.clone()),
        ("verdict", format!("{}{events}", x.verdict)),
        ("out", x.output.clone()),
    ] {
        if !v.is_empty() {
            let _ = writeln!(o, "{k:<13} {v}");
        }
    }
    let _ = writeln!(o, "{:<13} {}", "how", x.method);
    o
}
