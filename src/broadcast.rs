//! Topic fan-out: local subscriber sets per reactor, and the mesh between reactors.
//!
//! A publish, from any source, is encoded once into one prepared message (its frame:
//! header and envelope). The publishing reactor hands it to its own subscribers by reference and
//! sends one `Delivery` to each other reactor that has subscribers for the topic, over
//! that reactor's bounded crossbeam inbox, with one coalesced wake. Which reactors have
//! subscribers is kept in a sharded interest table: written when a reactor gains its
//! first or loses its last subscriber of a topic, read once per publish, never per
//! delivery. A reactor updates it before it acknowledges a subscribe, so a publish that
//! follows the acknowledgement reaches the new subscriber.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use indexmap::IndexSet;
use slab::Slab;

use crate::config::net::MAX_REACTORS;
use crate::driver::ConnId;
use crate::sys::EventFd;
use wsgate_proto::Prepared;

const SHARDS: usize = 64;

/// One publish on its way to another reactor.
#[derive(Debug)]
pub struct Delivery {
    pub topic: Arc<str>,
    /// Encoded once, shared by every subscriber.
    pub message: Prepared,
    pub published: Instant,
}

/// A reactor's inbox and how to wake it.
#[derive(Debug)]
pub struct Inbox {
    sender: Sender<Delivery>,
    waker: Arc<EventFd>,
    /// A wake is on its way; further sends need not wake again (coalescing).
    wake_pending: AtomicBool,
    /// Deliveries dropped because the inbox was full.
    pub overflows: AtomicU64,
}

impl Inbox {
    /// Messages waiting in the inbox.
    pub fn depth(&self) -> usize {
        self.sender.len()
    }
}

/// The fan-out state shared by all reactors.
#[derive(Debug)]
pub struct Fanout {
    inboxes: Vec<Inbox>,
    /// topic → bitmask of reactors with at least one subscriber.
    interest: Vec<RwLock<HashMap<Arc<str>, u64>>>,
    hasher: RandomState,
}

impl Fanout {
    /// Builds the mesh; returns each reactor's receiving end, in reactor order.
    pub fn new(wakers: &[Arc<EventFd>], inbox_capacity: usize) -> (Self, Vec<Receiver<Delivery>>) {
        assert!(
            wakers.len() <= MAX_REACTORS,
            "at most {MAX_REACTORS} reactors"
        );
        let (inboxes, receivers) = wakers
            .iter()
            .map(|waker| {
                let (sender, receiver) = crossbeam_channel::bounded(inbox_capacity);
                let inbox = Inbox {
                    sender,
                    waker: waker.clone(),
                    wake_pending: AtomicBool::new(false),
                    overflows: AtomicU64::new(0),
                };
                (inbox, receiver)
            })
            .unzip();
        let interest = (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect();
        (
            Self {
                inboxes,
                interest,
                hasher: RandomState::new(),
            },
            receivers,
        )
    }

    pub fn inbox(&self, reactor: usize) -> &Inbox {
        &self.inboxes[reactor]
    }

    fn shard(&self, topic: &str) -> &RwLock<HashMap<Arc<str>, u64>> {
        &self.interest[self.hasher.hash_one(topic) as usize % SHARDS]
    }

    /// Records whether `reactor` has subscribers for `topic`.
    fn set_interest(&self, topic: &Arc<str>, reactor: usize, on: bool) {
        let mut shard = self.shard(topic).write().expect("interest lock poisoned");
        let bit = 1u64 << reactor;
        if on {
            *shard.entry(topic.clone()).or_insert(0) |= bit;
        } else if let Some(mask) = shard.get_mut(&**topic) {
            *mask &= !bit;
            if *mask == 0 {
                shard.remove(&**topic);
            }
        }
    }

    /// Reactors with subscribers for `topic`.
    pub fn interested(&self, topic: &str) -> u64 {
        self.shard(topic)
            .read()
            .expect("interest lock poisoned")
            .get(topic)
            .copied()
            .unwrap_or(0)
    }

    /// Sends a publish to every other interested reactor; returns whether `from` itself
    /// has subscribers. A full inbox drops the delivery for that reactor and counts it.
    pub fn publish(
        &self,
        from: usize,
        topic: &Arc<str>,
        message: &Prepared,
        published: Instant,
    ) -> bool {
        let mask = self.interested(topic);
        let mut others = mask & !(1u64 << from);
        while others != 0 {
            let reactor = others.trailing_zeros() as usize;
            others &= others - 1;
            let inbox = &self.inboxes[reactor];
            let delivery = Delivery {
                topic: topic.clone(),
                message: message.clone(),
                published,
            };
            match inbox.sender.try_send(delivery) {
                Ok(()) => {
                    if !inbox.wake_pending.swap(true, Ordering::AcqRel) {
                        inbox.waker.wake();
                    }
                }
                Err(TrySendError::Full(_)) => {
                    inbox.overflows.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        mask & (1u64 << from) != 0
    }

    /// Called by a reactor before it drains its inbox: later sends wake it again.
    pub fn rearm(&self, reactor: usize) {
        self.inboxes[reactor]
            .wake_pending
            .store(false, Ordering::Release);
    }
}

/// Index of a topic in a reactor's `Topics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TopicId(pub u32);

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    subscribers: IndexSet<ConnId>,
}

/// One reactor's topics and their local subscribers.
#[derive(Debug, Default)]
pub struct Topics {
    by_name: HashMap<Arc<str>, TopicId>,
    topics: Slab<Topic>,
}

impl Topics {
    /// Adds `conn` to `name`'s subscribers; the first local subscriber registers this
    /// reactor's interest. Returns the topic's id, and false if already subscribed.
    pub fn subscribe(
        &mut self,
        fanout: &Fanout,
        reactor: usize,
        name: &str,
        conn: ConnId,
    ) -> (TopicId, bool) {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                let name: Arc<str> = Arc::from(name);
                let id = TopicId(self.topics.insert(Topic {
                    name: name.clone(),
                    subscribers: IndexSet::new(),
                }) as u32);
                self.by_name.insert(name.clone(), id);
                fanout.set_interest(&name, reactor, true);
                id
            }
        };
        (id, self.topics[id.0 as usize].subscribers.insert(conn))
    }

    /// Removes `conn` from the topic; the last local subscriber withdraws the interest.
    pub fn unsubscribe(&mut self, fanout: &Fanout, reactor: usize, id: TopicId, conn: ConnId) {
        let Some(topic) = self.topics.get_mut(id.0 as usize) else {
            return;
        };
        topic.subscribers.swap_remove(&conn);
        if topic.subscribers.is_empty() {
            let topic = self.topics.remove(id.0 as usize);
            self.by_name.remove(&topic.name);
            fanout.set_interest(&topic.name, reactor, false);
        }
    }

    pub fn find(&self, name: &str) -> Option<TopicId> {
        self.by_name.get(name).copied()
    }

    /// The name of a topic that has subscribers here.
    pub fn name(&self, id: TopicId) -> Option<&str> {
        self.topics.get(id.0 as usize).map(|t| &*t.name)
    }

    /// The local subscribers of a topic (empty if none).
    pub fn subscribers(&self, name: &str) -> impl Iterator<Item = ConnId> + '_ {
        self.find(name)
            .into_iter()
            .flat_map(|id| self.topics[id.0 as usize].subscribers.iter().copied())
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

/// Why a topic name is refused.
pub fn check_topic(topic: &str, max_len: usize) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("topic is empty");
    }
    if topic.len() > max_len {
        return Err("topic is too long");
    }
    // No escaping is ever needed in the envelope, a URL path or a query string.
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@".contains(&b))
    {
        return Err("topic may only contain letters, digits and - _ . : / @");
    }
    Ok(())
}

