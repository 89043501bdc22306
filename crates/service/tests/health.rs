//! Health checks against real commands and a tiny HTTP server.

mod common;

use std::time::Duration;

use common::{alive, next, read_when_ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use understudy_service::health::spawn_health;
use understudy_service::{HealthCheck, HealthConfig, HealthEvent};

const LONG: Duration = Duration::from_secs(10);

fn config(check: HealthCheck, failures: u32) -> HealthConfig {
    HealthConfig {
        check,
        interval: Duration::from_millis(30),
        timeout: Duration::from_secs(2),
        failures,
        start_period: Duration::ZERO,
    }
}

fn command(argv: &[&str]) -> HealthCheck {
    HealthCheck::Command(argv.iter().map(|s| s.to_string()).collect())
}

fn start(
    cfg: HealthConfig,
    env: &[(&str, &str)],
) -> (tokio::task::JoinHandle<()>, UnboundedReceiver<HealthEvent>) {
    let (tx, rx) = unbounded_channel();
    let env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (spawn_health(cfg, 4, env, tx), rx)
}

/// A shell check that appends a line to `<dir>/runs` each time it runs, then runs `then`.
fn counted(dir: &std::path::Path, then: &str) -> (HealthCheck, Vec<(String, String)>) {
    let check = command(&["sh", "-c", &format!(r#"echo run >>"$D/runs"; {then}"#)]);
    let env = vec![("D".to_string(), dir.display().to_string())];
    (check, env)
}

/// Waits until the check has run `more` times beyond now. Once run k+`more` has started, the
/// events of every run before it were sent: so "no event since" can be asserted without a pause.
async fn runs_more(dir: &std::path::Path, more: usize) {
    let runs = || {
        std::fs::read_to_string(dir.join("runs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let target = runs() + more;
    let t = tokio::time::Instant::now();
    while runs() < target {
        assert!(t.elapsed() < LONG, "the check stopped running");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn failing_command_reaches_failed_once() {
    let dir = tempfile::tempdir().unwrap();
    let (check, env) = counted(dir.path(), "exit 1");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (task, mut rx) = start(config(check, 3), &env);
    for n in 1..=2 {
        match next(&mut rx, LONG).await {
            HealthEvent::Failing {
                generation: 4,
                consecutive,
                reason,
            } => {
                assert_eq!(consecutive, n);
                assert!(reason.contains("exited with code 1"), "{reason}");
            }
            other => panic!("expected Failing, got {other:?}"),
        }
    }
    assert!(matches!(
        next(&mut rx, LONG).await,
        HealthEvent::Failed { generation: 4, .. }
    ));
    // Failed is not repeated while the check keeps failing.
    runs_more(dir.path(), 5).await;
    assert!(rx.try_recv().is_err());
    task.abort();
}

#[tokio::test]
async fn passing_command_is_healthy_once_and_gets_env() {
    let dir = tempfile::tempdir().unwrap();
    let (check, env) = counted(dir.path(), r#"test "$HC" = yes"#);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("HC", "yes"));
    let (task, mut rx) = start(config(check, 1), &env);
    assert_eq!(
        next(&mut rx, LONG).await,
        HealthEvent::Healthy { generation: 4 }
    );
    // Healthy is said once, not at every passing check.
    runs_more(dir.path(), 5).await;
    assert!(rx.try_recv().is_err());
    task.abort();
}

#[tokio::test]
async fn slow_command_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut cfg = config(
        command(&["sh", "-c", r#"sleep 1000 & echo $! >"$D/gc"; sleep 1000"#]),
        1,
    );
    cfg.timeout = Duration::from_millis(200);
    let (task, mut rx) = start(cfg, &[("D", d)]);
    match next(&mut rx, LONG).await {
        HealthEvent::Failed { reason, .. } => assert!(reason.contains("timed out"), "{reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    task.abort();
    let grandchild: u32 = read_when_ready(&dir.path().join("gc"), LONG)
        .await
        .trim()
        .parse()
        .unwrap();
    let t = tokio::time::Instant::now();
    while alive(grandchild) {
        assert!(t.elapsed() < LONG, "grandchild {grandchild} survived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn failures_in_start_period_do_not_count() {
    let mut cfg = config(command(&["false"]), 1);
    cfg.start_period = Duration::from_millis(300);
    let t = tokio::time::Instant::now();
    let (task, mut rx) = start(cfg, &[]);
    assert!(matches!(
        next(&mut rx, LONG).await,
        HealthEvent::Failed { .. }
    ));
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    task.abort();
}

/// Serves one response per connection, with the given statuses in turn, then 200 forever.
async fn serve(statuses: Vec<u16>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let status = statuses.next().unwrap_or(200);
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            assert!(request.starts_with(b"GET /health "));
            let body = format!("{{\"status\":{status}}}");
            let response = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    url
}

/// The next event that is not a [`HealthEvent::Report`], collecting the reports passed over.
async fn next_change(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<HealthEvent>,
    reports: &mut Vec<String>,
) -> HealthEvent {
    loop {
        match next(rx, LONG).await {
            HealthEvent::Report { body, .. } => reports.push(body),
            other => return other,
        }
    }
}

#[tokio::test]
async fn http_check_follows_the_status() {
    let url = serve(vec![200, 500, 500, 200]).await;
    let (task, mut rx) = start(config(HealthCheck::Http(url), 2), &[]);
    let mut reports = Vec::new();
    let passed = vec!["{\"status\":200}".to_string()];
    assert_eq!(
        next_change(&mut rx, &mut reports).await,
        HealthEvent::Healthy { generation: 4 }
    );
    // A passing HTTP check reports the body the service answered with, before the node counts
    // it healthy (what the service says of itself, e.g. "not in sync", decides readiness).
    assert_eq!(reports, passed);
    reports.clear();
    match next_change(&mut rx, &mut reports).await {
        HealthEvent::Failing {
            consecutive: 1,
            reason,
            ..
        } => assert!(reason.contains("500"), "{reason}"),
        other => panic!("expected Failing, got {other:?}"),
    }
    assert!(matches!(
        next_change(&mut rx, &mut reports).await,
        HealthEvent::Failed { .. }
    ));
    assert_eq!(
        next_change(&mut rx, &mut reports).await,
        HealthEvent::Healthy { generation: 4 }
    );
    // Failing checks report nothing: only the last, passing one did.
    assert_eq!(reports, passed);
    task.abort();
}

#[tokio::test]
async fn http_check_fails_when_nobody_listens() {
    // Bind then drop, so the port is very likely closed.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let (task, mut rx) = start(config(HealthCheck::Http(url), 1), &[]);
    match next(&mut rx, LONG).await {
        HealthEvent::Failed { reason, .. } => assert!(reason.starts_with("GET "), "{reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    task.abort();
}
