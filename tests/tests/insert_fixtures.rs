//! One insert per new NAT flow (issue 13), through BPF_PROG_TEST_RUN: a flow of the listener
//! that owns its target's replies (`OWNERS`) keeps one entry, and the target's replies find it
//! through it; a flow of another listener sharing the target (two VIPs, one target) also keeps
//! a return-path entry. Entries are counted by walking the real maps; outputs are read with
//! etherparse.
use std::collections::HashMap;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_common::Stat;
use xlb::dataplane::Dataplane as _;
use xlb_rig::lab::*;

/// (source, source port, destination, destination port) of an output packet, any family.
fn tuple(pkt: &[u8]) -> (Vec<u8>, u16, Vec<u8>, u16) {
    let p = SlicedPacket::from_ethernet(pkt).expect("parses");
    let (src, dst) = match p.net.expect("IP") {
        NetSlice::Ipv4(ip) => (
            ip.header().source().to_vec(),
            ip.header().destination().to_vec(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source().to_vec(),
            ip.header().destination().to_vec(),
        ),
    };
    let (sport, dport) = match p.transport.expect("L4") {
        TransportSlice::Tcp(t) => (t.source_port(), t.destination_port()),
        TransportSlice::Udp(u) => (u.source_port(), u.destination_port()),
        _ => panic!("not TCP or UDP"),
    };
    (src, sport, dst, dport)
}

fn entries(lab: &Lab) -> HashMap<&'static str, u64> {
    lab.b
        .dataplane()
        .table_entries()
        .unwrap()
        .into_iter()
        .collect()
}

