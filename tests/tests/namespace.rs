//! Real traffic through the balancer: curl, nc and real TCP/UDP sockets in the client
//! namespace, the agent binary in the balancer namespace, backends in the target namespaces.
//! Every rig is torn down when its test ends, pass or fail.
mod common;

use std::{net::UdpSocket, path::Path, time::Duration};

use common::{Conn, Env, backend_bin, xlb_bin};
use xlb_rig::{
    Rig, RigSpec, Setup,
    rig::{UDP_PORT, VIP},
};

fn two() -> Setup {
    Setup {
        interval_s: 1,
        ..Setup::demo(&[1, 2])
    }
}

#[test]
fn curl_through_the_vip_reaches_both_targets_80_to_8080_by_xdp() {
    let env = Env::start("curl", 2, &two());
    let names = env.curls(24);
    assert!(
        names.iter().all(|n| n == "backend-1" || n == "backend-2"),
        "{names:?}"
    );
    for b in ["backend-1", "backend-2"] {
        assert!(
            names.iter().any(|n| n == b),
            "{b} never answered: {names:?}"
        );
    }
    // The backends listen on 8080 only: every answer crossed the 80 -> 8080 rewrite. And XDP
    // did the forwarding, not the kernel's fallback path.
    assert!(
        env.reason("fwd_redirect") >= 24 * 4,
        "fwd_redirect {}",
        env.reason("fwd_redirect")
    );
    let s = env.status_json();
    let web = &s["listeners"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["traffic"]["new_flows"], 24);
    assert_eq!(s["interfaces"][0]["mode"], "native");
}

