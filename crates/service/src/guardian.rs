//! The guardian process.
//!
//! The agent runs its own binary as `understudy __guard <command> [args...]`, as the leader of a
//! new process group, with stdin being one end of a Unix socketpair: the *lifeline*. The agent
//! keeps the other end. The guardian:
//!
//! 1. runs a thread reading the lifeline: EOF or an error means the agent is gone (the kernel
//!    closes a dead process's descriptors, even after `kill -9`), and the guardian then sends
//!    `SIGKILL` to its whole process group: the service, its descendants and itself. The agent may
//!    also send `deadline <ns>\n` (an instant of `CLOCK_BOOTTIME`, in nanoseconds) and
//!    `nodeadline\n`: while a deadline is set, the thread waits in `poll()` no longer than until
//!    it, and kills the group when it passes without a later one. So the service of an active
//!    whose grant may have gone to another node stops acting even when the agent is frozen
//!    (SIGSTOP, a stall) and cannot tell anyone. The clock is monotonic and counts suspend:
//!    setting the wall clock changes nothing, and a machine that slept past the deadline wakes up
//!    killing;
//! 2. once that thread has read the lines already waiting (the agent writes the deadline before
//!    it starts the guardian), and if no deadline has passed (looked at again just before the
//!    spawn and in the child before exec), spawns the service in its own process group (stdin
//!    `/dev/null`, stdout inherited, stderr through a pipe that the guardian copies to its own
//!    stderr, keeping the last lines), with `PR_SET_PDEATHSIG = SIGKILL` so the service also
//!    dies if the guardian is killed. A service whose deadline passed before it could start is
//!    never spawned: the guardian writes `error <why>\n` and kills its group;
//! 3. writes `pid <n>\n` to the lifeline once the service is running, or `error <message>\n`
//!    and exits 127 if it could not be started;
//! 4. waits for the service and reports its last stderr lines (`stderr <line>\n`, at most
//!    [`TAIL_LINES`] of [`TAIL_LINE_BYTES`]: why a service that cannot start fails), then
//!    `exit code <n>\n` or `exit signal <n>\n`, and exits with `n`, or `128 + signal`.
//!
//! `release\n` on the lifeline (the agent's `POST /service/release`, the control plane's "stop
//! failover") ends the watch for good: no deadline, and the agent's end no longer kills anything.
//! The service then outlives the agent as a plain server: unfenced, the one deliberate exception
//! to "a service never outlives its agent". The guardian stays its parent (the service's
//! `PR_SET_PDEATHSIG` points at it) until it exits.
//!
//! It runs before any async runtime exists, so it uses plain threads and blocking I/O.
//!
//! The guardian itself deliberately has no `PR_SET_PDEATHSIG`: the death signal fires when the
//! parent *thread* that spawned it exits, and the agent's runtime retires its threads at will. The
//! lifeline has no such trap: the socket closes only when the whole agent process is gone.
//!
//! What it cannot catch: a descendant that moves itself to another process group or session
//! (`setsid`, daemonizing) escapes the group kill; only a cgroup would contain it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{getpid, getppid, Pid};

/// Set once the agent released the service: losing the lifeline then kills nothing.
static RELEASED: AtomicBool = AtomicBool::new(false);

/// The deadline the lifeline thread holds (`u64::MAX`: none), for the main thread and the
/// child to look at just before the service starts: the thread only looks when it wakes, and
/// on a loaded machine the spawn can come after the deadline passed.
static DEADLINE: AtomicU64 = AtomicU64::new(u64::MAX);

/// Said when the deadline passed before the service could start.
const EXPIRED_BEFORE_START: &str =
    "error the node's grant ended (its deadline passed) before the service started\n";

/// Says on the lifeline that no service will run because the deadline passed, and kills the
/// group (the guardian with it).
fn refuse_expired(lifeline: &mut File) -> ! {
    report(lifeline, EXPIRED_BEFORE_START);
    kill_group()
}

/// True when a deadline is held and has passed. Async-signal-safe (a clock read and an atomic
/// load), for the child before exec.
fn deadline_passed() -> bool {
    boottime_ns() >= DEADLINE.load(Ordering::SeqCst)
}

/// Exit code when the service could not be started (the shell's convention for "cannot execute").
const EXIT_START_FAILED: i32 = 127;

/// Stderr lines of the service kept for the exit report.
pub const TAIL_LINES: usize = 5;
/// Longest stderr line kept (longer ones are cut).
pub const TAIL_LINE_BYTES: usize = 200;
/// How long the exit report waits for the last stderr bytes after the service ended (a
/// descendant that keeps the pipe open must not hold the report back).
const TAIL_WAIT: Duration = Duration::from_millis(200);

