//! Request framing checks below hyper, on downstream HTTP/1 connections.
//!
//! hyper's HTTP/1 server parser resolves two ambiguous framings silently before the request path
//! sees the request: `Content-Length` together with `Transfer-Encoding: chunked` (the
//! Content-Length is dropped, the body framed as chunked and the connection closed after the
//! response) and repeated identical `Content-Length` lines (folded into one). nginx answers both
//! with `400`, and so does ferrite-ingress: [`FramedIo`] wraps the connection's IO (after TLS and
//! the PROXY protocol header, before hyper) and follows the framing of the request byte stream:
//!
//! - every request head is parsed with `httparse` (the parser hyper uses, with the same settings)
//!   and refused when it has more than one `Content-Length` line (even equal ones), a
//!   `Content-Length` that is not plain digits, `Content-Length` together with
//!   `Transfer-Encoding`, or a `Transfer-Encoding` other than exactly one `chunked`;
//! - the body is skipped by its length (never looked at), or by its chunk sizes (only the chunk
//!   size lines, extensions and trailers are read, with hyper's grammar), to find the next head of
//!   a pipelined connection;
//! - a request that can switch protocols (`CONNECT`, or HTTP/1.1 `Upgrade` with `Connection:
//!   upgrade`, as the request path decides) ends the inspection: what follows may be a tunnel;
//! - a head that `httparse` refuses, or one over the header size limit, ends the inspection too:
//!   hyper refuses the same bytes itself (400 or 431) and closes the connection.
//!
//! Bytes are passed on unchanged, in the reader's own buffer (no copy), except for a head that
//! arrives in pieces (copied into a per-connection buffer until it is complete).
//!
//! A refused head never reaches hyper whole: the bytes before it are delivered, then a few bytes
//! no request head may contain ([`POISON`]), then end of file. hyper's parser refuses the head
//! it now holds exactly as it refuses any malformed one: `400 Bad Request` with `Connection:
//! close`, the connection closed, `ferrite_ingress_downstream_errors_total{reason="parse"}`, no
//! access log line, and nothing sent upstream. An invalid chunk size line (or CR/LF around chunk
//! data) is passed up as a read error at the point it starts, which fails the request body the
//! same way hyper's own chunk decoder does (the request path answers `400` and closes when the
//! upstream had not answered yet).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    #[error("Content-Length together with Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    #[error("more than one Content-Length header line")]
    DuplicateContentLength,
    #[error("invalid Content-Length")]
    InvalidContentLength,
    #[error("Transfer-Encoding other than exactly one chunked")]
    TransferEncoding,
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("invalid chunked body framing")]
    ChunkFraming,
}

/// Bytes that make hyper's parser refuse the partial head they follow, wherever it was cut: a
/// NUL is valid nowhere in a request head (method, target, version, name, value, line end), and
/// the empty line makes hyper parse the head at once.
pub(crate) const POISON: &[u8] = b"\0\r\n\r\n";

/// Header slots on the stack; a larger `max_headers` takes them from the heap per head.
const STACK_HEADERS: usize = 128;

/// What [`Scanner::scan`] found in one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// Every byte may be delivered.
    Pass,
    /// The request head that starts at `keep` (or, at 0, in an earlier read) is refused: deliver
    /// `..keep`, then [`POISON`].
    Head { keep: usize, violation: Violation },
    /// The chunked body is invalid at `keep`: deliver `..keep`, then a read error.
    Body { keep: usize, violation: Violation },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At or inside a request head (its first bytes in `partial` when it came in pieces).
    Head,
    /// Inside a body of this many more bytes.
    Body(u64),
    /// Inside a chunked body.
    Chunk(Chunk),
    /// No more inspection (upgrade, HTTP/2, a head hyper refuses itself).
    Passthrough,
}

