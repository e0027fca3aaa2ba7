//! Health checks: the per-target state machine (pure, unit-tested) and the probes.
//!
//! Thresholds count *consecutive* results (loxilb counted retries cumulatively and its targets
//! flapped). A target starts `initial`; its first success makes it healthy, and
//! `unhealthy_threshold` consecutive failures make it unhealthy. An unhealthy target needs
//! `healthy_threshold` consecutive successes to return.
use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Defaults and ranges, as a cloud NLB's.
pub const DEFAULT_INTERVAL_S: u32 = 30;
pub const MIN_INTERVAL_S: u32 = 1;
pub const MAX_INTERVAL_S: u32 = 300;
pub const DEFAULT_TCP_TIMEOUT_S: u32 = 10;
pub const DEFAULT_HTTP_TIMEOUT_S: u32 = 6;
pub const MIN_TIMEOUT_S: u32 = 1;
pub const MAX_TIMEOUT_S: u32 = 120;
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 5;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;
pub const MIN_THRESHOLD: u32 = 2;
pub const MAX_THRESHOLD: u32 = 10;
/// Largest HTTP response head a probe reads.
const MAX_STATUS_LINE: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckProtocol {
    Tcp,
    Http,
}

/// HTTP status codes that count as success, e.g. "200-399" or "200,204".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher(Vec<(u16, u16)>);

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Matcher {
    pub fn parse(s: &str) -> Option<Self> {
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
                None => {
                    let c = part.parse().ok()?;
                    (c, c)
                }
            };
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return None;
            }
            ranges.push((lo, hi));
        }
        Some(Self(ranges))
    }

    pub fn matches(&self, code: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }
}

/// A target group's health check, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub enabled: bool,
    pub protocol: CheckProtocol,
    /// `None`: the target's traffic port.
    pub port: Option<u16>,
    pub path: String,
    pub matcher: Matcher,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            enabled: true,
            protocol: CheckProtocol::Tcp,
            port: None,
            path: "/".into(),
            matcher: Matcher(vec![(200, 399)]),
            interval: Duration::from_secs(DEFAULT_INTERVAL_S.into()),
            timeout: Duration::from_secs(DEFAULT_TCP_TIMEOUT_S.into()),
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
        }
    }
}

/// States as in `describe-target-health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Initial,
    Healthy,
    Unhealthy,
    Draining,
    Unused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Initial => "initial",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Draining => "draining",
            State::Unused => "unused",
        }
    }
}

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Ok,
    Refused,
    Timeout,
    /// HTTP answered with a code outside the matcher.
    Mismatch(u16),
    /// Anything else (reset, unreachable, garbage response), with the error.
    Failed(String),
    /// A probe sent to the VIP along the data path got no answer at all: the target answers
    /// its own address but not the VIP (not on its loopback, or no decapsulation).
    PathSilent {
        vip: SocketAddr,
        mode: &'static str,
    },
}

impl Probe {
    pub fn reason(&self) -> String {
        match self {
            Probe::Ok => "health checks passed".into(),
            Probe::Refused => "connection refused".into(),
            Probe::Timeout => "health check timed out".into(),
            Probe::Mismatch(c) => format!("response code mismatch ({c})"),
            Probe::Failed(e) => format!("health check failed: {e}"),
            Probe::PathSilent { vip, mode } => format!(
                "VIP {vip} not answered through the {mode} path (is the VIP on the target's loopback?)"
            ),
        }
    }
}

/// Consecutive-result state machine of one target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub state: State,
    pub reason: String,
    ok_run: u32,
    fail_run: u32,
}

impl Tracker {
    pub fn new(checks_enabled: bool) -> Self {
        if checks_enabled {
            Self {
                state: State::Initial,
                reason: "initial health checks in progress".into(),
                ok_run: 0,
                fail_run: 0,
            }
        } else {
            Self {
                state: State::Healthy,
                reason: "health checks disabled".into(),
                ok_run: 0,
                fail_run: 0,
            }
        }
    }

    pub fn set(&mut self, state: State, reason: &str) {
        self.state = state;
        self.reason = reason.into();
        self.ok_run = 0;
        self.fail_run = 0;
    }

    /// Record one probe result; true if the state changed.
    pub fn observe(&mut self, probe: &Probe, hc: &HealthCheck) -> bool {
        let before = self.state;
        if *probe == Probe::Ok {
            self.fail_run = 0;
            self.ok_run = self.ok_run.saturating_add(1);
            let promote = match self.state {
                State::Initial => true,
                State::Unhealthy => self.ok_run >= hc.healthy_threshold,
                _ => false,
            };
            if promote {
                self.state = State::Healthy;
                self.reason = probe.reason();
            }
        } else {
            self.ok_run = 0;
            self.fail_run = self.fail_run.saturating_add(1);
            match self.state {
                State::Initial | State::Healthy if self.fail_run >= hc.unhealthy_threshold => {
                    self.state = State::Unhealthy;
                    self.reason = probe.reason();
                }
                // Keep the latest cause visible while unhealthy.
                State::Unhealthy => self.reason = probe.reason(),
                _ => {}
            }
        }
        self.state != before
    }
}

/// Run one probe against `addr`. With `mark`, the socket carries it (SO_MARK), so policy
/// routing can send the probe along the data path (see `agent::probes`).
pub async fn probe(hc: &HealthCheck, addr: SocketAddr, mark: Option<u32>) -> Probe {
    match tokio::time::timeout(hc.timeout, probe_inner(hc, addr, mark)).await {
        Err(_) => Probe::Timeout,
        Ok(p) => p,
    }
}

