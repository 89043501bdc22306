//! What the etcd tests share: a real etcd member started on free ports (plain, or with TLS and
//! client certificates), etcd groups of real agents, and a lab of "machines" (network
//! namespaces) with etcd on one and an agent on each of two others.
//!
//! etcd's data directory is on tmpfs (`/dev/shm`): these tests judge the agents, and on a machine
//! shared with compilers etcd's fsync alone can stall longer than the default deadline (a real
//! deployment gives etcd a disk of its own, as etcd's own tuning guide says).
#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::disallowed_methods)] // real processes run in real time: tests sleep on std threads

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::netns::{Lab, Machine};

pub const S: Duration = Duration::from_secs(1);
pub const ETCD: &str = "/usr/bin/etcd";

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("us-pki-")
            .tempdir()
            .expect("pki dir");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl (Debian package openssl)");
            assert!(
                out.status.success(),
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=understudy test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(d.join(format!("{name}.ext")), ext).expect("ext file");
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// One etcd member, killed on drop.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    /// etcdctl's connection arguments (endpoint, and the certificates with TLS).
    ctl_args: Vec<String>,
    data: tempfile::TempDir,
}

impl Etcd {
    /// Start a one-member cluster listening on `ip` (`launcher` runs it in a namespace) and wait
    /// until it answers.
    pub fn start(launcher: &[String], ip: &str, client_port: u16, peer_port: u16) -> Etcd {
        Etcd::start_with(launcher, ip, client_port, peer_port, None)
    }

    /// The same, serving clients over TLS with client certificates required when `pki` is given.
    pub fn start_with(
        launcher: &[String],
        ip: &str,
        client_port: u16,
        peer_port: u16,
        pki: Option<&Pki>,
    ) -> Etcd {
        assert!(
            Path::new(ETCD).exists(),
            "{ETCD} is missing: install Debian's etcd-server"
        );
        let data = tempfile::Builder::new()
            .prefix("us-etcd-")
            .tempdir_in("/dev/shm")
            .expect("etcd data dir");
        let scheme = if pki.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{ip}:{client_port}");
        let peer = format!("http://{ip}:{peer_port}");
        let mut argv: Vec<String> = launcher.to_vec();
        argv.push(ETCD.to_string());
        let mut ctl_args = vec!["--endpoints".to_string(), endpoint.clone()];
        let mut tls_args = Vec::new();
        if let Some(p) = pki {
            let f = |n: &str| p.path(n).display().to_string();
            tls_args = vec![
                format!("--cert-file={}", f("server.pem")),
                format!("--key-file={}", f("server.key")),
                format!("--trusted-ca-file={}", f("ca.pem")),
                "--client-cert-auth".to_string(),
            ];
            ctl_args.extend([
                format!("--cacert={}", f("ca.pem")),
                format!("--cert={}", f("client.pem")),
                format!("--key={}", f("client.key")),
            ]);
        }
        let log = std::fs::File::create(data.path().join("etcd.log")).expect("etcd log");
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["--data-dir", &data.path().join("d").display().to_string()])
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(&tls_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let e = Etcd {
            child,
            endpoint,
            ctl_args,
            data,
        };
        let ok = wait_until(20 * S, || e.ctl(&["endpoint", "health"]).status.success());
        assert!(
            ok,
            "etcd at {} never became healthy: {}",
            e.endpoint,
            e.log()
        );
        e
    }

    pub fn on_loopback() -> Etcd {
        Etcd::start(&[], "127.0.0.1", port(&free_addr()), port(&free_addr()))
    }

    /// A member on loopback started at nice −19, as etcd's tuning guide advises on a machine
    /// shared with other work. Started so, not reniced after: on Linux a nice value belongs to
    /// one thread, and `renice -p` of a running Go program raises only its main thread.
    pub fn on_loopback_at_high_priority() -> Etcd {
        let nice = ["nice", "-n", "-19"].map(String::from);
        Etcd::start(&nice, "127.0.0.1", port(&free_addr()), port(&free_addr()))
    }

