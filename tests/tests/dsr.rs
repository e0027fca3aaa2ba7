//! Direct server return with real clients: curl through a `dsr` and a `tunnel` listener reaches
//! both targets of each, replies go from the targets straight to the client through a router,
//! a download crosses the balancer in the request direction only, and `xlb target-setup
//! --apply` then `--undo` leaves a target as it was. Targets are prepared with the CLI, as the
//! README tells users to.
mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{TempDir, backend_bin, xlb_bin};
use xlb_rig::{
    Netns,
    dsr_rig::{
        DSR_VIP, DsrRig, PORT, TUNNEL_VIP, TUNNEL_VIP6, TUNNEL_VIP46, dsr_target, dsr_target6,
    },
};

fn xlb_in(ns: &Netns, args: &[&str]) -> std::process::Output {
    let out = ns
        .command(&xlb_bin().display().to_string())
        .args(args)
        .output()
        .expect("xlb runs");
    eprintln!(
        "[{}] xlb {}: {}{}",
        ns.name,
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The rig with every target set up, serving its name on port 80, and the agent running.
struct Env {
    rig: DsrRig,
    _dir: TempDir,
    socket: std::path::PathBuf,
}

/// What the targets serve on port 80.
enum Serve {
    /// xlb-backend: its name.
    Names,
    /// python3 -m http.server over a folder holding `big`, a file of this many bytes.
    File(u64),
}

fn start(tag: &str, serve: Serve) -> Env {
    start_with(tag, serve, &[])
}

/// As [`start`], leaving the targets in `unprepared` without `target-setup`.
fn start_with(tag: &str, serve: Serve, unprepared: &[usize]) -> Env {
    let prefix = format!("xlb-d{tag}-{}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(&prefix));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut rig = DsrRig::up(&prefix).unwrap();
    for k in 1..=4 {
        if !unprepared.contains(&k) {
            rig.set_up_target(&xlb_bin(), k).unwrap();
        }
        match serve {
            Serve::Names => rig.start_backend(backend_bin(), k).unwrap(),
            Serve::File(size) => {
                let files = dir.0.join(format!("files-{k}"));
                std::fs::create_dir_all(&files).unwrap();
                let f = std::fs::File::create(files.join("big")).unwrap();
                f.set_len(size).unwrap();
                let mut cmd = rig.targets[k - 1].command("python3");
                cmd.args([
                    "-u",
                    "-m",
                    "http.server",
                    &PORT.to_string(),
                    "--bind",
                    "0.0.0.0",
                ])
                .arg("--directory")
                .arg(&files);
                rig.start_server(k, cmd, "Serving HTTP").unwrap();
            }
        }
    }
    let socket = dir.0.join("xlb.sock");
    let config = dir.0.join("xlb.toml");
    std::fs::write(&config, rig.config(&socket, &dir.0.join("state.json"))).unwrap();
    rig.start_agent(&xlb_bin(), &config).unwrap();
    let env = Env {
        rig,
        _dir: dir,
        socket,
    };
    for k in (1..=4).filter(|k| !unprepared.contains(k)) {
        env.wait_state(k, "healthy");
    }
    env
}

impl Env {
    fn status(&self) -> serde_json::Value {
        let out = Command::new(xlb_bin())
            .args(["status", "--json", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Wait until target K is in `state`; its reason then.
    fn wait_state(&self, k: usize, state: &str) -> String {
        self.wait_addr(&dsr_target(k), state)
    }

    /// Wait until the target at `addr` is in `state`; its reason then.
    fn wait_addr(&self, addr: &str, state: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status();
            let found = s["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["targets"].as_array().into_iter().flatten())
                .find(|t| t["address"] == addr && t["state"] == state)
                .map(|t| t["reason"].as_str().unwrap_or_default().to_owned());
            if let Some(reason) = found {
                return reason;
            }
            assert!(Instant::now() < deadline, "{addr} not {state}: {s:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `n` new connections with curl from the client: the names that answered.
    fn curl_names(&self, vip: &str, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let out = self
                    .rig
                    .client
                    .command("curl")
                    .args(["-s", "--max-time", "3", &format!("http://{vip}:{PORT}/")])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
            .collect()
    }

    fn reason_count(&self, name: &str) -> u64 {
        self.status()["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .map(|r| r["packets"].as_u64().unwrap())
            .unwrap_or(0)
    }
}

/// A file removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn count(names: &[String], n: &str) -> usize {
    names.iter().filter(|x| *x == n).count()
}

#[test]
fn curl_through_dsr_and_tunnel_listeners_reaches_both_targets_of_each() {
    let env = start("curl", Serve::Names);
    let sent_before = env.reason_count("fwd_redirect");
    let dsr = env.curl_names(DSR_VIP, 24);
    eprintln!("dsr: {dsr:?}");
    assert!(
        count(&dsr, "backend-1") > 0 && count(&dsr, "backend-2") > 0,
        "{dsr:?}"
    );
    assert_eq!(
        count(&dsr, "backend-1") + count(&dsr, "backend-2"),
        24,
        "{dsr:?}"
    );
    let tun = env.curl_names(TUNNEL_VIP, 24);
    eprintln!("tunnel: {tun:?}");
    assert!(
        count(&tun, "backend-3") > 0 && count(&tun, "backend-4") > 0,
        "{tun:?}"
    );
    assert_eq!(
        count(&tun, "backend-3") + count(&tun, "backend-4"),
        24,
        "{tun:?}"
    );
    // Status says where the probes go.
    let status = env.status();
    let checks: Vec<String> = status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["health_check"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        checks
            .iter()
            .any(|c| c.contains("tcp 198.18.100.20:80 through the dsr path")),
        "{checks:?}"
    );
    assert!(
        checks
            .iter()
            .any(|c| c.contains("tcp 198.18.100.21:80 through the tunnel path")),
        "{checks:?}"
    );
    // The balancer sent every request packet on itself, in XDP.
    assert!(env.reason_count("fwd_redirect") - sent_before >= 48 * 3);
    // The tunnel targets decapsulated every one of them.
    for k in 3..=4 {
        let out = xlb_in(
            &env.rig.targets[k - 1],
            &[
                "decap",
                "status",
                "--pin-dir",
                &env.rig.pin_dir(k).display().to_string(),
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let n: u64 = text
            .lines()
            .find(|l| l.trim_start().starts_with("decapsulated"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "t{k}: {text}");
    }
}

#[test]
fn a_download_crosses_the_balancer_in_the_request_direction_only() {
    // A 20 MB file served by python's http.server on every target, on the listeners' port.
    let size: u64 = 20 * 1024 * 1024;
    let env = start("bytes", Serve::File(size));
    let mut results = Vec::new();
    for vip in [DSR_VIP, TUNNEL_VIP] {
        let before = env.rig.lb_bytes().unwrap();
        let (got, _) = common::download(&env.rig.client, &format!("http://{vip}:{PORT}/big"));
        let seen = env.rig.lb_bytes().unwrap() - before;
        results.push((vip, got, seen));
    }
    for (vip, got, seen) in results {
        let ratio = seen as f64 / got.max(1) as f64;
        eprintln!(
            "{vip}: {got} bytes delivered, the balancer's interface carried {seen} ({ratio:.3} per byte delivered)"
        );
        assert_eq!(got, size, "{vip}: the whole file arrived");
        assert!(
            ratio < 0.15,
            "{vip}: replies must not cross the balancer ({ratio:.3})"
        );
    }
}

#[test]
fn a_dsr_target_without_the_vip_is_unhealthy_says_why_and_gets_no_flows() {
    // t2 answers on its own address (its server runs) but has no VIP: a probe of its address
    // would pass, the data path would blackhole.
    let env = start_with("novip", Serve::Names, &[2]);
    let reason = env.wait_state(2, "unhealthy");
    eprintln!("t2: {reason}");
    assert!(
        reason.contains("VIP 198.18.100.20:80 not answered through the dsr path"),
        "{reason}"
    );
    let names = env.curl_names(DSR_VIP, 24);
    assert_eq!(count(&names, "backend-1"), 24, "no flow to t2: {names:?}");
    // Set up as the README says, it comes back.
    let record = env.rig.record(2).display().to_string();
    let out = xlb_in(
        &env.rig.targets[1],
        &[
            "target-setup",
            "--vip",
            DSR_VIP,
            "--mode",
            "dsr",
            "--apply",
            "--record",
            &record,
        ],
    );
    assert!(out.status.success());
    env.wait_state(2, "healthy");
    let names = env.curl_names(DSR_VIP, 24);
    assert!(count(&names, "backend-2") > 0, "{names:?}");
}

#[test]
fn a_tunnel_target_without_decapsulation_is_unhealthy_says_why_and_gets_no_flows() {
    // t4 serves on its own address, but neither holds the VIP nor decapsulates.
    let env = start_with("nodecap", Serve::Names, &[4]);
    let reason = env.wait_state(4, "unhealthy");
    eprintln!("t4: {reason}");
    assert!(
        reason.contains("VIP 198.18.100.21:80 not answered through the tunnel path"),
        "{reason}"
    );
    let names = env.curl_names(TUNNEL_VIP, 24);
    assert_eq!(count(&names, "backend-3"), 24, "no flow to t4: {names:?}");
    env.rig.set_up_target(&xlb_bin(), 4).unwrap();
    env.wait_state(4, "healthy");
    let names = env.curl_names(TUNNEL_VIP, 24);
    assert!(count(&names, "backend-4") > 0, "{names:?}");
}

#[test]
fn target_setup_apply_then_undo_leaves_the_target_as_it_was() {
    let ns = Netns::create(&format!("xlb-dsetup-{}", std::process::id())).unwrap();
    ns.exec("ip link add eth0 type veth peer name eth1")
        .unwrap();
    ns.exec("ip addr add 198.18.30.2/24 dev eth0").unwrap();
    ns.exec("ip link set eth0 up").unwrap();
    ns.exec("ip link set eth1 up").unwrap();
    let fs = xlb_rig::BpfFs::mount(
        std::env::temp_dir().join(format!("xlb-dsetup-bpf-{}", std::process::id())),
    )
    .unwrap();
    let bpffs = fs.0.clone();
    let record = TempFile(bpffs.with_extension("json"));
    let look = || {
        [
            "sysctl net.ipv4.conf.all.arp_ignore net.ipv4.conf.all.arp_announce net.ipv4.conf.all.rp_filter net.ipv4.conf.eth0.rp_filter",
            "ip -o addr show",
            "ip -d link show eth0",
        ]
        .iter()
        .map(|c| ns.exec(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
    };
    let before = look();
    let args = |extra: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "target-setup",
            "--vip",
            "198.18.100.30",
            "--mode",
            "tunnel",
            "--iface",
            "eth0",
            "--record",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.push(record.0.display().to_string());
        v.push("--pin-dir".into());
        v.push(bpffs.join("p").display().to_string());
        v.push(extra.into());
        v
    };
    let run = |extra: &str| {
        let a = args(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        xlb_in(&ns, &a)
    };
    assert!(run("--apply").status.success());
    let applied = look();
    assert_ne!(applied, before);
    assert!(applied.contains("198.18.100.30/32"), "{applied}");
    assert!(applied.contains("xdp"), "decapsulation attached: {applied}");
    let again = run("--apply");
    assert!(!again.status.success(), "a second --apply is refused");
    assert!(run("--undo").status.success());
    assert_eq!(look(), before);
}

#[test]
fn curl_through_ipv6_in_ipv6_and_ipv4_in_ipv6_tunnels_reaches_both_targets() {
    let env = start("tun6", Serve::Names);
    // Health checks of the IPv6 targets take the tunnel path too (an outer IPv6 header added
    // on egress), and pass.
    for k in 3..=4 {
        env.wait_addr(&dsr_target6(k), "healthy");
    }
    for vip in [format!("[{TUNNEL_VIP6}]"), TUNNEL_VIP46.to_owned()] {
        let names = env.curl_names(&vip, 24);
        eprintln!("{vip}: {names:?}");
        assert!(
            count(&names, "backend-3") > 0 && count(&names, "backend-4") > 0,
            "{vip}: {names:?}"
        );
        assert_eq!(
            count(&names, "backend-3") + count(&names, "backend-4"),
            24,
            "{vip}: {names:?}"
        );
    }
    let status = env.status();
    let routed6 = status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "routed6")
        .unwrap()
        .clone();
    assert!(
        routed6["health_check"]
            .as_str()
            .unwrap()
            .contains("through the tunnel path"),
        "{routed6}"
    );
}
