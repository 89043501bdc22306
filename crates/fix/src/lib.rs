//! understudy-fix: a FIX 4.2/4.4 session layer whose session state lives in a store shared by
//! the replicas of a group, so a counterparty reconnecting to a new active carries on with the
//! same sequence numbers and can have every application message resent.
//!
//! # Layout
//!
//! * [`tags`]: tag numbers, message types, [`tags::BeginString`] and
//!   [`tags::SessionRejectReason`].
//! * [`time`]: UTCTimestamp formatting and parsing.
//! * [`codec`]: zero-copy framing ([`codec::frame`], [`codec::Deframer`]), parsing
//!   ([`codec::parse`] → [`codec::Message`]), header validation and [`codec::MessageBuilder`].
//! * [`store`]: the [`store::SessionStore`] trait, an in-memory store for tests and the fenced,
//!   append-only [`store::FileStore`] kept in a directory the group shares.
//! * [`replica`]: the stores streamed to the standby gateways (`[replication]`), so each
//!   keeps its own copy and no directory needs to be shared.
//! * [`schedule`]: session schedules (daily, weekly, in a time zone) as pure functions of
//!   an instant: open or not, which session period, next change.
//! * [`session`]: the sans-IO session state machine ([`session::Session`]): bytes and timer
//!   ticks in, frames to send and events out.
//! * [`engine`]: the tokio transport — one loop driving every session of a process over TCP,
//!   as acceptor and as initiator with a list of addresses (both replicas of a group).
//! * [`exchange_sim`]: a FIX exchange simulator (acceptor) that acknowledges, fills, cancels
//!   and replaces orders.
//! * [`gateway`]: the FIX gateway: configuration, routing rules, the persisted order map.
//! * [`initiator`]: an initiator's settings (addresses, CompIDs, timings, TLS) and their TOML
//!   form, shared by the client and the gateway's upstreams.
//! * [`orders`]: order-entry tags, field appenders and required-tag checks, shared by the
//!   gateway and the exchange simulator (the gateway never uses the simulator).
//! * [`order_map`]: the gateway's persisted, bounded order map.
//! * [`admin`]: the gateway's `GET /health` endpoint, answered by the event loop.
//! * [`quickfix`]: builds the QuickFIX/C++ counterparties of the tests and benchmarks.
//! * [`fuzz`]: the entry points of the cargo-fuzz targets `fix_codec` and `fix_session`.

#![warn(missing_docs)]

pub mod admin;
pub mod client;
pub mod codec;
pub mod engine;
pub mod exchange_sim;
pub mod fuzz;
pub mod gateway;
pub mod initiator;
pub mod order_map;
pub mod orders;
pub mod quickfix;
pub mod replica;
pub mod schedule;
pub mod session;
pub mod store;
pub mod tags;
pub mod time;
