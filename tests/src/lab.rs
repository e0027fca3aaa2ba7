//! A namespace wired for running the real XDP program through BPF_PROG_TEST_RUN with known
//! routes, neighbours and MACs, so `bpf_fib_lookup` resolves to predictable next hops. Used by
//! the packet fixtures and by the benchmark.
use std::{net::IpAddr, path::Path, time::Duration};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use etherparse::PacketBuilder;
use lb_common::Stat;
use xlb::{
    EBPF_OBJECT,
    dataplane::{
        AyaDataplane,
        reconcile::{Plan, Reconciler},
    },
    model::{
        Endpoint,
        config::{self, Config},
    },
};

use crate::{Netns, netns::veth};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const VIP: [u8; 4] = [198, 18, 100, 10];
pub const VIP2: [u8; 4] = [198, 18, 100, 11];
/// Listener "dsr" (TCP 8080, mode dsr) and "tun" (TCP 8080, mode tunnel), group "web".
pub const VIP_DSR: [u8; 4] = [198, 18, 100, 12];
pub const VIP_TUN: [u8; 4] = [198, 18, 100, 13];
/// `tunnel.source_prefix` of the fixture config.
pub const TUNNEL_PREFIX: ([u8; 4], u8) = ([198, 18, 250, 0], 24);
pub const CLIENT: [u8; 4] = [198, 18, 0, 2];
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
pub const IN0_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// IPv6 listeners: "web6" (TCP 80, NAT, group "web6" on 8080), "dsr6" (TCP 8080, mode dsr,
/// group "web6"), "echo6" (UDP 9000, NAT, group "echo6").
pub const VIP6: [u8; 16] = v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10]);
pub const VIP6_DSR: [u8; 16] = v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x12]);
/// "tun6" (TCP 8080, mode tunnel, group "web6": IPv6-in-IPv6) and "tun46" (an IPv4 VIP, TCP
/// 8080, mode tunnel, group "web6": IPv4-in-IPv6).
pub const VIP6_TUN: [u8; 16] = v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x13]);
pub const VIP_TUN46: [u8; 4] = [198, 18, 100, 14];
/// "guarded": TCP 80 to group "web", allow 198.18.0.0/16, deny 198.18.0.0/24 (so the client,
/// 198.18.0.2, is denied); "guarded6": TCP 80 to "web6", allow 2001:db8::/48, deny
/// 2001:db8::2/128 (the client).
pub const VIP_GUARDED: [u8; 4] = [198, 18, 100, 15];
pub const VIP6_GUARDED: [u8; 16] = v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x15]);
/// `tunnel.source_prefix6` of the fixture config.
pub const TUNNEL_PREFIX6: [u8; 8] = [0x20, 0x01, 0x0d, 0xb8, 0x02, 0x50, 0, 0];
pub const CLIENT6: [u8; 16] = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 2]);

