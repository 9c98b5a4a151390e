//! Malformed and hostile HTTP/1 input, sent over raw TCP: ambiguous paths,
//! garbage request lines, oversized heads, slow clients, oversized token
//! requests and conflicting message framing.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ------------------------------------------------------------------ helpers

/// A GET for `target` with a bearer token (when given), on a connection the
/// client asks to close.
fn get_request(target: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\n{auth}Connection: close\r\n\r\n")
}

/// Where the head of a raw HTTP/1 answer ends (the index after the blank line).
fn head_end(answer: &[u8]) -> Option<usize> {
    answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The value of header `name` in a raw response head (case-insensitive).
fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Decodes a chunked body; `None` while it is incomplete.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// The body of the first response in a raw answer, when it is complete.
fn response_body(answer: &[u8]) -> Option<Vec<u8>> {
    let end = head_end(answer)?;
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let rest = &answer[end..];
    if head_header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return dechunk(rest);
    }
    match head_header(&head, "content-length") {
        Some(n) => {
            let n: usize = n.parse().ok()?;
            (rest.len() >= n).then(|| rest[..n].to_vec())
        }
        None => Some(rest.to_vec()),
    }
}

/// Whether `answer` holds at least one complete response with a known length.
fn response_complete(answer: &[u8]) -> bool {
    let Some(end) = head_end(answer) else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let framed = head_header(&head, "content-length").is_some()
        || head_header(&head, "transfer-encoding").is_some();
    framed && response_body(answer).is_some()
}

/// What came back on a raw connection.
struct Exchange {
    answer: Vec<u8>,
    /// The peer closed the connection (EOF or reset).
    closed: bool,
    elapsed: Duration,
}

impl Exchange {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.answer).into_owned()
    }
    fn status(&self) -> u16 {
        raw_status(&self.text())
    }
}

/// [`exchange`]: stop as soon as a complete response has arrived.
const AT_RESPONSE: Duration = Duration::ZERO;
/// [`exchange`]: read until the peer closes (the hang guard aside).
const UNTIL_CLOSED: Duration = HANG_GUARD;

/// Writes `bytes` while reading, and reads until the peer closes or `after_response`
/// has passed since a complete response arrived ([`AT_RESPONSE`], [`UNTIL_CLOSED`]
/// or a window for a second response to show). The wait for the first response or
/// the close is only bounded by the hang guard: a busy machine may take long. Write
/// errors are ignored: a server may refuse a request before it is all sent.
async fn exchange(addr: SocketAddr, bytes: Vec<u8>, after_response: Duration) -> Exchange {
    let start = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        // Keep the write half open (no FIN) until the exchange ends: the server must
        // not see an end of input.
        std::future::pending::<()>().await;
        drop(wr);
    });
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut deadline = tokio::time::Instant::now() + HANG_GUARD;
    let mut responded = false;
    let closed = loop {
        match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if !responded && response_complete(&answer) {
                    responded = true;
                    if after_response.is_zero() {
                        break false;
                    }
                    deadline = deadline.min(tokio::time::Instant::now() + after_response);
                }
            }
        }
    };
    writer.abort();
    let ex = Exchange {
        answer,
        closed,
        elapsed: start.elapsed(),
    };
    // Recorded for the test output: what the gateway actually did.
    eprintln!(
        "answer {:?} ({} bytes), closed by the peer: {}, after {:?}",
        ex.text().lines().next().unwrap_or(""),
        ex.answer.len(),
        ex.closed,
        ex.elapsed
    );
    ex
}

/// What the upstream received, from a raw answer that carries its JSON.
fn seen_in(answer: &str) -> Seen {
    assert_eq!(raw_status(answer), 200, "upstream reply expected: {answer}");
    let body =
        response_body(answer.as_bytes()).unwrap_or_else(|| panic!("incomplete response: {answer}"));
    Seen(serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}")))
}

// ------------------------------------------------------ ambiguous paths: 400

/// `target`, sent with a valid token, is refused with 400 and never reaches the upstream.
async fn assert_refused(target: &str) {
    let (gw, up) = setup().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let answer = raw(gw.addr, get_request(target, Some(&token)).as_bytes()).await;
    eprintln!("{target}: {:?}", answer.lines().next().unwrap_or(""));
    assert_eq!(raw_status(&answer), 400, "{target}: {answer}");
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "{target} reached the upstream"
    );
}

#[tokio::test]
async fn dot_dot_segment_is_refused() {
    assert_refused("/api/../admin/x").await;
}

#[tokio::test]
async fn dot_segment_is_refused() {
    assert_refused("/api/./x").await;
}

#[tokio::test]
async fn encoded_dot_dot_segment_is_refused() {
    assert_refused("/api/%2e%2e/admin").await;
}

#[tokio::test]
async fn encoded_dot_segment_upper_case_is_refused() {
    assert_refused("/api/%2E/x").await;
}

