//! The lease rules of the etcd coordinator as a pure state machine: when to claim, when to renew,
//! when the holder must stop acting. No I/O and no clock: every call gets `now`, a point on this
//! node's own monotonic clock (`CLOCK_BOOTTIME` nanoseconds in the agent, a simulated drifting
//! clock in `tests/lease_simulation.rs`). The etcd task (`etcd.rs`) sends what [`Lease::poll`]
//! asks for and feeds back what etcd answered ([`Lease::answer`]) and what its watch delivered
//! ([`Lease::observe`]).
//!
//! The timing argument these rules implement is in ARCHITECTURE.md ("etcd coordinator: the timing
//! argument"); the simulation checks it under message delay, loss, clock drift and pauses.

use std::time::Duration;

/// A point on one node's monotonic clock, in nanoseconds.
pub type Nanos = u64;

fn ns(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The numbers of the timing argument (ARCHITECTURE.md, "etcd coordinator: the timing argument").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often the holder renews `leader`.
    pub renew_interval: Duration,
    /// A standby claims after seeing no renewal for this long on its own clock.
    pub lease_ttl: Duration,
    /// The time a kill takes once the deadline passed: timer and scheduling latency of the agent
    /// or the guardian, and the signal's delivery.
    pub kill_margin: Duration,
    /// Bound on the rate difference of any two clocks, in parts per million.
    pub drift_ppm: u32,
    /// The holder stops acting this long after sending its last acknowledged renewal.
    pub deadline: Duration,
}

impl Timing {
    /// The longest safe deadline: `(1 - ρ) · (lease_ttl / (1 + ρ) - kill_margin)`, `ρ` the drift.
    /// A standby's `lease_ttl` measured on a clock running fast by ρ lasts at least
    /// `lease_ttl / (1 + ρ)` of real time; the holder's deadline measured on a clock running slow
    /// lasts at most `deadline / (1 - ρ)`; the kill must fit in what is left. `None` when nothing
    /// is left.
    pub fn max_deadline(
        lease_ttl: Duration,
        kill_margin: Duration,
        drift_ppm: u32,
    ) -> Option<Duration> {
        let rho = f64::from(drift_ppm) / 1e6;
        let standby_real = lease_ttl.as_secs_f64() / (1.0 + rho);
        let left = standby_real - kill_margin.as_secs_f64();
        if left <= 0.0 || rho >= 1.0 {
            return None;
        }
        // Rounded down to whole microseconds so the bound is never exceeded by rounding.
        let micros = ((1.0 - rho) * left * 1e6).floor();
        (micros >= 1.0).then(|| Duration::from_micros(micros as u64))
    }
}

/// What a node knows of the `leader` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// `mod_revision` of the key; 0 while it does not exist.
    pub rev: i64,
    /// The holder marked the record released (its service stopped): claim at once.
    pub released: bool,
    /// The record stops failover: never claim (until the key is deleted).
    pub stopped: bool,
    /// When this node first saw the key at this revision. A claim waits `lease_ttl` from here:
    /// from when *this node received* the state, never from when it was written.
    pub since: Nanos,
}

/// Which write of `leader` a [`Sent`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Take `leader` (and raise the epoch) if it is still at `expect`.
    Claim,
    /// Rewrite our own `leader` if it is still at `expect`.
    Renew,
    /// Mark our `leader` released if it is still at `expect`; the service already stopped.
    Release,
}

/// A compare-and-swap of `leader` on its way to etcd. Its send time decides the deadline an
/// acknowledgement buys, so it is taken before the request leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// What the write is.
    pub write: Write,
    /// Send time on this node's clock.
    pub at: Nanos,
    /// The `mod_revision` the write compares against (0: the key must be absent).
    pub expect: i64,
}

