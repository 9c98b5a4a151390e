//! Message framing and the request head (RFC 9112): what hyper does not refuse
//! by itself.
//!
//! hyper refuses two different `Content-Length`s, a `Transfer-Encoding` whose
//! last coding is not `chunked`, and `Transfer-Encoding` on HTTP/1.0 (400 and
//! close); h2 refuses `Transfer-Encoding` on HTTP/2. It lets through, and the
//! gateway refuses here:
//! - `Content-Length` with `Transfer-Encoding`: hyper frames by the latter and
//!   closes afterwards, but drops `Content-Length` from the head first, so the
//!   only place left to see both is the byte stream: [`HeadScan`];
//! - `chunked` applied twice, and codings the gateway does not implement;
//! - a missing, repeated or invalid `Host`; and CONNECT.

use std::any::Any;
use std::io;
use std::mem::ManuallyDrop;
use std::net::Ipv6Addr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::header::{HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::GatewayError;

/// Set in a request's extensions when its head carried both `Content-Length`
/// and `Transfer-Encoding` (seen by [`HeadScan`]).
#[derive(Debug, Clone, Copy)]
pub struct LengthWithTransferEncoding;

/// Checks a request head before anything else reads it, and returns the host
/// the client addressed: the authority of an absolute-form target (RFC 9112
/// section 3.2.2) or HTTP/2's `:authority` (RFC 9113 section 8.3.1) over `Host`.
pub fn check_request_head<B>(req: &Request<B>) -> Result<Option<HeaderValue>, GatewayError> {
    if req.method() == Method::CONNECT {
        return Err(GatewayError::Connect);
    }
    if req
        .extensions()
        .get::<LengthWithTransferEncoding>()
        .is_some()
    {
        // RFC 9112 section 6.3: a message with both is likely an attempt at
        // smuggling; refused, and the connection closed.
        return Err(GatewayError::BadHead(
            "Content-Length and Transfer-Encoding together",
        ));
    }
    check_transfer_codings(req.headers())?;
    request_host(req)
}

/// RFC 9112 section 6.1: `chunked` at most once; any other coding is one the
/// gateway does not implement (501). hyper has already refused a last coding
/// other than `chunked`.
fn check_transfer_codings(headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut chunked = 0;
    let mut unknown = false;
    for value in headers.get_all(TRANSFER_ENCODING) {
        let value = value
            .to_str()
            .map_err(|_| GatewayError::BadHead("the Transfer-Encoding header is not ASCII"))?;
        // Empty list elements are allowed and skipped (RFC 9110 section 5.6.1).
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if coding.eq_ignore_ascii_case("chunked") {
                chunked += 1;
            } else {
                unknown = true;
            }
        }
    }
    if chunked > 1 {
        return Err(GatewayError::BadHead("chunked was applied more than once"));
    }
    if unknown {
        return Err(GatewayError::UnknownTransferCoding);
    }
    Ok(())
}

/// RFC 9112 section 3.2: 400 for a request with more than one `Host`, or an
/// invalid one, and for an HTTP/1.1 request with none.
fn request_host<B>(req: &Request<B>) -> Result<Option<HeaderValue>, GatewayError> {
    let mut all = req.headers().get_all(HOST).iter();
    let host = all.next();
    if all.next().is_some() {
        return Err(GatewayError::BadHead("more than one Host header"));
    }
    if let Some(h) = host
        && !valid_host(h.as_bytes())
    {
        return Err(GatewayError::BadHead("the Host header is invalid"));
    }
    if host.is_none() && req.version() == Version::HTTP_11 {
        return Err(GatewayError::BadHead(
            "an HTTP/1.1 request needs a Host header",
        ));
    }
    if let Some(authority) = req.uri().authority() {
        // RFC 9110 section 4.2.4: userinfo in an http(s) URI is an error;
        // RFC 9113 section 8.3.1: never in :authority.
        if authority.as_str().contains('@') || !valid_host(authority.as_str().as_bytes()) {
            return Err(GatewayError::BadHead(
                "the request target's authority is invalid",
            ));
        }
        return Ok(HeaderValue::from_str(authority.as_str()).ok());
    }
    // An empty Host is valid (a target without an authority): nothing to pass on.
    Ok(host.filter(|h| !h.is_empty()).cloned())
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 section 7.2; RFC 3986 section 3.2.2):
/// an IP literal in brackets or a reg-name (which covers IPv4 addresses), and a
/// port of at most 65535.
pub fn valid_host(v: &[u8]) -> bool {
    let (host_ok, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let port = match &rest[end + 1..] {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return false,
        };
        (valid_ip_literal(&rest[..end]), port)
    } else {
        let (name, port) = match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        };
        (valid_reg_name(name), port)
    };
    host_ok && port.is_none_or(valid_port)
}

