//! The control plane's state in an embedded SQLite database (`<data>/understudy.db`): servers,
//! their failover service and nodes, the processes the local host started, and every failure
//! event collected from the agents. Schema changes are numbered migrations applied in order at
//! open, each in its own transaction, so an older database is brought forward and a newer one is
//! refused rather than misread.
//!
//! Calls are synchronous and short (a local SQLite file, one row or a few); the API holds the one
//! connection behind a mutex for the duration of a call.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use crate::model::{FailoverSpec, NodeSpec, ServerSpec, ServerState};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A stored JSON column does not parse (hand-edited or corrupted database).
    #[error("database: stored {what} is not valid: {source}")]
    Corrupt {
        /// Which column.
        what: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A server's row to update is gone (deleted meanwhile).
    #[error("server {0} is not in the inventory any more")]
    NoServer(String),
    /// The database was written by a newer understudy.
    #[error("database schema version {found} is newer than this understudy knows ({known}); upgrade understudy or use another --data directory")]
    TooNew {
        /// Version found.
        found: i64,
        /// Latest version known here.
        known: i64,
    },
}

/// The migrations, in order; entry `i` brings the schema from version `i` to `i + 1`. Never edit
/// one that has shipped: add another.
const MIGRATIONS: &[&str] = &[
    // 1: servers, failover, nodes, failure events.
    "CREATE TABLE servers (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        pid INTEGER,
        created_unix_ms INTEGER NOT NULL
     );
     CREATE TABLE failovers (
        server TEXT PRIMARY KEY REFERENCES servers(name) ON DELETE CASCADE,
        spec TEXT NOT NULL,
        nodes TEXT NOT NULL,
        running INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE failure_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        server TEXT NOT NULL,
        node TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        detected_unix_ms INTEGER NOT NULL,
        takeover TEXT NOT NULL,
        UNIQUE (server, node, epoch, detected_unix_ms)
     );
     CREATE INDEX failure_events_by_server ON failure_events(server, detected_unix_ms);",
    // 2: processes the local host started (agents and plain servers), so that a restarted
    // control plane finds them again instead of starting a second copy.
    // `marker` is the UNDERSTUDY_CONTROL_KEY the process carries: after "stop failover" the
    // server's process is the former active's service, released by its agent, which carries its
    // node's marker.
    "CREATE TABLE processes (
        key TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        marker TEXT NOT NULL,
        started_unix_ms INTEGER NOT NULL
     );",
    // 3: desired processes per host (what the control plane wants running where), the hosts with
    // their last report, and the generation a tracked process was started for (a plain server is
    // started once per start request, never restarted behind the operator's back).
    "CREATE TABLE desired (
        key TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        spec TEXT NOT NULL
     );
     CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        advertise TEXT NOT NULL,
        last_seen_unix_ms INTEGER NOT NULL,
        report TEXT NOT NULL
     );
     ALTER TABLE processes ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;",
    // 4: configuration files kept as imported (servers' files that use `include`, and their
    // fragments), so that an export writes the same files back.
    "CREATE TABLE config_files (
        path TEXT PRIMARY KEY,
        text TEXT NOT NULL
     );",
    // 5: hosts an operator declared gone for good (their machine dead): their last report is
    // dropped, and nothing waits for them any more, until they report again.
    "CREATE TABLE forgotten_hosts (
        name TEXT PRIMARY KEY,
        unix_ms INTEGER NOT NULL
     );",
    // 6: a stop forced on the operator's word that its host never confirmed: where and when,
    // shown with the server until that host reports again or the server starts anew.
    "ALTER TABLE servers ADD COLUMN unconfirmed_stop_host TEXT;
     ALTER TABLE servers ADD COLUMN unconfirmed_stop_unix_ms INTEGER;",
    // 7: the keys a mark waits for (comma-joined), fixed when it is made: the server's own, or
    // the agents of a failed start of failover, whose nodes an edit may drop meanwhile
    // (review 43, M2). NULL in a mark from schema 6: the server's own key.
    "ALTER TABLE servers ADD COLUMN unconfirmed_stop_keys TEXT;",
];

