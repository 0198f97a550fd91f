//! The login form's content; the page itself is the `login.html` template (src/pages).

use std::time::Duration;

use crate::pages::{self, Page, PageVars, Pages};

/// Why the person is being asked to sign in again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedNotice {
    /// The session was idle for too long.
    Idle,
    /// The session reached its maximum lifetime.
    Absolute,
    /// The proxy ended the session because the account changed.
    Revoked,
    /// A newer sign-in of the same account went past `session.max_per_user`.
    Capped,
}

impl EndedNotice {
    /// The `ended=` query value.
    pub fn as_query(self) -> &'static str {
        match self {
            EndedNotice::Idle => "idle",
            EndedNotice::Absolute => "absolute",
            EndedNotice::Revoked => "revoked",
            EndedNotice::Capped => "capped",
        }
    }

    /// Parses the `ended=` query value.
    pub fn from_query(value: &str) -> Option<Self> {
        match value {
            "idle" => Some(EndedNotice::Idle),
            "absolute" => Some(EndedNotice::Absolute),
            "revoked" => Some(EndedNotice::Revoked),
            "capped" => Some(EndedNotice::Capped),
            _ => None,
        }
    }
}

/// Everything the login page shows.
pub struct LoginPage<'a> {
    /// Where to go after signing in (already checked to be a relative path).
    pub next: &'a str,
    /// A generic error after a failed attempt.
    pub error: Option<&'a str>,
    /// Why an earlier session ended.
    pub ended: Option<EndedNotice>,
    /// The idle timeout, for the notice.
    pub idle: Duration,
    /// The absolute timeout, for the notice.
    pub absolute: Duration,
    /// This request's id, shown on the page.
    pub request_id: &'a str,
}

impl LoginPage<'_> {
    /// Why the person is asked to sign in again, if an earlier session ended.
    fn notice(&self) -> String {
        match self.ended {
            Some(EndedNotice::Idle) => pages::idle_ended(self.idle),
            Some(EndedNotice::Absolute) => pages::absolute_ended(self.absolute),
            Some(EndedNotice::Revoked) => pages::REVOKED.to_string(),
            Some(EndedNotice::Capped) => pages::CAPPED.to_string(),
            None => String::new(),
        }
    }

    /// The whole HTML document, from the `login.html` template.
    pub fn render(&self, pages: &Pages, status: u16) -> String {
        let vars = PageVars {
            title: pages.title().to_string(),
            status,
            heading: if self.ended.is_some() {
                pages::SESSION_ENDED.to_string()
            } else {
                "Sign in".to_string()
            },
            message: String::new(),
            request_id: self.request_id.to_string(),
            login_url: super::LOGIN_PATH.to_string(),
            logout_url: super::LOGOUT_PATH.to_string(),
            next: self.next.to_string(),
            error: self.error.unwrap_or_default().to_string(),
            notice: self.notice(),
            idle_timeout: pages::plain_duration(self.idle),
            absolute_timeout: pages::plain_duration(self.absolute),
            ..PageVars::default()
        };
        pages.render(Page::Login, &vars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_escaped_into_the_form_and_the_notice_is_plain() {
        let page = LoginPage {
            next: "/\"><script>",
            error: None,
            ended: Some(EndedNotice::Idle),
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(3600),
            request_id: "r1",
        };
        let html = page.render(&Pages::built_in("<T>"), 200);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;T&gt;"));
        assert!(html.contains("after 1 minute of inactivity"));
        assert!(html.contains("<label for=\"password\">"));
    }

    #[test]
    fn a_revoked_session_is_told_the_account_changed() {
        assert_eq!(
            EndedNotice::from_query(EndedNotice::Revoked.as_query()),
            Some(EndedNotice::Revoked)
        );
        let page = LoginPage {
            next: "/",
            error: None,
            ended: Some(EndedNotice::Revoked),
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(3600),
            request_id: "r1",
        };
        let html = page.render(&Pages::built_in("T"), 200);
        assert!(html.contains("because your account changed"), "{html}");
    }
}
