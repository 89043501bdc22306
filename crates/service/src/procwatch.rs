//! Facts about processes the agent does not own, found in /proc and by waiting on a pidfd: is a
//! process still able to act, is it the service of a given node, does it handle a signal yet,
//! and when does it end. The agent reports these facts to the engine, which decides what they
//! mean; nothing here runs on the event loop except the quick /proc reads.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;

/// True while `pid` can still act: it exists, is not a zombie, and has no SIGKILL pending (a
/// process with SIGKILL pending never runs user code again, even while the kernel finishes an
/// uninterruptible wait or unmaps a large address space). A process /proc does not show (another
/// user's, under `hidepid`) counts while the kernel says its pid exists, zombie or not: counting
/// a live peer gone could make two actives, and one counted a little too long only waits.
pub fn can_act(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return pid_exists(pid);
    };
    let kill_bit = 1u64 << (Signal::SIGKILL as i32 - 1);
    let mut alive = true;
    for line in status.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "State" => alive &= !(v.starts_with('Z') || v.starts_with('X')),
            "SigPnd" | "ShdPnd" => {
                alive &= u64::from_str_radix(v, 16)
                    .map(|m| m & kill_bit == 0)
                    .unwrap_or(true)
            }
            _ => {}
        }
    }
    alive
}

/// Whether the kernel has a process (or zombie) with this pid, asked with signal 0, which
/// /proc's `hidepid` does not hide: EPERM means it exists under another user.
fn pid_exists(pid: u32) -> bool {
    // Pid 0 and negative pids name process groups for kill(2), never one process.
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// True while some thread of `pid` can still act: [`can_act`], or a main thread that exited
/// (a zombie) while other threads of the process run on, as after `pthread_exit` in `main`:
/// such a process still holds its sockets and acts. For a judgement where counting a live
/// process gone would make two actives.
pub fn may_act(pid: u32) -> bool {
    if can_act(pid) {
        return true;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let tid = t.file_name();
        let Some(tid) = tid.to_str() else {
            return false;
        };
        tid != pid.to_string()
            && std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
                .ok()
                .and_then(|st| {
                    st.rsplit_once(") ")
                        .and_then(|(_, rest)| rest.chars().next())
                })
                .is_some_and(|c| c != 'Z' && c != 'X')
    })
}

/// When `pid` started, in clock ticks since boot (`/proc/<pid>/stat` field 22): with the boot id
/// and pid namespace, which process holds the pid, whatever the wall clock did since. None
/// when that cannot be told (gone, or /proc unreadable).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, which may hold anything): field 3 is the state,
    // field 22 the start.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// [`start_ticks`] of this process, read once: it never changes, and member records carry it
/// on every heartbeat.
pub fn own_start_ticks() -> Option<u64> {
    static TICKS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| start_ticks(std::process::id()))
}

/// When `pid` started, in Unix milliseconds, to within about a second (the kernel gives the
/// boot time in whole seconds). None when that cannot be told (gone, or /proc unreadable).
pub fn started_unix_ms(pid: u32) -> Option<u64> {
    let ticks = start_ticks(pid)?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf reads a constant of the C library; it takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|hz| *hz > 0)?;
    Some(
        btime
            .saturating_mul(1000)
            .saturating_add(ticks.saturating_mul(1000) / hz),
    )
}

/// True when a thread of `pid` is in an uninterruptible wait (state `D` in /proc: a disk or
/// a network file system it waits on), where even SIGKILL waits until the wait ends.
pub fn waits_uninterruptibly(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // The command name, in parentheses, may itself hold spaces and parentheses.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('D'))
        })
    })
}

/// True while `pid` can act and runs with `UNDERSTUDY_NODE=node` and `UNDERSTUDY_GROUP=group` in
/// its environment: the service of that node of that group, so that an unrelated process that
/// reused the pid, or a pid from another host's record, never counts.
pub fn is_service_of(pid: u32, node: &str, group: &str) -> bool {
    if !can_act(pid) {
        return false;
    }
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let has = |kv: String| env.split(|b| *b == 0).any(|e| e == kv.as_bytes());
    has(format!("UNDERSTUDY_NODE={node}")) && has(format!("UNDERSTUDY_GROUP={group}"))
}

/// True when `sig` is caught, ignored or blocked by `pid`, so that it can no longer kill it.
/// None when that cannot be told (the process is gone).
pub fn handles_signal(pid: u32, sig: Signal) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let bit = 1u64 << ((sig as i32 - 1) as u32);
    Some(
        status
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                matches!(k, "SigBlk" | "SigIgn" | "SigCgt")
                    .then(|| u64::from_str_radix(v.trim(), 16).ok())
                    .flatten()
            })
            .any(|mask| mask & bit != 0),
    )
}

