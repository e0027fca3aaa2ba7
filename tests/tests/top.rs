//! `xlb top` in a real terminal (tmux): it shows the listeners with their rates while curl
//! sends traffic, the targets with their health and the header's interfaces, and `q` quits.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{Env, xlb_bin};
use xlb_rig::{Setup, rig::VIP};

/// A tmux server of the test's own (its own socket name), killed when dropped.
struct Tmux(String);

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.0]);
        c
    }
    fn pane(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "top"])
            .output()
            .unwrap()
            .status
            .success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

#[test]
fn top_shows_rates_and_health_live_and_q_quits() {
    let env = Env::start("top", 2, &Setup::demo(&[1, 2]));
    env.wait_web("healthy", Duration::from_secs(10));
    let tmux = Tmux(format!("xlb-top-{}", std::process::id()));
    let top = format!(
        "{} top --socket {}",
        xlb_bin().display(),
        env.socket.display()
    );
    let out = tmux
        .cmd()
        .args([
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "40",
            &top,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Traffic while it watches: curls for three seconds.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        env.curl(&format!("http://{VIP}/"));
    }
    let screen = tmux.pane();
    for needle in [
        "LISTENER",
        "198.18.100.10:80/tcp",
        "198.18.1.2:8080",
        "healthy",
        "lb-c (native)",
        "top drop reasons",
        "q quits",
    ] {
        assert!(
            screen.contains(needle),
            "{needle:?} not on screen:\n{screen}"
        );
    }
    // The web listener's packet rate is not zero while curl runs.
    let web: Vec<&str> = screen
        .lines()
        .map(|l| l.trim_matches('│'))
        .find(|l| l.starts_with("web ") && l.contains("198.18.100.10:80/tcp"))
        .unwrap_or_else(|| panic!("no web row:\n{screen}"))
        .split_whitespace()
        .collect();
    // LISTENER VIP MODE PKT/S ...
    let pkt_s = web.get(3).copied().unwrap_or("0");
    assert_ne!(pkt_s, "0", "no rate in {web:?}");
    tmux.cmd()
        .args(["send-keys", "-t", "top", "q"])
        .output()
        .unwrap();
    let start = Instant::now();
    while tmux.alive() {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "q did not quit:\n{}",
            tmux.pane()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
