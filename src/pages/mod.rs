//! What a person sees: the login form and the refusal pages, rendered from templates that
//! operators may replace (`[pages] dir`). Escaping is always on: a template cannot turn it off
//! (no `safe` filter, no `autoescape` blocks), so no value the client sent can become markup.

mod wording;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;

pub use wording::{
    absolute_ended, describe, idle_ended, plain_duration, Described, Facts, CAPPED,
    CREDENTIALS_REFUSED, REVOKED, SESSION_ENDED,
};

/// Every page the proxy can show, by the template that renders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The sign-in form.
    Login,
    /// 401: no credentials, or credentials not accepted.
    SignIn,
    /// 401: the session ended (idle, absolute, or unknown).
    SessionEnded,
    /// 403: signed in, but not allowed here.
    Forbidden,
    /// 405: the route does not take this method.
    MethodNotAllowed,
    /// 429: too many failed attempts.
    TooManyAttempts,
    /// 400: an ambiguous address or unreadable credentials.
    BadRequest,
    /// 403 `no_route`: nothing is served at this address.
    NotServed,
    /// 502/504: the upstream is not answering.
    SiteDown,
    /// 503: the session store or the password checks are unavailable.
    Unavailable,
}

impl Page {
    /// Every page, for validation.
    pub const ALL: [Page; 10] = [
        Page::Login,
        Page::SignIn,
        Page::SessionEnded,
        Page::Forbidden,
        Page::MethodNotAllowed,
        Page::TooManyAttempts,
        Page::BadRequest,
        Page::NotServed,
        Page::SiteDown,
        Page::Unavailable,
    ];

    /// The template file name (the same name in `[pages] dir` replaces it).
    pub fn template(self) -> &'static str {
        match self {
            Page::Login => "login.html",
            Page::SignIn => "401.html",
            Page::SessionEnded => "session-ended.html",
            Page::Forbidden => "403.html",
            Page::MethodNotAllowed => "405.html",
            Page::TooManyAttempts => "429.html",
            Page::BadRequest => "400.html",
            Page::NotServed => "no-route.html",
            Page::SiteDown => "502.html",
            Page::Unavailable => "503.html",
        }
    }
}

/// The layout every built-in page extends; replacing it rebrands them all.
const BASE: &str = "base.html";

/// The built-in templates, by file name.
const BUILT_IN: [(&str, &str); 11] = [
    (BASE, include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("401.html", include_str!("templates/401.html")),
    (
        "session-ended.html",
        include_str!("templates/session-ended.html"),
    ),
    ("403.html", include_str!("templates/403.html")),
    ("405.html", include_str!("templates/405.html")),
    ("429.html", include_str!("templates/429.html")),
    ("400.html", include_str!("templates/400.html")),
    ("no-route.html", include_str!("templates/no-route.html")),
    ("502.html", include_str!("templates/502.html")),
    ("503.html", include_str!("templates/503.html")),
];

/// The variables every template receives (all of them, on every page, so that a typo in an
/// operator's template is caught by `check` rather than rendering as nothing).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PageVars {
    /// `[pages] title`.
    pub title: String,
    /// The HTTP status of the page.
    pub status: u16,
    /// One-line heading.
    pub heading: String,
    /// What happened and what to do, in a sentence or two.
    pub message: String,
    /// The request id, to quote to the operator.
    pub request_id: String,
    /// Who is signed in (403), else empty.
    pub user: String,
    /// Where to sign in, when the route accepts sessions; else empty.
    pub sign_in_url: String,
    /// Whether to offer a sign-out button (403 with a session).
    pub sign_out: bool,
    /// The login form's address.
    pub login_url: String,
    /// The sign-out address (POST).
    pub logout_url: String,
    /// Seconds until another attempt is allowed (429), else 0.
    pub retry_after_seconds: u64,
    /// The methods the route accepts (405), comma-separated, else empty.
    pub allow: String,
    /// The request's method.
    pub method: String,
    /// Login form: where to go after signing in.
    pub next: String,
    /// Login form: the generic failure message after a failed attempt, else empty.
    pub error: String,
    /// Login form: why an earlier session ended, else empty.
    pub notice: String,
    /// `[session] idle_timeout` in words ("30 minutes").
    pub idle_timeout: String,
    /// `[session] absolute_timeout` in words ("12 hours").
    pub absolute_timeout: String,
}