/// What etcd answered to a [`Sent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The compare held; the write committed at this revision.
    Committed {
        /// The revision of the commit (the key's new `mod_revision`).
        rev: i64,
    },
    /// The compare failed: `leader` changed since `expect`. What it is now arrives through
    /// [`Lease::observe`].
    Refused,
    /// No answer that says what happened (error, timeout): the write may or may not have
    /// committed.
    Failed,
}

/// Why the holder lost its grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Someone else wrote `leader`.
    Overwritten,
    /// No renewal was acknowledged before the deadline.
    DeadlinePassed,
    /// A write was acknowledged, but only after the deadline it would have bought.
    AckedTooLate,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Loss::Overwritten => "the leader key was changed by someone else",
            Loss::DeadlinePassed => "no renewal acknowledged before the deadline",
            Loss::AckedTooLate => "renewal acknowledged after the deadline",
        })
    }
}

/// What the node must do now, from [`Lease::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send this claim, then feed its answer to [`Lease::answer`].
    Claim(Sent),
    /// Send this renewal, then feed its answer to [`Lease::answer`]. Wait for the answer no
    /// longer than [`Lease::deadline`].
    Renew(Sent),
    /// The grant is gone: the service must stop acting at once.
    Lost(Loss),
    /// Nothing to do before this instant (`None`: until something is observed or asked).
    Idle(Option<Nanos>),
}

/// What an answer meant, from [`Lease::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The claim committed: this node holds the group. Its service may act until `deadline`
    /// (arm the guardian with it before anyone is told).
    Granted {
        /// Send time of the claim plus [`Timing::deadline`].
        deadline: Nanos,
    },
    /// A renewal committed: the service may act until the new `deadline`.
    Extended {
        /// Send time of the renewal plus [`Timing::deadline`].
        deadline: Nanos,
    },
    /// The grant is gone: stop acting at once.
    Lost(Loss),
    /// The claim did not win (refused, failed, or acknowledged too late to be used).
    NotGranted,
    /// A renewal failed without an answer: it is tried again soon; the deadline still runs.
    RenewalFailed,
    /// The release is done (or failed: standbys then claim after `lease_ttl`).
    Released,
    /// An answer to a write this node no longer waits for (its grant ended meanwhile).
    Stale,
}

/// The grant this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    /// `mod_revision` of our last acknowledged write of `leader`.
    rev: i64,
    /// The service may act until here.
    deadline: Nanos,
    next_renew: Nanos,
}

/// One node's view of the lease. See the module documentation.
#[derive(Debug, Clone)]
pub struct Lease {
    timing: Timing,
    seen: Option<Observed>,
    held: Option<Held>,
    /// The write waiting for its answer; one at a time, since two would race on one revision.
    in_flight: Option<Sent>,
    /// No claim before here: a claim that failed without an answer is not retried in a loop.
    retry_at: Nanos,
}

impl Lease {
    /// A node that has not yet read the group.
    pub fn new(timing: Timing) -> Lease {
        Lease {
            timing,
            seen: None,
            held: None,
            in_flight: None,
            retry_at: 0,
        }
    }

    /// The timing this lease runs on.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// The `leader` key as this node last saw it.
    pub fn seen(&self) -> Option<Observed> {
        self.seen
    }

    /// True while this node holds the group.
    pub fn holds(&self) -> bool {
        self.held.is_some()
    }

    /// The revision of our last acknowledged write of `leader`, while holding.
    pub fn held_rev(&self) -> Option<i64> {
        self.held.map(|h| h.rev)
    }

    /// Until when the holder's service may act.
    pub fn deadline(&self) -> Option<Nanos> {
        self.held.map(|h| h.deadline)
    }

    /// How long ago this node saw `leader` change (a renewal, a claim, a release).
    pub fn renewal_age(&self, now: Nanos) -> Option<Duration> {
        self.seen
            .map(|s| Duration::from_nanos(now.saturating_sub(s.since)))
    }

