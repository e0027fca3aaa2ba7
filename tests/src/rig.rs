//! The demo rig: a client, the balancer node and N targets, each in its own namespace, joined
//! by direct veth pairs (no bridge: crossing one costs most of the packet rate here).
//!
//! ```text
//!  {p}-client eth0 198.18.0.2/24   ── lb-c 198.18.0.1/24   ┐
//!                 2001:db8::2/64          2001:db8::1/64     │
//!                                                            {p}-lb (xlb on lb-c, lb-tK)
//!  {p}-tK     eth0 198.18.K.2/24   ── lb-tK 198.18.K.1/24  ┘
//!                 2001:db8:K::2/64        2001:db8:K::1/64
//!  VIP 198.18.100.10 and [2001:db8:100::10]: the client routes 198.18.100.0/24 via
//!  198.18.0.1 and 2001:db8:100::/64 via 2001:db8::1; targets use the balancer as their
//!  gateway (NAT mode).
//! ```
use std::path::Path;

use crate::{
    netns::{Netns, veth},
    procs::Children,
};

pub const VIP: &str = "198.18.100.10";
pub const VIP6: &str = "2001:db8:100::10";
pub const CLIENT_ADDR6: &str = "2001:db8::2";
pub const CLIENT_ADDR: &str = "198.18.0.2";
pub const LB_CLIENT_SIDE: &str = "198.18.0.1";
pub const HTTP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 9000;

pub fn target_addr(k: usize) -> String {
    format!("198.18.{k}.2")
}

pub fn target_addr6(k: usize) -> String {
    format!("2001:db8:{k}::2")
}

/// What a rig config holds beyond the fixed listeners.
pub struct Setup {
    /// Registered targets (1-based host numbers).
    pub targets: Vec<usize>,
    /// Weights, in the order of `targets` (missing: 1).
    pub weights: Vec<u32>,
    pub interval_s: u32,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub deregistration_delay_s: u32,
    /// Also the IPv6 listeners "web6" and "echo6" on [`VIP6`], to the same targets' IPv6
    /// addresses (groups "web6" and "echo6").
    pub ipv6: bool,
}

impl Setup {
    /// The demo's settings: quick health checks and a short drain, so changes show quickly.
    pub fn demo(targets: &[usize]) -> Self {
        Self {
            targets: targets.to_vec(),
            weights: Vec::new(),
            interval_s: 2,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            deregistration_delay_s: 10,
            ipv6: false,
        }
    }
}

pub struct RigSpec {
    /// Namespace prefix, starting with `xlb`: namespaces are `{prefix}-client`, `{prefix}-lb`,
    /// `{prefix}-t1`...
    pub prefix: String,
    pub targets: usize,
}

pub struct Rig {
    children: Children,
    /// XDP programs on the client's interface (see `xdp_receiver`): the balancer answers
    /// pings there with `XDP_TX`.
    _receivers: Vec<xlb::dataplane::decap::Decap>,
    pub prefix: String,
    pub client: Netns,
    pub lb: Netns,
    pub targets: Vec<Netns>,
}