/// Signals the guardian ignores. The agent signals the service pid directly; the guardian must not
/// be stopped by a stray signal aimed at the group, because then nothing would report the
/// service's exit.
const IGNORED: [Signal; 5] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Runs the guardian for `args` (the service command and its arguments) and returns the process
/// exit code. Call it first thing in `main`, before any runtime or thread is started.
pub fn run(args: Vec<OsString>) -> i32 {
    // The lifeline is fd 0. A close-on-exec duplicate as a `File` lets us write to it (the socket
    // is bidirectional) and keeps it out of the service, whose stdin is replaced by /dev/null.
    let mut lifeline = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            eprintln!("understudy guardian: no lifeline on stdin: {e}");
            return EXIT_START_FAILED;
        }
    };

    let saved = ignore_signals();

    // Watch the lifeline before spawning, so that an agent dying during the spawn is noticed,
    // and spawn only once the watch has read what the agent wrote before starting us: a
    // deadline that has already passed then kills us before the service exists, instead of a
    // moment after it started acting (on a loaded machine, long enough to be reported
    // started and to write).
    let (read, lines_read) = std::sync::mpsc::channel();
    match lifeline.try_clone() {
        Ok(reader) => {
            if let Err(e) = std::thread::Builder::new()
                .name("lifeline".into())
                .spawn(move || watch_lifeline(reader, read))
            {
                eprintln!("understudy guardian: cannot start the lifeline thread: {e}");
                return EXIT_START_FAILED;
            }
        }
        Err(e) => {
            eprintln!("understudy guardian: cannot duplicate the lifeline: {e}");
            return EXIT_START_FAILED;
        }
    }

    // Err: the watch returned on `release` (the service then runs unfenced, by design) or
    // died, and a service nothing watches must never run.
    if lines_read.recv().is_err() && !RELEASED.load(Ordering::SeqCst) {
        kill_group();
    }
    if deadline_passed() {
        refuse_expired(&mut lifeline);
    }

    let Some((program, rest)) = args.split_first() else {
        report(&mut lifeline, "error no service command given\n");
        return EXIT_START_FAILED;
    };

    let guardian = getpid();
    let mut command = Command::new(program);
    command
        .args(rest)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: sigaction, prctl, getppid and clock_gettime are plain system calls, an
    // atomic load takes no lock, and nothing here allocates (`saved` was built before the fork
    // and is only read; the errors are raw OS codes, which the parent gets back as such).
    unsafe {
        command.pre_exec(move || {
            for (sig, action) in &saved {
                sigaction(*sig, action)?;
            }
            // The death signal fires when the *thread* that forked us exits; this is the
            // guardian's main thread, which lives until the guardian exits.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The guardian may have died between fork and prctl; then nothing would kill us.
            if getppid() != guardian {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            if deadline_passed() {
                return Err(std::io::Error::from_raw_os_error(libc::ETIME));
            }
            Ok(())
        });
    }

    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.raw_os_error() == Some(libc::ETIME) && deadline_passed() => {
            refuse_expired(&mut lifeline)
        }
        Err(e) => {
            let message = one_line(&format!("cannot execute {program:?}: {e}"));
            report(&mut lifeline, &format!("error {message}\n"));
            return EXIT_START_FAILED;
        }
    };
    report(&mut lifeline, &format!("pid {}\n", child.id()));
    let tail = Arc::new(Mutex::new(Tail::default()));
    let tee_done = child.stderr.take().and_then(|pipe| {
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let tail = Arc::clone(&tail);
        std::thread::Builder::new()
            .name("stderr".into())
            .spawn(move || {
                tee(pipe, &tail);
                let _ = done.send(());
            })
            .ok()
            .map(|_| finished)
    });

    let status = loop {
        match child.wait() {
            Ok(status) => break status,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Cannot happen for our own child; without a status we cannot report an exit, so
                // take everything down rather than leave an unsupervised service.
                eprintln!("understudy guardian: cannot wait for the service: {e}");
                kill_group();
            }
        }
    };
    if let Some(finished) = tee_done {
        let _ = finished.recv_timeout(TAIL_WAIT);
    }
    let lines = tail.lock().unwrap_or_else(PoisonError::into_inner).lines();
    for line in lines {
        report(&mut lifeline, &format!("stderr {}\n", one_line(&line)));
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => {
            report(&mut lifeline, &format!("exit code {code}\n"));
            code
        }
        (None, Some(sig)) => {
            report(&mut lifeline, &format!("exit signal {sig}\n"));
            128 + sig
        }
        // Neither code nor signal: only possible for stopped/continued states, which wait()
        // does not return; report something rather than nothing.
        (None, None) => {
            report(&mut lifeline, "exit code 255\n");
            255
        }
    }
}

