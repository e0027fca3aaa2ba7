//! Real traffic through the balancer: curl, nc and real TCP/UDP sockets in the client
//! namespace, the agent binary in the balancer namespace, backends in the target namespaces.
//! Every rig is torn down when its test ends, pass or fail.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use xlb_rig::{
    Netns, Rig, RigSpec,
    rig::{UDP_PORT, VIP},
};

fn xlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return p.into();
    }
    // target/<profile>/deps/namespace-<hash> -> target/<profile>/xlb
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("xlb");
    assert!(
        p.exists(),
        "{} not built: run `cargo xtask test` (it builds xlb first)",
        p.display()
    );
    p
}

fn backend_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xlb-backend"))
}

struct Env {
    rig: Rig,
    config: PathBuf,
    socket: PathBuf,
}

impl Env {
    /// A rig with `targets` target hosts (all serving), the agent balancing over `in_config`.
    fn start(tag: &str, targets: usize, in_config: &[usize]) -> Self {
        let prefix = format!("xlb-n{tag}");
        let mut rig = Rig::up(&RigSpec {
            prefix: prefix.clone(),
            targets,
        })
        .unwrap();
        rig.start_backends(backend_bin()).unwrap();
        let config = std::env::temp_dir().join(format!("{prefix}.toml"));
        let socket = std::env::temp_dir().join(format!("{prefix}.sock"));
        let env = Self {
            rig,
            config,
            socket,
        };
        env.write_config(in_config);
        let mut env = env;
        env.rig.start_agent(&xlb_bin(), &env.config).unwrap();
        env
    }

    fn write_config(&self, targets: &[usize]) {
        std::fs::write(&self.config, self.rig.config(&self.socket, targets)).unwrap();
    }

    fn xlb(&self, args: &[&str]) -> Output {
        Command::new(xlb_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    fn status_json(&self) -> serde_json::Value {
        let out = self.xlb(&["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn reason(&self, name: &str) -> u64 {
        let s = self.status_json();
        s["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["packets"]
            .as_u64()
            .unwrap()
    }

    /// `curl http://VIP/` from the client namespace: the body (a backend's name).
    fn curl(&self, url: &str) -> String {
        let out = self
            .rig
            .client
            .command("curl")
            .args(["-s", "-m", "5", url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {url}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn curls(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| self.curl(&format!("http://{VIP}/")))
            .collect()
    }

    /// Run `f` on a thread that lives in the client namespace (real sockets from the client).
    fn in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let name = self.rig.client.name.clone();
        std::thread::spawn(move || {
            let f_ns = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            assert_eq!(
                unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            f()
        })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// One HTTP/1.1 keep-alive request on an open connection; returns the body.
fn get(conn: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> String {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")
        .unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap().trim().to_owned()
}

#[test]
fn curl_through_the_vip_reaches_both_targets_80_to_8080_by_xdp() {
    let env = Env::start("curl", 2, &[1, 2]);
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
    let env = Env::start("udp", 2, &[1, 2]);
    let out = env
        .rig
        .client
        .command("sh")
        .args(["-c", &format!("echo hello | nc -u -w1 {VIP} {UDP_PORT}")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
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
    let env = Env::start("long", 3, &[1, 2]);
    let (tx_go, rx_go) = std::sync::mpsc::channel::<()>();
    let (tx_first, rx_first) = std::sync::mpsc::channel::<String>();
    let conn = env.in_client(move || {
        let mut c = TcpStream::connect(format!("{VIP}:80")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        tx_first.send(get(&mut c, &mut r)).unwrap();
        rx_go.recv().unwrap();
        (0..5).map(|_| get(&mut c, &mut r)).collect::<Vec<_>>()
    });
    let first = rx_first.recv_timeout(Duration::from_secs(10)).unwrap();
    env.write_config(&[1, 2, 3]);
    let out = env.xlb(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("~2 -0 =0; targets +2 -0"),
        "web and echo changed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    tx_go.send(()).unwrap();
    let later = conn.join().unwrap();
    assert!(later.iter().all(|n| *n == first), "{first} then {later:?}");
    // New connections now reach the third target as well.
    let names = env.curls(30);
    assert!(names.iter().any(|n| n == "backend-3"), "{names:?}");
}

#[test]
fn the_balancer_nodes_own_address_still_works_on_a_listener_port() {
    let mut env = Env::start("node", 2, &[1, 2]);
    let cmd = env.rig.lb.command(&backend_bin().display().to_string());
    env.rig
        .start_server(cmd, "the-node", "198.18.0.1:80", "198.18.0.1:9000")
        .unwrap();
    assert_eq!(env.curl("http://198.18.0.1/"), "the-node");
    assert!(env.reason("pass_not_listener") > 0);
}

#[test]
fn an_invalid_reload_is_rejected_with_file_and_line_and_changes_nothing() {
    let env = Env::start("badreload", 2, &[1, 2]);
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
        prefix: "xlb-nbadcfg".into(),
        targets: 1,
    })
    .unwrap();
    let path = std::env::temp_dir().join("xlb-nbadcfg.toml");
    let text = rig
        .config(Path::new("/tmp/xlb-nbadcfg.sock"), &[1])
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
    let prefix = "xlb-nfail";
    let result = std::panic::catch_unwind(|| {
        let mut env = Env::start("fail", 1, &[1]);
        assert!(
            env.rig
                .lb
                .exec("ip link show lb-c")
                .unwrap()
                .contains("xdp")
        );
        let status = env.rig.stop("xlb").unwrap();
        assert!(status.success(), "agent exit {status:?}");
        assert!(
            !env.rig.lb.exec("ip link show").unwrap().contains("xdp"),
            "detached on SIGTERM"
        );
        assert!(!env.socket.exists(), "control socket removed");
        panic!("deliberate failure, to check the teardown");
    });
    assert!(result.is_err());
    let left = xlb_rig::sh("ip netns list").unwrap();
    assert!(!left.contains(prefix), "namespaces left behind: {left}");
    let _ = Netns::create; // the guard type used by the rig
}
