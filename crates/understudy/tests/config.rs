//! Bad configurations are refused at start with exit code 2, naming the file, the key and the
//! reason; `check-config` validates without starting.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A valid configuration with `replace` applied (each `(from, to)` must match once).
fn config(dir: &Path, admin: &str, replace: &[(&str, &str)]) -> String {
    let mut t = format!(
        r#"[node]
name = "a"
group = "g"
admin = "{admin}"

[activation]
mode = "trylock"
lock_file = "{lock}"
heartbeat_delay = "2s"

[service]
command = ["sleep", "1000"]
standby = "cold"
activate_signal = "SIGUSR1"
"#,
        lock = dir.join("g.lock").display()
    );
    for (from, to) in replace {
        assert_eq!(t.matches(from).count(), 1, "{from:?} must occur once");
        t = t.replace(from, to);
    }
    t
}

/// A bad configuration: its name, the line of a good one it spoils and what it puts there, and
/// the key the error must name.
type Case<'a> = (&'a str, &'a str, &'a str, &'a str);

/// Lines of the good configuration that several cases spoil.
const DELAY: &str = r#"heartbeat_delay = "2s""#;
const COMMAND: &str = r#"command = ["sleep", "1000"]"#;
const SIGNAL: &str = r#"activate_signal = "SIGUSR1""#;

/// Run the agent on `text`; it must exit 2 at once with the file and `key` on stderr.
fn refused(dir: &Path, name: &str, text: &str, key: &str) {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let mut child = Command::new(BIN)
        .arg("agent")
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let st = exit_within(&mut child, Duration::from_secs(10), || {
        format!("{name}: the agent started on a bad configuration:\n{text}")
    });
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(
        st.code(),
        Some(2),
        "{name}: exit status {st}, stderr {err:?}"
    );
    assert!(
        err.contains(&file.display().to_string()),
        "{name}: file not named in {err:?}"
    );
    assert!(err.contains(key), "{name}: key {key} not named in {err:?}");
    // check-config agrees (the address in use can only be found by binding it).
    if name != "admin_in_use" {
        let (code, _, cerr) = run_cli(&["check-config", &file.display().to_string()]);
        assert_eq!(code, 2, "{name}: check-config exit code, stderr {cerr:?}");
        assert!(
            cerr.contains(key),
            "{name}: check-config does not name {key}: {cerr:?}"
        );
    }
}

#[test]
fn every_kind_of_bad_configuration_is_refused_with_exit_2_and_the_key() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let admin = free_addr();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let (admin, busy_addr) = (admin.as_str(), busy_addr.as_str());
    // name, the line of the good file, what it is spoilt into, the key the error must name
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("unknown_key", r#"group = "g""#, "group = \"g\"\ncolour = \"blue\"", "colour"),
        ("unknown_section_key", r#"standby = "cold""#, "standby = \"cold\"\nrestart = true", "restart"),
        ("bad_mode", r#"mode = "trylock""#, r#"mode = "lukewarm""#, "activation.mode"),
        ("bad_standby", r#"standby = "cold""#, r#"standby = "tepid""#, "service.standby"),
        ("bad_duration", DELAY, r#"heartbeat_delay = "soon""#, "activation.heartbeat_delay"),
        ("zero_duration", DELAY, r#"heartbeat_delay = "0s""#, "activation.heartbeat_delay"),
        ("wrong_type", DELAY, "heartbeat_delay = 2", "activation.heartbeat_delay"),
        ("bad_address", admin, "nope", "node.admin"),
        ("admin_in_use", admin, busy_addr, "node.admin"),
        ("no_lock_dir", "g.lock", "no/such/dir/g.lock", "activation.lock_file"),
        ("empty_command", COMMAND, "command = []", "service.command"),
        ("unknown_program", COMMAND, r#"command = ["no-such-program-xyz"]"#, "service.command"),
        ("unknown_signal", SIGNAL, r#"activate_signal = "SIGFOO""#, "service.activate_signal"),
        ("uncatchable_signal", SIGNAL, r#"activate_signal = "SIGKILL""#, "service.activate_signal"),
        ("bad_name", r#"name = "a""#, r#"name = "a/b""#, "node.name"),
        ("missing_key", "mode = \"trylock\"\n", "", "mode"),
        ("syntax", "[service]", "[service", "(syntax)"),
        ("heartbeat_interval_too_long", r#"mode = "trylock""#,
            "mode = \"tryheartbeat\"\nheartbeat_interval = \"1500ms\"", "activation.heartbeat_interval"),
    ];
    for (name, from, to, key) in cases {
        refused(dir, name, &config(dir, admin, &[(from, to)]), key);
    }
    drop(busy);
}

#[test]
fn check_config_accepts_a_good_file_and_refuses_a_missing_one() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("good.toml");
    std::fs::write(&file, config(d.path(), &free_addr(), &[])).unwrap();
    let (code, out, err) = run_cli(&["check-config", &file.display().to_string()]);
    assert_eq!(code, 0, "check-config on a good file: {out} {err}");
    assert!(out.contains("ok"), "{out}");
    let missing = d.path().join("missing.toml");
    let (code, _, err) = run_cli(&["check-config", &missing.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
}
