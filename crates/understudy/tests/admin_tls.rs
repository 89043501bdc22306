//! The admin API over TLS (`node.admin_tls_cert`/`_key`) and with client certificates
//! (`node.admin_client_ca`), with certificates made here (rcgen), against real agents and the
//! real CLI: the CLI reaches the agent with `--ca` (and `--cert`); without the CA, or with a
//! certificate from another CA, it is refused; plain HTTP is refused from another address while
//! the node's own service keeps talking plain HTTP to its agent (it acknowledges its epoch).
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;
mod pki;

use std::time::Duration;

use common::*;
use pki::{pki, Pki};
/// Adds `node.*` keys (TOML lines) to node `name`'s configuration.
fn add_node_keys(g: &Group, name: &str, lines: &str) {
    let cfg = &g.nodes[name].config;
    let mut doc: toml::Table = std::fs::read_to_string(cfg).unwrap().parse().unwrap();
    let extra: toml::Table = lines.parse().expect("node keys");
    doc.get_mut("node")
        .and_then(|n| n.as_table_mut())
        .expect("a [node] table")
        .extend(extra);
    std::fs::write(cfg, toml::to_string(&doc).unwrap()).unwrap();
}

fn tls_keys(p: &Pki) -> String {
    format!(
        "admin_tls_cert = {}\nadmin_tls_key = {}",
        q(&p.server_cert.display().to_string()),
        q(&p.server_key.display().to_string())
    )
}

/// Plain HTTP GET /healthz from `from` (an address of this host) to `to`; the status code, or
/// None when the connection was closed without an answer.
fn plain_get_from(from: &str, to: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut s = sock.connect(to.parse().unwrap()).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).to_string()
    });
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok())
}

#[test]
fn the_admin_api_speaks_tls_to_the_cli_and_plain_http_only_to_its_own_host() {
    let mut g = Group::new("trylock", "hot");
    let p = pki(&g.path, "one");
    g.add("a");
    add_node_keys(&g, "a", &tls_keys(&p));
    g.start("a");
    let admin = g.admin("a");
    let ca = p.ca.display().to_string();

    // The CLI, with the CA that signed the agent's certificate.
    let (code, out, err) = run_cli(&["status", "--agent", &admin, "--ca", &ca, "--json"]);
    assert_eq!(code, 0, "status over TLS: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"]["node"], "a", "{out}");
    let url = format!("https://{admin}");
    let (code, _, _) = run_cli(&["status", "--agent", &url, "--ca", &ca]);
    assert_eq!(code, 0);

    // Without the CA the agent's certificate is not trusted.
    let (code, out, err) = run_cli(&["status", "--agent", &url]);
    assert_ne!(code, 0, "status without the CA: {out}");
    assert!(err.contains("cannot reach"), "{err}");

    // The service talks plain HTTP to its agent from this host: it acknowledged its epoch.
    g.wait_mode("a", "Hot", Duration::from_secs(5));
    let acked = wait_until(Duration::from_secs(10), || {
        let (_, out, _) = run_cli(&["events", "--agent", &admin, "--ca", &ca, "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| {
            v["takeovers"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["service_acked_ms"].is_number()))
        })
    });
    assert!(acked, "the service never acknowledged through plain HTTP");

    // `top` reaches the TLS agent with the same flags (its --json refresh: the screen's data);
    // without the CA it is refused.
    let (code, out, err) = run_cli(&["top", "--agent", &admin, "--ca", &ca, "--json"]);
    assert_eq!(code, 0, "top over TLS: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["active"], "a", "{out}");
    let (code, out, _) = run_cli(&["top", "--agent", &url, "--json"]);
    assert_ne!(code, 0, "top without the CA: {out}");

    // Plain HTTP from the listener's own address (the node's service) is served; from any
    // other address — 127.0.0.2 stands for another machine — it is closed unanswered.
    assert_eq!(plain_get_from("127.0.0.1", &admin), Some(200));
    assert_eq!(plain_get_from("127.0.0.2", &admin), None);
    g.check_log();
}

#[test]
fn with_a_client_ca_only_a_certificate_it_signed_gets_in() {
    let mut g = Group::new("trylock", "hot");
    let p = pki(&g.path, "one");
    let other = pki(&g.path, "two");
    g.add("a");
    add_node_keys(
        &g,
        "a",
        &format!(
            "{}\nadmin_client_ca = {}",
            tls_keys(&p),
            q(&p.ca.display().to_string())
        ),
    );
    g.start("a");
    g.wait_mode("a", "Hot", Duration::from_secs(5));
    let admin = g.admin("a");
    let ca = p.ca.display().to_string();
    let mine = p.client.display().to_string();
    let theirs = other.client.display().to_string();

    let (code, out, err) = run_cli(&["status", "--agent", &admin, "--ca", &ca, "--cert", &mine]);
    assert_eq!(code, 0, "with a client certificate: {out}{err}");
    let (code, out, _) = run_cli(&["status", "--agent", &admin, "--ca", &ca]);
    assert_ne!(code, 0, "without a client certificate: {out}");
    let (code, out, _) = run_cli(&["status", "--agent", &admin, "--ca", &ca, "--cert", &theirs]);
    assert_ne!(code, 0, "with another CA's certificate: {out}");
    // A mutating call with the certificate works (no token configured: the CLI's marker).
    let (code, out, err) = run_cli(&["activate", "--agent", &admin, "--ca", &ca, "--cert", &mine]);
    assert_eq!(code, 0, "activate over mutual TLS: {out}{err}");
}

#[test]
fn tls_settings_that_cannot_work_are_refused_at_start_naming_the_key() {
    let mut g = Group::new("trylock", "hot");
    let p = pki(&g.path, "one");
    let other = pki(&g.path, "two");
    let garbage = g.path.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let cases = [
        (
            format!(
                "admin_tls_cert = {}",
                q(&p.server_cert.display().to_string())
            ),
            "node.admin_tls_key",
        ),
        (
            format!(
                "admin_tls_cert = {}\nadmin_tls_key = {}",
                q(&garbage.display().to_string()),
                q(&p.server_key.display().to_string())
            ),
            "node.admin_tls_cert",
        ),
        (
            format!(
                "admin_tls_cert = {}\nadmin_tls_key = {}",
                q(&p.server_cert.display().to_string()),
                q(&other.server_key.display().to_string())
            ),
            "node.admin_tls_key",
        ),
        (
            format!("admin_client_ca = {}", q(&p.ca.display().to_string())),
            "node.admin_client_ca",
        ),
    ];
    for (i, (lines, key)) in cases.iter().enumerate() {
        let name = format!("n{i}");
        g.add(&name);
        add_node_keys(&g, &name, lines);
        let cfg = g.nodes[&name].config.display().to_string();
        let (code, out, err) = run_cli(&["check-config", &cfg]);
        assert_eq!(code, 2, "{lines}: {out}{err}");
        assert!(err.contains(key), "{lines}: expected {key} in {err}");
    }
}
