//! Serving a listener until stop, then draining it: written once, for the
//! public listener (plain and TLS, in every worker) and the admin listener.
//!
//! hyper-util's `GracefulShutdown` would do the per-connection part, but it
//! cannot watch hyper's `http1::UpgradeableConnection` (the public HTTP/1
//! connection, which tunnels WebSocket upgrades): hyper-util 0.1 seals that type
//! without implementing its `GracefulConnection` for it. So each connection gets
//! a `watch` receiver of the stop flag and [`until_stopped!`] calls the hyper
//! connection's own `graceful_shutdown` (finish the request in flight, then
//! close), and [`serve_listener`] waits for them, as that helper does.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long accepting pauses after an error (out of file descriptors, EMFILE,
/// and the like): the error would come back at once, and a loop retrying it
/// would spin a core while it lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `stop` turns true, then drains them.
///
/// Each accepted connection is first offered to `admit`: `None` (it is over a
/// limit; `admit` logs which) closes it at once, before any byte is read;
/// `Some(ticket)` serves it with `serve(stream, peer, stop)`, holding the ticket
/// (its connection slots) until the connection ends. An accept error is logged
/// and accepting pauses for [`ACCEPT_BACKOFF`].
///
/// On stop the listener is closed, so the kernel refuses new connections, and
/// the open ones, told through their `stop` receiver, finish what they are
/// doing for at most `grace()`; any still open then are dropped.
pub async fn serve_listener<T, F>(
    listener: TcpListener,
    name: &'static str,
    mut stop: watch::Receiver<bool>,
    grace: impl FnOnce() -> Duration,
    mut admit: impl FnMut(SocketAddr) -> Option<T>,
    mut serve: impl FnMut(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
) where
    T: Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    // Each connection gets its own receiver, to finish gracefully on stop.
    let for_connections = stop.clone();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                let Some(ticket) = admit(peer) else {
                    drop(stream);
                    continue;
                };
                // The slots go when the connection ends. `map`, not an async
                // block awaiting `conn`: that would hold the connection's future
                // twice (once captured, once being awaited) in the task.
                let conn = serve(stream, peer, for_connections.clone());
                connections.spawn(conn.map(move |()| drop(ticket)));
            }
            // Reap finished connections as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    tracing::debug!(
        listener = name,
        connections = connections.len(),
        "draining connections"
    );
    let grace = grace();
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!(
            listener = name,
            after = ?grace,
            remaining = connections.len(),
            "shutdown grace period over; dropping remaining connections"
        );
        connections.abort_all();
    }
}

/// Resolves once the stop flag is true (at once if it already is).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // What `wait_for` returns holds a lock guard, which is not `Send`: it is
    // dropped here, before the caller awaits anything else.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// `Some(fut's output)`, or `None` if the stop flag (a `watch::Receiver<bool>`)
/// turns true first: a TLS handshake or protocol detection is abandoned on
/// stop, since no request has begun.
///
/// A macro, not a generic `async fn`: awaited inside the connection's future,
/// a generic one trips rustc's higher-ranked `Send` check (rust-lang/rust#110338)
/// and the connection could no longer be spawned.
macro_rules! unless_stopped {
    ($fut:expr, $stop:expr) => {
        tokio::select! {
            r = $fut => Some(r),
            _ = $crate::server::drain::stopped(&mut $stop) => None,
        }
    };
}
pub(crate) use unless_stopped;

/// Drives a hyper connection to its end; once the stop flag turns true, calls
/// its `graceful_shutdown` (hyper then finishes the request in flight and
/// closes: HTTP/1 after the answer, HTTP/2 with GOAWAY) and drives it on.
/// A macro for the reason [`unless_stopped`] is.
/// `$conn` is the connection, pinned in a box: a connection's task then holds
/// a pointer while idle, not the connection's whole state machine (see
/// `bench/idle_conns.py`).
macro_rules! until_stopped {
    ($conn:expr, $stop:expr) => {{
        let mut conn: std::pin::Pin<Box<_>> = $conn;
        match $crate::server::drain::unless_stopped!(conn.as_mut(), $stop) {
            Some(ended) => ended,
            None => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}
pub(crate) use until_stopped;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connection that answers one byte once `release` says so; stop does
    /// not cut it short: it is the request in flight.
    async fn slow_echo(mut s: TcpStream, mut release: watch::Receiver<bool>) {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).await.is_ok() {
            let _ = release.wait_for(|r| *r).await;
            let _ = s.write_all(&b).await;
        }
    }

    #[tokio::test]
    async fn stop_closes_the_listener_and_waits_for_connections_in_flight() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (release_tx, release_rx) = watch::channel(false);
        let admitted = Arc::new(AtomicUsize::new(0));
        let counted = admitted.clone();
        let served = tokio::spawn(serve_listener(
            listener,
            "test",
            stop_rx,
            || Duration::from_secs(3600),
            move |_| (counted.fetch_add(1, Ordering::SeqCst) < 1).then_some(()),
            move |s, _, _| slow_echo(s, release_rx.clone()),
        ));
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"x").await.unwrap();
        // Over the cap (one): closed without an answer.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(second.read(&mut buf).await.unwrap(), 0);
        assert_eq!(admitted.load(Ordering::SeqCst), 2);

        stop_tx.send(true).unwrap();
        // The listener closes: new connections are refused by the kernel.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The connection in flight keeps the listener draining ...
        assert!(!served.is_finished());
        release_tx.send(true).unwrap();
        // ... and gets its answer.
        first.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"x");
        served.await.unwrap();
    }

    #[tokio::test]
    async fn connections_still_open_after_the_grace_period_are_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (_never, release_rx) = watch::channel(false);
        let served = tokio::spawn(serve_listener(
            listener,
            "test",
            stop_rx,
            || Duration::ZERO,
            |_| Some(()),
            move |s, _, _| slow_echo(s, release_rx.clone()),
        ));
        let mut held = TcpStream::connect(addr).await.unwrap();
        held.write_all(b"x").await.unwrap();
        stop_tx.send(true).unwrap();
        served.await.unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(held.read(&mut buf).await.unwrap_or(0), 0, "dropped");
    }

    #[tokio::test]
    async fn unless_stopped_gives_up_once_stop_is_set() {
        let (tx, mut rx) = watch::channel(false);
        assert_eq!(unless_stopped!(async { 7 }, rx), Some(7));
        tx.send(true).unwrap();
        assert_eq!(unless_stopped!(std::future::pending::<u8>(), rx), None);
    }
}
