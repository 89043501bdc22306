//! The control plane (document 000) as a person uses it, with real processes: `understudy serve`,
//! the agents its built-in host starts, the demo service they protect, and `understudy ctl`. The
//! whole lifecycle, every refusal, a kill -9 of the active's agent with the failure event stored
//! and surviving a restart of the control plane, and bad input of every kind. Every fault phase
//! runs the two-Hot watcher and the overlap checker over the services' own log.

mod common;
mod plane_common;
mod skip;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{alive, check_overlaps, free_addr, run_cli, wait_until, Proc, Watcher, BIN};
use plane_common::{agent_pid, agents_of, procs_with_marker, service_pid, Plane};
use serde_json::{json, Value};

#[test]
fn the_whole_lifecycle_with_a_kill_and_a_restart_of_the_plane() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("service.log");
    let addr = free_addr();
    let mut plane = Plane::start(&data, &addr);
    let log_s = log.display().to_string();

    // Add a server: a plain server first.
    let v = plane.ctl_ok(&[
        "add-server",
        "px",
        "--",
        BIN,
        "demo-service",
        "--log",
        &log_s,
    ]);
    assert_eq!(v["state"], "stopped");
    let (code, v) = plane.ctl(&["add-server", "px", "--", BIN, "demo-service"]);
    assert_eq!(code, 1, "a second server of the same name: {v}");

    // Failover validated in full: each wrong field named, nothing stored.
    let (code, v) = plane.send(
        "PUT",
        "/api/servers/px/failover",
        json!({"standby": "hot", "standby_hosts": ["local", "mars"], "preferred": "px-9"}),
    );
    assert_eq!(code, 422, "{v}");
    let fields: Vec<&str> = v["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| f["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"preferred") && fields.contains(&"standby_hosts[1]"),
        "{v}"
    );
    assert!(
        plane.server("px")["failover"].is_null(),
        "a refused failover was stored"
    );

    let (code, v) = plane.ctl(&[
        "add-failover",
        "px",
        "--standby",
        "hot",
        "--standby-host",
        "local",
        "--standby-host",
        "local",
        "--preferred",
        "px-2",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["failover"]["preferred"], "px-2");

    // Start failover only from a stopped server.
    let (code, _) = plane.ctl(&["start-server", "px"]);
    assert_eq!(code, 0);
    let (code, v) = plane.ctl(&["start-failover", "px"]);
    assert_eq!(code, 1, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or("")
            .contains("synchronized at boot-up"),
        "{v}"
    );
    assert!(
        v["hint"].as_str().unwrap_or("").contains("stop the server"),
        "{v}"
    );
    let (code, _) = plane.ctl(&["stop-server", "px"]);
    assert_eq!(code, 0);
    let v = plane.ctl_ok(&["start-failover", "px"]);
    assert_eq!(v["state"], "protected");
    assert_eq!(
        plane.active("px").as_deref(),
        Some("px-2"),
        "the preferred node is active"
    );
    assert!(
        wait_until(Duration::from_secs(20), || plane
            .nodes("px")
            .iter()
            .filter(|n| n["ready"] == true && n["mode"] == "Warm")
            .count()
            == 2),
        "both standbys ready: {:?}",
        plane.nodes("px")
    );

    // kill -9 of the active's agent: a standby takes over, the failure event is stored, and the
    // killed node is started again by the host and rejoins as a standby.
    let watcher = Watcher::start(plane.node_addrs("px"));
    let before = plane.server("px");
    let act = before["failover"]["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["mode"] == "Hot"))
        .cloned()
        .expect("an active node");
    let old_epoch = act["epoch"].as_u64().unwrap_or(0);
    // This test's own agent: another test of this binary runs a plane with a node px-2 too,
    // and a search of every process's command line for `nodes/px-2.toml` killed that one
    // (both tests failed at once in the suite, 3 December).
    let agent_pid = agent_pid(&data, "px-2").expect("the agent of px-2");
    common::signal(agent_pid, nix::sys::signal::Signal::SIGKILL);
    // Generous: a liveness bound, not a speed claim (the benchmarks measure speed).
    assert!(
        wait_until(Duration::from_secs(10), || plane
            .active("px")
            .is_some_and(|a| a != "px-2")),
        "no takeover after kill -9 of the active's agent"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, ev) = plane.get("/api/servers/px/events");
            ev["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|t| t["epoch"].as_u64() > Some(old_epoch)))
        }),
        "the failure event was not stored"
    );
    assert!(
        wait_until(Duration::from_secs(20), || plane.nodes("px").iter().any(
            |n| n["name"] == "px-2" && n["mode"] == "Warm" && n["ready"] == true
        )),
        "the killed node did not come back as a ready standby: {:?}",
        plane.nodes("px")
    );
    let rep = watcher.finish();
    assert!(rep.sweeps > 10);
    check_overlaps(&log);

    // Switchover by hand to a chosen standby (both standbys are ready: the choice matters).
    let watcher = Watcher::start(plane.node_addrs("px"));
    assert!(
        wait_until(Duration::from_secs(20), || plane
            .nodes("px")
            .iter()
            .filter(|n| n["mode"] == "Warm" && n["ready"] == true)
            .count()
            == 2),
        "both standbys ready before the switchover: {:?}",
        plane.nodes("px")
    );
    let now_active = plane.active("px").expect("active");
    for target in ["px-1", "px-2", "px-3"]
        .into_iter()
        .filter(|t| *t != now_active)
    {
        let v = plane.ctl_ok(&["switchover", "px", "--to", target]);
        assert_eq!(v["to"], target, "{v}");
        assert!(
            wait_until(Duration::from_secs(10), || plane.active("px").as_deref()
                == Some(target)),
            "switchover to {target} did not happen: {:?}",
            plane.nodes("px")
        );
        assert!(
            wait_until(Duration::from_secs(20), || plane
                .nodes("px")
                .iter()
                .filter(|n| n["mode"] == "Warm" && n["ready"] == true)
                .count()
                == 2),
            "standbys ready again after the switchover: {:?}",
            plane.nodes("px")
        );
    }
    watcher.finish();
    let ivs = check_overlaps(&log);
    // The first active, the takeover after the kill, the switchover: the checker saw them all.
    assert!(
        ivs.len() >= 3,
        "the service log shows {} active intervals: {ivs:?}",
        ivs.len()
    );

    // Stop failover: standbys discontinued, the active's service keeps running.
    let active_node = plane
        .nodes("px")
        .into_iter()
        .find(|n| n["mode"] == "Hot")
        .expect("active");
    let svc = service_pid(&active_node).expect("the active service's pid");
    let standby_svcs: Vec<u32> = plane
        .nodes("px")
        .iter()
        .filter(|n| n["mode"] != "Hot")
        .filter_map(service_pid)
        .collect();
    let (code, v) = plane.ctl(&["stop-failover", "px"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["state"], "running");
    assert!(alive(svc), "stop failover killed the active's service");
    // A true pause: the same process is now the plain server, and no agent is left (the active's
    // agent handed its service over and exited).
    assert_eq!(
        v["process"]["pid"].as_u64(),
        Some(u64::from(svc)),
        "the server's process is not the released service: {v}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || agents_of(&data, "px")
            .is_empty()),
        "agents of px still run after stop failover: {:?}",
        agents_of(&data, "px")
    );
    assert!(
        !wait_until(Duration::from_secs(1), || !alive(svc)),
        "the released service died after its agent left"
    );
    assert!(
        wait_until(Duration::from_secs(10), || standby_svcs
            .iter()
            .all(|p| !alive(*p))),
        "standby services still run after stop failover"
    );
    // Restarting failover needs a stopped server first.
    let (code, _) = plane.ctl(&["start-failover", "px"]);
    assert_eq!(code, 1);
    let (code, _) = plane.ctl(&["delete-failover", "px"]);
    assert_eq!(
        code, 0,
        "delete failover while the plain server runs is allowed"
    );
    assert!(plane.server("px")["failover"].is_null());
    let (code, _) = plane.ctl(&["stop-server", "px"]);
    assert_eq!(code, 0);
    assert!(
        wait_until(Duration::from_secs(15), || !alive(svc)),
        "the service still runs after stop server"
    );

    // The failure events survive a restart of the control plane.
    let (_, before) = plane.get("/api/servers/px/events");
    plane.stop();
    let plane2 = Plane::start(&data, &addr);
    let (_, after) = plane2.get("/api/servers/px/events");
    assert_eq!(before["events"], after["events"]);
    assert!(!after["events"].as_array().expect("events").is_empty());
    let (code, csv, _) = run_cli(&["ctl", "--control", &addr, "events", "px", "--format", "csv"]);
    assert_eq!(code, 0);
    assert!(
        csv.starts_with("node,epoch,detected_unix_ms,cause"),
        "{csv}"
    );

    let (code, _) = plane2.ctl(&["delete-server", "px"]);
    assert_eq!(code, 0);
    let (code, _) = plane2.get("/api/servers/px");
    assert_eq!(code, 404);
    drop(plane2);
    drop(plane);
}

