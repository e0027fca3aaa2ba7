//! The Debian package (`cargo xtask package`, built by `cargo xtask test` before the tests):
//! it installs with dpkg on this machine, `xlb --version` runs, systemd accepts the unit, the
//! example config passes `xlb check`, and a purge leaves none of its files behind.
use std::{path::PathBuf, process::Command};

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").args(["-c", cmd]).output().unwrap()
}

/// The newest `target/debian/xlb_*.deb`.
fn deb() -> PathBuf {
    // target/<profile>/deps/<test> -> target/debian
    let exe = std::env::current_exe().unwrap();
    let dir = exe.ancestors().nth(3).unwrap().join("debian");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask package` first)", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("xlb_"))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("an xlb_*.deb in target/debian")
}

/// Purges the package when the test ends, passed or failed.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = sh("dpkg --purge xlb");
    }
}

#[test]
fn the_package_installs_runs_and_purges_without_a_trace() {
    assert!(
        !sh("dpkg -s xlb").status.success(),
        "an xlb package is installed on this machine already: this test installs and purges its own"
    );
    let deb = deb();
    let out = sh(&format!("dpkg -i {}", deb.display()));
    let _guard = Installed;
    assert!(out.status.success(), "dpkg -i: {out:?}");
    let files: Vec<String> = String::from_utf8(sh("dpkg -L xlb").stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(files.iter().any(|f| f == "/usr/bin/xlb"), "{files:?}");
    let v = sh("/usr/bin/xlb --version");
    assert!(v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stdout)
            .starts_with(&format!("xlb {}", env!("CARGO_PKG_VERSION"))),
        "{v:?}"
    );
    let verify = sh("systemd-analyze verify /lib/systemd/system/xlb.service");
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {verify:?}"
    );
    assert!(
        verify.stderr.is_empty() && verify.stdout.is_empty(),
        "systemd-analyze verify complained: {verify:?}"
    );
    let check = sh("/usr/bin/xlb check --config /etc/xlb/xlb.toml");
    assert!(check.status.success(), "{check:?}");
    // What the service creates at run time, as systemd would.
    std::fs::create_dir_all("/var/lib/xlb").unwrap();
    std::fs::write("/var/lib/xlb/state.json", "{}").unwrap();
    let purge = sh("dpkg --purge xlb");
    assert!(purge.status.success(), "{purge:?}");
    // Everything the package owned that is its own (not a shared directory like /usr/bin).
    let own = |f: &&String| {
        f.contains("xlb")
            && ![
                "/usr",
                "/usr/bin",
                "/lib",
                "/lib/systemd",
                "/lib/systemd/system",
                "/etc",
            ]
            .contains(&f.as_str())
    };
    for f in files.iter().filter(own) {
        assert!(
            !std::path::Path::new(f).exists(),
            "{f} is still there after the purge"
        );
    }
    assert!(!std::path::Path::new("/var/lib/xlb").exists());
    assert!(!sh("dpkg -s xlb").status.success());
}