/// Sets the [`IGNORED`] signals to `SIG_IGN` and returns their previous actions, which the service
/// gets back before exec (ignored dispositions survive exec, so they would otherwise leak into it).
fn ignore_signals() -> Vec<(Signal, SigAction)> {
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    let mut saved = Vec::with_capacity(IGNORED.len());
    for sig in IGNORED {
        // SAFETY: installing SIG_IGN cannot run any code in a handler, so it cannot break
        // async-signal-safety or Rust invariants.
        match unsafe { sigaction(sig, &ignore) } {
            Ok(old) => saved.push((sig, old)),
            Err(e) => eprintln!("understudy guardian: cannot ignore {sig}: {e}"),
        }
    }
    saved
}

/// Copies the service's stderr to the guardian's own (the agent's log, as before it was piped)
/// and keeps its last lines.
fn tee(mut pipe: ChildStderr, tail: &Mutex<Tail>) {
    let mut out = std::io::stderr();
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let chunk = buf.get(..n).unwrap_or_default();
                // The service must not stop because the agent's stderr went away.
                let _ = out.write_all(chunk);
                tail.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .feed(chunk);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// The last [`TAIL_LINES`] lines of a byte stream, each cut to [`TAIL_LINE_BYTES`].
#[derive(Debug, Default)]
struct Tail {
    done: std::collections::VecDeque<Vec<u8>>,
    current: Vec<u8>,
}

impl Tail {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.current);
                // Blank lines say nothing and must not push real ones out.
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if self.done.len() == TAIL_LINES {
                    self.done.pop_front();
                }
                self.done.push_back(line);
            } else if self.current.len() < TAIL_LINE_BYTES {
                self.current.push(b);
            }
        }
    }

    /// The kept lines, oldest first, blank ones left out; an unfinished last line counts.
    fn lines(&self) -> Vec<String> {
        let mut all: Vec<&Vec<u8>> = self.done.iter().collect();
        if !self.current.is_empty() {
            all.push(&self.current);
        }
        let lines: Vec<String> = all
            .into_iter()
            .map(|l| String::from_utf8_lossy(l).trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let skip = lines.len().saturating_sub(TAIL_LINES);
        lines.into_iter().skip(skip).collect()
    }
}

/// Longest line the agent sends (`deadline ` and 20 digits); longer ones are dropped.
const MAX_LINE: usize = 64;

