//! `xlb top`: a live view of the running agent, refreshed each second — per-listener and
//! per-target packet, byte and new-flow rates, target health, the top drop reasons, what is
//! announced. `q` (or Esc, Ctrl-C) quits. The numbers come from [`View::between`], a pure
//! function of two status snapshots; the drawing is ratatui's.
use std::{path::Path, time::Duration};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    widgets::{Block, Paragraph, Row, Table},
};

use crate::api::{Status, Traffic, client};

/// Rates of one row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    pub packets_s: f64,
    pub bytes_s: f64,
    pub new_flows_s: f64,
    pub replies_s: f64,
}

impl Rates {
    fn between(prev: Option<&Traffic>, cur: &Traffic, dt: f64) -> Self {
        let Some(p) = prev else {
            return Self::default();
        };
        let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        Self {
            packets_s: per_s(cur.packets, p.packets),
            bytes_s: per_s(cur.bytes, p.bytes),
            new_flows_s: per_s(cur.new_flows, p.new_flows),
            replies_s: per_s(cur.reply_packets, p.reply_packets),
        }
    }
}

/// What one frame shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub header: String,
    /// (listener, VIP:port/proto, mode, rates)
    pub listeners: Vec<(String, String, String, Rates)>,
    /// (group, target, state, weight, rates)
    pub targets: Vec<(String, String, String, u32, Rates)>,
    /// Drop reasons by rate (packets/s) over the last interval, then total; largest first.
    pub drops: Vec<(String, f64, u64)>,
}

impl View {
    /// The frame for snapshot `cur`, rates against `prev` taken `dt` seconds earlier.
    pub fn between(prev: Option<&Status>, cur: &Status, dt: f64) -> Self {
        let dt = dt.max(0.001);
        let listeners = cur
            .listeners
            .iter()
            .map(|l| {
                let p = prev
                    .and_then(|p| p.listeners.iter().find(|x| x.name == l.name))
                    .map(|x| &x.traffic);
                (
                    l.name.clone(),
                    format!(
                        "{}/{}",
                        crate::model::Endpoint::new(
                            l.vip
                                .parse()
                                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
                            l.port
                        ),
                        l.protocol
                    ),
                    l.mode.clone(),
                    Rates::between(p, &l.traffic, dt),
                )
            })
            .collect();
        let mut targets = Vec::new();
        for g in &cur.groups {
            for t in &g.targets {
                let p = prev
                    .and_then(|p| p.groups.iter().find(|x| x.name == g.name))
                    .and_then(|pg| {
                        pg.targets
                            .iter()
                            .find(|x| x.address == t.address && x.port == t.port)
                    })
                    .map(|x| &x.traffic);
                let state = if g.fail_open && t.state != "draining" && t.state != "unused" {
                    format!("{} (fail-open)", t.state)
                } else {
                    t.state.clone()
                };
                targets.push((
                    g.name.clone(),
                    crate::model::Endpoint::new(
                        t.address
                            .parse()
                            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
                        t.port,
                    )
                    .to_string(),
                    state,
                    t.weight,
                    Rates::between(p, &t.traffic, dt),
                ));
            }
        }
        let mut drops: Vec<(String, f64, u64)> = cur
            .reasons
            .iter()
            .filter(|r| r.kind == "drop" && r.packets > 0)
            .map(|r| {
                let before = prev
                    .and_then(|p| p.reasons.iter().find(|x| x.name == r.name))
                    .map_or(r.packets, |x| x.packets);
                let rate = if prev.is_some() {
                    r.packets.saturating_sub(before) as f64 / dt
                } else {
                    0.0
                };
                (r.name.clone(), rate, r.packets)
            })
            .collect();
        drops.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.cmp(&a.2)));
        drops.truncate(8);
        let announced: Vec<&str> = cur
            .announcements
            .iter()
            .filter(|a| a.announced)
            .map(|a| a.vip.as_str())
            .collect();
        let mut header = format!(
            "xlb top — {}   interfaces: {}",
            cur.config,
            cur.interfaces
                .iter()
                .map(|i| format!("{} ({})", i.name, i.mode))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !cur.announcements.is_empty() {
            header.push_str(&format!("   announced: {}", announced.join(", ")));
        }
        if cur.drain.is_some() {
            header.push_str("   NODE DRAINED");
        }
        Self {
            header,
            listeners,
            targets,
            drops,
        }
    }
}

