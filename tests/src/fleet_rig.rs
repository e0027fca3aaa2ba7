//! A fleet: several xlb nodes behind a router that spreads flows over them with ECMP, each
//! node announcing the VIP over BGP with BIRD, the targets replying through the router.
//!
//! ```text
//!  {p}-client eth0 198.18.0.2/24 ── r-c 198.18.0.1/24 ┐ {p}-router: BIRD, BGP with each
//!                                                      │ node; the VIP's route has one
//!  {p}-n1 eth0 198.18.201.2/24 ───── r-n1 198.18.201.1 ┤ next hop per node announcing it
//!        eth1 198.18.211.2/24 ───── r-b1 198.18.211.1 ┤ (L4 hash, policy 1)
//!  {p}-n2 eth0 198.18.202.2 / eth1 198.18.212.2 ───── ┤ nodes: xlb (tunnel mode: in on
//!  {p}-n3 eth0 198.18.203.2 / eth1 198.18.213.2 ───── ┤ eth0, encapsulated out of eth1)
//!                                                      │ and BIRD (`xlb bird-config`)
//!  {p}-t1 eth0 198.18.31.2/24 ─────── r-t1 198.18.31.1 ┤ targets: decapsulate, answer
//!  {p}-t2 eth0 198.18.32.2/24 ─────── r-t2 198.18.32.1 ┤ from the VIP via the router
//!  {p}-t3 eth0 198.18.33.2/24 ─────── r-t3 198.18.33.1 ┘ (t3: not in the config file)
//! ```
//!
//! Every node has the same config but its own BGP identity: the same target for the same
//! flow comes from Maglev alone, no state is shared between nodes.
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    netns::{BpfFs, Netns, veth},
    procs::Children,
    rig::{balancer_sysctls, host_side_offloads},
};

pub const FLEET_VIP: &str = "198.18.100.30";
pub const PORT: u16 = 80;
pub const ROUTER_AS: u32 = 65000;
pub const NODE_AS: u32 = 65001;
pub const TUNNEL_PREFIX: &str = "198.18.250.0/24";
/// BGP hold time (s) on both sides: a silent node is withdrawn within this.
pub const HOLD_TIME_S: u32 = 3;
/// Targets on the rig; the nodes' config names the first two (the third joins at run time).
pub const TARGETS: usize = 3;

pub fn node_addr(k: usize) -> String {
    format!("198.18.{}.2", 200 + k)
}

pub fn fleet_target(k: usize) -> String {
    format!("198.18.{}.2", 30 + k)
}

/// What a node's config has beyond the fleet's common one.
#[derive(Clone, Default)]
pub struct NodeExtra {
    /// Lines in the listener (e.g. `min_healthy_targets = 2`).
    pub listener: String,
    /// Lines in `[tables]` (e.g. `previous_table_window = 0`).
    pub tables: String,
}

