//! New-flow rate limits through BPF_PROG_TEST_RUN: a source over
//! `new_flows_per_second_per_source` and a listener over `new_flows_per_second` lose their
//! new flows (TCP SYNs, UDP flows' first packets), each counted by its verdict and per
//! listener; other sources, other listeners and established flows are untouched. The limits
//! are seconds-long buckets and a fixture runs in microseconds, so no token comes back
//! mid-test.
use lb_common::{Stat, rate_limited_slot, source_rate_limited_slot};
use xlb::model::config::Config;
use xlb_rig::lab::*;

fn limited(web: (u32, u32), web6_per_source: u32, echo_per_source: u32) -> Config {
    let mut c = cfg(&[1, 2]);
    for l in &mut c.listeners {
        match l.name.as_str() {
            "web" => (l.new_flows_per_second, l.new_flows_per_second_per_source) = web,
            "web6" => l.new_flows_per_second_per_source = web6_per_source,
            "echo" => l.new_flows_per_second_per_source = echo_per_source,
            _ => {}
        }
    }
    c
}

/// (dropped over the listener's limit, dropped over a source's limit) of listener `name`.
fn refused(lab: &Lab, c: &Config, name: &str) -> (u64, u64) {
    let l = c.listeners.iter().find(|l| l.name == name).unwrap();
    let id = lab.b.listener_id(l).unwrap();
    let rules = lab.b.snapshot().unwrap().rules;
    (
        rules[rate_limited_slot(id) as usize],
        rules[source_rate_limited_slot(id) as usize],
    )
}

fn syn(src: [u8; 4], sport: u16) -> Vec<u8> {
    tcp(src, sport, VIP, 80, Flags::Syn, 64)
}

#[test]
fn sources_and_listeners_over_their_new_flow_limits_are_refused_and_counted() {
    let mut lab = Lab::new("rate", &[1, 2]);
    let c = limited((5, 3), 2, 2);
    lab.apply_config(&c);
    let a = CLIENT;
    let b = [198, 18, 0, 3];
    // Source a: three new flows pass, the fourth is over its own limit.
    for sport in 40_000..40_003 {
        let r = lab.run(&syn(a, sport), lab.in0);
        assert_eq!(r.retval, XDP_REDIRECT, "flow {sport} of a");
        r.counted(Stat::FwdRedirect, &[]);
    }
    let r = lab.run(&syn(a, 40_003), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropSourceRateLimited, &[]);
    assert_eq!(refused(&lab, &c, "web"), (0, 1));
    // Source b has a bucket of its own, but the listener's five are spent after two more.
    for sport in 40_000..40_002 {
        assert_eq!(lab.run(&syn(b, sport), lab.in0).retval, XDP_REDIRECT);
    }
    let r = lab.run(&syn(b, 40_002), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropListenerRateLimited, &[]);
    assert_eq!(refused(&lab, &c, "web"), (1, 1));
    // A refused flow got no state: its next packet is a mid-flow miss, not a hit.
    let r = lab.run(&tcp(b, 40_002, VIP, 80, Flags::Ack, 64), lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    r.counted(Stat::FwdRedirect, &[Stat::EvMidFlowMiss]);
    // Established flows go on: a's first flow completes its handshake and carries data.
    for _ in 0..3 {
        let r = lab.run(&tcp(a, 40_000, VIP, 80, Flags::Ack, 64), lab.in0);
        assert_eq!(r.retval, XDP_REDIRECT);
        r.counted(Stat::FwdRedirect, &[]);
    }
    // Another listener on the same VIP, without limits, takes a's new flows.
    let r = lab.run(&tcp(a, 40_010, VIP2, 80, Flags::Syn, 64), lab.in0);
    assert_eq!(r.retval, XDP_REDIRECT);
    // The refused flows never reached a target: the listener counted five new flows (and the
    // mid-flow one).
    let web = c.listeners.iter().find(|l| l.name == "web").unwrap();
    let id = lab.b.listener_id(web).unwrap();
    assert_eq!(
        lab.b.snapshot().unwrap().listeners[id as usize].new_flows,
        6
    );
}

#[test]
fn udp_flows_count_once_and_ipv6_sources_share_a_bucket_per_64() {
    let mut lab = Lab::new("rateu", &[1, 2]);
    let c = limited((0, 0), 2, 2);
    lab.apply_config(&c);
    // UDP: the first packet of each flow takes a token; later packets of a flow take none.
    for sport in [5000, 5001] {
        for _ in 0..3 {
            let r = lab.run(&udp(CLIENT, sport, VIP, 9000), lab.in0);
            assert_eq!(r.retval, XDP_REDIRECT, "udp flow {sport}");
        }
    }
    let r = lab.run(&udp(CLIENT, 5002, VIP, 9000), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropSourceRateLimited, &[]);
    assert_eq!(refused(&lab, &c, "echo"), (0, 1));
    // IPv6: two addresses of one /64 share its bucket; another /64 has its own.
    let same64 = v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99]);
    let other64 = v6([0x2001, 0xdb8, 0, 1, 0, 0, 0, 2]);
    let syn6 = |src, sport| tcp6(src, sport, VIP6, 80, Flags::Syn, 64);
    assert_eq!(
        lab.run(&syn6(CLIENT6, 40_000), lab.in0).retval,
        XDP_REDIRECT
    );
    assert_eq!(lab.run(&syn6(same64, 40_000), lab.in0).retval, XDP_REDIRECT);
    let r = lab.run(&syn6(same64, 40_001), lab.in0);
    assert_eq!(r.retval, XDP_DROP);
    r.counted(Stat::DropSourceRateLimited, &[]);
    assert_eq!(
        lab.run(&syn6(other64, 40_000), lab.in0).retval,
        XDP_REDIRECT
    );
    assert_eq!(refused(&lab, &c, "web6"), (0, 1));
}

#[test]
fn lifting_a_limit_by_reload_lets_new_flows_in_at_once() {
    let mut lab = Lab::new("rater", &[1, 2]);
    lab.apply_config(&limited((1, 0), 0, 0));
    assert_eq!(lab.run(&syn(CLIENT, 40_000), lab.in0).retval, XDP_REDIRECT);
    assert_eq!(lab.run(&syn(CLIENT, 40_001), lab.in0).retval, XDP_DROP);
    lab.apply_config(&limited((0, 0), 0, 0));
    for sport in 40_002..40_010 {
        assert_eq!(lab.run(&syn(CLIENT, sport), lab.in0).retval, XDP_REDIRECT);
    }
}
