//! A price server started with `--token-file` serves only clients that present the token in a
//! `Hello` first: a client that subscribes without it, or with a wrong one, gets
//! `Error(Unauthorized)` with the reason and is disconnected, and its subscriptions are never
//! recorded; the client library given the token gets its prices. Real processes, real sockets.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use testbed::price::recorder;
use testbed::Proc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use understudy_pricefeed::protocol::{read_frame, BytesMut, ErrorCode, Message, Role};
use understudy_pricefeed::{ClientEvent, ClientOptions, PriceClient};

const EXE: &str = env!("CARGO_BIN_EXE_understudy");
const TOKEN: &str = "k2Jx0-price-secret";

async fn start(dir: &Path) -> (Proc, Proc, SocketAddr, SocketAddr) {
    let http = testbed::free_addrs(1).expect("port")[0];
    let token_file = dir.join("price.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let args = [
        "--http".to_string(),
        http.to_string(),
        "--token-file".to_string(),
        token_file.display().to_string(),
    ];
    let (exchange, server, listen) = recorder::start_standalone(EXE.as_ref(), dir, &args)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    (exchange, server, listen, http)
}

/// Connect, send `hello` (if any) and a Subscribe, and read until the server closes: what came.
async fn raw_client(addr: SocketAddr, hello: Option<Message>) -> (Vec<Message>, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut out = BytesMut::new();
    if let Some(h) = hello {
        h.encode(&mut out).expect("encode");
    }
    Message::Subscribe {
        req_id: 1,
        symbols: vec!["SYM1".into()],
    }
    .encode(&mut out)
    .expect("encode");
    s.write_all(&out).await.expect("send");
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, read_frame(&mut s, &mut buf)).await {
            Ok(Ok(Some(f))) => got.push(Message::decode(&f).expect("decode")),
            Ok(Ok(None)) | Ok(Err(_)) => return (got, true),
            Err(_) => return (got, false),
        }
    }
}

fn client_hello(token: &str) -> Message {
    Message::Hello {
        role: Role::Standby,
        epoch: 0,
        server: "probe".into(),
        token: Some(token.into()),
    }
}

fn refusal(got: &[Message]) -> Option<String> {
    got.iter().find_map(|m| match m {
        Message::Error {
            code: ErrorCode::Unauthorized,
            message,
            ..
        } => Some(message.clone()),
        _ => None,
    })
}

fn priced(got: &[Message]) -> bool {
    got.iter()
        .any(|m| matches!(m, Message::Snapshot { .. } | Message::Update { .. }))
}

/// The server's own count of client subscriptions, from its status endpoint.
async fn client_subscriptions(http: SocketAddr) -> u64 {
    let mut s = TcpStream::connect(http).await.expect("connect status");
    s.write_all(b"GET /status HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let mut body = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut body)
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&body);
    let json = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).expect("status JSON");
    v["client_subscriptions"]
        .as_u64()
        .expect("client_subscriptions")
}

#[tokio::test]
async fn clients_without_the_token_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_ex, _px, addr, http) = start(dir.path()).await;

    let (got, closed) = raw_client(addr, None).await;
    let why = refusal(&got).unwrap_or_else(|| panic!("no Unauthorized error: {got:?}"));
    assert!(why.contains("token"), "{why}");
    assert!(closed && !priced(&got), "served without a token: {got:?}");

    let (got, closed) = raw_client(addr, Some(client_hello("guess"))).await;
    let why = refusal(&got).unwrap_or_else(|| panic!("no Unauthorized error: {got:?}"));
    assert!(why.contains("wrong token"), "{why}");
    assert!(
        closed && !priced(&got),
        "served with a wrong token: {got:?}"
    );
    assert_eq!(
        client_subscriptions(http).await,
        0,
        "a refused client's subscription counts"
    );

    let opts = ClientOptions {
        token: Some(TOKEN.into()),
        ..ClientOptions::default()
    };
    let mut client = PriceClient::connect(vec![addr], opts).expect("client");
    client.subscribe(&["SYM1".to_string()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quoted = false;
    while !quoted && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        quoted = matches!(
            timeout(left, client.next_event()).await,
            Ok(Some(ClientEvent::Quote(_)))
        );
    }
    assert!(quoted, "the client with the token got no price");
}
