//! Target groups as an operator sees them: health checks and failover, drains, weights,
//! fail-open, runtime registration that survives a restart, and a root-only control socket.
//! The agent binary on a rig, real clients.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{Conn, Env, xlb_bin};
use xlb_rig::{Setup, rig::VIP};

fn fast(targets: &[usize]) -> Setup {
    Setup {
        interval_s: 1,
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        ..Setup::demo(targets)
    }
}

fn group(status: &serde_json::Value, name: &str) -> serde_json::Value {
    status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap()
        .clone()
}

fn count(names: &[String], n: &str) -> usize {
    names.iter().filter(|x| *x == n).count()
}

#[test]
fn a_stopped_target_is_out_within_interval_times_threshold_and_comes_back() {
    let mut env = Env::start("failover", 2, &fast(&[1, 2]));
    env.wait_state("web", "198.18.2.2", 8080, "healthy", Duration::from_secs(5));
    env.wait_state("web", "198.18.1.2", 8080, "healthy", Duration::from_secs(5));

    let stopped = Instant::now();
    env.rig.stop("backend-2").unwrap();
    // interval 1 s x unhealthy threshold 2, plus one interval.
    let took = env.wait_state(
        "web",
        "198.18.2.2",
        8080,
        "unhealthy",
        Duration::from_secs(3),
    );
    eprintln!(
        "failover: backend-2 unhealthy {:.0} ms after its server stopped",
        took.as_secs_f64() * 1000.0
    );
    let (_, reason) = env.state("web", "198.18.2.2", 8080);
    assert_eq!(reason, "connection refused");
    let names = env.new_connections(30);
    assert_eq!(
        count(&names, "backend-1"),
        30,
        "no new connection to the dead target: {names:?}"
    );
    eprintln!(
        "failover: total {:.0} ms from stop to traffic on backend-1 only",
        stopped.elapsed().as_secs_f64() * 1000.0
    );

    env.rig.start_backend(common::backend_bin(), 2).unwrap();
    // healthy threshold 2 x interval 1 s, plus one interval.
    let back = env.wait_state("web", "198.18.2.2", 8080, "healthy", Duration::from_secs(4));
    eprintln!(
        "recovery: backend-2 healthy {:.0} ms after its server started",
        back.as_secs_f64() * 1000.0
    );
    let names = env.new_connections(30);
    assert!(count(&names, "backend-2") > 0, "{names:?}");
}

#[test]
fn a_deregistered_target_drains_its_open_connection_then_is_unused() {
    let env = Env::start(
        "drain",
        2,
        &Setup {
            deregistration_delay_s: 3,
            ..fast(&[1, 2])
        },
    );
    env.wait_state("web", "198.18.1.2", 8080, "healthy", Duration::from_secs(5));
    env.wait_state("web", "198.18.2.2", 8080, "healthy", Duration::from_secs(5));
    let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<std::io::Result<String>>>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let client = env.in_client(move || {
        // A long-lived connection that landed on backend-1.
        let mut conn = (0..64)
            .find_map(|_| {
                let mut c = Conn::open().ok()?;
                (c.get().ok()? == "backend-1").then_some(c)
            })
            .expect("some connection lands on backend-1");
        ready_tx.send(()).unwrap();
        while let Ok(step) = rx.recv() {
            let results = match step {
                "use" => (0..3).map(|_| conn.get()).collect(),
                _ => vec![conn.get()],
            };
            back_tx.send(results).unwrap();
        }
    });
    // Deregister only once the client holds its connection (it raced the deregistration and
    // lost about once in 37 runs).
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the client holds a connection to backend-1");
    let out = env.xlb(&["targets", "deregister", "web", "198.18.1.2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (state, reason) = env.state("web", "198.18.1.2", 8080);
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("draining", "deregistration in progress")
    );

    tx.send("use").unwrap();
    let during: Vec<String> = back_rx
        .recv()
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        during, ["backend-1"; 3],
        "the open connection keeps working while draining"
    );
    let names = env.new_connections(20);
    assert_eq!(
        count(&names, "backend-2"),
        20,
        "new connections avoid the draining target: {names:?}"
    );

    env.wait_state("web", "198.18.1.2", 8080, "unused", Duration::from_secs(5));
    // After the drain its flows are balanced afresh: backend-2 knows nothing of this
    // connection, so it cannot answer as backend-1 any more.
    tx.send("after").unwrap();
    let after = back_rx.recv().unwrap();
    assert!(
        !matches!(after.first(), Some(Ok(n)) if n == "backend-1"),
        "{after:?}"
    );
    drop(tx);
    client.join().unwrap();
}

/// New connections for the weights test, and the band backend-2's share must fall in. The
/// count is binomial (n 1,600, p 3/4): outside 70..=80 % by chance less than once in 100,000
/// runs (400 connections and 75 +/- 7 % failed about once in 1,000), and both 1:1 (50 %) and
/// 1:2 (67 %) fall outside it.
const WEIGHT_CONNS: usize = 1_600;
const WEIGHT_SHARE_PCT: std::ops::RangeInclusive<f64> = 70.0..=80.0;

