//! The pure activation state machine of understudy.
//!
//! The agent feeds [`Input`]s (the lock was obtained, the epoch is durable, the service exited, a
//! timer tick, an operator request) into [`Engine::handle`] together with the current time, and
//! executes the [`Command`]s it returns (wait for the lock, persist the next epoch, start or
//! signal the service, release the lock). Nothing here does I/O or reads a clock, so every path —
//! including the unforgivable one, two actives — is tested exhaustively without processes or sleeps.
//!
//! Layout:
//! - [`types`]: the vocabulary (activation mode, state, standby type, roles).
//! - [`engine`]: [`Engine`], its inputs, commands and the invariants it keeps.
#![forbid(unsafe_code)]

pub mod engine;
pub mod types;

pub use engine::{
    Answer, Command, Engine, EngineConfig, Event, EventKind, HeartbeatView, Input, Now, PeerView,
    Preference, Rank, Rules, Snapshot, SvcState, Waiting, HANDOVER_GRACE, PREFERENCE_DEFER,
};
pub use types::{ActivationMode, Role, StandbyType, State};