impl Rig {
    pub fn up(spec: &RigSpec) -> anyhow::Result<Self> {
        assert!(
            spec.prefix.starts_with("xlb"),
            "rig prefix must start with xlb"
        );
        let p = &spec.prefix;
        let client = Netns::create(&format!("{p}-client"))?;
        let lb = Netns::create(&format!("{p}-lb"))?;
        let mut rig = Self {
            children: Children::default(),
            _receivers: Vec::new(),
            prefix: p.clone(),
            client,
            lb,
            targets: Vec::new(),
        };
        for k in 1..=spec.targets {
            rig.targets.push(Netns::create(&format!("{p}-t{k}"))?);
        }
        rig.wire()?;
        rig._receivers
            .push(crate::netns::xdp_receiver(&rig.client, "eth0")?);
        Ok(rig)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let lb = &self.lb;
        balancer_sysctls(lb)?;
        veth(&self.client, "eth0", lb, "lb-c")?;
        lb.exec("ip addr add 198.18.0.1/24 dev lb-c")?;
        lb.exec("ip -6 addr add 2001:db8::1/64 dev lb-c nodad")?;
        self.client
            .exec(&format!("ip addr add {CLIENT_ADDR}/24 dev eth0"))?;
        self.client
            .exec(&format!("ip -6 addr add {CLIENT_ADDR6}/64 dev eth0 nodad"))?;
        self.client.exec(&format!(
            "ip route add 198.18.100.0/24 via {LB_CLIENT_SIDE}"
        ))?;
        self.client
            .exec("ip -6 route add 2001:db8:100::/64 via 2001:db8::1")?;
        host_side_offloads(&self.client)?;
        for (i, t) in self.targets.iter().enumerate() {
            let k = i + 1;
            veth(t, "eth0", lb, &format!("lb-t{k}"))?;
            lb.exec(&format!("ip addr add 198.18.{k}.1/24 dev lb-t{k}"))?;
            t.exec(&format!("ip addr add {}/24 dev eth0", target_addr(k)))?;
            t.exec(&format!("ip route add default via 198.18.{k}.1"))?;
            lb.exec(&format!(
                "ip -6 addr add 2001:db8:{k}::1/64 dev lb-t{k} nodad"
            ))?;
            t.exec(&format!(
                "ip -6 addr add {}/64 dev eth0 nodad",
                target_addr6(k)
            ))?;
            t.exec(&format!("ip -6 route add default via 2001:db8:{k}::1"))?;
            host_side_offloads(t)?;
        }
        Ok(())
    }

    /// The balancer's interfaces, client side first.
    pub fn lb_interfaces(&self) -> Vec<String> {
        let mut v = vec!["lb-c".to_owned()];
        v.extend((1..=self.targets.len()).map(|k| format!("lb-t{k}")));
        v
    }

