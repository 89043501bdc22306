//! Who may move activity through the admin API, with real agents: the token of
//! `node.admin_token_file` (refused at start when the file is unsafe), reads that may need it
//! too, browsers refused without a token, and the CLI that sends it from a file or the
//! environment but never from its command line.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const S: Duration = Duration::from_secs(1);

/// One HTTP/1.1 request with extra headers (`Host` too, else the address) and an empty body;
/// (status, headers, body), status 0 when the agent cannot be reached.
fn request(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new(), String::new());
    };
    s.set_read_timeout(Some(20 * S)).expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_owned(), body.to_owned())
}

/// Writes `secret` into `dir/name` with `mode`.
fn token_file(dir: &Path, name: &str, secret: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, secret).expect("write token");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    p
}

/// Adds `lines` to node `name`'s `[node]` section (after its admin address).
fn node_keys(g: &mut Group, name: &str, lines: &str) {
    if !g.nodes.contains_key(name) {
        g.add(name);
    }
    let cfg = g.nodes[name].config.clone();
    let text = std::fs::read_to_string(&cfg).expect("config");
    let admin = format!("admin = {}\n", q(&g.admin(name)));
    let text = text.replacen(&admin, &format!("{admin}{lines}\n"), 1);
    std::fs::write(&cfg, text).expect("config");
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("not a JSON error: {body:?}"))
}

fn metric(addr: &str, token: Option<&str>, name: &str) -> u64 {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (_, _, body) = request("GET", addr, "/metrics", &headers);
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

/// A missing, empty or group/other-readable token file is refused at start with exit 2 and
/// a message saying which, by `check-config` and by the agent; nothing is started.
#[test]
fn an_unsafe_token_file_is_refused_at_start() {
    let mut g = Group::new("trylock", "cold");
    let dir = g.path.clone();
    let cases = [
        (dir.join("missing.token"), "No such file"),
        (token_file(&dir, "empty.token", "\n", 0o600), "is empty"),
        (
            token_file(&dir, "world.token", "s3cret\n", 0o644),
            "group and other",
        ),
        (
            token_file(&dir, "group.token", "s3cret\n", 0o640),
            "accessible by group",
        ),
        (
            token_file(&dir, "other.token", "s3cret\n", 0o604),
            "accessible by other",
        ),
        (
            token_file(&dir, "spaces.token", "two words\n", 0o600),
            "printable ASCII",
        ),
    ];
    for (i, (file, why)) in cases.iter().enumerate() {
        let name = format!("n{i}");
        node_keys(
            &mut g,
            &name,
            &format!("admin_token_file = {}", q(&file.display().to_string())),
        );
        let cfg = g.nodes[&name].config.display().to_string();
        let (code, _, err) = run_cli(&["check-config", &cfg]);
        assert_eq!(code, 2, "check-config accepted {file:?}: {err}");
        assert!(
            err.contains("node.admin_token_file") && err.contains(why),
            "check-config on {file:?} should say {why:?}: {err}"
        );
        let (code, _, err) = run_cli(&["agent", "--config", &cfg]);
        assert_eq!(code, 2, "the agent started with {file:?}: {err}");
        assert!(
            err.contains(why),
            "agent on {file:?} should say {why:?}: {err}"
        );
    }
    assert!(!g.lock.exists(), "a refused agent touched the group lock");
}

/// With a token, PUT hot and POST switchover without it or with a wrong one answer 401 with a
/// JSON error and change nothing; reads stay open; the CLI with `--token-file` or
/// `UNDERSTUDY_TOKEN` switches over; there is never a second active.
#[test]
fn with_a_token_only_its_holder_moves_activity() {
    let mut g = Group::new("trylock", "cold");
    let secret = "s3cret-9f2c4b7e";
    let tf = token_file(
        &g.path.clone(),
        "admin.token",
        &format!("{secret}\n"),
        0o600,
    );
    let key = format!("admin_token_file = {}", q(&tf.display().to_string()));
    node_keys(&mut g, "a", &key);
    node_keys(&mut g, "b", &key);
    let w = g.watch();
    g.start_a_hot_then_b();
    g.wait_ready("b", 5 * S);
    let (a, b) = (g.admin("a"), g.admin("b"));
    let epoch = g.epoch("a");

    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic czNjcmV0"),
        Some("Bearer "),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|v| ("Authorization", *v)).collect();
        let (code, head, body) = request("POST", &a, "/service/switchover", &headers);
        assert_eq!(code, 401, "switchover with {auth:?}: {body}");
        assert!(error_of(&body).contains("Authorization: Bearer"), "{body}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{head}"
        );
        let (code, _, body) = request("PUT", &b, "/service/activationmode/hot", &headers);
        assert_eq!(code, 401, "PUT hot with {auth:?}: {body}");
    }
    g.stays("a", "Hot", Duration::from_millis(300));
    assert_eq!(g.mode("b").as_deref(), Some("Warm"));
    assert_eq!(
        g.epoch("a"),
        epoch,
        "an unauthenticated call changed the epoch"
    );
    assert!(metric(&a, None, "understudy_admin_unauthorized_requests_total") >= 4);
    // Reads are open by default.
    assert!(get_json(&b, "/status").is_some());

    // The CLI refuses a token on its command line: there is no such flag.
    let (code, _, err) = run_cli(&["switchover", "--agent", &a, "--token", secret]);
    assert_ne!(code, 0, "a --token flag must not exist: {err}");

    let tfs = tf.display().to_string();
    let (code, out, err) = run_cli(&["switchover", "--agent", &a, "--token-file", &tfs]);
    assert_eq!(code, 0, "switchover with --token-file: {out}{err}");
    g.wait_mode("b", "Hot", 5 * S);
    g.wait_ready("a", 10 * S);

    let out = Command::new(BIN)
        .args(["switchover", "--agent", &b])
        .env("UNDERSTUDY_TOKEN", secret)
        .stdin(Stdio::null())
        .output()
        .expect("run the CLI");
    assert!(
        out.status.success(),
        "switchover with UNDERSTUDY_TOKEN: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    g.wait_mode("a", "Hot", 5 * S);
    w.finish();
}

