//! A FIX client (initiator) for tests, benchmarks and the demo: it logs on to the first of
//! its addresses that answers (both replicas of a gateway group), over TLS when its
//! [`InitiatorConfig`] says so, sends what it is given and reports what it receives on a
//! channel.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::codec::parse;
use crate::engine::{Application, Engine, EngineError, EngineHandle, LogonInfo, Outbox};
pub use crate::initiator::InitiatorConfig;
use crate::session::{AppMessage, DisconnectReason, Session, SessionEvent};
use crate::store::MemoryStore;

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Logged on.
    LoggedOn(LogonInfo),
    /// The connection ended.
    LoggedOut(String),
    /// An application message: MsgSeqNum, PossDupFlag, MsgType and the body fields.
    Message {
        /// MsgSeqNum.
        seq: u64,
        /// PossDupFlag=Y.
        poss_dup: bool,
        /// PossResend=Y (forwarded again by a hub after a failover).
        poss_resend: bool,
        /// MsgType.
        msg_type: String,
        /// Fields after the header, as text.
        fields: Vec<(u32, String)>,
    },
    /// A session event (gap, resend, reject).
    Session(SessionEvent),
}

impl ClientEvent {
    /// Value of `tag` in a `Message`.
    pub fn field(&self, tag: u32) -> Option<&str> {
        match self {
            ClientEvent::Message { fields, .. } => fields
                .iter()
                .find(|(t, _)| *t == tag)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

struct ClientApp {
    tx: mpsc::UnboundedSender<ClientEvent>,
}

impl Application for ClientApp {
    fn on_message(&mut self, _out: &mut Outbox, _session: usize, msg: &AppMessage) {
        let Ok(m) = parse(&msg.frame) else { return };
        let fields = m
            .fields()
            .iter()
            .filter(|f| !crate::tags::is_header_tag(f.tag) && f.tag != crate::tags::CHECK_SUM)
            .map(|f| (f.tag, String::from_utf8_lossy(f.value).into_owned()))
            .collect();
        let _ = self.tx.send(ClientEvent::Message {
            seq: msg.seq_num,
            poss_dup: msg.poss_dup,
            poss_resend: m.get(crate::tags::POSS_RESEND) == Some(b"Y"),
            msg_type: String::from_utf8_lossy(m.msg_type()).into_owned(),
            fields,
        });
    }

    fn on_logon(&mut self, _out: &mut Outbox, _session: usize, info: &LogonInfo) {
        let _ = self.tx.send(ClientEvent::LoggedOn(info.clone()));
    }

    fn on_logout(&mut self, _session: usize, reason: &DisconnectReason) {
        let _ = self.tx.send(ClientEvent::LoggedOut(format!("{reason:?}")));
    }

    fn on_event(&mut self, _session: usize, event: &SessionEvent) {
        let _ = self.tx.send(ClientEvent::Session(event.clone()));
    }
}

/// The client's settings: an initiator's, as the gateway's upstreams have them.
pub type ClientConfig = InitiatorConfig;

/// A running client: send with `handle` (session 0), read `events`.
pub struct Client {
    /// Sends messages (session index 0).
    pub handle: EngineHandle,
    /// What the client received.
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
    /// The engine task; abort it to drop the connection.
    pub task: tokio::task::JoinHandle<Result<(), EngineError>>,
}

/// Starts a client on the current tokio runtime, over a memory store (the client process
/// outlives the gateway failover it observes).
pub fn start(cfg: ClientConfig) -> Result<Client, crate::session::ConfigError> {
    let session = Session::new(cfg.session_config(), MemoryStore::new())?;
    let slot = cfg.slot(&cfg.target_comp_id, session);
    let engine = Engine::new(vec![slot], None).with_tick(Duration::from_millis(20));
    let handle = engine.handle();
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut app = ClientApp { tx };
        engine.run(&mut app, std::future::pending()).await
    });
    Ok(Client {
        handle,
        events,
        task,
    })
}
