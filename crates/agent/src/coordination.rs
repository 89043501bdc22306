//! Which coordinator a node uses: the lock file (`activation.lock_file`) or etcd (`[etcd]`). The
//! configuration has exactly one of them.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;
use understudy_coordinator::{
    CoordError, CoordEvent, Coordinator, EtcdCoordinator, Fence, LockFileCoordinator, Members,
};

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
