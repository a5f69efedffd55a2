//! The JSON access log: one line per request, written by a dedicated thread so a slow stdout never
//! slows a request. Requests hand their line to a bounded channel with `try_send`; when the channel
//! is full the line is dropped and counted (`ferrite_ingress_access_log_dropped_total`).
//!
//! ```text
//!   request end ──format line──> sync_channel(access_log_buffer) ──> writer thread ──> stdout (buffered,
//!                     └─ full: drop + count                                            flushed when idle)
//! ```

use std::fmt;
use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;

/// Where access log lines go. `Default` is the process's stdout.
#[derive(Clone, Default)]
pub struct AccessLogSink(Option<Arc<Mutex<Box<dyn Write + Send>>>>);

impl fmt::Debug for AccessLogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "AccessLogSink(writer)"
        } else {
            "AccessLogSink(stdout)"
        })
    }
}

impl AccessLogSink {
    /// The process's standard output.
    pub fn stdout() -> Self {
        AccessLogSink(None)
    }

    /// Any writer (a file, a test buffer). Written from the log thread only.
    pub fn writer(w: impl Write + Send + 'static) -> Self {
        AccessLogSink(Some(Arc::new(Mutex::new(Box::new(w)))))
    }
}

/// The sending side held by the proxy; the writer thread ends when it is dropped (after writing
/// what was queued).
pub(crate) struct AccessLog {
    tx: SyncSender<String>,
    dropped: IntCounter,
}

impl AccessLog {
    pub fn start(sink: AccessLogSink, capacity: usize, dropped: IntCounter) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity.max(1));
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, sink))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues a line without ever blocking.
    pub fn send(&self, line: String) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

fn write_lines(rx: Receiver<String>, sink: AccessLogSink) {
    let mut out: Box<dyn Write> = match sink.0 {
        Some(w) => Box::new(SharedWriter(w)),
        None => Box::new(std::io::stdout()),
    };
    let mut buf = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
    while let Ok(line) = rx.recv() {
        let _ = buf.write_all(line.as_bytes());
        // Write everything already queued, then flush once: one syscall per burst, and a quiet
        // proxy's lines show up at once.
        while let Ok(line) = rx.try_recv() {
            let _ = buf.write_all(line.as_bytes());
        }
        let _ = buf.flush();
    }
    let _ = buf.flush();
}

struct SharedWriter(Arc<Mutex<Box<dyn Write + Send>>>);

impl Write for SharedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(data)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

/// One request's fields, formatted as one JSON object line.
pub(crate) struct Entry<'a> {
    pub time: SystemTime,
    pub remote_addr: std::net::IpAddr,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub upstream_addr: Option<std::net::SocketAddr>,
    pub request_duration: Duration,
    pub upstream_duration: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub request_id: &'a str,
    pub namespace: &'a str,
    pub ingress: &'a str,
    pub service: &'a str,
    pub user_agent: &'a str,
}

fn push_str(out: &mut String, key: &str, value: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    // serde_json escapes quotes, backslashes, control characters; the bytes were checked to be a
    // valid header value or request target by hyper.
    match serde_json::to_string(value) {
        Ok(s) => out.push_str(&s),
        Err(_) => out.push_str("\"\""),
    }
    out.push(',');
}

fn push_raw(out: &mut String, key: &str, value: impl fmt::Display) {
    use std::fmt::Write as _;
    let _ = write!(out, "\"{key}\":{value},");
}

impl Entry<'_> {
    pub fn to_line(&self) -> String {
        let mut out = String::with_capacity(384);
        out.push('{');
        push_str(&mut out, "time", &rfc3339(self.time));
        push_str(&mut out, "remote_addr", &self.remote_addr.to_string());
        push_str(&mut out, "host", self.host);
        push_str(&mut out, "method", self.method);
        push_str(&mut out, "path", self.path);
        push_str(&mut out, "protocol", self.protocol);
        push_raw(&mut out, "status", self.status);
        match self.upstream_addr {
            Some(a) => push_str(&mut out, "upstream_addr", &a.to_string()),
            None => push_raw(&mut out, "upstream_addr", "null"),
        }
        push_raw(
            &mut out,
            "request_duration",
            format_args!("{:.6}", self.request_duration.as_secs_f64()),
        );
        match self.upstream_duration {
            Some(d) => push_raw(
                &mut out,
                "upstream_duration",
                format_args!("{:.6}", d.as_secs_f64()),
            ),
            None => push_raw(&mut out, "upstream_duration", "null"),
        }
        push_raw(&mut out, "bytes_in", self.bytes_in);
        push_raw(&mut out, "bytes_out", self.bytes_out);
        push_str(&mut out, "request_id", self.request_id);
        push_str(&mut out, "namespace", self.namespace);
        push_str(&mut out, "ingress", self.ingress);
        push_str(&mut out, "service", self.service);
        push_str(&mut out, "user_agent", self.user_agent);
        out.pop();
        out.push_str("}\n");
        out
    }
}

/// RFC 3339 in UTC with milliseconds: `2026-12-01T15:04:05.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64, ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_798_761_599, 999)), "2026-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn line_is_one_json_object_with_escaped_strings() {
        let e = Entry {
            time: SystemTime::UNIX_EPOCH,
            remote_addr: "2001:db8::1".parse().expect("ip"),
            host: "a.test",
            method: "GET",
            path: "/x\"y\\z?q=\u{7}",
            protocol: "HTTP/1.1",
            status: 200,
            upstream_addr: None,
            request_duration: Duration::from_millis(12),
            upstream_duration: Some(Duration::from_micros(1500)),
            bytes_in: 0,
            bytes_out: 42,
            request_id: "abc",
            namespace: "web",
            ingress: "main",
            service: "svc",
            user_agent: "curl/8\n{\"injected\":1}",
        };
        let line = e.to_line();
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["path"], "/x\"y\\z?q=\u{7}");
        assert_eq!(v["user_agent"], "curl/8\n{\"injected\":1}");
        assert_eq!(v["upstream_addr"], serde_json::Value::Null);
        assert_eq!(v["upstream_duration"], 0.0015);
        assert_eq!(v["remote_addr"], "2001:db8::1");
        assert_eq!(v["status"], 200);
    }

    #[test]
    fn full_channel_drops_and_counts() {
        use std::sync::mpsc;
        /// Blocks its first write until released, telling the test when it got there.
        struct Stuck {
            entered: mpsc::Sender<()>,
            release: Option<mpsc::Receiver<()>>,
            seen: Arc<Mutex<Vec<u8>>>,
        }
        impl Write for Stuck {
            fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
                if let Some(release) = self.release.take() {
                    let _ = self.entered.send(());
                    let _ = release.recv();
                }
                self.seen.lock().expect("lock").extend_from_slice(d);
                Ok(d.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let dropped = IntCounter::new("d", "d").expect("counter");
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = AccessLogSink::writer(Stuck {
            entered: entered_tx,
            release: Some(release_rx),
            seen: seen.clone(),
        });
        let log = AccessLog::start(sink, 2, dropped.clone()).expect("thread");
        log.send("first\n".to_string());
        entered_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("writer blocked");
        // The writer is stuck: two lines fit in the channel, the other 18 are dropped at once.
        let started = std::time::Instant::now();
        for _ in 0..20 {
            log.send("x\n".to_string());
        }
        assert!(started.elapsed() < Duration::from_secs(1), "send blocked");
        assert_eq!(dropped.get(), 18);
        release_tx.send(()).expect("release");
        drop(log);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.lock().expect("lock").len() < b"first\nx\nx\n".len()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(&seen.lock().expect("lock")[..], b"first\nx\nx\n");
    }
}
