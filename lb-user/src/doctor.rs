//! `xlb doctor`: what makes a balancer silently fail, checked on this host, each finding with
//! how to fix it. The checks read the host through [`Host`], so tests run them on a fake one.
use std::{fmt::Write as _, net::IpAddr};

use serde::Serialize;

use crate::model::{Mode, config::Config};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// May be intended, or cannot be told from here.
    Warn,
    /// Traffic will be dropped or misrouted.
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    pub check: String,
    pub detail: String,
    /// What to do about it (empty when it is fine).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

/// What a route lookup says (`ip -j route get`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Route {
    /// `unicast`, `local`, `unreachable`, ... (absent in ip's JSON for unicast).
    pub kind: String,
    pub dev: String,
    pub gateway: Option<String>,
}

/// The host as the checks see it.
pub trait Host {
    /// A sysctl's value (`net/ipv4/ip_forward`), `None` if absent.
    fn sysctl(&self, key: &str) -> Option<String>;
    fn interface_exists(&self, name: &str) -> bool;
    /// The interface's driver (`veth`, `mlx5_core`, ...).
    fn driver(&self, name: &str) -> Option<String>;
    fn mtu(&self, name: &str) -> Option<u32>;
    /// `Err`: no route (what `ip` said).
    fn route_get(&self, addr: IpAddr) -> Result<Route, String>;
    fn is_bpffs(&self, path: &str) -> bool;
    /// `birdc show protocols` on BIRD's control socket, `None` if BIRD does not answer.
    fn bird_protocols(&self) -> Option<String>;
    /// Routes in kernel table `table` (`ip route show table N`), one per line.
    fn table_routes(&self, table: u32) -> String;
    /// The resolution of the coarse monotonic clock the data plane reads (ns), if readable.
    fn coarse_clock_resolution_ns(&self) -> Option<u64>;
}

fn finding(level: Level, check: &str, detail: String, fix: &str) -> Finding {
    Finding {
        level,
        check: check.to_owned(),
        detail,
        fix: fix.to_owned(),
    }
}