/// hyper's chunked decoder states (`proto::h1::decode::ChunkedState`), with the same grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first hex digit of a chunk size.
    Start,
    Size(u64),
    /// Spaces or tabs after the size.
    Lws(u64),
    /// A chunk extension, up to CR.
    Ext(u64),
    /// The LF of the size line.
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk's size line: CR (the end) or a trailer line.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// Follows the framing of one connection's request byte stream. Pure: fed with the bytes of each
/// read in order, says which may be delivered.
#[derive(Debug)]
pub(crate) struct Scanner {
    state: State,
    /// The first bytes of a head that did not arrive in one read; empty otherwise. Its capacity
    /// is kept, so a connection allocates it at most once.
    partial: Vec<u8>,
    max_head: usize,
    max_headers: usize,
}

enum Parsed {
    Complete(usize, State),
    Partial,
    Refused(Violation),
    /// hyper refuses it too (or it is not HTTP/1: the HTTP/2 preface).
    Unparsable,
}

impl Scanner {
    /// `max_head` and `max_headers` are hyper's limits (`max_buf_size`, `max_headers`): a head
    /// over them is hyper's to refuse (431).
    pub fn new(max_head: usize, max_headers: usize) -> Scanner {
        Scanner {
            state: State::Head,
            partial: Vec::new(),
            max_head: max_head.max(1),
            max_headers,
        }
    }

    /// No inspection at all (HTTP/2 chosen by ALPN).
    pub fn passthrough() -> Scanner {
        Scanner {
            state: State::Passthrough,
            partial: Vec::new(),
            max_head: 1,
            max_headers: 0,
        }
    }

