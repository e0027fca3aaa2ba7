//! Source rules with real clients on the demo rig: a reload that denies the client's address
//! stops its new connections (curl times out) and its open keep-alive connection, counted per
//! rule in `xlb status`; a reload without the rule lets it back in.
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
