//! Prometheus metrics of one instance: REST requests and AMQP commands (counts and latencies),
//! published events and values sealed under an unknown key. Each `Application` owns its registry (no global state), rendered by
//! `GET /metrics` in the text format.

use std::time::Duration;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandNameLabels {
    command: &'static str,
}

type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_latency: LatencyFamily<RouteLabels>,
    commands: Family<CommandLabels, Counter>,
    command_latency: LatencyFamily<CommandNameLabels>,
    events_published: Counter,
    unknown_key_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("session_manager");
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_latency = LatencyFamily::<RouteLabels>::new_with_constructor(latency_histogram);
        let commands = Family::<CommandLabels, Counter>::default();
        let command_latency =
            LatencyFamily::<CommandNameLabels>::new_with_constructor(latency_histogram);
        let events_published = Counter::default();
        let unknown_key_failures = Counter::default();
        registry.register(
            "http_requests",
            "REST requests answered",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer a REST request",
            http_latency.clone(),
        );
        registry.register(
            "amqp_commands",
            "AMQP commands handled, by outcome (ok, an error code, or dead_lettered)",
            commands.clone(),
        );
        registry.register(
            "amqp_command_duration_seconds",
            "Time from taking an AMQP command to acknowledging it",
            command_latency.clone(),
        );
        registry.register(
            "events_published",
            "SessionClosed events confirmed by the broker",
            events_published.clone(),
        );
        registry.register(
            "unknown_key_failures",
            "Requests failed because a stored value is sealed under a key id not in SESSION_ENCRYPTION_KEY",
            unknown_key_failures.clone(),
        );
        Self {
            registry,
            http_requests,
            http_latency,
            commands,
            command_latency,
            events_published,
            unknown_key_failures,
        }
    }

    /// Counts a REST request and its latency.
    pub fn record_request(&self, route: &'static str, method: &str, status: u16, took: Duration) {
        // Bounded label values: clients choose the method, and each value is a new series.
        let method = match method {
            "GET" | "POST" | "PATCH" | "DELETE" | "PUT" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        }
        .to_owned();
        self.http_latency
            .get_or_create(&RouteLabels {
                route,
                method: method.clone(),
            })
            .observe(took.as_secs_f64());
        self.http_requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }

    /// Counts an AMQP command by outcome and its latency.
    pub fn record_command(&self, command: &'static str, outcome: &'static str, took: Duration) {
        self.command_latency
            .get_or_create(&CommandNameLabels { command })
            .observe(took.as_secs_f64());
        self.commands
            .get_or_create(&CommandLabels { command, outcome })
            .inc();
    }

    /// Counts events the broker confirmed.
    pub fn record_events_published(&self, count: usize) {
        self.events_published.inc_by(count as u64);
    }

    /// Counts a request that failed on a value sealed under a key id not in the ring.
    pub fn record_unknown_key(&self) {
        self.unknown_key_failures.inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
