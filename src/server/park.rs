//! Serving an HTTP/1 connection, and parking it while it is quiet.
//!
//! hyper's HTTP/1 connection holds an 8 KiB read buffer and an 8 KiB write
//! buffer for as long as it lives, and the previous response's header map, so
//! that every idle keep-alive connection costs about 18 KiB of heap. nginx
//! frees its buffers when a keep-alive connection goes idle. This does the same
//! with hyper: once a connection has moved no byte for a [`PARK_TICK`] and
//! everything read is whole requests that have been answered
//! ([`FramingNotes::between_requests`]), it *parks*: hyper is told to close
//! (`graceful_shutdown`: an idle hyper connection closes at once, a busy one
//! after its answer), but [`HeadScan`] keeps the socket open and hands it back.
//! The task then holds the socket alone and waits for it to become readable;
//! then a new hyper connection serves the next request. hyper's read buffer
//! held nothing (the scan saw every request to its end and hyper had handed
//! each to the service), so nothing is lost between the two.
//!
//! While parked, the keep-alive limit still holds: the connection is closed
//! once it has been idle for `header_read_timeout`, as hyper would have, and on
//! stop at once (no request is in flight).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1::UpgradeableConnection;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Body;
use crate::framing::{self, FramingNotes, HeadScan, LengthWithTransferEncoding};
use crate::gateway::{AppState, ConnInfo, handle};
use crate::server::drain;

/// How long an HTTP/1 connection must have moved no byte before it parks. It
/// is checked every `PARK_TICK`, so a connection parks after one to two ticks
/// of quiet. A busy connection pays one timer wake per tick, not per request.
pub const PARK_TICK: Duration = Duration::from_millis(250);

/// A public connection's transport, which can be waited on while parked.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Resolves when the socket has bytes to read, or has been closed.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_;
}

impl Transport for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        TcpStream::readable(self)
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        // rustls holds no plaintext here: hyper's last read came back empty
        // (it reads until then), and nothing was read since.
        self.get_ref().0.readable()
    }
}

/// The public listener's service: every request goes to [`handle`].
#[derive(Clone)]
pub struct Public {
    pub state: Arc<AppState>,
    pub conn: Arc<ConnInfo>,
    /// HTTP/1 only: what the connection's [`HeadScan`] found.
    pub notes: Option<Arc<FramingNotes>>,
}

impl Service<Request<Incoming>> for Public {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, mut req: Request<Incoming>) -> Answer {
        if self
            .notes
            .as_ref()
            .is_some_and(|n| n.next_request_conflicts())
        {
            req.extensions_mut().insert(LengthWithTransferEncoding);
        }
        // Boxed: the connection holds a slot for this future even while idle, and
        // the request pipeline's future is several KiB; boxed, an idle
        // keep-alive connection holds a pointer instead. The box is allocated
        // before the future is made, so that the future is made in it: made
        // first and then moved, every request copied all its KiB (`memcpy`
        // was 3% of the CPU of a proxied request).
        let slot = Box::new_uninit();
        let fut = Box::into_pin(Box::write(
            slot,
            handle(self.state.clone(), req, self.conn.clone()),
        ));
        Answer {
            fut,
            notes: self.notes.clone(),
        }
    }
}

/// A request being answered; counts the answer in the connection's notes.
pub struct Answer {
    fut: Pin<Box<dyn Future<Output = Response<Body>> + Send>>,
    notes: Option<Arc<FramingNotes>>,
}

impl Future for Answer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = ready!(self.fut.as_mut().poll(cx));
        if let Some(notes) = &self.notes {
            notes.answered();
        }
        Poll::Ready(Ok(response))
    }
}

/// What an HTTP/1 connection's states share: made once per connection.
pub struct H1Setup {
    pub state: Arc<AppState>,
    pub conn: Arc<ConnInfo>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
}

/// hyper's HTTP/1 connection over the scanned transport.
pub type H1<I> = UpgradeableConnection<TokioIo<HeadScan<I>>, Public>;

impl H1Setup {
    /// A hyper HTTP/1 connection (with upgrades: WebSocket and other upgraded
    /// connections are tunnelled) on `io`, boxed, and the notes its scan keeps.
    pub fn connection<I: Transport>(&self, io: I) -> (Pin<Box<H1<I>>>, Arc<FramingNotes>) {
        let notes = Arc::new(FramingNotes::default());
        let max_head = self.max_header_bytes.max(8192);
        let io = TokioIo::new(HeadScan::new(io, max_head, notes.clone()));
        let service = Public {
            state: self.state.clone(),
            conn: self.conn.clone(),
            notes: Some(notes.clone()),
        };
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(max_head)
            .max_headers(framing::MAX_HEADERS);
        let conn = Box::pin(b.serve_connection(io, service).with_upgrades());
        (conn, notes)
    }
}

