//! The plain-HTTP side endpoints: `/healthz`, `/metrics`, `POST /publish/{topic}`, and
//! what a `/ws` upgrade asks for: its token (`Authorization: Bearer` or `?token=`) and
//! its `?subscribe=` query.

use wsgate_proto::handshake::{HttpError, Method, Request};
use wsgate_proto::outgoing::http_response;

use std::sync::Arc;

use super::control::ErrorCode;
use super::{json, Route, Session};
use crate::auth::{AuthError, Claims, Permissions};
use crate::broadcast;
use crate::config::Config;
use crate::limits;
use crate::metrics::{self, ReactorMetrics};
use crate::shared::Shared;

/// Answers a plain HTTP request (not an upgrade) on `route`.
pub fn respond(
    session: &mut impl Session,
    route: Route,
    req: &Request,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let draining = session.draining();
    if req.minor_version >= 1 && req.host.is_none() {
        // RFC 9112 §3.2 (an empty Host is allowed: a target without an authority).
        return HttpError::new(400, "missing host header").response_keep_alive(keep_alive);
    }
    match route {
        Route::Publish => match check_publish(session, req, body, keep_alive) {
            Ok((topic, data)) => {
                session.publish(&topic, data);
                published(&topic, keep_alive)
            }
            Err(response) => response,
        },
        Route::Health | Route::Metrics if !matches!(req.method, Method::Get | Method::Head) => {
            HttpError::new(405, "method not allowed")
                .with_header("Allow", "GET, HEAD")
                .response_keep_alive(keep_alive)
        }
        Route::Health if draining => HttpError::new(503, "draining").response(),
        Route::Health => health(session.shared(), keep_alive),
        // HEAD too: its Content-Length is the GET's (the reactor drops the body).
        Route::Metrics => metrics(session.shared(), keep_alive),
        Route::NotFound => HttpError::new(404, "not found").response_keep_alive(keep_alive),
        Route::Echo | Route::PubSub => unreachable!("upgraded elsewhere"),
    }
}

