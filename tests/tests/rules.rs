//! Source rules with real clients on the demo rig: a reload that denies the client's address
//! stops its new connections (curl times out) and its open keep-alive connection, counted per
//! rule in `xlb status`; a reload without the rule lets it back in. And the new-flow rate
//! limits: a burst of connections from one source over `new_flows_per_second_per_source`
//! loses the excess, while its open connection and another source go on.
mod common;

use std::time::Duration;

use common::{Conn, Env};
use xlb_rig::{Setup, rig::VIP};

fn setup() -> Setup {
    Setup {
        interval_s: 1,
        ..Setup::demo(&[1, 2])
    }
}

/// The rig's config with `rules` added to the "web" listener.
fn with_rules(env: &Env, rules: &str) -> String {
    env.rig.config(&env.socket, &setup()).replacen(
        "target_group = \"web\"\n",
        &format!("target_group = \"web\"\n{rules}\n"),
        1,
    )
}

fn reload(env: &Env) {
    let out = env.xlb(&["reload"]);
    assert!(
        out.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// curl exit status (0: answered) and body.
fn curl(env: &Env) -> (i32, String) {
    let out = env
        .rig
        .client
        .command("curl")
        .args(["-s", "-m", "2", &format!("http://{VIP}/")])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    )
}

#[test]
fn a_denied_client_is_refused_at_once_and_allowed_again_after_a_reload() {
    let env = Env::start("rules", 2, &setup());
    assert!(curl(&env).1.starts_with("backend-"));
    // A keep-alive connection, open before the rule exists.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<bool>();
    let conn = env.in_client(move || {
        let mut c = Conn::open().unwrap();
        assert!(c.get().unwrap().starts_with("backend-"));
        rx.recv().unwrap();
        back_tx.send(c.get().is_ok()).unwrap();
    });

    std::fs::write(
        &env.config,
        with_rules(&env, "deny_sources = [\"198.18.0.2/32\"]"),
    )
    .unwrap();
    reload(&env);
    let (code, body) = curl(&env);
    assert_ne!(code, 0, "denied, yet answered: {body}");
    tx.send(()).unwrap();
    let open_still_works = back_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        !open_still_works,
        "the open connection of a denied source must stop too"
    );
    conn.join().unwrap();
    assert!(env.reason("drop_source_denied") > 0);
    let s = env.status_json();
    let web = &s["listeners"][0];
    assert_eq!(web["source_rules"][0]["source"], "198.18.0.2/32");
    assert!(
        web["source_rules"][0]["packets"].as_u64().unwrap() > 0,
        "{web}"
    );
    let text = String::from_utf8(env.xlb(&["status"]).stdout).unwrap();
    assert!(text.contains("source rules of web"), "{text}");

    // Allowed only from elsewhere: still refused, now as not allowed.
    std::fs::write(
        &env.config,
        with_rules(&env, "allow_sources = [\"198.18.50.0/24\"]"),
    )
    .unwrap();
    reload(&env);
    assert_ne!(curl(&env).0, 0);
    assert!(env.reason("drop_source_not_allowed") > 0);

    // No rules: back in.
    std::fs::write(&env.config, env.rig.config(&env.socket, &setup())).unwrap();
    reload(&env);
    assert!(curl(&env).1.starts_with("backend-"));
}

