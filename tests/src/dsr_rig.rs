//! A rig for direct server return: the targets' way back to the client goes through a router,
//! never through the balancer.
//!
//! ```text
//!  {p}-client eth0 198.18.0.2/24 ── r-c 198.18.0.1/24 ┐ {p}-router: routes 198.18.100.0/24
//!                                                      │ (the VIPs) to the balancer
//!  {p}-lb eth0 198.18.9.2/24 ──────── r-lb 198.18.9.1 ┤ client traffic in (xlb attached)
//!  {p}-lb eth1 198.18.19.2/24 ─────── r-lb2 198.18.19.1┤ the balancer's way to routed targets
//!  {p}-lb lb-t1 198.18.10.1 ── t1 eth0 198.18.10.11   │ dsr targets: L2-adjacent to the
//!  {p}-lb lb-t2 198.18.11.1 ── t2 eth0 198.18.11.12   │ balancer, their default route
//!         t1 eth1 198.18.31.2/24 ── r-t1 198.18.31.1 ┤ (replies) via the router
//!         t2 eth1 198.18.32.2/24 ── r-t2 198.18.32.1 ┤
//!  {p}-t3 eth0 198.18.21.2/24 ── r-t3 198.18.21.1/24 ┤ tunnel targets on routed segments
//!  {p}-t4 eth0 198.18.22.2/24 ── r-t4 198.18.22.1/24 ┘
//! ```
//!
//! Direct veths, and the balancer sends out of another interface than the one a packet came in on
//! (`XDP_REDIRECT`) in both modes: frames sent back out of the same veth (`XDP_TX`) need an XDP
//! program on the peer (see `netns::xdp_receiver`). Each target is prepared with
//! `xlb target-setup --apply` as a user would.
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    netns::{BpfFs, Netns, veth},
    procs::Children,
    rig::{balancer_sysctls, host_side_offloads},
};

pub const DSR_VIP: &str = "198.18.100.20";
pub const TUNNEL_VIP: &str = "198.18.100.21";
/// An IPv6 VIP tunnelled to the IPv6 addresses of targets 3 and 4 (IPv6-in-IPv6), and an IPv4
/// VIP tunnelled to the same (IPv4-in-IPv6).
pub const TUNNEL_VIP6: &str = "2001:db8:100::21";
pub const TUNNEL_VIP46: &str = "198.18.100.22";
pub const TUNNEL_PREFIX6: &str = "2001:db8:250::/64";
pub const PORT: u16 = 80;
/// Outer sources of tunnelled packets.
pub const TUNNEL_PREFIX: &str = "198.18.250.0/24";

/// Target K's IPv6 address (3, 4: the routed tunnel targets).
pub fn dsr_target6(k: usize) -> String {
    format!("2001:db8:{}::2", 18 + k)
}

/// Target K's address (1, 2 next to the balancer; 3, 4 routed).
pub fn dsr_target(k: usize) -> String {
    match k {
        1 | 2 => format!("198.18.{}.{}", 9 + k, 10 + k),
        _ => format!("198.18.{}.2", 18 + k),
    }
}

pub struct DsrRig {
    pub children: Children,
    prefix: String,
    /// A BPF filesystem of the rig's own, where the tunnel targets pin their decapsulation.
    bpffs: BpfFs,
    pub client: Netns,
    pub router: Netns,
    pub lb: Netns,
    pub targets: Vec<Netns>,
}

impl DsrRig {
    pub fn up(prefix: &str) -> anyhow::Result<Self> {
        assert!(prefix.starts_with("xlb"), "rig prefix must start with xlb");
        let bpffs = BpfFs::mount(std::env::temp_dir().join(format!("{prefix}-bpffs")))?;
        let mut rig = Self {
            children: Children::default(),
            prefix: prefix.to_owned(),
            bpffs,
            client: Netns::create(&format!("{prefix}-client"))?,
            router: Netns::create(&format!("{prefix}-router"))?,
            lb: Netns::create(&format!("{prefix}-lb"))?,
            targets: Vec::new(),
        };
        for k in 1..=4 {
            rig.targets.push(Netns::create(&format!("{prefix}-t{k}"))?);
        }
        rig.wire().context("wiring the DSR rig")?;
        Ok(rig)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let r = &self.router;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ] {
            r.sysctl(key, value)?;
        }
        veth(&self.client, "eth0", r, "r-c")?;
        r.exec("ip addr add 198.18.0.1/24 dev r-c")?;
        r.exec("ip -6 addr add 2001:db8::1/64 dev r-c nodad")?;
        self.client.exec("ip addr add 198.18.0.2/24 dev eth0")?;
        self.client.exec("ip route add default via 198.18.0.1")?;
        self.client
            .exec("ip -6 addr add 2001:db8::2/64 dev eth0 nodad")?;
        self.client
            .exec("ip -6 route add default via 2001:db8::1")?;
        host_side_offloads(&self.client)?;