/// An IPv6 address from its eight 16-bit groups.
pub const fn v6(g: [u16; 8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 8 {
        a[2 * i] = (g[i] >> 8) as u8;
        a[2 * i + 1] = g[i] as u8;
        i += 1;
    }
    a
}

pub fn target(k: u8) -> [u8; 4] {
    [198, 18, k, 2]
}
/// Target K's IPv6 address, 2001:db8:K::2.
pub fn target6(k: u8) -> [u8; 16] {
    v6([0x2001, 0xdb8, u16::from(k), 0, 0, 0, 0, 2])
}
pub fn target_mac(k: u8) -> [u8; 6] {
    [2, 0, 0, 0, k, 2]
}
pub fn node_mac(k: u8) -> [u8; 6] {
    [2, 0, 0, 0, k, 1]
}
pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Which target (1..=3) a NAT'd IPv4 frame went to, by its destination address.
pub fn target_of(out: &[u8]) -> u8 {
    (1..=3u8)
        .find(|k| out[30..34] == target(*k))
        .unwrap_or_else(|| panic!("not to a target: {:02x?}", &out[..40]))
}

/// Which target (1..=3) a frame's destination MAC names, with the egress interface's MAC as
/// its source.
pub fn mac_target(frame: &[u8]) -> u8 {
    let k = (1..=3u8)
        .find(|k| frame[0..6] == target_mac(*k))
        .unwrap_or_else(|| panic!("not sent to a target's MAC: {:02x?}", &frame[0..12]));
    assert_eq!(
        frame[6..12],
        node_mac(k),
        "source MAC of the egress interface"
    );
    k
}

/// The Internet checksum (RFC 1071) over `parts` in order (a pseudo-header, then the message),
/// from scratch rather than with xlb's code: 0 when a valid checksum is in. Every part but the
/// last has an even length.
pub fn ones_complement(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for bytes in parts {
        for c in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub fn config_text(web: &[u8]) -> String {
    let list = |port: u16| {
        web.iter()
            .map(|k| format!("{{ address = \"198.18.{k}.2\", port = {port} }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let list6 = |port: u16| {
        web.iter()
            .map(|k| format!("{{ address = \"2001:db8:{k}::2\", port = {port} }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"interfaces = ["in0"]
[tables]
maglev_size = 1021
max_listeners = 16
max_connections = 4096
[tunnel]
source_prefix = "198.18.250.0/24"
source_prefix6 = "2001:db8:250::/64"
[[listener]]
name = "web"
vip = "198.18.100.10"
port = 80
protocol = "tcp"
target_group = "web"
[[listener]]
name = "web2"
vip = "198.18.100.11"
port = 80
protocol = "tcp"
target_group = "web"
[[listener]]
name = "dsr"
vip = "198.18.100.12"
port = 8080
protocol = "tcp"
target_group = "web"
mode = "dsr"
[[listener]]
name = "tun"
vip = "198.18.100.13"
port = 8080
protocol = "tcp"
target_group = "web"
mode = "tunnel"
[[listener]]
name = "echo"
vip = "198.18.100.10"
port = 9000
protocol = "udp"
target_group = "echo"
[[listener]]
name = "echo53"
vip = "198.18.100.10"
port = 53
protocol = "udp"
target_group = "echo"
udp_idle_timeout = 1
[[listener]]
name = "web6"
vip = "2001:db8:100::10"
port = 80
protocol = "tcp"
target_group = "web6"
[[listener]]
name = "dsr6"
vip = "2001:db8:100::12"
port = 8080
protocol = "tcp"
target_group = "web6"
mode = "dsr"
[[listener]]
name = "tun6"
vip = "2001:db8:100::13"
port = 8080
protocol = "tcp"
target_group = "web6"
mode = "tunnel"
[[listener]]
name = "tun46"
vip = "198.18.100.14"
port = 8080
protocol = "tcp"
target_group = "web6"
mode = "tunnel"
[[listener]]
name = "guarded"
vip = "198.18.100.15"
port = 80
protocol = "tcp"
target_group = "web"
allow_sources = ["198.18.0.0/16"]
deny_sources = ["198.18.0.0/24"]
new_flows_per_second_per_source = 50
[[listener]]
name = "guarded6"
vip = "2001:db8:100::15"
port = 80
protocol = "tcp"
target_group = "web6"
allow_sources = ["2001:db8::/48"]
deny_sources = ["2001:db8::2/128"]
[[listener]]
name = "echo6"
vip = "2001:db8:100::10"
port = 9000
protocol = "udp"
target_group = "echo6"
[[target_group]]
name = "web"
port = 8080
targets = [{}]
health_check = {{ enabled = false }}
[[target_group]]
name = "echo"
port = 9000
targets = [{}]
health_check = {{ enabled = false }}
[[target_group]]
name = "web6"
port = 8080
targets = [{}]
health_check = {{ enabled = false }}
[[target_group]]
name = "echo6"
port = 9000
targets = [{}]
health_check = {{ enabled = false }}
"#,
        list(8080),
        list(9000),
        list6(8080),
        list6(9000)
    )
}

pub fn cfg(web: &[u8]) -> Config {
    config::parse(Path::new("fixture.toml"), &config_text(web)).expect("fixture config is valid")
}

/// A namespace wired for the program: in0 faces the client, tK faces target K (K = 1..3).
/// Both ends of each veth stay in the namespace, so deleting it removes everything.
pub struct Lab {
    pub b: Reconciler<AyaDataplane>,
    pub in0: u32,
    pub t: Vec<u32>,
    last_stats: Vec<u64>,
    _ns: Netns,
}

pub struct Run {
    pub retval: u32,
    pub out: Vec<u8>,
    /// The kernel's average time per repetition.
    pub duration: Duration,
    /// Counter changes, by stat code.
    pub delta: Vec<u64>,
}

impl Run {
    pub fn changed(&self) -> Vec<Stat> {
        Stat::ALL
            .iter()
            .copied()
            .filter(|s| self.delta[*s as usize] != 0)
            .collect()
    }
    /// Exactly this verdict counter (and `events`) moved, each by one.
    pub fn counted(&self, verdict: Stat, events: &[Stat]) {
        let mut want = vec![verdict];
        want.extend_from_slice(events);
        want.sort_by_key(|s| *s as u32);
        assert_eq!(self.changed(), want);
        for s in want {
            assert_eq!(self.delta[s as usize], 1, "{s:?}");
        }
    }
}

impl Lab {
    pub fn new(tag: &str, web: &[u8]) -> Self {
        Self::with_object(tag, web, EBPF_OBJECT)
    }

    /// As [`Lab::new`], with another build of the balancer (one carrying measuring programs).
    pub fn with_object(tag: &str, web: &[u8], object: &[u8]) -> Self {
        Self::build(tag, &cfg(web), object)
    }

    /// As [`Lab::new`], the data plane started from `c` (its tables, its listeners).
    pub fn with_config(tag: &str, c: &Config) -> Self {
        Self::build(tag, c, EBPF_OBJECT)
    }

    /// As [`Lab::with_config`], with another build of the balancer.
    pub fn with_config_object(tag: &str, c: &Config, object: &[u8]) -> Self {
        Self::build(tag, c, object)
    }

    fn build(tag: &str, c: &Config, object: &[u8]) -> Self {
        let ns = Netns::create(&format!("xlb-fx-{}-{tag}", std::process::id())).unwrap();
        ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
        ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
        veth(&ns, "in0", &ns, "c0").unwrap();
        ns.exec(&format!("ip link set in0 address {}", mac(IN0_MAC)))
            .unwrap();
        ns.exec("ip addr add 198.18.0.1/24 dev in0").unwrap();
        ns.exec(&format!(
            "ip neigh replace 198.18.0.2 lladdr {} dev in0 nud permanent",
            mac(CLIENT_MAC)
        ))
        .unwrap();
        ns.exec("ip -6 addr add 2001:db8::1/64 dev in0 nodad")
            .unwrap();
        ns.exec(&format!(
            "ip -6 neigh replace 2001:db8::2 lladdr {} dev in0 nud permanent",
            mac(CLIENT_MAC)
        ))
        .unwrap();
        for k in 1..=3u8 {
            veth(&ns, &format!("t{k}"), &ns, &format!("p{k}")).unwrap();
            ns.exec(&format!("ip link set t{k} address {}", mac(node_mac(k))))
                .unwrap();
            ns.exec(&format!("ip addr add 198.18.{k}.1/24 dev t{k}"))
                .unwrap();
            ns.exec(&format!(
                "ip neigh replace 198.18.{k}.2 lladdr {} dev t{k} nud permanent",
                mac(target_mac(k))
            ))
            .unwrap();
            ns.exec(&format!("ip -6 addr add 2001:db8:{k}::1/64 dev t{k} nodad"))
                .unwrap();
            ns.exec(&format!(
                "ip -6 neigh replace 2001:db8:{k}::2 lladdr {} dev t{k} nud permanent",
                mac(target_mac(k))
            ))
            .unwrap();
        }
        // BPF_PROG_TEST_RUN resolves ingress_ifindex in the calling thread's namespace.
        ns.enter_current_thread().unwrap();
        let in0 = ns.ifindex("in0").unwrap();
        let t = (1..=3)
            .map(|k| ns.ifindex(&format!("t{k}")).unwrap())
            .collect();
        let dp = AyaDataplane::load(object, &c.tables).expect("XDP program loads and verifies");
        let mut b = Reconciler::new(dp, c.tables);
        b.apply(&Plan::from_config(c)).unwrap();
        let last_stats = b.snapshot().unwrap().stats;
        Self {
            b,
            in0,
            t,
            last_stats,
            _ns: ns,
        }
    }

    pub fn apply(&mut self, web: &[u8]) {
        self.b.apply(&Plan::from_config(&cfg(web))).unwrap();
    }

    pub fn apply_config(&mut self, c: &Config) {
        self.b.apply(&Plan::from_config(c)).unwrap();
    }

    /// Run `cmd` in the lab's namespace (routes, neighbours, sysctls of a fixture).
    pub fn exec(&self, cmd: &str) -> String {
        self._ns.exec(cmd).unwrap()
    }

    /// Take the counters as they are now as the base of the next [`Lab::run`]'s deltas (after
    /// packets sent around `run`).
    pub fn settle(&mut self) {
        self.last_stats = self.stats();
    }

    pub fn stats(&self) -> Vec<u64> {
        self.b.dataplane().reason_counters().unwrap()
    }

    /// Run one packet arriving on interface `ingress`.
    pub fn run(&mut self, pkt: &[u8], ingress: u32) -> Run {
        // Ingress interfaces and routes are looked up in the calling thread's namespace: this
        // lab's (a test may hold several).
        self._ns.enter_current_thread().unwrap();
        let prog = self.b.dataplane_mut().program().unwrap();
        let (retval, out, duration) = run_once(prog, pkt, ingress);
        let before = std::mem::take(&mut self.last_stats);
        let after = self.stats();
        let delta = after
            .iter()
            .zip(before.iter().chain(std::iter::repeat(&0)))
            .map(|(a, b)| a - b)
            .collect();
        self.last_stats = after;
        Run {
            retval,
            out,
            duration,
            delta,
        }
    }
}

/// One BPF_PROG_TEST_RUN of `prog` (repeat 1): return value, output packet, kernel-timed cost.
pub fn run_once(prog: &Xdp, pkt: &[u8], ingress: u32) -> (u32, Vec<u8>, Duration) {
    run_repeated(prog, pkt, ingress, 1)
}

/// BPF_PROG_TEST_RUN of `prog` on `pkt` arriving on `ingress`, `repeat` times: the last return
/// value, the output packet, and the kernel's average time per repetition.
pub fn run_repeated(prog: &Xdp, pkt: &[u8], ingress: u32, repeat: u32) -> (u32, Vec<u8>, Duration) {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let md: [u32; 6] = [0, u32::try_from(pkt.len()).unwrap(), 0, ingress, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut out = vec![0u8; pkt.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out, r.duration)
}

impl Lab {
    pub fn target_traffic(&self, k: u8) -> xlb::api::Traffic {
        let id = self
            .b
            .target_id(&Endpoint::new(IpAddr::from(target(k)), 8080))
            .unwrap();
        self.b.snapshot().unwrap().targets[id as usize].into()
    }
}

// ---- packets, built with etherparse ----

#[derive(Clone, Copy)]
pub enum Flags {
    Syn,
    Ack,
    SynAck,
}

pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: Flags, ttl: u8) -> Vec<u8> {
    let (smac, dmac) = (CLIENT_MAC, IN0_MAC);
    let mut b = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, ttl)
        .tcp(sport, dport, 1000, 64240);
    b = match flags {
        Flags::Syn => b.syn(),
        Flags::Ack => b.ack(5000),
        Flags::SynAck => b.syn().ack(1001),
    };
    let mut v = Vec::new();
    b.write(&mut v, b"payload!").unwrap();
    v
}

pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, b"hello")
        .unwrap();
    v
}

// ---- IPv6 packets ----

pub fn tcp6(
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    flags: Flags,
    hops: u8,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv6(src, dst, hops)
        .tcp(sport, dport, 1000, 64240);
    b = match flags {
        Flags::Syn => b.syn(),
        Flags::Ack => b.ack(5000),
        Flags::SynAck => b.syn().ack(1001),
    };
    let mut v = Vec::new();
    b.write(&mut v, b"payload!").unwrap();
    v
}

pub fn udp6(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv6(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}