/// Prepares a delivery once: a text message holding `{"topic":"…","data":…}`, where
/// `data` is valid JSON and `topic` passed `check_topic` (so neither needs escaping).
pub fn prepare_delivery(topic: &str, data: &[u8]) -> Prepared {
    Prepared::text(&[
        b"{\"topic\":\"",
        topic.as_bytes(),
        b"\",\"data\":",
        data,
        b"}",
    ])
}

/// Whether `topic` matches one of `patterns`: exact names, or a prefix ending in `*`.
pub fn topic_allowed(topic: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => p == topic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fanout(n: usize) -> (Fanout, Vec<Receiver<Delivery>>) {
        let wakers: Vec<_> = (0..n).map(|_| Arc::new(EventFd::new().unwrap())).collect();
        Fanout::new(&wakers, 4)
    }

    #[test]
    fn delivery_frame_is_one_text_frame() {
        let message = prepare_delivery("prices", br#"{"p":1}"#);
        let frame = message.frame();
        let body = br#"{"topic":"prices","data":{"p":1}}"#;
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1] as usize, body.len());
        assert_eq!(&frame[2..], body);
    }

    #[test]
    fn interest_follows_first_and_last_subscriber() {
        let (f, _rx) = fanout(3);
        let mut topics = Topics::default();
        let (id, new) = topics.subscribe(&f, 2, "t", ConnId(1));
        assert!(new);
        assert!(!topics.subscribe(&f, 2, "t", ConnId(1)).1, "twice is once");
        topics.subscribe(&f, 2, "t", ConnId(5));
        assert_eq!(f.interested("t"), 0b100);
        topics.unsubscribe(&f, 2, id, ConnId(1));
        assert_eq!(f.interested("t"), 0b100);
        topics.unsubscribe(&f, 2, id, ConnId(5));
        assert_eq!(f.interested("t"), 0);
        assert!(topics.is_empty());
    }

    #[test]
    fn publish_reaches_only_interested_reactors_and_counts_overflow() {
        let (f, rx) = fanout(3);
        let mut t1 = Topics::default();
        t1.subscribe(&f, 1, "t", ConnId(0));
        let frame = prepare_delivery("t", b"1");
        let topic: Arc<str> = Arc::from("t");
        assert!(
            !f.publish(0, &topic, &frame, Instant::now()),
            "reactor 0 has no subscribers"
        );
        assert_eq!((rx[0].len(), rx[1].len(), rx[2].len()), (0, 1, 0));
        assert!(
            f.publish(1, &topic, &frame, Instant::now()),
            "local subscribers"
        );
        assert_eq!(rx[1].len(), 1, "nothing sent to itself");
        for _ in 0..10 {
            f.publish(0, &topic, &frame, Instant::now());
        }
        assert_eq!(rx[1].len(), 4, "bounded");
        assert_eq!(f.inbox(1).overflows.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn topic_rules() {
        assert!(check_topic("prices.eu/btc-usd_1:x@y", 64).is_ok());
        assert!(check_topic("", 64).is_err());
        assert!(check_topic("a b", 64).is_err());
        assert!(check_topic("quote\"", 64).is_err());
        assert!(check_topic(&"a".repeat(65), 64).is_err());
        let patterns = vec!["chat.*".to_string(), "exact".to_string()];
        assert!(topic_allowed("chat.room1", &patterns));
        assert!(topic_allowed("exact", &patterns));
        assert!(!topic_allowed("exactly", &patterns));
        assert!(!topic_allowed("prices", &patterns));
    }
}