/// The tables whose entry count changed while `f` ran, by how much.
fn inserted(lab: &mut Lab, f: impl FnOnce(&mut Lab)) -> Vec<(&'static str, i64)> {
    let before = entries(lab);
    f(lab);
    let after = entries(lab);
    let mut d: Vec<(&'static str, i64)> = after
        .iter()
        .filter(|(k, n)| before[*k] != **n)
        .map(|(k, n)| (*k, *n as i64 - before[*k] as i64))
        .collect();
    d.sort();
    d
}

/// The target (1..=3) an IPv4 output packet went to.
fn target_k(pkt: &[u8]) -> u8 {
    let (_, _, dst, _) = tuple(pkt);
    (1..=3u8)
        .find(|k| dst == target(*k))
        .expect("sent to a target")
}

/// A TCP handshake through `vip:80` from `sport`, then a data reply: the tables each step
/// inserted into, and the target.
fn handshake(lab: &mut Lab, vip: [u8; 4], sport: u16) -> (Vec<Vec<(&'static str, i64)>>, u8) {
    let mut k = 0;
    let syn = inserted(lab, |lab| {
        let r = lab.run(&tcp(CLIENT, sport, vip, 80, Flags::Syn, 64), lab.in0);
        assert_eq!(r.retval, XDP_REDIRECT);
        k = target_k(&r.out);
    });
    let ti = usize::from(k) - 1;
    let synack = inserted(lab, |lab| {
        let r = lab.run(
            &tcp(target(k), 8080, CLIENT, sport, Flags::SynAck, 64),
            lab.t[ti],
        );
        assert_eq!(r.retval, XDP_REDIRECT, "the SYN-ACK is a reply");
        assert_eq!(
            tuple(&r.out),
            (vip.to_vec(), 80, CLIENT.to_vec(), sport),
            "the SYN-ACK comes from the VIP"
        );
    });
    let ack = inserted(lab, |lab| {
        let r = lab.run(&tcp(CLIENT, sport, vip, 80, Flags::Ack, 64), lab.in0);
        assert_eq!(target_k(&r.out), k, "the ACK follows the SYN");
    });
    let data = inserted(lab, |lab| {
        let r = lab.run(
            &tcp(target(k), 8080, CLIENT, sport, Flags::Ack, 64),
            lab.t[ti],
        );
        assert_eq!(
            tuple(&r.out),
            (vip.to_vec(), 80, CLIENT.to_vec(), sport),
            "an established flow's reply comes from the VIP"
        );
    });
    (vec![syn, synack, ack, data], k)
}

#[test]
fn a_flow_of_the_owning_listener_costs_one_insert_per_step_and_its_replies_find_it() {
    // `web` and `web2` (and `guarded`) share the group `web`: `web`, first in the config,
    // owns the replies of its targets.
    let mut lab = Lab::new("own", &[1, 2]);
    let (steps, _) = handshake(&mut lab, VIP, 42_000);
    assert_eq!(
        steps,
        vec![vec![("EMBRYONIC", 1)], vec![], vec![("FLOWS", 1)], vec![],],
        "SYN, SYN-ACK, ACK, reply"
    );
}

#[test]
fn a_flow_of_another_listener_sharing_the_target_also_keeps_a_return_path() {
    let mut lab = Lab::new("share", &[1, 2]);
    let (steps, _) = handshake(&mut lab, VIP2, 42_001);
    assert_eq!(
        steps,
        vec![
            vec![("EMBRYONIC", 1), ("EMBRYONIC_REVERSE", 1)],
            vec![],
            vec![("FLOWS", 1), ("REVERSE", 1)],
            vec![],
        ],
        "SYN, SYN-ACK, ACK, reply"
    );
    // Both at once from the same client port: each reply goes back to its own VIP.
    let (_, k1) = handshake(&mut lab, VIP, 42_002);
    let (_, _) = handshake(&mut lab, VIP2, 42_003);
    let r = lab.run(
        &tcp(target(k1), 8080, CLIENT, 42_002, Flags::Ack, 64),
        lab.t[usize::from(k1) - 1],
    );
    assert_eq!(tuple(&r.out).0, VIP.to_vec());
}

#[test]
fn a_udp_flow_of_the_owner_costs_one_insert() {
    let mut lab = Lab::new("udp1", &[1, 2]);
    let mut k = 0;
    let first = inserted(&mut lab, |lab| {
        let r = lab.run(&udp(CLIENT, 43_000, VIP, 9000), lab.in0);
        assert_eq!(r.retval, XDP_REDIRECT);
        k = target_k(&r.out);
    });
    assert_eq!(first, vec![("FLOWS", 1)]);
    let reply = inserted(&mut lab, |lab| {
        let r = lab.run(
            &udp(target(k), 9000, CLIENT, 43_000),
            lab.t[usize::from(k) - 1],
        );
        assert_eq!(tuple(&r.out), (VIP.to_vec(), 9000, CLIENT.to_vec(), 43_000));
    });
    assert_eq!(reply, vec![]);
}

#[test]
fn an_ipv6_flow_of_the_owner_costs_one_insert_per_step() {
    let mut lab = Lab::new("own6", &[1, 2]);
    let mut dst = Vec::new();
    let syn = inserted(&mut lab, |lab| {
        let r = lab.run(&tcp6(CLIENT6, 42_000, VIP6, 80, Flags::Syn, 64), lab.in0);
        assert_eq!(r.retval, XDP_REDIRECT);
        dst = tuple(&r.out).2;
    });
    assert_eq!(syn, vec![("EMBRYONIC6", 1)]);
    let k = (1..=2u8).find(|k| dst == target6(*k)).expect("to a target");
    let t = lab.t[usize::from(k) - 1];
    let synack = inserted(&mut lab, |lab| {
        let r = lab.run(
            &tcp6(target6(k), 8080, CLIENT6, 42_000, Flags::SynAck, 64),
            t,
        );
        assert_eq!(tuple(&r.out), (VIP6.to_vec(), 80, CLIENT6.to_vec(), 42_000));
    });
    assert_eq!(synack, vec![]);
    let ack = inserted(&mut lab, |lab| {
        lab.run(&tcp6(CLIENT6, 42_000, VIP6, 80, Flags::Ack, 64), lab.in0);
    });
    assert_eq!(ack, vec![("FLOWS6", 1)]);
}

#[test]
fn a_packet_from_another_target_than_the_flows_is_not_rewritten() {
    // The flow's forward entry exists, but names the other target: the packet is not a reply
    // of a balanced flow (a client reaching this target directly, say) and passes untouched.
    let mut lab = Lab::new("other", &[1, 2]);
    let (_, k) = handshake(&mut lab, VIP, 42_100);
    let other = 3 - k;
    let pkt = tcp(target(other), 8080, CLIENT, 42_100, Flags::Ack, 64);
    let r = lab.run(&pkt, lab.t[usize::from(other) - 1]);
    assert_eq!(r.retval, XDP_PASS);
    r.counted(Stat::PassNotListener, &[]);
    assert_eq!(r.out, pkt, "untouched");
}

#[test]
fn when_the_owner_goes_another_listener_takes_over_and_no_reply_is_lost() {
    let mut lab = Lab::new("handover", &[1, 2]);
    // web2's flow from before (a return-path entry, web2 not the owner).
    let (_, k_old) = handshake(&mut lab, VIP2, 42_200);
    // Remove `web`: `web2` becomes the owner.
    let text = config_text(&[1, 2]).replacen(
        "[[listener]]\nname = \"web\"\nvip = \"198.18.100.10\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"web\"\n",
        "",
        1,
    );
    let c = xlb::model::config::parse(std::path::Path::new("fixture.toml"), &text).unwrap();
    assert!(c.listeners.iter().all(|l| l.name != "web"));
    lab.apply_config(&c);
    lab.settle();
    let r = lab.run(
        &tcp(target(k_old), 8080, CLIENT, 42_200, Flags::Ack, 64),
        lab.t[usize::from(k_old) - 1],
    );
    assert_eq!(
        tuple(&r.out).0,
        VIP2.to_vec(),
        "the earlier flow's reply still comes from its VIP"
    );
    // New flows of the new owner keep one entry.
    let (steps, _) = handshake(&mut lab, VIP2, 42_201);
    assert_eq!(steps[0], vec![("EMBRYONIC", 1)]);
    assert_eq!(steps[2], vec![("FLOWS", 1)]);
}

#[test]
fn one_client_port_through_both_vips_in_turn_gets_each_reply_from_its_own_vip() {
    // Field notes: reverse-NAT collisions when a client reuses its port. One target behind
    // both VIPs; the same client port opens a connection through one VIP, then (the first one
    // over) through the other, and back. Every reply must come from the VIP of the connection
    // it answers, whatever entries the earlier connections left.
    let mut lab = Lab::new("reuse", &[1]);
    for vip in [VIP, VIP2, VIP, VIP2, VIP2, VIP] {
        let (_, k) = handshake(&mut lab, vip, 42_300);
        assert_eq!(k, 1);
    }
    // The same for UDP: the owner (`echo`) and a listener sharing its target (`echo53` is
    // another port of the same VIP; its datagrams to the same target port).
    let mut lab = Lab::new("reuseu", &[1]);
    for (port, _) in [(9000u16, "echo"), (53, "echo53"), (9000, "echo")] {
        let r = lab.run(&udp(CLIENT, 43_300, VIP, port), lab.in0);
        assert_eq!(target_k(&r.out), 1);
        let r = lab.run(&udp(target(1), 9000, CLIENT, 43_300), lab.t[0]);
        assert_eq!(
            tuple(&r.out),
            (VIP.to_vec(), port, CLIENT.to_vec(), 43_300),
            "the reply of the datagram to port {port}"
        );
    }
}
