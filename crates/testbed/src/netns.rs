//! "Machines" for the tests: one network namespace each, joined by veth pairs to a bridge in the
//! test's own namespace (so the test reaches every machine's admin API). Faults are the real
//! ones: a link set down, 100 % packet loss with netem, every process of a machine killed at once.
//! Everything is removed on drop, also when a test or a benchmark fails. Used by
//! `understudy bench node-loss` and by the tests (`tests/etcd.rs`).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

/// A bridge and the namespaces attached to it.
pub struct Lab {
    /// Short unique tag (names of namespaces and links derive from it).
    tag: String,
    bridge: String,
    /// The /24 is `10.<net>.0.0`.
    net: u8,
    machines: Vec<Machine>,
}

/// One namespace, with its address on the lab's bridge.
#[derive(Debug, Clone)]
pub struct Machine {
    pub ns: String,
    pub ip: String,
    /// The interface inside the namespace.
    pub dev: String,
}

/// Runs `prog` with `args`; an error carries its output when it fails.
pub fn run(prog: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {prog} (Debian package iproute2)"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Like [`run`], for cleanup: failures are ignored.
fn run_quiet(prog: &str, args: &[&str]) {
    let _ = Command::new(prog).args(args).output();
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why machines cannot be made here, if they cannot: namespaces need root and iproute2's `ip`.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("network namespaces need `ip` (Debian package iproute2)".into()),
    }
}

