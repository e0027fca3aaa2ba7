//! Announcing VIPs over BGP, through BIRD.
//!
//! The agent keeps one route per announced VIP in the kernel routing table `bgp.table`
//! (`VIP/32` or `/128 dev <bgp.device> table <bgp.table>`). BIRD's kernel protocol learns that
//! table (`learn`) and its BGP protocols export those routes, with this node as next hop (see
//! [`bird_config`]). The table is consulted by no forwarding decision: the routes exist to be
//! announced. The device is a TUN device the agent's process holds open: when the agent exits
//! or dies, the kernel removes the device and every route on it, and BIRD withdraws them — a
//! node whose agent is gone announces nothing. When the data plane is pinned and outlives the
//! agent, the device is a persistent one instead: a crashed agent's node keeps announcing
//! what its data plane still serves, and the next agent takes the device over (no flap).
use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

use crate::{iproute, model::config::Bgp};

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error(
        "creating the announcement device {device:?}: {source} (is another agent running here, or is bgp.device taken?)"
    )]
    Device {
        device: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Route(String),
}

/// What `xlb run` announces: the routes it keeps, and the device they hang on.
pub struct Announcer {
    table: u32,
    device: String,
    /// The TUN device this process holds (gone with it), or `None` for a persistent device
    /// (the data plane is pinned and outlives the agent: so do its announcements).
    _tun: Option<tun_rs::SyncDevice>,
    current: BTreeSet<IpAddr>,
    /// Announcements a previous agent left (persistent device): not withdrawn before the
    /// health checks have had their say.
    adopted: BTreeSet<IpAddr>,
}

/// The VIPs routed on `device` in `table` now.
fn routes_on(device: &str, table: u32) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for fam in ["-4", "-6"] {
        let text = iproute::ip_output(&format!("{fam} route show table {table} dev {device}"))
            .unwrap_or_default();
        for line in text.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            let addr = first.split('/').next().unwrap_or("");
            if let Ok(a) = addr.parse() {
                out.insert(a);
            }
        }
    }
    out
}

fn host_route(vip: IpAddr) -> String {
    match vip {
        IpAddr::V4(a) => format!("-4 route replace {a}/32"),
        IpAddr::V6(a) => format!("-6 route replace {a}/128"),
    }
}

impl Announcer {
    /// Create the device (up, no address); nothing is announced yet. With `persistent` (the
    /// data plane outlives the agent), the device is a persistent one: a previous agent's is
    /// taken over with the announcements on it.
    pub fn create(bgp: &Bgp, persistent: bool) -> Result<Self, AnnounceError> {
        let dev_err = |e: String| AnnounceError::Device {
            device: bgp.device.clone(),
            source: std::io::Error::other(e),
        };
        if persistent {
            let exists = std::path::Path::new("/sys/class/net")
                .join(&bgp.device)
                .exists();
            if !exists {
                iproute::ip(&format!("tuntap add dev {} mode tun", bgp.device)).map_err(dev_err)?;
            }
            iproute::ip(&format!("link set {} up", bgp.device)).map_err(dev_err)?;
            let current = routes_on(&bgp.device, bgp.table);
            if !current.is_empty() {
                log::info!(
                    "kept {} announcement(s) of the previous agent: {current:?}",
                    current.len()
                );
            }
            return Ok(Self {
                table: bgp.table,
                device: bgp.device.clone(),
                _tun: None,
                adopted: current.clone(),
                current,
            });
        }
        let tun = tun_rs::DeviceBuilder::new()
            .name(&bgp.device)
            .enable(true)
            .build_sync()
            .map_err(|source| AnnounceError::Device {
                device: bgp.device.clone(),
                source,
            })?;
        Ok(Self {
            table: bgp.table,
            device: bgp.device.clone(),
            _tun: Some(tun),
            current: BTreeSet::new(),
            adopted: BTreeSet::new(),
        })
    }

    /// [`Announcer::sync`], except that announcements taken over from a previous agent stay
    /// until `settled` (every target has had a health verdict): a restart does not withdraw
    /// what is about to be announced again.
    pub fn sync_settling(
        &mut self,
        wanted: &BTreeSet<IpAddr>,
        settled: bool,
    ) -> Result<(), AnnounceError> {
        if settled {
            self.adopted.clear();
        }
        let mut want = wanted.clone();
        want.extend(self.adopted.iter().copied());
        self.sync(&want)
    }

    /// Remove a persistent device (a clean stop that takes the data plane down).
    pub fn remove_device(&mut self) {
        if self._tun.is_none() {
            let _ = iproute::ip(&format!("link del {}", self.device));
        }
    }

