//! Fan-out into this reactor's queues: subscriptions, publishing, the inbox from other
//! reactors, and delivery with the slow-consumer policy; and the subscribe replies held
//! until the cluster bridge confirms the node's interest.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use wsgate_proto::{CloseCode, Prepared};

use super::conn::{Phase, Scheduled, Subs};
use super::Core;
use crate::app::SubscribeError;
use crate::broadcast;
use crate::config::SlowConsumerPolicy;
use crate::driver::ConnId;
use crate::metrics::ReactorMetrics;

/// A subscribe's `ok`, waiting for NATS to have the node's subscription to its topic.
#[derive(Debug)]
pub(super) struct Held {
    conn: ConnId,
    topic: Arc<str>,
    reply: Vec<u8>,
    /// Sent anyway from then on (`cluster_confirm_timeout`).
    until: Instant,
}

impl Core {
    pub(super) fn subscribe(&mut self, id: ConnId, topic: &str) -> Result<(), SubscribeError> {
        let max = self.shared.config.limits.max_subscriptions;
        let Phase::WebSocket { ws, subs, .. } = &mut self.conns[id].phase else {
            return Ok(());
        };
        if self.topics.find(topic).is_some_and(|t| subs.contains(&t)) {
            return Ok(());
        }
        if subs.len() >= max {
            return Err(SubscribeError::TooMany);
        }
        let deflate = ws.deflate().is_some();
        let (topic, _) = self
            .topics
            .subscribe(&self.shared.fanout, self.index, topic, id, deflate);
        subs.push(topic);
        Ok(())
    }

    pub(super) fn unsubscribe(&mut self, id: ConnId, topic: &str) {
        let Some(topic) = self.topics.find(topic) else {
            return;
        };
        let Phase::WebSocket { subs, .. } = &mut self.conns[id].phase else {
            return;
        };
        if let Some(at) = subs.iter().position(|&t| t == topic) {
            subs.swap_remove(at);
            self.topics
                .unsubscribe(&self.shared.fanout, self.index, topic, id);
        }
    }

    /// Unsubscribes a connection that left the WebSocket phase from all its topics.
    pub(super) fn leave_topics(&mut self, id: ConnId, subs: Subs) {
        if !self.held.is_empty() {
            self.held.retain(|h| h.conn != id);
            self.held_bytes = self.held.iter().map(|h| h.reply.len()).sum();
        }
        for topic in subs {
            self.topics
                .unsubscribe(&self.shared.fanout, self.index, topic, id);
        }
    }

    /// Encodes a publish once (compressed too, here, if a subscriber anywhere negotiated
    /// permessage-deflate) and hands it to every interested reactor, this one included.
    pub(super) fn publish(&mut self, topic: &str, data: &[u8]) {
        let mut message = broadcast::prepare_delivery(topic, data);
        let name: Arc<str> = Arc::from(topic);
        ReactorMetrics::add(&self.metrics().publishes, 1);
        if let Some(link) = &self.shared.cluster {
            link.publish(topic, data);
        }
        let sent = self.shared.fanout.publish(
            Some(self.index),
            &name,
            &mut message,
            &mut self.deflater,
            &self.shared.metrics[self.index].deflate_compressions,
            self.now,
        );
        if sent.local {
            self.deliver(topic, &message, self.now);
        }
    }

    /// Takes what other reactors published. Each message is copied once into this core's
    /// memory, so the many reference counts taken here never bounce between cores.
    pub(super) fn drain_inbox(&mut self) {
        self.shared.fanout.rearm(self.index);
        while let Ok(d) = self.inbox.try_recv() {
            self.deliver(&d.topic, &d.message.localize(), d.published);
        }
        if !self.held.is_empty() {
            self.release_held();
        }
    }

    /// Holds a subscribe's reply until the bridge confirms `topic` (or the timeout). The
    /// replies held are at most `max_outbound_bytes` a reactor: past that (a client that
    /// repeats a subscribe with long ids while NATS is slow to confirm) the reply is given
    /// back, to be sent at once, and counted as unconfirmed.
    pub(super) fn hold(
        &mut self,
        conn: ConnId,
        topic: &str,
        reply: Vec<u8>,
    ) -> Result<(), Vec<u8>> {
        if self.held_bytes + reply.len() > self.shared.config.limits.max_outbound_bytes {
            if let Some(link) = &self.shared.cluster {
                link.stats.unconfirmed.fetch_add(1, Ordering::Relaxed);
            }
            return Err(reply);
        }
        self.held_bytes += reply.len();
        let timeout = self.shared.config.cluster.confirm_timeout;
        self.held.push(Held {
            conn,
            topic: Arc::from(topic),
            reply,
            until: self.now + timeout,
        });
        Ok(())
    }