/// Every check for `cfg` on `host`; `attached` is the running agent's interfaces and XDP
/// modes, when one answers.
pub fn diagnose(
    cfg: &Config,
    host: &impl Host,
    attached: Option<&[(String, String)]>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let v4 = cfg.listeners.iter().any(|l| l.vip.is_ipv4());
    let v6 = cfg.listeners.iter().any(|l| l.vip.is_ipv6());
    let nat = cfg.listeners.iter().any(|l| l.mode == Mode::Nat);
    for i in &cfg.interfaces {
        if !host.interface_exists(i) {
            out.push(finding(
                Level::Fail,
                "interface",
                format!("{i} does not exist"),
                "fix `interfaces` in the config, or create the interface",
            ));
            continue;
        }
        let fwd = |fam: &str| host.sysctl(&format!("net/{fam}/conf/{i}/forwarding"));
        if v4 && fwd("ipv4").as_deref() != Some("1") {
            out.push(finding(
                Level::Fail,
                "ip_forward",
                format!("IPv4 forwarding is off on {i}: every balanced packet is dropped (drop_fwd_disabled)"),
                "sysctl -w net.ipv4.ip_forward=1",
            ));
        }
        if v6 && fwd("ipv6").as_deref() != Some("1") {
            out.push(finding(
                Level::Fail,
                "ip_forward",
                format!("IPv6 forwarding is off on {i}: balanced IPv6 packets are dropped"),
                "sysctl -w net.ipv6.conf.all.forwarding=1",
            ));
        }
        // The effective rp_filter is the larger of `all` and the interface's.
        let rp = |k: &str| {
            host.sysctl(&format!("net/ipv4/conf/{k}/rp_filter"))
                .and_then(|v| v.trim().parse::<u8>().ok())
                .unwrap_or(0)
        };
        if rp("all").max(rp(i)) == 1 {
            out.push(finding(
                Level::Warn,
                "rp_filter",
                format!("strict reverse-path filtering on {i}: packets the data plane passes to the kernel (first packets before ARP, ICMP) from sources routed elsewhere are dropped"),
                &format!("sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{i}.rp_filter=2 (loose), or 0"),
            ));
        }
        match attached.map(|a| a.iter().find(|(n, _)| n == i).map(|(_, m)| m.as_str())) {
            Some(Some("skb")) => out.push(finding(
                Level::Warn,
                "xdp mode",
                format!("{i}: XDP runs in generic (SKB) mode, slower than native"),
                "use a driver with native XDP, or accept the cost",
            )),
            Some(None) => out.push(finding(
                Level::Fail,
                "xdp mode",
                format!("{i}: the running agent is not attached to it"),
                "restart the agent with this config",
            )),
            Some(Some(m)) => out.push(finding(Level::Ok, "xdp mode", format!("{i}: {m}"), "")),
            None => {}
        }
        if host.driver(i).as_deref() == Some("veth") {
            out.push(finding(
                Level::Warn,
                "veth",
                format!("{i} is a veth: XDP sees the partial checksums local senders leave, and frames redirected into a veth need XDP or GRO on the receiving end"),
                "on the hosts sending through it: ethtool -K DEV tx off; on veths receiving redirected frames: ethtool -K DEV gro on",
            ));
        }
    }
    if attached.is_none() {
        out.push(finding(
            Level::Warn,
            "agent",
            "no agent answers on the control socket: XDP modes not checked".into(),
            "start it: xlb run --config FILE",
        ));
    }
    // Targets: a route each; NAT needs their replies back through here.
    for g in &cfg.target_groups {
        for t in &g.targets {
            let a = t.endpoint.addr;
            match host.route_get(a) {
                Err(e) => out.push(finding(
                    Level::Fail,
                    "route to target",
                    format!("{} (group {}): no route: {e}", t.endpoint, g.name),
                    "add a route to the target",
                )),
                Ok(r) if r.kind == "local" => out.push(finding(
                    Level::Fail,
                    "route to target",
                    format!(
                        "{} (group {}) is an address of this host",
                        t.endpoint, g.name
                    ),
                    "targets are other hosts",
                )),
                Ok(r) => out.push(finding(
                    Level::Ok,
                    "route to target",
                    format!(
                        "{} via {} dev {}",
                        t.endpoint,
                        r.gateway.as_deref().unwrap_or("(on link)"),
                        r.dev
                    ),
                    "",
                )),
            }
        }
    }
    if nat {
        out.push(finding(
            Level::Warn,
            "targets' route back",
            "NAT targets must send their replies through this host (default route or a route to the clients via it); that cannot be checked from here".into(),
            "on each NAT target: ip route add default via THIS-HOST (or to the client networks)",
        ));
    }
    // VIPs: not an address of this host (the kernel would answer itself).
    let mut vips: Vec<IpAddr> = cfg.listeners.iter().map(|l| l.vip).collect();
    vips.sort();
    vips.dedup();
    for vip in vips {
        if let Ok(r) = host.route_get(vip)
            && r.kind == "local"
        {
            out.push(finding(
                Level::Warn,
                "vip",
                format!("{vip} is an address of this host: what XDP passes to the kernel for it is answered here"),
                "the balancer needs no VIP address; route the VIP to this host upstream instead",
            ));
        }
    }
    out.push(finding(
        Level::Warn,
        "vip routed here",
        "whether the upstream router sends the VIPs to this host cannot be checked from here"
            .into(),
        "a static route or BGP (see [bgp]); then `xlb status` shows the counters rise",
    ));
    // Tunnels: encapsulation adds 20 (IPv4) or 40 (IPv6) bytes.
    if cfg.listeners.iter().any(|l| l.mode == Mode::Tunnel) {
        for i in &cfg.interfaces {
            if let Some(mtu) = host.mtu(i)
                && mtu <= 1500
            {
                out.push(finding(
                    Level::Warn,
                    "tunnel mtu",
                    format!("{i}: MTU {mtu}: client packets larger than {} (IPv4 outer) get ICMP fragmentation needed (tx_frag_needed)", mtu - 20),
                    "raise the MTU toward the targets by 20 (IPv6 outer: 40), or clamp the clients' MSS",
                ));
            }
        }
    }
    if let Some(b) = &cfg.bgp {
        match host.bird_protocols() {
            None => out.push(finding(
                Level::Fail,
                "bird",
                "BIRD does not answer on its control socket: nothing is announced".into(),
                "start BIRD with the config `xlb bird-config` writes",
            )),
            Some(p) => {
                let bgp: Vec<&str> = p.lines().filter(|l| l.contains(" BGP ")).collect();
                if bgp.is_empty() {
                    out.push(finding(
                        Level::Fail,
                        "bird",
                        "BIRD runs no BGP protocol".into(),
                        "add the peers: xlb bird-config",
                    ));
                }
                for l in bgp {
                    let name = l.split_whitespace().next().unwrap_or("?");
                    let up = l.contains("Established");
                    out.push(finding(
                        if up { Level::Ok } else { Level::Fail },
                        "bgp session",
                        format!("{name}: {}", if up { "established" } else { l.trim() }),
                        if up {
                            ""
                        } else {
                            "check the peer's address, AS and reachability"
                        },
                    ));
                }
                if !p.lines().any(|l| l.contains(" Kernel ")) {
                    out.push(finding(
                        Level::Fail,
                        "bird",
                        format!("BIRD runs no kernel protocol: it cannot learn table {}", b.table),
                        "BIRD needs a kernel protocol with `kernel table N; learn;` (xlb bird-config)",
                    ));
                }
            }
        }
        let routes = host.table_routes(b.table);
        out.push(finding(
            Level::Ok,
            "announced",
            format!(
                "table {}: {}",
                b.table,
                if routes.trim().is_empty() {
                    "no VIP announced now".to_owned()
                } else {
                    routes.lines().map(str::trim).collect::<Vec<_>>().join("; ")
                }
            ),
            "",
        ));
    }
    // UDP idle timeouts and the previous table's window are read on the coarse clock.
    match host.coarse_clock_resolution_ns() {
        Some(r) if r <= 10_000_000 => out.push(finding(
            Level::Ok,
            "clock",
            format!("coarse monotonic clock: {} ms resolution", r as f64 / 1e6),
            "",
        )),
        Some(r) => out.push(finding(
            Level::Warn,
            "clock",
            format!("coarse monotonic clock resolution is {} ms: UDP idle timeouts and the previous table's window are that coarse", r / 1_000_000),
            "a kernel with HZ >= 100",
        )),
        None => out.push(finding(
            Level::Warn,
            "clock",
            "CLOCK_MONOTONIC_COARSE cannot be read".into(),
            "the data plane's timeouts depend on it",
        )),
    }
    if !host.is_bpffs("/sys/fs/bpf") {
        out.push(finding(
            Level::Warn,
            "bpffs",
            "/sys/fs/bpf is not a BPF filesystem: pins (xlb decap) go elsewhere or are mounted on demand".into(),
            "mount -t bpf bpf /sys/fs/bpf (systemd does this at boot)",
        ));
    }
    out
}