/// `GET /metrics`: every reactor's counters in the Prometheus text format.
fn metrics(shared: &Shared, keep_alive: bool) -> Vec<u8> {
    let fanout = &shared.fanout;
    let n = shared.metrics.len();
    let mut text = metrics::render(&metrics::Snapshot {
        reactors: &shared.metrics,
        inbox_depth: (0..n).map(|i| fanout.inbox(i).depth()).collect(),
        inbox_overflows: (0..n)
            .map(|i| {
                fanout
                    .inbox(i)
                    .overflows
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .collect(),
        io: shared.io,
        draining: shared.draining.load(std::sync::atomic::Ordering::Relaxed),
        tls: shared
            .config
            .tls
            .acceptor
            .as_ref()
            .map(|a| a.certs().status()),
    });
    if let Some(link) = &shared.cluster {
        link.render(&mut text);
    }
    http_response(
        200,
        "text/plain; version=0.0.4",
        &[],
        text.as_bytes(),
        keep_alive,
    )
}

/// `GET /healthz` while not draining: `ok`, and when clustered whether the NATS bridge is
/// connected; a disconnected bridge is 503 if `cluster_required`.
fn health(shared: &Shared, keep_alive: bool) -> Vec<u8> {
    match &shared.cluster {
        None => http_response(200, "text/plain", &[], b"ok\n", keep_alive),
        Some(link) if link.is_connected() => http_response(
            200,
            "text/plain",
            &[],
            b"ok\ncluster: connected\n",
            keep_alive,
        ),
        Some(_) if shared.config.cluster.required => {
            HttpError::new(503, "cluster: disconnected").response_keep_alive(keep_alive)
        }
        Some(_) => http_response(
            200,
            "text/plain",
            &[],
            b"ok\ncluster: disconnected\n",
            keep_alive,
        ),
    }
}

/// Checks a `POST /publish/{topic}`: method, not draining, bearer token (the static
/// `publish_token` or a JWT whose `publish` claim covers the topic), topic, the token's
/// publish rate, and that the body is JSON. Returns the topic and the `data` to deliver:
/// the body's one JSON value as sent, without the whitespace around it, exactly what a
/// `/ws` publish of the same value delivers. Or the error response to send (the connection
/// stays usable); its codes are `/ws`'s.
fn check_publish<'b>(
    session: &impl Session,
    req: &Request,
    body: &'b [u8],
    keep_alive: bool,
) -> Result<(String, &'b [u8]), Vec<u8>> {
    let config = &session.shared().config;
    let fail = |err: HttpError| err.response_keep_alive(keep_alive);
    if req.method != Method::Post {
        return Err(fail(
            HttpError::new(405, "use POST").with_header("Allow", "POST"),
        ));
    }
    if session.draining() {
        // Every WebSocket here has been sent close 1001: a publish taken now would reach
        // none of them, so it is refused and the backend publishes again elsewhere.
        return Err(fail(
            HttpError::new(503, "server shutting down").with_header("Retry-After", "1"),
        ));
    }
    let token = req.authorization.as_deref().and_then(bearer_token);
    let permissions = publisher(token, config, session.unix_now()).map_err(fail)?;
    // Percent-escapes decoded, as in `?subscribe=` (RFC 3986 §6.2.2.2: `%61` is `a`).
    let invalid =
        |reason| fail(HttpError::new(400, reason).with_code(ErrorCode::InvalidTopic.as_str()));
    let topic = percent_decode(&req.path["/publish/".len()..])
        .ok_or_else(|| invalid("topic is badly escaped"))?;
    broadcast::check_topic(&topic, config.limits.max_topic_len).map_err(invalid)?;
    if permissions.is_some_and(|p| !p.may_publish(&topic)) {
        return Err(fail(HttpError::new(
            403,
            "publishing to this topic is not allowed",
        )));
    }
    if let (Some(token), Some(rate)) = (token, config.rate.publishes) {
        let publishers = &session.shared().publishers;
        let key = publishers.secret_key(token.as_bytes());
        if let Err(refusal) = publishers.take(key, session.now(), rate) {
            ReactorMetrics::add(&session.metrics().publish_rate_limited, 1);
            let retry_after = limits::retry_after_header(refusal.retry_after());
            return Err(fail(
                HttpError::new(429, "too many publishes for this token")
                    .with_code(ErrorCode::RateLimited.as_str())
                    .with_header("Retry-After", retry_after),
            ));
        }
    }
    let Ok(data) = json::document(body) else {
        return Err(fail(
            HttpError::new(400, "body is not valid json").with_code(ErrorCode::BadJson.as_str()),
        ));
    };
    if data.len() > config.limits.max_publish_bytes {
        return Err(fail(HttpError::new(
            413,
            "data is over the publish size limit",
        )));
    }
    Ok((topic, data))
}

/// Who may publish over HTTP: with a `publish_token`, the holder of that token; with JWT
/// keys, the holder of a valid JWT (its permissions returned: its `publish` claim scopes
/// the topics); without either, anyone (unless `auth_required`). A refused token gets 401.
fn publisher(
    token: Option<&str>,
    config: &Config,
    now: u64,
) -> Result<Option<Arc<Permissions>>, HttpError> {
    let static_token = config.http.publish_token.as_deref();
    if let (Some(given), Some(expected)) = (token, static_token) {
        if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Ok(None);
        }
    }
    match (token, &config.auth.verifier) {
        (Some(token), Some(verifier)) => verifier
            .verify(token, now)
            .map(|claims| Some(claims.permissions))
            .map_err(unauthorized),
        (None, Some(_)) if static_token.is_none() && config.auth.auth_required => {
            Err(unauthorized(AuthError::Missing))
        }
        _ if static_token.is_some() => Err(HttpError::new(401, "missing or wrong bearer token")
            .with_header("WWW-Authenticate", "Bearer")),
        _ => Ok(None),
    }
}

/// `202 Accepted` for a publish.
fn published(topic: &str, keep_alive: bool) -> Vec<u8> {
    let body = format!("{{\"ok\":true,\"topic\":\"{topic}\"}}");
    http_response(202, "application/json", &[], body.as_bytes(), keep_alive)
}

