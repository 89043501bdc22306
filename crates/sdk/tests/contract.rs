//! The contract end to end with real processes: this test binary re-executes itself as a service
//! ([`child`], with `SDK_TEST_CHILD` set), plays its agent's admin API, and signals it the way the
//! agent does: as soon as `/proc` shows the activation signal handled.
//!
//! No libtest harness (`harness = false`): the service's `main` must call `init` before any
//! other thread exists, and libtest runs each test on a thread of its own. Creating a thread
//! briefly blocks every signal in the creating thread, which `/proc` shows: the agent's signal
//! would then arrive before any handler, exactly the race `init` first in `main` rules out.
#![allow(clippy::disallowed_methods)] // real processes in real time: the test waits on threads

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use understudy_sdk::{Notice, Role};

const CHILD: &str = "SDK_TEST_CHILD";
const LONG: Duration = Duration::from_secs(10);

type Check = (&'static str, fn());

const CHECKS: [Check; 5] = [
    (
        "a_standby_is_activated_by_signal_with_the_agents_new_epoch",
        a_standby_is_activated_by_signal_with_the_agents_new_epoch,
    ),
    ("the_same_on_tokio", the_same_on_tokio),
    (
        "no_environment_runs_stand_alone_and_says_so",
        no_environment_runs_stand_alone_and_says_so,
    ),
    (
        "a_bad_environment_exits_2_naming_the_variable",
        a_bad_environment_exits_2_naming_the_variable,
    ),
    (
        "an_agent_that_never_reports_the_new_epoch_is_an_error",
        an_agent_that_never_reports_the_new_epoch_is_an_error,
    ),
];

fn main() {
    if let Ok(flavour) = std::env::var(CHILD) {
        child(&flavour);
    }
    // `cargo test -- NAME` runs the checks whose name contains NAME.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut ran = 0;
    for (name, check) in CHECKS {
        if filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())) {
            println!("test {name} ...");
            check();
            println!("test {name} ... ok");
            ran += 1;
        }
    }
    println!("test result: ok. {ran} passed");
}

/// The service: prints its role, then one line per notice, on stdout.
fn child(flavour: &str) -> ! {
    let mut service = match understudy_sdk::init() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sdk-child: {e}");
            std::process::exit(e.exit_code().into());
        }
    };
    say(&format!("role {} {}", service.role(), service.epoch()));
    if flavour == "async" {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut shutdown = service.shutdown();
            loop {
                tokio::select! {
                    n = service.next() => match n {
                        Some(Notice::Activate) => match service.activate_async().await {
                            Ok(epoch) => say(&format!("active {epoch}")),
                            Err(e) => say(&format!("failed {e}")),
                        },
                        Some(Notice::Stop) | None => {}
                    },
                    _ = shutdown.requested() => break,
                }
            }
        });
        say("stop true");
    } else {
        let shutdown = service.shutdown();
        while let Some(n) = service.recv() {
            match n {
                Notice::Activate => match service.activate() {
                    Ok(epoch) => say(&format!("active {epoch}")),
                    Err(e) => say(&format!("failed {e}")),
                },
                Notice::Stop => break,
            }
        }
        say(&format!("stop {}", shutdown.is_requested()));
    }
    std::process::exit(0);
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "sdk-child: {line}");
    let _ = out.flush();
}

/// What the fake agent saw.
#[derive(Default)]
struct Seen {
    status_requests: usize,
    acks: Vec<String>,
}

/// An admin API that answers `/status` Warm at epoch 6, then Hot at the stale epoch 6, then Hot
/// at 7, and records acknowledgements.
fn fake_agent() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            // Head, then as much body as Content-Length says.
            let (head, body) = loop {
                let n = conn.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some((h, b)) = text.split_once("\r\n\r\n") {
                    let want = h
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or(0);
                    if b.len() >= want {
                        break (h.to_string(), b.to_string());
                    }
                }
            };
            let mut seen = s.lock().unwrap();
            let answer = if head.starts_with("GET /status HTTP/1.0") {
                seen.status_requests += 1;
                match seen.status_requests {
                    1 => r#"{"node":"b","mode":"Warm","epoch":6}"#,
                    2 => r#"{"node":"b","mode":"Hot","epoch":6}"#,
                    _ => r#"{"node":"b","mode":"Hot","epoch":7}"#,
                }
            } else if head.starts_with("POST /service/active-ack HTTP/1.0") {
                seen.acks.push(body);
                "{}"
            } else {
                "?"
            };
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (addr, seen)
}

fn spawn(flavour: &str, env: &[(&str, String)]) -> (Child, std::io::Lines<BufReader<ChildStdout>>) {
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.env(CHILD, flavour)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in understudy_sdk::env::VARS {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, out)
}