    /// The `leader` key as read or watched: at `rev` (0: absent), written by this node (`mine`)
    /// or not, marked released or not. Returns the loss when it shows someone else took over.
    pub fn observe(&mut self, rev: i64, mine: bool, released: bool, now: Nanos) -> Option<Loss> {
        self.observe_record(rev, mine, released, false, now)
    }

    /// [`Lease::observe`] of a record that may stop failover (`stopped`): no claim is sent while
    /// one is the last seen.
    pub fn observe_record(
        &mut self,
        rev: i64,
        mine: bool,
        released: bool,
        stopped: bool,
        now: Nanos,
    ) -> Option<Loss> {
        if self.seen.is_some_and(|s| s.rev == rev) {
            return None;
        }
        self.seen = Some(Observed {
            rev,
            released,
            stopped,
            since: now,
        });
        match self.held {
            // A newer revision of our own can only be the write in flight; its answer follows.
            Some(h) if rev > h.rev && !mine => Some(self.lose(Loss::Overwritten)),
            _ => None,
        }
    }

    /// When a claim may be sent: at once after a release, else `lease_ttl` after this node saw
    /// `leader` in its current state. `None` before the group was read, and while failover is
    /// stopped.
    pub fn claimable_at(&self) -> Option<Nanos> {
        self.seen.filter(|s| !s.stopped).map(|s| {
            if s.released {
                s.since
            } else {
                s.since.saturating_add(ns(self.timing.lease_ttl))
            }
        })
    }

    /// True when `leader` names a live holder: present and not released.
    fn live_holder(&self) -> bool {
        self.seen.is_some_and(|s| s.rev != 0 && !s.released)
    }

    /// What to do now. `campaigning`: the agent wants the group.
    pub fn poll(&mut self, now: Nanos, campaigning: bool) -> Step {
        if let Some(h) = self.held {
            if now >= h.deadline {
                return Step::Lost(self.lose(Loss::DeadlinePassed));
            }
            if self.in_flight.is_some() {
                return Step::Idle(Some(h.deadline));
            }
            if now >= h.next_renew {
                if let Some(sent) = self.renew_now(now) {
                    return Step::Renew(sent);
                }
            }
            return Step::Idle(Some(h.next_renew.min(h.deadline)));
        }
        if let Some(sent) = self.in_flight {
            let gives_up = sent.at.saturating_add(ns(self.timing.deadline));
            if now < gives_up {
                return Step::Idle(Some(gives_up));
            }
            // A claim unanswered for a whole deadline could not be used anyway.
            self.in_flight = None;
            self.retry_at = now.saturating_add(ns(self.timing.renew_interval));
        }
        if !campaigning {
            return Step::Idle(None);
        }
        match self.claim_now(now) {
            Ok(sent) => Step::Claim(sent),
            Err(at) => Step::Idle(at),
        }
    }

    /// A renewal now, whether it is due or not (e.g. a write that raises the epoch); `None` when
    /// not holding or a write is in flight.
    pub fn renew_now(&mut self, now: Nanos) -> Option<Sent> {
        let h = self.held?;
        if self.in_flight.is_some() {
            return None;
        }
        let sent = Sent {
            write: Write::Renew,
            at: now,
            expect: h.rev,
        };
        self.in_flight = Some(sent);
        Some(sent)
    }

    /// The claim, if one may be sent now; else when one may (`None`: not before the group is
    /// read). Also the answer to an operator's immediate request (mode `hot`, `PUT …/hot`).
    pub fn claim_now(&mut self, now: Nanos) -> Result<Sent, Option<Nanos>> {
        if self.held.is_some() || self.in_flight.is_some() {
            return Err(None);
        }
        let Some(at) = self.claimable_at() else {
            return Err(None);
        };
        let at = at.max(self.retry_at);
        if now < at {
            return Err(Some(at));
        }
        let sent = Sent {
            write: Write::Claim,
            at: now,
            expect: self.seen.map(|s| s.rev).unwrap_or(0),
        };
        self.in_flight = Some(sent);
        Ok(sent)
    }

