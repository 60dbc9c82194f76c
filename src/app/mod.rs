//! What runs on a connection: `/echo`, the `/ws` pub/sub protocol, and the plain-HTTP side
//! endpoints (`/healthz`, `/metrics`, `POST /publish/{topic}`).
//!
//! Applications never touch the reactor's tables: they get a [`Session`] for the
//! connection they run on (send, subscribe, unsubscribe, publish) and nothing more.

pub mod control;
pub mod echo;
pub mod endpoints;
pub mod json;
pub mod pubsub;

use std::time::Instant;

use wsgate_proto::handshake::Request;
use wsgate_proto::OpCode;

use crate::auth::{AuthError, Permissions};
use crate::config::Config;
use crate::metrics::ReactorMetrics;
use crate::shared::Shared;

/// What an application may do on the connection it runs on: the narrow interface between
/// the applications and the reactor's loop, which implements it.
pub trait Session {
    fn shared(&self) -> &Shared;

    /// Queues a data message to this connection (dropped if it is no longer open).
    fn send(&mut self, opcode: OpCode, payload: &[u8]);

    /// Subscribes this connection to `topic` (a valid name).
    fn subscribe(&mut self, topic: &str) -> Result<(), SubscribeError>;

    fn unsubscribe(&mut self, topic: &str) -> Result<(), SubscribeError>;

    /// Publishes `data` (valid JSON) to `topic` (a valid name) on every reactor.
    fn publish(&mut self, topic: &str, data: &[u8]);

    /// The topic permissions of the connection's token; `None` without a token.
    fn permissions(&self) -> Option<&Permissions>;

    /// Replaces the connection's token with `token` (a JWT naming the same subject):
    /// its expiry and permissions become the new token's; subscriptions the new
    /// permissions do not allow are dropped.
    fn refresh(&mut self, token: &str) -> Result<(), RefreshError>;

    /// Whether the server is draining (side endpoints answer differently).
    fn draining(&self) -> bool;

    /// The reactor's time (its clock: fixed in tests).
    fn now(&self) -> Instant;

    /// Seconds since the Unix epoch by the reactor's clock (tokens' `exp` and `nbf`).
    fn unix_now(&self) -> u64;

    /// The counters of the reactor this connection runs on.
    fn metrics(&self) -> &ReactorMetrics;
}

/// Why a subscribe was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("subscription limit reached")]
    TooMany,
    #[error("too many subscribe and unsubscribe ops; slow down")]
    RateLimited,
}

/// Why a `refresh` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error("the connection has no token to refresh")]
    NoToken,
    #[error("token names another subject")]
    Subject,
    #[error("{0}")]
    Invalid(AuthError),
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// WebSocket: echo every message.
    Echo,
    /// WebSocket: pub/sub control messages and deliveries.
    PubSub,
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `POST /publish/{topic}`.
    Publish,
    /// A path we do not serve.
    NotFound,
}

impl Route {
    pub fn of(req: &Request, config: &Config) -> Self {
        match req.path.as_str() {
            "/echo" if config.http.echo => Self::Echo,
            "/ws" => Self::PubSub,
            "/healthz" => Self::Health,
            "/metrics" => Self::Metrics,
            p if p.starts_with("/publish/") => Self::Publish,
            _ => Self::NotFound,
        }
    }

    /// Whether this route speaks WebSocket after an Upgrade.
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::Echo | Self::PubSub)
    }
}

/// A complete WebSocket message on a connection of `route`.
pub fn on_message(route: Route, session: &mut impl Session, opcode: OpCode, data: Vec<u8>) {
    match route {
        Route::Echo => echo::on_message(session, opcode, &data),
        Route::PubSub => pubsub::on_message(session, opcode, data),
        Route::Health | Route::Metrics | Route::Publish | Route::NotFound => {
            unreachable!("only WebSocket routes carry messages")
        }
    }
}