#[test]
fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plane = Plane::start(&dir.path().join("data"), &free_addr());
    let good = json!({"name": "gw", "service": {"command": ["sleep", "1000"]}});
    let (code, _) = plane.send("POST", "/api/servers", good.clone());
    assert_eq!(code, 201);
    let snapshot = plane.get("/api/servers").1;

    // (what, method, path, body, expected status, a word the answer must mention)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        Vec<u8>,
        u16,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "unknown field",
            "POST",
            "/api/servers",
            json!({"name": "x", "colour": "blue", "service": {"command": ["sleep"]}})
                .to_string()
                .into_bytes(),
            422,
            "colour",
        ),
        (
            "wrong type",
            "POST",
            "/api/servers",
            json!({"name": 5, "service": {"command": ["sleep"]}})
                .to_string()
                .into_bytes(),
            422,
            "name",
        ),
        (
            "missing field",
            "POST",
            "/api/servers",
            json!({"name": "x"}).to_string().into_bytes(),
            422,
            "service",
        ),
        (
            "not JSON",
            "POST",
            "/api/servers",
            b"{not json".to_vec(),
            422,
            "(body)",
        ),
        (
            "bad name",
            "POST",
            "/api/servers",
            json!({"name": "../../etc", "service": {"command": ["sleep"]}})
                .to_string()
                .into_bytes(),
            422,
            "name",
        ),
        (
            "missing program",
            "POST",
            "/api/servers",
            json!({"name": "y", "service": {"command": ["/no/such/program"]}})
                .to_string()
                .into_bytes(),
            422,
            "service.command",
        ),
        (
            "huge body",
            "POST",
            "/api/servers",
            vec![b' '; 200_000],
            413,
            "",
        ),
        (
            "unknown server",
            "POST",
            "/api/servers/nope/start",
            vec![],
            404,
            "nope",
        ),
        (
            "unknown path",
            "GET",
            "/api/no-such-thing",
            vec![],
            404,
            "openapi",
        ),
        (
            "bad standby",
            "PUT",
            "/api/servers/gw/failover",
            json!({"standby": "tepid", "standby_hosts": ["local"]})
                .to_string()
                .into_bytes(),
            422,
            "standby",
        ),
        (
            "empty standbys",
            "PUT",
            "/api/servers/gw/failover",
            json!({"standby": "hot", "standby_hosts": []})
                .to_string()
                .into_bytes(),
            422,
            "standby_hosts",
        ),
        (
            "too many standbys",
            "PUT",
            "/api/servers/gw/failover",
            json!({"standby": "hot", "standby_hosts": vec!["local"; 20]})
                .to_string()
                .into_bytes(),
            422,
            "standby_hosts",
        ),
        (
            "switchover without failover",
            "POST",
            "/api/servers/gw/failover/switchover",
            vec![],
            409,
            "",
        ),
        (
            "bad events query",
            "GET",
            "/api/servers/gw/events?limit=x",
            vec![],
            400,
            "",
        ),
    ];
    for (what, method, path, body, want, mention) in cases {
        let (code, v) = plane.req(method, path, "application/json", &body);
        assert_eq!(code, want, "{what}: {v}");
        if code != 413 {
            assert!(v["error"].is_string(), "{what}: not a JSON error: {v}");
        }
        assert!(
            v.to_string().contains(mention),
            "{what}: does not mention {mention:?}: {v}"
        );
    }
    let (code, _) = plane.req(
        "POST",
        "/api/servers",
        "text/plain",
        good.to_string().as_bytes(),
    );
    assert_eq!(code, 415);
    assert_eq!(
        plane.get("/api/servers").1,
        snapshot,
        "a refused request changed something"
    );
}

#[test]
fn with_a_token_mutating_calls_need_it_and_cross_site_calls_are_refused_without() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let tf = dir.path().join("token");
    std::fs::write(&tf, "s3cret-token\n").expect("write token");
    std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let addr = free_addr();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &addr, "--data"])
        .arg(dir.path().join("data"))
        .arg("--token-file")
        .arg(&tf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let p = Plane {
        child: None,
        addr: addr.clone(),
        data: dir.path().join("data"),
    };
    assert!(wait_until(Duration::from_secs(15), || p
        .get("/api/health")
        .0
        == 200));
    let body = json!({"name": "gw", "service": {"command": ["sleep", "1"]}});
    let (code, _) = p.send("POST", "/api/servers", body.clone());
    assert_eq!(code, 401);
    assert_eq!(p.get("/api/servers").1["servers"], json!([]));
    let (code, out, err) = run_cli(&[
        "ctl",
        "--control",
        &addr,
        "--token-file",
        tf.to_str().unwrap_or(""),
        "add-server",
        "gw",
        "--",
        "sleep",
        "1",
    ]);
    assert_eq!(code, 0, "{out} {err}");
    // Reads stay public by default.
    assert_eq!(p.get("/api/servers").0, 200);
    let page = p.req("GET", "/", "text/html", b"").1;
    assert!(
        !page.to_string().contains("s3cret"),
        "the token leaked into the page"
    );
    let _ = child.kill();
    let _ = child.wait();

    // No token: a browser's cross-site request is refused, the CLI's is not.
    let addr2 = free_addr();
    let p2 = Plane::start(&dir.path().join("data2"), &addr2);
    let mut s = TcpStream::connect(&addr2).expect("connect");
    let b = body.to_string();
    let req = format!(
        "POST /api/servers HTTP/1.1\r\nHost: {addr2}\r\nOrigin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    );
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    assert!(buf.starts_with("HTTP/1.1 403"), "{buf}");
    assert_eq!(p2.get("/api/servers").1["servers"], json!([]));
    assert_eq!(p2.send("POST", "/api/servers", body).0, 201);
}

#[test]
fn every_operation_of_the_openapi_document_exists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plane = Plane::start(&dir.path().join("data"), &free_addr());
    let (code, spec) = plane.get("/openapi.json");
    assert_eq!(code, 200);
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 10);
    for (path, ops) in paths {
        for method in ops.as_object().expect("ops").keys() {
            if path == "/api/stream" {
                continue; // an endless stream; covered by the dashboard test
            }
            let concrete = path.replace("{name}", "no-such-server");
            let (code, v) = plane.req(&method.to_uppercase(), &concrete, "application/json", b"{}");
            // The route exists: it may refuse the call (404 for the unknown server, 409, 422),
            // but never with the router's "no such endpoint" or 405.
            let unknown_endpoint = v["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("no such endpoint"));
            assert!(
                code != 405 && !unknown_endpoint,
                "{method} {path}: {code} {v}"
            );
        }
    }
}

/// A webhook receiver: answers 500 to the first POST (so the plane must retry) and 200 after,
/// and hands every body it got to the test.
fn webhook() -> (String, std::sync::mpsc::Receiver<Value>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (i, conn) in l.incoming().enumerate() {
            let Ok(mut s) = conn else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            let body = loop {
                let Ok(n) = s.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if rest.len() >= len {
                        break Some(rest[..len].to_string());
                    }
                }
            };
            let status = if i == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = s.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            if i > 0 {
                if let Some(b) = body {
                    let _ = tx.send(serde_json::from_str(&b).unwrap_or(Value::String(b)));
                }
            }
        }
    });
    (format!("http://{addr}/hook"), rx)
}

#[test]
fn each_failure_event_is_pushed_to_the_webhook_with_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (url, got) = webhook();
    let plane = Plane::start_with(&data, &free_addr(), &["--webhook", &url]);
    assert_eq!(
        plane
            .ctl(&["add-server", "wh", "--", BIN, "demo-service"])
            .0,
        0
    );
    assert_eq!(
        plane
            .ctl(&[
                "add-failover",
                "wh",
                "--standby",
                "cold",
                "--standby-host",
                "local"
            ])
            .0,
        0
    );
    assert_eq!(plane.ctl(&["start-failover", "wh"]).0, 0);
    // The first activation is an event too: it reaches the webhook after one refused attempt.
    let ev = got
        .recv_timeout(Duration::from_secs(20))
        .expect("no failure event reached the webhook (retry after a 500)");
    assert_eq!(ev["server"], "wh");
    assert!(ev["epoch"].as_u64().is_some_and(|e| e >= 1), "{ev}");
    assert!(ev["node"].is_string() && ev["cause"].is_string(), "{ev}");
}