pub struct FleetRig {
    pub children: Children,
    pub prefix: String,
    pub dir: PathBuf,
    bpffs: BpfFs,
    pub client: Netns,
    pub router: Netns,
    pub nodes: Vec<Netns>,
    pub targets: Vec<Netns>,
    /// Last: the directory goes after the BPF filesystem in it is unmounted.
    _dir: RemoveDir,
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl FleetRig {
    /// Namespaces and links for `nodes` nodes and [`TARGETS`] targets; nothing started yet.
    pub fn up(prefix: &str, nodes: usize) -> anyhow::Result<Self> {
        assert!(prefix.starts_with("xlb"), "rig prefix must start with xlb");
        let dir = std::env::temp_dir().join(prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let bpffs = BpfFs::mount(dir.join("bpffs"))?;
        let mut rig = Self {
            children: Children::default(),
            prefix: prefix.to_owned(),
            dir: dir.clone(),
            bpffs,
            client: Netns::create(&format!("{prefix}-client"))?,
            router: Netns::create(&format!("{prefix}-router"))?,
            nodes: Vec::new(),
            targets: Vec::new(),
            _dir: RemoveDir(dir.clone()),
        };
        for k in 1..=nodes {
            rig.nodes.push(Netns::create(&format!("{prefix}-n{k}"))?);
        }
        for k in 1..=TARGETS {
            rig.targets.push(Netns::create(&format!("{prefix}-t{k}"))?);
        }
        rig.wire().context("wiring the fleet rig")?;
        Ok(rig)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let r = &self.router;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            // ECMP by the 5-tuple, not by addresses only: one client's connections spread.
            ("net.ipv4.fib_multipath_hash_policy", "1"),
        ] {
            r.sysctl(key, value)?;
        }
        veth(&self.client, "eth0", r, "r-c")?;
        r.exec("ip addr add 198.18.0.1/24 dev r-c")?;
        self.client.exec("ip addr add 198.18.0.2/24 dev eth0")?;
        self.client.exec("ip route add default via 198.18.0.1")?;
        host_side_offloads(&self.client)?;
        for (i, n) in self.nodes.iter().enumerate() {
            let k = i + 1;
            veth(n, "eth0", r, &format!("r-n{k}"))?;
            veth(n, "eth1", r, &format!("r-b{k}"))?;
            r.exec(&format!("ip addr add 198.18.{}.1/24 dev r-n{k}", 200 + k))?;
            r.exec(&format!("ip addr add 198.18.{}.1/24 dev r-b{k}", 210 + k))?;
            // Frames the node redirects out of eth1 arrive on r-bK: GRO there.
            r.exec(&format!("ethtool -K r-b{k} gro on"))?;
            n.exec(&format!("ip addr add {}/24 dev eth0", node_addr(k)))?;
            n.exec(&format!("ip addr add 198.18.{}.2/24 dev eth1", 210 + k))?;
            n.exec(&format!("ip route add default via 198.18.{}.1", 210 + k))?;
            n.exec("ethtool -K eth0 tx off")?;
            n.exec("ethtool -K eth1 tx off")?;
            balancer_sysctls(n)?;
        }
        for (i, t) in self.targets.iter().enumerate() {
            let k = i + 1;
            veth(t, "eth0", r, &format!("r-t{k}"))?;
            r.exec(&format!("ip addr add 198.18.{}.1/24 dev r-t{k}", 30 + k))?;
            t.exec(&format!("ip addr add {}/24 dev eth0", fleet_target(k)))?;
            t.exec(&format!("ip route add default via 198.18.{}.1", 30 + k))?;
            host_side_offloads(t)?;
        }
        Ok(())
    }

    /// The router's BIRD: a BGP session with each node, the VIP routes merged into one
    /// multipath route in the kernel.
    pub fn router_bird_config(&self) -> String {
        let mut c = String::from(
            "log stderr all;\nrouter id 198.18.0.1;\nprotocol device { scan time 10; }\n\
             protocol kernel { ipv4 { import none; export all; }; merge paths on; }\n",
        );
        for k in 1..=self.nodes.len() {
            c.push_str(&format!(
                "protocol bgp node{k} {{\n  local 198.18.{}.1 as {ROUTER_AS};\n  neighbor {} as {NODE_AS};\n  \
                 hold time {HOLD_TIME_S}; keepalive time 1; connect retry time 1;\n  \
                 ipv4 {{ import all; export none; }};\n}}\n",
                200 + k,
                node_addr(k)
            ));
        }
        c
    }

    pub fn start_router_bird(&mut self) -> anyhow::Result<()> {
        let conf = self.dir.join("router-bird.conf");
        std::fs::write(&conf, self.router_bird_config())?;
        let mut cmd = self.router.command("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(self.bird_socket(0))
            .arg("-P")
            .arg(self.dir.join("router-bird.pid"));
        self.children.spawn_until("bird-router", cmd, "Started")
    }

    /// BIRD's control socket on node K (0: the router).
    pub fn bird_socket(&self, k: usize) -> PathBuf {
        self.dir.join(format!("bird{k}.sock"))
    }

    /// Node K's agent config: the same listener and targets (1 and 2) on every node, its own
    /// socket, state file and BGP identity, and `extra`.
    pub fn node_config(&self, k: usize, extra: &NodeExtra) -> String {
        let tables = if extra.tables.is_empty() {
            String::new()
        } else {
            format!("[tables]\n{}\n", extra.tables)
        };
        let listener_extra = &extra.listener;
        let targets = (1..=2)
            .map(|t| format!("{{ address = \"{}\" }}", fleet_target(t)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "interfaces = [\"eth0\"]\ncontrol_socket = \"{}\"\nstate_file = \"{}\"\npin_dir = \"{}\"\n{tables}\
[tunnel]\nsource_prefix = \"{TUNNEL_PREFIX}\"\n\
[bgp]\nlocal_as = {NODE_AS}\nrouter_id = \"{addr}\"\nhold_time = {HOLD_TIME_S}\n\
[[bgp.peer]]\naddress = \"198.18.{net}.1\"\nas = {ROUTER_AS}\n\
[[listener]]\nname = \"web\"\nvip = \"{FLEET_VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\ntarget_group = \"web\"\nmode = \"tunnel\"\n{listener_extra}\n\
[[target_group]]\nname = \"web\"\nport = {PORT}\nderegistration_delay = 2\ntargets = [{targets}]\n\
[target_group.health_check]\ninterval = 1\ntimeout = 1\nhealthy_threshold = 2\nunhealthy_threshold = 2\n",
            self.socket(k).display(),
            self.dir.join(format!("n{k}-state.json")).display(),
            // The rig's own BPF filesystem: the node's data plane outlives its agent.
            self.bpffs.0.join(format!("n{k}")).display(),
            addr = node_addr(k),
            net = 200 + k,
        )
    }

    pub fn config_path(&self, k: usize) -> PathBuf {
        self.dir.join(format!("n{k}.toml"))
    }

    pub fn socket(&self, k: usize) -> PathBuf {
        self.dir.join(format!("n{k}.sock"))
    }

    /// Node K: its config written, BIRD configured by `xlb bird-config` and started, then
    /// the agent; returns once the agent is ready.
    pub fn start_node(&mut self, xlb: &Path, k: usize, extra: &NodeExtra) -> anyhow::Result<()> {
        std::fs::write(self.config_path(k), self.node_config(k, extra))?;
        let out = std::process::Command::new(xlb)
            .args(["bird-config", "--config"])
            .arg(self.config_path(k))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "xlb bird-config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = self.dir.join(format!("n{k}-bird.conf"));
        // The rig's one addition: BIRD's log on stderr, for the test's output.
        std::fs::write(
            &conf,
            format!("log stderr all;\n{}", String::from_utf8(out.stdout)?),
        )?;
        let mut cmd = self.nodes[k - 1].command("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(self.bird_socket(k))
            .arg("-P")
            .arg(self.dir.join(format!("n{k}-bird.pid")));
        self.children
            .spawn_until(&format!("bird-n{k}"), cmd, "Started")?;
        self.start_agent(xlb, k)
    }

    pub fn start_agent(&mut self, xlb: &Path, k: usize) -> anyhow::Result<()> {
        let mut cmd = self.nodes[k - 1].command(&xlb.display().to_string());
        cmd.args(["run", "--config"]).arg(self.config_path(k));
        self.children
            .spawn_until(&format!("xlb-n{k}"), cmd, "ready; control socket")
    }

    /// Target K: prepared with `xlb target-setup --mode tunnel --apply`, serving xlb-backend
    /// (`backend-K`) on port 80.
    pub fn start_target(&mut self, xlb: &Path, backend: &Path, k: usize) -> anyhow::Result<()> {
        let t = &self.targets[k - 1];
        let out = t
            .command(&xlb.display().to_string())
            .args([
                "target-setup",
                "--vip",
                FLEET_VIP,
                "--mode",
                "tunnel",
                "--apply",
            ])
            .args(["--iface", "eth0", "--record"])
            .arg(self.dir.join(format!("t{k}-setup.json")))
            .arg("--pin-dir")
            .arg(self.bpffs.0.join(format!("t{k}")))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "target-setup on t{k}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.start_backend(backend, k)
    }

    /// xlb-backend on target K (again, after a stop).
    pub fn start_backend(&mut self, backend: &Path, k: usize) -> anyhow::Result<()> {
        let mut cmd = self.targets[k - 1].command(&backend.display().to_string());
        cmd.args(["--name", &format!("backend-{k}"), "--http"])
            .arg(format!("0.0.0.0:{PORT}"))
            .args(["--udp", "0.0.0.0:9000"]);
        self.children
            .spawn_until(&format!("backend-{k}"), cmd, "ready")
    }

    /// Make node K silent, as a node that lost power: the router drops every packet to or
    /// from its links (nftables), so its BGP session times out after the hold time.
    pub fn silence_node(&self, k: usize) -> anyhow::Result<()> {
        let mut rules = String::from("table inet xlb_cut {\n");
        for (chain, hook) in [("i", "input"), ("f", "forward"), ("o", "output")] {
            rules.push_str(&format!(
                "  chain {chain} {{ type filter hook {hook} priority 0;\n"
            ));
            for dev in [format!("r-n{k}"), format!("r-b{k}")] {
                if hook != "output" {
                    rules.push_str(&format!("    iifname \"{dev}\" drop\n"));
                }
                if hook != "input" {
                    rules.push_str(&format!("    oifname \"{dev}\" drop\n"));
                }
            }
            rules.push_str("  }\n");
        }
        rules.push_str("}\n");
        let file = self.dir.join(format!("cut-n{k}.nft"));
        std::fs::write(&file, rules)?;
        self.router.exec(&format!("nft -f {}", file.display()))?;
        Ok(())
    }

    /// The router's next hops for the VIP now (node addresses), from its kernel table.
    pub fn next_hops(&self) -> anyhow::Result<Vec<String>> {
        let out = self
            .router
            .exec(&format!("ip -4 route show {FLEET_VIP}/32"))?;
        let mut hops: Vec<String> = out
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_owned())
            .collect();
        hops.sort();
        Ok(hops)
    }

    /// Wait until the router's next hops for the VIP are exactly `nodes` (1-based); the time
    /// it took.
    pub fn wait_next_hops(
        &self,
        nodes: &[usize],
        limit: std::time::Duration,
    ) -> anyhow::Result<std::time::Duration> {
        let mut want: Vec<String> = nodes.iter().map(|k| node_addr(*k)).collect();
        want.sort();
        let start = std::time::Instant::now();
        loop {
            let now = self.next_hops()?;
            if now == want {
                return Ok(start.elapsed());
            }
            anyhow::ensure!(
                start.elapsed() < limit,
                "router next hops {now:?}, want {want:?}, after {limit:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for FleetRig {
    fn drop(&mut self) {
        // Processes first (agents withdraw and detach, BIRDs stop), then the pins (field
        // drops unmount the rig's BPF filesystem), then the namespaces.
        self.children.stop_all();
    }
}