    /// etcdctl against this member; `--user` and the like go in `args`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .args(&self.ctl_args)
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl (Debian package etcd-client)")
    }

    pub fn log(&self) -> String {
        tail(
            &std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default(),
            20,
        )
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn port(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

/// A two-node trylock group, cold standby, on the etcd at `endpoint`, with the default timing plus
/// `extra` lines in `[etcd]`.
pub fn group_at(endpoint: &str, extra: &str) -> Group {
    let mut g = Group::new("trylock", "cold");
    g.activation.remove("lock_file");
    g.tail = format!("[etcd]\nendpoints = [{}]\n{extra}\n", q(endpoint));
    g
}

pub fn group(etcd: &Etcd, extra: &str) -> Group {
    group_at(&etcd.endpoint, extra)
}

pub fn other(name: &str) -> &'static str {
    if name == "a" {
        "b"
    } else {
        "a"
    }
}

/// The standby becomes Hot with a larger epoch; returns how long that took from `t0`.
pub fn wait_takeover(
    g: &Group,
    new: &str,
    old_epoch: u64,
    t0: Instant,
    within: Duration,
) -> Duration {
    g.wait_status(new, "Hot with a newer epoch", within, |s| {
        s["mode"] == "Hot" && s["epoch"].as_u64().unwrap_or(0) > old_epoch
    });
    t0.elapsed()
}

/// [`wait_takeover`], looking at `svc` (the previous active's service) each time it asks `new`:
/// `new` answering Hot while `svc` still runs afterwards is two actives, and fails the test.
pub fn wait_takeover_after_death(
    g: &Group,
    new: &str,
    old_epoch: u64,
    svc: u32,
    t0: Instant,
    within: Duration,
) -> Duration {
    let deadline = Instant::now() + within;
    loop {
        let hot = g
            .status(new)
            .is_some_and(|s| s["mode"] == "Hot" && s["epoch"].as_u64().unwrap_or(0) > old_epoch);
        // Read after the answer: alive now means alive while `new` was already Hot.
        assert!(
            !(hot && alive(svc)),
            "{new} is Hot with an epoch above {old_epoch} while the previous active's service \
             (pid {svc}) still runs"
        );
        if hot {
            return t0.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{new} was not Hot with an epoch above {old_epoch} within {within:?}"
        );
        pause(Duration::from_millis(1));
    }
}

/// etcd on its own machine `e`, agents `a` and `b` on theirs (`shape` adjusts the group before
/// the agents start); `a` Hot, `b` a ready standby.
pub fn lab_group_with(
    lab: &mut Lab,
    shape: impl FnOnce(&mut Group),
) -> (Etcd, Group, Machine, Machine) {
    let em = lab.machine("e").expect("machine e");
    let ma = lab.machine("a").expect("machine a");
    let mb = lab.machine("b").expect("machine b");
    let etcd = Etcd::start(&Lab::launcher(&em), &em.ip, 2379, 2380);
    let mut g = group(&etcd, "");
    shape(&mut g);
    for (name, m) in [("a", &ma), ("b", &mb)] {
        g.add(name);
        // The admin API listens on the machine's own address, which the test reaches over the
        // bridge.
        let node = g.nodes.get_mut(name).expect("node");
        let admin = format!("{}:7700", m.ip);
        let text = std::fs::read_to_string(&node.config).expect("config");
        std::fs::write(&node.config, text.replace(&node.admin, &admin)).expect("config");
        node.admin = admin;
        g.launchers.insert(name.to_string(), Lab::launcher(m));
    }
    g.start_a_hot_then_b();
    g.wait_status("b", "ready standby", 10 * S, |s| s["ready"] == true);
    (etcd, g, ma, mb)
}

pub fn lab_group(lab: &mut Lab) -> (Etcd, Group, Machine, Machine) {
    lab_group_with(lab, |_| {})
}

/// A TCP proxy in front of etcd that, once armed, holds back etcd's answers on the connection
/// whose client sends `pattern` next, for `delay` from then, once: a request that etcd commits
/// at once but whose answer (and everything behind it on that connection, the watch's events
/// included) comes after its sender gave up on it, as from an etcd whose replies are slow.
/// Or ([`DelayProxy::holding_requests`]) the request itself, with everything its client sends
/// after it: a write that reaches etcd late. Or ([`DelayProxy::cutting`]) the connection is
/// closed on that request, both ways, as by a reset; or ([`DelayProxy::losing_answers`]) after
/// it, once etcd has it: a write that commits and whose answer is lost. Each connection gets two
/// threads; they end with it.
#[derive(Clone, Copy)]
enum Held {
    Answers(Duration),
    Request(Duration),
    Cut,
    LoseAnswer,
}

/// How long at most [`DelayProxy::losing_answers`] closes new connections after the lost
/// answer, unless [`DelayProxy::reopen`] ends it sooner.
pub const LOSE_REFUSES: Duration = Duration::from_millis(1500);

pub struct DelayProxy {
    /// `http://127.0.0.1:port`, for an agent's `etcd.endpoints`.
    pub endpoint: String,
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    fired: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Until then, connections are closed as they come (see `losing_answers`).
    refuse_until: std::sync::Arc<std::sync::Mutex<Option<Instant>>>,
}

impl DelayProxy {
    pub fn start(upstream: &str, pattern: &'static [u8], delay: Duration) -> DelayProxy {
        Self::start_with(upstream, pattern, Held::Answers(delay))
    }

    /// Holds back the request that holds `pattern` (once armed), rather than its answer.
    pub fn holding_requests(upstream: &str, pattern: &'static [u8], delay: Duration) -> DelayProxy {
        Self::start_with(upstream, pattern, Held::Request(delay))
    }

    /// Closes the connection on the request that holds `pattern` (once armed); the request
    /// never reaches etcd.
    pub fn cutting(upstream: &str, pattern: &'static [u8]) -> DelayProxy {
        Self::start_with(upstream, pattern, Held::Cut)
    }

    /// Passes the request that holds `pattern` (once armed) on to etcd, then closes the
    /// client's connection, so that etcd carries the request out and its answer is lost; the
    /// connections the client opens after that are closed at once (etcd out of reach for a
    /// moment: nothing can be read back to learn whether the write landed), until
    /// [`DelayProxy::reopen`], or for [`LOSE_REFUSES`] at most.
    pub fn losing_answers(upstream: &str, pattern: &'static [u8]) -> DelayProxy {
        Self::start_with(upstream, pattern, Held::LoseAnswer)
    }

    fn start_with(upstream: &str, pattern: &'static [u8], mode: Held) -> DelayProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let target = upstream
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let armed = Arc::new(AtomicBool::new(false));
        let fired = Arc::new(AtomicBool::new(false));
        let (a, f) = (Arc::clone(&armed), Arc::clone(&fired));
        let refuse_until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let refusals = Arc::clone(&refuse_until);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let refusing = *refusals.lock().unwrap_or_else(|e| e.into_inner());
                if refusing.is_some_and(|t| Instant::now() < t) {
                    continue;
                }
                let refuse = Arc::clone(&refusals);
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(mut c_rd), Ok(mut s_wr)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                let (mut s_rd, mut c_wr) = (server, client);
                let hold: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
                let held = Arc::clone(&hold);
                // Set before a request whose answer is to be lost goes on: etcd on loopback
                // answers before the connection could be closed after it.
                let lose = Arc::new(AtomicBool::new(false));
                let lost = Arc::clone(&lose);
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match s_rd.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let until = *held.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(t) = until {
                            std::thread::sleep(t.saturating_duration_since(Instant::now()));
                        }
                        if lost.load(Ordering::SeqCst) {
                            break;
                        }
                        if c_wr.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_wr.shutdown(std::net::Shutdown::Both);
                });
                let (a, f) = (Arc::clone(&a), Arc::clone(&f));
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut seen: Vec<u8> = Vec::new();
                    loop {
                        let n = match c_rd.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        // The pattern may straddle two reads: the last bytes of the previous
                        // one are searched with this one.
                        seen.extend_from_slice(&buf[..n]);
                        if a.load(Ordering::SeqCst)
                            && seen.windows(pattern.len()).any(|w| w == pattern)
                            && a.swap(false, Ordering::SeqCst)
                        {
                            f.store(true, Ordering::SeqCst);
                            match mode {
                                Held::Request(delay) => std::thread::sleep(delay),
                                // Set before the request goes on: its answer cannot slip
                                // through.
                                Held::Answers(delay) => {
                                    *hold.lock().unwrap_or_else(|e| e.into_inner()) =
                                        Some(Instant::now() + delay)
                                }
                                Held::Cut => {
                                    let _ = c_rd.shutdown(std::net::Shutdown::Both);
                                    break;
                                }
                                // etcd's side stays open a while: a connection closed under
                                // it could cancel the request before etcd carried it out.
                                Held::LoseAnswer => {
                                    lose.store(true, Ordering::SeqCst);
                                    *refuse.lock().unwrap_or_else(|e| e.into_inner()) =
                                        Some(Instant::now() + LOSE_REFUSES);
                                    let sent = s_wr.write_all(&buf[..n]);
                                    let _ = c_rd.shutdown(std::net::Shutdown::Both);
                                    if sent.is_ok() {
                                        std::thread::sleep(Duration::from_secs(1));
                                    }
                                    break;
                                }
                            }
                        }
                        let keep = seen.len().saturating_sub(pattern.len());
                        seen.drain(..keep);
                        if s_wr.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_wr.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        DelayProxy {
            endpoint,
            armed,
            fired,
            refuse_until,
        }
    }

    /// Ends the refusal of new connections after a lost answer (see `losing_answers`).
    pub fn reopen(&self) {
        *self.refuse_until.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Holds back the answers to the next request that holds the pattern.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether answers were held back.
    pub fn fired(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}