#[test]
fn export_and_import_the_whole_configuration_with_a_diff_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plane = Plane::start(&dir.path().join("data"), &free_addr());
    assert_eq!(plane.ctl(&["add-server", "gw", "--", "sleep", "1000"]).0, 0);
    assert_eq!(
        plane
            .ctl(&[
                "add-failover",
                "gw",
                "--standby",
                "warm",
                "--standby-host",
                "local"
            ])
            .0,
        0
    );
    let cfg = dir.path().join("cfg");
    let cfg_s = cfg.display().to_string();
    let (code, out, err) = run_cli(&["ctl", "--control", &plane.addr, "export", &cfg_s]);
    assert_eq!(code, 0, "{out} {err}");
    let gw = cfg.join("gw.toml");
    let text = std::fs::read_to_string(&gw).expect("gw.toml");
    assert!(text.contains("standby = \"warm\""), "{text}");

    // Edit as one would in a Git repository: change the standby type, add a server.
    std::fs::write(&gw, text.replace("standby = \"warm\"", "standby = \"hot\"")).expect("edit");
    std::fs::write(
        cfg.join("px.toml"),
        "[server]\nname = \"px\"\n[server.service]\ncommand = [\"sleep\", \"5\"]\n",
    )
    .expect("new file");
    let before = plane.get("/api/config").1;
    let (code, out, _) = run_cli(&["ctl", "--control", &plane.addr, "import", &cfg_s]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("+ px (new)") && out.contains("failover.standby: warm → hot"),
        "{out}"
    );
    assert!(out.contains("--apply"), "{out}");
    assert_eq!(
        plane.get("/api/config").1,
        before,
        "an import without --apply changed something"
    );

    // A bad file: nothing changes, the file and the key are named.
    std::fs::write(
        cfg.join("bad.toml"),
        "[server]\nname = \"bad\"\ncolour = 1\n",
    )
    .expect("bad");
    let (code, _, err) = run_cli(&["ctl", "--control", &plane.addr, "import", &cfg_s, "--apply"]);
    assert_ne!(code, 0);
    assert!(err.contains("bad.toml") && err.contains("colour"), "{err}");
    std::fs::remove_file(cfg.join("bad.toml")).expect("rm");

    // A running server's configuration is never swapped under it.
    assert_eq!(plane.ctl(&["start-server", "gw"]).0, 0);
    let (code, _, err) = run_cli(&["ctl", "--control", &plane.addr, "import", &cfg_s, "--apply"]);
    assert_eq!(code, 1);
    assert!(err.contains("gw") && err.contains("running"), "{err}");
    assert_eq!(plane.get("/api/config").1, before);
    assert_eq!(plane.ctl(&["stop-server", "gw"]).0, 0);

    let (code, out, err) = run_cli(&["ctl", "--control", &plane.addr, "import", &cfg_s, "--apply"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("applied"), "{out}");
    let after = plane.get("/api/config").1;
    let servers = after["servers"].as_array().expect("servers");
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["failover"]["standby"], "hot");

    // A shared fragment, written once and included: merged before validation, kept as a file.
    std::fs::create_dir_all(cfg.join("shared")).expect("mkdir");
    std::fs::write(
        cfg.join("shared/upstream.toml"),
        "[server.service.env]\nUPSTREAM = \"10.0.0.5:9100\"\n",
    )
    .expect("fragment");
    let px = "include = [\"shared/upstream.toml\"]\n[server]\nname = \"px\"\n[server.service]\ncommand = [\"sleep\", \"5\"]\n";
    std::fs::write(cfg.join("px.toml"), px).expect("px.toml");
    let (code, out, err) = run_cli(&["ctl", "--control", &plane.addr, "import", &cfg_s, "--apply"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("service.env changed"), "{out}");
    assert_eq!(
        plane.server("px")["service"]["env"]["UPSTREAM"],
        "10.0.0.5:9100"
    );
    let again = dir.path().join("again");
    let again_s = again.display().to_string();
    let (code, out, err) = run_cli(&["ctl", "--control", &plane.addr, "export", &again_s]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(
        std::fs::read_to_string(again.join("px.toml")).expect("px.toml"),
        px,
        "the including file is not written back as it was"
    );
    assert_eq!(
        std::fs::read_to_string(again.join("shared/upstream.toml")).expect("fragment"),
        std::fs::read_to_string(cfg.join("shared/upstream.toml")).expect("fragment")
    );
    // A wrong key in a fragment: the fragment and the key are named, nothing changes.
    std::fs::write(
        cfg.join("shared/upstream.toml"),
        "[server.service]\ncolour = 1\n",
    )
    .expect("bad fragment");
    let (code, _, err) = run_cli(&["ctl", "--control", &plane.addr, "import", &cfg_s, "--apply"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("shared/upstream.toml") && err.contains("colour"),
        "{err}"
    );
}

/// Document 002's rule, central configuration: a node whose configuration changed while it was
/// Warm applies it before it can become ready, never silently at takeover. An import while
/// failover runs restarts each standby's agent (and service) with the new configuration; the
/// active keeps its own until a switchover makes it a standby, then it is restarted too.
#[test]
fn a_changed_configuration_reaches_standbys_first_and_the_active_after_a_switchover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("service.log");
    let log_s = log.display().to_string();
    let plane = Plane::start(&data, &free_addr());
    plane.ctl_ok(&[
        "add-server",
        "px",
        "--",
        BIN,
        "demo-service",
        "--log",
        &log_s,
    ]);
    plane.ctl_ok(&[
        "add-failover",
        "px",
        "--standby",
        "hot",
        "--standby-host",
        "local",
    ]);
    plane.ctl_ok(&["start-failover", "px"]);
    let node = |name: &str| {
        plane
            .nodes("px")
            .into_iter()
            .find(|n| n["name"] == name)
            .unwrap_or(Value::Null)
    };
    assert!(
        wait_until(Duration::from_secs(20), || node("px-1")["mode"] == "Hot"
            && node("px-2")["ready"] == true),
        "the group did not come up: {:?}",
        plane.nodes("px")
    );
    let watcher = Watcher::start(plane.node_addrs("px"));
    let a1 = agent_pid(&data, "px-1").expect("agent of px-1");
    let a2 = agent_pid(&data, "px-2").expect("agent of px-2");

    // A move of a node is refused while failover runs; nothing changes.
    let (_, mut cfg) = plane.get("/api/config");
    cfg["servers"][0]["failover"]["standby_hosts"] = json!(["local", "local"]);
    let (code, v) = plane.send(
        "POST",
        "/api/config/import",
        json!({"servers": cfg["servers"], "apply": true}),
    );
    assert_eq!(code, 422, "{v}");
    assert!(v.to_string().contains("moves its nodes"), "{v}");

    // A new setting for every node of the group.
    let (_, mut cfg) = plane.get("/api/config");
    cfg["servers"][0]["server"]["service"]["env"] = json!({"COLOUR": "blue"});
    let (code, v) = plane.send(
        "POST",
        "/api/config/import",
        json!({"servers": cfg["servers"], "apply": true}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["report"]["rolling"], json!(["px"]), "{v}");

    // The standby is started again with it, and is ready only once it runs it.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let n = node("px-2");
            agent_pid(&data, "px-2").is_some_and(|p| p != a2)
                && n["config"] == "applied"
                && n["ready"] == true
                && service_pid(&n).is_some()
        }),
        "the standby was not restarted with the new configuration: {}",
        node("px-2")
    );
    let s2 = service_pid(&node("px-2")).expect("px-2's service");
    assert_eq!(
        common::environ(s2).get("COLOUR").map(String::as_str),
        Some("blue")
    );
    // The active keeps running as it was: same agent, same service, its configuration pending.
    assert_eq!(
        agent_pid(&data, "px-1"),
        Some(a1),
        "the active's agent was restarted"
    );
    let n1 = node("px-1");
    assert_eq!(n1["mode"], "Hot");
    assert_eq!(n1["config"], "pending", "{n1}");
    let s1 = service_pid(&n1).expect("px-1's service");
    assert!(!common::environ(s1).contains_key("COLOUR"));

    // After a switchover the former active is a standby, and gets the new configuration too.
    plane.ctl_ok(&["switchover", "px", "--to", "px-2"]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let n = node("px-1");
            agent_pid(&data, "px-1").is_some_and(|p| p != a1)
                && n["config"] == "applied"
                && n["ready"] == true
                && service_pid(&n).is_some()
        }),
        "the former active was not restarted with the new configuration: {}",
        node("px-1")
    );
    assert_eq!(node("px-2")["mode"], "Hot");
    let s1 = service_pid(&node("px-1")).expect("px-1's service");
    assert_eq!(
        common::environ(s1).get("COLOUR").map(String::as_str),
        Some("blue")
    );
    watcher.finish();
    check_overlaps(&log);
    assert_eq!(plane.ctl(&["stop-failover", "px"]).0, 0);
    assert_eq!(plane.ctl(&["stop-server", "px"]).0, 0);
}

/// `understudy host` on "another machine" (a separate process with its own data directory,
/// reached over HTTP like a remote one; on loopback here): it registers, runs what the control
/// plane places on it, starts a killed agent again, and keeps its processes when it stops.
#[test]
fn a_second_host_runs_what_is_placed_on_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let hdata = dir.path().join("h2");
    let log = dir.path().join("service.log");
    let plane = Plane::start(&data, &free_addr());
    let mut host = Command::new(BIN)
        .args([
            "host",
            "--control",
            &plane.addr,
            "--name",
            "h2",
            "--advertise",
            "127.0.0.1",
            "--data",
        ])
        .arg(&hdata)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("understudy host");
    assert!(
        wait_until(Duration::from_secs(15), || host_shown(&plane, "h2", true)),
        "the host did not register"
    );
    let log_s = log.display().to_string();
    plane.ctl_ok(&[
        "add-server",
        "fx",
        "--host",
        "h2",
        "--",
        BIN,
        "demo-service",
        "--log",
        &log_s,
    ]);
    // A group across the control plane's machine and h2 needs etcd: refused, the field named.
    let (code, v) = plane.ctl(&[
        "add-failover",
        "fx",
        "--standby",
        "warm",
        "--standby-host",
        "local",
    ]);
    assert_eq!(code, 1, "{v}");
    assert!(v.to_string().contains("etcd"), "{v}");
    plane.ctl_ok(&[
        "add-failover",
        "fx",
        "--standby",
        "warm",
        "--standby-host",
        "h2",
    ]);

    // A plain server on h2, started and stopped through its host.
    assert_eq!(plane.ctl(&["start-server", "fx"]).0, 0);
    let pid = plane.server("fx")["process"]["pid"].as_u64().expect("pid") as u32;
    assert!(alive(pid));
    let env = common::environ(pid);
    assert_eq!(
        env.get("UNDERSTUDY_CONTROL_KEY").map(String::as_str),
        Some("server:fx")
    );
    assert_eq!(plane.ctl(&["stop-server", "fx"]).0, 0);
    assert!(wait_until(Duration::from_secs(15), || !alive(pid)));

    // Failover on h2: its agents run there (their configurations in h2's data directory).
    plane.ctl_ok(&["start-failover", "fx"]);
    assert!(hdata.join("nodes/fx-1.toml").exists() && hdata.join("nodes/fx-2.toml").exists());
    assert!(
        !data.join("nodes/fx-1.toml").exists(),
        "h2's agent config was written locally"
    );
    assert!(wait_until(Duration::from_secs(20), || plane
        .nodes("fx")
        .iter()
        .any(|n| n["mode"] == "Warm" && n["ready"] == true)));
    let watcher = Watcher::start(plane.node_addrs("fx"));
    let active = plane.active("fx").expect("active");
    let apid = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&c).contains(&format!("nodes/{active}.toml")) && alive(*p)
        })
        .expect("the active's agent");
    common::signal(apid, nix::sys::signal::Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(5), || plane
        .active("fx")
        .is_some_and(|a| a != active)));
    // h2 starts the killed agent again; it rejoins as a ready standby.
    assert!(
        wait_until(Duration::from_secs(20), || plane.nodes("fx").iter().any(
            |n| n["name"] == active.as_str() && n["mode"] == "Warm" && n["ready"] == true
        )),
        "h2 did not start the killed agent again: {:?}",
        plane.nodes("fx")
    );
    watcher.finish();
    check_overlaps(&log);

    // The host stops; what it started keeps running (the host is not in the data path).
    let before = plane.active("fx");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = host.wait();
    common::sleep_ms(500); // the scenario: half a second without a host
    assert_eq!(
        plane.active("fx"),
        before,
        "stopping the host moved activity"
    );
    for pid in procs_with_marker(&hdata) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `ctl add-server NAME --host HOST -- understudy demo-service --log LOG`.
