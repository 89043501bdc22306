//! Per-address connection limits and the other bounds on what a peer can make a node hold,
//! probed with real sockets: the agent's admin API (`node.admin_max_connections_per_ip`) and the
//! price server (clients in all and per address, a frame begun and never finished, subscriptions
//! before the exchange's instrument list is known). Each refusal is counted where `understudy
//! status` shows it, and the node keeps answering others (its health check included).
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use testbed::price::recorder;
use testbed::Proc;
use understudy_pricefeed::protocol::{split_frame, BytesMut, ErrorCode, Message};

const S: Duration = Duration::from_secs(1);

/// A TCP connection to `to` from the loopback address `from` (any 127.x.y.z works on Linux).
fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = socket2_connect(from, to)?;
    sock.set_read_timeout(Some(5 * S))?;
    Ok(sock)
}

/// Bind `from`, then connect: std has no bind-before-connect, tokio's `TcpSocket` has.
fn socket2_connect(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((from, 0)))?;
        sock.connect(to).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

#[test]
fn one_address_cannot_take_every_admin_connection() {
    let mut g = Group::new("trylock", "cold");
    g.add("a");
    let cfg = g.nodes["a"].config.clone();
    let admin = format!("admin = {}\n", q(&g.admin("a")));
    let text = std::fs::read_to_string(&cfg).expect("config");
    let text = text.replacen(
        &admin,
        &format!("{admin}admin_max_connections = 16\nadmin_max_connections_per_ip = 4\n"),
        1,
    );
    std::fs::write(&cfg, text).expect("config");
    g.start("a");
    g.wait_mode("a", "Hot", 10 * S);
    let addr: SocketAddr = g.admin("a").parse().expect("admin address");
    let before = metric(&g.admin("a"), "understudy_admin_connections_refused_total");

    // Four idle connections from 127.0.0.7 hold its share.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from([127, 0, 0, 7], addr).expect("connect");
        s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            .expect("half a request");
        held.push(s);
    }
    // The fifth from the same address is answered 503 at once, saying why.
    let mut fifth = connect_from([127, 0, 0, 7], addr).expect("connect");
    let _ = fifth.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = String::new();
    let _ = fifth.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("from this address"),
        "a fifth connection from one address: {answer:?}"
    );
    // Others are served meanwhile, the agent's own loop included.
    assert!(get_json(&g.admin("a"), "/status").is_some());
    let (code, _) = http("GET", &g.admin("a"), "/healthz", S).expect("healthz");
    assert_eq!(code, 200);
    assert_eq!(
        metric(&g.admin("a"), "understudy_admin_connections_refused_total"),
        before + 1
    );
    let shown = wait_until(5 * S, || {
        let (_, out, _) = run_cli(&["status", "--agent", &g.admin("a")]);
        out.contains("1 connections refused")
    });
    assert!(shown, "`understudy status` does not show the refusal");
    // The share comes back when they close.
    drop(held);
    let served = wait_until(5 * S, || {
        let Ok(mut s) = connect_from([127, 0, 0, 7], addr) else {
            return false;
        };
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut a = String::new();
        let _ = s.read_to_string(&mut a);
        a.starts_with("HTTP/1.1 200")
    });
    assert!(
        served,
        "127.0.0.7 is still refused after closing its connections"
    );
    g.expect_actives(1);
}

struct Px {
    _ex: Option<Proc>,
    server: Proc,
    addr: SocketAddr,
    http: SocketAddr,
}

