//! `xlb explain` against the running agent on the demo rig: a new flow is explained by its
//! listener, the Maglev pick (a healthy target) and the real program's verdict, whose output
//! goes to that very target; explained again, the flow has the entry the first run made; a
//! destination that is no VIP passes; a denied source is dropped and the rule named.
mod common;

use std::time::Duration;

use common::Env;
use xlb_rig::Setup;

fn explain(env: &Env, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["explain"];
    a.extend_from_slice(args);
    env.json(&a)
}

#[test]
fn explain_tells_listener_pick_entry_and_verdict_from_the_live_program() {
    let env = Env::start("explain", 2, &Setup::demo(&[1, 2]));
    env.wait_web("healthy", Duration::from_secs(10));
    let x = explain(&env, &["tcp", "198.18.0.2:45000", "198.18.100.10:80"]);
    let s = |k: &str| x[k].as_str().unwrap_or_default().to_owned();
    assert!(
        s("listener").starts_with("web (nat) on 198.18.100.10:80/tcp"),
        "{x}"
    );
    assert_eq!(s("source_rules"), "no rules: every source allowed");
    assert!(s("connection").starts_with("none"), "{x}");
    assert!(s("packet").starts_with("TCP SYN"), "{x}");
    assert_eq!(s("verdict"), "fwd_redirect (forward)", "{x}");
    // The program's output goes to the target the Maglev pick names, and it is healthy.
    let pick = s("maglev");
    let target = pick.split(':').next().unwrap().to_owned();
    assert!(pick.contains("(healthy, weight 1)"), "{x}");
    assert!(
        s("output").starts_with(&format!("198.18.0.2 -> {target}, ports 45000 -> 8080")),
        "{x}"
    );
    assert!(s("next_hop").contains(&format!("{target} dev lb-t")), "{x}");
    // Again: the first run left an embryonic entry, to the same target; the packet is an ACK.
    let again = explain(&env, &["tcp", "198.18.0.2:45000", "198.18.100.10:80"]);
    let conn = again["connection"].as_str().unwrap();
    assert!(
        conn.starts_with(&format!("embryonic (SYN seen) -> {target}:8080")),
        "{again}"
    );
    assert!(
        again["packet"].as_str().unwrap().starts_with("TCP ACK"),
        "{again}"
    );
    // Not a VIP: passed, untouched.
    let other = explain(&env, &["tcp", "198.18.0.2:45000", "198.18.1.2:8080"]);
    assert!(
        other["listener"].as_str().unwrap().contains("not a VIP"),
        "{other}"
    );
    assert_eq!(other["verdict"], "pass_not_listener (pass)");
    // A denied source: dropped before any state, the rule named.
    let out = env.xlb(&["rules", "add", "web", "deny", "198.18.0.0/24"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let denied = explain(&env, &["tcp", "198.18.0.2:46000", "198.18.100.10:80"]);
    assert_eq!(
        denied["source_rules"],
        "denied by deny_sources 198.18.0.0/24"
    );
    assert_eq!(denied["verdict"], "drop_source_denied (drop)");
    assert_eq!(denied["output"], "dropped");
    // Bad input: a clear refusal.
    let out = env.xlb(&["explain", "sctp", "198.18.0.2:1", "198.18.100.10:80"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcp or udp"));
    // The text form, for people.
    let out = env.xlb(&["explain", "udp", "198.18.0.2:5353", "198.18.100.10:9000"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("verdict       fwd_redirect (forward)"),
        "{text}"
    );
}