fn add_demo_server(plane: &Plane, name: &str, host: &str, log: &std::path::Path) {
    let log_s = log.display().to_string();
    plane.ctl_ok(&[
        "add-server",
        name,
        "--host",
        host,
        "--",
        BIN,
        "demo-service",
        "--log",
        &log_s,
    ]);
}

/// `px` on `host` with the demo service logging to `log` and hot failover with `standbys`
/// standbys there (`extra`: more `add-failover` flags), started and up: one node Hot, every
/// standby ready.
fn running_group(
    plane: &Plane,
    host: &str,
    log: &std::path::Path,
    standbys: usize,
    extra: &[&str],
) {
    add_demo_server(plane, "px", host, log);
    let mut args = vec!["add-failover", "px", "--standby", "hot"];
    for _ in 0..standbys {
        args.extend(["--standby-host", host]);
    }
    args.extend_from_slice(extra);
    let (code, v) = plane.ctl(&args);
    assert_eq!(code, 0, "{v}");
    plane.ctl_ok(&["start-failover", "px"]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let nodes = plane.nodes("px");
            nodes.len() == standbys + 1
                && nodes.iter().filter(|n| n["mode"] == "Hot").count() == 1
                && nodes
                    .iter()
                    .all(|n| n["mode"] == "Hot" || n["ready"] == true)
        }),
        "the group did not come up: {:?}",
        plane.nodes("px")
    );
}

/// `understudy host --name h2` for `plane`, its data directory beside the plane's (`<data>-h2`:
/// the plane's clean-up, which matches its data directory in command lines, also ends what
/// h2 started).
fn second_host(plane: &Plane) -> (Proc, std::path::PathBuf) {
    second_host_as(plane, &[])
}

/// [`second_host`] run through `wrapper` (a command and its arguments, which then run the
/// binary), e.g. `setpriv` to run it as another user.
fn second_host_as(plane: &Plane, wrapper: &[&str]) -> (Proc, std::path::PathBuf) {
    let hdata = std::path::PathBuf::from(format!("{}-h2", plane.data.display()));
    let mut cmd = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let host = Proc::spawn(
        cmd.args(["host", "--control", &plane.addr, "--name", "h2"])
            .args(["--advertise", "127.0.0.1", "--data"])
            .arg(&hdata)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("understudy host");
    assert!(
        wait_until(Duration::from_secs(15), || host_shown(plane, "h2", true)),
        "the host did not register"
    );
    (host, hdata)
}

/// Review 44, L2: a host started with SIGCHLD ignored (a parent's disposition survives exec)
/// would have the kernel reap its children unseen, and a freed pid could pass for its child.
/// It puts the default back.
#[test]
fn a_host_started_with_sigchld_ignored_reaps_its_children_itself() {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        let test = "a_host_started_with_sigchld_ignored_reaps_its_children_itself";
        return skip::skip(test, "/usr/bin/python3 is missing (Debian: python3)");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let plane = Plane::start(&data, &free_addr());
    let (host, _) = second_host_as(
        &plane,
        &[
            "/usr/bin/python3",
            "-c",
            "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])",
        ],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.id())).expect("status");
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("SigIgn");
    let chld = 1u64 << (nix::sys::signal::Signal::SIGCHLD as i32 - 1);
    assert_eq!(
        ignored & chld,
        0,
        "the host keeps SIGCHLD ignored: {status}"
    );
}

/// Review 31, L8: a host stopping a process that ignores SIGTERM (killed after the 10 s grace)
/// goes on reporting meanwhile. It used to finish every stop before it reported, and was dark to
/// the plane for up to 10 s, so stop failover was refused on it. The server counts as stopped
/// only once the process is gone: the key stays in the host's report while its stop runs.
#[test]
fn a_host_goes_on_reporting_while_a_slow_process_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let plane = Plane::start(&data, &free_addr());
    let (_host, _hdata) = second_host(&plane);
    let termed = dir.path().join("termed");
    let script = format!(
        "trap 'touch {}' TERM; while :; do sleep 0.1; done",
        termed.display()
    );
    plane.ctl_ok(&[
        "add-server",
        "sx",
        "--host",
        "h2",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    plane.ctl_ok(&["start-server", "sx"]);
    let pid = plane.server("sx")["process"]["pid"]
        .as_u64()
        .expect("the server's pid") as u32;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let stop = s.spawn(|| plane.ctl(&["stop-server", "sx"]));
        assert!(
            wait_until(Duration::from_secs(5), || termed.exists()),
            "the host never sent SIGTERM"
        );
        // Past the plane's 5 s without a report counted from the stop's start, before the
        // 10 s grace is over.
        testbed::clock::pause(Duration::from_secs(6));
        assert!(alive(pid), "the process ended before its grace was over");
        assert!(
            host_shown(&plane, "h2", true),
            "the host stopped reporting while it stopped a process: {}",
            plane.get("/api/hosts").1
        );
        assert_eq!(plane.server("sx")["state"], "running");
        let (code, v) = stop.join().expect("the stop's thread");
        assert_eq!(code, 0, "{v}");
    });
    assert!(
        t0.elapsed() >= Duration::from_secs(9),
        "stopped after {:?}, before the process was killed",
        t0.elapsed()
    );
    assert!(!alive(pid), "stopped while its process runs");
    assert_eq!(plane.server("sx")["state"], "stopped");
}

