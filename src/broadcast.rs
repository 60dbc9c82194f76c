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
//!
//! The same table is the node-wide interest a cluster bridge (`crate::cluster`) subscribes
//! by: it is told when a topic gains its first subscriber on any reactor or loses its last,
//! and confirms a topic once NATS has its subscription; a reactor holding a subscribe's
//! `ok` for that confirmation hears of it on a channel of its own. Messages the bridge
//! receives enter by `publish_remote`, one message per interested reactor, like any other.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
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
    /// Topics the cluster bridge confirmed that this reactor waits for (few: one per
    /// topic with held subscribe replies).
    confirmed: (Sender<Arc<str>>, Receiver<Arc<str>>),
}

impl Inbox {
    /// Messages waiting in the inbox.
    pub fn depth(&self) -> usize {
        self.sender.len()
    }
}

/// Who is told of node-wide interest changes: the cluster bridge.
pub trait InterestListener: Send + Sync + std::fmt::Debug {
    /// `topic` gained its first or lost its last subscriber on this node. Called under the
    /// topic's interest lock, so calls for one topic arrive in order: must be quick.
    fn changed(&self, topic: &Arc<str>);

    /// Whether a confirmation can be expected soon (the bridge is connected); if not, a
    /// subscribe is acknowledged without waiting.
    fn confirming(&self) -> bool;
}

/// A topic's entry in the interest table.
#[derive(Debug)]
struct Interest {
    /// Bitmask of reactors with at least one subscriber.
    reactors: u64,
    /// The cluster bridge has the node's subscription in place (always, without a bridge).
    confirmed: bool,
    /// Reactors holding a subscribe's `ok` until `confirmed`.
    waiting: u64,
}

