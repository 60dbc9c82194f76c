//! Routing of requests, and the plain-HTTP side endpoints.

use crate::config::Config;
use crate::proto::handshake::{self, Method, Request};

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// WebSocket: echo every message.
    Echo,
    /// `GET /healthz`.
    Health,
    /// A path we do not serve.
    NotFound,
}

impl Route {
    pub fn of(req: &Request, config: &Config) -> Self {
        match req.path.as_str() {
            "/echo" if config.echo => Self::Echo,
            "/healthz" => Self::Health,
            _ => Self::NotFound,
        }
    }

    /// Whether this route speaks WebSocket after an Upgrade.
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::Echo)
    }
}

/// Answers a plain HTTP request; `draining` is the server's drain state.
pub fn respond(route: Route, req: &Request, draining: bool) -> Vec<u8> {
    let keep_alive = req.keep_alive && !draining;
    match route {
        Route::Health if !matches!(req.method, Method::Get | Method::Head) => {
            method_not_allowed(keep_alive)
        }
        Route::Health if draining => {
            handshake::response(503, "text/plain", &[], b"draining\n", false)
        }
        Route::Health => handshake::response(200, "text/plain", &[], b"ok\n", keep_alive),
        Route::Echo => unreachable!("websocket routes are upgraded, not answered"),
        Route::NotFound => handshake::response(404, "text/plain", &[], b"not found\n", keep_alive),
    }
}

fn method_not_allowed(keep_alive: bool) -> Vec<u8> {
    handshake::response(
        405,
        "text/plain",
        &[("Allow", "GET, HEAD")],
        b"method not allowed\n",
        keep_alive,
    )
}
