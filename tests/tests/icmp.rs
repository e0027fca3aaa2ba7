//! Path-MTU discovery through a NAT listener, with real clients: the client sits behind a router
//! whose link towards it has MTU 1280 (the client's own MTU is 1500, so TCP's MSS does not hide
//! it). The router's "fragmentation needed" about the targets' 1500-byte replies is addressed
//! to the VIP; the balancer sends it on to the flow's target, which lowers its segment size,
//! and a 12 MB download completes.
mod common;

use std::process::Command;

use common::{TempDir, xlb_bin};
use xlb_rig::{
    Netns,
    netns::veth,
    procs::Children,
    rig::{balancer_sysctls, host_side_offloads},
};

const VIP: &str = "198.18.100.10";
const VIP6: &str = "2001:db8:100::10";
const SIZE: u64 = 12 * 1024 * 1024;

struct Topo {
    children: Children,
    /// The router's side of the balancer's veth runs an XDP program: the balancer answers
    /// pings back out of that veth with XDP_TX (see `xdp_receiver`).
    _receiver: Option<xlb::dataplane::decap::Decap>,
    client: Netns,
    router: Netns,
    lb: Netns,
    targets: Vec<Netns>,
}

fn topology(prefix: &str) -> anyhow::Result<Topo> {
    let mut t = Topo {
        children: Children::default(),
        _receiver: None,
        client: Netns::create(&format!("{prefix}-client"))?,
        router: Netns::create(&format!("{prefix}-router"))?,
        lb: Netns::create(&format!("{prefix}-lb"))?,
        targets: vec![
            Netns::create(&format!("{prefix}-t1"))?,
            Netns::create(&format!("{prefix}-t2"))?,
        ],
    };
    let (c, r, lb) = (&t.client, &t.router, &t.lb);
    veth(c, "eth0", r, "r-c")?;
    c.exec("ip addr add 198.18.0.2/24 dev eth0")?;
    c.exec("ip route add default via 198.18.0.1")?;
    c.exec("ip -6 addr add 2001:db8::2/64 dev eth0 nodad")?;
    c.exec("ip -6 route add default via 2001:db8::1")?;
    host_side_offloads(c)?;
    r.exec("ip addr add 198.18.0.1/24 dev r-c")?;
    r.exec("ip -6 addr add 2001:db8::1/64 dev r-c nodad")?;
    // The narrow link: the router cannot send the client more than 1280 bytes (IPv6's
    // minimum MTU, so IPv6 has to discover it too).
    r.exec("ip link set r-c mtu 1280")?;
    r.sysctl("net.ipv4.ip_forward", "1")?;
    r.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    veth(r, "r-lb", lb, "lb-c")?;
    r.exec("ip addr add 198.18.50.1/24 dev r-lb")?;
    r.exec("ip route add 198.18.100.0/24 via 198.18.50.2")?;
    r.exec("ip -6 addr add 2001:db8:50::1/64 dev r-lb nodad")?;
    r.exec("ip -6 route add 2001:db8:100::/64 via 2001:db8:50::2")?;
    // The balancer redirects replies into r-lb: that veth needs GRO.
    r.exec("ethtool -K r-lb gro on")?;
    lb.exec("ip addr add 198.18.50.2/24 dev lb-c")?;
    lb.exec("ip route add 198.18.0.0/24 via 198.18.50.1")?;
    lb.exec("ip -6 addr add 2001:db8:50::2/64 dev lb-c nodad")?;
    lb.exec("ip -6 route add 2001:db8::/64 via 2001:db8:50::1")?;
    lb.exec("ethtool -K lb-c tx off")?;
    balancer_sysctls(lb)?;
    for (i, tns) in t.targets.iter().enumerate() {
        let k = i + 1;
        veth(tns, "eth0", lb, &format!("lb-t{k}"))?;
        lb.exec(&format!("ip addr add 198.18.{k}.1/24 dev lb-t{k}"))?;
        tns.exec(&format!("ip addr add 198.18.{k}.2/24 dev eth0"))?;
        tns.exec(&format!("ip route add default via 198.18.{k}.1"))?;
        lb.exec(&format!(
            "ip -6 addr add 2001:db8:{k}::1/64 dev lb-t{k} nodad"
        ))?;
        tns.exec(&format!("ip -6 addr add 2001:db8:{k}::2/64 dev eth0 nodad"))?;
        tns.exec(&format!("ip -6 route add default via 2001:db8:{k}::1"))?;
        host_side_offloads(tns)?;
    }
    t._receiver = Some(xlb_rig::netns::xdp_receiver(&t.router, "r-lb")?);
    Ok(t)
}