    /// A config for this rig: TCP 80 -> group `web` on 8080 (HTTP health check) and UDP 9000
    /// -> group `echo` (probed on TCP 8080), with the targets and settings of `s`. The state
    /// file sits next to the control socket.
    pub fn config(&self, socket: &Path, s: &Setup) -> String {
        let list_of = |addr: fn(usize) -> String, port: u16| {
            s.targets
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    let w = s.weights.get(i).copied().unwrap_or(1);
                    format!(
                        "{{ address = \"{}\", port = {port}, weight = {w} }}",
                        addr(*k)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let list = |port: u16| list_of(target_addr, port);
        let hc = |proto_port: &str| {
            format!(
                "{{ {proto_port}interval = {}, timeout = 1, healthy_threshold = {}, unhealthy_threshold = {} }}",
                s.interval_s, s.healthy_threshold, s.unhealthy_threshold
            )
        };
        let ipv6 = if s.ipv6 {
            format!(
                r#"
[[listener]]
name = "web6"
vip = "{VIP6}"
port = 80
protocol = "tcp"
target_group = "web6"

[[listener]]
name = "echo6"
vip = "{VIP6}"
port = {UDP_PORT}
protocol = "udp"
target_group = "echo6"

[[target_group]]
name = "web6"
port = {HTTP_PORT}
deregistration_delay = {delay}
targets = [{web}]
health_check = {web_hc}

[[target_group]]
name = "echo6"
port = {UDP_PORT}
deregistration_delay = {delay}
targets = [{echo}]
health_check = {echo_hc}
"#,
                web = list_of(target_addr6, HTTP_PORT),
                echo = list_of(target_addr6, UDP_PORT),
                delay = s.deregistration_delay_s,
                web_hc = hc("protocol = \"http\", path = \"/\", "),
                echo_hc = hc(&format!("port = {HTTP_PORT}, ")),
            )
        } else {
            String::new()
        };
        format!(
            r#"# xlb rig config: the balancer node's interfaces toward the client and the targets.
interfaces = [{ifs}]
control_socket = "{sock}"
state_file = "{state}"

[tables]
maglev_size = 65537

[[listener]]
name = "web"
vip = "{VIP}"
port = 80
protocol = "tcp"
target_group = "web"

[[listener]]
name = "echo"
vip = "{VIP}"
port = {UDP_PORT}
protocol = "udp"
target_group = "echo"

[[target_group]]
name = "web"
port = {HTTP_PORT}
deregistration_delay = {delay}
targets = [{web}]
health_check = {web_hc}

[[target_group]]
name = "echo"
port = {UDP_PORT}
deregistration_delay = {delay}
targets = [{echo}]
# UDP targets are probed over TCP: the backends' HTTP port.
health_check = {echo_hc}
{ipv6}"#,
            ifs = self
                .lb_interfaces()
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(", "),
            sock = socket.display(),
            state = socket.with_extension("state.json").display(),
            web = list(HTTP_PORT),
            echo = list(UDP_PORT),
            delay = s.deregistration_delay_s,
            web_hc = hc("protocol = \"http\", path = \"/\", "),
            echo_hc = hc(&format!("port = {HTTP_PORT}, ")),
        )
    }

    /// Start `backend-K` (HTTP on 8080, UDP echo on 9000) in every target namespace.
    pub fn start_backends(&mut self, backend: &Path) -> anyhow::Result<()> {
        for k in 1..=self.targets.len() {
            self.start_backend(backend, k)?;
        }
        Ok(())
    }

    pub fn start_backend(&mut self, backend: &Path, k: usize) -> anyhow::Result<()> {
        let cmd = self.targets[k - 1].command(&backend.display().to_string());
        // [::] takes IPv4 too (bindv6only is 0 in a new namespace).
        self.start_server(cmd, &format!("backend-{k}"), "[::]:8080", "[::]:9000")
    }

    /// Start the backend server program as `cmd` (a `Netns::command`), answering `name`.
    pub fn start_server(
        &mut self,
        mut cmd: std::process::Command,
        name: &str,
        http: &str,
        udp: &str,
    ) -> anyhow::Result<()> {
        cmd.args(["--name", name, "--http", http, "--udp", udp]);
        self.spawn_until(name, cmd, "ready")
    }

    /// Start the agent in the balancer namespace; returns once it says it is ready.
    pub fn start_agent(&mut self, xlb: &Path, config: &Path) -> anyhow::Result<()> {
        let mut cmd = self.lb.command(&xlb.display().to_string());
        cmd.args(["run", "--config", &config.display().to_string()]);
        self.spawn_until("xlb", cmd, "ready; control socket")
    }

    /// Start `cmd` (a command in one of the rig's namespaces) as the child `name`; returns once
    /// it printed `marker`.
    pub fn spawn_until(
        &mut self,
        name: &str,
        cmd: std::process::Command,
        marker: &str,
    ) -> anyhow::Result<()> {
        self.children.spawn_until(name, cmd, marker)
    }

    /// Kill the named child with SIGKILL (a crash) and reap it.
    pub fn kill(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.children.kill(name)
    }

    /// Stop the named child with SIGTERM (then SIGKILL after 5 s) and return its exit status.
    pub fn stop(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.children.stop(name)
    }

    /// Whether the named child has exited (and how).
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.children.exited(name)
    }
}

/// A balancer node's settings: forwarding on (the FIB lookup needs it), no reverse-path filter
/// (packets the kernel forwards for XDP meet it), no ICMP redirects (a one-armed node would
/// teach hosts to bypass it).
pub fn balancer_sysctls(ns: &Netns) -> anyhow::Result<()> {
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ] {
        ns.sysctl(key, value)?;
    }
    Ok(())
}

/// Hosts on a veth rig: local sockets leave a partial checksum that XDP cannot complete, so
/// turn TX checksum offload off; frames XDP redirects to us need GRO (or an XDP program) on
/// the receiving veth to be accepted.
pub fn host_side_offloads(ns: &Netns) -> anyhow::Result<()> {
    ns.exec("ethtool -K eth0 tx off")?;
    ns.exec("ethtool -K eth0 gro on")?;
    Ok(())
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Children first (the agent detaches on SIGTERM), then the namespaces (field drops).
        self.children.stop_all();
    }
}