/// How a hyper connection's run ended.
enum Ran {
    /// It ended by itself: closed, failed or upgraded.
    Ended(hyper::Result<()>),
    /// The stop flag turned true.
    Stopped,
    /// It has been quiet between requests for a tick.
    Quiet,
    /// Woken from parking, its first head did not arrive in time.
    Late,
}

/// Serves an HTTP/1 connection until it ends, parking it whenever it is quiet
/// (see the module's documentation). `conn` and `notes` are its first state,
/// from [`H1Setup::connection`].
pub async fn serve_h1<I: Transport>(
    setup: H1Setup,
    mut conn: Pin<Box<H1<I>>>,
    mut notes: Arc<FramingNotes>,
    mut stop: watch::Receiver<bool>,
) {
    let peer = setup.conn.peer;
    let mut tick = Box::pin(tokio::time::sleep(PARK_TICK));
    // After a park: when the first head must have arrived. hyper's header
    // timer starts afresh with each connection state, so without this a
    // client could send nothing for a timeout, then trickle a head for
    // another one.
    let mut head_by: Option<Instant> = None;
    loop {
        let mut seen = notes.activity();
        let ran = loop {
            tokio::select! {
                ended = conn.as_mut() => break Ran::Ended(ended),
                _ = drain::stopped(&mut stop) => break Ran::Stopped,
                _ = tick.as_mut() => {
                    if let Some(by) = head_by {
                        if notes.heads() > 0 {
                            head_by = None;
                        } else if Instant::now() >= by {
                            break Ran::Late;
                        }
                    }
                    let now = notes.activity();
                    if now == seen && notes.between_requests() {
                        break Ran::Quiet;
                    }
                    seen = now;
                    tick.as_mut().reset(Instant::now() + PARK_TICK);
                }
            }
        };
        let ended = match ran {
            Ran::Ended(ended) => ended,
            Ran::Late => {
                tracing::debug!(peer = %peer, "no request head in time after parking");
                return;
            }
            Ran::Stopped => {
                // Finish the request in flight, then close.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            Ran::Quiet => {
                notes.set_parking(true);
                conn.as_mut().graceful_shutdown();
                match drain::unless_stopped!(conn.as_mut(), stop) {
                    Some(Ok(())) => {
                        drop(conn);
                        // `None`: hyper kept the transport (an upgrade).
                        let Some(io) = notes.take_parked::<I>() else {
                            notes.set_parking(false);
                            return;
                        };
                        if !notes.between_requests() {
                            // hyper read more before it closed (a pipelined
                            // request after a stalled response): that is in
                            // its buffer, gone with it. Close, as hyper would
                            // at the end of its keep-alive: the client retries.
                            let mut io = *io;
                            let _ = io.shutdown().await;
                            return;
                        }
                        setup.state.metrics.connection_parked();
                        match park(*io, &setup, &mut stop, tick.as_mut()).await {
                            Some((io, by)) => {
                                (conn, notes) = setup.connection(io);
                                head_by = Some(by);
                                tick.as_mut().reset(Instant::now() + PARK_TICK);
                                continue;
                            }
                            None => return,
                        }
                    }
                    Some(ended) => ended,
                    None => {
                        // Stopped while hyper finished: close as stopping does.
                        notes.set_parking(false);
                        conn.await
                    }
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
        }
        return;
    }
}

/// Holds a parked connection's socket until it is readable (`Some`, with the
/// time by which its next head must have arrived), or closes it: once it has
/// been idle for `header_read_timeout` (counted from a tick before it parked),
/// or at once on stop.
async fn park<I: Transport>(
    mut io: I,
    setup: &H1Setup,
    stop: &mut watch::Receiver<bool>,
    mut deadline: Pin<&mut tokio::time::Sleep>,
) -> Option<(I, Instant)> {
    let by = Instant::now() + setup.header_read_timeout.saturating_sub(PARK_TICK);
    deadline.as_mut().reset(by);
    let woke = tokio::select! {
        readable = io.readable() => Woke::Readable(readable.is_ok()),
        _ = deadline => Woke::Idle,
        _ = drain::stopped(stop) => Woke::Stopped,
    };
    match woke {
        Woke::Readable(true) => Some((io, by)),
        Woke::Readable(false) | Woke::Idle => None,
        Woke::Stopped => {
            // As hyper closes an idle connection on stop: TLS's close_notify,
            // then the end of the stream.
            let _ = io.shutdown().await;
            None
        }
    }
}

/// Why a parked connection's wait ended.
enum Woke {
    /// The socket is readable (`true`), or failed.
    Readable(bool),
    /// Idle for `header_read_timeout`.
    Idle,
    Stopped,
}
