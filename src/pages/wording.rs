//! What to tell a person about a refusal: one heading and a sentence or two saying what
//! happened and what to do. Used for HTML, JSON (`error`) and plain text alike, so the three
//! never drift apart. Nothing here reveals whether a user exists, which of user name or
//! password was wrong, or anything about the upstream.

use std::time::Duration;

use super::Page;
use crate::error::{DenyReason, FailReason, Refusal};

/// The heading of every page about a session that ended (the 401 page and the login form).
pub const SESSION_ENDED: &str = "Your session has ended";
/// What a failed sign-in is told, whichever of user name or password was wrong.
pub const CREDENTIALS_REFUSED: &str =
    "The user name or password was not accepted. Check both and try again.";

/// What the wording may mention about the request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Who is signed in, when known (only ever shown on 403).
    pub user: Option<&'a str>,
    /// The request's method.
    pub method: &'a str,
    /// `[session] idle_timeout`.
    pub idle: Duration,
    /// `[session] absolute_timeout`.
    pub absolute: Duration,
}

/// The page, heading and message for a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// Which page shows it.
    pub page: Page,
    /// One-line heading.
    pub heading: &'static str,
    /// What happened and what to do.
    pub message: String,
}

fn said(page: Page, heading: &'static str, message: impl Into<String>) -> Described {
    Described {
        page,
        heading,
        message: message.into(),
    }
}

/// Describes `refusal` for a person.
pub fn describe(refusal: &Refusal, facts: &Facts<'_>) -> Described {
    match refusal {
        Refusal::Deny(denial) => describe_denial(denial.reason, denial.retry_after, facts),
        Refusal::Fail(failure) => match failure.reason {
            FailReason::UpstreamUnreachable | FailReason::UpstreamTimeout => said(
                Page::SiteDown,
                "The site is not answering",
                "The site behind this sign-in is not answering right now. Try again in a few moments.",
            ),
            FailReason::StoreUnavailable | FailReason::Overloaded => said(
                Page::Unavailable,
                "Temporarily unavailable",
                "Sign-in is busy or unavailable right now. Try again in a few moments.",
            ),
            // Only logged: the client is gone before any page could reach it.
            FailReason::ClientClosed => said(
                Page::Unavailable,
                "Request ended",
                "The request ended before an answer was sent. Try again.",
            ),
            FailReason::ClientBodyInvalid | FailReason::ClientBodyTimeout => said(
                Page::BadRequest,
                "This request could not be read",
                "The content sent with this request was incomplete or broken, so it was not \
                 passed on. Try again.",
            ),
        },
    }
}

fn describe_denial(reason: DenyReason, retry_after: Option<u64>, facts: &Facts<'_>) -> Described {
    match reason {
        DenyReason::MissingCredentials => said(
            Page::SignIn,
            "Sign-in required",
            "This page is only for signed-in users. Sign in to continue.",
        ),
        DenyReason::UnknownUser | DenyReason::BadPassword => said(
            Page::SignIn,
            "Sign-in failed",
            CREDENTIALS_REFUSED,
        ),
        DenyReason::MalformedCredentials => said(
            Page::BadRequest,
            "Sign-in details not understood",
            "The sign-in details sent with this request could not be read. Sign in again.",
        ),
        DenyReason::UnknownToken
        | DenyReason::TokenExpired
        | DenyReason::TokenNotYetValid
        | DenyReason::BadSignature
        | DenyReason::BadIssuer
        | DenyReason::BadAudience
        | DenyReason::DisallowedAlgorithm
        | DenyReason::WrongTokenType => said(
            Page::SignIn,
            "Access token not accepted",
            "The access token sent with this request was not accepted. Get a new token and try again.",
        ),
        DenyReason::SessionIdleTimeout => said(
            Page::SessionEnded,
            SESSION_ENDED,
            idle_ended(facts.idle),
        ),
        DenyReason::SessionAbsoluteTimeout => said(
            Page::SessionEnded,
            SESSION_ENDED,
            absolute_ended(facts.absolute),
        ),
        DenyReason::SessionRevoked => said(Page::SessionEnded, SESSION_ENDED, REVOKED),
        DenyReason::SessionCapped => said(Page::SessionEnded, SESSION_ENDED, CAPPED),
        DenyReason::SessionUnknown => said(
            Page::SessionEnded,
            SESSION_ENDED,
            "Your session is no longer valid. Sign in again to continue.",
        ),
        DenyReason::UserNotAllowed | DenyReason::InsufficientScope => said(
            Page::Forbidden,
            "This area is limited",
            match facts.user {
                Some(user) => format!(
                    "You are signed in as {user}, but this area is limited to other users. \
                     Ask the site's administrator for access, or sign out and sign in as someone else."
                ),
                None => "This area is limited to other users. Ask the site's administrator for access."
                    .to_string(),
            },
        ),
        DenyReason::MethodNotAllowed => said(
            Page::MethodNotAllowed,
            "Not allowed here",
            format!("This address does not accept {} requests.", facts.method),
        ),
        DenyReason::RateLimited => said(
            Page::TooManyAttempts,
            "Too many attempts",
            format!(
                "There were too many failed sign-in attempts. Try again in {}.",
                about(retry_after.unwrap_or(60))
            ),
        ),
        DenyReason::AmbiguousPath => said(
            Page::BadRequest,
            "This address cannot be used",
            "The address of this request could be read in more than one way, so it was refused. \
             Check the link you followed.",
        ),
        DenyReason::MalformedRequest | DenyReason::UnsupportedTransferCoding => said(
            Page::BadRequest,
            "This request cannot be used",
            "This request was not well formed, so it was refused. If a program sent it, that \
             program needs fixing.",
        ),
        DenyReason::NoRoute => said(
            Page::NotServed,
            "Not served here",
            "This address is not served here. Check the link you followed.",
        ),
    }
}

