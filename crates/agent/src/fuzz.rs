//! The entry points of the cargo-fuzz targets `admin_api` and `agent_config` (`fuzz/`), kept
//! here so that the stable test suite replays every seed and corpus input through the same code
//! the fuzzer runs (`crates/understudy/tests/fuzz_corpus.rs`). Each panics only on a finding,
//! or when the temporary directory they need cannot be written.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use understudy_status::{
    ActivationMode, Node, Role, Service, ServiceState, StandbyType, State, Status,
};

use crate::api::{router, MAX_HEAD_BYTES};
use crate::runtime::Shared;
use crate::Config;

/// A directory of this process's own under the temporary directory.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("understudy-fuzz-{name}-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("cannot create {}: {e}", dir.display());
    }
    dir
}

/// `data` as the agent's configuration file: refused with a reason or accepted (and its
/// warnings computed). The file lies in an empty directory, so the checks that look at the
/// disk find nothing the text names relatively.
pub fn config(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = DIR.get_or_init(|| scratch("config"));
    match Config::parse(&dir.join("agent.toml"), text) {
        Ok(cfg) => {
            let _ = cfg.warnings();
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a reason"),
    }
}

struct AdminWorld {
    rt: tokio::runtime::Runtime,
    plain: axum::Router,
    token: axum::Router,
}

/// A Hot node's admin router, without a token or with one. Nothing answers the event loop's
/// requests: mutating calls that pass the guard find the loop closed.
fn admin_world() -> &'static AdminWorld {
    static W: OnceLock<AdminWorld> = OnceLock::new();
    W.get_or_init(|| {
        let dir = scratch("admin");
        let token = dir.join("admin.token");
        let written = std::fs::write(&token, "s3cret-token\n").and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
        });
        if let Err(e) = written {
            panic!("cannot write {}: {e}", token.display());
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("no tokio runtime: {e}"),
        };
        let lock = dir.join("group.lock");
        let make = |extra: &str| {
            let text = format!(
                "[node]\nname = \"a\"\ngroup = \"g\"\nadmin = \"127.0.0.1:7701\"\n{extra}\n\
                 [activation]\nmode = \"trylock\"\nlock_file = \"{}\"\n\n\
                 [service]\ncommand = [\"/bin/sleep\", \"1\"]\n",
                lock.display()
            );
            let cfg = match Config::parse(&dir.join("a.toml"), &text) {
                Ok(cfg) => cfg,
                Err(e) => panic!("the admin target's own configuration is refused: {e}"),
            };
            let status = Status {
                node: Node {
                    name: "a".into(),
                    group: "g".into(),
                    state: State::Hot,
                    activation: ActivationMode::TryLock,
                    epoch: 7,
                    since_unix_ms: 1,
                    waiting: None,
                    holds_lock: true,
                    ready: true,
                    admin: "127.0.0.1:7701".into(),
                    agent_pid: std::process::id(),
                },
                since: "2026-12-01T00:00:00.000Z".into(),
                lock_file: lock.display().to_string(),
                renewal_age_ms: None,
                service: Service {
                    state: ServiceState::Running,
                    pid: Some(1),
                    role: Some(Role::Active),
                    standby: StandbyType::Cold,
                    command: vec!["/bin/sleep".into(), "1".into()],
                    healthy: true,
                    detail: None,
                },
            };
            let shared = Arc::new(Shared {
                members: understudy_coordinator::members::Members::for_lock(
                    &cfg.activation.lock_file,
                ),
                cfg,
                status: RwLock::new(status),
                timeline: Mutex::new(Default::default()),
                metrics: crate::metrics::Metrics::new(),
                last_tick_ms: AtomicU64::new(1),
                fence: understudy_service::Fence::default(),
            });
            let (tx, _) = tokio::sync::mpsc::channel(1);
            router(shared, tx)
        };
        // The router's pieces (the guard's state) are built inside the runtime, as at start.
        let plain = rt.block_on(async { make("") });
        let token =
            rt.block_on(async { make(&format!("admin_token_file = \"{}\"", token.display())) });
        AdminWorld { rt, plain, token }
    })
}

/// `data[1..]` as the bytes a client sends on one admin API connection: hyper's HTTP/1 server
/// with the settings of `api::serve` (header timeout, head size limit) in front of the real
/// router and its guard (token, cross-site rule), over an in-memory stream. Bit 0 of `data[0]`
/// picks the agent with a token. Whatever comes back must be HTTP.
pub fn admin_api(data: &[u8]) {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    let w = admin_world();
    let app = if which & 1 == 0 {
        w.plain.clone()
    } else {
        w.token.clone()
    };
    w.rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let svc = hyper_util::service::TowerToHyperService::new(app);
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_millis(50))
            .max_buf_size(MAX_HEAD_BYTES);
        let conn = b.serve_connection(hyper_util::rt::TokioIo::new(server), svc);
        let talk = async {
            let _ = client.write_all(input).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let (_, answer) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(2), conn),
            tokio::time::timeout(Duration::from_secs(2), talk)
        );
        if let Ok(a) = answer {
            assert!(
                a.is_empty() || a.starts_with(b"HTTP/1."),
                "not HTTP: {:?}",
                String::from_utf8_lossy(&a)
            );
        }
    });
}
