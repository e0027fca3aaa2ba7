//! `xlb doctor` on the demo rig's balancer: no failure as the rig is set up, the running
//! agent's XDP modes reported; IPv4 forwarding turned off on one interface is a failure
//! naming the interface and the fix, and the command exits 1.
mod common;

use common::{Env, xlb_bin};
use xlb_rig::Setup;

fn doctor(env: &Env) -> (i32, String) {
    let out = env
        .rig
        .lb
        .command(&xlb_bin().display().to_string())
        .args(["doctor", "--config"])
        .arg(&env.config)
        .arg("--socket")
        .arg(&env.socket)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn doctor_finds_nothing_wrong_on_the_rig_and_names_a_fault_with_its_fix() {
    let env = Env::start("doctor", 2, &Setup::demo(&[1, 2]));
    let (code, text) = doctor(&env);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0 failure(s)"), "{text}");
    assert!(
        text.contains("ok   xdp mode             lb-c: native"),
        "{text}"
    );
    assert!(
        text.contains("ok   route to target      198.18.1.2:8080"),
        "{text}"
    );
    assert!(text.contains("WARN veth"), "{text}");
    env.rig
        .lb
        .sysctl("net.ipv4.conf.lb-c.forwarding", "0")
        .unwrap();
    let (code, text) = doctor(&env);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.starts_with("FAIL ip_forward           IPv4 forwarding is off on lb-c"),
        "{text}"
    );
    assert!(
        text.contains("fix: sysctl -w net.ipv4.ip_forward=1"),
        "{text}"
    );
}