/// Review 29, L6, and review 31, M2: a host whose machine is gone for good, with the group it
/// ran, used to block the server for good: stop failover refused (its standbys' host is dark),
/// then start-server refused (its last report lists agents of the group). `forget-host` declares
/// it gone: refused while it reports, it drops its last report and nothing waits for it any
/// more, so stop failover and stop-server go through; nothing is started there (start-server
/// refused, naming it); and a host that reports again counts again.
#[test]
fn a_host_gone_for_good_is_forgotten_and_no_longer_holds_its_servers_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("service.log");
    let plane = Plane::start(&data, &free_addr());
    let (host, hdata) = second_host(&plane);
    running_group(&plane, "h2", &log, 1, &[]);
    let services: Vec<u32> = plane.nodes("px").iter().filter_map(service_pid).collect();
    assert_eq!(services.len(), 2, "{:?}", plane.nodes("px"));

    // Refused while it reports, for the built-in host, and for a host that never reported.
    let (code, v) = plane.ctl(&["forget-host", "h2"]);
    assert_ne!(code, 0, "{v}");
    assert!(v.to_string().contains("reported"), "{v}");
    // Not a refusal the operator's word overrides: the host is up.
    let (code, v) = plane.send("DELETE", "/api/hosts/h2", json!({}));
    assert_eq!(code, 409, "{v}");
    assert!(v.get("forcible").is_none(), "{v}");
    assert_ne!(plane.ctl(&["forget-host", "local"]).0, 0);
    let (code, v) = plane.send("DELETE", "/api/hosts/nowhere", json!({}));
    assert_eq!(code, 404, "{v}");
    assert!(v.to_string().contains("no host named"), "{v}");

    // Only `understudy host` dies: what it started runs on, and the agents answer, so the
    // machine is not gone (review 32, M3).
    common::signal(host.0.id(), nix::sys::signal::Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(15), || host_shown(
        &plane, "h2", false
    )));
    let (code, v) = plane.ctl(&["forget-host", "h2"]);
    assert_ne!(code, 0, "forgot a host whose agents answer: {v}");
    assert!(v.to_string().contains("still answers"), "{v}");

    // Then the machine dies: the agents the host started, their services.
    assert!(
        wait_until(Duration::from_secs(10), || {
            for pid in procs_with_marker(&hdata) {
                common::signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
            procs_with_marker(&hdata).is_empty() && services.iter().all(|p| !alive(*p))
        }),
        "h2's processes outlived its machine"
    );
    let (code, v) = plane.ctl(&["stop-failover", "px"]);
    assert_ne!(
        code, 0,
        "stop failover went through with its standby's host dark: {v}"
    );
    assert!(v.to_string().contains("forget-host"), "{v}");

    let (code, v) = plane.ctl(&["forget-host", "h2"]);
    assert_eq!(code, 0, "{v}");
    let last = v["last_reported"].to_string();
    assert!(
        last.contains("agent:px-1") && last.contains("agent:px-2"),
        "{v}"
    );
    let (_, hosts) = plane.get("/api/hosts");
    assert!(
        hosts["hosts"].as_array().is_some_and(|h| h
            .iter()
            .any(|x| x["name"] == "h2" && x["forgotten_unix_ms"].is_u64())),
        "{hosts}"
    );
    let (code, text, _) = run_cli(&["ctl", "--control", &plane.addr, "hosts"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("h2") && text.contains("forgotten"), "{text}");

    // Nothing waits for it any more.
    plane.ctl_ok(&["stop-failover", "px"]);
    plane.ctl_ok(&["stop-server", "px"]);
    assert_eq!(plane.server("px")["state"], "stopped");
    let (code, v) = plane.ctl(&["start-server", "px"]);
    assert_ne!(code, 0, "started on a forgotten host: {v}");
    assert!(v.to_string().contains("declared gone for good"), "{v}");
    let (code, v) = plane.ctl(&["start-failover", "px"]);
    assert_ne!(code, 0, "failover started on a forgotten host: {v}");
    assert!(v.to_string().contains("declared gone for good"), "{v}");

    // The machine is back after all: its host reports, counts again, and runs what it is told.
    let (host, _) = second_host(&plane);
    plane.ctl_ok(&["start-server", "px"]);
    assert_eq!(plane.server("px")["state"], "running");
    let server = plane.server("px")["process"]["pid"]
        .as_u64()
        .expect("the server's pid") as u32;

    // It dies again, with a plain server running: nothing can be asked about that one, so
    // only --force forgets it (review 33, M1).
    common::signal(host.0.id(), nix::sys::signal::Signal::SIGKILL);
    common::signal(server, nix::sys::signal::Signal::SIGKILL);
    assert!(wait_until(Duration::from_secs(15), || host_shown(
        &plane, "h2", false
    ) && !alive(server)));
    let (code, v) = plane.ctl(&["forget-host", "h2"]);
    assert_ne!(code, 0, "forgot a host that last ran a plain server: {v}");
    assert!(v.to_string().contains("server:px"), "{v}");
    // The operator's word overrides this one (the dashboard then offers to force it).
    let (code, v) = plane.send("DELETE", "/api/hosts/h2", json!({}));
    assert_eq!((code, &v["forcible"]), (409, &json!(true)), "{v}");
    plane.ctl_ok(&["forget-host", "h2", "--force"]);
    plane.ctl_ok(&["stop-server", "px"]);
    assert_eq!(plane.server("px")["state"], "stopped");
}

/// Review 37, M1, and review 38: a stop whose host is up and goes on reporting the server
/// running (a process that survives SIGKILL in an uninterruptible wait) is refused, and the
/// operator's word does not override the host's: no `forcible`, and `?force=true` gets the same
/// answer. The host here is played by the test through the API (it reports what it is told to
/// run, running, and keeps reporting it after the want is gone). Once that host goes dark, the
/// stop becomes forcible, with the host's last report quoted (`host_seen_unix_ms`); a force
/// that quotes an older report than the plane holds is refused as stale (review 37, M2); one
/// that quotes the right one stops the server, marked unconfirmed until that host reports.
#[test]
fn a_live_hosts_report_beats_the_operators_word_and_a_stale_word_forces_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let plane = Plane::start(&data, &free_addr());
    // It reports what it is told to run, running, and never lets go of it.
    let reporting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fake = fake_host(&plane.addr, "h9", true, Vec::new(), reporting.clone());
    assert!(wait_until(Duration::from_secs(10), || host_shown(
        &plane, "h9", true
    )));
    plane.ctl_ok(&["add-server", "p9", "--host", "h9", "--", "/bin/true"]);
    plane.ctl_ok(&["start-server", "p9"]);
    assert_eq!(plane.server("p9")["state"], "running");

    let (code, v) = plane.send("POST", "/api/servers/p9/stop", json!({}));
    assert_eq!(code, 409, "{v}");
    assert!(v.to_string().contains("still reports server p9"), "{v}");
    assert!(
        v.get("forcible").is_none(),
        "a live host's report offered to be forced: {v}"
    );
    let (code, v) = plane.send("POST", "/api/servers/p9/stop?force=true", json!({}));
    assert_eq!(code, 409, "forced past a live host's report: {v}");
    assert!(v.get("forcible").is_none(), "{v}");
    assert!(v.to_string().contains("still reports server p9"), "{v}");
    assert_eq!(plane.server("p9")["state"], "running");

    // The host goes dark: forcible now, quoting its last report.
    reporting.store(false, std::sync::atomic::Ordering::SeqCst);
    fake.join().expect("the fake host");
    assert!(wait_until(Duration::from_secs(15), || host_shown(
        &plane, "h9", false
    )));
    let (code, v) = plane.send("POST", "/api/servers/p9/stop", json!({}));
    assert_eq!((code, &v["forcible"]), (409, &json!(true)), "{v}");
    let seen = v["host_seen_unix_ms"].as_u64().expect("host_seen_unix_ms");
    assert!(seen > 0, "{v}");
    let (code, v) = plane.send(
        "POST",
        &format!("/api/servers/p9/stop?force=true&seen={}", seen - 1),
        json!({}),
    );
    assert_eq!(
        code, 409,
        "a word quoting another report forced the stop: {v}"
    );
    assert!(v.to_string().contains("not as the refusal"), "{v}");
    // Nor one from the future: only the value the refusal quoted.
    let (code, v) = plane.send(
        "POST",
        &format!("/api/servers/p9/stop?force=true&seen={}", seen + 1),
        json!({}),
    );
    assert_eq!(
        code, 409,
        "a word quoting a later report forced the stop: {v}"
    );
    // The host comes back for one report, still listing p9, and goes dark again: the word
    // given on the refusal before it is stale.
    let procs = json!([{ "key": "server:p9", "pid": 4_000_000, "running": true, "generation": 0 }]);
    let (code, v) = plane.send(
        "PUT",
        "/api/hosts/h9/report",
        json!({ "advertise": "127.0.0.1", "processes": procs }),
    );
    assert!(code < 300, "{code} {v}");
    assert!(wait_until(Duration::from_secs(15), || host_shown(
        &plane, "h9", false
    )));
    let (code, v) = plane.send(
        "POST",
        &format!("/api/servers/p9/stop?force=true&seen={seen}"),
        json!({}),
    );
    assert_eq!(code, 409, "a stale word forced the stop: {v}");
    assert!(v.to_string().contains("not as the refusal"), "{v}");
    assert_eq!(plane.server("p9")["state"], "running");
    let (code, v) = plane.send("POST", "/api/servers/p9/stop", json!({}));
    assert_eq!((code, &v["forcible"]), (409, &json!(true)), "{v}");
    let seen = v["host_seen_unix_ms"].as_u64().expect("host_seen_unix_ms");
    let (code, v) = plane.send(
        "POST",
        &format!("/api/servers/p9/stop?force=true&seen={seen}"),
        json!({}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["state"], "stopped", "{v}");
    assert_eq!(v["unconfirmed_stop"]["host"], "h9", "{v}");
    // Unconfirmed, it may still run there: no second one (review 39, M2).
    let (code, v) = plane.ctl(&["start-server", "p9"]);
    assert_ne!(code, 0, "started beside an unconfirmed stop: {v}");
    assert!(v.to_string().contains("never confirmed"), "{v}");
    // The host back, reporting without it: confirmed, the mark gone.
    let (code, v) = plane.send(
        "PUT",
        "/api/hosts/h9/report",
        json!({ "advertise": "127.0.0.1", "processes": [] }),
    );
    assert!(code < 300, "{code} {v}");
    assert!(plane.server("p9").get("unconfirmed_stop").is_none());
}

/// A host played through the API, reporting every 100 ms until `on` is cleared: what it is told
/// to run, running, plus `extra`; with `sticky`, what it ran stays reported running after its
/// want is gone (a process its stop cannot end).
fn fake_host(
    addr: &str,
    name: &'static str,
    sticky: bool,
    extra: Vec<Value>,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let addr = addr.to_string();
    std::thread::spawn(move || {
        let mut procs: Vec<Value> = Vec::new();
        while on.load(std::sync::atomic::Ordering::SeqCst) {
            let (_, _, b) = plane_common::request(
                &addr,
                "GET",
                &format!("/api/hosts/{name}/desired"),
                None,
                b"",
            );
            let desired: Value = serde_json::from_str(&b).unwrap_or(Value::Null);
            let d = desired["desired"].as_object().cloned().unwrap_or_default();
            if !sticky {
                procs.retain(|p| p["key"].as_str().is_some_and(|k| d.contains_key(k)));
            }
            for (key, want) in &d {
                procs.retain(|p| p["key"] != key.as_str());
                procs.push(json!({ "key": key, "pid": 4_000_000, "running": true,
                                   "generation": want["generation"].as_u64().unwrap_or(0) }));
            }
            let mut all = procs.clone();
            all.extend(extra.iter().cloned());
            let body = json!({ "advertise": "127.0.0.1", "processes": all }).to_string();
            plane_common::request(
                &addr,
                "PUT",
                &format!("/api/hosts/{name}/report"),
                Some("application/json"),
                body.as_bytes(),
            );
            common::sleep_ms(100);
        }
    })
}

/// Review 38 L-d, review 39 H1, review 40 #2-#3: a stop is confirmed by every host whose last
/// report lists the server, not by the first one in name order or the placed one alone. Here
/// p8 runs on h9, which lets it go when told; h8, h8b, h8c and h8d, dark now, last listed it
/// too. A stop is refused (forcible, naming h8) although h9 would confirm at once; forced, it
/// waits for all five at once, is Stopped with the dark four marked unconfirmed, and
/// start-server is refused while they have not confirmed.
#[test]
fn a_stop_waits_for_every_host_that_lists_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let plane = Plane::start(&data, &free_addr());
    let h9_on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h9 = fake_host(&plane.addr, "h9", false, Vec::new(), h9_on.clone());
    let stale = json!({ "key": "server:p8", "pid": 4_000_001, "running": true, "generation": 0 });
    // Four dark hosts: their waits run at once, where one after the other (20 s each) they
    // outlasted the request (60 s).
    let dark = ["h8", "h8b", "h8c", "h8d"];
    let h8_on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h8s: Vec<_> = dark
        .iter()
        .map(|h| fake_host(&plane.addr, h, false, vec![stale.clone()], h8_on.clone()))
        .collect();
    assert!(wait_until(Duration::from_secs(10), || host_shown(
        &plane, "h9", true
    ) && dark
        .iter()
        .all(|h| host_shown(&plane, h, true))));
    plane.ctl_ok(&["add-server", "p8", "--host", "h9", "--", "/bin/true"]);
    plane.ctl_ok(&["start-server", "p8"]);
    h8_on.store(false, std::sync::atomic::Ordering::SeqCst);
    for h in h8s {
        h.join().expect("a dark host's thread");
    }
    assert!(wait_until(Duration::from_secs(15), || dark
        .iter()
        .all(|h| host_shown(&plane, h, false))));

    let (code, v) = plane.send("POST", "/api/servers/p8/stop", json!({}));
    assert_eq!(
        (code, &v["forcible"]),
        (409, &json!(true)),
        "stopped past h8: {v}"
    );
    assert!(v.to_string().contains("host h8"), "{v}");
    assert_eq!(plane.server("p8")["state"], "running");
    let seen = v["host_seen_unix_ms"].as_u64().expect("host_seen_unix_ms");
    let (code, v) = plane.send(
        "POST",
        &format!("/api/servers/p8/stop?force=true&seen={seen}"),
        json!({}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["unconfirmed_stop"]["host"], "h8,h8b,h8c,h8d", "{v}");
    let (code, v) = plane.ctl(&["start-server", "p8"]);
    assert_ne!(code, 0, "started while h8 may still run it: {v}");
    assert!(v.to_string().contains("h8"), "{v}");
    // Nor deleted, which would drop the mark with the row (review 41, M-C).
    let (code, v) = plane.ctl(&["delete-server", "p8"]);
    assert_ne!(code, 0, "deleted while h8 may still run it: {v}");
    assert!(v.to_string().contains("never confirmed"), "{v}");
    h9_on.store(false, std::sync::atomic::Ordering::SeqCst);
    h9.join().expect("h9");
}

/// Review 39 M3, review 42 H3: a start whose host fetched the want and then fell silent, without
/// a word of whether it started what it was told. It may run there: the failed start marks the
/// server as a stop its host never confirmed, and start-server, start failover, delete-server
/// (which would let it be added and started elsewhere) and a plain forget-host are refused until
/// the host reports without it. The same for a start of failover whose agent's host fell
/// silent. A start its host answered with a failure marks nothing, and a start on a host
/// already dark is refused up front.
#[test]
fn a_start_its_host_never_answered_is_marked_until_the_host_reports() {
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let plane = Plane::start(&data, &free_addr());

    // The built-in host answers a start it cannot do (its program gone since it was added):
    // nothing runs, nothing is marked.
    let prog = dir.path().join("gone-program");
    std::fs::write(&prog, "#!/bin/sh\nexec sleep 1000\n").expect("write the program");
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    plane.ctl_ok(&["add-server", "p6", "--", &prog.display().to_string()]);
    std::fs::remove_file(&prog).expect("remove the program");
    let (code, v) = plane.ctl(&["start-server", "p6"]);
    assert_ne!(code, 0, "started a program that is gone: {v}");
    assert!(!v.to_string().contains("never answered"), "{v}");
    assert!(plane.server("p6")["unconfirmed_stop"].is_null());
    plane.ctl_ok(&["delete-server", "p6"]);

    // h7 reports (nothing) until it finds `trap` wanted, then falls silent (phase 1) until told
    // to come back (phase 2), when it reports without it as a host does that stopped it; or
    // back still listing it (phase 3), as a host does while it stops it.
    let trap = Arc::new(Mutex::new(String::from("server:p7")));
    let phase = Arc::new(AtomicU8::new(0));
    let on = Arc::new(AtomicBool::new(true));
    let h7 = {
        let (addr, trap, phase, on) = (plane.addr.clone(), trap.clone(), phase.clone(), on.clone());
        std::thread::spawn(move || {
            while on.load(Ordering::SeqCst) {
                let (_, _, b) =
                    plane_common::request(&addr, "GET", "/api/hosts/h7/desired", None, b"");
                let key = trap.lock().map(|k| k.clone()).unwrap_or_default();
                let wanted = serde_json::from_str::<Value>(&b)
                    .ok()
                    .is_some_and(|d| !d["desired"][key.as_str()].is_null());
                if wanted && phase.load(Ordering::SeqCst) == 0 {
                    phase.store(1, Ordering::SeqCst);
                }
                let p = phase.load(Ordering::SeqCst);
                if p != 1 {
                    let procs = if p == 3 {
                        json!([{ "key": key, "pid": 4_000_002, "running": true, "generation": 0 }])
                    } else {
                        json!([])
                    };
                    let body = json!({ "advertise": "127.0.0.1", "processes": procs }).to_string();
                    plane_common::request(
                        &addr,
                        "PUT",
                        "/api/hosts/h7/report",
                        Some("application/json"),
                        body.as_bytes(),
                    );
                }
                common::sleep_ms(100);
            }
        })
    };
    let back = |plane: &Plane, name: &str| {
        phase.store(2, Ordering::SeqCst);
        assert!(
            wait_until(Duration::from_secs(10), || plane.server(name)
                ["unconfirmed_stop"]
                .is_null()),
            "h7 reported without {name} and the mark stayed: {}",
            plane.server(name)
        );
    };
    assert!(wait_until(Duration::from_secs(10), || host_shown(
        &plane, "h7", true
    )));
    plane.ctl_ok(&[
        "add-server",
        "p7",
        "--host",
        "h7",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    plane.ctl_ok(&[
        "add-server",
        "p7b",
        "--host",
        "h7",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    let (code, v) = plane.ctl(&["start-server", "p7"]);
    assert_ne!(code, 0, "started though h7 never answered: {v}");
    assert_eq!(phase.load(Ordering::SeqCst), 1, "h7 never fetched the want");
    assert!(v.to_string().contains("never answered"), "{v}");
    let row = plane.server("p7");
    assert_eq!(row["state"], "stopped", "{row}");
    assert_eq!(row["unconfirmed_stop"]["host"], "h7", "not marked: {row}");
    let (code, v) = plane.ctl(&["delete-server", "p7"]);
    assert_ne!(code, 0, "deleted while h7 may run it: {v}");
    assert!(v.to_string().contains("never confirmed"), "{v}");
    // Dark by now: a start elsewhere on it is refused up front, and marks nothing.
    assert!(wait_until(Duration::from_secs(10), || host_shown(
        &plane, "h7", false
    )));
    let (code, v) = plane.ctl(&["start-server", "p7b"]);
    assert_ne!(code, 0, "started on a dark host: {v}");
    assert!(v.to_string().contains("cannot be started"), "{v}");
    assert!(plane.server("p7b")["unconfirmed_stop"].is_null());
    // Forgetting h7 on a plain word would drop the mark: it may run p7.
    let (code, v) = plane.ctl(&["forget-host", "h7"]);
    assert_ne!(code, 0, "forgot a host that may run p7: {v}");
    assert!(v.to_string().contains("server:p7"), "{v}");
    back(&plane, "p7");
    plane.ctl_ok(&["delete-server", "p7"]);

    // A start of failover whose agent's host fetches the want and falls silent.
    *trap.lock().expect("trap") = "agent:p7b-1".into();
    phase.store(0, Ordering::SeqCst);
    plane.ctl_ok(&[
        "add-failover",
        "p7b",
        "--standby",
        "warm",
        "--standby-host",
        "h7",
    ]);
    let (code, v) = plane.ctl(&["start-failover", "p7b"]);
    assert_ne!(code, 0, "failover started though h7 never answered: {v}");
    assert_eq!(
        phase.load(Ordering::SeqCst),
        1,
        "h7 never fetched the agent's want"
    );
    let row = plane.server("p7b");
    assert_eq!(row["unconfirmed_stop"]["host"], "h7", "not marked: {row}");
    // Back, still stopping the agent: the mark holds, even with the failover (and so the
    // agent's key) deleted meanwhile.
    phase.store(3, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(10), || host_shown(
        &plane, "h7", true
    )));
    plane.ctl_ok(&["delete-failover", "p7b"]);
    common::sleep_ms(500);
    let row = plane.server("p7b");
    assert_eq!(
        row["unconfirmed_stop"]["host"], "h7",
        "cleared while h7 lists the agent: {row}"
    );
    let (code, v) = plane.ctl(&["start-server", "p7b"]);
    assert_ne!(code, 0, "started beside an agent that may run: {v}");
    assert!(v.to_string().contains("never confirmed"), "{v}");
    let (code, v) = plane.ctl(&["delete-server", "p7b"]);
    assert_ne!(code, 0, "deleted while h7 may run its agent: {v}");
    back(&plane, "p7b");
    plane.ctl_ok(&["delete-server", "p7b"]);
    on.store(false, Ordering::SeqCst);
    h7.join().expect("h7");
}

/// Review 40 #1: after stop failover, the host adopts the released service only once the
/// active's agent has exited. Here that agent hangs in its exit (strace holds its `exit_group`):
/// the host lists the server not running, and a stop now, forced or not, is refused, naming the
/// agent; it would drop the adoption and leave the service running unwatched. Once the agent
/// exits, the host adopts the service, and the stop goes through and ends it.
#[test]
fn a_stop_is_refused_while_a_released_service_waits_for_its_agent_to_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("service.log");
    let plane = Plane::start(&data, &free_addr());
    let (_host, hdata) = second_host(&plane);
    running_group(&plane, "h2", &log, 1, &[]);
    let (node, _) = active_logged(&plane, &log);
    let active = plane
        .nodes("px")
        .into_iter()
        .find(|n| n["name"] == node.as_str())
        .expect("the active's node");
    let service = service_pid(&active).expect("the active's service");
    let agent = agent_pid(&hdata, &node).expect("the active's agent");
    // Its errors kept: a ptrace that is denied here (Yama, a container) shows why.
    let strace_err = dir.path().join("strace.err");
    let test = "a_stop_is_refused_while_a_released_service_waits_for_its_agent_to_exit";
    let strace = Proc::spawn(
        Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-p", &agent.to_string()])
            .args([
                "-e",
                "trace=exit_group",
                "-e",
                "inject=exit_group:delay_enter=120s",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&strace_err).expect("strace's error file")),
    );
    let mut strace = match strace {
        Ok(p) => p,
        Err(e) => return skip::skip(test, &format!("strace (Debian: strace): {e}")),
    };
    let traced = || {
        std::fs::read_to_string(format!("/proc/{agent}/status")).is_ok_and(|s| {
            s.lines().any(|l| {
                l.strip_prefix("TracerPid:")
                    .is_some_and(|v| v.trim() != "0")
            })
        })
    };
    if !wait_until(Duration::from_secs(10), traced) {
        let why = std::fs::read_to_string(&strace_err).unwrap_or_default();
        if why.contains("Operation not permitted") {
            return skip::skip(test, &format!("ptrace is not allowed here: {why}"));
        }
        panic!("strace never attached to {agent}: {why}");
    }
    // Every syscall of a traced agent stops: it must still answer as the active, or stop
    // failover takes it for a standby.
    assert!(
        wait_until(Duration::from_secs(10), || plane
            .nodes("px")
            .iter()
            .any(|n| n["name"] == node.as_str() && n["mode"] == "Hot")),
        "the traced active no longer answers as Hot: {:?}",
        plane.nodes("px")
    );

    // The release is answered; the agent stays in its exit, so the host adopts nothing (stop
    // failover gives it 20 s, then leaves it to the host).
    plane.ctl_ok(&["stop-failover", "px"]);
    assert!(
        alive(agent) && alive(service),
        "the agent or its service ended"
    );
    let (code, v) = plane.send("POST", "/api/servers/px/stop", json!({}));
    assert_eq!(code, 409, "stopped while the adoption waits: {v}");
    assert!(v.get("forcible").is_none(), "{v}");
    let text = v.to_string();
    assert!(
        text.contains("not adopted yet") && text.contains(&node),
        "{v}"
    );
    let (code, v) = plane.send("POST", "/api/servers/px/stop?force=true", json!({}));
    assert_eq!(
        code, 409,
        "a force stopped it while the adoption waits: {v}"
    );
    assert!(alive(service), "the released service was ended unadopted");

    // The agent exits: the host adopts the service, and the stop ends it.
    common::signal(strace.id(), nix::sys::signal::Signal::SIGINT);
    assert!(
        wait_until(Duration::from_secs(10), || strace.exited()),
        "strace did not detach"
    );
    assert!(
        wait_until(Duration::from_secs(20), || !alive(agent)
            && plane.server("px")["process"]["running"] == true),
        "the released service was not adopted: {}",
        plane.server("px")
    );
    plane.ctl_ok(&["stop-server", "px"]);
    assert_eq!(plane.server("px")["state"], "stopped");
    assert!(
        wait_until(Duration::from_secs(15), || !alive(service)),
        "the adopted service outlived its stop"
    );
    check_overlaps(&log);
}

/// Review 42, M2: a host that does not run as root cannot read the environment of a server that
/// made itself non-dumpable (file capabilities, setuid, `PR_SET_DUMPABLE`, all common for
/// low-latency binaries). It took such a server for ended, forgot it without stopping it, and
/// the plane counted it stopped while it ran. The host knows its own children: the server stays
/// running, and its stop ends it.
#[test]
fn a_server_whose_environment_is_closed_to_its_host_still_counts_as_running() {
    use std::os::unix::fs::MetadataExt;
    let test = "a_server_whose_environment_is_closed_to_its_host_still_counts_as_running";
    if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
        return skip::skip(test, "needs root, to run a host as another user");
    }
    for tool in ["/usr/bin/python3", "/usr/bin/setpriv"] {
        if !std::path::Path::new(tool).exists() {
            return skip::skip(
                test,
                &format!("{tool} is missing (Debian: python3, util-linux)"),
            );
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let data = dir.path().join("data");
    let plane = Plane::start(&data, &free_addr());
    // Beside the plane's data directory, and named in the server's command line too, so that
    // the plane's clean-up (which matches it in command lines) ends both if the test fails.
    let hdata = std::path::PathBuf::from(format!("{}-h2", plane.data.display()));
    std::fs::create_dir_all(&hdata).expect("the host's data directory");
    std::os::unix::fs::chown(&hdata, Some(65534), Some(65534)).expect("chown");
    let (_host, _) = second_host_as(
        &plane,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
    );
    plane.ctl_ok(&[
        "add-server",
        "pn",
        "--host",
        "h2",
        "--",
        "/usr/bin/python3",
        "-c",
        "import ctypes, time; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); time.sleep(1000)",
        &hdata.display().to_string(),
    ]);
    plane.ctl_ok(&["start-server", "pn"]);
    let pid = plane.server("pn")["process"]["pid"]
        .as_u64()
        .expect("the server's pid") as u32;
    // The premise: closed to its host's user once it made itself non-dumpable.
    assert!(
        wait_until(Duration::from_secs(5), || !Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(format!("/proc/{pid}/environ"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())),
        "the server's environment stays readable to its host: the test shows nothing"
    );
    // Several reports and collections later, it still counts as running.
    common::sleep_ms(3000);
    let row = plane.server("pn");
    assert!(alive(pid), "the server ended by itself");
    assert_eq!(
        row["state"], "running",
        "counted stopped while it runs: {row}"
    );
    assert_eq!(row["process"]["running"], true, "{row}");
    plane.ctl_ok(&["stop-server", "pn"]);
    assert!(
        wait_until(Duration::from_secs(15), || !alive(pid)),
        "the server outlived its stop"
    );
}

/// Review 31, L10: start-server is refused while a host's last report lists an agent of the
/// server's failover group. Here a start of failover fails half-way: h2's `understudy host` is
/// frozen right after it started px-1's agent, which becomes active; px-2 never comes up, and
/// the clean-up cannot be confirmed by the frozen host. The server stays stopped while px-1's
/// agent runs, active, on h2: a plain server started next to it would be two actives. Once the
/// host is back it stops that agent, and the server starts.
#[test]
fn start_server_is_refused_while_a_host_still_reports_an_agent_of_its_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("service.log");
    let plane = Plane::start(&data, &free_addr());
    let (host, hdata) = second_host(&plane);
    add_demo_server(&plane, "px", "h2", &log);
    plane.ctl_ok(&[
        "add-failover",
        "px",
        "--standby",
        "hot",
        "--standby-host",
        "h2",
    ]);
    let reports_agent = |node: &str| {
        plane.get("/api/hosts").1["hosts"]
            .as_array()
            .is_some_and(|h| {
                h.iter().any(|x| {
                    x["name"] == "h2"
                        && x["processes"]
                            .as_array()
                            .is_some_and(|p| p.iter().any(|r| r["key"] == format!("agent:{node}")))
                })
            })
    };
    std::thread::scope(|s| {
        let start = s.spawn(|| plane.ctl(&["start-failover", "px"]));
        assert!(
            wait_until(Duration::from_secs(15), || reports_agent("px-1")),
            "h2 never reported px-1's agent"
        );
        common::signal(host.0.id(), nix::sys::signal::Signal::SIGSTOP);
        let (code, v) = start.join().expect("the start's thread");
        assert_ne!(code, 0, "the start went through with h2 frozen: {v}");
    });
    assert!(
        !reports_agent("px-2"),
        "h2 was frozen too late, after it started px-2: the test shows nothing"
    );
    let agent = agent_pid(&hdata, "px-1").expect("px-1's agent runs");
    let mut active_service = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            // The plane shows no node of a stopped server: asked directly.
            let admin = plane
                .nodes("px")
                .iter()
                .find(|n| n["name"] == "px-1")
                .and_then(|n| n["admin"].as_str().map(String::from))
                .unwrap_or_default();
            active_service = common::get_json(&admin, "/status")
                .filter(|s| s["mode"] == "Hot")
                .and_then(|s| s["service"]["pid"].as_u64())
                .map(|p| p as u32);
            active_service.is_some()
        }),
        "px-1 is not the active: {:?}",
        plane.nodes("px")
    );
    assert_eq!(plane.server("px")["state"], "stopped");
    let (code, v) = plane.ctl(&["start-server", "px"]);
    assert_ne!(code, 0, "a plain server started next to px-1's agent: {v}");
    assert!(
        v.to_string()
            .contains("px-1 (host h2 last reported its agent"),
        "{v}"
    );
    // The clean-up's stop went unconfirmed: marked too (review 42, H3), which holds the server
    // off even where a host never got to list the agent it started.
    assert_eq!(
        plane.server("px")["unconfirmed_stop"]["host"],
        "h2",
        "{}",
        plane.server("px")
    );

    common::signal(host.0.id(), nix::sys::signal::Signal::SIGCONT);
    assert!(
        wait_until(Duration::from_secs(20), || !alive(agent)
            && !reports_agent("px-1")),
        "h2 did not stop px-1's agent once back"
    );
    let active_service = active_service.unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || !alive(active_service)),
        "px-1's service outlived its agent"
    );
    check_overlaps(&log);
    // Confirmed: the group starts, and its hosts listing its agents on purpose reopen no mark
    // (review 43, M1).
    plane.ctl_ok(&["start-failover", "px"]);
    assert!(
        wait_until(Duration::from_secs(10), || reports_agent("px-1")),
        "h2 does not list px-1's agent"
    );
    let row = plane.server("px");
    assert_eq!(row["state"], "protected", "{row}");
    assert!(
        row["unconfirmed_stop"].is_null(),
        "a mark under a running group: {row}"
    );
    plane.ctl_ok(&["stop-failover", "px"]);
    plane.ctl_ok(&["stop-server", "px"]);
    check_overlaps(&log);
}