    /// When the first held reply is due at the latest.
    pub(super) fn held_until(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.until).min()
    }

    /// Sends the held replies whose topic was confirmed, or whose time is up (counted).
    fn release_held(&mut self) {
        let confirmed: Vec<Arc<str>> = self.shared.fanout.take_confirmed(self.index).collect();
        let now = self.now;
        let mut late = 0;
        let mut i = 0;
        while i < self.held.len() {
            let h = &self.held[i];
            let ready = confirmed.contains(&h.topic);
            if !ready && now < h.until {
                i += 1;
                continue;
            }
            late += u64::from(!ready);
            let h = self.held.swap_remove(i);
            self.held_bytes -= h.reply.len();
            let Some(conn) = self.conns.get_mut(h.conn) else {
                continue;
            };
            if let Phase::WebSocket { ws, .. } = &mut conn.phase {
                ws.send_message(wsgate_proto::OpCode::Text, &h.reply, &mut conn.out);
                self.schedule(h.conn);
            }
        }
        if let (Some(link), 1..) = (&self.shared.cluster, late) {
            link.stats.unconfirmed.fetch_add(late, Ordering::Relaxed);
        }
    }

    /// Queues a message to every local subscriber of `topic`, applying the slow-consumer
    /// policy to those whose queue is over the cap. No copy and no allocation per
    /// subscriber: each gets a reference.
    fn deliver(&mut self, topic: &str, message: &Prepared, published: Instant) {
        let config = &self.shared.config;
        let cap = config.limits.max_outbound_bytes;
        let (mut delivered, mut dropped, mut closed) = (0, 0, 0);
        let mut abort = Vec::new();
        // The slots of connections a close takes out of `corked` before their tick.
        let mut early = Vec::new();
        // The slots of `corked` this publish's frames wait in.
        let mut waits = 0u16;
        for id in self.topics.subscribers(topic) {
            let Some((conn, transport)) = self.conns.with_transport(id) else {
                continue;
            };
            let Phase::WebSocket { ws, .. } = &mut conn.phase else {
                continue;
            };
            let pending = transport.pending(&conn.out);
            let mut urgent = false;
            // A subscriber with nothing queued is not slow, whatever the cap: one delivery
            // larger than `max_outbound_bytes` still reaches it.
            if pending == 0 || pending + message.len() <= cap {
                if ws.send_prepared(message, &mut conn.out) {
                    delivered += 1;
                }
            } else {
                match config.pubsub.slow_consumer {
                    SlowConsumerPolicy::Drop => dropped += 1,
                    SlowConsumerPolicy::Close if ws.is_open() => {
                        closed += 1;
                        // Room for a close frame up to twice the cap, or behind one
                        // delivery larger than that (taken by an empty queue).
                        let room = cap
                            .saturating_mul(2)
                            .max(config.limits.pubsub.max_message_size);
                        if pending > room {
                            // Not even room for a close frame: abort.
                            abort.push(id);
                            continue;
                        }
                        ws.close(
                            self.now,
                            &config.limits.echo,
                            CloseCode::POLICY,
                            "slow consumer",
                            &mut conn.out,
                        );
                        urgent = true;
                    }
                    SlowConsumerPolicy::Close => {}
                }
            }
            // A connection with nothing queued waits for its slot while batching is on.
            // Not one with a close queued (it leaves at once, like any reply), nor one whose
            // queue already holds bytes (a write in flight, which its completion follows
            // with the rest, or a reply): waiting would hold those back too.
            let hold = !urgent && pending == 0 && !self.batch.delay().is_zero();
            match conn.scheduled {
                Scheduled::Flush => self.batch.joined(),
                Scheduled::Corked(slot) if !urgent => {
                    waits |= 1 << slot;
                    self.batch.joined();
                }
                Scheduled::No if hold => {
                    let max = config.pubsub.max_batch_delay;
                    let slot = self.corked.cork(id, self.now, self.batch.delay(), max);
                    conn.scheduled = Scheduled::Corked(slot);
                    waits |= 1 << slot;
                    self.batch.opened();
                }
                scheduled => {
                    if scheduled == Scheduled::No {
                        self.batch.opened();
                    } else {
                        self.batch.joined();
                    }
                    conn.scheduled = Scheduled::Flush;
                    self.flush.push(id);
                    if let Scheduled::Corked(slot) = scheduled {
                        // A close takes what waited with it.
                        early.push(slot);
                    }
                }
            }
            self.batch.received(id);
        }
        for id in abort {
            self.close_now(id);
        }
        let m = &self.shared.metrics[self.index];
        ReactorMetrics::add(&m.deliveries, delivered);
        ReactorMetrics::add(&m.dropped, dropped);
        ReactorMetrics::add(&m.slow_consumer_closes, closed);
        if delivered > 0 {
            self.published.push((published, waits));
            self.published_done |= waits == 0;
        }
        for slot in early {
            self.uncorked_early(slot);
        }
    }
}