/// A stand-alone price server; with `feed`, an exchange with 20 instruments upstream, without,
/// an upstream that is down (the instrument list never arrives).
fn price_server(dir: &std::path::Path, feed: bool) -> Px {
    let addrs = testbed::free_addrs(3).expect("ports");
    let (ex, listen, http) = (addrs[0], addrs[1], addrs[2]);
    let exe = PathBuf::from(BIN);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let exchange = feed.then(|| {
        rt.block_on(recorder::start_exchange(
            &exe,
            ex,
            20,
            200,
            Some(&dir.join("ex.log")),
        ))
        .expect("exchange")
    });
    let mut args = recorder::price_server_command(&exe, ex, listen);
    args.remove(0);
    args.extend(["--http".to_string(), http.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = testbed::proc::understudy(&exe, &args);
    testbed::proc::log_to(&mut cmd, &dir.join("px.log")).expect("log");
    let server = Proc::spawn(&mut cmd).expect("price server");
    assert!(
        testbed::http::wait_port(listen, 10 * S),
        "the price server does not listen"
    );
    Px {
        _ex: exchange,
        server,
        addr: listen,
        http,
    }
}

/// The price server's status endpoint (what the agent's `[health] http` check reads), waiting
/// for an answer as a health check with a generous timeout would.
fn px_status(px: &Px) -> serde_json::Value {
    let mut last = None;
    let answered = wait_until(10 * S, || {
        last = http("GET", &px.http.to_string(), "/status", 2 * S)
            .ok()
            .and_then(|(code, body)| (code == 200).then_some(body))
            .and_then(|b| serde_json::from_str(&b).ok());
        last.is_some()
    });
    assert!(
        answered,
        "the price server's status endpoint does not answer"
    );
    last.unwrap_or_default()
}

/// Frames the server sent on `s` until it closed or `within` passed: (messages, closed).
fn frames(s: &mut TcpStream, within: Duration) -> (Vec<Message>, bool) {
    let deadline = Instant::now() + within;
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        while let Ok(Some(f)) = split_frame(&mut buf) {
            if let Ok(m) = Message::decode(&f) {
                got.push(m);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("timeout");
        match s.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (got, true),
        }
    }
}

fn error_code(got: &[Message], want: u16) -> bool {
    got.iter()
        .any(|m| matches!(m, Message::Error { code: ErrorCode::Other(c), .. } if *c == want))
}

#[test]
fn the_price_server_bounds_clients_per_address_and_half_sent_frames() {
    let dir = tempfile::tempdir().expect("tempdir");
    let px = price_server(dir.path(), true);
    let pid = px.server.id();
    let rss_before = rss_kib(pid);

    // 256 clients from one address are served; the 257th is told why and closed.
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(connect_from([127, 0, 0, 9], px.addr).expect("connect"));
    }
    let mut extra = connect_from([127, 0, 0, 9], px.addr).expect("connect");
    let (got, closed) = frames(&mut extra, 5 * S);
    assert!(
        closed && error_code(&got, understudy_pricefeed::ERROR_TOO_MANY_CLIENTS),
        "the 257th client from one address: {got:?}"
    );
    // Another address is served, and so is the health check.
    let mut other = connect_from([127, 0, 0, 10], px.addr).expect("connect");
    let (got, closed) = frames(&mut other, S);
    assert!(
        !closed && matches!(got.first(), Some(Message::Hello { .. })),
        "{got:?}"
    );
    assert_eq!(px_status(&px)["connections_refused"], 1);

    // A frame begun and never finished: the client is dropped after the frame timeout (5 s).
    let mut stalled = connect_from([127, 0, 0, 11], px.addr).expect("connect");
    stalled.write_all(&[0, 0, 0, 200, 1]).expect("half a frame");
    let t0 = Instant::now();
    let (_, closed) = frames(&mut stalled, 15 * S);
    assert!(
        closed,
        "a half-sent frame held the connection for {:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() >= 4 * S, "dropped before the frame timeout");
    assert_eq!(px_status(&px)["clients_dropped"], 1);

    drop(held);
    let released = wait_until(5 * S, || px_status(&px)["clients"] == 1);
    assert!(released, "closed clients still count: {}", px_status(&px));
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "the server grew by {grown} KiB");
}

#[test]
fn subscriptions_before_the_instrument_list_are_capped_in_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let px = price_server(dir.path(), false);
    let pid = px.server.id();
    let rss_before = rss_kib(pid);
    let mut clients = Vec::new();
    let mut refused = false;
    // Three clients, each at its own 100 000 cap: together 300 000, the total cap is 200 000.
    for c in 0..3u32 {
        let mut s = connect_from([127, 0, 0, 12], px.addr).expect("connect");
        let mut out = BytesMut::new();
        for chunk in 0..25u32 {
            let symbols = (0..4000u32)
                .map(|i| format!("C{c}X{}", chunk * 4000 + i))
                .collect();
            Message::Subscribe {
                req_id: chunk,
                symbols,
            }
            .encode(&mut out)
            .expect("encode");
        }
        // The third client may be cut off while it writes (its error replies pile up unread).
        let _ = s.write_all(&out);
        let (got, _) = frames(&mut s, 3 * S);
        refused |= error_code(&got, understudy_pricefeed::ERROR_TOO_MANY_SUBSCRIPTIONS);
        clients.push(s);
    }
    // The last subscriptions may still be being applied (a debug build on a busy machine).
    let mut st = px_status(&px);
    wait_until(60 * S, || {
        st = px_status(&px);
        st["client_subscriptions"] == 200_000
    });
    assert!(refused, "no subscription was refused: {st}");
    assert_eq!(st["client_subscriptions"], 200_000, "{st}");
    assert!(st["subscriptions_refused"].as_u64() > Some(0), "{st}");
    // The status endpoint (the agent's health check) answered throughout; closing gives back.
    drop(clients);
    let released = wait_until(30 * S, || px_status(&px)["client_subscriptions"] == 0);
    assert!(released, "{}", px_status(&px));
    let grown = rss_kib(pid).saturating_sub(rss_before);
    assert!(grown < 200 * 1024, "the server grew by {grown} KiB");
}