    pub fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    /// Follows the framing through the next bytes read from the connection.
    pub fn scan(&mut self, data: &[u8]) -> Scan {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                State::Passthrough => return Scan::Pass,
                State::Body(n) => {
                    let left = (data.len() - i) as u64;
                    if n > left {
                        self.state = State::Body(n - left);
                        return Scan::Pass;
                    }
                    // n <= left, which is a usize.
                    i += n as usize;
                    self.state = State::Head;
                }
                State::Chunk(Chunk::Data(n)) => {
                    let left = (data.len() - i) as u64;
                    if n > left {
                        self.state = State::Chunk(Chunk::Data(n - left));
                        return Scan::Pass;
                    }
                    i += n as usize;
                    self.state = State::Chunk(Chunk::DataCr);
                }
                State::Chunk(Chunk::Ext(n)) => {
                    // Extensions are skipped to their CR; a bare LF in one is refused (hyper does).
                    match data[i..].iter().position(|b| matches!(b, b'\r' | b'\n')) {
                        None => return Scan::Pass,
                        Some(at) if data[i + at] == b'\n' => {
                            return Scan::Body {
                                keep: i + at,
                                violation: Violation::ChunkSize,
                            };
                        }
                        Some(at) => {
                            i += at + 1;
                            self.state = State::Chunk(Chunk::SizeLf(n));
                        }
                    }
                }
                State::Chunk(Chunk::Trailer) => match data[i..].iter().position(|b| *b == b'\r') {
                    None => return Scan::Pass,
                    Some(at) => {
                        i += at + 1;
                        self.state = State::Chunk(Chunk::TrailerLf);
                    }
                },
                State::Chunk(c) => match chunk_step(c, data[i]) {
                    Ok(next) => {
                        self.state = next;
                        i += 1;
                    }
                    Err(violation) => return Scan::Body { keep: i, violation },
                },
                State::Head if self.partial.is_empty() => {
                    // Empty lines before a request line are skipped (httparse and hyper do).
                    while i < data.len() && matches!(data[i], b'\r' | b'\n') {
                        i += 1;
                    }
                    if i == data.len() {
                        return Scan::Pass;
                    }
                    let rest = &data[i..];
                    match self.parse(rest) {
                        Parsed::Complete(len, next) => {
                            i += len;
                            self.state = next;
                            if next == State::Passthrough {
                                self.end_inspection();
                            }
                        }
                        Parsed::Refused(violation) => return Scan::Head { keep: i, violation },
                        Parsed::Partial if rest.len() < self.max_head => {
                            self.partial.extend_from_slice(rest);
                            return Scan::Pass;
                        }
                        Parsed::Partial | Parsed::Unparsable => {
                            self.state = State::Passthrough;
                            return Scan::Pass;
                        }
                    }
                }
                State::Head => {
                    // The rest of a head that came in pieces (here, `i` is 0).
                    let prev = self.partial.len();
                    let take = (data.len() - i).min(self.max_head.saturating_sub(prev));
                    self.partial.extend_from_slice(&data[i..i + take]);
                    let Some(end) = head_end(&self.partial, prev.saturating_sub(3)) else {
                        if self.partial.len() >= self.max_head {
                            self.end_inspection();
                        }
                        return Scan::Pass;
                    };
                    let partial = std::mem::take(&mut self.partial);
                    let parsed = self.parse(&partial[..end]);
                    self.partial = partial;
                    self.partial.clear();
                    match parsed {
                        Parsed::Complete(len, next) if len == end => {
                            i += end - prev;
                            self.state = next;
                            if next == State::Passthrough {
                                self.end_inspection();
                            }
                        }
                        Parsed::Refused(violation) => return Scan::Head { keep: i, violation },
                        Parsed::Complete(..) | Parsed::Partial | Parsed::Unparsable => {
                            self.end_inspection();
                            return Scan::Pass;
                        }
                    }
                }
            }
        }
        Scan::Pass
    }

    fn end_inspection(&mut self) {
        self.state = State::Passthrough;
        self.partial = Vec::new();
    }

    /// Parses one head with httparse and decides what follows it.
    fn parse(&self, buf: &[u8]) -> Parsed {
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap = Vec::new();
        let slots = if self.max_headers <= STACK_HEADERS {
            &mut stack[..self.max_headers]
        } else {
            heap.resize_with(self.max_headers, MaybeUninit::uninit);
            &mut heap[..]
        };
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(buf, slots) {
            // Longer than hyper's buffer: hyper refuses it (431).
            Ok(httparse::Status::Complete(len)) if len > self.max_head => Parsed::Unparsable,
            Ok(httparse::Status::Complete(len)) => match next_state(&req) {
                Ok(next) => Parsed::Complete(len, next),
                Err(v) => Parsed::Refused(v),
            },
            Ok(httparse::Status::Partial) => Parsed::Partial,
            Err(_) => Parsed::Unparsable,
        }
    }
}

/// The framing checks of one complete head, and the state after it.
fn next_state(req: &httparse::Request<'_, '_>) -> Result<State, Violation> {
    let mut content_length = None;
    let mut transfer_encoding = 0u32;
    let mut chunked = false;
    let mut upgrade = false;
    let mut connection_upgrade = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if content_length.is_some() {
                    return Err(Violation::DuplicateContentLength);
                }
                content_length = Some(digits(h.value).ok_or(Violation::InvalidContentLength)?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                transfer_encoding += 1;
                chunked = h.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                connection_upgrade |= h
                    .value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
            }
            _ => {}
        }
    }
    let http11 = req.version == Some(1);
    if transfer_encoding > 0 {
        if content_length.is_some() {
            return Err(Violation::ContentLengthWithTransferEncoding);
        }
        // hyper refuses Transfer-Encoding in HTTP/1.0 and a non-chunked final coding; the
        // request path refuses the rest (`gzip, chunked`, two lines).
        if transfer_encoding > 1 || !chunked || !http11 {
            return Err(Violation::TransferEncoding);
        }
    }
    // What may follow is a tunnel: the request path upgrades HTTP/1.1 requests with `Upgrade`
    // and a `Connection: upgrade` token (handler::wants_upgrade); hyper treats CONNECT as one.
    if req.method == Some("CONNECT") || (http11 && upgrade && connection_upgrade) {
        return Ok(State::Passthrough);
    }
    Ok(match content_length {
        _ if transfer_encoding > 0 => State::Chunk(Chunk::Start),
        Some(n) if n > 0 => State::Body(n),
        _ => State::Head,
    })
}

