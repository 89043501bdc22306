//! The settings of an initiator session, shared by the FIX client ([`crate::client`]) and the
//! gateway's upstreams (`[[upstream]]`): where to connect (addresses tried in turn), the
//! CompIDs, heartbeat, reconnect interval, logon timeout and TLS. One struct, one parser for
//! its TOML form ([`InitiatorConfig::from_toml`]), which checks every value and loads the TLS
//! files, so a bad one is found when the configuration is read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use understudy_tls::{Pem, TlsClient};

use crate::engine::{SessionSlot, DEFAULT_LOGON_TIMEOUT};
use crate::session::{Role, Session, SessionConfig, HEART_BT_INT_RANGE};
use crate::store::SessionStore;
use crate::tags::BeginString;

/// An initiator's settings.
#[derive(Debug, Clone)]
pub struct InitiatorConfig {
    /// Addresses tried in turn (e.g. both replicas of a gateway group).
    pub connect: Vec<SocketAddr>,
    /// Our CompID.
    pub sender_comp_id: String,
    /// The counterparty's CompID.
    pub target_comp_id: String,
    /// Protocol.
    pub begin_string: BeginString,
    /// HeartBtInt we propose.
    pub heartbeat_interval: Duration,
    /// Pause after every address refused.
    pub reconnect_interval: Duration,
    /// Time from connecting to the counterparty's Logon answer.
    pub logon_timeout: Duration,
    /// TLS towards the counterparty (`None`: plain TCP).
    pub tls: Option<TlsClient>,
}

impl Default for InitiatorConfig {
    /// No address or CompIDs yet; FIX 4.4, 30 s heartbeat, 1 s reconnect interval, the
    /// engine's logon timeout, plain TCP.
    fn default() -> Self {
        InitiatorConfig {
            connect: Vec::new(),
            sender_comp_id: String::new(),
            target_comp_id: String::new(),
            begin_string: BeginString::Fix44,
            heartbeat_interval: Duration::from_secs(30),
            reconnect_interval: Duration::from_secs(1),
            logon_timeout: DEFAULT_LOGON_TIMEOUT,
            tls: None,
        }
    }
}

/// What the TOML form of an initiator falls back on when a key is not given.
#[derive(Debug, Clone)]
pub struct InitiatorDefaults {
    /// `sender_comp_id` (the gateway's own CompID).
    pub sender_comp_id: String,
    /// `begin_string`.
    pub begin_string: BeginString,
    /// `logon_timeout`.
    pub logon_timeout: Duration,
    /// Directory relative TLS file paths are taken from (the configuration file's).
    pub base: PathBuf,
}

/// The TOML form, every key of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInitiator {
    connect: Vec<String>,
    target_comp_id: String,
    sender_comp_id: Option<String>,
    begin_string: Option<String>,
    heartbeat_interval: Option<String>,
    reconnect_interval: Option<String>,
    logon_timeout: Option<String>,
    tls_ca: Option<PathBuf>,
    tls_server_name: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// A configuration error: the dotted key and the reason.
pub type KeyError = (String, String);

impl InitiatorConfig {
    /// Parses and checks the TOML table `t` found at `at` (e.g. `upstream[0]`; errors name
    /// `at.key`), falling back on `defaults`.
    pub fn from_toml(
        t: toml::Table,
        at: &str,
        defaults: &InitiatorDefaults,
    ) -> Result<Self, KeyError> {
        let raw: RawInitiator = toml::Value::Table(t)
            .try_into()
            .map_err(|e: toml::de::Error| (at.to_owned(), e.message().to_owned()))?;
        let k = |f: &str| format!("{at}.{f}");
        if raw.connect.is_empty() {
            return Err((k("connect"), "at least one address is required".into()));
        }
        let mut connect = Vec::with_capacity(raw.connect.len());
        for a in &raw.connect {
            connect.push(a.parse::<SocketAddr>().map_err(|_| {
                (
                    k("connect"),
                    format!("{a:?} is not an address; use e.g. \"10.0.0.5:9900\""),
                )
            })?);
        }
        let sender = raw
            .sender_comp_id
            .unwrap_or_else(|| defaults.sender_comp_id.clone());
        for (f, v) in [
            ("sender_comp_id", &sender),
            ("target_comp_id", &raw.target_comp_id),
        ] {
            if !crate::gateway::comp_id_ok(v) {
                return Err((k(f), format!("{v:?} is not a valid CompID")));
            }
        }
        let hb = crate::gateway::duration(
            &k("heartbeat_interval"),
            raw.heartbeat_interval.as_ref(),
            Duration::from_secs(30),
        )?;
        let range = HEART_BT_INT_RANGE;
        if !range.contains(&hb.as_secs()) || hb.subsec_nanos() != 0 {
            return Err((
                k("heartbeat_interval"),
                format!(
                    "must be a whole number of seconds from {}s to {}s (the HeartBtInt a counterparty accepts)",
                    range.start(),
                    range.end()
                ),
            ));
        }
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| defaults.base.join(p));
        let (ca, cert, tls_key) = (path(&raw.tls_ca), path(&raw.tls_cert), path(&raw.tls_key));
        let (ca_k, name_k, cert_k, key_k) = (
            k("tls_ca"),
            k("tls_server_name"),
            k("tls_cert"),
            k("tls_key"),
        );
        let tls = TlsClient::load_optional(
            Pem::opt(&ca_k, ca.as_deref()),
            raw.tls_server_name.as_deref().map(|n| (name_k.as_str(), n)),
            Pem::opt(&cert_k, cert.as_deref()),
            Pem::opt(&key_k, tls_key.as_deref()),
        )
        .map_err(|e| (e.key, e.reason))?;
        Ok(InitiatorConfig {
            connect,
            sender_comp_id: sender,
            target_comp_id: raw.target_comp_id,
            begin_string: crate::gateway::begin_string(
                &k("begin_string"),
                raw.begin_string.as_ref(),
                defaults.begin_string,
            )?,
            heartbeat_interval: hb,
            reconnect_interval: crate::gateway::duration(
                &k("reconnect_interval"),
                raw.reconnect_interval.as_ref(),
                Duration::from_secs(1),
            )?,
            logon_timeout: crate::gateway::duration(
                &k("logon_timeout"),
                raw.logon_timeout.as_ref(),
                defaults.logon_timeout,
            )?,
            tls,
        })
    }

    /// The session's settings (initiator role; schedule, latency and the rest at their
    /// defaults for the caller to set).
    pub fn session_config(&self) -> SessionConfig {
        let mut sc = SessionConfig::new(
            self.begin_string,
            &self.sender_comp_id,
            &self.target_comp_id,
            Role::Initiator,
        );
        sc.heartbeat_interval = self.heartbeat_interval;
        sc.logon_timeout = self.logon_timeout;
        sc
    }

    /// The engine's slot `name` for `session`, connecting as these settings say.
    pub fn slot<S: SessionStore>(&self, name: &str, session: Session<S>) -> SessionSlot<S> {
        let mut slot = SessionSlot::new(name, session);
        slot.connect = self.connect.clone();
        slot.reconnect_interval = self.reconnect_interval;
        slot.tls = self.tls.clone();
        slot
    }
}

/// The directory relative paths in `file` are taken from.
pub fn base_dir(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}
