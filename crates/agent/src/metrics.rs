//! Prometheus metrics of one agent (`GET /metrics`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    /// 1 while Hot, 0 while Warm.
    pub hot: Gauge,
    /// The node's epoch.
    pub epoch: Gauge,
    /// 1 while the node holds the group lock.
    pub lock_held: Gauge,
    /// Times this node became Hot.
    pub activations: Counter,
    /// Times this node stepped down (service failure, lost lock, switchover).
    pub demotions: Counter,
    /// Service process exits.
    pub service_exits: Counter,
    /// Seconds from detection (the lock handed over) to the service being told it is active; the
    /// phases in between are in `GET /events`.
    pub takeover_seconds: Histogram,
    /// Operator requests refused (e.g. PUT hot while another node is active).
    pub refused: Counter<u64, AtomicU64>,
    /// Admin API requests refused for want of the token (401) or as cross-site (403).
    pub admin_unauthorized: Counter<u64, AtomicU64>,
    /// Admin API connections refused at the connection limit or out of descriptors.
    pub admin_connections_refused: Counter<u64, AtomicU64>,
    /// Admin API connections closed because the client was too slow (headers not sent in
    /// time, or the connection outlived its lifetime).
    pub admin_connections_timed_out: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric under the `understudy_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("understudy");
        let hot = Gauge::default();
        let epoch = Gauge::default();
        let lock_held = Gauge::default();
        let activations = Counter::default();
        let demotions = Counter::default();
        let service_exits = Counter::default();
        let refused = Counter::default();
        let admin_unauthorized = Counter::default();
        let admin_connections_refused = Counter::default();
        let admin_connections_timed_out = Counter::default();
        // 50 µs .. ~1.6 s: takeovers are expected in the low milliseconds.
        let takeover_seconds = Histogram::new([
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5,
        ]);
        registry.register(
            "hot",
            "1 while this node is Hot (active), 0 while Warm",
            hot.clone(),
        );
        registry.register("epoch", "The node's fencing epoch", epoch.clone());
        registry.register(
            "lock_held",
            "1 while this node holds the group lock",
            lock_held.clone(),
        );
        registry.register(
            "activations",
            "Times this node became Hot",
            activations.clone(),
        );
        registry.register(
            "demotions",
            "Times this node stepped down from Hot",
            demotions.clone(),
        );
        registry.register(
            "service_exits",
            "Service process exits",
            service_exits.clone(),
        );
        registry.register(
            "refused_requests",
            "Operator requests refused",
            refused.clone(),
        );
        registry.register(
            "admin_unauthorized_requests",
            "Admin API requests refused without the token (401) or as cross-site (403)",
            admin_unauthorized.clone(),
        );
        registry.register(
            "admin_connections_refused",
            "Admin API connections refused at the connection limit or out of descriptors",
            admin_connections_refused.clone(),
        );
        registry.register(
            "admin_slow_clients_dropped",
            "Admin API connections closed because the client did not send its request in time",
            admin_connections_timed_out.clone(),
        );
        registry.register(
            "takeover_seconds",
            "Time from detection (the group lock handed over) to the service being told it is active",
            takeover_seconds.clone(),
        );
        Metrics {
            registry,
            hot,
            epoch,
            lock_held,
            activations,
            demotions,
            service_exits,
            takeover_seconds,
            refused,
            admin_unauthorized,
            admin_connections_refused,
            admin_connections_timed_out,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }
}
