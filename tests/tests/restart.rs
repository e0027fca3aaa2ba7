//! Hitless agent restarts with a pinned data plane (`pin_dir`): `kill -9` of the agent leaves
//! XDP forwarding (old and new connections alike), the next agent — another build of it —
//! takes the pinned links and connection tables over, and keep-alive connections and a stream of new ones go on with
//! no failure; a clean stop then detaches and removes the pins.
mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::{Conn, Env};
use xlb_rig::{BpfFs, Setup};

fn setup() -> Setup {
    Setup {
        interval_s: 1,
        ..Setup::demo(&[1, 2])
    }
}

#[test]
fn a_killed_agent_leaves_xdp_forwarding_and_the_next_takes_over_with_nothing_broken() {
    let mut env = Env::start("restart", 2, &setup());
    // The agent runs under `ip netns exec`, whose /sys is its own: pin on a BPF filesystem
    // that outlives it.
    let bpffs = BpfFs::mount(env.dir.0.join("bpffs")).unwrap();
    assert!(env.rig.stop("xlb").unwrap().success());
    let config = format!(
        "pin_dir = \"{}\"\n{}",
        bpffs.0.display(),
        env.rig.config(&env.socket, &setup())
    );
    std::fs::write(&env.config, config).unwrap();
    env.start_agent();
    env.wait_web("healthy", Duration::from_secs(10));

    // A second agent with the same config is refused at the control socket, before it could
    // take the running one's pinned data plane; the running one is untouched.
    let second = env
        .rig
        .lb
        .command(&common::xlb_bin().display().to_string())
        .args(["run", "--config"])
        .arg(&env.config)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another xlb agent is already serving"),
        "{err}"
    );
    assert!(!err.contains("took over the pinned XDP link"), "{err}");
    assert_eq!(env.status_json()["interfaces"][0]["mode"], "native");
    assert!(env.curls(3).iter().all(|n| n.starts_with("backend-")));

    // Keep-alive connections, a request each every 50 ms, and new connections back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let broken = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for _ in 0..8 {
        let (stop, broken, ok) = (stop.clone(), broken.clone(), ok.clone());
        threads.push(env.in_client(move || {
            let mut c = Conn::open().unwrap();
            let first = c.get().unwrap();
            while !stop.load(Ordering::Relaxed) {
                match c.get() {
                    Ok(b) if b == first => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("keep-alive connection on {first} broke: {other:?}");
                        broken.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
    }
    let failed_new = Arc::new(AtomicUsize::new(0));
    let made_new = Arc::new(AtomicUsize::new(0));
    {
        let (stop, failed, made) = (stop.clone(), failed_new.clone(), made_new.clone());
        threads.push(env.in_client(move || {
            while !stop.load(Ordering::Relaxed) {
                match Conn::open().and_then(|mut c| c.get()) {
                    Ok(b) if b.starts_with("backend-") => made.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("a new connection failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(1));

    // The agent dies; XDP stays (pinned link) and forwards with what it had.
    env.rig.kill("xlb");
    let during = made_new.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        made_new.load(Ordering::Relaxed) > during + 5,
        "no new connection went through while no agent ran"
    );
    let out = env.rig.lb.exec("ip link show lb-c").unwrap();
    assert!(out.contains("xdp"), "XDP gone with the agent: {out}");
    // The next agent, another build of it (the release binary `cargo xtask test` built for
    // the package, where the first was the debug one), takes the pinned links and tables over.
    let rebuilt = common::xlb_bin()
        .parent()
        .and_then(|d| d.parent())
        .map(|t| t.join("release/xlb"))
        .filter(|p| p.exists())
        .expect(
            "target/release/xlb (cargo xtask test builds it; or cargo build --release -p lb-user)",
        );
    assert_ne!(
        std::fs::read(&rebuilt).unwrap(),
        std::fs::read(common::xlb_bin()).unwrap(),
        "the next agent must be another build"
    );
    env.rig.start_agent(&rebuilt, &env.config).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let (broken, ok) = (broken.load(Ordering::Relaxed), ok.load(Ordering::Relaxed));
    let (failed, made) = (
        failed_new.load(Ordering::Relaxed),
        made_new.load(Ordering::Relaxed),
    );
    eprintln!(
        "restart under load: 8 keep-alive connections, {broken} broken, {ok} requests; \
         {made} new connections, {failed} failed"
    );
    assert_eq!(broken, 0);
    assert_eq!(failed, 0);
    // Still the same targets after the takeover.
    let names = env.curls(6);
    assert!(names.iter().all(|n| n.starts_with("backend-")), "{names:?}");
    // Killed again, restarted with another connection-table size (pinned in a folder of its
    // own): the new agent replaces the program in the link all the same, and serves.
    env.rig.kill("xlb");
    let resized = format!(
        "pin_dir = \"{}\"\n{}",
        bpffs.0.display(),
        env.rig.config(&env.socket, &setup()).replacen(
            "[tables]\n",
            "[tables]\nmax_connections = 8192\n",
            1
        )
    );
    std::fs::write(&env.config, resized).unwrap();
    env.start_agent();
    let names = env.curls(6);
    assert!(names.iter().all(|n| n.starts_with("backend-")), "{names:?}");
    // With keep_dataplane, a clean stop leaves it forwarding too.
    let base = env.rig.config(&env.socket, &setup());
    let with_keep = |keep: bool| {
        format!(
            "pin_dir = \"{}\"\nkeep_dataplane = {keep}\n{base}",
            bpffs.0.display()
        )
    };
    std::fs::write(&env.config, with_keep(true)).unwrap();
    assert!(
        env.xlb(&["reload"]).status.code() == Some(64),
        "keep_dataplane is read at start"
    );
    assert!(env.rig.stop("xlb").unwrap().success());
    env.start_agent();
    assert!(env.rig.stop("xlb").unwrap().success());
    let out = env.rig.lb.exec("ip link show lb-c").unwrap();
    assert!(
        out.contains("xdp"),
        "keep_dataplane: detached by a clean stop: {out}"
    );
    assert!(env.curls(4).iter().all(|n| n.starts_with("backend-")));
    // Without it, a clean stop detaches and unpins.
    std::fs::write(&env.config, with_keep(false)).unwrap();
    env.start_agent();
    assert!(env.rig.stop("xlb").unwrap().success());
    let out = env.rig.lb.exec("ip link show lb-c").unwrap();
    assert!(
        !out.contains("xdp"),
        "still attached after a clean stop: {out}"
    );
    let left: Vec<_> = walk(&bpffs.0);
    assert!(left.is_empty(), "pins left after a clean stop: {left:?}");
}

/// Files under `dir` (pins), recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if !p.to_string_lossy().ends_with(".debug") {
                // (maps.debug and progs.debug are the BPF filesystem's own.)
                out.push(p);
            }
        }
    }
    out
}