/// Whether the plane's host list shows `host` with `connected` as given.
fn host_shown(plane: &Plane, host: &str, connected: bool) -> bool {
    plane.get("/api/hosts").1["hosts"]
        .as_array()
        .is_some_and(|h| {
            h.iter()
                .any(|x| x["name"] == host && x["connected"] == connected)
        })
}

/// The Hot node of `px` and its epoch, once its service logged that it acts with that epoch
/// (a kill before that line would leave the overlap checker an interval it cannot see).
fn active_logged(plane: &Plane, log: &std::path::Path) -> (String, u64) {
    let mut hot = None;
    assert!(
        wait_until(Duration::from_secs(20), || {
            hot = plane
                .nodes("px")
                .into_iter()
                .find(|n| n["mode"] == "Hot")
                .and_then(|n| Some((n["name"].as_str()?.to_string(), n["epoch"].as_u64()?)));
            hot.as_ref().is_some_and(|(node, epoch)| {
                common::read_log(log)
                    .iter()
                    .any(|l| &l.node == node && l.event == "active" && l.epoch == *epoch)
            })
        }),
        "no active whose service logged its activity: {:?}",
        plane.nodes("px")
    );
    hot.unwrap_or_default()
}

/// A node Hot with an epoch above `above`, waited for.
fn new_active(plane: &Plane, above: u64, within: Duration) -> (String, u64) {
    let mut hot = None;
    wait_until(within, || {
        hot = plane
            .nodes("px")
            .into_iter()
            .find(|n| n["mode"] == "Hot" && n["epoch"].as_u64().is_some_and(|e| e > above))
            .and_then(|n| Some((n["name"].as_str()?.to_string(), n["epoch"].as_u64()?)));
        hot.is_some()
    });
    hot.unwrap_or_else(|| panic!("no new active above epoch {above}: {:?}", plane.nodes("px")))
}

