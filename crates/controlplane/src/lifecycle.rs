//! Document 000's lifecycle as pure rules: given where a server stands, may this step happen, and
//! if not, why and what to do. The API executes a step only after its rule said yes; the rules
//! read no clock and touch no process, so they are tested exhaustively here.

use crate::model::ServerState;

/// A lifecycle step a person asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Start the server as a plain, unprotected server.
    StartServer,
    /// Stop the plain server.
    StopServer,
    /// Remove the server from the inventory.
    DeleteServer,
    /// Add (or replace) the failover service.
    AddFailover,
    /// Boot the server and its standbys with failover.
    StartFailover,
    /// Discontinue the standbys; the active's service stays as a plain server.
    StopFailover,
    /// Remove the failover configuration.
    DeleteFailover,
    /// Hand activity to a standby.
    Switchover,
}

/// Where a server stands, as the rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation {
    /// The server's state.
    pub state: ServerState,
    /// A failover service has been added.
    pub has_failover: bool,
}

/// A refusal: the reason, and what the person can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why not.
    pub reason: String,
    /// What to do instead.
    pub hint: String,
    /// Some when the same call with `force` goes through: the refusal guards against a host
    /// that cannot confirm, and the operator may answer for it (its machine is gone for good).
    /// It holds the host's last report (Unix ms, 0: none) as the refusal saw it: a forced call
    /// that quotes it is refused once the host reported since (the word was given on a view
    /// that no longer holds).
    pub forcible: Option<u64>,
}

fn no(reason: &str, hint: &str) -> Result<ServerState, Refusal> {
    Err(Refusal {
        reason: reason.to_string(),
        hint: hint.to_string(),
        forcible: None,
    })
}

/// May `step` happen in `s`? Yes: the server's state afterwards. No: why, and what to do.
pub fn decide(s: Situation, step: Step) -> Result<ServerState, Refusal> {
    use ServerState::*;
    use Step::*;
    match (step, s.state) {
        (StartServer, Stopped) => Ok(Running),
        (StartServer, Running) => no("the server is already running", "nothing to do"),
        (StartServer, Protected) => no(
            "the server runs with failover",
            "stop failover first; the active's service then runs as a plain server",
        ),
        (StopServer, Running) => Ok(Stopped),
        (StopServer, Stopped) => no("the server is already stopped", "nothing to do"),
        (StopServer, Protected) => no(
            "the server runs with failover: stopping it would fail over, not stop",
            "stop failover first, then stop the server",
        ),
        (DeleteServer, Stopped) => Ok(Stopped),
        (DeleteServer, _) => no(
            "the server is running",
            "stop failover (if it runs) and the server first",
        ),
        (AddFailover, Protected) => no(
            "failover is running with the current configuration",
            "stop failover, change it, then start failover again from a stopped server",
        ),
        (AddFailover, st) => Ok(st),
        (StartFailover, _) if !s.has_failover => no(
            "the server has no failover service",
            "add one first: PUT /api/servers/{name}/failover",
        ),
        (StartFailover, Stopped) => Ok(Protected),
        (StartFailover, Running) => no(
            "the server is running: a running trading server cannot start failover, because it and its standbys won't be properly synchronized at boot-up (document 000)",
            "stop the server, then start failover: it boots the server and all its standbys",
        ),
        (StartFailover, Protected) => no("failover is already running", "nothing to do"),
        (StopFailover, Protected) => Ok(Running),
        (StopFailover, _) => no("failover is not running", "nothing to do"),
        (DeleteFailover, _) if !s.has_failover => {
            no("the server has no failover service", "nothing to do")
        }
        (DeleteFailover, Protected) => no(
            "failover is running",
            "stop failover first; the server stays in the inventory as a plain server",
        ),
        (DeleteFailover, st) => Ok(st),
        (Switchover, Protected) => Ok(Protected),
        (Switchover, _) => no(
            "failover is not running",
            "start failover from a stopped server first",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServerState::*;
    use Step::*;

    const STATES: [ServerState; 3] = [Stopped, Running, Protected];
    const STEPS: [Step; 8] = [
        StartServer,
        StopServer,
        DeleteServer,
        AddFailover,
        StartFailover,
        StopFailover,
        DeleteFailover,
        Switchover,
    ];

    #[test]
    fn failover_starts_only_from_a_stopped_server() {
        for st in STATES {
            let r = decide(
                Situation {
                    state: st,
                    has_failover: true,
                },
                StartFailover,
            );
            assert_eq!(r.is_ok(), st == Stopped, "{st:?}");
        }
        let r = decide(
            Situation {
                state: Running,
                has_failover: true,
            },
            StartFailover,
        )
        .unwrap_err();
        assert!(r.reason.contains("synchronized at boot-up"));
        assert!(r.hint.contains("stop the server"));
    }

    #[test]
    fn stop_failover_leaves_a_running_server_that_must_be_stopped_before_a_restart() {
        let s = Situation {
            state: Protected,
            has_failover: true,
        };
        let after = decide(s, StopFailover).unwrap();
        assert_eq!(after, Running);
        let again = Situation {
            state: after,
            has_failover: true,
        };
        assert!(decide(again, StartFailover).is_err());
        let stopped = decide(again, StopServer).unwrap();
        assert_eq!(
            decide(
                Situation {
                    state: stopped,
                    has_failover: true
                },
                StartFailover
            ),
            Ok(Protected)
        );
    }

    #[test]
    fn every_refusal_says_what_to_do_and_nothing_protected_is_removed() {
        for st in STATES {
            for has_failover in [false, true] {
                for step in STEPS {
                    let s = Situation {
                        state: st,
                        has_failover,
                    };
                    match decide(s, step) {
                        Err(r) => {
                            assert!(!r.reason.is_empty() && !r.hint.is_empty(), "{s:?} {step:?}")
                        }
                        Ok(_) => {
                            // A protected server's failover or inventory entry is never removed
                            // while it runs.
                            assert!(
                                !(st == Protected
                                    && matches!(step, DeleteFailover | DeleteServer | AddFailover)),
                                "{s:?} {step:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