        let lb = &self.lb;
        veth(lb, "eth0", r, "r-lb")?;
        veth(lb, "eth1", r, "r-lb2")?;
        r.exec("ip addr add 198.18.9.1/24 dev r-lb")?;
        r.exec("ip addr add 198.18.19.1/24 dev r-lb2")?;
        // Frames the balancer redirects arrive on r-lb2 (tunnel): the veth needs GRO there.
        r.exec("ethtool -K r-lb2 gro on")?;
        lb.exec("ip addr add 198.18.9.2/24 dev eth0")?;
        lb.exec("ip addr add 198.18.19.2/24 dev eth1")?;
        lb.exec("ip route add default via 198.18.19.1")?;
        r.exec("ip -6 addr add 2001:db8:9::1/64 dev r-lb nodad")?;
        r.exec("ip -6 addr add 2001:db8:19::1/64 dev r-lb2 nodad")?;
        lb.exec("ip -6 addr add 2001:db8:9::2/64 dev eth0 nodad")?;
        lb.exec("ip -6 addr add 2001:db8:19::2/64 dev eth1 nodad")?;
        lb.exec("ip -6 route add default via 2001:db8:19::1")?;
        lb.exec("ethtool -K eth0 tx off")?;
        lb.exec("ethtool -K eth1 tx off")?;
        balancer_sysctls(lb)?;
        r.exec("ip route add 198.18.100.0/24 via 198.18.9.2")?;
        r.exec("ip -6 route add 2001:db8:100::/64 via 2001:db8:9::2")?;