#[tokio::test]
async fn encoded_slash_is_refused() {
    assert_refused("/api/a%2fb").await;
}

#[tokio::test]
async fn encoded_slash_upper_case_is_refused() {
    assert_refused("/api/a%2Fb").await;
}

#[tokio::test]
async fn encoded_backslash_is_refused() {
    assert_refused("/api/a%5cb").await;
}

#[tokio::test]
async fn raw_backslash_is_refused() {
    // hyper may refuse the raw backslash itself; a 400 either way.
    assert_refused("/api/a\\b").await;
}

#[tokio::test]
async fn semicolon_parameter_is_refused() {
    assert_refused("/api/a;x=1").await;
}

#[tokio::test]
async fn empty_segment_is_refused() {
    assert_refused("/api//x").await;
}

#[tokio::test]
async fn leading_double_slash_is_refused() {
    assert_refused("//api/x").await;
}

#[tokio::test]
async fn encoded_nul_is_refused() {
    assert_refused("/api/%00").await;
}

#[tokio::test]
async fn malformed_percent_encoding_is_refused() {
    assert_refused("/api/%zz").await;
}

// ------------------------------------------- matched exactly as forwarded

#[tokio::test]
async fn encoded_unreserved_prefix_matches_the_protected_route() {
    let (gw, up) = setup().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let answer = raw(gw.addr, get_request("/%61pi/x", Some(&token)).as_bytes()).await;
    // The /api/ route, prefix stripped.
    assert_eq!(seen_in(&answer).uri(), "/x");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn encoded_unreserved_prefix_without_token_is_401() {
    let (gw, up) = setup().await;
    let answer = raw(gw.addr, get_request("/%61pi/x", None).as_bytes()).await;
    assert_eq!(raw_status(&answer), 401, "{answer}");
    let head = &answer[..head_end(answer.as_bytes()).expect("a response head")];
    assert!(
        head_header(head, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")),
        "{answer}"
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn reserved_escape_is_forwarded_with_upper_case_hex() {
    let (gw, _up) = setup().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let answer = raw(gw.addr, get_request("/api/x%2a", Some(&token)).as_bytes()).await;
    assert_eq!(seen_in(&answer).uri(), "/x%2A");
}

#[tokio::test]
async fn encoded_tilde_is_forwarded_decoded() {
    let (gw, _up) = setup().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let answer = raw(
        gw.addr,
        get_request("/api/%7euser", Some(&token)).as_bytes(),
    )
    .await;
    assert_eq!(seen_in(&answer).uri(), "/~user");
}

// ---------------------------------------------------------------- garbage

#[tokio::test]
async fn non_http_request_line_is_400_or_closed() {
    let (gw, up) = setup().await;
    let ex = exchange(gw.addr, b"HELLO\r\n\r\n".to_vec(), UNTIL_CLOSED).await;
    assert!(ex.closed, "the connection stayed open: {:?}", ex.text());
    if !ex.answer.is_empty() {
        assert_eq!(ex.status(), 400, "{}", ex.text());
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oversized_header_block_is_431() {
    let (gw, up) = setup().await;
    let big = "a".repeat(40 * 1024);
    let req = format!(
        "GET /public/ HTTP/1.1\r\nHost: gw.test\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );
    let ex = exchange(gw.addr, req.into_bytes(), AT_RESPONSE).await;
    assert!(
        !ex.answer.is_empty(),
        "no answer (closed: {}, after {:?})",
        ex.closed,
        ex.elapsed
    );
    // An answer at all: the head was refused, not left to the header timeout (which
    // would close the connection with no 431).
    let status = ex.status();
    assert!(status == 431 || status == 400, "{}", ex.text());
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let (gw, up) = setup().await;
    let mut req = String::from("GET /public/ HTTP/1.1\r\nHost: gw.test\r\n");
    for i in 0..150 {
        req.push_str(&format!("X-H-{i}: v\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let ex = exchange(gw.addr, req.into_bytes(), AT_RESPONSE).await;
    assert!(
        !ex.answer.is_empty(),
        "no answer (closed: {}, after {:?})",
        ex.closed,
        ex.elapsed
    );
    let status = ex.status();
    assert!(status == 431 || status == 400, "{}", ex.text());
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn asterisk_form_is_400() {
    let (gw, up) = setup().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let answer = raw(gw.addr, get_request("*", Some(&token)).as_bytes()).await;
    assert_eq!(raw_status(&answer), 400, "{answer}");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

// ------------------------------------------------------------ slow clients

#[tokio::test]
async fn unfinished_head_is_closed_after_header_read_timeout() {
    let (gw, up) = setup().await;
    let ex = exchange(
        gw.addr,
        b"GET /public/ HTTP/1.1\r\nHost: x\r\n".to_vec(),
        UNTIL_CLOSED,
    )
    .await;
    assert!(
        ex.closed,
        "still open after {:?}: {:?}",
        ex.elapsed,
        ex.text()
    );
    // header_read_timeout is 2 s in the test config: not closed long before it.
    assert!(
        ex.elapsed >= Duration::from_secs(1),
        "closed after only {:?}",
        ex.elapsed
    );
    if !ex.answer.is_empty() {
        assert!(ex.status() < 500, "{}", ex.text());
    }
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn silent_connection_is_closed() {
    let (gw, _up) = setup().await;
    let ex = exchange(gw.addr, Vec::new(), UNTIL_CLOSED).await;
    assert!(ex.closed, "still open after {:?}", ex.elapsed);
    if !ex.answer.is_empty() {
        assert!(ex.status() < 500, "{}", ex.text());
    }
}

// ---------------------------------------------------- token endpoint limits

#[tokio::test]
async fn chunked_token_request_over_8_kib_is_413() {
    let (gw, _up) = setup().await;
    let mut req = String::from(
        "POST /auth/access_token HTTP/1.1\r\nHost: gw.test\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    let chunk = format!("grant_type=password&username=alice&x={}", "a".repeat(4000));
    for _ in 0..3 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let ex = exchange(gw.addr, req.into_bytes(), AT_RESPONSE).await;
    assert_eq!(ex.status(), 413, "{}", ex.text());
}

#[tokio::test]
async fn declared_oversized_token_request_is_413_without_the_body() {
    let (gw, _up) = setup().await;
    // The body never comes: the answer must not wait for it.
    let req = "POST /auth/access_token HTTP/1.1\r\nHost: gw.test\r\n\
               Content-Type: application/x-www-form-urlencoded\r\n\
               Content-Length: 100000\r\nConnection: close\r\n\r\n";
    let ex = exchange(gw.addr, req.as_bytes().to_vec(), AT_RESPONSE).await;
    assert!(!ex.answer.is_empty(), "no answer after {:?}", ex.elapsed);
    assert_eq!(ex.status(), 413, "{}", ex.text());
    assert!(
        response_complete(&ex.answer),
        "incomplete answer: {}",
        ex.text()
    );
}

// ------------------------------------------------------- ambiguous framing

/// Conflicting framing is either refused (400, nothing forwarded) or read one
/// way only: Transfer-Encoding wins (RFC 9112 section 6.3), the upstream sees
/// exactly one request with the chunked body, and nothing smuggled after it.
async fn assert_framing_consistent(framing: &str) {
    let (gw, up) = setup().await;
    let req = format!(
        "POST /public/x HTTP/1.1\r\nHost: gw.test\r\n{framing}\r\n\
         5\r\nhello\r\n0\r\n\r\n\
         GET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    );
    // Until the connection closes, or 5 s after the first response for a second
    // (smuggled) one to show: only a wrong gateway answers twice, so a busy machine
    // can hide a fault here but never fail a correct gateway.
    let ex = exchange(gw.addr, req.into_bytes(), Duration::from_secs(5)).await;
    let text = ex.text();
    let status = ex.status();
    // Give a (wrongly) forwarded second request time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hits = up.hits.load(Ordering::SeqCst);
    eprintln!(
        "framing {framing:?}: status {status}, upstream hits {hits}, connection closed {}",
        ex.closed
    );
    if status == 400 {
        assert_eq!(hits, 0, "refused, yet forwarded: {text}");
        return;
    }
    assert_eq!(status, 200, "{text}");
    assert_eq!(hits, 1, "the upstream saw {hits} requests: {text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "more than one response: {text}"
    );
    let seen = seen_in(&text);
    assert_eq!(seen.uri(), "/x");
    assert_eq!(seen.0["body_len"], 5, "{text}");
    let lengths = seen.header_all("content-length");
    assert!(
        lengths.iter().all(|l| l == "5"),
        "upstream got Content-Length {lengths:?}"
    );
    assert!(
        lengths.is_empty() || seen.header("transfer-encoding").is_none(),
        "upstream got both Content-Length and Transfer-Encoding: {text}"
    );
}

#[tokio::test]
async fn content_length_then_transfer_encoding_is_not_ambiguous() {
    assert_framing_consistent("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n").await;
}

#[tokio::test]
async fn transfer_encoding_then_content_length_is_not_ambiguous() {
    assert_framing_consistent("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n").await;
}

#[tokio::test]
async fn two_different_content_lengths_are_400() {
    let (gw, up) = setup().await;
    let req = "POST /public/x HTTP/1.1\r\nHost: gw.test\r\n\
               Content-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!";
    let ex = exchange(gw.addr, req.as_bytes().to_vec(), UNTIL_CLOSED).await;
    let text = ex.text();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let hits = up.hits.load(Ordering::SeqCst);
    eprintln!(
        "two Content-Lengths: status {}, upstream hits {hits}",
        ex.status()
    );
    assert_eq!(ex.status(), 400, "{text}");
    assert_eq!(hits, 0, "{text}");
}
