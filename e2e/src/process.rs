//! Child processes that never outlive the test process that started them.
//!
//! Each program runs under a tiny bash watchdog that polls the owner's PID: when the owner is gone (test
//! passed, failed, panicked or was killed), the watchdog kills its one child, by PID. Stopping a
//! [`Supervised`] sends SIGTERM to the watchdog, which forwards it. Output goes to a log file whose tail
//! is printed when something fails.

use anyhow::{Context, Result};
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

// SIGTERM, then SIGKILL after 5 s: a kube-apiserver whose etcd is already gone can hang in shutdown.
const WATCHDOG: &str = r#"owner=$1; shift
"$@" & c=$!
stop() { kill -TERM $c 2>/dev/null; for _ in $(seq 50); do kill -0 $c 2>/dev/null || return; sleep 0.1; done; kill -KILL $c 2>/dev/null; }
trap 'stop; wait $c; exit 143' TERM INT
while kill -0 "$owner" 2>/dev/null && kill -0 "$c" 2>/dev/null; do sleep 0.3; done
stop
wait $c"#;

/// A program started under a watchdog.
#[derive(Debug)]
pub struct Supervised {
    /// A name for messages.
    pub name: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    child: Child,
}

impl Supervised {
    /// Starts `program args` with output to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg("ferrite-watchdog")
            .arg(std::process::id().to_string())
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            log: log.to_path_buf(),
            child,
        })
    }

    /// PID of the watchdog (the program is its only child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// PID of the program itself (the watchdog's child), if it is running.
    pub fn program_pid(&self) -> Option<u32> {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid())).ok()?;
        // The watchdog's children are the program and, between polls, a short `sleep`.
        children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() != "sleep")
            })
    }

    /// SIGKILL to the program (a crash, not a shutdown: it gets no chance to clean up).
    pub fn crash(&mut self) {
        if let Some(pid) = self.program_pid() {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
        self.stop(Duration::from_secs(2));
    }

    /// True while the program runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if !self.is_running() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The watchdog did not finish in time: kill the program first (by its own PID), then the
        // watchdog, so the program is never left running without its watchdog.
        if let Some(pid) = self.program_pid() {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The last `lines` lines of a file, or a note that it cannot be read.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let all: Vec<&str> = s.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Removes `dir` once the current process has exited (for state that outlives every Drop, like a
/// box shared through a static).
pub fn remove_after_exit(dir: &Path) -> Result<()> {
    Command::new("bash")
        .arg("-c")
        .arg(r#"while kill -0 "$1" 2>/dev/null; do sleep 0.5; done; sleep 1; rm -rf -- "$2""#)
        .arg("ferrite-janitor")
        .arg(std::process::id().to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the janitor")?;
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for tests on one machine).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
