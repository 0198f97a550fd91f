//! What the admin listener reports about the running proxy: `/readyz` and `/metrics`.

use std::sync::atomic::Ordering;

use super::App;
use crate::auth::Scheme;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    /// What keeps the proxy from being ready (503 while any).
    pub problems: Vec<String>,
    /// What works in a degraded way while the proxy is ready.
    pub degraded: Vec<String>,
}

impl App {
    /// Prometheus text for `/metrics`.
    pub fn render_metrics(&self) -> String {
        if let Some(live) = self.sessions.store().memory_len() {
            self.metrics
                .live_sessions
                .set(i64::try_from(live).unwrap_or(i64::MAX));
        }
        let up = self.limiter.store_up();
        self.metrics.store_up.set(i64::from(up));
        self.metrics
            .failure_counting_local
            .set(i64::from(self.limiter.counting_locally()));
        self.metrics
            .sync_log_lines_dropped(crate::telemetry::log_lines_dropped());
        self.metrics.render()
    }

    /// Readiness: the session store must have answered once when a route uses sessions (a
    /// later outage is reported as degraded), and the JWT key set must be loaded.
    pub async fn readiness(&self) -> Readiness {
        let runtime = self.runtime();
        let mut readiness = Readiness::default();
        let uses_sessions = runtime
            .config
            .routes
            .iter()
            .any(|r| r.accepts(Scheme::Session));
        let store = self.sessions.store();
        if store.redis().is_some() {
            let up = store.ready().await;
            self.limiter.observe_store(up);
            if up {
                self.store_answered.store(true, Ordering::Release);
            } else if uses_sessions && !self.store_answered.load(Ordering::Acquire) {
                readiness
                    .problems
                    .push("session store unreachable".to_string());
            } else {
                readiness.degraded.push(
                    "session store unreachable: session routes answer 503; failed passwords \
                     are counted and locked out in this instance's memory"
                        .to_string(),
                );
            }
        }
        let problems = &mut readiness.problems;
        if runtime
            .config
            .jwt
            .as_ref()
            .is_some_and(|jwt| !jwt.is_ready())
        {
            problems.push("JWT key set not loaded yet".to_string());
        }
        readiness
    }
}
