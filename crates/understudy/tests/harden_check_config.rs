//! `check-config` and the agent's start check the built-in services' own configuration: a FIX
//! gateway whose configuration is wrong, or a price server with bad arguments, is found before
//! anything runs (exit 2, naming the service's file and key), not at the takeover that would
//! start it.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const S: Duration = Duration::from_secs(1);

/// A fresh number for each file a test writes.
fn serial() -> u32 {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// An agent configuration (cold standby, so the agent itself would never start the service
/// before a takeover) protecting `command`.
fn agent_config(dir: &Path, command: &[&str]) -> String {
    let p = dir.join(format!("agent-{}.toml", serial()));
    let text = format!(
        "[node]\nname = \"a\"\ngroup = \"g\"\nadmin = {}\n\n[activation]\nmode = \"warm\"\nlock_file = {}\n\n[service]\ncommand = {}\nstandby = \"cold\"\n",
        q(&free_addr()),
        q(&dir.join("g.lock").display().to_string()),
        arr(command)
    );
    std::fs::write(&p, text).expect("write config");
    p.display().to_string()
}

fn gateway_config(dir: &Path, extra: &str) -> String {
    let p = dir.join(format!("gw-{}.toml", serial()));
    std::fs::create_dir_all(dir.join("store")).expect("store dir");
    std::fs::write(
        &p,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\ncomp_id = \"GW\"\nstore_dir = {}\ndefault_route = \"EXCH\"\n{extra}\n\n[[client]]\ncomp_id = \"CLIENT1\"\n\n[[upstream]]\nname = \"EXCH\"\nconnect = [\"127.0.0.1:9\"]\ntarget_comp_id = \"EXCH\"\n",
            q(&dir.join("store").display().to_string())
        ),
    )
    .expect("write gateway config");
    p.display().to_string()
}

/// The agent refuses to start on `config` (exit 2) and says `want`.
fn agent_refuses(config: &str, want: &str) {
    let mut child = std::process::Command::new(BIN)
        .args(["agent", "--config", config])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agent");
    let st = exit_within(&mut child, 10 * S, || {
        format!("the agent started on {config} instead of refusing")
    });
    let mut err = String::new();
    use std::io::Read;
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(
        err.contains(want),
        "the agent's error does not say {want:?}:\n{err}"
    );
}

#[test]
fn a_bad_gateway_configuration_is_found_by_check_config_and_at_agent_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = gateway_config(dir.path(), "");
    let cfg = agent_config(dir.path(), &[BIN, "fix-gateway", "--config", &good]);
    let (code, out, err) = run_cli(&["check-config", &cfg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("the FIX gateway's configuration") && out.contains("is valid"),
        "check-config does not say it checked the gateway's file:\n{out}"
    );

    let bad = gateway_config(dir.path(), "sesion_timeout = \"5s\"");
    let cfg = agent_config(dir.path(), &[BIN, "fix-gateway", "--config", &bad]);
    let (code, out, err) = run_cli(&["check-config", &cfg]);
    assert_eq!(
        code, 2,
        "check-config passed a bad gateway configuration:\n{out}{err}"
    );
    assert!(
        err.contains(&bad) && err.contains("sesion_timeout"),
        "the error must name the gateway's file and key:\n{err}"
    );
    agent_refuses(&cfg, "sesion_timeout");

    let missing = dir.path().join("nope.toml").display().to_string();
    let cfg = agent_config(dir.path(), &[BIN, "fix-gateway", "--config", &missing]);
    let (code, _, err) = run_cli(&["check-config", &cfg]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn bad_price_server_arguments_are_found_by_check_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = |listen: &str| {
        agent_config(
            dir.path(),
            &[
                BIN,
                "price-server",
                "--upstream",
                "127.0.0.1:9100",
                "--listen",
                listen,
            ],
        )
    };
    let (code, out, err) = run_cli(&["check-config", &args("127.0.0.1:9200")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("price server's arguments are valid"), "{out}");
    let cfg = args("nowhere");
    let (code, _, err) = run_cli(&["check-config", &cfg]);
    assert_eq!(code, 2, "check-config passed --listen nowhere:\n{err}");
    assert!(err.contains("nowhere"), "{err}");
    agent_refuses(&cfg, "nowhere");
    // Any other program is not understudy's to judge.
    let (code, _, err) = run_cli(&["check-config", &agent_config(dir.path(), &["sleep", "x"])]);
    assert_eq!(code, 0, "{err}");
}

/// A replicated gateway's `sync_timeout − timeout` must cover its agent's health check
/// (`max(interval, timeout) + timeout`): otherwise the active can go on without a standby whose
/// agent still reports it ready. Both values live in two files; `check-config` of the agent and
/// its start read both and refuse the pair, naming each key, its value and the bound. A
/// replicated gateway under an agent without an HTTP health check is refused too.
#[test]
fn a_sync_timeout_that_does_not_cover_the_agents_health_check_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = dir.path().join("repl.token");
    std::fs::write(&token, "s3cret\n").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let gw = |mode: &str, sync_timeout: &str| {
        gateway_config(
            dir.path(),
            &format!(
                "\n[replication]\nmode = \"{mode}\"\nlisten = \"127.0.0.1:9880\"\npeers = [\"127.0.0.2:9880\"]\ntoken_file = {}\ntimeout = \"2s\"\nsync_timeout = \"{sync_timeout}\"\n",
                q(&token.display().to_string())
            ),
        )
    };
    let agent = |gw: &str, health: &str| {
        let cfg = agent_config(dir.path(), &[BIN, "fix-gateway", "--config", gw]);
        let text = std::fs::read_to_string(&cfg).expect("read");
        std::fs::write(&cfg, format!("{text}\n{health}")).expect("write");
        cfg
    };
    let http = |interval: &str, timeout: &str| {
        format!("[health]\nhttp = \"http://127.0.0.1:9879/health\"\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\n")
    };

    // 3s − 2s = 1s > 500ms + 300ms.
    let ok = agent(&gw("sync", "3s"), &http("500ms", "300ms"));
    let (code, out, err) = run_cli(&["check-config", &ok]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("is valid"), "{out}");

    // 1s is not more than 800ms + 300ms; nor than 400ms + 800ms (a slow check delays the next).
    for (interval, timeout, needed) in [("800ms", "300ms", "1.1s"), ("400ms", "800ms", "1.6s")] {
        let cfg = agent(&gw("sync", "3s"), &http(interval, timeout));
        let (code, out, err) = run_cli(&["check-config", &cfg]);
        assert_eq!(code, 2, "check-config passed it:\n{out}{err}");
        for want in [
            "replication.sync_timeout (3s)",
            "replication.timeout (2s)",
            &format!("health.interval ({interval})"),
            &format!("health.timeout ({timeout})"),
            &format!("must be more than {needed}"),
        ] {
            assert!(
                err.contains(want),
                "the error does not say {want:?}:\n{err}"
            );
        }
        agent_refuses(&cfg, "replication.sync_timeout");
    }
    // async never waits for a standby: only the HTTP check is required.
    let cfg = agent(&gw("async", "3s"), &http("800ms", "300ms"));
    let (code, out, err) = run_cli(&["check-config", &cfg]);
    assert_eq!(code, 0, "{out}{err}");

    // No HTTP check: the agent could never learn that its standby is not in sync.
    for health in ["", "[health]\ncommand = [\"true\"]\n"] {
        let cfg = agent(&gw("async", "3s"), health);
        let (code, out, err) = run_cli(&["check-config", &cfg]);
        assert_eq!(code, 2, "check-config passed it:\n{out}{err}");
        assert!(err.contains("[health] http"), "{err}");
    }
}
