//! The login form: one small self-contained page (inline CSS, no script, no external assets).

use std::time::Duration;

use crate::response::html_escape;

/// Why the person is being asked to sign in again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedNotice {
    /// The session was idle for too long.
    Idle,
    /// The session reached its maximum lifetime.
    Absolute,
}

impl EndedNotice {
    /// The `ended=` query value.
    pub fn as_query(self) -> &'static str {
        match self {
            EndedNotice::Idle => "idle",
            EndedNotice::Absolute => "absolute",
        }
    }

    /// Parses the `ended=` query value.
    pub fn from_query(value: &str) -> Option<Self> {
        match value {
            "idle" => Some(EndedNotice::Idle),
            "absolute" => Some(EndedNotice::Absolute),
            _ => None,
        }
    }
}

/// Everything the login page shows.
pub struct LoginPage<'a> {
    /// `[pages] title`.
    pub title: &'a str,
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

impl LoginPage<'_> {
    /// The notice line, if any.
    fn notice(&self) -> Option<(String, &'static str)> {
        if let Some(error) = self.error {
            return Some((error.to_string(), "error"));
        }
        let text = match self.ended? {
            EndedNotice::Idle => format!(
                "Your session ended after {} of inactivity. Sign in again to continue.",
                plain_duration(self.idle)
            ),
            EndedNotice::Absolute => format!(
                "Your session ended after the maximum of {}. Sign in again to continue.",
                plain_duration(self.absolute)
            ),
        };
        Some((text, "notice"))
    }

    /// The whole HTML document.
    pub fn render(&self) -> String {
        let notice = self
            .notice()
            .map(|(text, class)| {
                format!(
                    "<p class=\"{class}\" role=\"alert\">{}</p>",
                    html_escape(&text)
                )
            })
            .unwrap_or_default();
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Sign in · {title}</title><style>{CSS}</style></head>\
<body><main><p class=\"brand\">{title}</p><h1>Sign in</h1>{notice}\
<form method=\"post\" action=\"/.portcullis/login\">\
<input type=\"hidden\" name=\"next\" value=\"{next}\">\
<label for=\"username\">User name</label>\
<input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required autofocus>\
<label for=\"password\">Password</label>\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
<button type=\"submit\">Sign in</button></form></main></body></html>\n",
            title = html_escape(self.title),
            next = html_escape(self.next),
        )
    }
}

const CSS: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}\
main{max-width:24rem;margin:10vh auto;padding:2rem;background:#fff;border-radius:12px;box-shadow:0 1px 4px #0002}\
h1{font-size:1.4rem;margin:0 0 1rem}.brand{color:#5a6270;margin:0 0 .25rem}\
label{display:block;font-weight:600;margin:.75rem 0 .25rem}\
input{box-sizing:border-box;width:100%;padding:.6rem;font:inherit;border:1px solid #9aa1ad;border-radius:6px}\
input:focus,button:focus{outline:3px solid #2b6cdf;outline-offset:1px}\
button{margin-top:1.25rem;width:100%;padding:.7rem;font:inherit;font-weight:600;color:#fff;background:#1f5fcf;border:0;border-radius:6px;cursor:pointer}\
.error{background:#fdecea;color:#8a1c12;padding:.6rem .8rem;border-radius:6px}\
.notice{background:#eef4ff;color:#1d3a7a;padding:.6rem .8rem;border-radius:6px}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_plainly() {
        assert_eq!(plain_duration(Duration::from_secs(1800)), "30 minutes");
        assert_eq!(plain_duration(Duration::from_secs(3600)), "1 hour");
        assert_eq!(plain_duration(Duration::from_secs(43_200)), "12 hours");
        assert_eq!(plain_duration(Duration::from_secs(2)), "2 seconds");
    }

    #[test]
    fn next_is_escaped_into_the_form() {
        let page = LoginPage {
            title: "<T>",
            next: "/\"><script>",
            error: None,
            ended: Some(EndedNotice::Idle),
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(3600),
        };
        let html = page.render();
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;T&gt;"));
        assert!(html.contains("after 1 minute of inactivity"));
    }
}