impl Lab {
    /// A fresh bridge with address `10.<net>.0.1/24` (needs root and iproute2).
    pub fn new() -> anyhow::Result<Lab> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("u{}x{n}", pid % 100_000);
        // Distinct subnets for tests running at once in this process and in other test binaries.
        let net = (100 + (pid % 50) * 3 + n % 3) as u8;
        let bridge = format!("{tag}br");
        let lab = Lab {
            tag,
            bridge: bridge.clone(),
            net,
            machines: Vec::new(),
        };
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &["addr", "add", &format!("10.{net}.0.1/24"), "dev", &bridge],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        Ok(lab)
    }

    /// A new machine: namespace, veth pair (one end on the bridge), address `10.<net>.0.<k>`.
    pub fn machine(&mut self, name: &str) -> anyhow::Result<Machine> {
        let k = self.machines.len() + 2;
        let ns = format!("{}{name}", self.tag);
        let host_end = format!("{}{k}h", self.tag);
        let dev = "eth0".to_string();
        let ip = format!("10.{}.0.{k}", self.net);
        run("ip", &["netns", "add", &ns])?;
        let m = Machine {
            ns: ns.clone(),
            ip: ip.clone(),
            dev: dev.clone(),
        };
        // Recorded before the links exist, so a failure below still removes the namespace.
        self.machines.push(m.clone());
        run(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", &dev, "netns", &ns,
            ],
        )?;
        run("ip", &["link", "set", &host_end, "master", &self.bridge])?;
        run("ip", &["link", "set", &host_end, "up"])?;
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", &dev],
        )?;
        run("ip", &["-n", &ns, "link", "set", &dev, "up"])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(m)
    }

    /// An address on the lab's network that no machine has (for a virtual IP).
    pub fn address(&self, host: u8) -> String {
        format!("10.{}.0.{host}", self.net)
    }

    /// The argv prefix that runs a command on `m`.
    pub fn launcher(m: &Machine) -> Vec<String> {
        ["ip", "netns", "exec", &m.ns]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Cut `m` off: its interface down.
    pub fn link_down(m: &Machine) -> anyhow::Result<()> {
        run("ip", &["-n", &m.ns, "link", "set", &m.dev, "down"])
    }

    /// Bring `m`'s interface back.
    pub fn link_up(m: &Machine) -> anyhow::Result<()> {
        run("ip", &["-n", &m.ns, "link", "set", &m.dev, "up"])
    }

    /// A switch for `m`'s interface that acts with one system call, for benchmarks that time
    /// from the cut: `ip` takes 4–12 ms to start here, and nothing says when in that time the
    /// link went down.
    pub fn link_switch(m: &Machine) -> anyhow::Result<LinkSwitch> {
        LinkSwitch::new(m)
    }

    /// Every packet to and from `m` is lost while its link stays up: an nftables table in the
    /// machine's namespace drops all of its interface's traffic. (The kernels these tests run on
    /// may lack `tc netem`; nftables gives the same silence.)
    pub fn loss(m: &Machine) -> anyhow::Result<()> {
        let rules = format!(
            "table inet uscut {{\n chain in {{ type filter hook input priority -300; iifname \"{0}\" drop; }}\n chain out {{ type filter hook output priority -300; oifname \"{0}\" drop; }}\n}}\n",
            m.dev
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &m.ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("cannot run nft (Debian package nftables)")?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(rules.as_bytes())?;
        }
        if !child.wait()?.success() {
            bail!("nft -f failed in {}", m.ns);
        }
        Ok(())
    }

    /// Undo [`Lab::loss`].
    pub fn heal(m: &Machine) -> anyhow::Result<()> {
        run(
            "ip",
            &[
                "netns", "exec", &m.ns, "nft", "delete", "table", "inet", "uscut",
            ],
        )
    }

    /// Pids of every process in `m`'s namespace.
    pub fn pids(m: &Machine) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &m.ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        out.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Machine loss: SIGKILL every process of `m` at once.
    pub fn kill_all(m: &Machine) {
        Self::kill_sweep(&Self::pids(m), None);
    }

    /// Machine loss timed from its first signal: SIGKILL each of `pids` (listed beforehand with
    /// [`Lab::pids`], since `ip` takes milliseconds to start) in one sweep, `last` after all the
    /// others, so that no process is ended by another's death (a guardian by its agent's)
    /// rather than by the loss itself.
    pub fn kill_sweep(pids: &[u32], last: Option<u32>) {
        let order = pids
            .iter()
            .filter(|p| Some(**p) != last)
            .chain(last.as_ref());
        for pid in order {
            if let Ok(pid) = i32::try_from(*pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Waits until no process is left in `m`, killing any that appears meanwhile; fails after
    /// `timeout` naming what is left.
    pub fn wait_empty(m: &Machine, timeout: std::time::Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = Self::pids(m);
            if left.is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("processes {left:?} still run in {} after {timeout:?}", m.ns);
            }
            Self::kill_sweep(&left, None);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for m in &self.machines {
            Self::kill_all(m);
            run_quiet("ip", &["netns", "del", &m.ns]);
        }
        run_quiet("ip", &["link", "del", &self.bridge]);
    }
}

/// Sets one machine's interface down or up by `ioctl(SIOCSIFFLAGS)` on a socket created inside
/// the machine's namespace (a socket stays in the namespace it was created in).
pub struct LinkSwitch {
    sock: std::os::fd::OwnedFd,
    name: [libc::c_char; libc::IFNAMSIZ],
    dev: String,
}

impl LinkSwitch {
    fn new(m: &Machine) -> anyhow::Result<LinkSwitch> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let bytes = m.dev.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            bail!(
                "interface name {:?} is not a valid Linux interface name",
                m.dev
            );
        }
        let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
        for (d, b) in name.iter_mut().zip(bytes) {
            *d = *b as libc::c_char;
        }
        let path = format!("/run/netns/{}", m.ns);
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // setns changes only the calling thread's network namespace: a thread of its own, which
        // ends right after, so no other code of this process runs in the machine's namespace.
        let fd = std::thread::scope(|s| {
            s.spawn(|| -> std::io::Result<OwnedFd> {
                // SAFETY: setns and socket take plain integers; the fd returned is owned below.
                unsafe {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(OwnedFd::from_raw_fd(fd))
                }
            })
            .join()
        })
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
        .with_context(|| format!("a socket in namespace {}", m.ns))?;
        Ok(LinkSwitch {
            sock: fd,
            name,
            dev: m.dev.clone(),
        })
    }

    /// The interface down: the cut.
    pub fn down(&self) -> anyhow::Result<()> {
        self.set(false)
    }

    /// The interface up again.
    pub fn up(&self) -> anyhow::Result<()> {
        self.set(true)
    }

    fn set(&self, up: bool) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: ifreq is plain data; both ioctls read and write only that struct.
        unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_name = self.name;
            if libc::ioctl(self.sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("reading the flags of {}", self.dev));
            }
            let flags = req.ifr_ifru.ifru_flags;
            let iff_up = libc::IFF_UP as libc::c_short;
            req.ifr_ifru.ifru_flags = if up { flags | iff_up } else { flags & !iff_up };
            if libc::ioctl(self.sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| {
                    format!("setting {} {}", self.dev, if up { "up" } else { "down" })
                });
            }
        }
        Ok(())
    }
}
