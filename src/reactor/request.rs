//! The HTTP request phase: parse request heads (and bodies) from the connection's bytes,
//! route them, answer the side endpoints, and upgrade WebSocket requests. Keep-alive and
//! pipelining: after an answer the next request is parsed from the bytes that follow.

use std::mem;

use wsgate_proto::handshake::{self, HttpError, Method, Request, UpgradePolicy};
use wsgate_proto::http1::ChunkedDecoder;
use wsgate_proto::Connection;

use super::conn::{Admission, Phase, Recv, Subs, Token};
use super::{Core, Ctx};
use crate::app::{self, Route};
use crate::driver::ConnId;
use crate::limits;
use crate::metrics::ReactorMetrics;

/// A request whose body is still arriving: the head, how the body ends, the payload so far.
/// The body is taken as it arrives, so a slow one costs its bytes once, not a copy and a
/// parse of everything so far at every read.
pub(super) struct PendingBody {
    req: Request,
    framing: Framing,
    data: Vec<u8>,
}

enum Framing {
    /// Chunked (RFC 9112 §7.1): decoded as it arrives, nothing buffered but the payload,
    /// 413 as soon as a chunk size passes the limit.
    Chunked(ChunkedDecoder),
    /// `Content-Length`: this many bytes still to come.
    Length(usize),
}

impl Framing {
    /// Takes what of `input` belongs to the body into `data`; `Some(n)` once the body is
    /// complete, `n` being the bytes of `input` it took.
    fn take(&mut self, input: &[u8], data: &mut Vec<u8>) -> Result<Option<usize>, HttpError> {
        match self {
            Self::Chunked(decoder) => decoder.decode(input, data),
            Self::Length(remaining) => {
                let n = (*remaining).min(input.len());
                data.extend_from_slice(&input[..n]);
                *remaining -= n;
                Ok((*remaining == 0).then_some(n))
            }
        }
    }
}

/// What to do after answering a request.
enum Next {
    Upgraded,
    KeepAlive,
    Close,
}