/// A Content-Length value as hyper reads it: ASCII digits only, no sign, no list, no overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

/// One byte of a chunk size line, of the CR LF after chunk data, or of the end of the body.
fn chunk_step(state: Chunk, b: u8) -> Result<State, Violation> {
    use Chunk::*;
    let next = match (state, b) {
        (Start, _) => Size(hex(b).ok_or(Violation::ChunkSize)?),
        (Size(n), _) if hex(b).is_some() => Size(
            n.checked_mul(16)
                .and_then(|n| n.checked_add(hex(b).unwrap_or(0)))
                .ok_or(Violation::ChunkSize)?,
        ),
        (Size(n) | Lws(n), b'\t' | b' ') => Lws(n),
        (Size(n) | Lws(n), b';') => Ext(n),
        (Size(n) | Lws(n), b'\r') => SizeLf(n),
        (Size(_) | Lws(_), _) => return Err(Violation::ChunkSize),
        (SizeLf(0), b'\n') => EndCr,
        (SizeLf(n), b'\n') => Data(n),
        (SizeLf(_), _) => return Err(Violation::ChunkSize),
        (DataCr, b'\r') => DataLf,
        (DataLf, b'\n') => Start,
        (DataCr | DataLf, _) => return Err(Violation::ChunkFraming),
        (EndCr, b'\r') => EndLf,
        (EndCr, _) => Trailer,
        (TrailerLf, b'\n') => EndCr,
        (TrailerLf, _) => return Err(Violation::ChunkFraming),
        (EndLf, b'\n') => return Ok(State::Head),
        (EndLf, _) => return Err(Violation::ChunkFraming),
        // Handled in bulk by the caller; kept total for the table tests.
        (Ext(n), b'\r') => SizeLf(n),
        (Ext(_), b'\n') => return Err(Violation::ChunkSize),
        (Ext(n), _) => Ext(n),
        (Trailer, b'\r') => TrailerLf,
        (Trailer, _) => Trailer,
        (Data(n), _) if n > 1 => Data(n - 1),
        (Data(_), _) => DataCr,
    };
    Ok(State::Chunk(next))
}

/// The end of a head (after its empty line: `\n\r\n` or `\n\n`) at or after `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(at) = buf.get(i..)?.iter().position(|b| *b == b'\n') {
        let lf = i + at;
        match buf.get(lf + 1..lf + 3) {
            Some([b'\n', _]) => return Some(lf + 2),
            Some([b'\r', b'\n']) => return Some(lf + 3),
            None if buf.get(lf + 1) == Some(&b'\n') => return Some(lf + 2),
            _ => {}
        }
        i = lf + 1;
    }
    None
}

/// What a refused connection delivers after the bytes before the refused part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    None,
    /// [`POISON`] bytes delivered so far.
    Poison(usize),
    /// Reads fail with this.
    Failed(Violation),
    /// Reads return end of file.
    Eof,
}

/// A downstream connection's IO with [`Scanner`] on its read side; writes pass straight through.
#[derive(Debug)]
pub(crate) struct FramedIo<I> {
    inner: I,
    scanner: Scanner,
    refusal: Refusal,
    peer: SocketAddr,
}

impl<I> FramedIo<I> {
    pub fn new(inner: I, scanner: Scanner, peer: SocketAddr) -> Self {
        FramedIo {
            inner,
            scanner,
            refusal: Refusal::None,
            peer,
        }
    }
}

