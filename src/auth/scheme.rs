//! The authentication schemes a route can accept. A leaf: the config, the refusal reasons,
//! the challenges and the logs all name a scheme, and none of them should need the others
//! to do so.

use serde::Deserialize;

/// An authentication scheme a route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// RFC 7617 Basic.
    Basic,
    /// RFC 6750 Bearer.
    Bearer,
    /// The session cookie.
    Session,
}

impl Scheme {
    /// The lower-case name, as in the config and the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Basic => "basic",
            Scheme::Bearer => "bearer",
            Scheme::Session => "session",
        }
    }
}