    /// True when an immediate request must be refused: a live holder renewed within `lease_ttl`.
    /// (A missing or released key still waits out [`Lease::claimable_at`].)
    pub fn held_by_other(&self, now: Nanos) -> bool {
        self.live_holder() && self.claimable_at().is_some_and(|at| now < at)
    }

    /// etcd's answer to `sent`, received at `now`.
    pub fn answer(&mut self, sent: Sent, reply: Reply, now: Nanos) -> Outcome {
        if sent.write == Write::Release {
            return Outcome::Released;
        }
        if self.in_flight != Some(sent) {
            return Outcome::Stale;
        }
        self.in_flight = None;
        let deadline = sent.at.saturating_add(ns(self.timing.deadline));
        match (sent.write, reply) {
            (Write::Claim, Reply::Committed { rev }) => {
                self.saw_own_write(rev, now);
                if now >= deadline {
                    // Too late to act on: standbys treat it as a holder that went silent.
                    return Outcome::NotGranted;
                }
                self.held = Some(Held {
                    rev,
                    deadline,
                    next_renew: sent.at.saturating_add(ns(self.timing.renew_interval)),
                });
                Outcome::Granted { deadline }
            }
            (Write::Claim, Reply::Refused | Reply::Failed) => {
                self.retry_at = now.saturating_add(ns(self.timing.renew_interval));
                Outcome::NotGranted
            }
            (Write::Renew, Reply::Committed { rev }) => {
                self.saw_own_write(rev, now);
                if now >= deadline {
                    // E.g. the agent was frozen while the answer waited: its service is gone.
                    return Outcome::Lost(self.lose(Loss::AckedTooLate));
                }
                let Some(h) = &mut self.held else {
                    return Outcome::Stale;
                };
                h.rev = rev;
                h.deadline = deadline;
                h.next_renew = sent.at.saturating_add(ns(self.timing.renew_interval));
                Outcome::Extended { deadline }
            }
            (Write::Renew, Reply::Refused) => Outcome::Lost(self.lose(Loss::Overwritten)),
            (Write::Renew, Reply::Failed) => {
                // Soon again; the deadline decides when to give up.
                if let Some(h) = &mut self.held {
                    h.next_renew = now.saturating_add(ns(self.timing.renew_interval / 4));
                }
                Outcome::RenewalFailed
            }
            (Write::Release, _) => Outcome::Released,
        }
    }

    /// Give the group up after the service stopped acting: the write that marks `leader` released
    /// (so standbys claim at once), or `None` when not holding.
    pub fn release(&mut self, now: Nanos) -> Option<Sent> {
        let h = self.held.take()?;
        self.in_flight = None;
        Some(Sent {
            write: Write::Release,
            at: now,
            expect: h.rev,
        })
    }

    /// A write of ours whose answer never came turned out to have committed at `rev` (seen in
    /// the key, compared whole): later renewals compare against it. The deadline stays where the
    /// last acknowledged write put it, since nobody told us when the late one was sent.
    pub fn adopt(&mut self, rev: i64) {
        if let Some(h) = &mut self.held {
            if rev > h.rev {
                h.rev = rev;
            }
        }
    }

    fn saw_own_write(&mut self, rev: i64, now: Nanos) {
        if self.seen.is_none_or(|s| s.rev != rev) {
            self.seen = Some(Observed {
                rev,
                released: false,
                stopped: false,
                since: now,
            });
        }
    }

