//! Section `pubsub`: fan-out policy: who may publish from /ws, what slow consumers get, and
//! how deliveries travel between reactors.

use std::time::Duration;

use super::setting::{enum_value, section, within, Finish};

/// What a slow consumer (outbound queue over `max_outbound_bytes`) gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowConsumerPolicy {
    /// Close with 1008 "slow consumer" (abort if even that cannot be queued).
    Close,
    /// Skip deliveries while over the cap.
    Drop,
}

enum_value!(SlowConsumerPolicy);

section! {
    /// Fan-out: who may publish from /ws, slow consumers, delivery between reactors.
    pub struct PubSub (prefix "") {
        /// Slow-consumer policy: close or drop.
        slow_consumer: SlowConsumerPolicy = "close";
        /// Topics /ws clients may publish to (comma-separated; `prefix*` matches a prefix,
        /// `*` everything); none: only backends publish, over HTTP.
        #[arg(value_name = "LIST")]
        client_publish: Vec<String> = "", check topic_patterns;
        /// Deliveries queued between two reactors before further ones are dropped (counted).
        inbox_capacity: usize = "65536", check within(1, 1 << 24);
        /// Longest a fan-out delivery may wait so that several leave in one write. Only a
        /// busy reactor makes them wait (the delay adapts to its load, up to this); an idle
        /// one writes them in the turn that queued them. Replies and echo never wait. 0 turns
        /// batching off.
        #[arg(value_name = "DURATION")]
        max_batch_delay: Duration = "14ms";
    }
}

impl Finish for PubSub {}

/// Each a topic name, or a prefix of one ending in `*` (`*` alone: every topic); a pattern
/// with another character could never match a topic.
fn topic_patterns(list: &[String]) -> Result<(), String> {
    let bad = |p: &String| match p.strip_suffix('*') {
        Some("") => false,
        Some(prefix) => crate::broadcast::check_topic(prefix, usize::MAX).is_err(),
        None => crate::broadcast::check_topic(p, usize::MAX).is_err(),
    };
    match list.iter().find(|p| bad(p)) {
        Some(p) => Err(format!(
            "{p:?} is not a topic, or a topic prefix ending in *: topics are letters, digits \
             and - _ . : / @"
        )),
        None => Ok(()),
    }
}