fn valid_port(p: &[u8]) -> bool {
    // port = *DIGIT: empty is allowed.
    p.is_empty()
        || (p.len() <= 5
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p)
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .is_some_and(|n| n <= 65535))
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`
fn valid_reg_name(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        let b = name[i];
        if b == b'%' {
            let hex = name.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            i += 3;
            continue;
        }
        if !(is_unreserved(b) || is_sub_delim(b)) {
            return false;
        }
        i += 1;
    }
    true
}

/// `IPv6address / IPvFuture` (the inside of the brackets).
fn valid_ip_literal(lit: &[u8]) -> bool {
    if let Some(rest) = lit.strip_prefix(b"v").or_else(|| lit.strip_prefix(b"V")) {
        // IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
        let Some(dot) = rest.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail
                .iter()
                .all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':');
    }
    std::str::from_utf8(lit)
        .ok()
        .and_then(|s| s.parse::<Ipv6Addr>().ok())
        .is_some()
}

// ------------------------------------------------------------------ HeadScan

/// What [`HeadScan`] found, for the connection's service to read, and what the
/// connection's task reads to tell a quiet connection it may park (see
/// `server::park`). One per hyper connection; only that connection's task
/// writes and reads it, so the counters are plain loads and stores.
#[derive(Default)]
pub struct FramingNotes {
    /// The 1-based number of the request whose head carried both
    /// `Content-Length` and `Transfer-Encoding`; 0: none. hyper closes the
    /// connection after such a request, so there is at most one.
    conflict_at: AtomicU64,
    /// Requests handed to the service so far (hyper hands them over in order).
    served: AtomicU64,
    /// The service's answers given so far (its futures that completed).
    answered: AtomicU64,
    /// Request heads the scan has read to their end.
    heads: AtomicU64,
    /// The bytes read so far do not end where a message ends (a head or a
    /// body is half read), or the scan is off (a tunnel, input hyper refuses):
    /// what hyper holds cannot be handed on, so the connection must not park.
    mid_message: AtomicBool,
    /// Reads and writes that moved bytes (or met the end of the stream).
    activity: AtomicU64,
    /// Set when the connection parks: [`HeadScan`] then does not shut the
    /// transport down when hyper closes, and leaves it in `parked` when dropped.
    parking: AtomicBool,
    parked: Mutex<Option<Box<dyn Any + Send>>>,
}

impl std::fmt::Debug for FramingNotes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramingNotes")
            .field("conflict_at", &self.conflict_at)
            .field("served", &self.served)
            .field("answered", &self.answered)
            .field("heads", &self.heads)
            .field("mid_message", &self.mid_message)
            .field("activity", &self.activity)
            .field("parking", &self.parking)
            .finish_non_exhaustive()
    }
}

/// `n += 1` for a counter with one writer: a load and a store, no locked
/// read-modify-write on the request path.
fn bump(n: &AtomicU64) {
    n.store(n.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
}

impl FramingNotes {
    /// Called once per request, in the connection's order: whether this one
    /// carried both framing headers.
    pub fn next_request_conflicts(&self) -> bool {
        bump(&self.served);
        self.conflict_at.load(Ordering::Acquire) == self.served.load(Ordering::Relaxed)
    }

    /// The service has answered a request (its response head is ready).
    pub fn answered(&self) {
        bump(&self.answered);
    }

    /// Request heads read to their end so far.
    pub fn heads(&self) -> u64 {
        self.heads.load(Ordering::Relaxed)
    }

    /// Reads and writes so far, to compare with a later count: unchanged, the
    /// connection moved no byte in between.
    pub fn activity(&self) -> u64 {
        self.activity.load(Ordering::Relaxed)
    }

    /// Whether everything read so far is whole requests that have been handed
    /// to the service and answered: then hyper, once its writes are flushed,
    /// holds nothing of the client's that a new connection state would miss.
    pub fn between_requests(&self) -> bool {
        let heads = self.heads.load(Ordering::Relaxed);
        !self.mid_message.load(Ordering::Relaxed)
            && heads == self.served.load(Ordering::Relaxed)
            && heads == self.answered.load(Ordering::Relaxed)
    }

    /// From now on, hyper closing the connection leaves the transport here
    /// (see [`FramingNotes::take_parked`]) instead of shutting it down; or, with
    /// `false`, no longer.
    pub fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
    }

    /// The transport a parking connection's [`HeadScan`] left when dropped.
    pub fn take_parked<I: 'static>(&self) -> Option<Box<I>> {
        let parked = self
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        parked.downcast::<I>().ok()
    }
}

/// Where the scan is in the byte stream of an HTTP/1 connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a request head.
    Head,
    /// In a `Content-Length` body: this many bytes left.
    Fixed(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// Stopped: input hyper refuses too (it then closes), an upgrade's tunnel,
    /// or a conflict found (hyper closes after that request).
    Off,
}

/// hyper's chunked decoder, state for state (proto/h1/decode.rs), so both read
/// the same bytes as the body; anything hyper refuses stops the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// The headers one head may have (hyper is configured with the same limit).
pub const MAX_HEADERS: usize = 100;

/// Follows an HTTP/1 connection's request stream as hyper reads it, head by
/// head and body by body, and notes a head with both `Content-Length` and
/// `Transfer-Encoding` (which hyper accepts but hides from the service).
#[derive(Debug)]
struct Scanner {
    state: State,
    /// A head split over reads, until it is complete.
    partial: Vec<u8>,
    /// Where to look next for the end of the head in `partial`.
    searched: usize,
    /// Heads seen so far.
    heads: u64,
    /// The longest head hyper accepts.
    max_head: usize,
    notes: Arc<FramingNotes>,
}

impl Scanner {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => data = self.head(data),
                State::Fixed(left) => {
                    let n = (data.len() as u64).min(left);
                    data = &data[n as usize..];
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Fixed(left - n)
                    };
                }
                State::Chunked(Chunk::Data(left)) => {
                    let n = (data.len() as u64).min(left);
                    data = &data[n as usize..];
                    self.state = State::Chunked(if n == left {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - n)
                    });
                }
                State::Chunked(c) => {
                    self.state = chunk_step(c, data[0]);
                    data = &data[1..];
                }
            }
        }
        if self.state == State::Off {
            self.partial = Vec::new();
        }
        let mid = self.state != State::Head || !self.partial.is_empty();
        self.notes.mid_message.store(mid, Ordering::Relaxed);
        self.notes.heads.store(self.heads, Ordering::Relaxed);
    }

    /// Consumes the head at the start of `data` (completing one begun in an
    /// earlier read) and returns what follows it.
    fn head<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        if self.partial.is_empty() {
            // The usual case: the whole head in one read, parsed in place.
            match self.parse(data) {
                Some(n) => return &data[n..],
                None if self.state == State::Off => return &[],
                None => {}
            }
            if data.len() > self.max_head {
                self.state = State::Off;
                return &[];
            }
            self.partial.extend_from_slice(data);
            self.searched = 0;
            return &[];
        }
        // Re-parse only once the head can have ended, so that a head sent a
        // byte at a time costs linear time, not quadratic.
        let before = self.partial.len();
        let room = (self.max_head + 1).saturating_sub(before);
        let take = data.len().min(room.max(1));
        self.partial.extend_from_slice(&data[..take]);
        let from = self.searched.saturating_sub(3);
        let ended = self.partial[from..]
            .windows(2)
            .any(|w| w == b"\n\n" || w == b"\n\r");
        self.searched = self.partial.len();
        if !ended {
            if self.partial.len() > self.max_head {
                self.state = State::Off;
            }
            return &[];
        }
        let partial = std::mem::take(&mut self.partial);
        match self.parse(&partial) {
            Some(n) => {
                // The head ended inside this read: the rest is the body.
                let used = n.saturating_sub(before);
                &data[used.min(data.len())..]
            }
            None => {
                if self.state != State::Off {
                    if partial.len() > self.max_head {
                        self.state = State::Off;
                    } else {
                        self.partial = partial;
                    }
                }
                &[]
            }
        }
    }

    /// Parses a head as hyper does (httparse, same limits) and moves to its
    /// body. `Some(length of the head)`, or `None` if incomplete (or refused:
    /// then the state is `Off`).
    fn parse(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return None,
            Err(_) => {
                self.state = State::Off;
                return None;
            }
        };
        if len > self.max_head {
            self.state = State::Off;
            return None;
        }
        self.heads += 1;
        let http11 = req.version == Some(1);
        let mut lengths = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"));
        let last_te = req
            .headers
            .iter()
            .rfind(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        self.state = match (last_te, lengths.next()) {
            (Some(_), Some(_)) => {
                self.notes.conflict_at.store(self.heads, Ordering::Release);
                State::Off
            }
            (Some(te), None) => {
                // hyper: chunked only as the last coding, and only on HTTP/1.1.
                let chunked = std::str::from_utf8(te.value).ok().is_some_and(|v| {
                    v.rsplit(',')
                        .next()
                        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
                });
                if chunked && http11 {
                    State::Chunked(Chunk::Start)
                } else {
                    State::Off
                }
            }
            (None, Some(first)) => {
                let n = digits(first.value);
                if n.is_some() && lengths.all(|h| digits(h.value) == n) {
                    match n {
                        Some(0) => State::Head,
                        Some(n) => State::Fixed(n),
                        None => State::Off,
                    }
                } else {
                    State::Off
                }
            }
            (None, None) => State::Head,
        };
        Some(len)
    }
}

/// A `Content-Length` value as hyper reads it: digits only.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// One byte of a chunked body outside chunk data.
fn chunk_step(c: Chunk, b: u8) -> State {
    use Chunk::*;
    let grow = |size: u64| hex(b).and_then(|d| size.checked_mul(16)?.checked_add(d));
    let next = match (c, b) {
        (Start, _) => hex(b).map(Size),
        (Size(s), b'\t' | b' ') => Some(SizeLws(s)),
        (Size(s) | SizeLws(s), b';') => Some(Extension(s)),
        (Size(s) | SizeLws(s) | Extension(s), b'\r') => Some(SizeLf(s)),
        (Size(s), _) => grow(s).map(Size),
        (SizeLws(s), b'\t' | b' ') => Some(SizeLws(s)),
        (SizeLws(_), _) => None,
        (Extension(_), b'\n') => None,
        (Extension(s), _) => Some(Extension(s)),
        (SizeLf(0), b'\n') => Some(EndCr),
        (SizeLf(s), b'\n') => Some(Data(s)),
        (SizeLf(_), _) => None,
        (Data(_), _) => unreachable!("chunk data is skipped in bulk"),
        (DataCr, b'\r') => Some(DataLf),
        (DataLf, b'\n') => Some(Start),
        (DataCr | DataLf, _) => None,
        (EndCr, b'\r') => Some(EndLf),
        (EndCr, _) => Some(Trailer),
        (Trailer, b'\r') => Some(TrailerLf),
        (Trailer, _) => Some(Trailer),
        (TrailerLf, b'\n') => Some(EndCr),
        (TrailerLf, _) => None,
        // The end of the body: the next request's head follows.
        (EndLf, b'\n') => return State::Head,
        (EndLf, _) => None,
    };
    next.map_or(State::Off, State::Chunked)
}

/// An HTTP/1 connection's transport, with a [`Scanner`] reading along. It
/// counts the reads and writes that move bytes, and when the connection
/// parks (see [`FramingNotes::set_parking`]) it hands the transport back,
/// open, when hyper drops it.
pub struct HeadScan<I: Unpin + Send + 'static> {
    /// Taken only in `drop`.
    inner: ManuallyDrop<I>,
    scanner: Scanner,
}

impl<I: Unpin + Send + 'static> HeadScan<I> {
    /// `max_head`: the longest request head hyper accepts on the connection;
    /// what the scan finds goes to `notes`.
    pub fn new(inner: I, max_head: usize, notes: Arc<FramingNotes>) -> HeadScan<I> {
        let scanner = Scanner {
            state: State::Head,
            partial: Vec::new(),
            searched: 0,
            heads: 0,
            max_head,
            notes,
        };
        HeadScan {
            inner: ManuallyDrop::new(inner),
            scanner,
        }
    }

    fn moved<T>(&self, result: &Poll<io::Result<T>>) {
        if let Poll::Ready(Ok(_)) = result {
            bump(&self.scanner.notes.activity);
        }
    }
}

impl<I: Unpin + Send + 'static> Drop for HeadScan<I> {
    fn drop(&mut self) {
        // SAFETY: `inner` is not used again: this is `drop`.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        let notes = &self.scanner.notes;
        if notes.parking.load(Ordering::Relaxed) {
            let mut parked = notes.parked.lock().unwrap_or_else(|e| e.into_inner());
            *parked = Some(Box::new(inner));
        }
    }
}

impl<I: AsyncRead + Unpin + Send + 'static> AsyncRead for HeadScan<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut *this.inner).poll_read(cx, buf);
        this.moved(&result);
        if let Poll::Ready(Ok(())) = result
            && this.scanner.state != State::Off
        {
            this.scanner.feed(&buf.filled()[before..]);
        }
        result
    }
}

impl<I: AsyncWrite + Unpin + Send + 'static> AsyncWrite for HeadScan<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut *self.inner).poll_write(cx, buf);
        self.moved(&result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut *self.inner).poll_write_vectored(cx, bufs);
        self.moved(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.scanner.notes.parking.load(Ordering::Relaxed) {
            // Parking: the transport stays open for the connection's next state.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> (Scanner, Arc<FramingNotes>) {
        let notes = Arc::new(FramingNotes::default());
        let mut s = Scanner {
            state: State::Head,
            partial: Vec::new(),
            searched: 0,
            heads: 0,
            max_head: 8192,
            notes: notes.clone(),
        };
        for c in chunks {
            s.feed(c);
        }
        (s, notes)
    }

    fn conflict_at(notes: &FramingNotes) -> u64 {
        notes.conflict_at.load(Ordering::Relaxed)
    }

    fn bytewise(bytes: &[u8]) -> Vec<&[u8]> {
        bytes.chunks(1).collect()
    }

    /// As the connection's service does: each head read is handed over, then
    /// answered.
    fn serve_all(notes: &FramingNotes) {
        while notes.served.load(Ordering::Relaxed) < notes.heads() {
            notes.next_request_conflicts();
            notes.answered();
        }
    }

    #[test]
    fn between_requests_only_at_message_ends_once_all_are_answered() {
        // Nothing read yet: between requests.
        let (_, notes) = scan(&[]);
        assert!(notes.between_requests());
        // Half a head, half a body, inside a chunked body: never.
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab";
        let chunked =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n";
        for bytes in [&get[..10], &post[..], &chunked[..]] {
            let (_, notes) = scan(&[bytes]);
            serve_all(&notes);
            assert!(
                !notes.between_requests(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A whole request: only once it has been handed over and answered.
        let (mut s, notes) = scan(&[get]);
        assert!(!notes.between_requests());
        notes.next_request_conflicts();
        assert!(!notes.between_requests(), "handed over, not answered");
        notes.answered();
        assert!(notes.between_requests());
        // A pipelined pair split after the first: the second's start is pending.
        s.feed(&get[..]);
        s.feed(&get[..5]);
        serve_all(&notes);
        assert!(!notes.between_requests());
        s.feed(&get[5..]);
        assert!(!notes.between_requests(), "read, not yet handed over");
        serve_all(&notes);
        assert!(notes.between_requests());
        assert_eq!(notes.heads(), 3);
        // A whole Content-Length body ends the message.
        let (mut s, notes) = scan(&[post]);
        s.feed(b"cd");
        serve_all(&notes);
        assert!(notes.between_requests());
        // A scan that stopped (refused input, a tunnel) never is.
        let (s, notes) = scan(&[b"\x00\x01 not http\r\n\r\n"]);
        assert_eq!(s.state, State::Off);
        serve_all(&notes);
        assert!(!notes.between_requests());
    }

    const CL_TE: &[u8] =
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
    const TE_CL: &[u8] =
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";

    #[test]
    fn both_framing_headers_are_noted_in_any_order_and_split() {
        for head in [CL_TE, TE_CL] {
            let (s, notes) = scan(&[head]);
            assert!(notes.next_request_conflicts());
            assert_eq!(s.state, State::Off);
            let (_, notes) = scan(&bytewise(head));
            assert!(
                notes.next_request_conflicts(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn heads_after_bodies_are_found() {
        let mut stream = Vec::new();
        // A fixed-length body that contains a fake head.
        let fake = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.extend_from_slice(
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                fake.len()
            )
            .as_bytes(),
        );
        stream.extend_from_slice(fake);
        // A chunked body with an extension and a trailer.
        stream.extend_from_slice(
            b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
              5;ext=1\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n",
        );
        // A GET, then the third request carries both.
        stream.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.extend_from_slice(CL_TE);
        let (s, notes) = scan(&[&stream]);
        assert_eq!(conflict_at(&notes), 4, "{s:?}");
        // As the service sees it, request by request.
        let seen: Vec<bool> = (0..4).map(|_| notes.next_request_conflicts()).collect();
        assert_eq!(seen, [false, false, false, true]);
        let (s, notes) = scan(&bytewise(&stream));
        assert_eq!(conflict_at(&notes), 4, "{s:?}");
        // Split at every point in two reads.
        for i in 1..stream.len() {
            let (_, notes) = scan(&[&stream[..i], &stream[i..]]);
            assert_eq!(conflict_at(&notes), 4, "split at {i}");
        }
    }

    #[test]
    fn what_hyper_refuses_stops_the_scan() {
        for bad in [
            &b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST /a HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HELLO\r\n\r\n",
        ] {
            let (s, notes) = scan(&[bad]);
            assert_eq!(s.state, State::Off, "{}", String::from_utf8_lossy(bad));
            assert_eq!(conflict_at(&notes), 0);
        }
    }

    #[test]
    fn an_endless_head_is_dropped_at_the_limit() {
        let mut s = scan(&[b"GET / HTTP/1.1\r\nX: "]).0;
        for _ in 0..10_000 {
            s.feed(b"a");
        }
        assert_eq!(s.state, State::Off);
        assert!(s.partial.capacity() == 0);
    }

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_rules() {
        let v11 = Version::HTTP_11;
        let host = |r: Request<()>| {
            check_request_head(&r).map(|h| h.map(|v| v.to_str().unwrap().to_string()))
        };
        assert_eq!(
            host(req(v11, "/x", &["gw.test"])),
            Ok(Some("gw.test".into()))
        );
        assert_eq!(
            host(req(v11, "/x", &["gw.test:8080"])),
            Ok(Some("gw.test:8080".into()))
        );
        assert_eq!(
            host(req(v11, "/x", &["[::1]:80"])),
            Ok(Some("[::1]:80".into()))
        );
        assert_eq!(host(req(v11, "/x", &[""])), Ok(None));
        assert!(host(req(v11, "/x", &[])).is_err());
        assert_eq!(host(req(Version::HTTP_10, "/x", &[])), Ok(None));
        assert!(host(req(v11, "/x", &["a", "b"])).is_err());
        for bad in [
            "a b", "a/b", "a@b", "[::1", "[nope]", "a:b", "a:99999", "a:1:2", "%zz", "é",
        ] {
            let mut r = req(v11, "/x", &[]);
            r.headers_mut()
                .insert(HOST, HeaderValue::from_bytes(bad.as_bytes()).unwrap());
            assert!(host(r).is_err(), "{bad}");
        }
        // The absolute-form target's authority wins over Host.
        assert_eq!(
            host(req(v11, "http://other.test:81/x", &["gw.test"])),
            Ok(Some("other.test:81".into()))
        );
        assert!(host(req(v11, "http://u@other.test/x", &["gw.test"])).is_err());
        // Still, HTTP/1.1 needs a Host.
        assert!(host(req(v11, "http://other.test/x", &[])).is_err());
        // HTTP/2: :authority over host.
        assert_eq!(
            host(req(Version::HTTP_2, "http://auth.test/x", &["gw.test"])),
            Ok(Some("auth.test".into()))
        );
        assert_eq!(
            host(req(Version::HTTP_2, "/x", &["gw.test"])),
            Ok(Some("gw.test".into()))
        );
    }

    #[test]
    fn transfer_codings() {
        let te = |v: &[&str]| {
            let mut h = HeaderMap::new();
            for v in v {
                h.append(TRANSFER_ENCODING, HeaderValue::from_str(v).unwrap());
            }
            check_transfer_codings(&h)
        };
        assert_eq!(te(&[]), Ok(()));
        assert_eq!(te(&["chunked"]), Ok(()));
        assert_eq!(te(&["Chunked"]), Ok(()));
        assert!(matches!(
            te(&["chunked, chunked"]),
            Err(GatewayError::BadHead(_))
        ));
        assert!(matches!(
            te(&["chunked", "chunked"]),
            Err(GatewayError::BadHead(_))
        ));
        assert!(matches!(
            te(&["chunked,,chunked"]),
            Err(GatewayError::BadHead(_))
        ));
        assert_eq!(
            te(&["gzip, chunked"]),
            Err(GatewayError::UnknownTransferCoding)
        );
        assert_eq!(
            te(&["x-custom", "chunked"]),
            Err(GatewayError::UnknownTransferCoding)
        );
    }

    #[test]
    fn connect_is_refused() {
        let r = Request::builder()
            .method(Method::CONNECT)
            .uri("gw.test:443")
            .header(HOST, "gw.test:443")
            .body(())
            .unwrap();
        assert_eq!(check_request_head(&r), Err(GatewayError::Connect));
    }
}
