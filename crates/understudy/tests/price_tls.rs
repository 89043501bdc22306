//! The price feed over TLS, with certificates made here: a price server started with
//! `--tls-cert`/`--tls-key` (and a token) serves the client library given its CA and the token;
//! a plain-text client is refused with a log line saying why; a client trusting another CA gets
//! nothing; and a TLS price group fails over after kill -9 of the primary with every
//! subscription back at the new epoch. Real processes, real sockets.
#![allow(clippy::disallowed_methods)] // a test driver blocks while it polls

mod pki;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pki::{pki, Pki};
use testbed::price::recorder;
use testbed::price::{GroupOptions, PriceGroup};
use testbed::Proc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use understudy_pricefeed::protocol::{read_frame, BytesMut, Message};
use understudy_pricefeed::{ClientEvent, ClientOptions, PriceClient};
use understudy_tls::{Pem, TlsClient};

const EXE: &str = env!("CARGO_BIN_EXE_understudy");
const TOKEN: &str = "tls-price-secret";

fn tls_args(p: &Pki) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        p.server_cert.display().to_string(),
        "--tls-key".into(),
        p.server_key.display().to_string(),
    ]
}

/// An exchange and a stand-alone TLS price server requiring `TOKEN`, logging into `dir/px.log`.
async fn start(dir: &Path, p: &Pki) -> (Proc, Proc, SocketAddr) {
    let token_file = dir.join("price.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let mut args = vec!["--token-file".to_string(), token_file.display().to_string()];
    args.extend(tls_args(p));
    recorder::start_standalone(EXE.as_ref(), dir, &args)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("px.log")).unwrap_or_default()
}

/// Polls the server's log until it contains `text` more than `seen` times, for up to 5 s.
async fn wait_log(dir: &Path, text: &str, seen: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if log(dir).matches(text).count() > seen {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn client_tls(ca: &Path) -> TlsClient {
    TlsClient::load(Pem::new("ca", ca), Some(("name", "localhost")), None).expect("client TLS")
}

/// The first quote `client` delivers within `within`, if any.
async fn first_quote(client: &mut PriceClient, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, client.next_event()).await {
            Ok(Some(ClientEvent::Quote(_))) => return true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn tls_clients_get_prices_and_plain_or_untrusted_clients_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path(), "px");
    let (_ex, _px, addr) = start(dir.path(), &p).await;

    let opts = ClientOptions {
        token: Some(TOKEN.into()),
        tls: Some(client_tls(&p.ca)),
        ..ClientOptions::default()
    };
    let mut client = PriceClient::connect(vec![addr], opts).expect("client");
    client.subscribe(&["SYM1".to_string()]);
    assert!(
        first_quote(&mut client, Duration::from_secs(10)).await,
        "the TLS client with the token got no price: {}",
        log(dir.path())
    );

    // A plain client's Subscribe gets nothing back: the connection is closed, with a log line.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut out = BytesMut::new();
    Message::Subscribe {
        req_id: 1,
        symbols: vec!["SYM1".into()],
    }
    .encode(&mut out)
    .expect("encode");
    s.write_all(&out).await.expect("send");
    let mut buf = BytesMut::new();
    let got = timeout(Duration::from_secs(5), read_frame(&mut s, &mut buf)).await;
    assert!(
        matches!(got, Ok(Ok(None)) | Ok(Err(_))),
        "a plain client was answered: {got:?}"
    );
    assert!(
        wait_log(dir.path(), "not TLS", 0).await,
        "no log line names the plain client: {}",
        log(dir.path())
    );

    // A client that trusts another CA refuses the server and delivers nothing.
    let other = pki(dir.path(), "other");
    // The port probe that waited for the server counts as a failed handshake too.
    let failed = log(dir.path()).matches("TLS handshake failed").count();
    let opts = ClientOptions {
        token: Some(TOKEN.into()),
        tls: Some(client_tls(&other.ca)),
        ..ClientOptions::default()
    };
    let mut untrusting = PriceClient::connect(vec![addr], opts).expect("client");
    untrusting.subscribe(&["SYM1".to_string()]);
    assert!(
        !first_quote(&mut untrusting, Duration::from_secs(2)).await,
        "a client that does not trust the server's certificate got a price"
    );
    assert!(
        wait_log(dir.path(), "TLS handshake failed", failed).await,
        "the server did not log the failed handshake: {}",
        log(dir.path())
    );
}

#[test]
fn a_tls_price_group_fails_over_with_every_subscription_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path(), "group");
    let mut g = PriceGroup::start(
        PathBuf::from(EXE),
        GroupOptions {
            servers: 2,
            instruments: 200,
            subscribe: 50,
            server_args: tls_args(&p),
            client: ClientOptions {
                // As in price_failover.rs: a loaded machine reaches 300 ms without a fault.
                heartbeat_timeout: Duration::from_secs(1),
                tls: Some(client_tls(&p.ca)),
                ..ClientOptions::default()
            },
            ..GroupOptions::default()
        },
    )
    .expect("a TLS price group starts");
    let f = g.kill_active().expect("failover");
    assert!(f.new_epoch > f.old_epoch, "{f:?}");
    assert_ne!(f.new_active, f.killed);
    assert_eq!(
        f.symbols_back,
        g.subscribed.len(),
        "every subscription must come back at the new epoch over TLS ({f:?}; logs in {})",
        g.dir().display()
    );
    assert_eq!(
        g.recorded(|r| r.older_after_newer),
        0,
        "an update with an older epoch reached the application after a newer one"
    );
    let n = g.recorded(|r| r.quotes);
    assert!(
        g.wait(Duration::from_secs(10), |r| r.quotes > n + 100),
        "prices stopped after the failover"
    );
}