/// A problem in an operator's template, found when the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The template file.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

/// The compiled page templates of one configuration.
pub struct Pages {
    env: Environment<'static>,
    title: String,
}

impl fmt::Debug for Pages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pages")
            .field("title", &self.title)
            .finish_non_exhaustive()
    }
}

impl Pages {
    /// The built-in pages under `title`.
    pub fn built_in(title: &str) -> Pages {
        Pages {
            env: built_in_env(),
            title: title.to_string(),
        }
    }

    /// The built-in pages with those in `dir` replacing them by file name. Every template is
    /// parsed and rendered once with sample values, so syntax errors, unknown variables and
    /// unknown filters are reported now, with the file and line.
    pub fn load(title: &str, dir: &Path) -> Result<Pages, TemplateError> {
        let mut env = built_in_env();
        for (name, file, source) in operator_templates(dir)? {
            reject_unescaped(&file, &source)?;
            env.add_template_owned(name, source)
                .map_err(|e| template_error(&file, &e))?;
        }
        let pages = Pages {
            env,
            title: title.to_string(),
        };
        for page in Page::ALL {
            let vars = PageVars {
                title: title.to_string(),
                status: 401,
                heading: "Heading".to_string(),
                message: "Message.".to_string(),
                request_id: "0123456789abcdef".to_string(),
                ..PageVars::default()
            };
            pages
                .try_render(page, &vars)
                .map_err(|e| template_error(&dir.join(error_template(&e, page)), &e))?;
        }
        Ok(pages)
    }

    /// `[pages] title`.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Renders `page`. Templates were checked at load; should one still fail, the built-in
    /// page is served instead (and the failure logged) rather than an empty answer.
    pub fn render(&self, page: Page, vars: &PageVars) -> String {
        match self.try_render(page, vars) {
            Ok(html) => html,
            Err(err) => {
                tracing::error!(template = page.template(), error = %err, "page template failed; serving the built-in page");
                built_in()
                    .try_render(page, vars)
                    .unwrap_or_else(|_| vars.message.clone())
            }
        }
    }

    fn try_render(&self, page: Page, vars: &PageVars) -> Result<String, minijinja::Error> {
        self.env.get_template(page.template())?.render(vars)
    }
}

/// The built-in pages, for falling back (title filled in per render).
fn built_in() -> &'static Pages {
    static PAGES: OnceLock<Pages> = OnceLock::new();
    PAGES.get_or_init(|| Pages::built_in("portcullis"))
}

fn built_in_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // `safe` would let a template print a client-controlled value as markup.
    env.remove_filter("safe");
    env.set_formatter(|out, _state, value| {
        // Engine-made markup (a macro's output) is already escaped; everything else is text.
        let text = value.to_string();
        let escaped = if value.is_safe() {
            text
        } else {
            html_escape(&text)
        };
        out.write_str(&escaped)
            .map_err(|_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write"))
    });
    for (name, source) in BUILT_IN {
        env.add_template(name, source)
            .expect("built-in page templates are valid");
    }
    env
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// The `.html` files in `dir`, each of which must replace a known template.
fn operator_templates(dir: &Path) -> Result<Vec<(String, PathBuf, String)>, TemplateError> {
    let io_error = |file: &Path, err: std::io::Error| TemplateError {
        file: file.to_path_buf(),
        line: None,
        message: format!("cannot read: {err}"),
    };
    let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, e))?;
    let mut found = BTreeMap::new();
    for entry in entries {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.ends_with(".html") {
            continue;
        }
        if !BUILT_IN.iter().any(|(known, _)| *known == name) {
            let known: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
            return Err(TemplateError {
                file: path.clone(),
                line: None,
                message: format!(
                    "not a page template name; expected one of {}",
                    known.join(", ")
                ),
            });
        }
        let source = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
        found.insert(name.to_string(), (path, source));
    }
    Ok(found
        .into_iter()
        .map(|(name, (path, source))| (name, path, source))
        .collect())
}