/// A refused /ws token: 401 with the reason (RFC 6750 §3.1).
pub fn unauthorized(err: AuthError) -> HttpError {
    HttpError::new(401, err.reason())
        .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
}

/// The claims of a /ws upgrade's token, from `Authorization: Bearer` or else
/// `?token=` (another `Authorization` scheme is ignored): `None` when no token is given
/// and none is required. The token is never logged.
pub fn authorize(req: &Request, config: &Config, now: u64) -> Result<Option<Claims>, AuthError> {
    let auth = &config.auth;
    let Some(verifier) = &auth.verifier else {
        // Without keys there is no authentication (and `auth_required` is refused at
        // start): a token is not looked at, so a client that sends one anyway keeps
        // working when auth is turned off.
        return Ok(None);
    };
    let from_query;
    let token = match req.authorization.as_deref().and_then(bearer_token) {
        Some(token) => Some(token),
        None => {
            // An empty `?token=` is no token, as an empty `Bearer` is.
            from_query = query_values(req, "token")
                .find(|value| !value.is_empty())
                .map(percent_decode);
            match &from_query {
                Some(decoded) => Some(decoded.as_deref().ok_or(AuthError::Malformed)?),
                None => None,
            }
        }
    };
    match token {
        None if auth.auth_required => Err(AuthError::Missing),
        None => Ok(None),
        Some(token) => Ok(Some(verifier.verify(token, now)?)),
    }
}

/// The raw values of `name=` in the request's query.
fn query_values<'r>(req: &'r Request, name: &'r str) -> impl Iterator<Item = &'r str> {
    req.query
        .as_deref()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(move |pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// Topics from `?subscribe=a,b` on a /ws upgrade, checked; a bad one refuses the upgrade,
/// as does one outside the token's `permissions` (403).
pub fn subscribe_query(
    req: &Request,
    config: &Config,
    permissions: Option<&Permissions>,
) -> Result<Vec<String>, HttpError> {
    let mut topics = Vec::new();
    for list in query_values(req, "subscribe") {
        let list =
            percent_decode(list).ok_or(HttpError::new(400, "subscribe list is badly escaped"))?;
        for topic in list.split(',').filter(|t| !t.is_empty()) {
            broadcast::check_topic(topic, config.limits.max_topic_len).map_err(|reason| {
                HttpError::new(400, reason).with_code(ErrorCode::InvalidTopic.as_str())
            })?;
            if permissions.is_some_and(|p| !p.may_subscribe(topic)) {
                return Err(HttpError::new(
                    403,
                    "subscribing to this topic is not allowed",
                ));
            }
            if !topics.iter().any(|t| t == topic) {
                // Counted as the list is read: the duplicate check above stays within
                // the limit, however long the query.
                if topics.len() == config.limits.max_subscriptions {
                    return Err(HttpError::new(400, "too many topics in subscribe")
                        .with_code(ErrorCode::TooManySubscriptions.as_str()));
                }
                topics.push(topic.to_owned());
            }
        }
    }
    Ok(topics)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                // Two hex digits: `from_str_radix` alone would also take "+4".
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1). The scheme is
/// case-insensitive (RFC 9110 §11.1); spaces and tabs around the token are tolerated.
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once([' ', '\t'])?;
    let token = token.trim_matches([' ', '\t']);
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares secrets without an early exit that would leak how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb%3Ac").as_deref(), Some("a,b:c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        for header in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR s3cret",
            "Bearer   s3cret",
            "Bearer\ts3cret",
            "Bearer s3cret  ",
        ] {
            assert_eq!(bearer_token(header), Some("s3cret"), "{header:?}");
        }
        for header in [
            "Bearer",
            "Bearer ",
            "Bearer  \t",
            "Bearers3cret",
            "Basic s3cret",
            "",
        ] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
        assert_eq!(
            bearer_token("Bearer a b"),
            Some("a b"),
            "the token is not split"
        );
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
    }
}