/// The next line the child said, without its prefix (its stdout is this binary's too).
fn said(child: &mut Child, out: &mut std::io::Lines<BufReader<ChildStdout>>) -> String {
    let mut other = String::new();
    for line in out.by_ref() {
        let line = line.expect("read");
        if let Some((_, l)) = line.split_once("sdk-child: ") {
            return l.to_string();
        }
        other.push_str(&line);
        other.push('\n');
    }
    let status = wait_exit(child);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    panic!("the child ended ({status}) without a word; stdout:\n{other}stderr:\n{err}");
}

/// The agent's test: is `sig` blocked, ignored or caught by `pid`?
fn handles(pid: u32, sig: Signal) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let bit = 1u64 << (sig as i32 - 1);
    status.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            matches!(k, "SigBlk" | "SigIgn" | "SigCgt")
                && u64::from_str_radix(v.trim(), 16).is_ok_and(|m| m & bit != 0)
        })
    })
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        assert!(Instant::now() < deadline, "the child did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn standby_activated_by_signal(flavour: &str) {
    let (admin, seen) = fake_agent();
    let (mut child, mut out) = spawn(
        flavour,
        &[
            ("UNDERSTUDY_ROLE", "standby".into()),
            ("UNDERSTUDY_EPOCH", "6".into()),
            ("UNDERSTUDY_GROUP", "g".into()),
            ("UNDERSTUDY_NODE", "b".into()),
            ("UNDERSTUDY_ADMIN", admin.to_string()),
        ],
    );
    let pid = child.id();
    let deadline = Instant::now() + LONG;
    while !handles(pid, Signal::SIGUSR1) {
        assert!(Instant::now() < deadline, "SIGUSR1 never handled");
        std::hint::spin_loop();
    }
    // At once, as the agent does: this must neither kill it nor be lost.
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR1).expect("kill");
    assert_eq!(said(&mut child, &mut out), "role standby 6");
    assert_eq!(
        said(&mut child, &mut out),
        "active 7",
        "the epoch is the first Hot one above 6"
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.status_requests, 3,
            "Warm and stale answers are retried"
        );
        assert_eq!(seen.acks, vec![format!("{{\"pid\":{pid},\"epoch\":7}}")]);
    }
    // A second activation signal changes nothing and asks nobody.
    kill(Pid::from_raw(pid as i32), Signal::SIGUSR1).expect("kill");
    assert_eq!(said(&mut child, &mut out), "active 7");
    assert_eq!(seen.lock().unwrap().status_requests, 3);

    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("kill");
    assert_eq!(said(&mut child, &mut out), "stop true");
    assert!(wait_exit(&mut child).success());
}

fn a_standby_is_activated_by_signal_with_the_agents_new_epoch() {
    standby_activated_by_signal("sync");
}

fn the_same_on_tokio() {
    standby_activated_by_signal("async");
}

fn no_environment_runs_stand_alone_and_says_so() {
    let (mut child, mut out) = spawn("sync", &[]);
    assert_eq!(said(&mut child, &mut out), "role active 0");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("kill");
    assert_eq!(said(&mut child, &mut out), "stop true");
    assert!(wait_exit(&mut child).success());
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert!(err.contains("stand-alone, active at epoch 0"), "{err}");
}

fn a_bad_environment_exits_2_naming_the_variable() {
    for (vars, named) in [
        (
            vec![("UNDERSTUDY_ROLE", "standby"), ("UNDERSTUDY_EPOCH", "x")],
            "UNDERSTUDY_EPOCH",
        ),
        (vec![("UNDERSTUDY_NODE", "b")], "UNDERSTUDY_ROLE"),
        (
            vec![("UNDERSTUDY_ROLE", "standby"), ("UNDERSTUDY_EPOCH", "1")],
            "UNDERSTUDY_ADMIN",
        ),
    ] {
        let env: Vec<(&str, String)> = vars.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let (mut child, _out) = spawn("sync", &env);
        let status = wait_exit(&mut child);
        assert_eq!(status.code(), Some(2), "{vars:?}");
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read");
        assert!(err.contains(named), "{vars:?}: {err}");
    }
}

fn an_agent_that_never_reports_the_new_epoch_is_an_error() {
    // Always Warm: the service must give up within its wait, not act.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let body = r#"{"mode":"Warm","epoch":9}"#;
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let agent = understudy_sdk::Agent::new(addr, Duration::from_millis(200));
    let t0 = Instant::now();
    let err = agent
        .wait_for_epoch(8, Duration::from_millis(300))
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(err, understudy_sdk::AgentError::NoEpoch { above: 8, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Warm at epoch 9"), "{err}");
    // Nobody listening: also an error within the wait.
    drop(TcpListener::bind("127.0.0.1:0"));
    let closed =
        understudy_sdk::Agent::new("127.0.0.1:9".parse().unwrap(), Duration::from_millis(100));
    assert!(closed
        .wait_for_epoch(0, Duration::from_millis(200))
        .is_err());
    let _ = Role::Active;
}