/// The findings for people: worst first, one per line, with the fix under it.
pub fn render(findings: &[Finding]) -> String {
    let mut sorted = findings.to_vec();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.level));
    let mut o = String::new();
    for f in &sorted {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        let _ = writeln!(o, "{tag} {:<20} {}", f.check, f.detail);
        if !f.fix.is_empty() {
            let _ = writeln!(o, "     {:<20} fix: {}", "", f.fix);
        }
    }
    let fails = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warns = findings.iter().filter(|f| f.level == Level::Warn).count();
    let _ = writeln!(o, "{fails} failure(s), {warns} warning(s)");
    o
}

/// This host, through /proc, /sys and iproute2.
pub struct RealHost {
    /// BIRD's control socket.
    pub bird_socket: String,
}

impl Host for RealHost {
    fn sysctl(&self, key: &str) -> Option<String> {
        std::fs::read_to_string(format!("/proc/sys/{key}"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    fn interface_exists(&self, name: &str) -> bool {
        std::path::Path::new("/sys/class/net").join(name).exists()
    }

    fn driver(&self, name: &str) -> Option<String> {
        std::fs::read_link(format!("/sys/class/net/{name}/device/driver"))
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
            .or_else(|| {
                // veth has no device link; ethtool names the driver.
                let out = std::process::Command::new("ethtool")
                    .args(["-i", name])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .find_map(|l| l.strip_prefix("driver: ").map(str::to_owned))
            })
    }

    fn mtu(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn route_get(&self, addr: IpAddr) -> Result<Route, String> {
        let out = crate::iproute::ip_output(&format!("-j route get {addr}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|_| format!("no route to {addr}"))?;
        let r = &v[0];
        if r.is_null() {
            return Err(format!("no route to {addr}"));
        }
        Ok(Route {
            kind: r["type"].as_str().unwrap_or("unicast").to_owned(),
            dev: r["dev"].as_str().unwrap_or("").to_owned(),
            gateway: r["gateway"].as_str().map(str::to_owned),
        })
    }

    fn is_bpffs(&self, path: &str) -> bool {
        crate::dataplane::decap::is_bpffs(std::path::Path::new(path))
    }

    fn bird_protocols(&self) -> Option<String> {
        let out = std::process::Command::new("birdc")
            .args(["-s", &self.bird_socket, "show", "protocols"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn coarse_clock_resolution_ns(&self) -> Option<u64> {
        let r = nix::time::clock_getres(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).ok()?;
        Some(u64::try_from(r.tv_sec()).ok()? * 1_000_000_000 + u64::try_from(r.tv_nsec()).ok()?)
    }

    fn table_routes(&self, table: u32) -> String {
        let v4 =
            crate::iproute::ip_output(&format!("-4 route show table {table}")).unwrap_or_default();
        let v6 =
            crate::iproute::ip_output(&format!("-6 route show table {table}")).unwrap_or_default();
        format!("{v4}{v6}")
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use super::*;
    use crate::model::config;

    /// A host made of tables.
    #[derive(Default)]
    struct FakeHost {
        sysctls: HashMap<String, String>,
        interfaces: Vec<(String, String, u32)>,
        routes: HashMap<IpAddr, Route>,
        bird: Option<String>,
        bpffs: bool,
        clock_ns: Option<u64>,
    }

    impl Host for FakeHost {
        fn sysctl(&self, key: &str) -> Option<String> {
            self.sysctls.get(key).cloned()
        }
        fn interface_exists(&self, name: &str) -> bool {
            self.interfaces.iter().any(|(n, ..)| n == name)
        }
        fn driver(&self, name: &str) -> Option<String> {
            self.interfaces
                .iter()
                .find(|(n, ..)| n == name)
                .map(|(_, d, _)| d.clone())
        }
        fn mtu(&self, name: &str) -> Option<u32> {
            self.interfaces
                .iter()
                .find(|(n, ..)| n == name)
                .map(|(.., m)| *m)
        }
        fn route_get(&self, addr: IpAddr) -> Result<Route, String> {
            self.routes
                .get(&addr)
                .cloned()
                .ok_or_else(|| "Network is unreachable".into())
        }
        fn is_bpffs(&self, _: &str) -> bool {
            self.bpffs
        }
        fn bird_protocols(&self) -> Option<String> {
            self.bird.clone()
        }
        fn table_routes(&self, _: u32) -> String {
            String::new()
        }
        fn coarse_clock_resolution_ns(&self) -> Option<u64> {
            self.clock_ns
        }
    }

    const CFG: &str = "interfaces = [\"eth0\"]\n[[listener]]\nname = \"web\"\nvip = \"198.18.100.10\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web\"\n[[target_group]]\nname = \"web\"\nport = 8080\ntargets = [{ address = \"198.18.1.2\" }, { address = \"198.18.2.2\" }]\n";

    fn healthy_host() -> FakeHost {
        let mut h = FakeHost {
            interfaces: vec![("eth0".into(), "mlx5_core".into(), 9000)],
            bpffs: true,
            clock_ns: Some(4_000_000),
            ..FakeHost::default()
        };
        h.sysctls
            .insert("net/ipv4/conf/eth0/forwarding".into(), "1".into());
        for t in ["198.18.1.2", "198.18.2.2"] {
            h.routes.insert(
                t.parse().unwrap(),
                Route {
                    kind: "unicast".into(),
                    dev: "eth0".into(),
                    gateway: None,
                },
            );
        }
        h
    }

    fn levels(f: &[Finding], check: &str) -> Vec<Level> {
        f.iter()
            .filter(|x| x.check == check)
            .map(|x| x.level)
            .collect()
    }

    #[test]
    fn a_sound_host_has_no_failure_and_each_fault_is_named_with_its_fix() {
        let cfg = config::parse(Path::new("x.toml"), CFG).unwrap();
        let attached = [("eth0".to_owned(), "native".to_owned())];
        let f = diagnose(&cfg, &healthy_host(), Some(&attached));
        assert!(f.iter().all(|x| x.level != Level::Fail), "{f:#?}");
        assert_eq!(levels(&f, "xdp mode"), [Level::Ok]);
        assert_eq!(levels(&f, "route to target"), [Level::Ok, Level::Ok]);
        assert_eq!(levels(&f, "clock"), [Level::Ok]);

        let mut h = healthy_host();
        h.sysctls
            .insert("net/ipv4/conf/eth0/forwarding".into(), "0".into());
        h.sysctls
            .insert("net/ipv4/conf/all/rp_filter".into(), "1".into());
        h.routes.remove(&"198.18.2.2".parse().unwrap());
        h.interfaces[0].1 = "veth".into();
        h.clock_ns = Some(40_000_000);
        let f = diagnose(&cfg, &h, Some(&[("eth0".into(), "skb".into())]));
        let fwd = f.iter().find(|x| x.check == "ip_forward").unwrap();
        assert_eq!(fwd.level, Level::Fail);
        assert!(fwd.fix.contains("net.ipv4.ip_forward=1"), "{fwd:?}");
        assert_eq!(levels(&f, "rp_filter"), [Level::Warn]);
        assert_eq!(levels(&f, "route to target"), [Level::Ok, Level::Fail]);
        assert_eq!(levels(&f, "xdp mode"), [Level::Warn]);
        assert_eq!(levels(&f, "veth"), [Level::Warn]);
        assert_eq!(levels(&f, "clock"), [Level::Warn]);
        let text = render(&f);
        assert!(text.starts_with("FAIL"), "worst first:\n{text}");
        assert!(text.contains("2 failure(s)"), "{text}");
        // A missing interface, and an agent not attached where the config says.
        let f = diagnose(&cfg, &FakeHost::default(), Some(&[]));
        assert_eq!(levels(&f, "interface"), [Level::Fail]);
    }

    #[test]
    fn bgp_checks_read_birds_sessions() {
        let text = format!("{CFG}[bgp]\ntable = 200\n");
        let cfg = config::parse(Path::new("x.toml"), &text).unwrap();
        assert!(cfg.bgp.is_some());
        let mut h = healthy_host();
        let f = diagnose(&cfg, &h, None);
        assert_eq!(levels(&f, "bird"), [Level::Fail], "no BIRD");
        h.bird = Some(
            "Name Proto Table State Since Info\nxlb_vips4 Kernel master4 up 12:00\n\
             xlb_peer1 BGP --- up 12:00 Established\nxlb_peer2 BGP --- start 12:00 Active\n"
                .into(),
        );
        let f = diagnose(&cfg, &h, None);
        assert_eq!(levels(&f, "bgp session"), [Level::Ok, Level::Fail]);
        assert!(levels(&f, "bird").is_empty());
    }
}