#[test]
fn weights_one_to_three_split_new_connections_25_75() {
    let env = Env::start(
        "weights",
        2,
        &Setup {
            weights: vec![1, 3],
            ..fast(&[1, 2])
        },
    );
    env.wait_state("web", "198.18.1.2", 8080, "healthy", Duration::from_secs(5));
    env.wait_state("web", "198.18.2.2", 8080, "healthy", Duration::from_secs(5));
    let names = env.new_connections(WEIGHT_CONNS);
    let share = 100.0 * count(&names, "backend-2") as f64 / WEIGHT_CONNS as f64;
    eprintln!("weights 1:3: backend-2 took {share:.1} % of {WEIGHT_CONNS} new connections");
    assert!(
        WEIGHT_SHARE_PCT.contains(&share),
        "backend-2 share {share:.1} % (want {WEIGHT_SHARE_PCT:?})"
    );
}

#[test]
fn all_targets_down_fails_open_and_says_so() {
    let mut env = Env::start("failopen", 2, &fast(&[1, 2]));
    env.wait_state("web", "198.18.1.2", 8080, "healthy", Duration::from_secs(5));
    env.rig.stop("backend-1").unwrap();
    env.rig.stop("backend-2").unwrap();
    env.wait_web("unhealthy", Duration::from_secs(4));
    let web = group(&env.status_json(), "web");
    assert_eq!(web["fail_open"], true);
    let text = String::from_utf8(env.xlb(&["status"]).stdout).unwrap();
    assert!(text.contains("FAIL-OPEN"), "{text}");
    // Traffic still goes to the registered targets: a client's connection reaches one and is
    // refused at once (nothing listens there now), where an empty table would drop it
    // (drop_no_target) and leave the client waiting.
    let sent = env.reason("fwd_redirect");
    let out = env
        .rig
        .client
        .command("curl")
        .args(["-s", "-m", "3", "http://198.18.100.10/"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "connection refused by a target, not a timeout"
    );
    assert!(env.reason("fwd_redirect") > sent, "the SYN was forwarded");
    assert_eq!(env.reason("drop_no_target"), 0);
    env.rig.start_backend(common::backend_bin(), 1).unwrap();
    env.wait_state("web", "198.18.1.2", 8080, "healthy", Duration::from_secs(4));
    let web = group(&env.status_json(), "web");
    assert_eq!(web["fail_open"], false);
    assert!(env.new_connections(10).iter().all(|n| n == "backend-1"));
}

#[test]
fn runtime_registrations_work_give_clear_errors_and_survive_a_restart() {
    let mut env = Env::start("register", 3, &fast(&[1, 2]));
    let out = env.xlb(&[
        "targets",
        "register",
        "web",
        "198.18.3.2:8080",
        "--weight",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("registered 198.18.3.2:8080 in web (weight 2)")
    );
    env.wait_state("web", "198.18.3.2", 8080, "healthy", Duration::from_secs(5));
    assert!(env.new_connections(40).iter().any(|n| n == "backend-3"));

    for (args, needle) in [
        (
            vec!["targets", "register", "web", "198.18.3.2"],
            "already registered",
        ),
        (
            vec!["targets", "register", "api", "198.18.3.2"],
            "no target group \"api\"",
        ),
        (
            vec!["targets", "register", "web", "backend-3"],
            "not an IPv4 or IPv6 address",
        ),
        (
            vec!["targets", "register", "web", "[2001:db8:3::2]:8080"],
            "must be IPv4 like the VIP",
        ),
        (
            vec!["targets", "deregister", "web", "198.18.9.9"],
            "not registered",
        ),
        (
            vec![
                "targets",
                "register",
                "web",
                "198.18.3.3",
                "--weight",
                "5000",
            ],
            "out of range",
        ),
    ] {
        let out = env.xlb(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }

    // Deregister one of the config file's targets too.
    let out = env.xlb(&["targets", "deregister", "web", "198.18.2.2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Restart the agent with the same config file: the registration is still there, and so is
    // the deregistration (the file still lists 198.18.2.2).
    assert!(env.rig.stop("xlb").unwrap().success());
    env.start_agent();
    let (state, _) = env.state("web", "198.18.3.2", 8080);
    assert!(state == "initial" || state == "healthy", "{state}");
    let v = env.json(&["targets", "health", "web"]);
    let t2 = v[0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == "198.18.2.2")
        .map(|t| t["state"].as_str().unwrap_or_default().to_owned());
    assert!(
        t2.as_deref()
            .is_none_or(|s| s == "unused" || s == "draining"),
        "198.18.2.2 was deregistered before the restart, yet is {t2:?}"
    );
    assert!(
        !env.new_connections(24).iter().any(|n| n == "backend-2"),
        "a deregistered target takes no new flows after a restart"
    );
    let v = env.json(&["targets", "health", "web"]);
    let t = v[0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == "198.18.3.2")
        .unwrap()
        .clone();
    assert_eq!(t["weight"], 2);
}

#[test]
fn the_control_api_speaks_http_to_root_and_refuses_others() {
    let env = Env::start("api", 2, &fast(&[1, 2]));
    let out = Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(&env.socket)
        .arg("http://xlb/v1/target-groups/web")
        .output()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON from curl --unix-socket");
    assert_eq!(v[0]["name"], "web");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&env.socket)
        .arg("http://xlb/v1/target-groups/nope")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // The directory is the test's own; the socket itself must refuse others.
    std::fs::set_permissions(
        &env.dir.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(xlb_bin())
        .args(["status", "--socket"])
        .arg(&env.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    let _ = VIP;
}

/// One control-API call with curl over the socket: the HTTP status.
fn api(socket: &std::path::Path, method: &str, path: &str, body: Option<&str>) -> u16 {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "20"])
        .args(["-X", method, "--unix-socket"])
        .arg(socket);
    if let Some(b) = body {
        c.args(["-H", "content-type: application/json", "-d", b]);
    }
    let out = c.arg(format!("http://xlb{path}")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[test]
fn api_calls_racing_reloads_each_get_a_clear_answer_and_the_state_stays_whole() {
    let env = Env::start("race", 3, &fast(&[1, 2]));
    let good = std::fs::read_to_string(&env.config).unwrap();
    // Validation fails (an unknown target group), not the TOML parser.
    let bad = good.replacen("target_group = \"web\"", "target_group = \"nope\"", 1);
    assert_ne!(good, bad);
    let socket = env.socket.clone();
    std::thread::scope(|s| {
        // Reloads, good and rejected, with the file changing between them.
        s.spawn(|| {
            for i in 0..12 {
                let text = if i % 3 == 2 { &bad } else { &good };
                std::fs::write(&env.config, text).unwrap();
                let code = api(&socket, "POST", "/v1/reload", None);
                let want = if i % 3 == 2 { 422 } else { 200 };
                assert_eq!(code, want, "reload {i}");
            }
            std::fs::write(&env.config, &good).unwrap();
        });
        // Runtime registrations: each succeeds, in order, whatever reloads run meanwhile.
        s.spawn(|| {
            for i in 0..8 {
                let code = api(
                    &socket,
                    "POST",
                    "/v1/target-groups/web/targets",
                    Some(r#"{"address": "198.18.3.2"}"#),
                );
                assert_eq!(code, 200, "register {i}");
                let code = api(
                    &socket,
                    "DELETE",
                    "/v1/target-groups/web/targets/198.18.3.2:8080",
                    None,
                );
                assert_eq!(code, 200, "deregister {i}");
            }
        });
        // Rule changes, likewise.
        s.spawn(|| {
            let rule = r#"{"kind": "deny", "source": "198.18.66.0/24"}"#;
            for i in 0..8 {
                assert_eq!(
                    api(&socket, "POST", "/v1/listeners/web/rules", Some(rule)),
                    200,
                    "add rule {i}"
                );
                assert_eq!(
                    api(&socket, "DELETE", "/v1/listeners/web/rules", Some(rule)),
                    200,
                    "remove rule {i}"
                );
            }
        });
        // Bad calls: each a 4xx, never a 5xx or no answer.
        s.spawn(|| {
            let calls: [(&str, &str, Option<&str>, u16); 6] = [
                (
                    "POST",
                    "/v1/target-groups/web/targets",
                    Some("{not json"),
                    400,
                ),
                (
                    "POST",
                    "/v1/target-groups/web/targets",
                    Some(r#"{"address": 7}"#),
                    400,
                ),
                (
                    "POST",
                    "/v1/target-groups/web/targets",
                    Some(r#"{"address": "198.18.3.2", "colour": "red"}"#),
                    400,
                ),
                (
                    "POST",
                    "/v1/target-groups/nope/targets",
                    Some(r#"{"address": "198.18.3.2"}"#),
                    404,
                ),
                ("POST", "/v1/nothing-here", None, 404),
                ("PUT", "/v1/reload", None, 405),
            ];
            for round in 0..4 {
                for (m, p, b, want) in calls {
                    assert_eq!(api(&socket, m, p, b), want, "round {round}: {m} {p} {b:?}");
                }
            }
        });
    });
    // After all of it: the file's targets healthy and serving, 198.18.3.2 deregistered
    // (draining or gone), no runtime rule left, and the state file says the same.
    let s = env.status_json();
    let web = group(&s, "web");
    let state_of = |a: &str| {
        web["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == a)
            .map(|t| t["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state_of("198.18.1.2").as_deref(), Some("healthy"), "{web}");
    assert_eq!(state_of("198.18.2.2").as_deref(), Some("healthy"), "{web}");
    assert!(
        matches!(
            state_of("198.18.3.2").as_deref(),
            Some("draining" | "unused") | None
        ),
        "{web}"
    );
    assert!(
        s["listeners"][0]["source_rules"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{s}"
    );
    let names = env.new_connections(24);
    assert!(count(&names, "backend-1") > 0 && count(&names, "backend-2") > 0);
    assert_eq!(count(&names, "backend-3"), 0, "{names:?}");
    let saved = std::fs::read_to_string(env.socket.with_extension("state.json")).unwrap();
    assert!(!saved.contains("198.18.66.0"), "{saved}");
}
