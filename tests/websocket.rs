//! WebSocket through the gateway: authenticated like any request, then tunnelled
//! both ways; refused without a token.

// tungstenite's handshake callback and errors carry whole HTTP responses: large by design.
#![allow(clippy::result_large_err)]

mod common;
use common::*;

use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A WebSocket echo upstream; records the handshake headers it saw.
async fn spawn_ws_echo() -> (std::net::SocketAddr, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let callback = |req: &Request, resp: Response| {
                    let mut r = record.lock().unwrap();
                    r.push(("path".into(), req.uri().path().to_string()));
                    for (k, v) in req.headers() {
                        r.push((k.to_string(), v.to_str().unwrap_or("").to_string()));
                    }
                    Ok(resp)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    if (msg.is_text() || msg.is_binary()) && tx.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn gateway_with_ws_route() -> (Gateway, Arc<Mutex<Vec<(String, String)>>>) {
    let up = spawn_upstream().await;
    let (ws_addr, seen) = spawn_ws_echo().await;
    let text = format!(
        "{}\n[[routes]]\nprefix = \"/ws/\"\nupstream = \"http://{ws_addr}\"\nstrip_prefix = true\nscopes = [\"read\"]\n",
        config_text(up.addr)
    );
    (spawn_gateway_with(&text).await, seen)
}

async fn connect(
    gw: &Gateway,
    token: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, WsError> {
    let mut req = format!("ws://{}/ws/echo", gw.addr)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let (gw, seen) = gateway_with_ws_route().await;
    let token = access_token(&gw, "alice", ALICE_PW).await;
    let mut ws = connect(&gw, Some(&token))
        .await
        .expect("handshake through the gateway");
    for n in 0..5 {
        let text = format!("hello {n}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), text);
    }
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &big[..]
    );
    ws.close(None).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let get = |k: &str| seen.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(get("path").as_deref(), Some("/echo"));
    assert_eq!(get("x-auth-user").as_deref(), Some("alice"));
    assert!(
        get("authorization").is_none(),
        "the token never reaches the upstream"
    );
    assert_eq!(
        get("upgrade")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
}

#[tokio::test]
async fn websocket_without_a_token_is_refused() {
    let (gw, seen) = gateway_with_ws_route().await;
    match connect(&gw, None).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Bearer realm=\"whosthat\""
            );
        }
        other => panic!("expected a 401, got {:?}", other.map(|_| "a websocket")),
    }
    match connect(&gw, Some("not-a-real-token")).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401, got {:?}", other.map(|_| "a websocket")),
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the upstream saw no handshake"
    );
}