/// With `admin_read_requires_token`, reads need the token too, except `/healthz`; the demo
/// service, given the token by its agent, still reads its epoch and becomes active.
#[test]
fn reads_can_require_the_token() {
    let mut g = Group::new("trylock", "cold");
    let secret = "read-s3cret";
    let tf = token_file(&g.path.clone(), "admin.token", secret, 0o600);
    node_keys(
        &mut g,
        "a",
        &format!(
            "admin_token_file = {}\nadmin_read_requires_token = true",
            q(&tf.display().to_string())
        ),
    );
    let node = &g.nodes["a"];
    let out = std::fs::File::create(&node.out).expect("out");
    let child = Command::new(BIN)
        .args(["agent", "--config", &node.config.display().to_string()])
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("spawn agent");
    g.nodes.get_mut("a").expect("a").child = Some(child);
    let a = g.admin("a");
    let bearer = format!("Bearer {secret}");
    let auth = [("Authorization", bearer.as_str())];
    let hot = wait_until(10 * S, || {
        let (code, _, body) = request("GET", &a, "/status", &auth);
        code == 200 && body.contains("\"mode\":\"Hot\"")
    });
    assert!(hot, "a never reported Hot to an authenticated reader");
    for path in [
        "/status",
        "/group",
        "/events",
        "/metrics",
        "/service/activationmode",
    ] {
        let (code, _, body) = request("GET", &a, path, &[]);
        assert_eq!(code, 401, "GET {path} without the token: {body}");
    }
    let (code, _, _) = request("GET", &a, "/healthz", &[]);
    assert_eq!(code, 200, "/healthz stays open for monitors");
    // The service learned its epoch from GET /status, which needed the token.
    let (_, _, body) = request("GET", &a, "/status", &auth);
    let epoch = serde_json::from_str::<Value>(&body).expect("status")["epoch"]
        .as_u64()
        .expect("epoch");
    g.wait_service_active("a", epoch);
}

/// Without a token, a request from a web page (it carries Origin or Sec-Fetch-Site) cannot move
/// activity — a plain-text cross-site POST used to switch a group over — while scripts and the
/// CLI (which sends X-Understudy: 1) still can, and the contract's empty-body PUT keeps working.
#[test]
fn without_a_token_browsers_cannot_move_activity() {
    let mut g = Group::new("trylock", "cold");
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    g.wait_ready("b", 5 * S);
    let (a, b) = (g.admin("a"), g.admin("b"));
    let page = [
        ("Origin", "http://evil.example"),
        ("Content-Type", "text/plain"),
    ];
    let cross = [
        ("Sec-Fetch-Site", "cross-site"),
        ("X-Understudy", "1"),
        ("Content-Type", "application/json"),
    ];
    let rebound = [
        ("Origin", "http://evil.example:1234"),
        ("Sec-Fetch-Site", "same-origin"),
        ("X-Understudy", "1"),
        ("Host", "evil.example:1234"),
    ];
    for headers in [&page[..], &cross[..], &rebound[..]] {
        let (code, _, body) = request("POST", &a, "/service/switchover", headers);
        assert_eq!(code, 403, "switchover from a page with {headers:?}: {body}");
        let (code, _, body) = request("PUT", &b, "/service/activationmode/hot", headers);
        assert_eq!(code, 403, "PUT hot from a page with {headers:?}: {body}");
    }
    g.stays("a", "Hot", Duration::from_millis(300));
    assert_eq!(g.mode("b").as_deref(), Some("Warm"));

    // A script's empty-body PUT, without any header, reaches the engine (refused there: a is
    // active), as DESIGN.md's contract promises.
    let (code, _, body) = request("PUT", &b, "/service/activationmode/hot", &[]);
    assert_eq!(code, 409, "PUT hot from a script while a is Hot: {body}");
    // The CLI switches over.
    let (code, out, err) = run_cli(&["switchover", "--agent", &a]);
    assert_eq!(code, 0, "CLI switchover: {out}{err}");
    g.wait_mode("b", "Hot", 5 * S);
    w.finish();
}

/// `check-config` warns when the admin API listens beyond loopback without a token.
#[test]
fn check_config_warns_about_an_exposed_admin_api_without_a_token() {
    let mut g = Group::new("trylock", "cold");
    g.add("a");
    let cfg = g.nodes["a"].config.clone();
    let text = std::fs::read_to_string(&cfg).expect("config");
    let exposed = text.replacen("admin = \"127.0.0.1:", "admin = \"0.0.0.0:", 1);
    std::fs::write(&cfg, &exposed).expect("config");
    let c = cfg.display().to_string();
    let (code, _, err) = run_cli(&["check-config", &c]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning") && err.contains("not a loopback address"),
        "no warning for an exposed admin API: {err}"
    );
    let tf = token_file(&g.path.clone(), "admin.token", "s3cret", 0o600);
    let with_token = exposed.replacen(
        "admin = \"0.0.0.0:",
        &format!(
            "admin_token_file = {}\nadmin = \"0.0.0.0:",
            q(&tf.display().to_string())
        ),
        1,
    );
    std::fs::write(&cfg, with_token).expect("config");
    let (code, _, err) = run_cli(&["check-config", &c]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("warning"),
        "a warning despite the token: {err}"
    );
}