/// The topology with python's http.server on both targets (a 12 MB file) and the agent.
fn start(tag: &str) -> (Topo, TempDir, std::path::PathBuf) {
    let prefix = format!("xlb-{tag}-{}", std::process::id());
    let dir = TempDir(std::env::temp_dir().join(&prefix));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut t = topology(&prefix).unwrap();
    for k in 1..=2 {
        let files = dir.0.join(format!("files-{k}"));
        std::fs::create_dir_all(&files).unwrap();
        std::fs::File::create(files.join("big"))
            .unwrap()
            .set_len(SIZE)
            .unwrap();
        let mut cmd = t.targets[k - 1].command("python3");
        cmd.args([
            "-u",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "::",
            "--directory",
        ])
        .arg(&files);
        t.children
            .spawn_until(&format!("server-{k}"), cmd, "Serving HTTP")
            .unwrap();
    }
    let socket = dir.0.join("xlb.sock");
    let config = dir.0.join("xlb.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [\"lb-c\", \"lb-t1\", \"lb-t2\"]\ncontrol_socket = \"{}\"\nstate_file = \"{}\"\n\
[[listener]]\nname = \"web\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web\"\n\
[[listener]]\nname = \"udp\"\nvip = \"{VIP}\"\nport = 9999\nprotocol = \"udp\"\ntarget_group = \"web\"\n\
[[target_group]]\nname = \"web\"\nport = 8080\ntargets = [{{ address = \"198.18.1.2\" }}, {{ address = \"198.18.2.2\" }}]\n\
health_check = {{ enabled = false }}\n\
[[listener]]\nname = \"web6\"\nvip = \"{VIP6}\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web6\"\n\
[[target_group]]\nname = \"web6\"\nport = 8080\ntargets = [{{ address = \"2001:db8:1::2\" }}, {{ address = \"2001:db8:2::2\" }}]\n\
health_check = {{ enabled = false }}\n",
            socket.display(),
            dir.0.join("state.json").display()
        ),
    )
    .unwrap();
    let mut cmd = t.lb.command(&xlb_bin().display().to_string());
    cmd.args(["run", "--config"]).arg(&config);
    t.children
        .spawn_until("xlb", cmd, "ready; control socket")
        .unwrap();
    (t, dir, socket)
}

fn reason(socket: &std::path::Path, name: &str) -> u64 {
    let status = Command::new(xlb_bin())
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_download_behind_a_smaller_mtu_link_completes_with_path_mtu_discovery() {
    let (t, _dir, socket) = start("pmtu");
    for attempt in 0..2 {
        let (got, secs) = common::download(&t.client, &format!("http://{VIP}/big"));
        eprintln!("download {attempt}: {got} bytes in {secs} s");
        assert_eq!(
            got, SIZE,
            "the whole file arrives through the 1280-byte link"
        );
    }
    let icmp = reason(&socket, "ev_icmp_to_target");
    eprintln!("ICMP errors sent on to targets: {icmp}");
    assert!(
        icmp > 0,
        "the router's errors reached the targets through xlb"
    );
    drop(t);
}

#[test]
fn an_ipv6_download_behind_a_smaller_mtu_link_completes_with_path_mtu_discovery() {
    let (t, _dir, socket) = start("pmtu6");
    let (got, secs) = common::download(&t.client, &format!("http://[{VIP6}]/big"));
    eprintln!("IPv6 download: {got} bytes in {secs} s");
    assert_eq!(
        got, SIZE,
        "the whole file arrives through the 1280-byte link"
    );
    let icmp = reason(&socket, "ev_icmp_to_target");
    eprintln!("ICMPv6 errors sent on to targets: {icmp}");
    assert!(
        icmp > 0,
        "the router's packet-too-big reached the targets through xlb"
    );
    drop(t);
}

#[test]
fn ping_to_the_vip_is_answered_by_the_balancer() {
    let (t, _dir, socket) = start("ping");
    let out = t
        .client
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "1", VIP])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 received"), "{text}");
    assert_eq!(reason(&socket, "tx_icmp_echo"), 3);
    let out = t
        .client
        .command("ping")
        .args(["-6", "-c", "3", "-i", "0.2", "-W", "1", VIP6])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("3 received"),
        "{text}"
    );
    assert_eq!(reason(&socket, "tx_icmp_echo"), 6);
}

/// A UDP datagram to a port no target serves: the target's "port unreachable" comes back through
/// the balancer translated, so the client's socket sees it (from the VIP, quoting VIP:9999) and
/// reports "connection refused" at once instead of waiting in vain.
#[test]
fn a_targets_port_unreachable_reaches_the_client_as_connection_refused() {
    let (t, _dir, socket) = start("unreach");
    let probe = "import socket\n\
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
s.settimeout(3)\n\
s.connect(('198.18.100.10', 9999))\n\
s.send(b'anyone?')\n\
try:\n    s.recv(64)\n    print('answered')\n\
except ConnectionRefusedError:\n    print('refused')\n\
except socket.timeout:\n    print('timeout')\n";
    let out = t
        .client
        .command("python3")
        .args(["-c", probe])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!("client: {said} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(said, "refused");
    assert!(reason(&socket, "ev_icmp_to_client") >= 1);
}
