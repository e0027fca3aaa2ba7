//! Network namespaces with RAII cleanup, and a command helper that fails loudly.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

/// Run a command line (split on whitespace); error with its stderr if it fails.
pub fn sh(cmd: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = cmd.split_whitespace().collect();
    let out = Command::new(parts[0])
        .args(&parts[1..])
        .output()
        .with_context(|| format!("spawning {cmd}"))?;
    check(cmd, out)
}

fn check(cmd: &str, out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace that is deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Self> {
        assert!(
            name.starts_with("xlb-"),
            "project namespaces start with xlb-: {name}"
        );
        // Never clobber: a namespace of this name may be another run's (tests and rigs name
        // theirs uniquely per process; the demos remove their own leftovers first).
        anyhow::ensure!(
            !std::path::Path::new("/var/run/netns").join(name).exists(),
            "namespace {name} exists already (another run's, or a leftover: ip netns del {name})"
        );
        sh(&format!("ip netns add {name}"))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.exec("ip link set lo up")?;
        Ok(ns)
    }

    /// Run `cmd` inside the namespace.
    pub fn exec(&self, cmd: &str) -> anyhow::Result<String> {
        sh(&format!("ip netns exec {} {cmd}", self.name))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec(&format!("sysctl -qw {key}={value}")).map(drop)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Move the *calling thread* into this namespace (sockets and netlink calls it makes from
    /// then on live here). Used by tests that run BPF_PROG_TEST_RUN against this namespace's
    /// routes.
    pub fn enter_current_thread(&self) -> anyhow::Result<()> {
        let f = File::open(format!("/var/run/netns/{}", self.name))?;
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns {}: {}", self.name, std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn ifindex(&self, dev: &str) -> anyhow::Result<u32> {
        let out = self.exec(&format!("cat /sys/class/net/{dev}/ifindex"))?;
        Ok(out.trim().parse()?)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = sh(&format!("ip netns del {}", self.name)) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Create a veth pair with one end in each namespace, and bring both up.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> anyhow::Result<()> {
    sh(&format!(
        "ip link add {a_dev} netns {} type veth peer name {b_dev} netns {}",
        a.name, b.name
    ))?;
    a.exec(&format!("ip link set {a_dev} up"))?;
    b.exec(&format!("ip link set {b_dev} up"))?;
    Ok(())
}

/// A BPF filesystem mounted at a fresh folder, unmounted (releasing whatever is pinned in it)
/// and removed on drop, also when a test fails.
pub struct BpfFs(pub std::path::PathBuf);

impl BpfFs {
    pub fn mount(path: std::path::PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&path)?;
        sh(&format!("mount -t bpf bpf {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = sh(&format!("umount {}", self.0.display()));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// An XDP program on `dev` in `ns` that passes everything but IP-in-IP to the host (xlb's
/// decapsulation program, with no address to decapsulate for), kept attached as long as the
/// value lives. A veth only receives the frames its peer sends back with `XDP_TX` promptly when
/// it runs an XDP program itself (the kernel schedules its queue only then); GRO alone leaves
/// them waiting until other traffic comes.
pub fn xdp_receiver(ns: &Netns, dev: &str) -> anyhow::Result<xlb::dataplane::decap::Decap> {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter_current_thread()?;
            let mut d = xlb::dataplane::decap::Decap::load(xlb::DECAP_OBJECT)?;
            d.attach(dev)?;
            Ok(d)
        })
        .join()
        .expect("attach thread")
    })
}