#[test]
fn udp_echo_through_the_vip() {
    let env = Env::start("udp", 2, &two());
    let out = env
        .rig
        .client
        .command("sh")
        .args(["-c", &format!("echo hello | nc -u -w1 {VIP} {UDP_PORT}")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    // The UDP group is probed on health_check.port (TCP 8080), not on its UDP port: its
    // targets turn healthy, they do not fail open.
    for t in ["198.18.1.2", "198.18.2.2"] {
        env.wait_state("echo", t, UDP_PORT, "healthy", Duration::from_secs(10));
    }
    let s = env.status_json();
    let echo = s["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "echo")
        .unwrap()
        .clone();
    assert_eq!(echo["fail_open"], false, "{echo}");
    // And from a real socket, many datagrams on one flow come back in order.
    let got = env
        .in_client(|| {
            let s = UdpSocket::bind("198.18.0.2:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.connect(format!("{VIP}:{UDP_PORT}")).unwrap();
            (0..20)
                .map(|i| {
                    let msg = format!("datagram {i}");
                    s.send(msg.as_bytes()).unwrap();
                    let mut buf = [0u8; 64];
                    let n = s.recv(&mut buf).unwrap();
                    String::from_utf8_lossy(&buf[..n]) == msg
                })
                .filter(|ok| *ok)
                .count()
        })
        .join()
        .unwrap();
    assert_eq!(got, 20);
}

#[test]
fn a_long_lived_connection_keeps_working_while_a_third_target_is_added() {
    let env = Env::start("long", 3, &two());
    let (tx_go, rx_go) = std::sync::mpsc::channel::<()>();
    let (tx_first, rx_first) = std::sync::mpsc::channel::<String>();
    let conn = env.in_client(move || {
        let mut c = Conn::open().unwrap();
        tx_first.send(c.get().unwrap()).unwrap();
        rx_go.recv().unwrap();
        (0..5).map(|_| c.get().unwrap()).collect::<Vec<_>>()
    });
    let first = rx_first.recv_timeout(Duration::from_secs(10)).unwrap();
    env.write_config(&Setup {
        interval_s: 1,
        ..Setup::demo(&[1, 2, 3])
    });
    let out = env.xlb(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("targets +2 -0"),
        "backend-3 joins web and echo: {said}"
    );
    env.wait_state("web", "198.18.3.2", 8080, "healthy", Duration::from_secs(5));
    tx_go.send(()).unwrap();
    let later = conn.join().unwrap();
    assert!(later.iter().all(|n| *n == first), "{first} then {later:?}");
    // New connections now reach the third target as well.
    let names = env.new_connections(40);
    assert!(names.iter().any(|n| n == "backend-3"), "{names:?}");
}

#[test]
fn the_balancer_nodes_own_address_still_works_on_a_listener_port() {
    let mut env = Env::start("node", 2, &two());
    let cmd = env.rig.lb.command(&backend_bin().display().to_string());
    env.rig
        .start_server(cmd, "the-node", "198.18.0.1:80", "198.18.0.1:9000")
        .unwrap();
    assert_eq!(env.curl("http://198.18.0.1/"), "the-node");
    assert!(env.reason("pass_not_listener") > 0);
}

#[test]
fn an_invalid_reload_is_rejected_with_file_and_line_and_changes_nothing() {
    let env = Env::start("badreload", 2, &two());
    let before = env.status_json();
    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        good.replace("port = 80\n", "port = 80\nprotocol_typo = 1\n"),
    )
    .unwrap();
    let out = env.xlb(&["reload"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:", env.config.display())) && err.contains("unknown field"),
        "{err}"
    );
    let after = env.status_json();
    assert_eq!(
        before["listeners"].as_array().unwrap().len(),
        after["listeners"].as_array().unwrap().len()
    );
    assert_eq!(
        before["listeners"][0]["targets"],
        after["listeners"][0]["targets"]
    );
    let names = env.curls(4);
    assert!(names.iter().all(|n| n.starts_with("backend-")), "{names:?}");
}

#[test]
fn a_bad_config_exits_64_and_attaches_nothing() {
    let rig = Rig::up(&RigSpec {
        prefix: format!("xlb-nbadcfg-{}", std::process::id()),
        targets: 1,
    })
    .unwrap();
    let path = std::env::temp_dir().join("xlb-nbadcfg.toml");
    let text = rig
        .config(Path::new("/tmp/xlb-nbadcfg/xlb.sock"), &Setup::demo(&[1]))
        .replace("target_group = \"web\"", "target_group = \"nope\"");
    std::fs::write(&path, text).unwrap();
    for verb in ["check", "run"] {
        let out = rig
            .lb
            .command(&xlb_bin().display().to_string())
            .args([verb, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "xlb {verb}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{}:", path.display()))
                && err.contains("unknown target group \"nope\""),
            "{err}"
        );
    }
    assert!(
        !rig.lb.exec("ip link show").unwrap().contains("xdp"),
        "nothing attached"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn sigterm_detaches_and_the_rig_is_gone_after_a_failing_test() {
    const DELIBERATE: &str = "deliberate failure, to check the teardown";
    // What the agent's exit did, seen inside the test that then fails; checked outside it, so
    // a wrong answer fails this test (an assertion inside would only be another panic).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = seen.clone();
    let result = std::panic::catch_unwind(move || {
        let mut env = Env::start(
            "fail",
            1,
            &Setup {
                interval_s: 1,
                ..Setup::demo(&[1])
            },
        );
        let attached = env
            .rig
            .lb
            .exec("ip link show lb-c")
            .unwrap()
            .contains("xdp");
        let status = env.rig.stop("xlb").unwrap();
        let detached = !env.rig.lb.exec("ip link show").unwrap().contains("xdp");
        let socket_gone = !env.socket.exists();
        *record.lock().unwrap() = Some((
            env.rig.prefix.clone(),
            attached,
            status.success(),
            detached,
            socket_gone,
        ));
        std::panic::panic_any(DELIBERATE);
    });
    let payload = result.expect_err("the test body fails on purpose");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&DELIBERATE),
        "the body failed for another reason"
    );
    let (prefix, attached, exit_ok, detached, socket_gone) =
        seen.lock().unwrap().clone().expect("recorded");
    assert!(attached, "XDP was attached while the agent ran");
    assert!(exit_ok, "the agent exits 0 on SIGTERM");
    assert!(detached, "XDP is detached on SIGTERM");
    assert!(socket_gone, "the control socket is removed on exit");
    let left = xlb_rig::sh("ip netns list").unwrap();
    assert!(!left.contains(&prefix), "namespaces left behind: {left}");
}

#[test]
fn a_namespace_of_another_run_is_never_clobbered() {
    let name = format!("xlb-ndup-{}", std::process::id());
    let first = xlb_rig::Netns::create(&name).unwrap();
    let second = xlb_rig::Netns::create(&name);
    let err = second.err().expect("the same name twice is refused");
    assert!(err.to_string().contains("exists already"), "{err}");
    assert!(
        first.exec("ip link show lo").is_ok(),
        "the first one is intact"
    );
}