    /// Announce exactly `wanted`: add the routes missing, remove the others. Routes already in
    /// place are not touched (no flap).
    pub fn sync(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<(), AnnounceError> {
        for vip in wanted.difference(&self.current.clone()) {
            iproute::ip(&format!(
                "{} dev {} table {} proto static",
                host_route(*vip),
                self.device,
                self.table
            ))
            .map_err(AnnounceError::Route)?;
            log::info!("announcing {vip} (table {})", self.table);
            self.current.insert(*vip);
        }
        for vip in self.current.difference(wanted).copied().collect::<Vec<_>>() {
            let route = host_route(vip).replace(" replace ", " del ");
            iproute::ip(&format!("{route} dev {} table {}", self.device, self.table))
                .map_err(AnnounceError::Route)?;
            log::info!("withdrew {vip}");
            self.current.remove(&vip);
        }
        Ok(())
    }

    pub fn announced(&self) -> &BTreeSet<IpAddr> {
        &self.current
    }

    /// Withdraw everything (before the data plane is detached on a clean stop).
    pub fn withdraw_all(&mut self) {
        if let Err(e) = self.sync(&BTreeSet::new()) {
            log::warn!("withdrawing: {e}");
        }
    }
}

/// The BIRD 2 configuration for a node whose config has `[bgp]` with `local_as`, `router_id`
/// and peers: a kernel protocol that learns the announcement table, and one BGP session per
/// peer exporting what it learned with this node as next hop. `Err` names what is missing.
pub fn bird_config(bgp: &Bgp, source: &str) -> Result<String, String> {
    let local_as = bgp
        .local_as
        .ok_or("bird-config needs bgp.local_as (this node's AS number)")?;
    let router_id = bgp
        .router_id
        .ok_or("bird-config needs bgp.router_id (an IPv4 address of this node)")?;
    if bgp.peers.is_empty() {
        return Err("bird-config needs at least one [[bgp.peer]] (address, as)".into());
    }
    let keepalive = (bgp.hold_time_s / 3).max(1);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# BIRD 2 configuration written by `xlb bird-config` from {source}."
    );
    let _ = writeln!(
        o,
        "# xlb keeps one route per VIP it announces in kernel table {}; BIRD learns them\n\
         # there and announces them to the peers below, this node as next hop.",
        bgp.table
    );
    let _ = writeln!(o, "router id {router_id};");
    let _ = writeln!(o, "protocol device {{ scan time 10; }}");
    for (name, family) in [("xlb_vips4", "ipv4"), ("xlb_vips6", "ipv6")] {
        let _ = writeln!(
            o,
            "protocol kernel {name} {{\n  kernel table {};\n  learn;\n  scan time 1;\n  {family} {{ import all; export none; }};\n}}",
            bgp.table
        );
    }
    for (i, p) in bgp.peers.iter().enumerate() {
        let family = if p.address.is_ipv4() { "ipv4" } else { "ipv6" };
        let kernel = if p.address.is_ipv4() {
            "xlb_vips4"
        } else {
            "xlb_vips6"
        };
        let _ = writeln!(
            o,
            "protocol bgp xlb_peer{} {{\n  local as {local_as};\n  neighbor {} as {};\n  hold time {}; keepalive time {keepalive}; connect retry time 2;\n  {family} {{ import none; export where proto = \"{kernel}\"; next hop self; }};\n}}",
            i + 1,
            p.address,
            p.remote_as,
            bgp.hold_time_s
        );
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::config;

    const BASE: &str = "interfaces = [\"eth0\"]\n[[listener]]\nname = \"web\"\nvip = \"198.18.100.30\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web\"\n[[target_group]]\nname = \"web\"\nport = 80\ntargets = [{ address = \"198.18.1.2\" }]\n";

    fn bgp(section: &str) -> Bgp {
        let text = format!("{BASE}{section}");
        config::parse(Path::new("n1.toml"), &text)
            .unwrap()
            .bgp
            .unwrap()
    }

    #[test]
    fn bird_config_learns_the_table_and_exports_it_to_each_peer() {
        let b = bgp(
            "[bgp]\ntable = 201\nlocal_as = 65001\nrouter_id = \"198.18.201.2\"\nhold_time = 3\n\
                     [[bgp.peer]]\naddress = \"198.18.201.1\"\nas = 65000\n\
                     [[bgp.peer]]\naddress = \"2001:db8:201::1\"\nas = 65000\n",
        );
        assert_eq!((b.table, b.device.as_str()), (201, "xlb-vips"));
        let c = bird_config(&b, "n1.toml").unwrap();
        for needle in [
            "router id 198.18.201.2;",
            "kernel table 201;",
            "learn;",
            "neighbor 198.18.201.1 as 65000;",
            "local as 65001;",
            "hold time 3; keepalive time 1;",
            "ipv4 { import none; export where proto = \"xlb_vips4\"; next hop self; };",
            "neighbor 2001:db8:201::1 as 65000;",
            "ipv6 { import none; export where proto = \"xlb_vips6\"; next hop self; };",
        ] {
            assert!(c.contains(needle), "{needle:?} not in\n{c}");
        }
    }

    #[test]
    fn bird_config_says_what_is_missing_and_bad_bgp_keys_are_config_errors() {
        let e = bird_config(&bgp("[bgp]\n"), "n1.toml").unwrap_err();
        assert!(e.contains("bgp.local_as"), "{e}");
        let e =
            bird_config(&bgp("[bgp]\nlocal_as = 1\nrouter_id = \"10.0.0.1\"\n"), "x").unwrap_err();
        assert!(e.contains("[[bgp.peer]]"), "{e}");
        for (section, needle) in [
            ("[bgp]\ntable = 254\n", "kernel's own"),
            ("[bgp]\nrouter_id = \"nope\"\n", "not an IPv4 address"),
            ("[bgp]\nhold_time = 2\n", "bgp.hold_time 2 is out of range"),
            ("[bgp]\ndevice = \"a/b\"\n", "not a valid interface name"),
            (
                "[bgp]\n[[bgp.peer]]\naddress = \"x\"\nas = 1\n",
                "not an IP address",
            ),
        ] {
            let errs =
                config::parse(Path::new("n1.toml"), &format!("{BASE}{section}")).unwrap_err();
            assert!(
                errs.iter().any(|e| e.message.contains(needle)),
                "{section}: {errs:?}"
            );
        }
    }
}
