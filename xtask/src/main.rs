//! `cargo xtask`: the two commands of the README (`run`, `test`) and their helpers.
//! Every step says what it does; missing tools are installed, present ones are left alone.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// bpf-linker's LLVM must match rustc's (22 in the pinned 1.95.0): 0.10.4 loads rustc's own.
const BPF_LINKER_VERSION: &str = "0.10.4";
/// What only the benchmark compares against.
const BENCH_APT: &[(&str, &str)] = &[
    ("command -v wrk", "wrk"),
    ("command -v haproxy", "haproxy"),
    ("command -v nft", "nftables"),
    // The metrics test: a real Prometheus scraping the agent, and promtool's lint.
    ("command -v prometheus", "prometheus"),
    // The `xlb top` test's terminal.
    ("command -v tmux", "tmux"),
    ("command -v iperf3", "iperf3"),
];

/// Debian packages the rig, the demo, the tests and the benchmark use, each with the shell
/// condition that shows it is there.
const APT: &[(&str, &str)] = &[
    ("command -v ip", "iproute2"),
    ("command -v ethtool", "ethtool"),
    ("command -v curl", "curl"),
    ("command -v nc", "netcat-openbsd"),
    ("command -v ping", "iputils-ping"),
    ("command -v setpriv", "util-linux"),
    // The SYN-flood test's flood (spoofed sources).
    ("command -v hping3", "hping3"),
    // The fleet tests: BGP between the nodes and the router, and a node's silent loss.
    ("command -v bird", "bird2"),
    ("command -v nft", "nftables"),
    // The benchmark's plot: fontconfig (built against) and a font.
    ("command -v pkg-config", "pkg-config"),
    (
        "test -f /usr/include/fontconfig/fontconfig.h",
        "libfontconfig1-dev",
    ),
    (
        "test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
];

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing, build, and run the demo rig (`-- --fleet`: three nodes behind
    /// ECMP with BGP; `-- --dsr`: the direct server
    /// return demo; `-- --config FILE`: the agent on this host).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Install what is missing, build, and run every test (unit, BPF_PROG_TEST_RUN fixtures,
    /// namespace tests with real clients).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// rustfmt and clippy (-D warnings) on the host crates and on the eBPF crate.
    Lint,
    /// Measure the XDP program's cost per packet against a bare XDP_PASS program.
    Bench {
        /// Extra arguments for xlb-bench (e.g. --runs 50000).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Bring the demo rig up (with backends) or down, without the agent.
    Rig {
        #[arg(value_parser = ["up", "down"])]
        action: String,
    },
    /// Build the Debian package (target/debian/xlb_VERSION_ARCH.deb) with cargo-deb.
    Package,
    /// Only install what is missing.
    Setup,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Package => {
            setup()?;
            package()
        }
        Cmd::Run { args } => {
            setup()?;
            need_root("run")?;
            build(&["--release"])?;
            let bin = root.join("target/release");
            if args.is_empty() || args == ["--dsr"] || args == ["--fleet"] {
                step("starting the demo rig (Ctrl-C stops it)");
                run_foreground(
                    Command::new(bin.join("xlb-rig"))
                        .args(["demo", "--xlb"])
                        .arg(bin.join("xlb"))
                        .arg("--backend")
                        .arg(bin.join("xlb-backend"))
                        .args(&args),
                )
            } else {
                run_foreground(Command::new(bin.join("xlb")).arg("run").args(&args))
            }
        }
        Cmd::Test { args } => {
            setup()?;
            need_root("test")?;
            build(&[])?;
            // The package test installs what `cargo xtask package` builds.
            package()?;
            step("cargo test (unit, fixtures, namespace tests)");
            run_cmd(
                Command::new("cargo")
                    .args(["test", "--no-fail-fast"])
                    .args(&args)
                    .env("XLB_BIN", root.join("target/debug/xlb")),
            )
        }
        Cmd::Lint => {
            setup()?;
            step("cargo fmt --check");
            run_cmd(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
            step("clippy, host crates");
            run_cmd(Command::new("cargo").args([
                "clippy",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            step("clippy, eBPF crates: the product's and the benchmark's (bpfel-unknown-none)");
            run_cmd(
                Command::new("cargo")
                    .args([
                        "clippy",
                        "-p",
                        "lb-ebpf",
                        "-p",
                        "xlb-bench-ebpf",
                        "--features",
                        "xlb-bench-ebpf/programs",
                        "--release",
                        "--target",
                        "bpfel-unknown-none",
                    ])
                    .args([
                        "-Z",
                        "build-std=core",
                        "--target-dir",
                        "target/ebpf-clippy",
                        "--",
                        "-D",
                        "warnings",
                    ])
                    .env("RUSTC_BOOTSTRAP", "1"),
            )
        }
        Cmd::Bench { args } => {
            setup()?;
            apt_install(BENCH_APT)?;
            need_root("bench")?;
            build(&["--release"])?;
            step("xlb-bench: program cost, control plane; writes BENCHMARKS.md");
            let bin = root.join("target/release");
            run_cmd(
                Command::new(bin.join("xlb-bench"))
                    .arg("--xlb")
                    .arg(bin.join("xlb"))
                    .arg("--backend")
                    .arg(bin.join("xlb-backend"))
                    .args(&args),
            )
        }
        Cmd::Rig { action } => {
            setup()?;
            need_root("rig")?;
            build(&["--release"])?;
            let bin = root.join("target/release");
            let mut c = Command::new(bin.join("xlb-rig"));
            c.arg(&action);
            if action == "up" {
                c.arg("--backend").arg(bin.join("xlb-backend"));
            }
            run_cmd(&mut c)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

fn step(what: &str) {
    eprintln!("xtask: {what}");
}

fn run_cmd(c: &mut Command) -> anyhow::Result<()> {
    let status = c.status().with_context(|| format!("spawning {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

fn ok(c: &mut Command) -> bool {
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

fn need_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {what}` loads XDP programs and creates network namespaces: run it as root (sudo -E cargo xtask {what})"
        );
    }
    Ok(())
}

/// Pid of the foreground child that SIGINT/SIGTERM are passed on to (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our own child's.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Run a long-lived child that cleans up after itself on SIGINT/SIGTERM: xtask passes those
/// signals on and waits for it, instead of dying first and leaving the rig behind.
fn run_foreground(c: &mut Command) -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing a handler that only calls kill (async-signal-safe).
        unsafe { libc::signal(sig, forward_signal as *const () as libc::sighandler_t) };
    }
    let mut child = c.spawn().with_context(|| format!("spawning {c:?}"))?;
    CHILD.store(i32::try_from(child.id())?, Ordering::SeqCst);
    let status = child.wait()?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

fn setup() -> anyhow::Result<()> {
    step("toolchain: rustup toolchain install (components from rust-toolchain.toml)");
    run_cmd(Command::new("rustup").args(["toolchain", "install"]))?;

    let have = Command::new("bpf-linker").arg("--version").output();
    let current = have
        .as_ref()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if current
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
    } else {
        step(&format!(
            "bpf-linker {BPF_LINKER_VERSION}: installing with cargo install (about 2 minutes)"
        ));
        run_cmd(Command::new("cargo").args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ]))?;
    }

    apt_install(APT)
}

/// cargo-deb builds the package: the release binary, the systemd unit, the example config.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// `target/debian/xlb_*.deb`, cargo-deb installed first if missing.
fn package() -> anyhow::Result<()> {
    let have = Command::new("cargo").args(["deb", "--version"]).output();
    if have.as_ref().is_ok_and(|o| o.status.success()) {
        step("cargo-deb: present");
    } else {
        step(&format!(
            "cargo-deb {CARGO_DEB_VERSION}: installing with cargo install (about a minute)"
        ));
        run_cmd(Command::new("cargo").args([
            "install",
            &format!("cargo-deb@{CARGO_DEB_VERSION}"),
            "--locked",
        ]))?;
    }
    step("the Debian package: cargo deb -p lb-user (release build, stripped)");
    run_cmd(Command::new("cargo").args(["deb", "-p", "lb-user", "--strip"]))
}

/// Install the packages whose check fails (root), or say which are missing.
fn apt_install(list: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = list
        .iter()
        .filter(|(check, _)| !ok(Command::new("sh").args(["-c", check])))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        step("system packages: present");
    } else if is_root() {
        step(&format!(
            "system packages: apt-get install {}",
            missing.join(" ")
        ));
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    } else {
        bail!(
            "missing system packages: {} (install them, or run as root)",
            missing.join(" ")
        );
    }
    Ok(())
}

fn build(profile: &[&str]) -> anyhow::Result<()> {
    step("building xlb, the XDP program, the rig and the backend");
    run_cmd(
        Command::new("cargo")
            .args(["build", "-p", "lb-user", "-p", "tests", "--bins"])
            .args(profile),
    )
}
