//! IPv6 with real clients on the dual-stack demo rig: curl to http://[VIP6]/ reaches both
//! targets through NAT66, UDP echo over IPv6, `ping -6` answered by the balancer, health checks
//! over IPv6 (a stopped backend turns unhealthy and gets no new flows), and status printing
//! IPv6 addresses. IPv4 on the same rig keeps working beside it.
mod common;

use std::{net::UdpSocket, time::Duration};

use common::{Env, backend_bin};
use xlb_rig::{
    Setup,
    rig::{UDP_PORT, VIP, VIP6},
};

fn dual() -> Setup {
    Setup {
        interval_s: 1,
        unhealthy_threshold: 2,
        ipv6: true,
        ..Setup::demo(&[1, 2])
    }
}

fn url6() -> String {
    format!("http://[{VIP6}]/")
}

/// Wait until every target of `group` is healthy (the first checks take an interval).
fn wait_healthy(env: &Env, group: &str, addrs: &[&str], port: u16) {
    for a in addrs {
        env.wait_state(group, a, port, "healthy", Duration::from_secs(10));
    }
}

#[test]
fn curl_over_ipv6_reaches_both_targets_and_ipv4_still_works() {
    let env = Env::start("v6curl", 2, &dual());
    wait_healthy(&env, "web6", &["2001:db8:1::2", "2001:db8:2::2"], 8080);
    let names: Vec<String> = (0..24).map(|_| env.curl(&url6())).collect();
    for b in ["backend-1", "backend-2"] {
        assert!(
            names.iter().any(|n| n == b),
            "{b} never answered: {names:?}"
        );
    }
    assert!(names.iter().all(|n| n.starts_with("backend-")), "{names:?}");
    assert!(env.curl(&format!("http://{VIP}/")).starts_with("backend-"));
    let s = env.status_json();
    let web6 = s["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "web6")
        .expect("web6 in status")
        .clone();
    assert_eq!(web6["traffic"]["new_flows"], 24, "{web6}");
    // Status prints IPv6 VIPs and targets in brackets.
    let text = String::from_utf8(env.xlb(&["status"]).stdout).unwrap();
    assert!(text.contains(&format!("[{VIP6}]:80")), "{text}");
    assert!(text.contains("[2001:db8:1::2]:8080"), "{text}");
}

#[test]
fn udp_echo_and_ping_over_ipv6() {
    let env = Env::start("v6udp", 2, &dual());
    let got = env
        .in_client(|| {
            let s = UdpSocket::bind("[2001:db8::2]:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.connect(format!("[{VIP6}]:{UDP_PORT}")).unwrap();
            (0..20)
                .filter(|i| {
                    let msg = format!("datagram {i}");
                    s.send(msg.as_bytes()).unwrap();
                    let mut buf = [0u8; 64];
                    let n = s.recv(&mut buf).unwrap();
                    buf[..n] == *msg.as_bytes()
                })
                .count()
        })
        .join()
        .unwrap();
    assert_eq!(got, 20);
    let before = env.reason("tx_icmp_echo");
    let out = env
        .rig
        .client
        .command("ping")
        .args(["-6", "-c", "3", "-i", "0.2", "-W", "1", VIP6])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ping -6 {VIP6}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(env.reason("tx_icmp_echo") - before, 3);
}

#[test]
fn a_stopped_ipv6_backend_turns_unhealthy_and_gets_no_new_flows() {
    let mut env = Env::start("v6hc", 2, &dual());
    wait_healthy(&env, "web6", &["2001:db8:1::2", "2001:db8:2::2"], 8080);
    env.rig.stop("backend-2");
    env.wait_state(
        "web6",
        "2001:db8:2::2",
        8080,
        "unhealthy",
        Duration::from_secs(10),
    );
    let names: Vec<String> = (0..12).map(|_| env.curl(&url6())).collect();
    assert!(names.iter().all(|n| n == "backend-1"), "{names:?}");
    env.rig.start_backend(backend_bin(), 2).unwrap();
    env.wait_state(
        "web6",
        "2001:db8:2::2",
        8080,
        "healthy",
        Duration::from_secs(10),
    );
}