/// First and longest pause between two looks at /proc while a service sets up its handler (a
/// service usually installs it within a millisecond or two of its start, some take seconds), or
/// while a process is waited for without a pidfd.
const SIGNAL_POLL_FIRST: Duration = Duration::from_micros(500);
const SIGNAL_POLL_MAX: Duration = Duration::from_millis(100);

/// Waits until `pid` handles `sig` (true) or is gone (false), looking at /proc with a growing
/// pause. The kernel has no notification for a change of signal disposition, hence the looks.
pub async fn signal_handled(pid: u32, sig: Signal) -> bool {
    let mut pause = SIGNAL_POLL_FIRST;
    loop {
        match handles_signal(pid, sig) {
            Some(true) => return true,
            None => return false,
            Some(false) => {}
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(SIGNAL_POLL_MAX);
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory is
    // shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the descriptor was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

struct PidFd(OwnedFd);

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Waits until process `pid` has ended (or can no longer act), without polling: a pidfd becomes
/// readable when its process exits. Returns at once when the process is already gone.
///
/// `still_it` is asked once the pidfd is open, to close the window in which the process might
/// have ended and its pid been reused before the open: false means the pid is no longer the
/// process the caller meant, which counts as gone.
///
/// Without a usable pidfd (a kernel older than 5.3) it falls back to asking `still_it` with a
/// growing pause; the error is returned once the process is gone, for the caller to log.
pub async fn gone(pid: u32, still_it: impl Fn(u32) -> bool) -> Option<io::Error> {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return None,
        Err(e) => return Some(poll_gone(pid, still_it, e).await),
    };
    if !still_it(pid) {
        return None;
    }
    // SAFETY: PidFd owns the descriptor and always returns that same one, open until dropped.
    let registered =
        unsafe { AsyncFd::register_with_interest(PidFd(fd), tokio::io::Interest::READABLE) };
    match registered {
        Ok(fd) => match fd.readable().await {
            Ok(_ready) => None,
            Err(e) => Some(poll_gone(pid, still_it, e).await),
        },
        Err(e) => Some(poll_gone(pid, still_it, io::Error::from(e)).await),
    }
}

async fn poll_gone(pid: u32, still_it: impl Fn(u32) -> bool, why: io::Error) -> io::Error {
    let mut pause = SIGNAL_POLL_FIRST;
    while still_it(pid) {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(SIGNAL_POLL_MAX);
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_started_when_it_did_and_a_missing_one_has_no_start() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let me = started_unix_ms(std::process::id()).expect("this process's start");
        // Started before now, and not before the boot (give the kernel's whole seconds room).
        assert!(me <= now + 1000, "{me} after {now}");
        assert!(me + 24 * 3600 * 1000 * 365 > now);
        assert_eq!(started_unix_ms(u32::MAX), None);
    }

    #[tokio::test]
    async fn gone_returns_when_the_process_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        assert!(can_act(pid));
        let t0 = std::time::Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(5), gone(pid, can_act))
            .await
            .expect("pidfd never became readable");
        assert!(err.is_none(), "{err:?}");
        assert!(t0.elapsed() >= Duration::from_millis(150));
        let _ = child.wait();
    }

    #[tokio::test]
    async fn gone_returns_at_once_for_a_process_that_is_not_there() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        let _ = child.wait();
        let err = tokio::time::timeout(Duration::from_secs(1), gone(pid, can_act))
            .await
            .expect("waited for a reaped process");
        assert!(err.is_none(), "{err:?}");
    }

    #[tokio::test]
    async fn signal_handled_sees_a_handler_installed_late() {
        // perl (Debian's perl-base is essential) ignores SIGUSR1 only after a pause; until then
        // the signal would kill it. (A shell is no test subject: dash blocks every signal while it
        // waits for a child, and blocked counts as handled.)
        let mut child = std::process::Command::new("perl")
            .args([
                "-e",
                "select(undef, undef, undef, 0.2); $SIG{USR1} = 'IGNORE'; sleep 5",
            ])
            .spawn()
            .expect("spawn perl");
        let pid = child.id();
        let t0 = std::time::Instant::now();
        let handled =
            tokio::time::timeout(Duration::from_secs(5), signal_handled(pid, Signal::SIGUSR1))
                .await
                .expect("never saw the handler");
        assert!(handled);
        assert!(
            t0.elapsed() >= Duration::from_millis(150),
            "saw a handler before perl installed it"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
