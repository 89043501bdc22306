//! The vocabulary of DESIGN.md as types. They live in `understudy-status`, beside the records
//! that carry them (`/status`, the membership records), so the engine, the agent, its readers
//! and the services name each thing the same way.

pub use understudy_status::{ActivationMode, Role, StandbyType, State};
