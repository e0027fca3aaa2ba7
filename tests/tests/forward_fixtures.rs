//! The forwarding stage's verdicts through BPF_PROG_TEST_RUN, each made to happen: a neighbour
//! whose MAC changes is followed once the next-hop cache entry expires (1 s); an unresolved
//! neighbour hands the packet to the kernel (`pass_no_neigh`); no route to the target
//! (`drop_no_route`); forwarding off on the ingress interface (`drop_fwd_disabled`); a packet
//! larger than the egress MTU (`pass_frag_needed`); a reply sent back out of the interface it
//! came in on (`fwd_tx`).
use lb_common::Stat;
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
