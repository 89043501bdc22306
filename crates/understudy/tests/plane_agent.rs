//! The agent's admin API as the control plane uses it, against real agents: `POST /service/release`
//! (stop failover as a true pause: the service keeps running, the agent leaves) and
//! `GET /openapi.json` (the document matches the router, and every documented answer parses).

mod common;
mod plane_common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{alive, get_json, pgid_of, post, wait_exit, wait_until, Group};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Review 26, F3: a standby whose agent is stopped (SIGSTOP) writes no record, and its record goes
/// stale; released on that record, the active left its service acting and the standby, once
/// continued, took the group over: two actives. Its agent's process tells it is alive.
#[test]
fn release_is_refused_while_a_stopped_standby_agent_lives() {
    let mut g = Group::new("trylock", "hot");
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    g.wait_ready("b", Duration::from_secs(15));
    g.sigstop("b");
    // Five heartbeat intervals make a record stale; 1.2 s leaves no doubt.
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(Duration::from_millis(1200));
    let (code, body) = post(&g.admin("a"), "/service/release");
    g.sigcont("b");
    assert_eq!(code, 409, "released with b's agent alive: {body}");
    // And why b counts, its record being stale.
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("node b is still in the group (its agent, pid")),
        "{body}"
    );
    assert_eq!(g.mode("a").as_deref(), Some("Hot"));
    w.finish();
}

#[test]
fn release_hands_the_running_service_over_and_the_agent_leaves() {
    let mut g = Group::new("trylock", "hot");
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    g.wait_ready("b", Duration::from_secs(15));
    let svc = g
        .wait_service_pid("a", Duration::from_secs(10))
        .expect("a's service");

    // Never while a standby is in the group: it would take over while the service keeps acting.
    let (code, body) = post(&g.admin("a"), "/service/release");
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("node b")),
        "{body}"
    );
    // A standby has nothing to hand over.
    let (code, body) = post(&g.admin("b"), "/service/release");
    assert_eq!(code, 409, "{body}");
    assert_eq!(g.mode("a").as_deref(), Some("Hot"));
    assert!(alive(svc));

    g.sigterm("b", Duration::from_secs(15));
    // a may still read b's record as alive for a moment after b exited.
    let answer = release_once_alone(&g, "a");
    assert_eq!(answer["pid"].as_u64(), Some(u64::from(svc)), "{answer}");
    assert_eq!(answer["node"], "a");
    assert!(answer["epoch"].as_u64().is_some_and(|e| e >= 1), "{answer}");

    let mut agent = g
        .nodes
        .get_mut("a")
        .and_then(|n| n.child.take())
        .expect("agent a");
    let st = wait_exit(&mut agent, Duration::from_secs(10)).expect("agent a did not exit");
    assert!(st.success(), "agent a exited with {st}");
    // The service outlives its agent: nothing killed it, not its guardian, not the agent's exit.
    assert!(
        !wait_until(Duration::from_secs(2), || !alive(svc)),
        "the released service died with its agent"
    );
    w.finish();

    // A plain server now: stopping its process group stops it (the guardian ignores SIGTERM and
    // exits with it).
    let pg = pgid_of(svc).expect("the service's process group");
    assert_ne!(pg, svc, "the guardian leads the service's group");
    let _ = killpg(Pid::from_raw(pg as i32), Signal::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(10), || !alive(svc) && !alive(pg)),
        "the released service or its guardian still runs after SIGTERM to its group"
    );
}

/// Review 28, H1, on a lock file: a release records the stop of failover beside the lock
/// (`<lock>.stopped`) before it hands the service over, and no agent of the group takes the
/// free lock while it is there: not one started afterwards (as a standby that missed the
/// release would come back), nor one asked to activate. Starting failover again is refused
/// while the released service runs on this machine, and once it is stopped, the standby takes
/// the group.
#[test]
fn a_release_stops_failover_until_it_is_started_again_once_the_service_is_gone() {
    let mut g = Group::new("trylock", "hot");
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    g.wait_ready("b", Duration::from_secs(15));
    let e1 = g.epoch("a");
    g.sigterm("b", Duration::from_secs(15));
    let answer = release_once_alone(&g, "a");
    let svc = answer["pid"].as_u64().expect("the released pid") as u32;
    let mark: Value = serde_json::from_slice(
        &std::fs::read(understudy_coordinator::stop_mark_path(&g.lock)).expect("the stop file"),
    )
    .expect("the stop file is JSON");
    assert_eq!(mark["node"], "a", "{mark}");
    assert_eq!(mark["pid"], svc, "{mark}");
    assert_eq!(mark["epoch"], e1, "{mark}");

    g.start("b");
    g.wait_status("b", "failover stopped", Duration::from_secs(10), |s| {
        s["waiting"]
            .as_str()
            .is_some_and(|w| w.contains("failover is stopped: node a released its service"))
    });
    g.stays("b", "Warm", Duration::from_secs(1));
    // An operator's activation does not pass it either.
    let (code, body) = g.put_hot("b");
    assert_eq!(code, 409, "activated next to the released service: {body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("failover is stopped for the group (node a released")),
        "{body}"
    );
    assert_eq!(g.mode("b").as_deref(), Some("Warm"));

    let (code, body) = post(&g.admin("b"), "/failover/start");
    assert_eq!(
        code, 409,
        "failover started while the released service runs: {body}"
    );
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains(&format!(
            "the released service, pid {svc}, still runs on this machine"
        ))),
        "{body}"
    );
    assert!(understudy_coordinator::stop_mark_path(&g.lock).exists());

    let pg = pgid_of(svc).expect("the service's process group");
    let _ = killpg(Pid::from_raw(pg as i32), Signal::SIGTERM);
    assert!(wait_until(Duration::from_secs(10), || !alive(svc)));
    let (code, body) = post(&g.admin("b"), "/failover/start");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["stop"]["pid"], svc, "{body}");
    g.wait_mode("b", "Hot", Duration::from_secs(10));
    assert!(g.epoch("b") > e1);
    assert!(!understudy_coordinator::stop_mark_path(&g.lock).exists());
    g.expect_actives(2);
    w.finish();
}