/// A rate for people: 1234 -> "1.2k".
fn human(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn draw(f: &mut Frame, v: &View) {
    let [head, l, t, d, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(v.listeners.len() as u16 + 3),
        Constraint::Length(v.targets.len() as u16 + 3),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(v.header.as_str()), head);
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let rates = |r: &Rates| {
        [
            human(r.packets_s),
            human(r.bytes_s * 8.0),
            human(r.new_flows_s),
            human(r.replies_s),
        ]
    };
    let rows = v.listeners.iter().map(|(n, vip, mode, r)| {
        let mut cells = vec![n.clone(), vip.clone(), mode.clone()];
        cells.extend(rates(r));
        Row::new(cells)
    });
    let header = Row::new([
        "LISTENER", "VIP", "MODE", "PKT/S", "BIT/S", "NEW/S", "REPLY/S",
    ])
    .style(bold);
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(16),
                Constraint::Length(30),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(9),
            ],
        )
        .header(header)
        .block(Block::bordered().title(" listeners ")),
        l,
    );
    let rows = v.targets.iter().map(|(g, a, s, w, r)| {
        let mut cells = vec![g.clone(), a.clone(), s.clone(), w.to_string()];
        cells.extend(rates(r));
        Row::new(cells)
    });
    let header = Row::new([
        "GROUP", "TARGET", "HEALTH", "WEIGHT", "PKT/S", "BIT/S", "NEW/S", "REPLY/S",
    ])
    .style(bold);
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(12),
                Constraint::Length(26),
                Constraint::Length(22),
                Constraint::Length(6),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(9),
            ],
        )
        .header(header)
        .block(Block::bordered().title(" targets ")),
        t,
    );
    let rows = v
        .drops
        .iter()
        .map(|(n, r, total)| Row::new([n.clone(), human(*r), total.to_string()]));
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(28),
                Constraint::Length(9),
                Constraint::Length(14),
            ],
        )
        .header(Row::new(["DROP REASON", "PKT/S", "TOTAL"]).style(bold))
        .block(Block::bordered().title(" top drop reasons ")),
        d,
    );
    f.render_widget(Paragraph::new("q quits; refreshed every second"), foot);
}

async fn snapshot(socket: &Path) -> anyhow::Result<Status> {
    match client::call::<Status>(socket, "GET", crate::api::STATUS, None::<&()>).await? {
        (client::Answer::Ok(s), _) => Ok(s),
        (client::Answer::Refused { error, .. }, _) => anyhow::bail!("{error}"),
    }
}

/// Run the view until `q`.
pub async fn run(socket: &Path, interval: Duration) -> anyhow::Result<()> {
    // Fail before taking over the terminal when no agent answers.
    let mut prev = snapshot(socket).await?;
    let mut prev_at = std::time::Instant::now();
    let mut view = View::between(None, &prev, 1.0);
    let mut terminal = ratatui::init();
    let result = async {
        loop {
            terminal.draw(|f| draw(f, &view))?;
            let deadline = prev_at + interval;
            // Keys until the next refresh.
            while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                if event::poll(left)?
                    && let Event::Key(k) = event::read()?
                {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if k.code == KeyCode::Char('q') || k.code == KeyCode::Esc || ctrl_c {
                        return Ok(());
                    }
                }
            }
            let cur = snapshot(socket).await?;
            let now = std::time::Instant::now();
            view = View::between(Some(&prev), &cur, (now - prev_at).as_secs_f64());
            prev = cur;
            prev_at = now;
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::{Interface, ListenerStatus, Reason};

    fn status(packets: u64, drops: u64) -> Status {
        Status {
            config: "x.toml".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mode: "native".into(),
            }],
            listeners: vec![ListenerStatus {
                name: "web".into(),
                vip: "198.18.100.10".into(),
                port: 80,
                protocol: "tcp".into(),
                target_group: "web".into(),
                mode: "nat".into(),
                traffic: Traffic {
                    packets,
                    bytes: packets * 100,
                    new_flows: packets / 10,
                    reply_packets: packets,
                    reply_bytes: 0,
                },
                source_rules: vec![],
                not_allowed: 0,
                rate_limits: None,
            }],
            groups: vec![],
            reasons: vec![
                Reason {
                    name: "drop_no_target".into(),
                    kind: "drop".into(),
                    code: 15,
                    packets: drops,
                },
                Reason {
                    name: "drop_fragment".into(),
                    kind: "drop".into(),
                    code: 12,
                    packets: 1000,
                },
                Reason {
                    name: "fwd_redirect".into(),
                    kind: "forward".into(),
                    code: 1,
                    packets,
                },
            ],
            dataplane_error: None,
            announcements: vec![],
            drain: None,
        }
    }

    #[test]
    fn rates_are_the_difference_over_the_interval_and_drops_rank_by_rate() {
        let a = status(1000, 10);
        let b = status(3000, 510);
        let first = View::between(None, &a, 1.0);
        assert_eq!(
            first.listeners[0].3,
            Rates::default(),
            "no rate without a past"
        );
        let v = View::between(Some(&a), &b, 2.0);
        let r = &v.listeners[0].3;
        assert_eq!(
            (r.packets_s, r.bytes_s, r.new_flows_s, r.replies_s),
            (1000.0, 100_000.0, 100.0, 1000.0)
        );
        assert_eq!(v.listeners[0].1, "198.18.100.10:80/tcp");
        // drop_no_target rose 250/s; drop_fragment has the larger total but no rate now.
        let names: Vec<&str> = v.drops.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(names, ["drop_no_target", "drop_fragment"]);
        assert_eq!(v.drops[0].1, 250.0);
        assert!(v.header.contains("eth0 (native)"));
        assert_eq!(human(1234.0), "1.2k");
        assert_eq!(human(12_500_000.0), "12.5M");
    }
}