/// The sentence for a session that ended through inactivity.
pub fn idle_ended(idle: Duration) -> String {
    format!(
        "Your session ended after {} of inactivity. Sign in again to continue.",
        plain_duration(idle)
    )
}

/// The sentence for a session the proxy ended before its time.
pub const REVOKED: &str = "Your session was ended because your account changed \
     (its password was changed, or it was removed). Sign in again to continue.";

/// The sentence for a session ended by a newer sign-in past `session.max_per_user`.
pub const CAPPED: &str = "Your session was ended because your account signed in from more \
     browsers or devices than this site allows at once; the oldest sign-in ends first. Sign in \
     again to continue.";

/// The sentence for a session that reached its maximum lifetime.
pub fn absolute_ended(absolute: Duration) -> String {
    format!(
        "Your session ended after the maximum of {}. Sign in again to continue.",
        plain_duration(absolute)
    )
}

/// "about a minute", "about 15 minutes", "about 2 hours", "a few seconds".
fn about(seconds: u64) -> String {
    match seconds {
        0..=20 => "a few seconds".to_string(),
        21..=90 => "about a minute".to_string(),
        91..=5399 => format!("about {} minutes", seconds.div_ceil(60)),
        _ => format!("about {} hours", (seconds + 1800) / 3600),
    }
}

/// "15 minutes", "1 hour", "12 hours", "45 seconds".
pub fn plain_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs >= 3600 && secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else if secs >= 60 && secs.is_multiple_of(60) {
        (secs / 60, "minute")
    } else {
        (secs.max(1), "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Denial;

    fn facts() -> Facts<'static> {
        Facts {
            user: Some("bob"),
            method: "DELETE",
            idle: Duration::from_secs(1800),
            absolute: Duration::from_secs(43_200),
        }
    }

    #[test]
    fn durations_read_plainly() {
        assert_eq!(plain_duration(Duration::from_secs(1800)), "30 minutes");
        assert_eq!(plain_duration(Duration::from_secs(3600)), "1 hour");
        assert_eq!(plain_duration(Duration::from_secs(43_200)), "12 hours");
        assert_eq!(plain_duration(Duration::from_secs(2)), "2 seconds");
        assert_eq!(about(10), "a few seconds");
        assert_eq!(about(60), "about a minute");
        assert_eq!(about(900), "about 15 minutes");
        assert_eq!(about(7200), "about 2 hours");
    }

    #[test]
    fn wrong_user_and_wrong_password_read_the_same() {
        let unknown = describe(&Denial::new(DenyReason::UnknownUser, "x").into(), &facts());
        let bad = describe(&Denial::new(DenyReason::BadPassword, "x").into(), &facts());
        assert_eq!(unknown, bad);
        assert!(!unknown.message.contains("bob"));
    }

    #[test]
    fn each_situation_says_what_to_do() {
        let idle = describe(
            &Denial::new(DenyReason::SessionIdleTimeout, "x").into(),
            &facts(),
        );
        assert!(idle.message.contains("after 30 minutes of inactivity"));
        let absolute = describe(
            &Denial::new(DenyReason::SessionAbsoluteTimeout, "x").into(),
            &facts(),
        );
        assert!(absolute.message.contains("maximum of 12 hours"));
        let revoked = describe(
            &Denial::new(DenyReason::SessionRevoked, "x").into(),
            &facts(),
        );
        assert!(revoked.message.contains("because your account changed"));
        let forbidden = describe(
            &Denial::new(DenyReason::UserNotAllowed, "x").into(),
            &facts(),
        );
        assert!(forbidden.message.contains("signed in as bob"));
        let limited = Denial {
            retry_after: Some(840),
            ..Denial::new(DenyReason::RateLimited, "x")
        };
        assert!(describe(&limited.into(), &facts())
            .message
            .contains("about 14 minutes"));
        let method = describe(
            &Denial::new(DenyReason::MethodNotAllowed, "x").into(),
            &facts(),
        );
        assert!(method.message.contains("DELETE"));
    }
}
