//! Which coordinator a node uses: the lock file (`activation.lock_file`) or etcd (`[etcd]`). The
//! configuration has exactly one of them.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use understudy_coordinator::{
    judge_namesake, CoordError, CoordEvent, Coordinator, EtcdCoordinator, Fence,
    LockFileCoordinator, MemberRecord, Members, Namesake,
};
use understudy_service::procwatch;

use crate::config::Config;

/// The group's coordinator and its membership records. With etcd, the service's guardian is told
/// every deadline of the grant through `fence`, from the coordinator's own thread (so that a
/// frozen agent loop does not hold back the extensions of a grant that is still valid, and a
/// frozen agent process does not keep its service acting past it).
pub fn connect(
    cfg: &Config,
    events: UnboundedSender<CoordEvent>,
    fence: understudy_service::Fence,
) -> Result<(Box<dyn Coordinator>, Members), CoordError> {
    match &cfg.etcd {
        None => {
            let coord = LockFileCoordinator::new(
                cfg.activation.lock_file.clone(),
                cfg.node.name.clone(),
                events,
            )?;
            let members = coord.members().clone();
            members.ensure_dir()?;
            Ok((Box::new(coord), members))
        }
        Some(etcd) => {
            let sink = Arc::new(move |f: Fence| match f {
                Fence::Until(at) => fence.arm(at),
                Fence::Released => fence.disarm(),
                Fence::Lost => fence.forget(),
            });
            let coord =
                EtcdCoordinator::new(etcd.settings(&cfg.node.name, &cfg.node.group), events, sink)?;
            let members = Members::etcd(coord.members());
            Ok((Box::new(coord), members))
        }
    }
}

/// Why this agent may not join its group under its configured identity (exit code 2: the
/// configuration, or the placement of two configurations, is wrong; nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Another live agent of the group already has this node's name.
    #[error(
        "{file}: node.name {node:?} is already taken in group {group:?} by a running agent (pid {pid}, admin {admin}); \
         two agents with one name overwrite each other's membership record and hide an active node: give this one another name"
    )]
    NameTaken {
        /// The configuration file.
        file: std::path::PathBuf,
        /// The node name.
        node: String,
        /// The group.
        group: String,
        /// The other agent's pid (on its own machine).
        pid: u32,
        /// The other agent's admin address.
        admin: String,
    },
    /// The lock file's membership records belong to another group.
    #[error(
        "{file}: activation.lock_file {lock} belongs to group {other:?} (member record of node {node:?} in {dir}), not to {group:?}: \
         give each group its own lock file (if group {other:?} no longer exists, delete {dir})"
    )]
    ForeignGroup {
        /// The configuration file.
        file: std::path::PathBuf,
        /// The lock file.
        lock: String,
        /// The membership directory.
        dir: String,
        /// This node's group.
        group: String,
        /// The group found there.
        other: String,
        /// A node of that group.
        node: String,
    },
}

/// Refuse to join when the lock file serves another group, or when a live agent of the group
/// already has this node's name. Runs before this node writes or locks anything. A record under
/// this name that may be another machine's is watched for one freshness window: a live agent
/// rewrites it meanwhile, a dead one's record stays as it is.
pub async fn check_identity(cfg: &Config, members: &Members) -> Result<(), IdentityError> {
    let node = &cfg.node;
    if let Some(other) = members.foreign(&node.group).into_iter().next() {
        let dir = members
            .dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        return Err(IdentityError::ForeignGroup {
            file: cfg.file.clone(),
            lock: cfg.activation.lock_file.display().to_string(),
            dir,
            group: node.group.clone(),
            other: other.node.group,
            node: other.node.name,
        });
    }
    let Some((rec, stamp)) = members.namesake(&node.name) else {
        return Ok(());
    };
    let window = cfg.activation.heartbeat_interval * crate::runtime::FRESH_INTERVALS;
    let taken = |rec: MemberRecord| IdentityError::NameTaken {
        file: cfg.file.clone(),
        node: node.name.clone(),
        group: node.group.clone(),
        pid: rec.node.agent_pid,
        admin: rec.node.admin,
    };
    let fresh_ms = window.as_millis() as u64;
    match judge_namesake(
        &rec,
        crate::runtime::unix_ms(),
        fresh_ms,
        procwatch::can_act,
    ) {
        Namesake::Live => return Err(taken(rec)),
        Namesake::Gone => return Ok(()),
        Namesake::Unknown => {}
    }
    tracing::info!(
        "node.name {:?} has a fresh membership record from another machine (agent pid {}); watching it for {window:?} before joining",
        node.name, rec.node.agent_pid
    );
    let deadline = tokio::time::Instant::now() + window;
    let poll = (window / 10).max(std::time::Duration::from_millis(10));
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(poll).await;
        match members.namesake(&node.name) {
            Some((rec, s)) if s != stamp => return Err(taken(rec)),
            Some(_) => {}
            // Deleted (its lease expired): that agent is gone.
            None => return Ok(()),
        }
    }
    Ok(())
}