/// Issue 10's item 8 at every instant: every node of a running group learns that its
/// configuration changed before anything else changes, and from then on a standby never takes
/// over with the old one. The group runs on a second host, which asks for what to run every
/// 250 ms: the active dies the moment the import has changed the configuration, long before
/// the host restarts the standbys, and whoever takes over runs the new configuration (it logs
/// to another file).
#[test]
fn a_standby_whose_configuration_changed_never_takes_over_with_the_old_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (old_log, new_log) = (dir.path().join("old.log"), dir.path().join("new.log"));
    let plane = Plane::start(&data, &free_addr());
    let (_host, hdata) = second_host(&plane);
    running_group(&plane, "h2", &old_log, 2, &[]);
    let watcher = Watcher::start(plane.node_addrs("px"));
    let (active, epoch) = active_logged(&plane, &old_log);
    let agent = agent_pid(&hdata, &active).expect("the active's agent");

    let (_, mut cfg) = plane.get("/api/config");
    cfg["servers"][0]["server"]["service"]["command"] =
        json!([BIN, "demo-service", "--log", new_log.display().to_string()]);
    let (code, v) = plane.send(
        "POST",
        "/api/config/import",
        json!({"servers": cfg["servers"], "apply": true}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["report"]["rolling"], json!(["px"]), "{v}");
    common::signal(agent, nix::sys::signal::Signal::SIGKILL);

    let (new, new_epoch) = new_active(&plane, epoch, Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(10), || common::read_log(&new_log)
            .iter()
            .any(|l| l.node == new
                && l.event == "active"
                && l.epoch == new_epoch)),
        "the new active {new} (epoch {new_epoch}) does not run the new configuration"
    );
    let stale: Vec<_> = common::read_log(&old_log)
        .into_iter()
        .filter(|l| l.event == "active" && l.epoch > epoch)
        .collect();
    assert!(
        stale.is_empty(),
        "a node took over with the old configuration: {stale:?}"
    );
    watcher.finish();
    let both = dir.path().join("both.log");
    let text = std::fs::read_to_string(&old_log).unwrap_or_default()
        + &std::fs::read_to_string(&new_log).unwrap_or_default();
    std::fs::write(&both, text).expect("merged log");
    check_overlaps(&both);
    assert_eq!(plane.ctl(&["stop-failover", "px"]).0, 0);
    assert_eq!(plane.ctl(&["stop-server", "px"]).0, 0);
}

