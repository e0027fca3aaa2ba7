//! Source rules through BPF_PROG_TEST_RUN: deny wins over allow, a source outside every allow
//! rule is dropped, each counted per rule; listeners without rules are untouched; a rule
//! added at run time stops a source's established flow too, and removing it lets the flow on.
use lb_common::Stat;
use xlb::model::Cidr;
use xlb_rig::lab::*;

/// Packets the named rule of listener `name` counted (from the data plane's RULE_STATS).
fn rule_packets(lab: &Lab, name: &str, allow: bool, cidr: &str) -> u64 {
    let c = cfg(&[1, 2]);
    let l = c.listeners.iter().find(|l| l.name == name).unwrap();
    let cidr: Cidr = cidr.parse().unwrap();
    let id = lab.b.rule_id(l, allow, &cidr).expect("rule installed");
    lab.b.snapshot().unwrap().rules[id as usize]
}

fn not_allowed(lab: &Lab, name: &str) -> u64 {
    let c = cfg(&[1, 2]);
    let l = c.listeners.iter().find(|l| l.name == name).unwrap();
    let id = lab.b.listener_id(l).unwrap();
    lab.b.snapshot().unwrap().rules[lb_common::not_allowed_slot(id) as usize]
}

#[test]
fn deny_wins_over_allow_and_unmatched_sources_are_refused_per_rule() {
    let mut lab = Lab::new("rules", &[1, 2]);
    // The client is in the allow /16 and in the deny /24: denied.
    let r = lab.run(
        &tcp(CLIENT, 40_000, VIP_GUARDED, 80, Flags::Syn, 64),
        lab.in0,
    );
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropSourceDenied, &[]);
    assert_eq!(rule_packets(&lab, "guarded", false, "198.18.0.0/24"), 1);
    // Another source of the /16: allowed, balanced.
    let r = lab.run(
        &tcp([198, 18, 7, 2], 40_000, VIP_GUARDED, 80, Flags::Syn, 64),
        lab.in0,
    );
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    assert_eq!(rule_packets(&lab, "guarded", true, "198.18.0.0/16"), 1);
    // Outside the allow rules: refused.
    let r = lab.run(
        &tcp([198, 19, 0, 1], 40_000, VIP_GUARDED, 80, Flags::Syn, 64),
        lab.in0,
    );
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropSourceNotAllowed, &[]);
    assert_eq!(not_allowed(&lab, "guarded"), 1);
    // A listener without rules takes every source.
    let r = lab.run(
        &tcp([198, 19, 0, 1], 40_000, VIP, 80, Flags::Syn, 64),
        lab.in0,
    );
    assert_eq!(r.retval, XDP_REDIRECT);
    // No connection state for refused packets: the listener counted no new flow for them.
    let c = cfg(&[1, 2]);
    let g = c.listeners.iter().find(|l| l.name == "guarded").unwrap();
    let id = lab.b.listener_id(g).unwrap();
    assert_eq!(
        lab.b.snapshot().unwrap().listeners[id as usize].new_flows,
        1
    );
}

#[test]
fn ipv6_source_rules() {
    let mut lab = Lab::new("rules6", &[1, 2]);
    let r = lab.run(
        &tcp6(CLIENT6, 40_000, VIP6_GUARDED, 80, Flags::Syn, 64),
        lab.in0,
    );
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropSourceDenied, &[]);
    let other = v6([0x2001, 0xdb8, 0, 7, 0, 0, 0, 2]);
    let r = lab.run(
        &tcp6(other, 40_000, VIP6_GUARDED, 80, Flags::Syn, 64),
        lab.in0,
    );
    assert_eq!(r.retval, XDP_REDIRECT);
    let outside = v6([0x2001, 0xdb9, 0, 0, 0, 0, 0, 2]);
    let r = lab.run(
        &tcp6(outside, 40_000, VIP6_GUARDED, 80, Flags::Syn, 64),
        lab.in0,
    );
    r.counted(Stat::DropSourceNotAllowed, &[]);
    assert_eq!(rule_packets(&lab, "guarded6", false, "2001:db8::2/128"), 1);
    assert_eq!(rule_packets(&lab, "guarded6", true, "2001:db8::/48"), 1);
}

#[test]
fn a_new_deny_rule_stops_an_established_flow_and_removing_it_lets_it_on() {
    let mut lab = Lab::new("rulesrt", &[1, 2]);
    let src = [198, 18, 7, 2];
    assert_eq!(
        lab.run(&tcp(src, 41_000, VIP_GUARDED, 80, Flags::Syn, 64), lab.in0)
            .retval,
        XDP_REDIRECT
    );
    let ack = tcp(src, 41_000, VIP_GUARDED, 80, Flags::Ack, 64);
    assert_eq!(lab.run(&ack, lab.in0).retval, XDP_REDIRECT);
    // Deny the flow's source: its next packet is dropped, established or not.
    let mut c = cfg(&[1, 2]);
    let g = c
        .listeners
        .iter_mut()
        .find(|l| l.name == "guarded")
        .unwrap();
    g.deny_sources.push("198.18.7.0/24".parse().unwrap());
    lab.apply_config(&c);
    let r = lab.run(&ack, lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropSourceDenied, &[]);
    // Remove the rule (and the other deny): the same flow goes on, to the same target.
    let mut c = cfg(&[1, 2]);
    let g = c
        .listeners
        .iter_mut()
        .find(|l| l.name == "guarded")
        .unwrap();
    g.deny_sources.clear();
    lab.apply_config(&c);
    let r = lab.run(&ack, lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[]);
    // With no deny rule left, the client's own /24 is allowed by the /16.
    let r = lab.run(
        &tcp(CLIENT, 40_000, VIP_GUARDED, 80, Flags::Syn, 64),
        lab.in0,
    );
    assert_eq!(r.retval, XDP_REDIRECT);
}
