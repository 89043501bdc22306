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
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use understudy_sdk::Notice;

const CHILD: &str = "SDK_TEST_CHILD";
const LONG: Duration = Duration::from_secs(10);

type Check = (&'static str, fn());

const CHECKS: [Check; 6] = [
    (
        "a_standby_is_activated_by_signal_with_the_agents_new_epoch",
        a_standby_is_activated_by_signal_with_the_agents_new_epoch,
    ),
    ("the_same_on_tokio", the_same_on_tokio),
    (
        "a_standby_started_with_the_signal_ignored_still_activates",
        a_standby_started_with_the_signal_ignored_still_activates,
    ),
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

/// The agent's `/status` saying `mode` at `epoch`.
fn status(mode: &str, epoch: u64) -> String {
    format!(
        r#"{{"node":"b","group":"g","mode":"{mode}","name":"TryLock","epoch":{epoch},"since_unix_ms":1,"waiting":null,"holds_lock":true,"ready":false,"admin":"127.0.0.1:7701","agent_pid":9,"since":"1970-01-01T00:00:00.001Z","lock_file":"/run/g.lock","service":{{"state":"running","pid":10,"role":"standby","standby":"hot","command":["svc"],"healthy":true,"detail":null}}}}"#
    )
}

/// `/status` answers: Warm at epoch 6, then Hot at the stale epoch 6, then Hot at 7.
fn warm_stale_hot() -> Vec<String> {
    vec![status("Warm", 6), status("Hot", 6), status("Hot", 7)]
}

/// An admin API that answers `/status` with `answers` in turn (the last one for ever after), and
/// records acknowledgements.
fn fake_agent(answers: Vec<String>) -> (SocketAddr, Arc<Mutex<Seen>>) {
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
                answers[(seen.status_requests - 1).min(answers.len() - 1)].as_str()
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

/// A service process and the lines it says.
struct Kid {
    child: Child,
    lines: mpsc::Receiver<String>,
}

/// Starts this binary as the service, with `env` as the agent's variables; `wrapper` is a shell
/// line run before it (`exec` follows).
fn spawn(flavour: &str, env: &[(&str, String)], wrapper: Option<&str>) -> Kid {
    let exe = std::env::current_exe().expect("exe");
    let mut cmd = match wrapper {
        Some(w) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(format!("{w}; exec {}", exe.display()));
            c
        }
        None => Command::new(exe),
    };
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
    let out = BufReader::new(child.stdout.take().expect("stdout"));
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if let Some((_, l)) = line.split_once("sdk-child: ") {
                let _ = tx.send(l.to_string());
            }
        }
    });
    Kid { child, lines }
}

impl Kid {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid() as i32), sig).expect("kill");
    }

    /// The next line the child says.
    fn said(&mut self) -> String {
        match self.lines.recv_timeout(LONG) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait");
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("the child said nothing ({e}); it ended with {status}; stderr:\n{err}");
            }
        }
    }

    fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).expect("read");
        }
        err
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "the child did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits, like the agent, until `/proc` shows SIGUSR1 handled.
    fn wait_handles_usr1(&self) {
        let deadline = Instant::now() + LONG;
        while !handles(self.pid(), Signal::SIGUSR1) {
            assert!(Instant::now() < deadline, "SIGUSR1 never handled");
            std::hint::spin_loop();
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

fn agent_env(admin: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("UNDERSTUDY_ROLE", "standby".into()),
        ("UNDERSTUDY_EPOCH", "6".into()),
        ("UNDERSTUDY_GROUP", "g".into()),
        ("UNDERSTUDY_NODE", "b".into()),
        ("UNDERSTUDY_ADMIN", admin.to_string()),
    ]
}

fn standby_activated_by_signal(flavour: &str) {
    let (admin, seen) = fake_agent(warm_stale_hot());
    let mut kid = spawn(flavour, &agent_env(admin), None);
    kid.wait_handles_usr1();
    // At once, as the agent does: this must neither kill it nor be lost.
    kid.signal(Signal::SIGUSR1);
    assert_eq!(kid.said(), "role standby 6");
    assert_eq!(
        kid.said(),
        "active 7",
        "the epoch is the first Hot one above 6"
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.status_requests, 3,
            "Warm and stale answers are retried"
        );
        assert_eq!(
            seen.acks,
            vec![format!("{{\"pid\":{},\"epoch\":7}}", kid.pid())]
        );
    }
    // A second activation signal changes nothing and asks nobody.
    kid.signal(Signal::SIGUSR1);
    assert_eq!(kid.said(), "active 7");
    assert_eq!(seen.lock().unwrap().status_requests, 3);

    kid.signal(Signal::SIGTERM);
    assert_eq!(kid.said(), "stop true");
    assert!(kid.wait_exit().success());
}

fn a_standby_is_activated_by_signal_with_the_agents_new_epoch() {
    standby_activated_by_signal("sync");
}

fn the_same_on_tokio() {
    standby_activated_by_signal("async");
}

/// Started with SIGUSR1 ignored (a wrapper's `trap '' USR1`): the agent counts that as handled
/// and signals at once, and the kernel discards the signal if it comes before `init` (the
/// wrapper's pause makes sure it does). The agent is already Hot then, which `init` finds out.
fn a_standby_started_with_the_signal_ignored_still_activates() {
    let (admin, _seen) = fake_agent(vec![status("Hot", 7)]);
    let mut kid = spawn("sync", &agent_env(admin), Some("trap '' USR1; sleep 0.2"));
    kid.wait_handles_usr1();
    kid.signal(Signal::SIGUSR1);
    assert_eq!(kid.said(), "role standby 6");
    assert_eq!(kid.said(), "active 7");
    kid.signal(Signal::SIGTERM);
    // The signal may also have arrived after `init`: a second notice, which changes nothing.
    let mut last = kid.said();
    if last == "active 7" {
        last = kid.said();
    }
    assert_eq!(last, "stop true");
    assert!(kid.wait_exit().success());
}

fn no_environment_runs_stand_alone_and_says_so() {
    let mut kid = spawn("sync", &[], None);
    assert_eq!(kid.said(), "role active 0");
    kid.signal(Signal::SIGTERM);
    assert_eq!(kid.said(), "stop true");
    assert!(kid.wait_exit().success());
    let err = kid.stderr();
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
        let mut kid = spawn("sync", &env, None);
        assert_eq!(kid.wait_exit().code(), Some(2), "{vars:?}");
        let err = kid.stderr();
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
            let body = status("Warm", 9);
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
    // It gives up at its own bound (300 ms), not never: a generous liveness bound.
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
}
