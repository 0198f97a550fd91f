//! Prometheus metrics (prometheus-client), served as text on the admin listener.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `route` and `status` class (`2xx` … `5xx`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route, or `none`.
    pub route: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status: &'static str,
}

/// A denial or failure reason code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The SPEC §5 reason code.
    pub reason: &'static str,
}

/// An authentication scheme.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SchemeLabels {
    /// `basic`, `bearer` or `session`.
    pub scheme: &'static str,
}

/// Why an upstream exchange failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorKindLabels {
    /// `unreachable` or `timeout`.
    pub kind: &'static str,
}

/// Reload outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `success` or `failure`.
    pub outcome: &'static str,
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by route and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Denials and failures by reason.
    pub denials: Family<ReasonLabels, Counter>,
    /// Credential verification latency by scheme.
    pub auth_seconds: Family<SchemeLabels, Histogram>,
    /// Time to upstream response headers.
    pub upstream_seconds: Histogram,
    /// Upstream failures by kind.
    pub upstream_errors: Family<ErrorKindLabels, Counter>,
    /// Client connections open now.
    pub open_connections: Gauge,
    /// Sessions in the memory store.
    pub live_sessions: Gauge,
    /// Config reloads by outcome.
    pub reloads: Family<OutcomeLabels, Counter>,
    /// 1 while the shared (Redis) store answers, 0 while it is unreachable; always 1 with
    /// the memory store.
    pub store_up: Gauge,
    /// 1 while failed-password counting and lockouts fall back to this instance's memory
    /// because Redis is unreachable.
    pub failure_counting_local: Gauge,
    /// Password hashes computed (coalesced and cached checks are not counted).
    pub password_verifications: Counter,
    /// Log lines dropped because stdout could not keep up.
    pub log_lines_dropped: Counter,
    /// Handles on `requests` counters by route and status class (see `request_counter`).
    request_cache: RwLock<HashMap<Box<str>, ClassCounters>>,
}

/// A route's `requests` counters by status class.
type ClassCounters = Vec<(&'static str, Counter)>;

/// Most routes whose request counters are cached.
const REQUEST_CACHE_MAX: usize = 1024;

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by route and status class",
            requests.clone(),
        );
        let denials = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "denials",
            "Refused or failed requests by reason",
            denials.clone(),
        );
        let auth_seconds = Family::<SchemeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "auth_duration_seconds",
            "Credential verification latency by scheme",
            auth_seconds.clone(),
        );
        let upstream_seconds = Histogram::new(latency_buckets());
        registry.register(
            "upstream_duration_seconds",
            "Time to upstream response headers",
            upstream_seconds.clone(),
        );
        let upstream_errors = Family::<ErrorKindLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by kind",
            upstream_errors.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let live_sessions = Gauge::default();
        registry.register(
            "live_sessions",
            "Sessions held in the memory store",
            live_sessions.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads by outcome",
            reloads.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while the session and failure-counter store answers (always 1 in memory)",
            store_up.clone(),
        );
        let failure_counting_local = Gauge::default();
        registry.register(
            "failure_counting_local",
            "1 while failed passwords are counted in this instance's memory because Redis is \
             unreachable",
            failure_counting_local.clone(),
        );
        let password_verifications = Counter::default();
        registry.register(
            "password_verifications",
            "Password hashes computed, for known and unknown user names alike (identical \
             attempts under way together share one; remembered successes cost none)",
            password_verifications.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stdout could not keep up (a request never waits on the log)",
            log_lines_dropped.clone(),
        );
        Metrics {
            registry,
            log_lines_dropped,
            password_verifications,
            requests,
            denials,
            auth_seconds,
            upstream_seconds,
            upstream_errors,
            open_connections,
            live_sessions,
            reloads,
            store_up,
            failure_counting_local,
            request_cache: RwLock::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// Brings `log_lines_dropped` up to `total`, the process's count so far (the counter
    /// only rises, however scrapes interleave).
    pub fn sync_log_lines_dropped(&self, total: u64) {
        self.log_lines_dropped
            .inner()
            .fetch_max(total, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a request under its route and status class. Counters are found by `&str`
    /// in a small cache of handles on the family's counters, so the per-request path neither
    /// allocates a label set nor hashes one into the family.
    fn count_request(&self, route: &str, class: &'static str) {
        if let Some((_, counter)) = self
            .request_cache
            .read()
            .get(route)
            .and_then(|by_class| by_class.iter().find(|(c, _)| *c == class))
        {
            counter.inc();
            return;
        }
        let counter = self
            .requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                status: class,
            })
            .clone();
        let mut cache = self.request_cache.write();
        // Routes come from the config, so the cache stays small; a reload that renames
        // routes can only add a few entries.
        if cache.len() < REQUEST_CACHE_MAX {
            cache
                .entry(route.into())
                .or_default()
                .push((class, counter.clone()));
        }
        counter.inc();
    }

    /// Counts one finished request.
    pub fn record_request(&self, route: Option<&str>, status: u16, reason: Option<&'static str>) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.count_request(route.unwrap_or("none"), class);
        if let Some(reason) = reason {
            self.denials.get_or_create(&ReasonLabels { reason }).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let metrics = Metrics::default();
        metrics.record_request(Some("/admin"), 403, Some("user_not_allowed"));
        let text = metrics.render();
        assert!(
            text.contains("portcullis_requests_total{route=\"/admin\",status=\"4xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("portcullis_denials_total{reason=\"user_not_allowed\"} 1"),
            "{text}"
        );
    }
}
