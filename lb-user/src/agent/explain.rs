//! `xlb explain`: why a flow goes where it goes, or nowhere. The agent answers from what it
//! holds (the listener, its source rules, the Maglev table it installed, the targets' states)
//! and from the live data plane: the connection entry read from the maps, and the verdict of
//! the real XDP program run on a synthesized packet of the flow (BPF_PROG_TEST_RUN) against
//! the live maps. That run is a real packet to the program: it counts once, takes a rate-limit
//! token, and creates what such a packet creates (a SYN an embryonic entry, a UDP packet a
//! flow entry).
use std::net::{IpAddr, SocketAddr};

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use lb_common::Stat;

use super::{Agent, Prober};
use crate::{
    api::{
        ExplainRequest, Explanation,
        server::{Failure, FailureKind},
    },
    dataplane::{ConnKey, Dataplane},
    model::{Endpoint, Protocol},
};

fn bad(m: String) -> Failure {
    Failure::new(FailureKind::BadRequest, m)
}

fn addr(s: &str, what: &str) -> Result<SocketAddr, Failure> {
    s.parse().map_err(|_| {
        bad(format!(
            "{what} {s:?} is not ADDRESS:PORT (e.g. 198.51.100.7:40000, [2001:db8::7]:40000)"
        ))
    })
}

/// The frame of the flow: Ethernet (to `dst_mac`), IP, TCP (SYN or ACK) or UDP, checksums
/// valid, TTL 64.
fn frame(
    proto: Protocol,
    src: SocketAddr,
    dst: SocketAddr,
    syn: bool,
    dst_mac: [u8; 6],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 0xee], dst_mac);
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => unreachable!("families checked by the caller"),
    };
    let payload = b"xlb explain";
    let mut out = Vec::new();
    match proto {
        Protocol::Udp => {
            let b = ip.udp(src.port(), dst.port());
            b.write(&mut out, payload).expect("writing to a Vec");
        }
        Protocol::Tcp => {
            let b = ip.tcp(src.port(), dst.port(), 1000, 64_240);
            let b = if syn { b.syn() } else { b.ack(1) };
            let data: &[u8] = if syn { &[] } else { payload };
            b.write(&mut out, data).expect("writing to a Vec");
        }
    }
    out
}

/// Where the output frame goes, read back with an independent parser.
fn describe_output(out: &[u8]) -> String {
    let mac = |m: &[u8]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let Ok(p) = SlicedPacket::from_ethernet(out) else {
        return format!("{} bytes", out.len());
    };
    let dst_mac = p
        .link
        .as_ref()
        .and_then(|l| l.to_header())
        .map(|h| match h {
            etherparse::LinkHeader::Ethernet2(e) => mac(&e.destination),
            _ => "?".into(),
        })
        .unwrap_or_default();
    let ip = match &p.net {
        Some(etherparse::NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            let inner = if h.protocol() == etherparse::IpNumber::IPV4 {
                " (IP-in-IP)"
            } else if h.protocol() == etherparse::IpNumber::IPV6 {
                " (IPv6 in IPv4)"
            } else {
                ""
            };
            format!("{} -> {}{inner}", h.source_addr(), h.destination_addr())
        }
        Some(etherparse::NetSlice::Ipv6(v6)) => {
            let h = v6.header();
            format!("{} -> {}", h.source_addr(), h.destination_addr())
        }
        _ => String::new(),
    };
    let ports = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            format!(", ports {} -> {}", t.source_port(), t.destination_port())
        }
        Some(TransportSlice::Udp(u)) => {
            format!(", ports {} -> {}", u.source_port(), u.destination_port())
        }
        _ => String::new(),
    };
    format!("{ip}{ports}, to MAC {dst_mac}")
}

fn mac_of(iface: &str) -> [u8; 6] {
    let text =
        std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).unwrap_or_default();
    let mut m = [0u8; 6];
    for (i, b) in text.trim().split(':').take(6).enumerate() {
        m[i] = u8::from_str_radix(b, 16).unwrap_or(0);
    }
    m
}

