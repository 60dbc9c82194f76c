//! `/ws`: the pub/sub protocol. Each text message is one JSON control op (parsed by
//! `control`), answered on the same connection; publishes go to the fan-out.

use wsgate_proto::OpCode;

use super::control::{self, Control, ControlError, ErrorCode, Op};
use super::{RefreshError, Session, SubscribeError};
use crate::broadcast;

/// A message on /ws: one control op, answered on the same connection.
pub fn on_message(session: &mut impl Session, opcode: OpCode, data: Vec<u8>) {
    let reply = if opcode == OpCode::Binary {
        Err(ControlError::new(
            None,
            ErrorCode::BadRequest,
            "binary messages are not supported on /ws",
        ))
    } else {
        control::parse(&data).and_then(|c| apply(session, c))
    };
    if let Err(err) = reply {
        session.send(OpCode::Text, &control::error(&err));
    }
}

/// Carries out a control op. Ops with an `id` are acknowledged with `ok`, a publish
/// before its deliveries, so a publisher subscribed to the topic sees its `ok` first.
fn apply(session: &mut impl Session, c: Control<'_>) -> Result<(), ControlError> {
    let config = &session.shared().config;
    let max_topic_len = config.limits.max_topic_len;
    let invalid = |id: &Option<String>, message| {
        ControlError::new(id.clone(), ErrorCode::InvalidTopic, message)
    };
    match c.op {
        Op::Subscribe(topic) => {
            broadcast::check_topic(&topic, max_topic_len).map_err(|m| invalid(&c.id, m))?;
            if session
                .permissions()
                .is_some_and(|p| !p.may_subscribe(&topic))
            {
                return Err(ControlError::new(
                    c.id,
                    ErrorCode::Forbidden,
                    "subscribing to this topic is not allowed",
                ));
            }
            session
                .subscribe(&topic)
                .map_err(|e| refused(c.id.clone(), e))?;
        }
        Op::Unsubscribe(topic) => {
            broadcast::check_topic(&topic, max_topic_len).map_err(|m| invalid(&c.id, m))?;
            session
                .unsubscribe(&topic)
                .map_err(|e| refused(c.id.clone(), e))?;
        }
        Op::Publish { topic, data } => {
            broadcast::check_topic(&topic, max_topic_len).map_err(|m| invalid(&c.id, m))?;
            // A token's `publish` patterns replace `client_publish` for its connection.
            let allowed = match session.permissions() {
                Some(p) => p.may_publish(&topic),
                None => broadcast::topic_allowed(&topic, &config.pubsub.client_publish),
            };
            if !allowed {
                return Err(ControlError::new(
                    c.id,
                    ErrorCode::Forbidden,
                    "publishing to this topic is not allowed",
                ));
            }
            if data.len() > config.limits.max_publish_bytes {
                return Err(ControlError::new(
                    c.id,
                    ErrorCode::TooLarge,
                    "data is over the publish size limit",
                ));
            }
            if let Some(request) = &c.id {
                session.send(OpCode::Text, &control::ok(Some(request)));
            }
            session.publish(&topic, data);
            return Ok(());
        }
        Op::Refresh(token) => session.refresh(&token).map_err(|err| {
            let (code, message) = match err {
                RefreshError::NoToken => (
                    ErrorCode::BadRequest,
                    "the connection has no token to refresh",
                ),
                RefreshError::Subject => (ErrorCode::Unauthorized, "token names another subject"),
                RefreshError::Invalid(err) => (ErrorCode::Unauthorized, err.reason()),
            };
            ControlError::new(c.id.clone(), code, message)
        })?,
    }
    if let Some(request) = &c.id {
        session.send(OpCode::Text, &control::ok(Some(request)));
    }
    Ok(())
}

/// The `error` reply to a refused subscribe or unsubscribe.
fn refused(id: Option<String>, err: SubscribeError) -> ControlError {
    match err {
        SubscribeError::TooMany => ControlError::new(
            id,
            ErrorCode::TooManySubscriptions,
            "subscription limit reached",
        ),
        SubscribeError::RateLimited => ControlError::new(
            id,
            ErrorCode::RateLimited,
            "too many subscribe and unsubscribe ops; slow down",
        ),
    }
}
