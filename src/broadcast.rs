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
//! Beside each topic's reactors, the table keeps the reactors that have a subscriber of
//! it that negotiated permessage-deflate (updated the same way, at a reactor's first and
//! last such subscriber). When that mask is not empty, the publishing point compresses
//! the message once, before it leaves (`Fanout::publish` with the reactor's `Deflater`,
//! `publish` with the bridge's), and the message carries both variants to every
//! reactor. A subscriber that negotiated deflate after the check (its subscribe raced
//! a message already on its way) gets that message plain, which RFC 7692 allows: no
//! reactor ever compresses someone else's publish, so none waits on another.
//!
//! The same table is the node-wide interest a cluster bridge (`crate::cluster`) subscribes
//! by: it is told when a topic gains its first subscriber on any reactor or loses its last,
//! and confirms a topic once NATS has its subscription; a reactor holding a subscribe's
//! `ok` for that confirmation hears of it on a channel of its own. Messages the bridge
//! receives enter by `publish` too (from no reactor), one message per interested reactor, like any other.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use indexmap::IndexMap;
use slab::Slab;

use crate::config::net::MAX_REACTORS;
use crate::driver::ConnId;
use crate::sys::EventFd;
use wsgate_proto::deflate::Deflater;
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
    /// Bitmask of reactors with at least one subscriber that negotiated permessage-deflate
    /// (a subset of `reactors`).
    deflate: u64,
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

    /// Records whether `reactor` has subscribers for `topic`, and whether some of them
    /// negotiated permessage-deflate; tells the listener when the node as a whole gains or
    /// loses interest.
    fn set_interest(&self, topic: &Arc<str>, reactor: usize, on: bool, deflate: bool) {
        debug_assert!(on || !deflate, "deflate subscribers are subscribers");
        let mut shard = self.shard(topic).write().expect("interest lock poisoned");
        let bit = 1u64 << reactor;
        let listener = self.listener.get();
        if on {
            let entry = shard.entry(topic.clone()).or_insert_with(|| Interest {
                reactors: 0,
                deflate: 0,
                confirmed: listener.is_none(),
                waiting: 0,
            });
            if entry.reactors == 0 {
                if let Some(listener) = listener {
                    listener.changed(topic);
                }
            }
            entry.reactors |= bit;
            if deflate {
                entry.deflate |= bit;
            } else {
                entry.deflate &= !bit;
            }
        } else if let Some(entry) = shard.get_mut(&**topic) {
            entry.reactors &= !bit;
            entry.deflate &= !bit;
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
        self.interest(topic).0
    }

    /// Reactors with subscribers for `topic`, and those among them with a subscriber that
    /// negotiated permessage-deflate.
    pub fn interest(&self, topic: &str) -> (u64, u64) {
        self.shard(topic)
            .read()
            .expect("interest lock poisoned")
            .get(topic)
            .map_or((0, 0), |entry| (entry.reactors, entry.deflate))
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

    /// Sends a publish to every interested reactor but the one it came `from` (`None`: from
    /// outside the reactors, the cluster bridge), first compressing it with `deflater` (the
    /// caller's) when a subscriber of the topic on any reactor negotiated
    /// permessage-deflate (counted in `compressions` before the message leaves). A full
    /// inbox drops the delivery for that reactor and counts it.
    pub fn publish(
        &self,
        from: Option<usize>,
        topic: &Arc<str>,
        message: &mut Prepared,
        deflater: &mut Deflater,
        compressions: &AtomicU64,
        published: Instant,
    ) -> Published {
        let (mask, deflate) = self.interest(topic);
        let compressed = Self::compress(deflate, message, deflater, compressions);
        let own = from.map_or(0, |from| 1u64 << from);
        self.send(mask & !own, topic, message, published);
        Published {
            local: mask & own != 0,
            reactors: mask.count_ones(),
            compressed,
        }
    }

    /// Compresses `message` when `deflate` (a mask of reactors) is not empty; counts it.
    fn compress(
        deflate: u64,
        message: &mut Prepared,
        deflater: &mut Deflater,
        compressions: &AtomicU64,
    ) -> bool {
        let compressed = deflate != 0 && message.deflate(deflater);
        if compressed {
            compressions.fetch_add(1, Ordering::Relaxed);
        }
        compressed
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

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    /// The publishing reactor has subscribers of its own to deliver to.
    pub local: bool,
    /// Reactors with subscribers (the publisher's included).
    pub reactors: u32,
    /// The message was compressed (once, here) for permessage-deflate subscribers.
    pub compressed: bool,
}

/// Index of a topic in a reactor's `Topics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TopicId(pub u32);

#[derive(Debug)]
struct Topic {
    name: Arc<str>,
    /// Each subscriber, and whether it negotiated permessage-deflate (the flag fits in the
    /// entry's padding: no memory per subscription).
    subscribers: IndexMap<ConnId, bool>,
    /// How many of them negotiated permessage-deflate.
    deflate: u32,
}

/// One reactor's topics and their local subscribers.
#[derive(Debug, Default)]
pub struct Topics {
    by_name: HashMap<Arc<str>, TopicId>,
    topics: Slab<Topic>,
}

impl Topics {
    /// Adds `conn` to `name`'s subscribers (`deflate`: it negotiated permessage-deflate);
    /// the first local subscriber, and the first that negotiated deflate, update this
    /// reactor's interest. Returns the topic's id, and false if already subscribed.
    pub fn subscribe(
        &mut self,
        fanout: &Fanout,
        reactor: usize,
        name: &str,
        conn: ConnId,
        deflate: bool,
    ) -> (TopicId, bool) {
        let (id, new_topic) = match self.by_name.get(name) {
            Some(&id) => (id, false),
            None => {
                let name: Arc<str> = Arc::from(name);
                let id = TopicId(self.topics.insert(Topic {
                    name: name.clone(),
                    subscribers: IndexMap::new(),
                    deflate: 0,
                }) as u32);
                self.by_name.insert(name, id);
                (id, true)
            }
        };
        let topic = &mut self.topics[id.0 as usize];
        let added = topic.subscribers.insert(conn, deflate).is_none();
        if added && deflate {
            topic.deflate += 1;
        }
        if new_topic || (added && deflate && topic.deflate == 1) {
            fanout.set_interest(&topic.name, reactor, true, topic.deflate > 0);
        }
        (id, added)
    }

    /// Removes `conn` from the topic; the last local subscriber withdraws the interest, the
    /// last that negotiated deflate the deflate interest.
    pub fn unsubscribe(&mut self, fanout: &Fanout, reactor: usize, id: TopicId, conn: ConnId) {
        let Some(topic) = self.topics.get_mut(id.0 as usize) else {
            return;
        };
        let Some(deflate) = topic.subscribers.swap_remove(&conn) else {
            return;
        };
        if deflate {
            topic.deflate -= 1;
        }
        if topic.subscribers.is_empty() {
            let topic = self.topics.remove(id.0 as usize);
            self.by_name.remove(&topic.name);
            fanout.set_interest(&topic.name, reactor, false, false);
        } else if deflate && topic.deflate == 0 {
            fanout.set_interest(&topic.name, reactor, true, false);
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
            .flat_map(|id| self.topics[id.0 as usize].subscribers.keys().copied())
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
        let (id, new) = topics.subscribe(&f, 2, "t", ConnId(1), false);
        assert!(new);
        assert!(
            !topics.subscribe(&f, 2, "t", ConnId(1), false).1,
            "twice is once"
        );
        topics.subscribe(&f, 2, "t", ConnId(5), false);
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
        t1.subscribe(&f, 1, "t", ConnId(0), false);
        let mut frame = prepare_delivery("t", b"1");
        let topic: Arc<str> = Arc::from("t");
        let mut deflater = Deflater::new(1, 0);
        let n = AtomicU64::new(0);
        let mut publish = |from| {
            f.publish(
                Some(from),
                &topic,
                &mut frame,
                &mut deflater,
                &n,
                Instant::now(),
            )
        };
        let sent = publish(0);
        assert!(!sent.local, "reactor 0 has no subscribers");
        assert_eq!(sent.reactors, 1);
        assert_eq!((rx[0].len(), rx[1].len(), rx[2].len()), (0, 1, 0));
        let sent = publish(1);
        assert!(sent.local, "local subscribers");
        assert_eq!(rx[1].len(), 1, "nothing sent to itself");
        for _ in 0..10 {
            publish(0);
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
        let (a0, _) = t0.subscribe(&f, 0, "t", ConnId(1), false);
        let (a1, _) = t1.subscribe(&f, 1, "t", ConnId(1), false);
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
        t0.subscribe(&f, 0, "t", ConnId(2), false);
        assert!(!f.confirmed_or_wait("t", 0));
        f.confirm(&Arc::from("gone"));
        assert_eq!(f.take_confirmed(0).count(), 0, "other topics do not count");
    }

    #[test]
    fn remote_publishes_reach_every_interested_reactor() {
        let (f, rx) = fanout(3);
        let (mut t0, mut t2) = (Topics::default(), Topics::default());
        t0.subscribe(&f, 0, "t", ConnId(0), false);
        t2.subscribe(&f, 2, "t", ConnId(0), false);
        let topic: Arc<str> = Arc::from("t");
        let mut deflater = Deflater::new(1, 0);
        let mut message = prepare_delivery("t", b"1");
        let n = AtomicU64::new(0);
        let sent = f.publish(
            None,
            &topic,
            &mut message,
            &mut deflater,
            &n,
            Instant::now(),
        );
        assert_eq!(sent.reactors, 2);
        assert!(!sent.compressed, "no subscriber negotiated deflate");
        assert_eq!((rx[0].len(), rx[1].len(), rx[2].len()), (1, 0, 1));
    }

    /// The deflate mask follows each reactor's first and last deflate subscriber, and a
    /// publish is compressed once, by its publisher, exactly when the mask is not empty.
    #[test]
    fn deflate_interest_decides_compression_at_the_publisher() {
        let (f, rx) = fanout(3);
        let (mut t0, mut t2) = (Topics::default(), Topics::default());
        let topic: Arc<str> = Arc::from("t");
        let data = format!(
            "[{}]",
            "{\"price\":42000.5,\"side\":\"buy\"},".repeat(20) + "1"
        );
        let mut deflater = Deflater::new(1, 128);
        let n = AtomicU64::new(0);
        let mut publish = |from| {
            let mut message = prepare_delivery("t", data.as_bytes());
            let sent = f.publish(
                Some(from),
                &topic,
                &mut message,
                &mut deflater,
                &n,
                Instant::now(),
            );
            (sent.compressed, message.deflated().is_some())
        };
        t0.subscribe(&f, 0, "t", ConnId(1), false);
        let (id2, _) = t2.subscribe(&f, 2, "t", ConnId(1), false);
        assert_eq!(f.interest("t"), (0b101, 0));
        assert_eq!(publish(1), (false, false), "nobody negotiated deflate");
        t2.subscribe(&f, 2, "t", ConnId(2), true);
        t2.subscribe(&f, 2, "t", ConnId(3), true);
        assert!(
            !t2.subscribe(&f, 2, "t", ConnId(3), true).1,
            "twice is once"
        );
        assert_eq!(f.interest("t"), (0b101, 0b100));
        assert_eq!(publish(1), (true, true));
        // The message that reached reactor 0 carries the compressed variant too.
        let d = rx[0].try_iter().last().unwrap();
        assert!(d.message.deflated().is_some());
        t2.unsubscribe(&f, 2, id2, ConnId(2));
        assert_eq!(
            f.interest("t"),
            (0b101, 0b100),
            "one deflate subscriber left"
        );
        t2.unsubscribe(&f, 2, id2, ConnId(3));
        assert_eq!(f.interest("t"), (0b101, 0), "the last one withdraws it");
        assert_eq!(publish(0), (false, false));
        t2.unsubscribe(&f, 2, id2, ConnId(99));
        assert_eq!(
            f.interest("t"),
            (0b101, 0),
            "not a subscriber: nothing changes"
        );
        // A deflate subscriber that is a topic's first.
        let mut t1 = Topics::default();
        t1.subscribe(&f, 1, "u", ConnId(7), true);
        assert_eq!(f.interest("u"), (0b010, 0b010));
        // Under the minimum size: not compressed, even with the mask set.
        t0.subscribe(&f, 0, "t", ConnId(5), true);
        let mut small = prepare_delivery("t", b"1");
        let mut deflater = Deflater::new(1, 128);
        let sent = f.publish(
            Some(0),
            &topic,
            &mut small,
            &mut deflater,
            &n,
            Instant::now(),
        );
        assert!(!sent.compressed && small.deflated().is_none());
        assert_eq!(n.load(Ordering::Relaxed), 1, "counted each compression");
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