/// The fan-out state shared by all reactors.
#[derive(Debug)]
pub struct Fanout {
    inboxes: Vec<Inbox>,
    interest: Vec<RwLock<HashMap<Arc<str>, Interest>>>,
    hasher: RandomState,
    /// The cluster bridge, when one runs; set before the reactors start.
    listener: OnceLock<Arc<dyn InterestListener>>,
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
                    confirmed: crossbeam_channel::unbounded(),
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
                listener: OnceLock::new(),
            },
            receivers,
        )
    }

    pub fn inbox(&self, reactor: usize) -> &Inbox {
        &self.inboxes[reactor]
    }

    fn shard(&self, topic: &str) -> &RwLock<HashMap<Arc<str>, Interest>> {
        &self.interest[self.hasher.hash_one(topic) as usize % SHARDS]
    }

    /// Records whether `reactor` has subscribers for `topic`; tells the listener when the
    /// node as a whole gains or loses interest.
    fn set_interest(&self, topic: &Arc<str>, reactor: usize, on: bool) {
        let mut shard = self.shard(topic).write().expect("interest lock poisoned");
        let bit = 1u64 << reactor;
        let listener = self.listener.get();
        if on {
            let entry = shard.entry(topic.clone()).or_insert_with(|| Interest {
                reactors: 0,
                confirmed: listener.is_none(),
                waiting: 0,
            });
            if entry.reactors == 0 {
                if let Some(listener) = listener {
                    listener.changed(topic);
                }
            }
            entry.reactors |= bit;
        } else if let Some(entry) = shard.get_mut(&**topic) {
            entry.reactors &= !bit;
            if entry.reactors == 0 {
                shard.remove(&**topic);
                if let Some(listener) = listener {
                    listener.changed(topic);
                }
            }
        }
    }

    /// Reactors with subscribers for `topic`.
    pub fn interested(&self, topic: &str) -> u64 {
        self.shard(topic)
            .read()
            .expect("interest lock poisoned")
            .get(topic)
            .map_or(0, |entry| entry.reactors)
    }

    /// Attaches the cluster bridge; must happen before any subscribe.
    pub fn set_listener(&self, listener: Arc<dyn InterestListener>) {
        assert!(
            self.listener.set(listener).is_ok(),
            "one listener per fan-out"
        );
    }

    /// Marks `topic`'s node-wide subscription as in place (called by the bridge) and tells
    /// the reactors that wait for it. A topic nobody wants any more is left alone.
    pub fn confirm(&self, topic: &Arc<str>) {
        let mut shard = self.shard(topic).write().expect("interest lock poisoned");
        let Some(entry) = shard.get_mut(&**topic) else {
            return;
        };
        entry.confirmed = true;
        let mut waiting = std::mem::take(&mut entry.waiting);
        while waiting != 0 {
            let reactor = waiting.trailing_zeros() as usize;
            waiting &= waiting - 1;
            let _ = self.inboxes[reactor].confirmed.0.send(topic.clone());
            self.wake(reactor);
        }
    }

    /// Whether a subscribe to `topic` on `reactor` may be acknowledged now; if not, the
    /// reactor is told through `take_confirmed` once it may.
    pub fn confirmed_or_wait(&self, topic: &str, reactor: usize) -> bool {
        if self.listener.get().is_none_or(|l| !l.confirming()) {
            return true;
        }
        let mut shard = self.shard(topic).write().expect("interest lock poisoned");
        match shard.get_mut(topic) {
            Some(entry) if !entry.confirmed => {
                entry.waiting |= 1u64 << reactor;
                false
            }
            _ => true,
        }
    }

    /// Topics confirmed for `reactor` since it last looked.
    pub fn take_confirmed(&self, reactor: usize) -> impl Iterator<Item = Arc<str>> + '_ {
        self.inboxes[reactor].confirmed.1.try_iter()
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
        self.send(mask & !(1u64 << from), topic, message, published);
        mask & (1u64 << from) != 0
    }

    /// Hands a publish that came from outside the reactors (the cluster bridge) to every
    /// interested reactor; returns how many.
    pub fn publish_remote(&self, topic: &Arc<str>, message: &Prepared, published: Instant) -> u32 {
        let mask = self.interested(topic);
        self.send(mask, topic, message, published);
        mask.count_ones()
    }

    fn send(&self, mut others: u64, topic: &Arc<str>, message: &Prepared, published: Instant) {
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
                Ok(()) => self.wake(reactor),
                Err(TrySendError::Full(_)) => {
                    inbox.overflows.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
    }

    /// Wakes `reactor` unless a wake is already on its way.
    fn wake(&self, reactor: usize) {
        let inbox = &self.inboxes[reactor];
        if !inbox.wake_pending.swap(true, Ordering::AcqRel) {
            inbox.waker.wake();
        }
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

    #[derive(Debug, Default)]
    struct Recorder {
        changes: std::sync::Mutex<Vec<String>>,
        connected: AtomicBool,
    }

    impl InterestListener for Recorder {
        fn changed(&self, topic: &Arc<str>) {
            self.changes.lock().unwrap().push(topic.to_string());
        }

        fn confirming(&self) -> bool {
            self.connected.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn node_wide_interest_is_told_and_confirmed() {
        let (f, _rx) = fanout(2);
        let recorder = Arc::new(Recorder::default());
        f.set_listener(recorder.clone());
        let (mut t0, mut t1) = (Topics::default(), Topics::default());
        let (a0, _) = t0.subscribe(&f, 0, "t", ConnId(1));
        let (a1, _) = t1.subscribe(&f, 1, "t", ConnId(1));
        assert_eq!(*recorder.changes.lock().unwrap(), ["t"], "only the first");
        // Disconnected: nothing to wait for.
        assert!(f.confirmed_or_wait("t", 0));
        recorder.connected.store(true, Ordering::Relaxed);
        assert!(!f.confirmed_or_wait("t", 0));
        assert!(!f.confirmed_or_wait("t", 1));
        assert_eq!(f.take_confirmed(0).count(), 0);
        f.confirm(&Arc::from("t"));
        assert_eq!(f.take_confirmed(0).collect::<Vec<_>>(), [Arc::from("t")]);
        assert_eq!(f.take_confirmed(1).count(), 1);
        assert!(f.confirmed_or_wait("t", 0), "confirmed stays confirmed");
        t0.unsubscribe(&f, 0, a0, ConnId(1));
        t1.unsubscribe(&f, 1, a1, ConnId(1));
        assert_eq!(
            *recorder.changes.lock().unwrap(),
            ["t", "t"],
            "and the last"
        );
        // A new first subscriber waits for a new confirmation.
        t0.subscribe(&f, 0, "t", ConnId(2));
        assert!(!f.confirmed_or_wait("t", 0));
        f.confirm(&Arc::from("gone"));
        assert_eq!(f.take_confirmed(0).count(), 0, "other topics do not count");
    }

    #[test]
    fn remote_publishes_reach_every_interested_reactor() {
        let (f, rx) = fanout(3);
        let (mut t0, mut t2) = (Topics::default(), Topics::default());
        t0.subscribe(&f, 0, "t", ConnId(0));
        t2.subscribe(&f, 2, "t", ConnId(0));
        let topic: Arc<str> = Arc::from("t");
        let n = f.publish_remote(&topic, &prepare_delivery("t", b"1"), Instant::now());
        assert_eq!(n, 2);
        assert_eq!((rx[0].len(), rx[1].len(), rx[2].len()), (1, 0, 1));
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
