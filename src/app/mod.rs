//! The request pipeline, in SPEC §3 order: normalise and match, authenticate, authorise,
//! forward. Refusals become responses in exactly one place (`handle`), and every request ends
//! with exactly one access event: its `AccessGuard` emits it when dropped, with the response
//! body or, when the client goes away first, with the request's future.

mod health;

pub use health::Readiness;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::auth::Scheme;
use crate::auth::{self, AuthContext, Identity, PasswordVerifier, Principal};
use crate::body::Body;
use crate::config::types::canonical_ip;
use crate::config::{Config, Route};
use crate::error::{DenyReason, FailReason, Refusal};
use crate::login::{self, Endpoint};
use crate::pages::Facts;
use crate::path::NormalizedPath;
use crate::policy::{self, Authenticate, Described, Destination, Peer, Verdict, RESERVED_PREFIX};
use crate::proxy::headers::{rewrite_request, ForwardContext};
use crate::proxy::{client_ip::client_ip, Upstream};
use crate::ratelimit::FailureLimiter;
use crate::response::{self, Format, RefusalContext};
use crate::session::Sessions;
use crate::telemetry::access::{AccessGuard, AccessRecord, Logged};
use crate::telemetry::metrics::{ErrorKindLabels, Metrics, OutcomeLabels, SchemeLabels};

/// A configuration with everything built from it; swapped whole on reload.
pub struct Runtime {
    /// The validated config.
    pub config: Config,
    /// The upstream client built from `[upstream]`.
    pub upstream: Upstream,
}

impl Runtime {
    /// Builds the runtime for a config.
    pub fn new(config: Config) -> Self {
        let upstream = Upstream::new(&config.upstream);
        // `[jwt] jwks_url`: first fetch and periodic refresh (ends when this config is dropped).
        if let Some(jwt) = &config.jwt {
            jwt.spawn_refresh();
        }
        Runtime { config, upstream }
    }
}

/// The proxy: current runtime plus process-wide services.
pub struct App {
    runtime: ArcSwap<Runtime>,
    verifier: Arc<PasswordVerifier>,
    sessions: Sessions,
    limiter: FailureLimiter,
    metrics: Arc<Metrics>,
    /// The session store has answered once: from then on an outage is reported by
    /// `/readyz`'s body and `portcullis_store_up`, not by 503 (SPEC §6), since taking every
    /// instance out of the load balancer would stop Basic and Bearer too.
    store_answered: AtomicBool,
}

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Per-request state gathered while deciding, for the refusal response and the log.
struct Exchange {
    /// The access event, emitted when this is dropped.
    record: AccessGuard,
    route: Option<Arc<Route>>,
    format: Format,
    request_id: HeaderValue,
    /// A GET/HEAD that asks for HTML: a person's browser navigating.
    navigation: bool,
    /// Normalised path and original query, for the login page's `next`; the text is built
    /// only when a refusal needs it (see `next`).
    next: Option<(NormalizedPath, Option<PathAndQuery>)>,
    /// A `Set-Cookie` to add to whatever response is sent.
    set_cookie: Option<HeaderValue>,
    /// The known-device `Set-Cookie` after a browser's Basic sign-in.
    device_cookie: Option<HeaderValue>,
    /// A response already built by an endpoint that must still be logged as a denial.
    logged_refusal: Option<Refusal>,
    /// End an HTTP/1 connection after this response: its bytes can no longer be trusted to
    /// frame the next request the way an upstream would.
    close_connection: bool,
}

impl Exchange {
    /// The login page's `next`: normalised path and original query (empty before a route
    /// was matched).
    fn next(&self) -> String {
        let Some((path, original)) = &self.next else {
            return String::new();
        };
        match original.as_ref().and_then(PathAndQuery::query) {
            Some(query) => format!("{}?{query}", path.forward()),
            None => path.forward().to_string(),
        }
    }
}

