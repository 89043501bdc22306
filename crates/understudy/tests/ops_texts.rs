//! What the demos and the price client print is true and readable (issue 12, item 1): a cold
//! standby is not "told by SIGUSR1", FIX session events are words, not Rust debug text, and the
//! price client names the previous primary after a failover and says each event once.

mod common;
mod skip;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, BIN};
use understudy_fix::session::SessionEvent;

/// The demos and the price processes run one group at a time: on a loaded machine `demo fix`
/// (its own timeouts) is what suffers from sharing it with a price group.
static ONE_GROUP: Mutex<()> = Mutex::new(());

#[test]
fn the_demos_say_how_the_service_learns_it_is_active_and_what_fix_sessions_do() {
    let _one = ONE_GROUP.lock().unwrap_or_else(|p| p.into_inner());
    let (code, out, err) = common::run_cli(&["demo", "--nodes", "2", "--standby", "cold"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("started as active when its node is Hot"),
        "{out}"
    );
    assert!(
        !out.contains("SIGUSR1"),
        "a cold standby is never signalled: {out}"
    );
    assert!(out.contains("took over"), "{out}");
    // `demo fix` prints FIX session events as words (after the first demo: one group of
    // processes at a time).
    let (code, out, err) = common::run_cli(&["demo", "fix"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for l in out
        .lines()
        .filter(|l| l.trim_start().starts_with("session:"))
    {
        assert!(!l.contains('{') && !l.contains("Some("), "debug text: {l}");
    }
    assert!(!out.contains("ResendServed"), "{out}");
    assert!(out.contains("orders answered exactly once"), "{out}");
}

#[test]
fn fix_session_events_read_as_words() {
    let events = [
        SessionEvent::ResendServed {
            begin: 5,
            end: 9,
            resent: 3,
        },
        SessionEvent::GapDetected {
            begin: 4,
            received: 7,
        },
        SessionEvent::LoggedOn { reset: true },
        SessionEvent::SequenceReset {
            new_seq_num: 12,
            gap_fill: true,
        },
        SessionEvent::RejectReceived {
            ref_seq_num: Some(3),
            text: Some("bad tag".into()),
        },
        SessionEvent::DuplicateIgnored(8),
        SessionEvent::NewPeriod {
            start: 1_700_000_000,
        },
        SessionEvent::Garbled("checksum".into()),
    ];
    for ev in &events {
        let text = ev.to_string();
        assert!(
            !text.contains('{') && !text.contains("Some(") && !text.contains("::"),
            "debug text: {text}"
        );
    }
    assert_eq!(
        events[0].to_string(),
        "resend of MsgSeqNum 5..=9 served: 3 application message(s) resent"
    );
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], stdout: Stdio, stderr: Stdio) -> Proc {
    Proc(
        Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn"),
    )
}

/// Collect a pipe's lines on a thread.
fn collect(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            l2.lock().expect("lines").push(l);
        }
    });
    lines
}

fn text(lines: &Arc<Mutex<Vec<String>>>) -> String {
    lines.lock().expect("lines").join("\n")
}

#[test]
fn the_price_client_names_the_previous_primary_and_says_each_event_once() {
    let _one = ONE_GROUP.lock().unwrap_or_else(|p| p.into_inner());
    let exch = common::free_addr();
    let (s1, s2) = (common::free_addr(), common::free_addr());
    let _x = spawn(
        &[
            "exchange-sim",
            "--listen",
            &exch,
            "--symbols",
            "5",
            "--rate",
            "200",
        ],
        Stdio::null(),
        Stdio::null(),
    );
    // Outside an agent each server stands alone: active at epoch 0. The second starts once the
    // clients follow the first, so that the first is the primary for both.
    let mut first = spawn(
        &["price-server", "--upstream", &exch, "--listen", &s1],
        Stdio::null(),
        Stdio::null(),
    );
    let servers = format!("{s1},{s2}");
    // Stdout a pipe: plain lines, not a board redrawn in place.
    let mut plain = spawn(
        &[
            "price-client",
            "--servers",
            &servers,
            "--subscribe",
            "SYM1,SYM2",
        ],
        Stdio::piped(),
        Stdio::null(),
    );
    let plain_out = collect(plain.0.stdout.take().expect("stdout"));
    let mut json = spawn(
        &[
            "price-client",
            "--json",
            "--servers",
            &servers,
            "--subscribe",
            "SYM1,SYM2",
        ],
        Stdio::null(),
        Stdio::piped(),
    );
    let json_log = collect(json.0.stderr.take().expect("stderr"));
    let primary = format!("primary is {s1} (epoch 0)");
    assert!(
        wait_until(Duration::from_secs(15), || text(&plain_out)
            .contains(&primary)
            && text(&json_log).contains(&format!("following the primary {s1}"))),
        "the clients never followed {s1}:\n{}\n{}",
        text(&plain_out),
        text(&json_log)
    );
    let _second = spawn(
        &["price-server", "--upstream", &exch, "--listen", &s2],
        Stdio::null(),
        Stdio::null(),
    );
    // Several refreshes later, each connection is still reported once.
    assert!(
        wait_until(Duration::from_secs(15), || {
            let t = text(&plain_out);
            t.contains(&format!("connected to {s2}"))
                && t.matches("prices in the last second").count() >= 3
        }),
        "{}",
        text(&plain_out)
    );
    for s in [&s1, &s2] {
        let n = text(&plain_out)
            .matches(&format!("connected to {s}"))
            .count();
        assert_eq!(n, 1, "'connected to {s}' {n} times:\n{}", text(&plain_out));
    }
    // The primary fails: the failover names the one before.
    let _ = first.0.kill();
    let _ = first.0.wait();
    let failover = format!("failover: primary is now {s2} (epoch 0), was {s1} (epoch 0)");
    assert!(
        wait_until(Duration::from_secs(15), || text(&plain_out)
            .contains(&failover)),
        "no {failover:?}:\n{}",
        text(&plain_out)
    );
    let logged = format!("after {s1} (epoch 0)");
    assert!(
        wait_until(Duration::from_secs(15), || text(&json_log)
            .contains(&logged)),
        "the log does not name the previous primary:\n{}",
        text(&json_log)
    );
    assert!(
        !text(&json_log).contains("None"),
        "debug text in the log:\n{}",
        text(&json_log)
    );
}
