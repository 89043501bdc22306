//! The guardian process.
//!
//! The agent runs its own binary as `understudy __guard <command> [args...]`, as the leader of a
//! new process group, with stdin being one end of a Unix socketpair: the *lifeline*. The agent
//! keeps the other end. The guardian:
//!
//! 1. spawns the service in its own process group (stdin `/dev/null`, stdout/stderr inherited),
//!    with `PR_SET_PDEATHSIG = SIGKILL` so the service also dies if the guardian is killed;
//! 2. writes `pid <n>\n` to the lifeline once the service is running, or `error <message>\n`
//!    and exits 127 if it could not be started;
//! 3. blocks a thread reading the lifeline: EOF or an error means the agent is gone (the kernel
//!    closes a dead process's descriptors, even after `kill -9`), and the guardian then sends
//!    `SIGKILL` to its whole process group: the service, its descendants and itself;
//! 4. waits for the service and reports `exit code <n>\n` or `exit signal <n>\n`, then exits with
//!    `n`, or `128 + signal`.
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
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{getpid, getppid, Pid};

/// Exit code when the service could not be started (the shell's convention for "cannot execute").
const EXIT_START_FAILED: i32 = 127;

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

    // Watch the lifeline before spawning, so that an agent dying during the spawn is noticed.
    match lifeline.try_clone() {
        Ok(reader) => {
            if let Err(e) = std::thread::Builder::new()
                .name("lifeline".into())
                .spawn(move || watch_lifeline(reader))
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

    let Some((program, rest)) = args.split_first() else {
        report(&mut lifeline, "error no service command given\n");
        return EXIT_START_FAILED;
    };

    let guardian = getpid();
    let mut command = Command::new(program);
    command.args(rest).stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: sigaction, prctl and getppid are plain system calls, and nothing here
    // allocates or takes a lock (`saved` was built before the fork and is only read).
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
                return Err(std::io::Error::other("guardian exited during start"));
            }
            Ok(())
        });
    }

    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let message = one_line(&format!("cannot execute {program:?}: {e}"));
            report(&mut lifeline, &format!("error {message}\n"));
            return EXIT_START_FAILED;
        }
    };
    report(&mut lifeline, &format!("pid {}\n", child.id()));

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

/// Blocks until the agent's end of the lifeline is closed, then kills the whole process group.
fn watch_lifeline(mut lifeline: File) {
    let mut buf = [0u8; 64];
    loop {
        match lifeline.read(&mut buf) {
            // The agent sends nothing today; anything it sends is ignored.
            Ok(n) if n > 0 => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EOF or a real error: the agent is gone.
            _ => break,
        }
    }
    kill_group();
}

/// Sends `SIGKILL` to the guardian's own process group (the service, its descendants, and the
/// guardian itself).
fn kill_group() -> ! {
    // kill(0, ...) addresses the caller's process group.
    let _ = kill(Pid::from_raw(0), Signal::SIGKILL);
    // Only reached if the kill failed, which should not happen: exit anyway, the agent is gone.
    std::process::exit(EXIT_START_FAILED);
}

/// Writes a protocol line to the lifeline. A failed write means the agent is gone.
fn report(lifeline: &mut File, line: &str) {
    if lifeline.write_all(line.as_bytes()).is_err() {
        kill_group();
    }
}

/// Makes `s` fit on one protocol line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}
