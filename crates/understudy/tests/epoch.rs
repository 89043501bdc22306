//! The fencing epoch with real agents: it never goes backwards, whatever is written into the
//! epoch file or the lock file between restarts, and a node never goes Hot without a durable one.
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

mod common;
mod skip;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const S: Duration = Duration::from_secs(1);

fn epoch_file(g: &Group) -> PathBuf {
    PathBuf::from(format!("{}.epoch", g.lock.display()))
}

/// What to write into `<lock>.epoch` and into the lock file (None: leave it).
type Spoil = (Option<Vec<u8>>, Option<Vec<u8>>);

/// CRC-32 (IEEE), to forge a well-formed but stale epoch record.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn valid_epoch_record(epoch: u64) -> String {
    let body = format!("understudy-epoch v1 epoch={epoch} holder=zz");
    format!("{body} crc={:08x}\n", crc32(body.as_bytes()))
}

/// The epoch file's two-slot layout: each record NUL-padded to 512 bytes.
fn two_slots(a: &str, b: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for r in [a, b] {
        let mut slot = r.as_bytes().to_vec();
        slot.resize(512, 0);
        v.extend(slot);
    }
    v
}

#[test]
fn the_epoch_never_goes_backwards_across_restarts_and_garbage() {
    let mut g = Group::new("trylock", "cold");
    g.add("a");
    g.add("b");
    let w = g.watch();
    let mut last = 0u64;
    // What is written into <lock>.epoch and the lock file before each restart.
    let garbage: Vec<Spoil> = vec![
        (None, None),
        (Some(b"\x00\x01\x02 garbage".to_vec()), None),
        (
            None,
            Some(b"understudy-heartbeat v1 node=zz epoch=0 unix_ms=1\n".to_vec()),
        ),
        (
            Some(b"understudy-epoch v1 epoch=1 holder=zz crc=deadbeef\n".to_vec()),
            Some(vec![0xff; 100]),
        ),
        (
            Some(Vec::new()),
            Some(b"understudy-heartbeat v1 node=zz epoch=1 unix_ms=".to_vec()),
        ),
        (Some(valid_epoch_record(1).into_bytes()), Some(Vec::new())),
        // A well-formed two-slot file, rolled back to epoch 1, and a torn slot beside it.
        (
            Some(two_slots(&valid_epoch_record(1), &valid_epoch_record(1))),
            None,
        ),
        (
            Some(two_slots(&valid_epoch_record(2), "understudy-epoch v1 ep")),
            None,
        ),
    ];
    for (round, (ep, lk)) in garbage.into_iter().enumerate() {
        if let Some(bytes) = ep {
            std::fs::write(epoch_file(&g), bytes).unwrap();
        }
        if let Some(bytes) = lk {
            std::fs::write(&g.lock, bytes).unwrap();
        }
        // Alternate which node comes first; the other joins as standby.
        let (first, second) = if round % 2 == 0 {
            ("a", "b")
        } else {
            ("b", "a")
        };
        g.start(first);
        g.wait_mode(first, "Hot", 5 * S);
        let e = g.epoch(first);
        assert!(e > last, "round {round}: epoch {e} is not above {last}");
        last = e;
        g.wait_service_active(first, e);
        g.start(second);
        g.wait_mode(second, "Warm", S);
        g.kill9(second);
        g.kill9(first);
    }
    w.finish();
    g.expect_actives(8);
}

#[test]
fn a_full_disk_never_lets_a_node_go_hot_without_a_durable_epoch() {
    let mut g = Group::new("trylock", "cold");
    let fs = match Tmpfs::mount(&g.path.join("fs"), "64k") {
        Ok(fs) => fs,
        Err(why) => {
            return skip::skip(
                "a_full_disk_never_lets_a_node_go_hot_without_a_durable_epoch",
                &why,
            )
        }
    };
    g.set_lock(&fs.dir.join("group.lock"));
    g.set_service("restart_backoff", &q("200ms"));
    g.set_service("restart_backoff_max", &q("400ms"));
    g.add("a");
    g.add("b");
    let w = g.watch();

    // A new group on a full disk: the first epoch cannot be written, so nobody goes Hot.
    assert!(fs.fill() > 0);
    g.start("a");
    g.start("b");
    let ok = wait_until(5 * S, || {
        ["a", "b"]
            .iter()
            .any(|n| g.event_kinds(n).iter().any(|k| k == "epoch_failed"))
    });
    assert!(
        ok,
        "nobody reported epoch_failed: {:?} {:?}",
        g.event_kinds("a"),
        g.event_kinds("b")
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1200) {
        for n in ["a", "b"] {
            let s = g.st(n);
            assert_eq!(
                s["mode"], "Warm",
                "{n} went Hot without a durable epoch: {s}"
            );
            assert!(
                s["service"]["pid"].is_null(),
                "{n} started its service: {s}"
            );
        }
        sleep_ms(10);
    }
    let (code, body) = put(&g.admin("a"), "/service/activationmode/hot");
    assert_ne!(
        code, 200,
        "PUT hot succeeded without a durable epoch: {body}"
    );
    assert_eq!(g.mode("a").as_deref(), Some("Warm"));
    assert!(read_log(&g.log).is_empty(), "a service started");

    // Space again: one of them recovers by itself after its backoff.
    fs.free();
    let first = g.active(5 * S);
    let e0 = g.epoch(&first);
    assert_eq!(e0, 1);
    g.wait_service_active(&first, e0);
    let second = if first == "a" { "b" } else { "a" };
    g.wait_status(second, "ready", 5 * S, |s| s["ready"] == true);

    // Once the epoch file exists, a full disk does not stop a failover: the next epoch is
    // written in place into the file's other slot, durably, without allocating.
    assert!(fs.fill() > 0);
    g.kill9(&first);
    g.wait_mode(second, "Hot", 5 * S);
    let e1 = g.epoch(second);
    assert!(e1 > e0, "{e1} > {e0}");
    g.wait_service_active(second, e1);
    let on_disk = std::fs::read(format!("{}.epoch", g.lock.display())).unwrap();
    let text = String::from_utf8_lossy(&on_disk);
    assert!(
        text.contains(&format!("epoch={e1} ")),
        "epoch file: {text:?}"
    );
    w.finish();
    g.expect_actives(2);
    // Agents first, then the file system, then the temp dir that holds its mount point.
    g.kill9(second);
    drop(fs);
    drop(g);
}