fn ifindex(iface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn conn_key(proto: Protocol, src: SocketAddr, dst: SocketAddr) -> ConnKey {
    let p = proto.number();
    let (sp, dp) = (src.port().to_be_bytes(), dst.port().to_be_bytes());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ConnKey::V4(lb_common::FlowKey {
            src: s.octets(),
            dst: d.octets(),
            sport: sp,
            dport: dp,
            proto: p,
            family: lb_common::FAMILY_IPV4,
            _pad: [0; 2],
        }),
        (IpAddr::V6(s), IpAddr::V6(d)) => ConnKey::V6(lb_common::FlowKey6 {
            src: s.octets(),
            dst: d.octets(),
            sport: sp,
            dport: dp,
            proto: p,
            family: lb_common::FAMILY_IPV6,
            _pad: [0; 2],
        }),
        _ => unreachable!("families checked by the caller"),
    }
}

fn flow_hash(proto: Protocol, src: SocketAddr, dst: SocketAddr) -> u32 {
    let p = proto.number();
    let (sp, dp) = (src.port().to_be_bytes(), dst.port().to_be_bytes());
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            lb_common::hash::flow_hash_v4(s.octets(), d.octets(), sp, dp, p)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            lb_common::hash::flow_hash_v6(s.octets(), d.octets(), sp, dp, p)
        }
        _ => 0,
    }
}

