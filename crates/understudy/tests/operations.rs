//! Operations (issue 12): shell completions, machine-readable logs.

mod common;
mod skip;

use common::run_cli;

#[test]
fn completion_scripts_for_bash_zsh_and_fish_name_the_subcommands() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef understudy"),
        ("fish", "complete -c understudy"),
    ] {
        let (code, out, err) = run_cli(&["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: no {marker:?} in the script");
        for sub in ["agent", "switchover", "serve", "ctl"] {
            assert!(
                out.contains(sub),
                "{shell}: the script does not know `{sub}`"
            );
        }
    }
    let (code, _, err) = run_cli(&["completions", "tcsh"]);
    assert_eq!(code, 2, "an unknown shell is a usage error: {err}");
}

#[test]
fn json_logs_are_one_object_per_line_with_stable_fields() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = common::free_addr();
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nname = \"a\"\ngroup = \"logs\"\nadmin = \"{admin}\"\n\n[activation]\nmode = \"trylock\"\nlock_file = \"{}\"\n\n[service]\ncommand = [\"sleep\", \"1000\"]\nstandby = \"cold\"\n",
            dir.path().join("g.lock").display()
        ),
    )
    .expect("config");
    let child = Command::new(common::BIN)
        .args(["--log-format", "json", "agent", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    assert!(
        common::wait_until(std::time::Duration::from_secs(10), || {
            common::get_json(&admin, "/status").is_some_and(|s| s["mode"] == "Hot")
        }),
        "the agent did not become Hot"
    );
    common::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().expect("agent output");
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 3, "too few log lines: {text}");
    let mut with_epoch = 0;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v["level"].is_string() && v["message"].is_string() && v["timestamp"].is_string(),
            "{l}"
        );
        if v.get("epoch").is_some() {
            with_epoch += 1;
        }
    }
    assert!(with_epoch > 0, "no log line carries the epoch: {text}");
}

/// `understudy top` in a real terminal (tmux): the group live, a takeover shown in place, q quits.
#[test]
fn top_shows_the_group_live_in_a_terminal() {
    use std::process::Command;
    use std::time::Duration;
    let Some(tmux) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("tmux"))
            .find(|p| p.is_file())
    }) else {
        return skip::skip(
            "top_shows_the_group_live_in_a_terminal",
            "tmux is not installed (Debian: tmux)",
        );
    };
    let mut g = common::Group::new("trylock", "cold");
    g.start("a");
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    g.start("b");
    g.wait_mode("b", "Warm", Duration::from_secs(10));
    let session = format!("us-top-{}", std::process::id());
    let cmd = format!(
        "{} top --agent {} --interval 200ms",
        common::BIN,
        g.admin("b")
    );
    let st = Command::new(&tmux)
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "150",
            "-y",
            "40",
            &cmd,
        ])
        .status()
        .expect("tmux");
    assert!(st.success());
    let screen = || {
        Command::new(&tmux)
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    let shows =
        |what: &str| common::wait_until(Duration::from_secs(10), || screen().contains(what));
    assert!(
        shows("ACTIVE a"),
        "top does not show a active:\n{}",
        screen()
    );
    assert!(
        shows("Warm, ready"),
        "top does not show b ready:\n{}",
        screen()
    );
    g.kill9("a");
    assert!(
        shows("ACTIVE b"),
        "top did not show the takeover in place:\n{}",
        screen()
    );
    assert!(shows("epoch"), "{}", screen());
    let _ = Command::new(&tmux)
        .args(["send-keys", "-t", &session, "q"])
        .status();
    let gone = common::wait_until(Duration::from_secs(5), || {
        !Command::new(&tmux)
            .args(["has-session", "-t", &session])
            .status()
            .is_ok_and(|s| s.success())
    });
    if !gone {
        let _ = Command::new(&tmux)
            .args(["kill-session", "-t", &session])
            .status();
    }
    assert!(gone, "q did not quit top");
}

/// `understudy switchover --to NODE`: with two ready standbys, the chosen one takes over, every
/// time; a standby that is not ready is refused and nothing moves.
#[test]
fn switchover_to_a_chosen_standby() {
    use std::time::Duration;
    let mut g = common::Group::new("trylock", "hot");
    let w = g.watch();
    g.start("a");
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    g.start("b");
    g.start("c");
    for n in ["b", "c"] {
        g.wait_ready(n, Duration::from_secs(20));
    }
    let (code, out, err) =
        common::run_cli(&["switchover", "--agent", &g.admin("a"), "--to", "nope"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("nope is not a ready standby"), "{err}");
    assert_eq!(g.mode("a").as_deref(), Some("Hot"));
    let mut active = "a";
    for to in ["c", "b", "c"] {
        let (code, out, err) =
            common::run_cli(&["switchover", "--agent", &g.admin(active), "--to", to]);
        assert_eq!(code, 0, "{out} {err}");
        assert!(out.contains(&format!("→ {to}")), "{out}");
        g.wait_mode(to, "Hot", Duration::from_secs(10));
        for n in ["a", "b", "c"].into_iter().filter(|n| *n != to) {
            g.wait_ready(n, Duration::from_secs(20));
        }
        active = to;
    }
    w.finish();
    g.check_log();
}

/// An agent's failure events survive its restart: the journal beside the lock file.
#[test]
fn takeovers_are_kept_across_a_restart_of_the_agent() {
    use std::time::Duration;
    let mut g = common::Group::new("trylock", "cold");
    g.start("a");
    g.wait_mode("a", "Hot", Duration::from_secs(10));
    g.start("b");
    g.wait_mode("b", "Warm", Duration::from_secs(10));
    g.kill9("a");
    g.wait_mode("b", "Hot", Duration::from_secs(10));
    let epoch = g.epoch("b");
    let has = |g: &common::Group| {
        g.events("b")["takeovers"].as_array().is_some_and(|t| {
            t.iter()
                .any(|t| t["epoch"].as_u64() == Some(epoch) && t["ready_ms"].is_number())
        })
    };
    assert!(common::wait_until(Duration::from_secs(5), || has(&g)));
    g.sigterm("b", Duration::from_secs(30));
    g.start("b");
    g.wait_mode("b", "Hot", Duration::from_secs(10));
    assert!(
        has(&g),
        "after a restart b no longer lists its takeover at epoch {epoch}: {}",
        g.events("b")
    );
}
