//! A bounded SYN flood with real clients: while hping3 sends 120,000 SYNs from spoofed sources
//! at the VIP (a connection table of 4,096 entries), six downloads started before it (curl from
//! python's http.server, rate-limited so they last through the flood) all complete, and a
//! client opening new connections during it gets (almost) all of them.
mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{Conn, Env};
use xlb_rig::{Setup, rig::VIP};

const FLOOD: u32 = 120_000;
const SIZE: u64 = 24 * 1024 * 1024;

#[test]
fn a_syn_flood_breaks_no_established_connection_and_new_clients_still_connect() {
    let setup = Setup {
        interval_s: 1,
        ..Setup::demo(&[1, 2])
    };
    let mut env = Env::start("flood", 2, &setup);
    let mut text = env.rig.config(&env.socket, &setup).replacen(
        "maglev_size = 65537",
        "maglev_size = 65537\nmax_connections = 4096",
        1,
    );
    text.push_str(&format!(
        "\n[[listener]]\nname = \"files\"\nvip = \"{VIP}\"\nport = 8000\nprotocol = \"tcp\"\ntarget_group = \"files\"\n\
[[target_group]]\nname = \"files\"\nport = 8000\ntargets = [{{ address = \"198.18.1.2\" }}, {{ address = \"198.18.2.2\" }}]\n\
health_check = {{ enabled = false }}\n"
    ));
    std::fs::write(&env.config, text).unwrap();
    for k in 1..=2 {
        let files = env.dir.0.join(format!("files-{k}"));
        std::fs::create_dir_all(&files).unwrap();
        std::fs::File::create(files.join("big"))
            .unwrap()
            .set_len(SIZE)
            .unwrap();
        let mut cmd = env.rig.targets[k - 1].command("python3");
        cmd.args([
            "-u",
            "-m",
            "http.server",
            "8000",
            "--bind",
            "0.0.0.0",
            "--directory",
        ])
        .arg(&files);
        env.rig
            .spawn_until(&format!("files-{k}"), cmd, "Serving HTTP")
            .unwrap();
    }
    // Table sizes take effect on restart.
    assert!(env.rig.stop("xlb").unwrap().success());
    env.start_agent();

    // Six downloads, established before the flood and lasting through it (4 MB/s each).
    let downloads: Vec<_> = (0..6)
        .map(|_| {
            env.rig
                .client
                .command("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                    "--limit-rate",
                    "4M",
                ])
                .args(["--max-time", "40", &format!("http://{VIP}:8000/big")])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));

    // The flood, bounded in count, from the client's namespace with spoofed sources.
    let started = Instant::now();
    let mut flood = env
        .rig
        .client
        .command("hping3")
        .args(["-q", "-S", "-p", "80", "--rand-source", "-i", "u10", "-c"])
        .arg(FLOOD.to_string())
        .arg(VIP)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("hping3 runs");
    // New connections from the real client during the flood.
    let flooding = Arc::new(AtomicBool::new(true));
    let f = flooding.clone();
    let newcomers = env.in_client(move || {
        let (mut ok, mut tried) = (0u32, 0u32);
        while f.load(Ordering::Relaxed) && tried < 400 {
            tried += 1;
            if Conn::open().and_then(|mut c| c.get()).is_ok() {
                ok += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (ok, tried)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while flood.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "hping3 did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let flood_secs = started.elapsed().as_secs_f64();
    flooding.store(false, Ordering::Relaxed);
    let (ok, tried) = newcomers.join().unwrap();
    let survived = downloads
        .into_iter()
        .map(|d| {
            let out = d.wait_with_output().unwrap();
            let got = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
            eprintln!("download: {got} bytes ({:?})", out.status);
            got
        })
        .filter(|got| *got == SIZE)
        .count();
    let embryonic_syns = env.reason("fwd_redirect") + env.reason("fwd_tx");
    eprintln!(
        "flood: {FLOOD} SYNs in {flood_secs:.1} s; new connections during it {ok}/{tried}; downloads complete {survived}/6; forwarded {embryonic_syns}"
    );
    assert_eq!(
        survived, 6,
        "every download established before the flood completes"
    );
    assert!(tried >= 20, "the client tried {tried} connections only");
    assert!(
        f64::from(ok) >= 0.99 * f64::from(tried),
        "new connections during the flood: {ok}/{tried}"
    );
}