impl<D: Dataplane, P: Prober> Agent<D, P> {
    /// See the module documentation.
    pub fn explain(&mut self, req: &ExplainRequest) -> Result<Explanation, Failure> {
        let proto = match req.protocol.as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            p => return Err(bad(format!("protocol {p:?}: tcp or udp"))),
        };
        let src = addr(&req.source, "source")?;
        let dst = addr(&req.destination, "destination")?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(bad(
                "source and destination are of different families".into()
            ));
        }
        let ingress = match &req.ingress {
            Some(i) => i.clone(),
            None => self.cfg.interfaces[0].clone(),
        };
        let ifx = ifindex(&ingress)
            .ok_or_else(|| bad(format!("interface {ingress:?} does not exist here")))?;
        let mut x = Explanation {
            flow: format!(
                "{} {} -> {}, arriving on {ingress}",
                proto.as_str(),
                Endpoint::new(src.ip(), src.port()),
                Endpoint::new(dst.ip(), dst.port())
            ),
            ..Explanation::default()
        };
        // The listeners as the data plane has them: the file's, with runtime rule changes.
        let listener = self
            .overlay
            .listeners(&self.cfg)
            .into_iter()
            .find(|l| l.vip == dst.ip() && l.port == dst.port() && l.protocol == proto);
        let entry = self
            .reconciler
            .dataplane()
            .connection(&conn_key(proto, src, dst))
            .map_err(|e| Failure::new(FailureKind::Internal, e.to_string()))?;
        let state_of = |this: &Self, e: &Endpoint| -> String {
            this.registry
                .groups
                .values()
                .find_map(|g| g.members.get(e).map(|m| (g, m)))
                .map(|(g, m)| {
                    format!(
                        "{} in group {} ({}, weight {})",
                        e,
                        g.spec.name,
                        m.tracker.state.as_str(),
                        m.weight
                    )
                })
                .unwrap_or_else(|| format!("{e} (not in any group now)"))
        };
        match &listener {
            None => {
                let vip = self.cfg.listeners.iter().any(|l| l.vip == dst.ip());
                x.listener = if vip {
                    format!(
                        "none: {} is a VIP, but no listener takes {}/{}",
                        dst.ip(),
                        dst.port(),
                        proto.as_str()
                    )
                } else {
                    format!("none: {} is not a VIP of this balancer", dst.ip())
                };
            }
            Some(l) => {
                x.listener = format!(
                    "{} ({}) on {}/{}, target group {}",
                    l.name,
                    l.mode.as_str(),
                    Endpoint::new(l.vip, l.port),
                    proto.as_str(),
                    l.target_group
                );
                let deny = l
                    .deny_sources
                    .iter()
                    .filter(|c| c.contains(src.ip()))
                    .max_by_key(|c| c.len);
                let allow = l
                    .allow_sources
                    .iter()
                    .filter(|c| c.contains(src.ip()))
                    .max_by_key(|c| c.len);
                x.source_rules = match (deny, allow, l.allow_sources.is_empty()) {
                    (Some(d), ..) => format!("denied by deny_sources {d}"),
                    (None, Some(a), _) => format!("allowed by allow_sources {a}"),
                    (None, None, true) => "no rules: every source allowed".into(),
                    (None, None, false) => "refused: no allow rule matches".into(),
                };
                let hash = flow_hash(proto, src, dst);
                x.maglev = match self.reconciler.maglev_pick(l, hash) {
                    Some(0) | None => "no target: the table is empty (drop_no_target)".into(),
                    Some(id) => match self.reconciler.endpoint_of(id) {
                        Some(e) => state_of(self, &e),
                        None => format!("target id {id}"),
                    },
                };
            }
        }
        x.connection = match entry {
            None => "none: the next packet is balanced by the Maglev table".into(),
            Some((id, embryonic)) => {
                let who = self
                    .reconciler
                    .endpoint_of(id)
                    .map(|e| state_of(self, &e))
                    .unwrap_or_else(|| format!("target id {id} (no longer known)"));
                if embryonic {
                    format!("embryonic (SYN seen) -> {who}")
                } else {
                    format!("established -> {who}")
                }
            }
        };
        // The next hop toward the target the flow would reach.
        let target = entry
            .and_then(|(id, _)| self.reconciler.endpoint_of(id))
            .or_else(|| {
                listener.as_ref().and_then(|l| {
                    self.reconciler
                        .maglev_pick(l, flow_hash(proto, src, dst))
                        .and_then(|id| self.reconciler.endpoint_of(id))
                })
            });
        if let Some(t) = target {
            x.next_hop = match crate::iproute::ip_output(&format!("route get {}", t.addr)) {
                Ok(r) if !r.trim().is_empty() => {
                    format!("{t}: {}", r.lines().next().unwrap_or("").trim())
                }
                _ => format!("{t}: no route"),
            };
        }
        // The real program on a packet of the flow: a SYN when there is no entry (TCP), else
        // an ACK, unless told.
        let syn = match req.flags.as_deref() {
            Some("syn") => true,
            Some("ack") => false,
            Some(f) => return Err(bad(format!("flags {f:?}: syn or ack"))),
            None => entry.is_none(),
        };
        let f = frame(
            proto,
            src,
            dst,
            syn && proto == Protocol::Tcp,
            mac_of(&ingress),
        );
        x.packet = format!(
            "{}{} bytes",
            match proto {
                Protocol::Tcp if syn => "TCP SYN, ",
                Protocol::Tcp => "TCP ACK, ",
                Protocol::Udp => "UDP, ",
            },
            f.len()
        );
        let run = self
            .reconciler
            .dataplane_mut()
            .test_frame(&f, ifx)
            .map_err(|e| Failure::new(FailureKind::Internal, e.to_string()))?;
        let stats: Vec<Stat> = Stat::ALL
            .iter()
            .copied()
            .filter(|s| run.rose.contains(&(*s as u32)))
            .collect();
        let verdict = stats.iter().find(|s| s.kind() != "event");
        x.verdict = match verdict {
            Some(v) => format!("{} ({})", v.label(), v.kind()),
            None => format!("no verdict counted (XDP return {})", run.retval),
        };
        x.events = stats
            .iter()
            .filter(|s| s.kind() == "event")
            .map(|s| s.label().to_owned())
            .collect();
        x.output = match run.retval {
            1 => "dropped".into(),
            2 => "passed to the kernel".into(),
            3 | 4 => describe_output(&run.out),
            r => format!("XDP return {r}"),
        };
        x.method = "the real XDP program run once on this packet (BPF_PROG_TEST_RUN) against the live maps: it counted as one packet and created what such a packet creates".into();
        Ok(x)
    }
}
