//! Section 2: the control plane: Maglev builds, applying 1,000 listeners to the real data
//! plane, and health-check detection on the demo rig.
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use xlb::{
    dataplane::{
        AyaDataplane, maglev,
        reconcile::{Plan, Reconciler},
    },
    model::{Endpoint, config},
};
use xlb_rig::{Rig, RigSpec, Setup};

use crate::{
    Args,
    report::{Figure, figure},
};

pub fn maglev_builds(reps: usize) -> Vec<Figure> {
    [2u32, 10, 100, 1000, 4000]
        .iter()
        .map(|&n| {
            let entries: Vec<maglev::Entry> = (1..=n)
                .map(|i| maglev::Entry {
                    id: i,
                    key: maglev::identity(&Endpoint::new(
                        std::net::IpAddr::from([198, 18, (i >> 8) as u8, i as u8]),
                        8080,
                    )),
                    weight: 1,
                })
                .collect();
            let v = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    let table = maglev::build(&entries, 65_537);
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    assert!(table.iter().all(|&s| s != 0));
                    ms
                })
                .collect();
            let f = figure(
                "control",
                &format!("Maglev table, {n} targets, M = 65,537"),
                "ms",
                v,
            )
            .at("Maglev build time", f64::from(n));
            if n == 1000 {
                let met = f.median < 20.0;
                f.goal("< 20 ms", met)
            } else {
                f
            }
        })
        .collect()
}

pub fn thousand_listeners(reps: usize) -> Vec<Figure> {
    let mut text = String::from(
        "interfaces = [\"lo\"]\n[tables]\nmaglev_size = 65537\nmax_listeners = 1000\n",
    );
    for i in 0..1000u32 {
        text += &format!(
            "[[listener]]\nname = \"l{i}\"\nvip = \"198.18.{}.{}\"\nport = 80\nprotocol = \"tcp\"\ntarget_group = \"g{}\"\n",
            200 + i / 250,
            i % 250 + 1,
            i % 100
        );
    }
    for g in 0..100u32 {
        text += &format!(
            "[[target_group]]\nname = \"g{g}\"\nport = 8080\nhealth_check = {{ enabled = false }}\ntargets = ["
        );
        text += &(1..=10u32)
            .map(|t| format!("{{ address = \"198.18.{}.{t}\" }}", g + 1))
            .collect::<Vec<_>>()
            .join(", ");
        text += "]\n";
    }
    let cfg =
        config::parse(Path::new("bench-1000.toml"), &text).expect("benchmark config is valid");
    let plan = Plan::from_config(&cfg);
    let (mut first, mut again) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let dp =
            AyaDataplane::load(xlb::EBPF_OBJECT, &cfg.tables).expect("load with 1,000 listeners");
        let mut b = Reconciler::new(dp, cfg.tables);
        let t = Instant::now();
        let r = b.apply(&plan).unwrap();
        first.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.listeners_added.len(), 1000);
        let t = Instant::now();
        let r = b.apply(&plan).unwrap();
        again.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(r.listeners_unchanged.len(), 1000);
    }
    vec![
        figure(
            "control",
            "apply 1,000 listeners (100 groups x 10 targets) to the data plane",
            "ms",
            first,
        ),
        figure(
            "control",
            "re-apply the same 1,000 listeners (no change)",
            "ms",
            again,
        ),
    ]
}

pub fn health_detection(args: &Args) -> Figure {
    let mut v = Vec::new();
    for rep in 0..args.reps {
        let mut rig = Rig::up(&RigSpec {
            prefix: format!("xlb-bench-{}", std::process::id()),
            targets: 2,
        })
        .unwrap();
        rig.start_backends(&args.backend).unwrap();
        let dir = std::env::temp_dir().join("xlb-bench");
        std::fs::create_dir_all(&dir).unwrap();
        let (config, socket) = (dir.join("xlb.toml"), dir.join("xlb.sock"));
        let setup = Setup {
            interval_s: 1,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            ..Setup::demo(&[1, 2])
        };
        std::fs::write(&config, rig.config(&socket, &setup)).unwrap();
        rig.start_agent(&args.xlb, &config).unwrap();
        let state = || {
            let out = Command::new(&args.xlb)
                .args(["targets", "health", "web", "--json", "--socket"])
                .arg(&socket)
                .output()
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v[0]["targets"]
                .as_array()
                .and_then(|t| {
                    t.iter()
                        .find(|t| t["address"] == "198.18.2.2")
                        .map(|t| t["state"].as_str().unwrap_or("").to_owned())
                })
                .unwrap_or_default()
        };
        let wait = |want: &str| {
            let t0 = Instant::now();
            while state() != want {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "backend-2 never became {want}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            t0.elapsed()
        };
        wait("healthy");
        rig.stop("backend-2");
        let took = wait("unhealthy");
        eprintln!(
            "  health detection, run {}: {:.0} ms",
            rep + 1,
            took.as_secs_f64() * 1000.0
        );
        v.push(took.as_secs_f64() * 1000.0);
        drop(rig);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let f = figure(
        "control",
        "health-check detection (interval 1 s, unhealthy threshold 2)",
        "ms",
        v,
    );
    let met = f.median <= 3000.0;
    f.goal("<= interval x threshold + interval", met)
}