/// `add-failover --preferred px-2 --failback 1s`: px-2's agent has the higher `node.priority`;
/// it is the active at start, and after a kill -9 of its agent and its restart as a standby,
/// activity comes back to it.
#[test]
fn the_preferred_node_is_active_at_start_and_again_after_a_failover_with_failback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("service.log");
    let plane = Plane::start(&data, &free_addr());
    running_group(
        &plane,
        "local",
        &log,
        2,
        &["--preferred", "px-2", "--failback", "1s"],
    );
    let cfg = std::fs::read_to_string(data.join("nodes/px-2.toml")).expect("px-2's configuration");
    assert!(
        cfg.contains("priority = 1") && cfg.contains("failback = \"1s\""),
        "{cfg}"
    );
    let other =
        std::fs::read_to_string(data.join("nodes/px-1.toml")).expect("px-1's configuration");
    assert!(!other.contains("priority"), "{other}");
    assert_eq!(plane.server("px")["failover"]["failback"], "1s");

    let watcher = Watcher::start(plane.node_addrs("px"));
    let (active, epoch) = active_logged(&plane, &log);
    assert_eq!(
        active, "px-2",
        "the preferred node is not the active at start"
    );
    let agent = agent_pid(&data, "px-2").expect("px-2's agent");
    common::signal(agent, nix::sys::signal::Signal::SIGKILL);
    let (taker, taken) = new_active(&plane, epoch, Duration::from_secs(10));
    assert_ne!(taker, "px-2");
    // Its host starts px-2 again; a ready standby for 1 s, it gets activity back.
    let (back, back_epoch) = new_active(&plane, taken, Duration::from_secs(30));
    assert_eq!(
        back, "px-2",
        "activity did not come back to the preferred node"
    );
    watcher.finish();
    check_overlaps(&log);
    assert_eq!(plane.ctl(&["stop-failover", "px"]).0, 0);
    assert_eq!(plane.ctl(&["stop-server", "px"]).0, 0);
    // Started again from the stopped server: the release recorded that failover is stopped,
    // which keeps every node off the group; the first node booted clears it and is active.
    let (code, v) = plane.ctl(&["start-failover", "px"]);
    assert_eq!(code, 0, "{v}");
    let (again, _) = new_active(&plane, back_epoch, Duration::from_secs(30));
    assert_eq!(again, "px-2", "the preferred node is not the active again");
    check_overlaps(&log);
    assert_eq!(plane.ctl(&["stop-failover", "px"]).0, 0);
    assert_eq!(plane.ctl(&["stop-server", "px"]).0, 0);
}

/// Review 30, H1, and review 31: a plain server whose host has gone silent is not Stopped on
/// the plane's word alone: it may still run (a released service acts unfenced), and start
/// failover, allowed from Stopped, would let the group take over next to it. `stop-server`
/// is refused and the server stays running; `--force` (the machine is gone for good) stops
/// it in the inventory; the host, back, stops the process.
#[test]
fn a_server_on_a_silent_host_is_not_stopped_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let log = dir.path().join("service.log");
    let plane = Plane::start(&data, &free_addr());
    let (host, _hdata) = second_host(&plane);
    add_demo_server(&plane, "sx", "h2", &log);
    plane.ctl_ok(&["start-server", "sx"]);
    let pid = plane.server("sx")["process"]["pid"]
        .as_u64()
        .expect("the server's pid") as u32;
    common::signal(host.0.id(), nix::sys::signal::Signal::SIGSTOP);
    assert!(
        wait_until(Duration::from_secs(15), || host_shown(&plane, "h2", false)),
        "h2 still shown connected"
    );
    let (code, v) = plane.ctl(&["stop-server", "sx"]);
    common::signal(host.0.id(), nix::sys::signal::Signal::SIGCONT);
    assert_ne!(code, 0, "stopped on a silent host's behalf: {v}");
    assert!(
        v.to_string().contains("host h2 has not reported for"),
        "{v}"
    );
    assert_eq!(plane.server("sx")["state"], "running");
    assert!(alive(pid));
    // The same, its machine declared gone: Stopped; the host, answering again, stops it.
    common::signal(host.0.id(), nix::sys::signal::Signal::SIGSTOP);
    assert!(wait_until(Duration::from_secs(15), || host_shown(
        &plane, "h2", false
    )));
    let (code, v) = plane.ctl(&["stop-server", "sx", "--force"]);
    common::signal(host.0.id(), nix::sys::signal::Signal::SIGCONT);
    assert_eq!(code, 0, "{v}");
    assert_eq!(plane.server("sx")["state"], "stopped");
    assert!(
        wait_until(Duration::from_secs(15), || !alive(pid)),
        "the host did not stop the server once back"
    );
}