        for (i, t) in self.targets.iter().enumerate() {
            let k = i + 1;
            if k <= 2 {
                let net = 9 + k;
                veth(t, "eth0", lb, &format!("lb-t{k}"))?;
                lb.exec(&format!("ip addr add 198.18.{net}.1/24 dev lb-t{k}"))?;
                lb.exec(&format!("ethtool -K lb-t{k} tx off"))?;
                t.exec(&format!("ip addr add {}/24 dev eth0", dsr_target(k)))?;
                let back = 30 + k;
                veth(t, "eth1", r, &format!("r-t{k}"))?;
                r.exec(&format!("ip addr add 198.18.{back}.1/24 dev r-t{k}"))?;
                t.exec(&format!("ip addr add 198.18.{back}.2/24 dev eth1"))?;
                t.exec(&format!("ip route add default via 198.18.{back}.1"))?;
                t.exec("ethtool -K eth1 tx off")?;
            } else {
                let net = 18 + k;
                veth(t, "eth0", r, &format!("r-t{k}"))?;
                r.exec(&format!("ip addr add 198.18.{net}.1/24 dev r-t{k}"))?;
                t.exec(&format!("ip addr add {}/24 dev eth0", dsr_target(k)))?;
                t.exec(&format!("ip route add default via 198.18.{net}.1"))?;
                r.exec(&format!(
                    "ip -6 addr add 2001:db8:{net}::1/64 dev r-t{k} nodad"
                ))?;
                t.exec(&format!(
                    "ip -6 addr add {}/64 dev eth0 nodad",
                    dsr_target6(k)
                ))?;
                t.exec(&format!("ip -6 route add default via 2001:db8:{net}::1"))?;
            }
            host_side_offloads(t)?;
        }
        Ok(())
    }

    /// Prepare target K as the README tells users: `xlb target-setup --apply` for its
    /// listeners' VIPs (and the decapsulation, for the tunnel targets: attached by the first,
    /// kept by the others).
    pub fn set_up_target(&self, xlb: &Path, k: usize) -> anyhow::Result<()> {
        if k <= 2 {
            return self.set_up_vip(xlb, k, DSR_VIP, "dsr");
        }
        for vip in [TUNNEL_VIP, TUNNEL_VIP6, TUNNEL_VIP46] {
            self.set_up_vip(xlb, k, vip, "tunnel")?;
        }
        Ok(())
    }

    fn set_up_vip(&self, xlb: &Path, k: usize, vip: &str, mode: &str) -> anyhow::Result<()> {
        let mut cmd = self.targets[k - 1].command(&xlb.display().to_string());
        cmd.args([
            "target-setup",
            "--vip",
            vip,
            "--mode",
            mode,
            "--apply",
            "--record",
        ])
        .arg(self.record_of(k, vip))
        .arg("--pin-dir")
        .arg(self.pin_dir(k));
        if mode == "tunnel" {
            cmd.args(["--iface", "eth0"]);
        }
        let out = cmd.output().context("running xlb target-setup")?;
        anyhow::ensure!(
            out.status.success(),
            "target-setup on t{k}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Start `cmd` (a command in target K's namespace) as its server; `ready` is what it
    /// prints once it listens.
    pub fn start_server(
        &mut self,
        k: usize,
        cmd: std::process::Command,
        ready: &str,
    ) -> anyhow::Result<()> {
        self.children
            .spawn_until(&format!("server-{k}"), cmd, ready)
    }

    /// xlb-backend on target K: port 80 answering `backend-K`.
    pub fn start_backend(&mut self, backend: &Path, k: usize) -> anyhow::Result<()> {
        let mut cmd = self.targets[k - 1].command(&backend.display().to_string());
        cmd.args(["--name", &format!("backend-{k}"), "--http"])
            .arg(format!("[::]:{PORT}"))
            .args(["--udp", "[::]:9000"]);
        self.start_server(k, cmd, "ready")
    }

    /// The agent in the balancer's namespace; returns once it is ready.
    pub fn start_agent(&mut self, xlb: &Path, config: &Path) -> anyhow::Result<()> {
        let mut cmd = self.lb.command(&xlb.display().to_string());
        cmd.args(["run", "--config"]).arg(config);
        self.children
            .spawn_until("xlb", cmd, "ready; control socket")
    }

    /// Where target K pins its decapsulation program.
    pub fn pin_dir(&self, k: usize) -> PathBuf {
        self.bpffs.0.join(format!("t{k}"))
    }

    /// Where target K's `target-setup --apply` keeps its record (of its first VIP).
    pub fn record(&self, k: usize) -> PathBuf {
        let vip = if k <= 2 { DSR_VIP } else { TUNNEL_VIP };
        self.record_of(k, vip)
    }

    /// Where target K's `target-setup --apply` for `vip` keeps its record.
    pub fn record_of(&self, k: usize, vip: &str) -> PathBuf {
        let vip = vip.replace(':', "_");
        std::env::temp_dir().join(format!("{}-t{k}-{vip}-setup.json", self.prefix))
    }

    /// The agent's config: a dsr listener on targets 1-2, a tunnel listener on targets 3-4,
    /// health checks every second.
    pub fn config(&self, socket: &Path, state: &Path) -> String {
        let group = |name: &str, ks: [usize; 2]| {
            let addr = |k: usize| {
                if name == "routed6" {
                    dsr_target6(k)
                } else {
                    dsr_target(k)
                }
            };
            let list = ks
                .iter()
                .map(|k| format!("{{ address = \"{}\" }}", addr(*k)))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "[[target_group]]\nname = \"{name}\"\nport = {PORT}\nderegistration_delay = 2\ntargets = [{list}]\n\
[target_group.health_check]\ninterval = 1\ntimeout = 1\nhealthy_threshold = 2\nunhealthy_threshold = 2\n"
            )
        };
        format!(
            "interfaces = [\"eth0\"]\ncontrol_socket = \"{}\"\nstate_file = \"{}\"\n\
[tunnel]\nsource_prefix = \"{TUNNEL_PREFIX}\"\nsource_prefix6 = \"{TUNNEL_PREFIX6}\"\n\
[[listener]]\nname = \"dsr\"\nvip = \"{DSR_VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\ntarget_group = \"segment\"\nmode = \"dsr\"\n\
[[listener]]\nname = \"tun\"\nvip = \"{TUNNEL_VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\ntarget_group = \"routed\"\nmode = \"tunnel\"\n\
[[listener]]\nname = \"tun6\"\nvip = \"{TUNNEL_VIP6}\"\nport = {PORT}\nprotocol = \"tcp\"\ntarget_group = \"routed6\"\nmode = \"tunnel\"\n\
[[listener]]\nname = \"tun46\"\nvip = \"{TUNNEL_VIP46}\"\nport = {PORT}\nprotocol = \"tcp\"\ntarget_group = \"routed6\"\nmode = \"tunnel\"\n\
{}{}{}",
            socket.display(),
            state.display(),
            group("segment", [1, 2]),
            group("routed", [3, 4]),
            group("routed6", [3, 4]),
        )
    }

    /// The balancer's interfaces.
    pub fn lb_interfaces(&self) -> [&'static str; 4] {
        ["eth0", "eth1", "lb-t1", "lb-t2"]
    }

    /// Bytes received plus sent by all of the balancer's interfaces so far.
    pub fn lb_bytes(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for dev in self.lb_interfaces() {
            for dir in ["rx", "tx"] {
                let n = self
                    .lb
                    .exec(&format!("cat /sys/class/net/{dev}/statistics/{dir}_bytes"))?;
                total += n.trim().parse::<u64>()?;
            }
        }
        Ok(total)
    }
}

impl Drop for DsrRig {
    fn drop(&mut self) {
        // Processes first, then (field drops) the pins (unmounting the rig's BPF filesystem
        // releases the decapsulation links), then the namespaces.
        self.children.stop_all();
        for k in 1..=4 {
            for vip in [DSR_VIP, TUNNEL_VIP, TUNNEL_VIP6, TUNNEL_VIP46] {
                let _ = std::fs::remove_file(self.record_of(k, vip));
            }
        }
    }
}