impl Core {
    pub(super) fn on_request_bytes(&mut self, id: ConnId, bytes: &mut [u8]) {
        let Phase::Request { head, body, .. } = &mut self.conns[id].phase else {
            unreachable!("request phase")
        };
        // A body under way takes the bytes before any new head.
        let mut pending = body.take();
        let max_head = self.shared.config.limits.max_header_bytes;
        let no_line_end = !bytes.is_empty() && !bytes.contains(&b'\n');
        if pending.is_none()
            && !head.is_empty()
            && no_line_end
            && head.len() + bytes.len() <= max_head
        {
            // A split head cannot end without a line feed: keep the bytes, parse later
            // (a head sent a byte at a time is parsed once per line, not once per byte;
            // past max_header_bytes it is parsed, and refused, at once; pipelined requests
            // kept while the answers were over the cap are parsed when the flush resumes
            // reading, with no new bytes).
            head.extend_from_slice(bytes);
            return;
        }
        // The common case parses straight from the read buffer; a split head is copied.
        let mut split = mem::take(head);
        let mut input: &mut [u8] = if split.is_empty() {
            bytes
        } else {
            split.extend_from_slice(bytes);
            &mut split
        };
        let max_body = self.shared.config.limits.max_publish_body();
        'requests: loop {
            let (next, rest) = if let Some(mut body) = pending.take() {
                match body.framing.take(input, &mut body.data) {
                    Ok(None) => return self.keep_body(id, body),
                    Err(err) => return self.reject(id, Some(&body.req), &err),
                    Ok(Some(n)) => {
                        let rest = &mut mem::take(&mut input)[n..];
                        (self.dispatch(id, &body.req, &body.data), rest)
                    }
                }
            } else {
                'parsed: {
                    let req = match handshake::parse_request(input, max_head) {
                        Ok(Some(req)) => req,
                        Ok(None) => return self.keep_partial(id, input),
                        Err(err) => return self.reject(id, None, &err),
                    };
                    let framing = if req.chunked {
                        Framing::Chunked(ChunkedDecoder::new(max_body))
                    } else {
                        let body_len = req.content_length.unwrap_or(0);
                        if body_len > max_body {
                            return self.reject(id, Some(&req), &HttpError::BODY_TOO_LARGE);
                        }
                        let total = req.head_len + body_len;
                        if input.len() >= total {
                            // The whole request is here: dispatched from where it was read.
                            let (this, rest) = mem::take(&mut input).split_at_mut(total);
                            break 'parsed (self.dispatch(id, &req, &this[req.head_len..]), rest);
                        }
                        Framing::Length(body_len)
                    };
                    if req.expect_continue && input.len() == req.head_len {
                        // The head alone, from a client waiting to be asked for the body.
                        self.continue_body(id);
                    }
                    input = &mut mem::take(&mut input)[req.head_len..];
                    pending = Some(Box::new(PendingBody {
                        req,
                        framing,
                        data: Vec::new(),
                    }));
                    continue 'requests;
                }
            };
            match next {
                // Bytes right behind the upgrade request are the client's first frames.
                Next::Upgraded if rest.is_empty() => return,
                Next::Upgraded => return self.on_frame_bytes(id, rest),
                Next::Close => return self.begin_closing(id),
                Next::KeepAlive => {
                    let deadline = self.now + self.shared.config.limits.handshake_timeout;
                    self.conns[id].phase = Phase::Request {
                        head: Vec::new(),
                        body: None,
                        deadline,
                        served: true,
                    };
                    if rest.is_empty() {
                        return;
                    }
                    if self.answers_over_cap(id) {
                        // Pipelined requests wait, unparsed, until the client has read
                        // some answers (the flush stops reading it meanwhile, and parses
                        // them when it resumes): small requests for large answers must
                        // not queue past max_outbound_bytes. Decided now, whatever a send
                        // completing before the flush does to the queue.
                        let conn = &mut self.conns[id];
                        if conn.recv == Recv::On {
                            conn.recv = Recv::Pausing;
                        }
                        return self.keep_partial(id, rest);
                    }
                    input = rest;
                }
            }
        }
    }

    /// Whether what is queued for `id` is over `max_outbound_bytes`.
    pub(super) fn answers_over_cap(&mut self, id: ConnId) -> bool {
        let cap = self.shared.config.limits.max_outbound_bytes;
        (self.conns.with_transport(id)).is_some_and(|(conn, t)| t.pending(&conn.out) > cap)
    }

    /// `100 Continue` (RFC 9110 §15.2.1): the body is wanted. Sent when the head has come
    /// alone; a request refused from its head alone (413) gets its final status instead.
    fn continue_body(&mut self, id: ConnId) {
        let interim = bytes::Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.conns[id].out.push(interim);
        self.schedule(id);
    }

    fn keep_body(&mut self, id: ConnId, pending: Box<PendingBody>) {
        if let Phase::Request { body, .. } = &mut self.conns[id].phase {
            *body = Some(pending);
        }
    }

    fn keep_partial(&mut self, id: ConnId, input: &[u8]) {
        if let Phase::Request { head, .. } = &mut self.conns[id].phase {
            head.clear();
            head.extend_from_slice(input);
        }
    }

    /// Answers `err` and closes; to a HEAD whose head was parsed (`req`), the head alone.
    fn reject(&mut self, id: ConnId, req: Option<&Request>, err: &HttpError) {
        ReactorMetrics::add(&self.metrics().handshakes_rejected, 1);
        match req {
            Some(req) => self.answer(id, req, err.response()),
            None => self.conns[id].out.push(err.response().into()),
        }
        self.begin_closing(id);
    }

    fn dispatch(&mut self, id: ConnId, req: &Request, body: &[u8]) -> Next {
        let route = Route::of(req, &self.shared.config);
        let draining = self.drain_deadline.is_some();
        if let Admission::ClientLimited { retry_after } = self.conns[id].admission {
            let retry_after = limits::retry_after_header(retry_after);
            let err = HttpError::new(429, "too many connections from this address")
                .with_code("rate_limited")
                .with_header("Retry-After", retry_after);
            self.answer(id, req, err.response());
            return Next::Close;
        }
        if self.conns[id].admission == Admission::OverLimit || (draining && route.is_websocket()) {
            let reason = if draining {
                "server shutting down"
            } else {
                "server at its connection limit"
            };
            let err = HttpError::new(503, reason).with_header("Retry-After", "1");
            self.answer(id, req, err.response());
            return Next::Close;
        }
        if route.is_websocket() {
            return self.upgrade(id, req, route);
        }
        let keep_alive = req.keep_alive && !draining;
        let response =
            app::endpoints::respond(&mut Ctx { core: self, id }, route, req, body, keep_alive);
        self.answer(id, req, response);
        self.schedule(id);
        if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    fn upgrade(&mut self, id: ConnId, req: &Request, route: Route) -> Next {
        let config = &self.shared.config;
        let policy = UpgradePolicy {
            subprotocols: &config.http.subprotocols,
            allowed_origins: config.http.allowed_origins.as_deref(),
            deflate: config.deflate.enabled,
        };
        let mut auth_failed = false;
        let unix_now = self.unix_now();
        let checked = handshake::validate_upgrade(req, &policy).and_then(|upgrade| {
            if route != Route::PubSub {
                return Ok((upgrade, None, Vec::new()));
            }
            let claims = app::endpoints::authorize(req, config, unix_now).map_err(|err| {
                auth_failed = true;
                app::endpoints::unauthorized(err)
            })?;
            let permissions = claims.as_ref().map(|c| &*c.permissions);
            let topics = app::endpoints::subscribe_query(req, config, permissions)?;
            Ok((upgrade, claims, topics))
        });
        let metrics = &self.shared.metrics[self.index];
        let conn = &mut self.conns[id];
        match checked {
            Ok((upgrade, claims, topics)) => {
                ReactorMetrics::add(&metrics.handshakes_ok, 1);
                conn.out.push(upgrade.response().into());
                conn.route = route;
                conn.phase = Phase::WebSocket {
                    ws: Connection::server(self.now).with_deflate(upgrade.deflate),
                    subs: Subs::new(),
                    token: claims.map(Token::of),
                };
                for topic in &topics {
                    // Within the limit: `subscribe_query` checked the count.
                    let _ = self.subscribe(id, topic);
                }
                self.schedule(id);
                Next::Upgraded
            }
            Err(err) => {
                ReactorMetrics::add(&metrics.handshakes_rejected, 1);
                if auth_failed {
                    ReactorMetrics::add(&metrics.auth_failures, 1);
                }
                self.answer(id, req, err.response());
                Next::Close
            }
        }
    }

    /// Queues `response` to `req`; to a HEAD request, its head alone (RFC 9110 §9.3.2:
    /// the headers a GET would get, Content-Length included, and no content).
    fn answer(&mut self, id: ConnId, req: &Request, mut response: Vec<u8>) {
        if req.method == Method::Head {
            if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                response.truncate(end + 4);
            }
        }
        self.conns[id].out.push(response.into());
    }
}