async fn connect(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let Some(mark) = mark else {
        return TcpStream::connect(addr).await;
    };
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_mark(mark)?;
    s.set_nonblocking(true)?;
    let std: std::net::TcpStream = s.into();
    tokio::net::TcpSocket::from_std_stream(std)
        .connect(addr)
        .await
}

async fn probe_inner(hc: &HealthCheck, addr: SocketAddr, mark: Option<u32>) -> Probe {
    let mut stream = match connect(addr, mark).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Probe::Refused,
        Err(e) => return Probe::Failed(e.to_string()),
    };
    if hc.protocol == CheckProtocol::Tcp {
        return Probe::Ok;
    }
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: xlb-health-check\r\nConnection: close\r\n\r\n",
        hc.path
    );
    if let Err(e) = stream.write_all(req.as_bytes()).await {
        return Probe::Failed(e.to_string());
    }
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_STATUS_LINE {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Probe::Failed(e.to_string()),
        }
    }
    match status_code(&head) {
        Some(code) if hc.matcher.matches(code) => Probe::Ok,
        Some(code) => Probe::Mismatch(code),
        None => Probe::Failed("no HTTP status line in the response".into()),
    }
}

/// The code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(healthy: u32, unhealthy: u32) -> HealthCheck {
        HealthCheck {
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
            ..HealthCheck::default()
        }
    }

    #[test]
    fn first_success_makes_an_initial_target_healthy() {
        let mut t = Tracker::new(true);
        assert_eq!(t.state, State::Initial);
        assert!(t.observe(&Probe::Ok, &hc(5, 2)));
        assert_eq!(t.state, State::Healthy);
    }

    #[test]
    fn unhealthy_after_consecutive_failures_only() {
        let h = hc(3, 3);
        let mut t = Tracker::new(true);
        t.observe(&Probe::Ok, &h);
        // Failures interrupted by a success never add up.
        for _ in 0..5 {
            t.observe(&Probe::Refused, &h);
            t.observe(&Probe::Refused, &h);
            t.observe(&Probe::Ok, &h);
        }
        assert_eq!(t.state, State::Healthy);
        t.observe(&Probe::Timeout, &h);
        t.observe(&Probe::Timeout, &h);
        assert_eq!(t.state, State::Healthy);
        assert!(t.observe(&Probe::Timeout, &h));
        assert_eq!(
            (t.state, t.reason.as_str()),
            (State::Unhealthy, "health check timed out")
        );
    }

    #[test]
    fn an_unhealthy_target_returns_after_healthy_threshold_consecutive_successes() {
        let h = hc(3, 2);
        let mut t = Tracker::new(true);
        t.observe(&Probe::Refused, &h);
        t.observe(&Probe::Refused, &h);
        assert_eq!(t.state, State::Unhealthy);
        assert_eq!(t.reason, "connection refused");
        t.observe(&Probe::Ok, &h);
        t.observe(&Probe::Ok, &h);
        t.observe(&Probe::Mismatch(503), &h);
        assert_eq!(
            (t.state, t.reason.as_str()),
            (State::Unhealthy, "response code mismatch (503)")
        );
        t.observe(&Probe::Ok, &h);
        t.observe(&Probe::Ok, &h);
        assert_eq!(t.state, State::Unhealthy);
        assert!(t.observe(&Probe::Ok, &h));
        assert_eq!(t.state, State::Healthy);
    }

    #[test]
    fn disabled_checks_mean_healthy() {
        assert_eq!(Tracker::new(false).state, State::Healthy);
    }

    #[test]
    fn matcher_ranges_and_lists() {
        let m = Matcher::parse("200-299, 304").unwrap();
        assert!(m.matches(200) && m.matches(299) && m.matches(304));
        assert!(!m.matches(300) && !m.matches(503));
        for bad in ["", "abc", "99", "600", "300-200", "200-"] {
            assert!(Matcher::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(
            status_code(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"HTTP/1.0 200 OK\r\nx"), Some(200));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
    }

    #[tokio::test]
    async fn an_http_check_asks_for_its_path() {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // 200 for /health only, 404 for anything else: the path must be the one configured.
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap();
                let ok = buf[..n].starts_with(b"GET /health HTTP/1.1\r\n");
                let code = if ok { 200 } else { 404 };
                s.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let mut h = HealthCheck {
            protocol: CheckProtocol::Http,
            path: "/health".into(),
            timeout: Duration::from_secs(2),
            ..HealthCheck::default()
        };
        assert_eq!(probe(&h, addr, None).await, Probe::Ok);
        h.path = "/".into();
        assert_eq!(probe(&h, addr, None).await, Probe::Mismatch(404));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn probes_against_real_sockets() {
        use tokio::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for code in [200u16, 503] {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
            l
        });
        let mut h = HealthCheck {
            protocol: CheckProtocol::Http,
            timeout: Duration::from_secs(2),
            ..HealthCheck::default()
        };
        assert_eq!(probe(&h, addr, None).await, Probe::Ok);
        assert_eq!(probe(&h, addr, None).await, Probe::Mismatch(503));
        let l = server.await.unwrap();
        h.protocol = CheckProtocol::Tcp;
        // A marked socket connects the same way (no rule routes this mark).
        assert_eq!(probe(&h, addr, Some(0x584c_0001)).await, Probe::Ok);
        drop(l);
        assert_eq!(probe(&h, addr, None).await, Probe::Refused);
    }
}
