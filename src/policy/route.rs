//! The compiled route table: longest segment-boundary prefix wins.

use std::sync::Arc;

use crate::config::Route;
use crate::path::prefix_matches;

/// Routes in config order (for display) and in match order (longest path first).
#[derive(Debug, Default)]
pub struct RouteTable {
    in_config_order: Vec<Arc<Route>>,
    longest_first: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Compiles the table.
    pub fn new(routes: Vec<Route>) -> Self {
        let in_config_order: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let mut longest_first = in_config_order.clone();
        // Equal lengths cannot both match one path unless they differ only in case; then the
        // case-sensitive (more specific) route is tried first.
        longest_first.sort_by(|a, b| {
            b.path
                .as_str()
                .len()
                .cmp(&a.path.as_str().len())
                .then(a.case_insensitive.cmp(&b.case_insensitive))
        });
        RouteTable {
            in_config_order,
            longest_first,
        }
    }

    /// The route for a normalised matching path, if any.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.longest_first
            .iter()
            .find(|route| prefix_matches(route.path.as_str(), path, route.case_insensitive))
    }

    /// Routes as written in the config.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.in_config_order.iter()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.in_config_order.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.in_config_order.is_empty()
    }
}