impl App {
    /// Creates the app with an initial config. Must run inside the tokio runtime.
    pub fn new(config: Config) -> Result<Arc<Self>, String> {
        let sessions = Sessions::new(&config.session)?;
        let limiter = FailureLimiter::new(&config.rate_limit, sessions.store().redis());
        let metrics = Metrics::default();
        Ok(Arc::new(App {
            runtime: ArcSwap::from_pointee(Runtime::new(config)),
            verifier: PasswordVerifier::start_counting(metrics.password_verifications.clone()),
            sessions,
            limiter,
            store_answered: AtomicBool::new(false),
            metrics: Arc::new(metrics),
        }))
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Swaps in a new configuration for new requests; in-flight requests finish on the old
    /// one. Logs what changed (names only).
    pub fn reload(&self, config: Config) {
        let old = self.runtime.load_full();
        for change in crate::config::diff(&old.config, &config) {
            tracing::info!(change = %change, "config change");
        }
        let revoked = crate::config::revoked_users(&old.config, &config);
        if !revoked.is_empty() {
            // Each session is ended when it is next used (on any instance with this config),
            // not here: the store has no index of sessions by user to sweep.
            tracing::info!(
                users = %revoked.join(", "),
                "reload: sessions of {} users will be revoked",
                revoked.len()
            );
        }
        self.runtime.store(Arc::new(Runtime::new(config)));
        self.metrics
            .reloads
            .get_or_create(&OutcomeLabels { outcome: "success" })
            .inc();
        tracing::info!("configuration reloaded");
    }

    /// The current runtime.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Handles one request; never fails (refusals are responses). The access event leaves with
    /// the response body, or when this future is dropped before a response was ready.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Logged<Body>>, Infallible> {
        let runtime = self.runtime.load_full();
        let config = &runtime.config;
        let client = client_ip(
            conn.peer.ip(),
            request.headers(),
            &config.server.trusted_proxies,
        );
        let request_id =
            crate::telemetry::request_id::request_id(request.headers(), client.peer_trusted);
        let format = Format::from_headers(request.headers());
        let record = AccessRecord {
            started: Instant::now(),
            request_id: request_id.to_str().unwrap_or_default().to_string(),
            client_ip: client.ip,
            method: request.method().clone(),
            path: String::new(),
            route: None,
            user: None,
            auth_method: None,
            upstream_status: None,
            http_version: request.version(),
            tls: conn.tls,
        };
        let mut exchange = Exchange {
            record: AccessGuard::new(record, self.metrics.clone()),
            route: None,
            format,
            request_id,
            navigation: policy::navigation(request.method(), request.headers()),
            next: None,
            set_cookie: None,
            device_cookie: None,
            logged_refusal: None,
            close_connection: false,
        };
        let ctx = RequestContext {
            peer: canonical_ip(conn.peer.ip()),
            peer_trusted: client.peer_trusted,
            unreadable_client: client.unreadable,
            tls: conn.tls,
        };
        let outcome = self.process(&runtime, request, &ctx, &mut exchange).await;
        let (mut response, refusal) = match outcome {
            Ok(response) => (response, exchange.logged_refusal.take()),
            Err(refusal) => {
                // A stalled body is still partly unread: the connection cannot carry another
                // request (HTTP/2 resets just this stream when the response ends it).
                if matches!(&refusal, Refusal::Fail(f) if f.reason == FailReason::ClientBodyTimeout)
                {
                    exchange.close_connection = true;
                }
                (self.refuse(config, &refusal, &mut exchange), Some(refusal))
            }
        };
        let headers = response.headers_mut();
        headers.insert(response::REQUEST_ID, exchange.request_id.clone());
        for cookie in [exchange.set_cookie.take(), exchange.device_cookie.take()]
            .into_iter()
            .flatten()
        {
            headers.append(http::header::SET_COOKIE, cookie);
        }
        if exchange.close_connection && exchange.record.http_version < Version::HTTP_2 {
            headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        let mut access = exchange.record;
        access.responded(response.status(), refusal);
        Ok(response.map(|body| Logged::new(body, access)))
    }

    /// The response for a refusal: a redirect to the login form for a person whose session is
    /// missing or over, else the status, challenges and body of SPEC §4.
    fn refuse(
        &self,
        config: &Config,
        refusal: &Refusal,
        exchange: &mut Exchange,
    ) -> Response<Body> {
        // An unknown session's cookie is cleared so a stale cookie never keeps a browser stuck.
        // An ended one's is kept: the store remembers why it ended for as long as the cookie
        // lives, so every tab and retry is told the same reason.
        if let Refusal::Deny(d) = refusal {
            if d.reason == DenyReason::SessionUnknown {
                exchange.set_cookie = Some(self.sessions.clear_cookie());
            }
        }
        let route = exchange.route.as_deref();
        if let Some(ended) = policy::login_redirect(config, refusal, route, exchange.navigation) {
            return login::redirect(
                StatusCode::FOUND,
                &login::login_url(&exchange.next(), ended),
            );
        }
        let accepts_session = route.is_some_and(|r| r.accepts(Scheme::Session));
        let session_reason = policy::session_refusal(refusal);
        let ended = session_reason.flatten();
        let sign_in_url = (accepts_session && config.login.enabled)
            .then(|| login::login_url(&exchange.next(), ended));
        let user = exchange.record.user.as_deref();
        let ctx = RefusalContext {
            route: exchange.route.as_deref(),
            format: exchange.format,
            request_id: &exchange.request_id,
            pages: &config.pages,
            facts: Facts {
                user,
                method: exchange.record.method.as_str(),
                idle: self.sessions.idle_timeout(),
                absolute: self.sessions.absolute_timeout(),
            },
            sign_in_url,
            sign_out: exchange.record.auth_method == Some(Scheme::Session.as_str()),
        };
        response::refusal(refusal, &ctx)
    }

    async fn process(
        &self,
        runtime: &Runtime,
        request: Request<Incoming>,
        ctx: &RequestContext,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, Refusal> {
        let config = &runtime.config;
        exchange.record.set_path(request.uri().path());
        let peer = Peer {
            client_ip: exchange.record.client_ip,
            trusted: ctx.peer_trusted,
            unreadable_client: ctx.unreadable_client,
            tls: ctx.tls,
        };
        let auth = ProxyAuth { app: self, config };
        // Boxed: the authentication paths a public route never takes would otherwise size
        // every request's future, which hyper moves when it starts the request.
        let decision = Box::pin(policy::decide(
            config,
            &Described::from_request(&request, peer),
            &auth,
        ))
        .await;
        exchange.close_connection = decision.close_connection;
        if let Some(path) = &decision.path {
            exchange.record.set_path(path.forward());
        }
        match &decision.destination {
            Some(Destination::Reserved) => exchange.record.route = Some(RESERVED_PREFIX.into()),
            Some(Destination::Route(route)) => {
                exchange.record.route = Some(route.path.shared());
                exchange.route = Some(route.clone());
                exchange.next = decision
                    .path
                    .map(|path| (path, request.uri().path_and_query().cloned()));
            }
            None => {}
        }
        if let Some(identity) = &decision.identity {
            exchange.record.user = Some(identity.user().to_string());
            exchange.record.auth_method = Some(identity.method.as_str());
        }
        match decision.verdict? {
            Verdict::Serve(endpoint) => {
                Box::pin(self.reserved(config, endpoint, request, exchange)).await
            }
            Verdict::Forward(path_and_query) => {
                let identity = decision.identity;
                if let (Some(identity), Some(route)) = (&identity, &exchange.route) {
                    let route = route.clone();
                    Box::pin(self.start_browser_session(
                        config,
                        &route,
                        identity,
                        request.headers(),
                        exchange,
                    ))
                    .await;
                }
                let response = self
                    .forward(
                        runtime,
                        request,
                        path_and_query,
                        ctx,
                        identity.as_ref(),
                        &exchange.request_id,
                    )
                    .await?;
                exchange.record.upstream_status = Some(response.status().as_u16());
                Ok(response)
            }
        }
    }

    /// Records verification latency under the scheme that was checked.
    fn observe_auth(&self, result: &Result<Identity, Refusal>, started: Instant) {
        let scheme = match result {
            Ok(identity) => Some(identity.method),
            Err(Refusal::Deny(denial)) => denial.scheme,
            Err(Refusal::Fail(_)) => None,
        };
        if let Some(scheme) = scheme {
            self.metrics
                .auth_seconds
                .get_or_create(&SchemeLabels {
                    scheme: scheme.as_str(),
                })
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// A Basic login from a browser also gets a session, so the session's idle and absolute
    /// timeouts apply to it (SPEC §3), and the browser becomes a known device of the user.
    async fn start_browser_session(
        &self,
        config: &Config,
        route: &Route,
        identity: &Identity,
        headers: &http::HeaderMap,
        exchange: &mut Exchange,
    ) {
        if identity.method != Scheme::Basic
            || !exchange.navigation
            || !route.accepts(Scheme::Session)
        {
            return;
        }
        if let Some(devices) = auth::device::KnownDevices::new(config) {
            let now = auth::device::now_secs();
            let vouched = devices.read(headers, now);
            exchange.device_cookie = Some(devices.set_cookie(&vouched, identity.user(), now));
        }
        // The Basic credentials were good: a store outage costs the browser its session
        // cookie, not this request (Basic keeps working without the store, SPEC §4).
        let Principal::User(user) = &identity.principal else {
            return;
        };
        match self.sessions.create(user).await {
            Ok(id) => exchange.set_cookie = Some(self.sessions.set_cookie(&id)),
            Err(err) => tracing::warn!(
                request_id = %exchange.record.request_id,
                error = %err.detail,
                "no session for this Basic login: the session store is unavailable"
            ),
        }
    }

    /// `/.portcullis/…`: the proxy's own endpoints, never forwarded.
    async fn reserved(
        &self,
        config: &Config,
        endpoint: Endpoint,
        request: Request<Incoming>,
        exchange: &mut Exchange,
    ) -> Result<Response<Body>, Refusal> {
        let endpoints = login::Endpoints {
            config,
            sessions: &self.sessions,
            auth: AuthContext {
                config,
                verifier: &self.verifier,
                sessions: &self.sessions,
                limiter: &self.limiter,
                client_ip: exchange.record.client_ip,
            },
            request_id: exchange.request_id.to_str().unwrap_or_default(),
        };
        let outcome = endpoints.serve(endpoint, request).await?;
        exchange.record.user = outcome.user;
        if exchange.record.user.is_some() {
            exchange.record.auth_method = Some(Scheme::Session.as_str());
        }
        exchange.logged_refusal = outcome.refusal;
        Ok(outcome.response)
    }

    async fn forward(
        &self,
        runtime: &Runtime,
        mut request: Request<Incoming>,
        path_and_query: PathAndQuery,
        ctx: &RequestContext,
        identity: Option<&Identity>,
        request_id: &HeaderValue,
    ) -> Result<Response<Body>, Refusal> {
        let config = &runtime.config;
        let host = request
            .headers()
            .get(http::header::HOST)
            .cloned()
            .or_else(|| {
                let authority = request.uri().authority()?;
                HeaderValue::from_str(authority.as_str()).ok()
            });
        let forward_ctx = ForwardContext {
            client_ip: ctx.peer,
            peer_trusted: ctx.peer_trusted,
            proto: if ctx.tls { "https" } else { "http" },
            host,
            request_id,
            identity,
            config: &config.identity,
            preserve_host: config.upstream.preserve_host,
        };
        // The session cookie goes first, so the rewrite joins what is left into one line.
        self.sessions.strip_cookie(request.headers_mut());
        auth::device::KnownDevices::strip(request.headers_mut());
        rewrite_request(request.headers_mut(), &forward_ctx);
        let started = Instant::now();
        let result = runtime
            .upstream
            .forward(request, path_and_query, config.server.body_read_timeout)
            .await;
        self.metrics
            .upstream_seconds
            .observe(started.elapsed().as_secs_f64());
        if let Err(failure) = &result {
            // A client's broken or abandoned body is no upstream error.
            let kind = match failure.reason {
                FailReason::UpstreamTimeout => Some("timeout"),
                FailReason::UpstreamUnreachable => Some("unreachable"),
                FailReason::ClientClosed
                | FailReason::ClientBodyInvalid
                | FailReason::ClientBodyTimeout
                | FailReason::StoreUnavailable
                | FailReason::Overloaded => None,
            };
            if let Some(kind) = kind {
                self.metrics
                    .upstream_errors
                    .get_or_create(&ErrorKindLabels { kind })
                    .inc();
            }
        }
        Ok(result?)
    }
}

/// The proxy's way to authenticate: verify the credential (password, token, session store)
/// and record how long that took.
struct ProxyAuth<'a> {
    app: &'a App,
    config: &'a Config,
}

impl Authenticate for ProxyAuth<'_> {
    async fn authenticate(
        &self,
        route: &Route,
        request: &Described<'_>,
    ) -> Result<Identity, Refusal> {
        let started = Instant::now();
        let app = self.app;
        let auth = AuthContext {
            config: self.config,
            verifier: &app.verifier,
            sessions: &app.sessions,
            limiter: &app.limiter,
            client_ip: request.peer.client_ip,
        };
        let result = Box::pin(auth::authenticate(&auth, route, request.headers)).await;
        app.observe_auth(&result, started);
        result
    }
}

struct RequestContext {
    /// The TCP peer: the hop this proxy appends to `X-Forwarded-For` and `Forwarded` (the
    /// client address a trusted peer reported is already in the chain before it).
    peer: std::net::IpAddr,
    peer_trusted: bool,
    /// The trusted proxies' chain ended on an entry that is not an address (see `client_ip`).
    unreadable_client: bool,
    tls: bool,
}