/// `check-config` on an agent protecting a price server, and the server's own start, find an
/// unusable TLS file (exit 2, naming the flag or key); `tls_cert`/`tls_key` in the server's
/// `--config` file are taken relative to that file.
#[test]
fn bad_tls_files_are_found_by_check_config_and_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let p = pki(d, "cfg");
    let missing = d.join("missing.pem").display().to_string();
    let key = p.server_key.display().to_string();
    let server = |extra: &[&str]| {
        let mut c = vec![
            EXE,
            "price-server",
            "--upstream",
            "127.0.0.1:9100",
            "--listen",
            "127.0.0.1:9200",
        ];
        c.extend_from_slice(extra);
        c.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let agent = |n: usize, command: &[String]| {
        let path = d.join(format!("agent-{n}.toml"));
        let mut doc = toml::Table::new();
        let node: toml::Table = toml::from_str(&format!(
            "name = \"a\"\ngroup = \"g\"\nadmin = \"{}\"",
            testbed::free_addr()
        ))
        .expect("node");
        doc.insert("node".into(), node.into());
        let activation: toml::Table = toml::from_str(&format!(
            "mode = \"warm\"\nlock_file = {:?}",
            d.join("g.lock").display().to_string()
        ))
        .expect("activation");
        doc.insert("activation".into(), activation.into());
        let mut service = toml::Table::new();
        service.insert("command".into(), command.to_vec().into());
        service.insert("standby".into(), "cold".into());
        doc.insert("service".into(), service.into());
        std::fs::write(&path, toml::to_string(&doc).expect("toml")).expect("write");
        path.display().to_string()
    };
    let check = |cfg: &str| {
        let out = std::process::Command::new(EXE)
            .args(["check-config", cfg])
            .output()
            .expect("check-config");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let bad = server(&["--tls-cert", &missing, "--tls-key", &key]);
    let (code, err) = check(&agent(1, &bad));
    assert_eq!(
        code,
        Some(2),
        "check-config passed a missing certificate: {err}"
    );
    assert!(
        err.contains("--tls-cert") && err.contains("missing.pem"),
        "{err}"
    );
    let out = testbed::proc::understudy(
        EXE.as_ref(),
        &bad[1..].iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .output()
    .expect("price-server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "the price server started without its certificate: {err}"
    );
    assert!(err.contains("--tls-cert"), "{err}");

    // In the server's file, paths are relative to it (check-config runs from elsewhere).
    let file = d.join("px.toml");
    std::fs::write(
        &file,
        "tls_cert = \"cfg-server.pem\"\ntls_key = \"cfg-server.key\"\n",
    )
    .expect("write");
    let good = server(&["--config", &file.display().to_string()]);
    let (code, err) = check(&agent(2, &good));
    assert_eq!(code, Some(0), "{err}");
    std::fs::write(&file, "tls_cert = \"cfg-server.pem\"\n").expect("write");
    let (code, err) = check(&agent(3, &good));
    assert_eq!(code, Some(2), "a certificate without its key passed: {err}");
    assert!(err.contains("tls_key"), "{err}");
}