/// Escaping stays on: a template may not switch it off with an `autoescape` block.
fn reject_unescaped(file: &Path, source: &str) -> Result<(), TemplateError> {
    match source.find("autoescape") {
        Some(at) => Err(TemplateError {
            file: file.to_path_buf(),
            line: Some(source[..at].matches('\n').count() + 1),
            message: "`autoescape` is not allowed: HTML escaping is always on".to_string(),
        }),
        None => Ok(()),
    }
}

/// The template an error happened in (an `extends` chain may fail in the base).
fn error_template(err: &minijinja::Error, page: Page) -> String {
    err.name().unwrap_or(page.template()).to_string()
}

fn template_error(file: &Path, err: &minijinja::Error) -> TemplateError {
    TemplateError {
        file: file.to_path_buf(),
        line: err.line(),
        message: match err.detail() {
            Some(detail) => format!("{}: {detail}", err.kind()),
            None => err.kind().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> PageVars {
        PageVars {
            title: "Example <Corp>".to_string(),
            status: 403,
            heading: "Access denied".to_string(),
            message: "You are signed in as <b>eve</b>.".to_string(),
            request_id: "abc\"123".to_string(),
            user: "<b>eve</b>".to_string(),
            sign_out: true,
            logout_url: "/.portcullis/logout".to_string(),
            ..PageVars::default()
        }
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn every_built_in_page_renders_escaped() {
        let pages = Pages::built_in("Example <Corp>");
        for page in Page::ALL {
            let html = pages.render(page, &vars());
            assert!(html.starts_with("<!doctype html>"), "{page:?}");
            assert!(html.contains("Example &lt;Corp&gt;"), "{page:?}");
            assert!(!html.contains("<b>eve</b>"), "{page:?}: {html}");
            assert!(html.contains("abc&quot;123"), "{page:?}");
        }
    }

    #[test]
    fn operator_templates_replace_built_ins_and_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("403.html"),
            "<p>{{ title }} says no to {{ user }} ({{ request_id }})</p>",
        )
        .unwrap();
        let pages = Pages::load("T", dir.path()).unwrap();
        let html = pages.render(Page::Forbidden, &vars());
        assert_eq!(
            html,
            "<p>Example &lt;Corp&gt; says no to &lt;b&gt;eve&lt;/b&gt; (abc&quot;123)</p>"
        );

        std::fs::write(dir.path().join("401.html"), "line 1\n{{ usr }}").unwrap();
        let err = Pages::load("T", dir.path()).unwrap_err();
        assert!(err.file.ends_with("401.html"), "{err:?}");
        assert_eq!(err.line, Some(2), "{err:?}");
        assert!(err.message.contains("undefined"), "{err:?}");

        std::fs::write(dir.path().join("401.html"), "{% if x %}").unwrap();
        let err = Pages::load("T", dir.path()).unwrap_err();
        assert!(err.message.contains("syntax"), "{err:?}");

        std::fs::write(dir.path().join("401.html"), "{{ user|safe }}").unwrap();
        let err = Pages::load("T", dir.path()).unwrap_err();
        assert!(err.message.contains("filter"), "{err:?}");

        std::fs::write(
            dir.path().join("401.html"),
            "{% autoescape false %}{{ user }}{% endautoescape %}",
        )
        .unwrap();
        let err = Pages::load("T", dir.path()).unwrap_err();
        assert!(err.message.contains("autoescape"), "{err:?}");

        std::fs::remove_file(dir.path().join("401.html")).unwrap();
        std::fs::write(dir.path().join("404.html"), "x").unwrap();
        let err = Pages::load("T", dir.path()).unwrap_err();
        assert!(err.message.contains("expected one of"), "{err:?}");
    }
}