/// Follows the lifeline until the agent is gone or a deadline passes, then kills the whole
/// process group. `read` is told at the first poll that finds nothing to read: the agent
/// writes its lines one at a time (a deadline per keep-alive), so a pause always comes, and
/// what it wrote before starting us has been read and acted on by then.
fn watch_lifeline(mut lifeline: File, read: std::sync::mpsc::Sender<()>) {
    let mut read = Some(read);
    let mut deadline: Option<u64> = None;
    let mut line = Lines::default();
    let mut buf = [0u8; 256];
    loop {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(at) => {
                let now = boottime_ns();
                if now >= at {
                    if read.is_some() {
                        // No service yet: say why none will run rather than vanish.
                        refuse_expired(&mut lifeline);
                    }
                    break;
                }
                // Rounded up: waking a little late is covered by the kill margin, early is not
                // possible since we look at the clock again.
                let ms = (at - now).div_ceil(1_000_000).min(i32::MAX as u64);
                PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        // Until the lines written before the service starts are read: look, do not wait.
        let timeout = if read.is_some() {
            PollTimeout::ZERO
        } else {
            timeout
        };
        let mut fds = [PollFd::new(lifeline.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => {
                if let Some(r) = read.take() {
                    let _ = r.send(());
                }
                continue;
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        match lifeline.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for cmd in line.feed(&buf[..n]) {
                    match cmd {
                        Lifeline::Deadline(at) => {
                            deadline = Some(at);
                            DEADLINE.store(at, Ordering::SeqCst);
                        }
                        Lifeline::NoDeadline => {
                            deadline = None;
                            DEADLINE.store(u64::MAX, Ordering::SeqCst);
                        }
                        // A grant that has already ended is not handed over: another node
                        // may be active, so the kill stands.
                        Lifeline::Release if deadline.is_some_and(|at| boottime_ns() >= at) => {
                            break;
                        }
                        Lifeline::Release => {
                            DEADLINE.store(u64::MAX, Ordering::SeqCst);
                            RELEASED.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A real error: the agent is gone.
            Err(_) => break,
        }
    }
    kill_group();
}

/// What the agent tells the guardian over the lifeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifeline {
    /// Kill the group at this `CLOCK_BOOTTIME` instant (ns) unless told a later one.
    Deadline(u64),
    /// No deadline: the service does not act for a grant that can expire.
    NoDeadline,
    /// The agent hands the service over: stop watching, never kill for the agent again.
    Release,
}

impl Lifeline {
    /// The line that carries it.
    pub fn encode(self) -> String {
        match self {
            Lifeline::Deadline(at) => format!("deadline {at}\n"),
            Lifeline::NoDeadline => "nodeadline\n".to_string(),
            Lifeline::Release => "release\n".to_string(),
        }
    }
}

/// Splits the lifeline's bytes into commands; unknown and overlong lines are dropped.
#[derive(Debug, Default)]
struct Lines {
    buf: Vec<u8>,
    overlong: bool,
}

impl Lines {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Lifeline> {
        let mut out = Vec::new();
        for &b in bytes {
            if b != b'\n' {
                if self.buf.len() < MAX_LINE {
                    self.buf.push(b);
                } else {
                    self.overlong = true;
                }
                continue;
            }
            if !std::mem::take(&mut self.overlong) {
                if let Some(cmd) = parse_lifeline(&self.buf) {
                    out.push(cmd);
                }
            }
            self.buf.clear();
        }
        out
    }
}

fn parse_lifeline(line: &[u8]) -> Option<Lifeline> {
    let line = std::str::from_utf8(line).ok()?;
    if line == "nodeadline" {
        return Some(Lifeline::NoDeadline);
    }
    if line == "release" {
        return Some(Lifeline::Release);
    }
    let digits = line.strip_prefix("deadline ")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lifeline::Deadline)
}

/// `CLOCK_BOOTTIME` in nanoseconds: monotonic, and it keeps counting while the machine sleeps.
pub fn boottime_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => (ts.tv_sec() as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec() as u64),
        // Cannot fail on Linux. u64::MAX makes every deadline count as passed: the safe side.
        Err(_) => u64::MAX,
    }
}

/// Sends `SIGKILL` to the guardian's own process group (the service, its descendants, and the
/// guardian itself).
fn kill_group() -> ! {
    // kill(0, ...) addresses the caller's process group.
    let _ = kill(Pid::from_raw(0), Signal::SIGKILL);
    // Only reached if the kill failed, which should not happen: exit anyway, the agent is gone.
    std::process::exit(EXIT_START_FAILED);
}

/// Writes a protocol line to the lifeline. A failed write means the agent is gone, which kills
/// the group unless the agent released the service.
fn report(lifeline: &mut File, line: &str) {
    if lifeline.write_all(line.as_bytes()).is_err() && !RELEASED.load(Ordering::SeqCst) {
        kill_group();
    }
}

/// Makes `s` fit on one protocol line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_keeps_the_last_lines_cut_short() {
        let mut t = Tail::default();
        t.feed(b"one\ntwo\n\nthree\nfour\nfive\nsix\nsev");
        t.feed(b"en");
        assert_eq!(t.lines(), ["three", "four", "five", "six", "seven"]);
        let mut t = Tail::default();
        t.feed(&[b'x'; 1000]);
        t.feed(b"\n\xff\n");
        assert_eq!(
            t.lines(),
            ["x".repeat(TAIL_LINE_BYTES), "\u{fffd}".to_string()]
        );
    }

    #[test]
    fn lifeline_lines() {
        let mut l = Lines::default();
        assert_eq!(l.feed(b"deadline 12"), vec![]);
        assert_eq!(
            l.feed(b"34\nnodeadline\n"),
            vec![Lifeline::Deadline(1234), Lifeline::NoDeadline]
        );
        for bad in [
            &b"deadline\n"[..],
            b"deadline -1\n",
            b"deadline +5\n",
            b"deadline 99999999999999999999999\n",
            b"hello\n",
            b"\xff\n",
        ] {
            assert_eq!(l.feed(bad), vec![], "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = vec![b'9'; 500];
        long.push(b'\n');
        assert_eq!(l.feed(&long), vec![]);
        assert_eq!(l.feed(b"deadline 7\n"), vec![Lifeline::Deadline(7)]);
        assert_eq!(l.feed(b"release\n"), vec![Lifeline::Release]);
        assert_eq!(Lifeline::Deadline(5).encode(), "deadline 5\n");
        assert_eq!(
            parse_lifeline(Lifeline::NoDeadline.encode().trim_end().as_bytes()),
            Some(Lifeline::NoDeadline)
        );
    }
}