/// Why a host was not forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forget {
    /// No host of that name ever reported.
    Unknown,
    /// It reported at this time (Unix ms), after the silence asked for.
    Reported(u64),
}

/// A stored server with its failover service, if any.
#[derive(Debug, Clone)]
pub struct ServerRow {
    /// What was added.
    pub spec: ServerSpec,
    /// Where it stands.
    pub state: ServerState,
    /// The failover service, if added.
    pub failover: Option<FailoverRow>,
    /// Unix ms of the add.
    pub created_unix_ms: u64,
    /// A stop its hosts never confirmed (see [`Store::set_unconfirmed_stop`]).
    pub unconfirmed_stop: Option<UnconfirmedStop>,
}

/// A stop of a server that some hosts never confirmed: forced on the operator's word, or a start
/// (of the server, or of its failover) that a host never answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnconfirmedStop {
    /// The hosts that may still run it, comma-joined (host names hold no commas).
    pub hosts: String,
    /// When it was made (Unix ms): a host confirms with a report made after it.
    pub unix_ms: u64,
    /// The keys a host's report must no longer list, comma-joined; None in a mark from before
    /// schema 7: the plain server's key.
    pub keys: Option<String>,
}

/// A stored failover service.
#[derive(Debug, Clone)]
pub struct FailoverRow {
    /// As added.
    pub spec: FailoverSpec,
    /// Its nodes, node 1 first.
    pub nodes: Vec<NodeSpec>,
    /// True between start and stop.
    pub running: bool,
}

/// The database.
pub struct Store {
    conn: Mutex<Connection>,
}

/// A takeover's key columns (epoch, detection time; SQLite integers are signed) and its JSON.
fn event_row(takeover: &Value) -> Result<(i64, i64, String), StoreError> {
    let field = |k: &str| {
        let v = takeover.get(k).and_then(Value::as_u64).unwrap_or(0);
        i64::try_from(v).unwrap_or(i64::MAX)
    };
    let json = serde_json::to_string(takeover).map_err(corrupt("failure event"))?;
    Ok((field("epoch"), field("detected_unix_ms"), json))
}

/// A stop mark's columns: its hosts, when (in SQLite's signed integer) and its keys, or none.
fn mark_columns(stop: Option<&UnconfirmedStop>) -> (Option<&str>, Option<i64>, Option<&str>) {
    match stop {
        Some(m) => (
            Some(m.hosts.as_str()),
            Some(m.unix_ms.min(i64::MAX as u64) as i64),
            m.keys.as_deref(),
        ),
        None => (None, None, None),
    }
}

/// Writes (or clears) server `name`'s stop mark through `conn` (a transaction too); the rows
/// changed.
fn write_mark(
    conn: &Connection,
    name: &str,
    stop: Option<&UnconfirmedStop>,
) -> Result<usize, rusqlite::Error> {
    let (host, at, keys) = mark_columns(stop);
    conn.execute(
        "UPDATE servers SET unconfirmed_stop_host = ?2, unconfirmed_stop_unix_ms = ?3, unconfirmed_stop_keys = ?4 WHERE name = ?1",
        params![name, host, at, keys],
    )
}

/// An update of server `name`'s row changed `n` rows: none means the row is gone, and what was
/// to be recorded (a mark that keeps a second copy from starting) would be lost unsaid.
fn one_row(n: usize, name: &str) -> Result<(), StoreError> {
    if n == 0 {
        return Err(StoreError::NoServer(name.to_string()));
    }
    Ok(())
}

fn corrupt(what: &'static str) -> impl FnOnce(serde_json::Error) -> StoreError {
    move |source| StoreError::Corrupt { what, source }
}

