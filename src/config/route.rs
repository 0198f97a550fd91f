//! One compiled `[[route]]`: what the route table matches and the pipeline reads. Its own
//! file, so that `policy` can name it without depending on the config loader.

use http::{HeaderValue, Method};

use super::types::RoutePath;
use crate::auth::Scheme;

/// One compiled `[[route]]`.
#[derive(Debug)]
pub struct Route {
    /// Canonical path prefix.
    pub path: RoutePath,
    /// Allowed methods; `None` = all.
    pub methods: Option<Vec<Method>>,
    /// Accepted schemes in challenge order; empty = public.
    pub schemes: Vec<Scheme>,
    /// Realm in challenges.
    pub realm: String,
    /// Users admitted (empty with empty `allow_groups` = any authenticated caller).
    pub allow_users: Vec<String>,
    /// Groups admitted.
    pub allow_groups: Vec<String>,
    /// Scopes every bearer caller must hold.
    pub scopes: Vec<String>,
    /// Match ASCII-case-insensitively.
    pub case_insensitive: bool,
    /// Precomputed `WWW-Authenticate` values, one per scheme, in order.
    pub challenges: Vec<HeaderValue>,
    /// Precomputed `Allow` value when `methods` is set.
    pub allow_header: Option<HeaderValue>,
}

impl Route {
    /// Whether the route needs no credentials.
    pub fn is_public(&self) -> bool {
        self.schemes.is_empty()
    }

    /// Whether the route accepts `scheme`.
    pub fn accepts(&self, scheme: Scheme) -> bool {
        self.schemes.contains(&scheme)
    }
}
