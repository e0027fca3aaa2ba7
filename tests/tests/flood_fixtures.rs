//! SYN floods through BPF_PROG_TEST_RUN: a flow seen only as a SYN lives in the embryonic
//! table, and moves to the connection table with its first packet after the SYN, so 6,000
//! spoofed SYNs (more than the 4,096-entry connection table holds) evict no established flow;
//! a new client still connects, and a SYN-ACK of an embryonic flow finds its way back.
use lb_common::Stat;
use xlb_rig::lab::*;

#[test]
fn a_syn_flood_evicts_no_established_flow() {
    let mut lab = Lab::new("flood", &[1, 2]);
    // 32 established flows (SYN, then ACK).
    let mut established = Vec::new();
    for port in 30_000..30_032u16 {
        lab.run(&tcp(CLIENT, port, VIP, 80, Flags::Syn, 64), lab.in0);
        let r = lab.run(&tcp(CLIENT, port, VIP, 80, Flags::Ack, 64), lab.in0);
        r.counted(Stat::FwdRedirect, &[]);
        established.push((port, target_of(&r.out)));
    }
    // 6,000 SYNs from spoofed sources: more than the connection table (4,096) holds.
    let prog = lab.b.dataplane_mut().program().unwrap();
    for i in 0..6_000u32 {
        let src = [203, 0, (i >> 8) as u8, i as u8];
        let (ret, ..) = run_once(
            prog,
            &tcp(src, 1024 + (i % 60_000) as u16, VIP, 80, Flags::Syn, 64),
            lab.in0,
        );
        assert_eq!(ret, XDP_REDIRECT);
    }
    lab.settle();
    // Every established flow still has its entry: no mid-flow miss, the same target.
    for (port, k) in established {
        let r = lab.run(&tcp(CLIENT, port, VIP, 80, Flags::Ack, 64), lab.in0);
        r.counted(Stat::FwdRedirect, &[]);
        assert_eq!(target_of(&r.out), k, "port {port}");
    }
    // A new client connects: SYN, the target's SYN-ACK back from the VIP, then its ACK.
    let syn = lab.run(&tcp(CLIENT, 31_000, VIP, 80, Flags::Syn, 64), lab.in0);
    let k = target_of(&syn.out);
    let back = lab.run(
        &tcp(target(k), 8080, CLIENT, 31_000, Flags::SynAck, 64),
        lab.t[usize::from(k) - 1],
    );
    assert_eq!(
        back.retval, XDP_REDIRECT,
        "the SYN-ACK of an embryonic flow is reverse-NATed"
    );
    assert_eq!(back.out[26..30], VIP);
    let ack = lab.run(&tcp(CLIENT, 31_000, VIP, 80, Flags::Ack, 64), lab.in0);
    ack.counted(Stat::FwdRedirect, &[]);
    assert_eq!(target_of(&ack.out), k);
}