#[test]
fn rules_added_at_run_time_take_effect_survive_a_restart_and_errors_change_nothing() {
    let mut env = Env::start("rulesrt", 2, &setup());
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let said = ok(env.xlb(&["rules", "add", "web", "deny", "198.18.0.2/32"]));
    assert!(said.contains("web: deny 198.18.0.2/32 added"), "{said}");
    assert_ne!(curl(&env).0, 0, "denied at run time");
    let list = ok(env.xlb(&["rules", "list"]));
    assert!(
        list.contains("deny") && list.contains("198.18.0.2/32"),
        "{list}"
    );
    for (args, needle) in [
        (
            vec!["rules", "add", "api", "deny", "198.18.0.2/32"],
            "no listener \"api\"",
        ),
        (
            vec!["rules", "add", "web", "deny", "198.18.0.2/32"],
            "already has deny",
        ),
        (
            vec!["rules", "add", "web", "deny", "2001:db8::/32"],
            "not of the family",
        ),
        (
            vec!["rules", "add", "web", "maybe", "198.18.0.0/16"],
            "not a rule kind",
        ),
        (
            vec!["rules", "add", "web", "allow", "198.18.0.5/24"],
            "host bits set",
        ),
        (
            vec!["rules", "remove", "web", "allow", "198.18.0.0/16"],
            "has no allow",
        ),
    ] {
        let out = env.xlb(&args);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // The API refuses a malformed body with 400 and changes nothing.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&env.socket)
        .args([
            "-X",
            "POST",
            "-d",
            "{\"kind\": 7}",
            "-H",
            "content-type: application/json",
        ])
        .arg("http://xlb/v1/listeners/web/rules")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
    // A restart keeps the runtime rule (the state file).
    assert!(env.rig.stop("xlb").unwrap().success());
    env.start_agent();
    assert_ne!(curl(&env).0, 0, "still denied after a restart");
    ok(env.xlb(&["rules", "remove", "web", "deny", "198.18.0.2/32"]));
    assert!(curl(&env).1.starts_with("backend-"));
}

/// `n` connections from `source` opened at once: every SYN leaves within a millisecond or so
/// (nonblocking connects from one thread, so the burst's spread does not depend on how fast
/// the machine starts processes), each connection gets up to `wait` to be accepted (a refused
/// SYN's retry comes after 1 s, so with `wait` under that a refused connection stays refused),
/// then each accepted one is asked a GET. How many answered.
fn burst(env: &Env, n: usize, source: &str, wait: Duration) -> usize {
    let src: std::net::IpAddr = source.parse().unwrap();
    let vip: std::net::SocketAddr = format!("{VIP}:80").parse().unwrap();
    env.in_client(move || {
        use socket2::{Domain, Socket, Type};
        let socks: Vec<Socket> = (0..n)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.bind(&std::net::SocketAddr::new(src, 0).into()).unwrap();
                s.set_nonblocking(true).unwrap();
                match s.connect(&vip.into()) {
                    Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                    other => panic!("nonblocking connect: {other:?}"),
                }
                s
            })
            .collect();
        // getpeername fails while the SYN is unanswered.
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline && socks.iter().any(|s| s.peer_addr().is_err()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        socks
            .into_iter()
            .filter(|s| s.peer_addr().is_ok())
            .filter(|s| {
                let stream: std::net::TcpStream = s.try_clone().unwrap().into();
                Conn::from_stream(stream, Duration::from_secs(5))
                    .and_then(|mut c| c.get())
                    .is_ok_and(|body| body.starts_with("backend-"))
            })
            .count()
    })
    .join()
    .unwrap()
}

#[test]
fn a_source_over_its_new_flow_limit_loses_the_excess_and_nothing_else() {
    let env = Env::start("ratelim", 2, &setup());
    // A second source on the client, for "another source is not limited".
    env.rig
        .client
        .exec("ip addr add 198.18.0.3/24 dev eth0")
        .unwrap();
    // A keep-alive connection open before the limit exists.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<bool>();
    let conn = env.in_client(move || {
        let mut c = Conn::open().unwrap();
        assert!(c.get().unwrap().starts_with("backend-"));
        rx.recv().unwrap();
        back_tx.send(c.get().is_ok()).unwrap();
    });
    std::fs::write(
        &env.config,
        with_rules(&env, "new_flows_per_second_per_source = 4"),
    )
    .unwrap();
    reload(&env);
    // 20 connections at once: about 4 pass (a token comes back every 250 ms; the burst takes
    // well under that, and a refused SYN's retry would come after the 0.8 s it waits).
    let answered = burst(&env, 20, "198.18.0.2", Duration::from_millis(800));
    eprintln!("a burst of 20 at 4/s per source: {answered} answered");
    assert!(
        (4..=6).contains(&answered),
        "{answered} of 20 answered, want about 4"
    );
    let refused = env.reason("drop_source_rate_limited");
    assert!(refused >= 14, "drop_source_rate_limited {refused}");
    // The open connection is not a new flow: it goes on.
    tx.send(()).unwrap();
    assert!(back_rx.recv_timeout(Duration::from_secs(10)).unwrap());
    conn.join().unwrap();
    // Another source has its own bucket.
    assert_eq!(burst(&env, 3, "198.18.0.3", Duration::from_secs(2)), 3);
    // Shown per listener in status.
    let s = env.status_json();
    let r = &s["listeners"][0]["rate_limits"];
    assert_eq!(r["new_flows_per_second_per_source"], 4, "{s}");
    assert!(r["source_limited"].as_u64().unwrap() >= 14, "{r}");
    let text = String::from_utf8(env.xlb(&["status"]).stdout).unwrap();
    assert!(
        text.contains("new-flow limits of web: listener none") && text.contains("per source 4/s"),
        "{text}"
    );
    // A second later the bucket is full again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(burst(&env, 3, "198.18.0.2", Duration::from_secs(2)), 3);
}