/// Whether `e` (hyper's connection error) came from a refusal here.
pub(crate) fn is_violation(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<Violation>() {
            return true;
        }
        // io::Error's `source` skips its own payload.
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<Violation>())
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn put_poison(buf: &mut ReadBuf<'_>, sent: usize) -> Refusal {
    let n = (POISON.len() - sent).min(buf.remaining());
    buf.put_slice(&POISON[sent..sent + n]);
    if sent + n == POISON.len() {
        Refusal::Eof
    } else {
        Refusal::Poison(sent + n)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramedIo<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.refusal {
            Refusal::None if this.scanner.is_passthrough() => {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            Refusal::None => {}
            Refusal::Poison(sent) => {
                this.refusal = put_poison(buf, sent);
                return Poll::Ready(Ok(()));
            }
            Refusal::Failed(v) => {
                this.refusal = Refusal::Eof;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, v)));
            }
            Refusal::Eof => return Poll::Ready(Ok(())),
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        match this.scanner.scan(&buf.filled()[before..]) {
            Scan::Pass => {}
            Scan::Head { keep, violation } => {
                tracing::debug!(peer = %this.peer, %violation, "request refused (framing)");
                buf.set_filled(before + keep);
                // The read had more than `keep` bytes: the poison's first bytes fit.
                this.refusal = put_poison(buf, 0);
            }
            Scan::Body { keep, violation } => {
                tracing::debug!(peer = %this.peer, %violation, "request body refused (framing)");
                buf.set_filled(before + keep);
                if keep == 0 {
                    this.refusal = Refusal::Eof;
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)));
                }
                this.refusal = Refusal::Failed(violation);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramedIo<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 32 * 1024;

    /// What hyper would be given for `input` arriving in reads of the given sizes (the last one
    /// takes the rest), and how the stream ended.
    fn run(input: &[u8], cuts: &[usize]) -> (Vec<u8>, End) {
        let mut s = Scanner::new(LIMIT, 100);
        let mut out = Vec::new();
        let mut at = 0;
        let mut reads: Vec<&[u8]> = Vec::new();
        for &c in cuts {
            let c = c.min(input.len() - at);
            reads.push(&input[at..at + c]);
            at += c;
        }
        reads.push(&input[at..]);
        for read in reads {
            match s.scan(read) {
                Scan::Pass => out.extend_from_slice(read),
                Scan::Head { keep, violation } => {
                    out.extend_from_slice(&read[..keep]);
                    return (out, End::Head(violation));
                }
                Scan::Body { keep, violation } => {
                    out.extend_from_slice(&read[..keep]);
                    return (out, End::Body(violation));
                }
            }
        }
        let end = if s.is_passthrough() {
            End::Passthrough
        } else {
            End::Open(s.state)
        };
        (out, end)
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum End {
        Open(State),
        Passthrough,
        Head(Violation),
        Body(Violation),
    }

    /// `run` with the input in one read, cut once at every position, and byte by byte: the same
    /// outcome each time. Only the first pieces of a refused head that came in pieces may have
    /// been delivered besides (hyper holds them as an incomplete head, then gets the poison).
    fn every_split(input: &[u8]) -> (Vec<u8>, End) {
        let whole = run(input, &[]);
        let same = |(out, end): (Vec<u8>, End), what: &str| {
            assert_eq!(end, whole.1, "{what}");
            if matches!(end, End::Head(_)) {
                assert!(out.starts_with(&whole.0) && input.starts_with(&out), "{what}");
            } else {
                assert_eq!(out, whole.0, "{what}");
            }
        };
        for a in 0..=input.len() {
            same(run(input, &[a]), &format!("one cut at {a}"));
        }
        same(run(input, &vec![1; input.len()]), "byte by byte");
        whole
    }

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n";

    #[test]
    fn valid_streams_pass_unchanged_at_every_split() {
        let streams: &[&[u8]] = &[
            GET,
            b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\nGET /b HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"\r\n\r\nGET /a HTTP/1.1\r\nHost: a.test\r\n\r\n",
            b"GET /a HTTP/1.1\nHost: a.test\n\nGET /b HTTP/1.1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            // A body that looks like a head with every violation: skipped by its length.
            b"POST /a HTTP/1.1\r\nContent-Length: 62\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: Chunked \r\n\r\nA\r\n0123456789\r\n1f\r\n0123456789012345678901234567890\r\n0\r\n\r\n",
            // Extensions, spaces after the size, trailers.
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value;x=\"a b\"\r\nhello\r\n3 \t;e\r\nabc\r\n0;last\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            // Chunk data that looks like chunk framing and like heads.
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n0\r\n\r\nGE\r\n0\r\n\r\n",
        ];
        for s in streams {
            let (out, end) = every_split(s);
            assert_eq!(out, *s, "{}", String::from_utf8_lossy(s));
            assert_eq!(end, End::Open(State::Head), "{}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn refused_heads_at_every_split() {
        let cases: &[(&[u8], Violation)] = &[
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Violation::ContentLengthWithTransferEncoding,
            ),
            (
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
                Violation::ContentLengthWithTransferEncoding,
            ),
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
                Violation::DuplicateContentLength,
            ),
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                Violation::DuplicateContentLength,
            ),
            (b"POST /a HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello", Violation::InvalidContentLength),
            (b"POST /a HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello", Violation::InvalidContentLength),
            (b"POST /a HTTP/1.1\r\nContent-Length:\r\n\r\n", Violation::InvalidContentLength),
            (
                b"POST /a HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
                Violation::InvalidContentLength,
            ),
            (b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Violation::TransferEncoding),
            (b"POST /a HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", Violation::TransferEncoding),
            (
                b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                Violation::TransferEncoding,
            ),
            (b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", Violation::TransferEncoding),
            // An upgrade request is checked before the inspection ends.
            (
                b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Violation::ContentLengthWithTransferEncoding,
            ),
        ];
        for (input, violation) in cases {
            let (out, end) = every_split(input);
            assert!(out.is_empty(), "{}", String::from_utf8_lossy(input));
            assert_eq!(end, End::Head(*violation), "{}", String::from_utf8_lossy(input));
            // After a valid pipelined request, the refused head starts where that one ends.
            let mut piped = GET.to_vec();
            piped.extend_from_slice(b"\r\n");
            piped.extend_from_slice(input);
            let (out, end) = every_split(&piped);
            assert_eq!(out, &piped[..GET.len() + 2], "{}", String::from_utf8_lossy(input));
            assert_eq!(end, End::Head(*violation));
        }
    }

    #[test]
    fn a_split_head_delivers_its_first_pieces() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
        let (out, end) = run(input, &[20]);
        assert_eq!(out, &input[..20], "the first piece was passed on");
        assert_eq!(end, End::Head(Violation::DuplicateContentLength));
    }

    #[test]
    fn refused_chunked_bodies_at_every_split() {
        let head = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let cases: &[(&[u8], usize, Violation)] = &[
            (b"zz\r\nhello\r\n0\r\n\r\n", 0, Violation::ChunkSize),
            (b"5\nhello\r\n0\r\n\r\n", 1, Violation::ChunkSize),
            (b"5;a\nb\r\nhello\r\n0\r\n\r\n", 3, Violation::ChunkSize),
            (b"5 5\r\nhello\r\n0\r\n\r\n", 2, Violation::ChunkSize),
            (b"-5\r\nhello\r\n0\r\n\r\n", 0, Violation::ChunkSize),
            (b"0x5\r\nhello\r\n0\r\n\r\n", 1, Violation::ChunkSize),
            (b"fffffffffffffffff\r\nx\r\n0\r\n\r\n", 16, Violation::ChunkSize),
            (b"5\r\nhelloX\r\n0\r\n\r\n", 8, Violation::ChunkFraming),
            (b"5\r\nhello\rX0\r\n\r\n", 9, Violation::ChunkFraming),
            (b"0\r\nX-Trailer: 1\rX\r\n\r\n", 16, Violation::ChunkFraming),
            (b"0\r\n\rX", 4, Violation::ChunkFraming),
        ];
        for (body, at, violation) in cases {
            let mut input = head.to_vec();
            input.extend_from_slice(body);
            let (out, end) = every_split(&input);
            assert_eq!(end, End::Body(*violation), "{}", String::from_utf8_lossy(body));
            assert_eq!(
                out,
                &input[..head.len() + at],
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // Sixteen hex digits still fit.
        let mut input = head.to_vec();
        input.extend_from_slice(b"ffffffffffffffff\r\nabc");
        assert_eq!(every_split(&input).0, input);
    }

    #[test]
    fn bodies_spanning_reads_are_skipped_by_length() {
        let mut input = b"POST /a HTTP/1.1\r\nContent-Length: 100000\r\n\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'\n', 100_000));
        input.extend_from_slice(b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n");
        input.extend(std::iter::repeat_n(b'x', 0x10000));
        input.extend_from_slice(b"\r\n0\r\n\r\n");
        let c = input.len();
        input.extend_from_slice(b"POST /c HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx");
        for size in [1, 7, 1000, 4096, 16 * 1024, input.len()] {
            let cuts = vec![size; input.len() / size + 1];
            let (out, end) = run(&input, &cuts);
            assert_eq!(end, End::Head(Violation::DuplicateContentLength));
            // Everything before the refused head, and at most the pieces of it read before.
            assert!(input.starts_with(&out), "reads of {size}");
            assert!(
                out.len() >= c && out.len() < input.len() - 1,
                "reads of {size}: {}",
                out.len()
            );
            if size >= 4096 {
                assert_eq!(out.len(), c, "reads of {size}");
            }
        }
    }

    #[test]
    fn upgrades_and_http2_end_the_inspection() {
        let tunnels: &[&[u8]] = &[
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        // What follows could be anything: a refused head, a bogus chunk, binary frames.
        let after = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n\x00\x81\xff";
        for t in tunnels {
            let mut input = t.to_vec();
            input.extend_from_slice(after);
            let (out, end) = every_split(&input);
            assert_eq!(out, input, "{}", String::from_utf8_lossy(t));
            assert_eq!(end, End::Passthrough, "{}", String::from_utf8_lossy(t));
        }
        // Upgrade without a Connection token (the request path does not upgrade it), or in
        // HTTP/1.0: still inspected.
        for head in [
            &b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"[..],
            b"GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            let mut input = head.to_vec();
            input.extend_from_slice(after);
            let (out, end) = every_split(&input);
            assert_eq!(out, head);
            assert_eq!(end, End::Head(Violation::DuplicateContentLength));
        }
    }

    #[test]
    fn heads_hyper_refuses_itself_end_the_inspection() {
        let mut big = b"GET /a HTTP/1.1\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'x', LIMIT));
        big.extend_from_slice(b"\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n");
        let mut many = b"GET /a HTTP/1.1\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"Content-Length: 1\r\nContent-Length: 1\r\n\r\n");
        let refused: &[&[u8]] = &[
            b"GET /a HTTP/1.1\r\nX-Folded: a\r\n b\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            &big,
            &many,
        ];
        for input in refused {
            for cuts in [&[][..], &[30], &[1000, 1000]] {
                let (out, end) = run(input, cuts);
                assert_eq!(out, *input);
                assert_eq!(end, End::Passthrough);
            }
        }
    }

    #[test]
    fn head_end_finds_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nx", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\n", 0), Some(23));
        assert_eq!(head_end(b"\n", 0), None);
        assert_eq!(head_end(b"ab", 5), None);
    }

    #[test]
    fn the_poison_is_refused_by_httparse_wherever_a_head_was_cut() {
        let head = b"POST /path?q=1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n";
        for cut in 0..=head.len() {
            let mut buf = head[..cut].to_vec();
            buf.extend_from_slice(POISON);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut req = httparse::Request::new(&mut headers);
            assert!(
                req.parse(&buf).is_err(),
                "cut at {cut}: {:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }

    /// A reader giving one piece per read (as many bytes of it as the buffer takes).
    struct Pieces(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut piece) = self.0.pop_front() {
                let n = piece.len().min(buf.remaining());
                buf.put_slice(&piece[..n]);
                if n < piece.len() {
                    self.0.push_front(piece.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Reads `pieces` through [`FramedIo`] with a buffer of `cap` bytes until end of file or error.
    async fn read_through(pieces: &[&[u8]], cap: usize) -> (Vec<u8>, Option<io::Error>) {
        use tokio::io::AsyncReadExt;
        let inner = Pieces(pieces.iter().map(|p| p.to_vec()).collect());
        let peer = SocketAddr::from(([127, 0, 0, 1], 1));
        let mut io = FramedIo::new(inner, Scanner::new(LIMIT, 100), peer);
        let mut out = Vec::new();
        let mut buf = vec![0u8; cap];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => return (out, None),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[tokio::test]
    async fn framed_io_delivers_the_poison_then_end_of_file() {
        let ok = &b"GET /a HTTP/1.1\r\n\r\n"[..];
        let refused =
            &b"POST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nxGET /c HTTP/1.1\r\n\r\n"[..];
        let whole = [ok, refused].concat();
        // In one read: the bytes before the refused head, then the poison.
        let (out, err) = read_through(&[&whole], 4096).await;
        assert!(err.is_none());
        assert_eq!(out, [ok, POISON].concat());
        // The refused head in pieces (two reads, or a reader's buffer smaller than the head): the
        // pieces read before it was complete were delivered, then the poison, whole.
        let (out, err) = read_through(&[ok, &refused[..10], &refused[10..]], 4096).await;
        assert!(err.is_none());
        assert_eq!(out, [ok, &refused[..10], POISON].concat());
        for cap in [1, 3] {
            let (out, err) = read_through(&[&whole], cap).await;
            assert!(err.is_none());
            let middle = &out[ok.len()..out.len() - POISON.len()];
            assert!(out.starts_with(ok) && out.ends_with(POISON), "buffer of {cap}");
            assert!(
                refused.starts_with(middle) && middle.len() < 58,
                "buffer of {cap}"
            );
        }
        // A valid stream is delivered unchanged, then the reader's own end of file.
        let (out, err) = read_through(&[ok, ok, b"GET /c HT", b"TP/1.1\r\n\r\n"], 7).await;
        assert!(err.is_none());
        assert_eq!(out, [ok, ok, b"GET /c HTTP/1.1\r\n\r\n"].concat());
    }

    #[tokio::test]
    async fn framed_io_fails_a_refused_body_where_it_starts() {
        let head = &b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..];
        let (out, err) = read_through(&[head, b"5\r\nhello\r\nzz\r\n"], 4096).await;
        assert_eq!(out, [head, b"5\r\nhello\r\n"].concat());
        let err = err.expect("a read error");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(is_violation(&err));
        // At the very start of a read: the error at once (never an empty read, which is EOF).
        let (out, err) = read_through(&[head, b"zz\r\n"], 4096).await;
        assert_eq!(out, head);
        assert!(err.is_some_and(|e| is_violation(&e)));
    }

    #[test]
    fn violations_are_found_in_hyper_errors() {
        let io = io::Error::new(io::ErrorKind::InvalidData, Violation::ChunkSize);
        assert!(is_violation(&io));
        let wrapped: Box<dyn std::error::Error + Send + Sync> = Box::new(io);
        assert!(is_violation(&*wrapped));
        assert!(!is_violation(&io::Error::other("x")));
    }
}
