//! What a fleet relies on, through BPF_PROG_TEST_RUN on independently started data planes:
//! every node sends a flow to the same target (Maglev from the same config, whatever each
//! node's history), and a TCP flow met mid-way soon after a target joined goes where the
//! previous table sent it — to the target that holds the connection — not where the new table
//! would, until `tables.previous_table_window` has passed.
use lb_common::Stat;
use xlb::model::config::Config;
use xlb_rig::lab::*;

const FLOWS: u16 = 120;

/// The target each of the test's flows goes to when `lab` meets it mid-flow (an ACK with no
/// connection entry, as on a node that never saw the flow).
fn mid_flow_targets(lab: &mut Lab, sport0: u16) -> Vec<u8> {
    (0..FLOWS)
        .map(|i| {
            let r = lab.run(&tcp(CLIENT, sport0 + i, VIP, 80, Flags::Ack, 64), lab.in0);
            assert_eq!(r.retval, XDP_REDIRECT);
            mac_target(&r.out)
        })
        .collect()
}

/// The target each of the test's flows goes to as a new flow (a SYN).
fn new_flow_targets(lab: &mut Lab, sport0: u16) -> Vec<u8> {
    (0..FLOWS)
        .map(|i| {
            let r = lab.run(&tcp(CLIENT, sport0 + i, VIP, 80, Flags::Syn, 64), lab.in0);
            assert_eq!(r.retval, XDP_REDIRECT);
            mac_target(&r.out)
        })
        .collect()
}

fn with_window(web: &[u8], window_s: u32) -> Config {
    let mut c = cfg(web);
    c.tables.previous_table_window_s = window_s;
    c
}

#[test]
fn independent_data_planes_send_each_flow_to_the_same_target() {
    // Node a started with targets 1 and 2; node b started with 2, then got 1 and 3, then lost
    // 3: different ids and histories, the same target set.
    let mut a = Lab::new("ffsame-a", &[1, 2]);
    let mut b = Lab::new("ffsame-b", &[2]);
    b.apply(&[1, 2, 3]);
    b.apply(&[1, 2]);
    let (ta, tb) = (
        new_flow_targets(&mut a, 40_000),
        new_flow_targets(&mut b, 40_000),
    );
    assert_eq!(ta, tb);
    assert!(ta.contains(&1) && ta.contains(&2), "{ta:?}");
    // Met mid-flow, too, once no previous table is in play (a node whose table just changed
    // consults its previous one for a while: see the next test).
    let mut c = Lab::with_config("ffsame-c", &with_window(&[2], 0));
    c.apply_config(&with_window(&[1, 2, 3], 0));
    c.apply_config(&with_window(&[1, 2], 0));
    assert_eq!(mid_flow_targets(&mut c, 40_000), ta);
}

#[test]
fn a_flow_met_mid_way_after_a_target_joined_keeps_its_target_until_the_window_ends() {
    // Where the flows were before the change (a node that saw them start), and where a fresh
    // table with the new target would send them.
    let before = mid_flow_targets(&mut Lab::new("ffprev-old", &[1, 2]), 41_000);
    let mut fresh_lab = Lab::new("ffprev-new", &[1, 2, 3]);
    let fresh = mid_flow_targets(&mut fresh_lab, 41_000);
    let moved = before.iter().zip(&fresh).filter(|(a, b)| a != b).count();
    // About a third of the flows move, nearly all of them to the new target (Maglev
    // reshuffles a few slots among the others).
    assert!(
        (FLOWS as usize / 6..FLOWS as usize / 2).contains(&moved),
        "{moved} of {FLOWS} moved"
    );
    let reshuffled = before
        .iter()
        .zip(&fresh)
        .filter(|(a, b)| a != b && **b != 3)
        .count();
    eprintln!("{moved} of {FLOWS} flows moved, {reshuffled} of them not to the new target");
    assert!(reshuffled <= FLOWS as usize / 20, "{reshuffled} reshuffled");
    // A node whose table changed meets the flows mid-way within the window: where they were.
    // (The window lasts at most as long as the old table was in force: give it 3 s.)
    let mut node = Lab::with_config("ffprev-node", &with_window(&[1, 2], 60));
    let mut late = Lab::with_config("ffprev-late", &with_window(&[1, 2], 1));
    let mut brief = Lab::with_config("ffprev-brief", &with_window(&[1, 2], 60));
    std::thread::sleep(std::time::Duration::from_secs(3));
    node.apply_config(&with_window(&[1, 2, 3], 60));
    late.apply_config(&with_window(&[1, 2, 3], 1));
    let r = node.run(&tcp(CLIENT, 41_000, VIP, 80, Flags::Ack, 64), node.in0);
    r.counted(
        Stat::FwdRedirect,
        &[Stat::EvMidFlowMiss, Stat::EvPreviousTable],
    );
    let rest = mid_flow_targets(&mut node, 41_000);
    assert_eq!(rest, before, "flows met mid-way must keep their target");
    // New flows (SYNs) use the new table.
    assert_eq!(
        new_flow_targets(&mut node, 42_000),
        mid_flow_targets(&mut fresh_lab, 42_000)
    );
    // After the window (1 s here): mid-flow flows follow the new table.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(mid_flow_targets(&mut late, 41_000), fresh);
    // A table that was in force only for an instant (targets turning healthy one by one at
    // start) is nobody's previous table: its successor's mid-flow flows follow the new one.
    brief.apply_config(&with_window(&[1], 60));
    brief.apply_config(&with_window(&[1, 2, 3], 60));
    assert_eq!(mid_flow_targets(&mut brief, 41_000), fresh);
    // With no window at all, at once.
    let mut none = Lab::with_config("ffprev-none", &with_window(&[1, 2], 0));
    none.apply_config(&with_window(&[1, 2, 3], 0));
    assert_eq!(mid_flow_targets(&mut none, 41_000), fresh);
}
