//! A long-running ARP prober in a network namespace: one process, started once before the first
//! Service, that holds an open `AF_PACKET` socket on the client's interface and is told which address to
//! ask for, so a probe costs no process start-up (one arping per Service took ~84 ms to start, which
//! the create -> first ARP answer clock used to include).
//!
//! ```text
//!   bench ──"probe IP EVERY_MS LIMIT_MS"──> prober (python3's socket module, in the client netns)
//!     ^                                        │ ARP request for IP every EVERY_MS
//!     └── "reply IP MAC" / "none IP" ──────────┘ first reply from IP addressed to the client
//!         (timestamped when the bench reads the line)
//! ```
//!
//! The prober is Python because this crate forbids `unsafe` and Rust's standard library has no
//! `AF_PACKET` sockets; Python's `socket` module does, safely, and starts once.

use anyhow::{Context, Result, bail};
use std::{
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

/// The prober: reads `probe IP EVERY_MS LIMIT_MS` lines, answers each with one line.
const SCRIPT: &str = r#"
import fcntl, socket, struct, sys, time
iface = sys.argv[1]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((iface, 0x0806))
mac = s.getsockname()[4][:6]
inet = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
me = fcntl.ioctl(inet.fileno(), 0x8915, struct.pack('256s', iface.encode()[:15]))[20:24]
print('ready', socket.inet_ntoa(me), mac.hex(':'), flush=True)
for line in sys.stdin:
    parts = line.split()
    if len(parts) != 4 or parts[0] != 'probe':
        print('bad', line.strip(), flush=True)
        continue
    target = socket.inet_aton(parts[1])
    every, limit = int(parts[2]) / 1000.0, int(parts[3]) / 1000.0
    req = (b'\xff' * 6 + mac + b'\x08\x06' + b'\x00\x01\x08\x00\x06\x04\x00\x01'
           + mac + me + b'\x00' * 6 + target)
    start = time.monotonic()
    nxt = start
    found = None
    while found is None and time.monotonic() - start < limit:
        now = time.monotonic()
        if now >= nxt:
            s.send(req)
            nxt += every
        s.settimeout(max(nxt - time.monotonic(), 0.0005))
        try:
            f = s.recv(128)
        except socket.timeout:
            continue
        if (len(f) >= 42 and f[12:14] == b'\x08\x06' and f[20:22] == b'\x00\x02'
                and f[28:32] == target and f[38:42] == me):
            found = f[22:28].hex(':')
    if found is None:
        print('none', parts[1], flush=True)
    else:
        print('reply', parts[1], found, flush=True)
"#;

/// The prober process; stopped when dropped.
#[derive(Debug)]
pub struct ArpProber {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<(String, Instant)>,
}

impl ArpProber {
    /// Starts the prober in network namespace `netns` (as `ip netns exec` names it) on `iface`; waits
    /// (at most 10 s) until its socket is open.
    pub fn start(netns: &str, iface: &str) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "python3", "-c", SCRIPT, iface])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the ARP prober (ip netns exec … python3)")?;
        let stdin = child.stdin.take().context("prober stdin")?;
        let stdout = child.stdout.take().context("prober stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("arp-prober-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    // The time the answer reached the benchmark: the clock's stop.
                    if tx.send((line, Instant::now())).is_err() {
                        return;
                    }
                }
            })
            .context("spawning the prober's reader")?;
        let mut p = ArpProber { child, stdin, lines };
        match p.lines.recv_timeout(Duration::from_secs(10)) {
            Ok((l, _)) if l.starts_with("ready ") => Ok(p),
            Ok((l, _)) => bail!("the ARP prober said {l:?} instead of ready"),
            Err(_) => {
                let status = p.child.try_wait().ok().flatten();
                bail!("the ARP prober did not start within 10 s (exit: {status:?}; needs python3 and root)")
            }
        }
    }

    /// Asks for `ip` every `every` until the first reply addressed to the client or `limit`: the
    /// replying MAC and when the benchmark read the answer. Blocks the calling thread.
    pub fn probe(&mut self, ip: Ipv4Addr, every: Duration, limit: Duration) -> Option<(String, Instant)> {
        // Answers of an earlier probe that timed out here are stale.
        while self.lines.try_recv().is_ok() {}
        writeln!(
            self.stdin,
            "probe {ip} {} {}",
            every.as_millis().max(1),
            limit.as_millis().max(1)
        )
        .ok()?;
        self.stdin.flush().ok()?;
        let deadline = Instant::now() + limit + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (line, at) = self.lines.recv_timeout(left).ok()?;
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["reply", got, mac] if *got == ip.to_string() => return Some((mac.to_string(), at)),
                ["none", got] if *got == ip.to_string() => return None,
                _ => {}
            }
        }
    }
}

impl Drop for ArpProber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