/// `POST /service/release` on `node`, retried for a moment: it may still read a standby that
/// just exited as alive. The 200's body.
fn release_once_alone(g: &Group, node: &str) -> Value {
    let mut answer = Value::Null;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let (c, b) = post(&g.admin(node), "/service/release");
            answer = b;
            c == 200
        }),
        "release refused once alone: {answer}"
    );
    answer
}

/// A child process killed on drop.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request with an optional JSON body; (status, content type, body).
fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> (u16, String, String) {
    let data = body.map(Value::to_string).unwrap_or_default();
    plane_common::request(
        addr,
        method,
        path,
        body.map(|_| "application/json"),
        data.as_bytes(),
    )
}

/// Checks `v` against the subset of JSON Schema the document uses; every field of an answer
/// must be documented (an object with `properties` admits no other key).
fn conforms(v: &Value, schema: &Value, doc: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let target = doc
            .pointer(r.trim_start_matches('#'))
            .ok_or(format!("{at}: dangling $ref {r}"))?;
        return conforms(v, target, doc, at);
    }
    if let Some(c) = schema.get("const") {
        if v != c {
            return Err(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(e) = schema["enum"].as_array() {
        if !e.contains(v) {
            return Err(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let is = |t: &str| match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "null" => v.is_null(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|t| is(t)) {
        return Err(format!("{at}: {v} is not {types:?}"));
    }
    if let (Some(o), Some(props)) = (v.as_object(), schema["properties"].as_object()) {
        for k in schema["required"].as_array().into_iter().flatten() {
            let k = k.as_str().unwrap_or("");
            if !o.contains_key(k) {
                return Err(format!("{at}: required {k} missing"));
            }
        }
        for (k, sub) in o {
            let s = props.get(k).ok_or(format!("{at}: {k} is not documented"))?;
            conforms(sub, s, doc, &format!("{at}.{k}"))?;
        }
    }
    if let (Some(a), Some(items)) = (v.as_array(), schema.get("items")) {
        for (i, x) in a.iter().enumerate() {
            conforms(x, items, doc, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// `(method, path)` of every `.route("PATH", METHOD(handler))` in the admin API's router.
fn router_routes() -> BTreeSet<(String, String)> {
    let src = include_str!("../../agent/src/api.rs");
    let mut out = BTreeSet::new();
    for part in src.split(".route(\"").skip(1) {
        let Some((path, rest)) = part.split_once('"') else {
            continue;
        };
        let rest = rest.trim_start_matches(',').trim_start();
        let method: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
        out.insert((method, path.to_string()));
    }
    out
}

#[test]
fn the_openapi_document_matches_the_router_and_real_answers() {
    let mut g = Group::new("trylock", "hot");
    let w = g.add_watched_pair();
    g.start_a_hot_then_b();
    g.wait_ready("b", Duration::from_secs(15));
    let a = g.admin("a");
    let doc = get_json(&a, "/openapi.json").expect("GET /openapi.json");
    assert_eq!(doc["openapi"], "3.1.0");

    // Every route of the router is documented, and every documented operation is routed.
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .into_iter()
                .flatten()
                .map(move |(m, _)| (m.clone(), p.clone()))
        })
        .collect();
    let routed = router_routes();
    assert!(routed.len() >= 10, "router parse found {routed:?}");
    assert_eq!(routed, documented, "router vs document");

    // Each operation called for real: its status is documented, and a documented JSON answer
    // parses against its schema. Switchover last: it moves activity to b.
    let b = g.admin("b");
    let svc = g
        .wait_service_pid("a", Duration::from_secs(10))
        .expect("a's service");
    let calls: Vec<(&str, &str, &str, Option<Value>, u16)> = vec![
        (a.as_str(), "get", "/service/activationmode", None, 200),
        (a.as_str(), "get", "/status", None, 200),
        (b.as_str(), "get", "/status", None, 200),
        (a.as_str(), "get", "/group", None, 200),
        (a.as_str(), "get", "/events", None, 200),
        (a.as_str(), "get", "/metrics", None, 200),
        (a.as_str(), "get", "/healthz", None, 200),
        (a.as_str(), "get", "/openapi.json", None, 200),
        (
            a.as_str(),
            "post",
            "/service/active-ack",
            Some(json!({"pid": svc, "epoch": 1})),
            202,
        ),
        (b.as_str(), "put", "/service/activationmode/hot", None, 409),
        (a.as_str(), "post", "/service/release", None, 409),
        // Nothing to clear: failover runs (the stop itself is
        // `a_release_stops_failover_until_it_is_started_again_once_the_service_is_gone`).
        (b.as_str(), "post", "/failover/start", None, 200),
        // The active told that its configuration changed keeps acting; b takes over below.
        (a.as_str(), "put", "/config/wanted/1", None, 200),
        (a.as_str(), "post", "/service/switchover?to=b", None, 200),
    ];
    let mut covered = BTreeSet::new();
    for (addr, method, target, body, want) in calls {
        let path = target.split('?').next().unwrap_or(target);
        let path = match path.strip_prefix("/config/wanted/") {
            Some(_) => "/config/wanted/{generation}",
            None => path,
        };
        covered.insert((method.to_string(), path.to_string()));
        let (code, ctype, text) = request(addr, &method.to_uppercase(), target, body.as_ref());
        assert_eq!(code, want, "{method} {target}: {text}");
        let resp = &doc["paths"][path][method]["responses"][code.to_string()];
        assert!(
            resp.is_object(),
            "{method} {path}: status {code} is not documented"
        );
        if let Some(schema) = resp.pointer("/content/application~1json/schema") {
            assert!(
                ctype.starts_with("application/json"),
                "{method} {path}: {ctype}"
            );
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
            if let Err(e) = conforms(&v, schema, &doc, &format!("{method} {path} {code}")) {
                panic!("{e}\nanswer: {v}");
            }
        } else {
            assert!(
                resp.pointer("/content/text~1plain").is_some(),
                "{method} {path}"
            );
            assert!(ctype.starts_with("text/plain") && !text.is_empty());
        }
    }
    assert_eq!(covered, documented, "an operation was not called");
    // The former active still runs the configuration it was told is outdated: it stays aside.
    let st = g.wait_status(
        "a",
        "a standby aside for its configuration",
        Duration::from_secs(10),
        |s| {
            s["mode"] == "Warm"
                && s["waiting"]
                    .as_str()
                    .is_some_and(|w| w.contains("configuration changed"))
        },
    );
    assert_eq!(st["ready"], false, "{st}");
    w.finish();
}

/// The price server's settings from a file whose upstream lives in a shared fragment: read for
/// real (the server connects to the exchange the fragment names), and a wrong value in the
/// fragment is refused at start naming the fragment and the key.
#[test]
fn price_server_takes_its_upstream_from_a_shared_fragment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exch = common::free_addr();
    let mut sim = Kill(
        std::process::Command::new(common::BIN)
            .args(["exchange-sim", "--listen", &exch])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("exchange-sim"),
    );
    std::fs::create_dir(dir.path().join("shared")).expect("mkdir");
    let frag = dir.path().join("shared/upstream.toml");
    let cfg = dir.path().join("px-1.toml");
    let http = common::free_addr();
    std::fs::write(
        &cfg,
        format!(
            "include = [\"shared/upstream.toml\"]\nlisten = {:?}\nhttp = {http:?}\n",
            common::free_addr()
        ),
    )
    .expect("config");
    let cfg_s = cfg.display().to_string();

    std::fs::write(&frag, "upstream = \"nowhere\"\n").expect("fragment");
    let (code, out, err) = common::run_cli(&["price-server", "--config", &cfg_s]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("shared/upstream.toml") && err.contains("upstream"),
        "{err}"
    );

    std::fs::write(&frag, format!("upstream = {exch:?}\n")).expect("fragment");
    let mut server = Kill(
        std::process::Command::new(common::BIN)
            .args(["price-server", "--config", &cfg_s])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("price-server"),
    );
    assert!(
        wait_until(Duration::from_secs(15), || get_json(&http, "/status")
            .is_some_and(|s| s["upstream_connected"] == true)),
        "the price server did not connect to the upstream named in the fragment: {:?}",
        get_json(&http, "/status")
    );
    assert!(server.0.try_wait().expect("try_wait").is_none());
    let _ = sim.0.try_wait();
}
