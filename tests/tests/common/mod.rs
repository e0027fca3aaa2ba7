//! Shared by the namespace test files: a rig with backends and the agent binary running, and
//! helpers for real clients in the client namespace.
#![allow(dead_code, reason = "each test file uses its own subset")]
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use xlb_rig::{Rig, RigSpec, Setup, rig::VIP};

pub fn xlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XLB_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/xlb
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("xlb");
    assert!(
        p.exists(),
        "{} not built: run `cargo xtask test` (it builds xlb first)",
        p.display()
    );
    p
}

pub fn backend_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xlb-backend"))
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Field order matters: the rig (agent, backends, namespaces) goes before its directory.
pub struct Env {
    pub rig: Rig,
    pub dir: TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
}

impl Env {
    /// A rig with `hosts` target hosts (all serving) and the agent running with `setup`.
    pub fn start(tag: &str, hosts: usize, setup: &Setup) -> Self {
        // Unique per run: two runs at once never meet (see `Netns::create`).
        let prefix = format!("xlb-n{tag}-{}", std::process::id());
        let dir = TempDir(std::env::temp_dir().join(&prefix));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        let mut rig = Rig::up(&RigSpec {
            prefix,
            targets: hosts,
        })
        .unwrap();
        rig.start_backends(backend_bin()).unwrap();
        let config = dir.0.join("xlb.toml");
        let socket = dir.0.join("xlb.sock");
        let mut env = Self {
            rig,
            dir,
            config,
            socket,
        };
        env.write_config(setup);
        env.start_agent();
        env
    }

    pub fn start_agent(&mut self) {
        self.rig.start_agent(&xlb_bin(), &self.config).unwrap();
    }

    pub fn write_config(&self, setup: &Setup) {
        std::fs::write(&self.config, self.rig.config(&self.socket, setup)).unwrap();
    }

    pub fn xlb(&self, args: &[&str]) -> Output {
        Command::new(xlb_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.xlb(&a);
        assert!(
            out.status.success(),
            "xlb {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn status_json(&self) -> serde_json::Value {
        self.json(&["status"])
    }

    pub fn reason(&self, name: &str) -> u64 {
        let s = self.status_json();
        s["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["packets"]
            .as_u64()
            .unwrap()
    }

    /// State of `address:port` in `group`, from `xlb targets health GROUP --json`.
    pub fn state(&self, group: &str, address: &str, port: u16) -> (String, String) {
        let v = self.json(&["targets", "health", group]);
        let t = v[0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["address"] == address && t["port"] == port)
            .unwrap_or_else(|| panic!("{address}:{port} not in {v}"))
            .clone();
        (
            t["state"].as_str().unwrap().to_owned(),
            t["reason"].as_str().unwrap().to_owned(),
        )
    }

    /// Poll until `address:port` in `group` is in `state`; the time it took.
    pub fn wait_state(
        &self,
        group: &str,
        address: &str,
        port: u16,
        state: &str,
        limit: Duration,
    ) -> Duration {
        let t0 = Instant::now();
        loop {
            let (s, reason) = self.state(group, address, port);
            if s == state {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < limit,
                "{address}:{port} still {s} ({reason}) after {limit:?}, waiting for {state}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Env::wait_state`] for both targets of the demo's `web` group (198.18.1.2 and
    /// 198.18.2.2, port 8080), one after the other, each within `limit`.
    pub fn wait_web(&self, state: &str, limit: Duration) {
        for address in ["198.18.1.2", "198.18.2.2"] {
            self.wait_state("web", address, 8080, state, limit);
        }
    }

    /// `curl URL` from the client namespace: the body.
    pub fn curl(&self, url: &str) -> String {
        let out = self
            .rig
            .client
            .command("curl")
            .args(["-s", "-m", "5", url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {url}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub fn curls(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| self.curl(&format!("http://{VIP}/")))
            .collect()
    }

    /// Run `f` on a thread that lives in the client namespace (real sockets from the client).
    pub fn in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        in_netns(&self.rig.client, f)
    }

    /// `n` new connections to the VIP from real sockets in the client: which backend answered.
    pub fn new_connections(&self, n: usize) -> Vec<String> {
        self.in_client(move || {
            (0..n)
                .map(|_| {
                    let mut c = Conn::open().expect("connect to the VIP");
                    c.get().expect("GET through the VIP")
                })
                .collect()
        })
        .join()
        .unwrap()
    }
}

/// Run `f` on a thread that lives in namespace `ns` (its sockets are the namespace's).
pub fn in_netns<T: Send + 'static>(
    ns: &xlb_rig::Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let name = ns.name.clone();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(format!("/var/run/netns/{name}")).unwrap();
        // SAFETY: setns on a valid namespace fd; affects only this thread.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
}

/// A keep-alive HTTP connection to the VIP.
pub struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open() -> std::io::Result<Self> {
        Self::open_to(&format!("{VIP}:80"), Duration::from_secs(5))
    }

    /// A connection to `addr` (ADDRESS:PORT) whose reads wait `read_timeout`.
    pub fn open_to(addr: &str, read_timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))?;
        Self::from_stream(stream, read_timeout)
    }

    /// A connection made elsewhere (a connected stream), its reads waiting `read_timeout`.
    pub fn from_stream(stream: TcpStream, read_timeout: Duration) -> std::io::Result<Self> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(read_timeout))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    /// One request on this connection: the body (the backend's name).
    pub fn get(&mut self) -> std::io::Result<String> {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
        let mut len = 0;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().map_err(std::io::Error::other)?;
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().to_owned())
    }
}

/// Download `url` with curl from `ns` (30 s at most): the bytes that arrived and the seconds it
/// took.
pub fn download(ns: &xlb_rig::Netns, url: &str) -> (u64, f64) {
    let out = ns
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            "--max-time",
            "30",
            url,
        ])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    let bytes = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let secs = words.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
    (bytes, secs)
}