impl Store {
    /// Open (creating if needed) `<dir>/understudy.db` and bring its schema up to date.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(dir.join("understudy.db"))?;
        Self::init(conn)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        // WAL: readers (the dashboard) never wait for the collector's writes; NORMAL sync is
        // durable across a crash of the process, which is what a control plane needs.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (it rolls back); go on.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schema version.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// Add a server; false when the name is taken.
    pub fn add_server(&self, spec: &ServerSpec, now_ms: u64) -> Result<bool, StoreError> {
        let json = serde_json::to_string(spec).map_err(corrupt("server"))?;
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO servers (name, spec, state, created_unix_ms) VALUES (?1, ?2, 'stopped', ?3)",
            params![spec.name, json, now_ms as i64],
        )?;
        Ok(n == 1)
    }

    /// Replace a server's definition (its state is kept).
    pub fn update_server(&self, spec: &ServerSpec) -> Result<(), StoreError> {
        let json = serde_json::to_string(spec).map_err(corrupt("server"))?;
        self.conn().execute(
            "UPDATE servers SET spec = ?2 WHERE name = ?1",
            params![spec.name, json],
        )?;
        Ok(())
    }

    /// Every server, by name.
    pub fn servers(&self) -> Result<Vec<ServerRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT s.spec, s.state, s.created_unix_ms, f.spec, f.nodes, f.running,
                    s.unconfirmed_stop_host, s.unconfirmed_stop_unix_ms, s.unconfirmed_stop_keys
             FROM servers s LEFT JOIN failovers f ON f.server = s.name ORDER BY s.name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<i64>>(7)?,
                r.get::<_, Option<String>>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (spec, state, created, fspec, fnodes, running, uhost, uat, ukeys) = row?;
            out.push(ServerRow {
                spec: serde_json::from_str(&spec).map_err(corrupt("server"))?,
                state: ServerState::parse(&state),
                created_unix_ms: created.max(0) as u64,
                unconfirmed_stop: uhost.zip(uat).map(|(hosts, at)| UnconfirmedStop {
                    hosts,
                    unix_ms: at.max(0) as u64,
                    keys: ukeys,
                }),
                failover: match (fspec, fnodes) {
                    (Some(s), Some(n)) => Some(FailoverRow {
                        spec: serde_json::from_str(&s).map_err(corrupt("failover"))?,
                        nodes: serde_json::from_str(&n).map_err(corrupt("failover nodes"))?,
                        running: running.unwrap_or(0) != 0,
                    }),
                    _ => None,
                },
            });
        }
        Ok(out)
    }

    /// One server.
    pub fn server(&self, name: &str) -> Result<Option<ServerRow>, StoreError> {
        Ok(self.servers()?.into_iter().find(|s| s.spec.name == name))
    }

    /// Set a server's state.
    pub fn set_state(&self, name: &str, state: ServerState) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE servers SET state = ?2 WHERE name = ?1",
            params![name, state.as_str()],
        )?;
        Ok(())
    }

    /// Records that `name`'s stop was not confirmed by its hosts (forced on the operator's word,
    /// or a start its host never answered), or clears it (None).
    pub fn set_unconfirmed_stop(
        &self,
        name: &str,
        stop: Option<&UnconfirmedStop>,
    ) -> Result<(), StoreError> {
        let n = write_mark(&self.conn(), name, stop)?;
        one_row(n, name)
    }

    /// Deletes the want under `key` and marks server `name` as a stop `hosts` never confirmed of
    /// that key, as of the moment after the delete, in one transaction: a crash in between left
    /// the want gone and nothing marked (review 42, L2). The delete stands even when the row is
    /// gone (`NoServer`): a want with no server row runs what nothing can stop (review 43, L1).
    pub fn withdraw_and_mark(&self, key: &str, name: &str, hosts: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM desired WHERE key = ?1", params![key])?;
        let at = crate::plane::unix_ms();
        let m = UnconfirmedStop {
            hosts: hosts.to_string(),
            unix_ms: at,
            keys: Some(key.to_string()),
        };
        let n = write_mark(&tx, name, Some(&m))?;
        tx.commit()?;
        one_row(n, name)?;
        Ok(at)
    }

    /// [`Store::set_state`] and [`Store::set_unconfirmed_stop`] in one statement: a crash in
    /// between left a stopped server without its mark, or a running one with a stale one
    /// (review 39, L3).
    pub fn set_state_and_stop_mark(
        &self,
        name: &str,
        state: ServerState,
        stop: Option<&UnconfirmedStop>,
    ) -> Result<(), StoreError> {
        let (host, at, keys) = mark_columns(stop);
        let n = self.conn().execute(
            "UPDATE servers SET state = ?2, unconfirmed_stop_host = ?3, unconfirmed_stop_unix_ms = ?4, unconfirmed_stop_keys = ?5 WHERE name = ?1",
            params![name, state.as_str(), host, at, keys],
        )?;
        one_row(n, name)
    }

    /// Remove a server (its failover service and stored events go with it).
    pub fn delete_server(&self, name: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM failure_events WHERE server = ?1",
            params![name],
        )?;
        Ok(conn.execute("DELETE FROM servers WHERE name = ?1", params![name])? == 1)
    }

    /// Add or replace a server's failover service (not running).
    pub fn put_failover(
        &self,
        server: &str,
        spec: &FailoverSpec,
        nodes: &[NodeSpec],
    ) -> Result<(), StoreError> {
        let s = serde_json::to_string(spec).map_err(corrupt("failover"))?;
        let n = serde_json::to_string(nodes).map_err(corrupt("failover nodes"))?;
        self.conn().execute(
            "INSERT INTO failovers (server, spec, nodes, running) VALUES (?1, ?2, ?3, 0)
             ON CONFLICT(server) DO UPDATE SET spec = excluded.spec, nodes = excluded.nodes",
            params![server, s, n],
        )?;
        Ok(())
    }

    /// Mark a failover service running or not.
    pub fn set_failover_running(&self, server: &str, running: bool) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE failovers SET running = ?2 WHERE server = ?1",
            params![server, running as i64],
        )?;
        Ok(())
    }

    /// Remove a server's failover service; false when it had none.
    pub fn delete_failover(&self, server: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM failovers WHERE server = ?1", params![server])?
            == 1)
    }

    /// Record a process under `key`: its pid, the marker in its environment, and the generation
    /// of the request it was started for.
    pub fn put_process(
        &self,
        key: &str,
        pid: u32,
        marker: &str,
        generation: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO processes (key, pid, marker, started_unix_ms, generation) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(key) DO UPDATE SET pid = excluded.pid, marker = excluded.marker,
                                            started_unix_ms = excluded.started_unix_ms,
                                            generation = excluded.generation",
            params![key, pid as i64, marker, now_ms as i64, generation as i64],
        )?;
        Ok(())
    }

    /// Every tracked process: key → (pid, marker, generation).
    pub fn processes(&self) -> Result<BTreeMap<String, (u32, String, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key, pid, marker, generation FROM processes")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (k, pid, m, g) = row?;
            if let Ok(pid) = u32::try_from(pid) {
                out.insert(k, (pid, m, g.max(0) as u64));
            }
        }
        Ok(out)
    }

    /// Want `spec` (JSON) running under `key` on `host`.
    pub fn put_desired(&self, key: &str, host: &str, spec: &Value) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO desired (key, host, spec) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET host = excluded.host, spec = excluded.spec",
            params![key, host, spec.to_string()],
        )?;
        Ok(())
    }

    /// No longer want anything under `key`.
    pub fn delete_desired(&self, key: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM desired WHERE key = ?1", params![key])?;
        Ok(())
    }

    /// What should run under `key`, and where: (host, spec).
    pub fn desired(&self, key: &str) -> Result<Option<(String, Value)>, StoreError> {
        let row = self
            .conn()
            .query_row(
                "SELECT host, spec FROM desired WHERE key = ?1",
                params![key],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?;
        match row {
            None => Ok(None),
            Some((h, s)) => Ok(Some((
                h,
                serde_json::from_str(&s).map_err(corrupt("desired process"))?,
            ))),
        }
    }

    /// What `host` should run: key → spec.
    pub fn desired_for(&self, host: &str) -> Result<BTreeMap<String, Value>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key, spec FROM desired WHERE host = ?1")?;
        let rows = stmt.query_map(params![host], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (k, s) = row?;
            out.insert(
                k,
                serde_json::from_str(&s).map_err(corrupt("desired process"))?,
            );
        }
        Ok(out)
    }

    /// A host's report of what runs there. A forgotten host that reports is back: true then.
    pub fn put_host_report(
        &self,
        host: &str,
        advertise: &str,
        report: &Value,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO hosts (name, advertise, last_seen_unix_ms, report) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET advertise = excluded.advertise,
                 last_seen_unix_ms = excluded.last_seen_unix_ms, report = excluded.report",
            params![host, advertise, now_ms as i64, report.to_string()],
        )?;
        let back = tx.execute("DELETE FROM forgotten_hosts WHERE name = ?1", params![host])?;
        tx.commit()?;
        Ok(back > 0)
    }

    /// Declares `host` gone for good, unless it reported after `silent_since` (Unix ms; judged in
    /// the same transaction as the change, so a report that lands meanwhile wins): its report is
    /// emptied (its address stays, so its nodes are never looked for elsewhere) and it is
    /// recorded as forgotten at `now_ms`. Returns its last report; `Err(Forget::…)` when there is
    /// no such host or it reported since.
    pub fn forget_host(
        &self,
        host: &str,
        silent_since: u64,
        now_ms: u64,
    ) -> Result<Result<Value, Forget>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row: Option<(i64, String)> = tx
            .query_row(
                "SELECT last_seen_unix_ms, report FROM hosts WHERE name = ?1",
                params![host],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((seen, report)) = row else {
            return Ok(Err(Forget::Unknown));
        };
        let seen = seen.max(0) as u64;
        if seen > silent_since {
            return Ok(Err(Forget::Reported(seen)));
        }
        // Read before anything changes: a report that cannot be read fails the whole call.
        let report: Value = serde_json::from_str(&report).map_err(corrupt("host report"))?;
        tx.execute(
            "UPDATE hosts SET report = '[]' WHERE name = ?1",
            params![host],
        )?;
        tx.execute(
            "INSERT INTO forgotten_hosts (name, unix_ms) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET unix_ms = excluded.unix_ms",
            params![host, now_ms as i64],
        )?;
        tx.commit()?;
        Ok(Ok(report))
    }

    /// The hosts declared gone for good, with when (Unix ms).
    pub fn forgotten_hosts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, unix_ms FROM forgotten_hosts")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (n, t) = row?;
            out.insert(n, t.max(0) as u64);
        }
        Ok(out)
    }

    /// Every host that ever reported: name → (advertised address, last seen, report).
    pub fn hosts(&self) -> Result<BTreeMap<String, (String, u64, Value)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT name, advertise, last_seen_unix_ms, report FROM hosts")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (n, a, t, rep) = row?;
            out.insert(
                n,
                (
                    a,
                    t.max(0) as u64,
                    serde_json::from_str(&rep).map_err(corrupt("host report"))?,
                ),
            );
        }
        Ok(out)
    }

    /// The pid and marker recorded under `key`.
    pub fn process(&self, key: &str) -> Result<Option<(u32, String)>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT pid, marker FROM processes WHERE key = ?1",
                params![key],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .and_then(|(p, m)| Some((u32::try_from(p).ok()?, m))))
    }

    /// Forget the process recorded under `key`.
    pub fn delete_process(&self, key: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM processes WHERE key = ?1", params![key])?;
        Ok(())
    }

    /// The configuration files kept from the last import: relative path → text.
    pub fn config_files(&self) -> Result<BTreeMap<String, String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT path, text FROM config_files")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (p, t) = row?;
            out.insert(p, t);
        }
        Ok(out)
    }

    /// Keep exactly `files` (an import is the whole configuration).
    pub fn replace_config_files(&self, files: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM config_files", [])?;
        for (p, t) in files {
            tx.execute(
                "INSERT INTO config_files (path, text) VALUES (?1, ?2)",
                params![p, t],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Store a takeover reported by `node` of `server`'s group; false when already stored.
    pub fn add_failure_event(
        &self,
        server: &str,
        node: &str,
        takeover: &Value,
    ) -> Result<bool, StoreError> {
        let (epoch, at, json) = event_row(takeover)?;
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO failure_events (server, node, epoch, detected_unix_ms, takeover)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![server, node, epoch, at, json],
        )?;
        Ok(n == 1)
    }

    /// Update a stored takeover whose later phases arrived after it was first stored.
    pub fn update_failure_event(
        &self,
        server: &str,
        node: &str,
        takeover: &Value,
    ) -> Result<(), StoreError> {
        let (epoch, at, json) = event_row(takeover)?;
        self.conn().execute(
            "UPDATE failure_events SET takeover = ?5
             WHERE server = ?1 AND node = ?2 AND epoch = ?3 AND detected_unix_ms = ?4",
            params![server, node, epoch, at, json],
        )?;
        Ok(())
    }

    /// How many failure events are stored for a server.
    pub fn failure_event_count(&self, server: &str) -> Result<u64, StoreError> {
        let n: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM failure_events WHERE server = ?1",
            params![server],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// A server's failure events, newest first, at most `limit`.
    pub fn failure_events(&self, server: &str, limit: usize) -> Result<Vec<Value>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT node, takeover FROM failure_events WHERE server = ?1
             ORDER BY detected_unix_ms DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![server, limit as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (node, t) = row?;
            let mut v: Value = serde_json::from_str(&t).map_err(corrupt("failure event"))?;
            if let Value::Object(o) = &mut v {
                o.insert("node".into(), Value::String(node));
            }
            out.push(v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Activation, ServiceDef, Standby};

    fn spec(name: &str) -> ServerSpec {
        ServerSpec {
            name: name.into(),
            host: "local".into(),
            service: ServiceDef {
                command: vec!["sleep".into()],
                env: Default::default(),
                health: None,
            },
        }
    }

    #[test]
    fn survives_reopen_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            assert!(s.add_server(&spec("gw"), 1).unwrap());
            assert!(!s.add_server(&spec("gw"), 2).unwrap(), "name taken");
            let f = FailoverSpec {
                standby: Standby::Warm,
                standby_hosts: vec!["local".into()],
                mode: Activation::Trylock,
                preferred: None,
                failback: None,
            };
            s.put_failover("gw", &f, &[]).unwrap();
            let t = serde_json::json!({"epoch": 7, "detected_unix_ms": 100, "cause": "x"});
            assert!(s.add_failure_event("gw", "gw-2", &t).unwrap());
            assert!(
                !s.add_failure_event("gw", "gw-2", &t).unwrap(),
                "deduplicated"
            );
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let row = s.server("gw").unwrap().unwrap();
        assert!(row.failover.is_some());
        let ev = s.failure_events("gw", 10).unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["node"], "gw-2");
        drop(s);
        let c = Connection::open(dir.path().join("understudy.db")).unwrap();
        c.pragma_update(None, "user_version", 99i64).unwrap();
        drop(c);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn deleting_a_server_takes_its_failover_and_events() {
        let s = Store::in_memory().unwrap();
        s.add_server(&spec("px"), 1).unwrap();
        let f = FailoverSpec {
            standby: Standby::Hot,
            standby_hosts: vec!["local".into()],
            mode: Activation::Trylock,
            preferred: None,
            failback: None,
        };
        s.put_failover("px", &f, &[]).unwrap();
        s.add_failure_event("px", "px-1", &serde_json::json!({"epoch": 1}))
            .unwrap();
        assert!(s.delete_server("px").unwrap());
        assert!(s.server("px").unwrap().is_none());
        assert!(s.failure_events("px", 10).unwrap().is_empty());
        assert!(!s.delete_failover("px").unwrap());
    }
}
