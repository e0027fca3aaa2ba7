//! Processes a rig starts (agents, servers), each stopped by PID when the rig goes, also when a
//! test fails.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// How long a child (agent, backend) may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct Children(Vec<(String, Child)>);

impl Children {
    /// Spawn `cmd` and wait for a line containing `marker` on its stdout or stderr.
    pub fn spawn_until(
        &mut self,
        name: &str,
        mut cmd: std::process::Command,
        marker: &str,
    ) -> anyhow::Result<()> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            let tag = name.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[{tag}] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        self.0.push((name.to_owned(), child));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return Ok(()),
                Ok(_) => {}
                Err(_) => bail!("{name} did not become ready within {READY_TIMEOUT:?}"),
            }
        }
    }

    /// Stop the named child with SIGTERM (then SIGKILL after 5 s) and return its exit status.
    pub fn stop(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        let (_, child) = self.0.remove(i);
        terminate(child)
    }

    /// Kill the named child with SIGKILL (a crash: no clean-up of its own) and reap it.
    pub fn kill(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let i = self.0.iter().position(|(n, _)| n == name)?;
        let (_, mut child) = self.0.remove(i);
        let _ = child.kill();
        child.wait().ok()
    }

    /// Whether the named child has exited (and how).
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let (_, child) = self.0.iter_mut().find(|(n, _)| n == name)?;
        child.try_wait().ok().flatten()
    }

    /// Stop every child, the last started first.
    pub fn stop_all(&mut self) {
        for (_, child) in self.0.drain(..).rev() {
            terminate(child);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn terminate(mut child: Child) -> Option<std::process::ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    let pid = i32::try_from(child.id()).ok()?;
    // SAFETY: signalling a child we spawned and have not reaped, by its pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}