    fn lose(&mut self, why: Loss) -> Loss {
        self.held = None;
        self.in_flight = None;
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn timing() -> Timing {
        let lease_ttl = Duration::from_millis(200);
        let kill_margin = Duration::from_millis(40);
        Timing {
            renew_interval: Duration::from_millis(20),
            lease_ttl,
            kill_margin,
            drift_ppm: 10_000,
            deadline: Timing::max_deadline(lease_ttl, kill_margin, 10_000).unwrap(),
        }
    }

    #[test]
    fn default_deadline_fits_the_argument() {
        let d = timing().deadline;
        // (1 - 0.01) * (200 / 1.01 - 40) ms = 156.4 ms
        assert!(
            d > Duration::from_millis(156) && d < Duration::from_millis(157),
            "{d:?}"
        );
        assert_eq!(
            Timing::max_deadline(Duration::from_millis(40), Duration::from_millis(40), 0),
            None
        );
    }

    /// A lease that holds the group since `t` (claim sent at `t`, committed at revision 5).
    fn holder(t: Nanos) -> Lease {
        let mut l = Lease::new(timing());
        l.observe(0, false, false, t);
        let Step::Claim(sent) = l.poll(t + 200 * MS, true) else {
            panic!("no claim");
        };
        assert_eq!(sent.expect, 0);
        let got = l.answer(sent, Reply::Committed { rev: 5 }, sent.at + MS);
        assert!(matches!(got, Outcome::Granted { .. }), "{got:?}");
        l
    }

    /// Review 28, H1: a record that stops failover is never claimed, however long it stays
    /// (a standby that missed the release finds it when it is back), nor taken by an
    /// immediate request; once the key is deleted (failover started again), the usual wait.
    #[test]
    fn a_stopped_group_is_never_claimed_until_its_key_goes() {
        let mut l = Lease::new(timing());
        l.observe_record(9, false, true, true, 10 * MS);
        for t in [10 * MS, 500 * MS, 3_600_000 * MS] {
            assert_eq!(l.poll(t, true), Step::Idle(None), "at {t}");
            assert_eq!(l.claim_now(t), Err(None));
        }
        assert_eq!(l.claimable_at(), None);
        l.observe(0, false, false, 4_000_000 * MS);
        assert_eq!(
            l.poll(4_000_000 * MS, true),
            Step::Idle(Some(4_000_200 * MS))
        );
        assert!(matches!(l.poll(4_000_200 * MS, true), Step::Claim(s) if s.expect == 0));
    }

    /// Review 31, M1: a stop whose answer never came, seen committed in the key while still
    /// holding, is adopted: the next renewal compares its revision (it would be refused on the
    /// old one and lose the group), and the deadline stays the last acknowledged write's.
    #[test]
    fn an_own_write_seen_late_is_adopted_without_moving_the_deadline() {
        let mut l = holder(0);
        let deadline = l.deadline().unwrap();
        let Step::Renew(sent) = l.poll(200 * MS + 20 * MS, false) else {
            panic!("no renewal");
        };
        assert_eq!(sent.expect, 5);
        assert_eq!(
            l.answer(sent, Reply::Failed, sent.at + 10 * MS),
            Outcome::RenewalFailed
        );
        // Seen in the key (ours), then adopted; an older revision never is.
        assert_eq!(
            l.observe_record(6, true, false, true, sent.at + 12 * MS),
            None
        );
        l.adopt(6);
        l.adopt(4);
        assert_eq!(l.deadline(), Some(deadline));
        let Step::Renew(next) = l.poll(sent.at + 15 * MS, false) else {
            panic!("no renewal after the failed one");
        };
        assert_eq!(next.expect, 6);
        assert!(matches!(
            l.answer(next, Reply::Committed { rev: 7 }, next.at + MS),
            Outcome::Extended { .. }
        ));
        // Not holding: nothing to adopt into.
        let mut idle = Lease::new(timing());
        idle.adopt(9);
        assert_eq!(idle.held_rev(), None);
    }

    #[test]
    fn a_standby_claims_lease_ttl_after_it_saw_the_last_change() {
        let mut l = Lease::new(timing());
        assert_eq!(l.poll(0, true), Step::Idle(None), "nothing read yet");
        l.observe(7, false, false, 10 * MS);
        assert_eq!(l.poll(11 * MS, true), Step::Idle(Some(210 * MS)));
        assert!(l.held_by_other(11 * MS));
        assert!(matches!(l.poll(210 * MS, true), Step::Claim(s) if s.expect == 7));
        // A renewal seen meanwhile restarts the wait (a fresh lease).
        let mut l = Lease::new(timing());
        l.observe(7, false, false, 10 * MS);
        l.observe(8, false, false, 100 * MS);
        assert_eq!(l.poll(210 * MS, true), Step::Idle(Some(300 * MS)));
        // Released: at once.
        l.observe(9, false, true, 120 * MS);
        assert!(matches!(l.poll(120 * MS, true), Step::Claim(s) if s.expect == 9));
    }

    #[test]
    fn the_deadline_counts_from_the_send_time_of_the_last_acknowledged_write() {
        let mut l = holder(0);
        let d = ns(timing().deadline);
        let claim_sent = 200 * MS;
        assert_eq!(l.deadline(), Some(claim_sent + d));
        let Step::Renew(r) = l.poll(claim_sent + 20 * MS, true) else {
            panic!("no renewal");
        };
        assert_eq!(
            l.poll(claim_sent + 21 * MS, true),
            Step::Idle(Some(claim_sent + d))
        );
        let got = l.answer(r, Reply::Committed { rev: 6 }, r.at + 50 * MS);
        assert_eq!(got, Outcome::Extended { deadline: r.at + d });
        // An answer that arrives past the deadline it would buy is worth nothing.
        let Step::Renew(r) = l.poll(r.at + 50 * MS, true) else {
            panic!("no renewal");
        };
        let got = l.answer(r, Reply::Committed { rev: 7 }, r.at + d);
        assert_eq!(got, Outcome::Lost(Loss::AckedTooLate));
        assert!(!l.holds());
    }

    #[test]
    fn a_silent_etcd_ends_the_grant_at_the_deadline() {
        let mut l = holder(0);
        let deadline = l.deadline().unwrap();
        let Step::Renew(r) = l.poll(220 * MS, true) else {
            panic!("no renewal");
        };
        assert_eq!(l.answer(r, Reply::Failed, 221 * MS), Outcome::RenewalFailed);
        assert!(matches!(l.poll(226 * MS, true), Step::Renew(_)));
        assert_eq!(l.poll(deadline, true), Step::Lost(Loss::DeadlinePassed));
    }

    #[test]
    fn someone_elses_write_ends_the_grant_but_our_own_in_flight_write_does_not() {
        let mut l = holder(0);
        let Step::Renew(r) = l.poll(220 * MS, true) else {
            panic!("no renewal");
        };
        // The watch delivers our own renewal before its answer arrives.
        assert_eq!(l.observe(6, true, false, 221 * MS), None);
        assert!(matches!(
            l.answer(r, Reply::Committed { rev: 6 }, 222 * MS),
            Outcome::Extended { .. }
        ));
        assert_eq!(
            l.observe(9, false, false, 230 * MS),
            Some(Loss::Overwritten)
        );
        assert!(!l.holds());
    }

    #[test]
    fn a_claim_without_an_answer_is_retried_after_a_pause() {
        let mut l = Lease::new(timing());
        l.observe(0, false, false, 0);
        let Step::Claim(c) = l.poll(200 * MS, true) else {
            panic!("no claim");
        };
        assert_eq!(l.answer(c, Reply::Failed, 201 * MS), Outcome::NotGranted);
        assert_eq!(l.poll(202 * MS, true), Step::Idle(Some(221 * MS)));
        assert!(matches!(l.poll(221 * MS, true), Step::Claim(_)));
        // An answer to the old claim arriving now is ignored.
        assert_eq!(
            l.answer(c, Reply::Committed { rev: 3 }, 222 * MS),
            Outcome::Stale
        );
    }
}
