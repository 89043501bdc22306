//! The agent's admin API on arbitrary bytes from a client: hyper's HTTP/1 server with the
//! settings of `api::serve` (header timeout, head size limit) in front of the real router and
//! its guard (token, cross-site rule), over an in-memory stream. The first byte chooses the
//! agent: without a token, or with one. Nothing may panic; every request gets an answer or the
//! connection closes.
#![no_main]

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use understudy_agent::api::{router, MAX_HEAD_BYTES};
use understudy_agent::runtime::Shared;
use understudy_agent::Config;
use understudy_status::{
    ActivationMode, Node, Role, Service, ServiceState, StandbyType, State, Status,
};

struct World {
    rt: tokio::runtime::Runtime,
    plain: axum::Router,
    token: axum::Router,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("understudy-fuzz-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let token = dir.join("admin.token");
        std::fs::write(&token, "s3cret-token\n").expect("token file");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let make = |extra: &str| {
            let text = format!(
                "[node]\nname = \"a\"\ngroup = \"g\"\nadmin = \"127.0.0.1:7701\"\n{extra}\n[activation]\nmode = \"trylock\"\nlock_file = \"{}\"\n\n[service]\ncommand = [\"/bin/sleep\", \"1\"]\n",
                dir.join("group.lock").display()
            );
            let cfg = Config::parse(&dir.join("a.toml"), &text).expect("config");
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
                lock_file: dir.join("group.lock").display().to_string(),
                renewal_age_ms: None,
                service: Service {
                    state: ServiceState::Running,
                    pid: Some(1),
                    role: Some(Role::Active),
                    standby: StandbyType::Cold,
                    command: vec!["/bin/sleep".into()],
                    healthy: true,
                    detail: None,
                },
            };
            let shared = Arc::new(Shared {
                members: understudy_coordinator::members::Members::for_lock(&cfg.activation.lock_file),
                cfg,
                status: RwLock::new(status),
                timeline: Mutex::new(Default::default()),
                metrics: understudy_agent::metrics::Metrics::new(),
                last_tick_ms: AtomicU64::new(1),
                fence: understudy_service::Fence::default(),
            });
            // Nobody answers the event loop's requests: mutating calls see a closed loop.
            let (tx, _) = tokio::sync::mpsc::channel(1);
            router(shared, tx)
        };
        let plain = rt.block_on(async { make("") });
        let token = rt.block_on(async {
            make(&format!("admin_token_file = \"{}\"", token.display()))
        });
        World { rt, plain, token }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    let w = world();
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
});
