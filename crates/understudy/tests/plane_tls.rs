//! The control plane with agents whose admin API speaks TLS and needs a token
//! (`serve --agent-tls-cert/--agent-tls-key/--agent-ca/--agent-token-file`): the agents it starts
//! are configured with them, its collector sees their state over TLS (start failover waits for
//! the preferred node to be Hot through it), and a switchover through the plane, which needs the
//! agents' token, moves activity, never to two actives at once. Certificates are made here.

mod common;
mod pki;
mod plane_common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{free_addr, run_cli, wait_until, Watcher, BIN};
use pki::pki;
use plane_common::Plane;

#[test]
fn the_collector_reaches_tls_agents_with_their_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path(), "plane");
    let token = dir.path().join("agents.token");
    std::fs::write(&token, "agents-admin-secret\n").expect("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let data = dir.path().join("data");
    let path = |p: &std::path::Path| p.display().to_string();
    let (cert, key, ca, tok) = (
        path(&p.server_cert),
        path(&p.server_key),
        path(&p.ca),
        path(&token),
    );
    let plane = Plane::start_with(
        &data,
        &free_addr(),
        &[
            "--agent-tls-cert",
            &cert,
            "--agent-tls-key",
            &key,
            "--agent-ca",
            &ca,
            "--agent-token-file",
            &tok,
        ],
    );
    plane.ctl_ok(&["add-server", "px", "--", BIN, "demo-service"]);
    plane.ctl_ok(&[
        "add-failover",
        "px",
        "--standby",
        "hot",
        "--standby-host",
        "local",
    ]);
    let (code, v) = plane.ctl(&["start-failover", "px"]);
    assert_eq!(
        code, 0,
        "start failover waits for a Hot node through the collector: {v}"
    );
    let nodes = plane.node_addrs("px");
    assert_eq!(nodes.len(), 2, "{nodes:?}");

    // The agents were configured with TLS and the token: the CLI needs the CA to reach them.
    let (name, admin) = &nodes[0];
    let (code, out, err) = run_cli(&["status", "--agent", admin, "--ca", &ca, "--json"]);
    assert_eq!(code, 0, "{name} over TLS: {out}{err}");
    let cfg = std::fs::read_to_string(data.join("nodes").join(format!("{name}.toml")))
        .expect("node config");
    assert!(
        cfg.contains("admin_tls_cert") && cfg.contains("admin_token_file"),
        "{cfg}"
    );

    // The collector's view: one active, the standby ready.
    assert!(
        wait_until(Duration::from_secs(20), || plane
            .nodes("px")
            .iter()
            .any(|n| n["mode"] == "Warm" && n["ready"] == true)),
        "the collector never saw a ready standby: {:?}",
        plane.nodes("px")
    );
    let first = plane.active("px").expect("an active node");

    // A switchover through the plane: a mutating call, refused by the agents without the token.
    let watcher = Watcher::start(nodes.clone());
    let (code, v) = plane.ctl(&["switchover", "px"]);
    assert_eq!(code, 0, "switchover through the plane: {v}");
    assert!(
        wait_until(Duration::from_secs(15), || plane
            .active("px")
            .is_some_and(|a| a != first)),
        "activity did not move: {:?}",
        plane.nodes("px")
    );
    watcher.finish();
}
