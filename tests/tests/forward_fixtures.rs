//! The forwarding stage's verdicts through BPF_PROG_TEST_RUN, each made to happen: a neighbour
//! whose MAC changes is followed once the next-hop cache entry expires (1 s); an unresolved
//! neighbour hands the packet to the kernel (`pass_no_neigh`); no route to the target
//! (`drop_no_route`); forwarding off on the ingress interface (`drop_fwd_disabled`); a packet
//! larger than the egress MTU (`pass_frag_needed`); a reply sent back out of the interface it
//! came in on (`fwd_tx`); a reply's next hop, cached per client, is that client's own, also
//! when another client takes its cache slot, and follows a changed MAC once it expires.
use lb_common::{Stat, hash::reply_hop_slot};
use xlb_rig::lab::*;

fn big(len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, IN0_MAC)
        .ipv4(CLIENT, VIP, 64)
        .tcp(40_100, 80, 1, 64_240)
        .syn()
        .write(&mut v, &vec![0u8; len - 40])
        .unwrap();
    v
}

#[test]
fn a_changed_neighbour_mac_is_followed_after_the_cache_expires() {
    let mut lab = Lab::new("nhmac", &[1]);
    let r = lab.run(&tcp(CLIENT, 40_000, VIP, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(r.out[0..6], target_mac(1));
    let moved = [2, 0, 0, 0, 1, 0x77];
    lab.exec(&format!(
        "ip neigh replace 198.18.1.2 lladdr {} dev t1 nud permanent",
        mac(moved)
    ));
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    let r = lab.run(&tcp(CLIENT, 40_000, VIP, 80, Flags::Ack, 64), lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    assert_eq!(r.out[0..6], moved, "the new MAC, not the cached one");
}

#[test]
fn a_replys_next_hop_is_its_clients_own_in_a_shared_cache_slot_and_follows_a_changed_mac() {
    // The cache is per CPU: every run of this test on one CPU, so each sees what the last left.
    let mut one = nix::sched::CpuSet::new();
    one.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).unwrap();
    let mut lab = Lab::new("rhmac", &[1]);
    let t1 = lab.t[0];
    // Client B, routed behind 198.18.2.2 (t2), whose replies take client A's (the rig's
    // client, on in0) slot of the reply cache: both arrive from target 1 on t1.
    lab.exec("ip route add 198.18.128.0/17 via 198.18.2.2 dev t2");
    let words = |a: [u8; 4]| [u32::from_ne_bytes(a), 0, 0, 0];
    let slot_a = reply_hop_slot(&words(CLIENT), t1);
    let b = (128..=255u8)
        .flat_map(|c| (1..=254u8).map(move |d| [198, 18, c, d]))
        .find(|b| reply_hop_slot(&words(*b), t1) == slot_a)
        .expect("a client of 198.18.128.0/17 in client A's slot");
    let reply_to = |lab: &mut Lab, client: [u8; 4], port: u16| {
        let r = lab.run(&tcp(target(1), 8080, client, port, Flags::Ack, 64), t1);
        assert_eq!(
            r.retval, XDP_REDIRECT,
            "the reply to {client:?} is forwarded"
        );
        assert_eq!(r.out[26..30], VIP, "rewritten from the VIP");
        r.out[0..6].to_vec()
    };
    for (client, port) in [(CLIENT, 40_010), (b, 40_011)] {
        let r = lab.run(&tcp(client, port, VIP, 80, Flags::Syn, 64), lab.in0);
        assert_eq!(target_of(&r.out), 1);
        lab.run(&tcp(client, port, VIP, 80, Flags::Ack, 64), lab.in0);
    }
    assert_eq!(reply_to(&mut lab, CLIENT, 40_010), CLIENT_MAC);
    // B's reply, A's hop in the slot: B's own gateway, not A's.
    assert_eq!(reply_to(&mut lab, b, 40_011), target_mac(2), "B's gateway");
    assert_eq!(reply_to(&mut lab, b, 40_011), target_mac(2), "B's, cached");
    assert_eq!(
        reply_to(&mut lab, CLIENT, 40_010),
        CLIENT_MAC,
        "A's, not B's"
    );
    // A's MAC changes: followed once the cached hop expires.
    let moved = [2, 0, 0, 0, 2, 0x77];
    lab.exec(&format!(
        "ip neigh replace 198.18.0.2 lladdr {} dev in0 nud permanent",
        mac(moved)
    ));
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    assert_eq!(reply_to(&mut lab, CLIENT, 40_010), moved, "the new MAC");
}

#[test]
fn an_unresolved_neighbour_or_no_route_or_no_forwarding_each_get_their_verdict() {
    let mut lab = Lab::new("nhverd", &[1]);
    lab.exec("ip neigh del 198.18.1.2 dev t1");
    let r = lab.run(&tcp(CLIENT, 40_001, VIP, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(r.retval, XDP_PASS, "the kernel resolves the neighbour");
    r.counted(Stat::PassNoNeigh, &[]);
    assert_eq!(target_of(&r.out), 1, "rewritten before being passed");

    lab.exec("ip route add blackhole 198.18.1.2/32");
    let r = lab.run(&tcp(CLIENT, 40_002, VIP, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropNoRoute, &[]);
    lab.exec("ip route del blackhole 198.18.1.2/32");

    lab.exec("sysctl -qw net.ipv4.conf.in0.forwarding=0");
    let r = lab.run(&tcp(CLIENT, 40_003, VIP, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropFwdDisabled, &[]);
}

#[test]
fn larger_than_the_egress_mtu_is_left_to_the_kernel_and_a_reply_out_of_its_own_interface_is_tx() {
    let mut lab = Lab::new("nhmtu", &[1]);
    lab.exec("ip link set t1 mtu 1280");
    let r = lab.run(&big(1400), lab.in0);
    assert_eq!(r.retval, XDP_PASS);
    r.counted(Stat::PassFragNeeded, &[]);
    let r = lab.run(&big(1200), lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);

    // A reply that leaves by the interface it arrived on (the client routed behind t1).
    let mut lab = Lab::new("nhtx", &[1]);
    lab.run(&tcp(CLIENT, 40_004, VIP, 80, Flags::Syn, 64), lab.in0);
    lab.exec("ip route add 198.18.0.2/32 via 198.18.1.2 dev t1");
    let r = lab.run(
        &tcp(target(1), 8080, CLIENT, 40_004, Flags::SynAck, 64),
        lab.t[0],
    );
    assert_eq!(r.retval, XDP_TX);
    r.counted(Stat::FwdTx, &[]);
    assert_eq!(r.out[26..30], VIP);
}
