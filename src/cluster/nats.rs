//! The bridge thread: one NATS connection per node, on a current-thread tokio runtime.
//! It publishes what the reactors queue, keeps one NATS subscription per topic the node
//! has subscribers for, and relays what arrives into the fan-out.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event, ServerAddr, Subscriber};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use wsgate_proto::deflate::Deflater;

use super::{subject, Link, Outgoing};
use crate::app::json;
use crate::broadcast;
use crate::config::cluster::Cluster;
use crate::shared::Shared;

/// Starts the bridge thread of `shared`'s cluster link.
pub fn spawn(shared: Arc<Shared>, link: Arc<Link>) -> std::io::Result<JoinHandle<()>> {
    let outbox = link
        .outbox_rx
        .lock()
        .expect("outbox lock poisoned")
        .take()
        .expect("one bridge per link");
    std::thread::Builder::new()
        .name("wsgate-cluster".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            runtime.block_on(Bridge::run(shared, link, outbox));
        })
}

/// Backoff between reconnection attempts: 25 ms doubling up to 2 s.
fn reconnect_delay(attempts: usize) -> Duration {
    Duration::from_millis(25u64 << attempts.min(7)).min(Duration::from_secs(2))
}

struct Bridge {
    shared: Arc<Shared>,
    link: Arc<Link>,
    client: Client,
    /// topic → the relay task that owns its NATS subscription.
    subscriptions: HashMap<Arc<str>, AbortHandle>,
    /// Whether a connection has been made before (so the next one is a reconnect).
    was_connected: bool,
    /// Counts connection events; a probe answers for the connection it was sent on.
    generation: u64,
    /// Where the probe sent after a connection reports: its generation, and whether the
    /// server answered it.
    probed: mpsc::UnboundedSender<(u64, bool)>,
    /// The compressor of what arrives from NATS, the bridge being those messages'
    /// publishing point; shared by the relays, which all run on this one thread (the lock
    /// is never contended). Allocated at the first use.
    deflater: Arc<Mutex<Deflater>>,
}

impl Bridge {
    async fn run(shared: Arc<Shared>, link: Arc<Link>, mut outbox: mpsc::Receiver<Outgoing>) {
        let config = &shared.config.cluster;
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (probed, mut probes) = mpsc::unbounded_channel();
        let client = match options(config, events_tx).await {
            Ok(options) => {
                let servers: Vec<ServerAddr> = config
                    .urls
                    .iter()
                    .map(|u| u.parse().expect("checked by the config"))
                    .collect();
                // With retry_on_initial_connect this returns at once and connects in the
                // background: a node starts even while NATS is down.
                options.connect(servers).await
            }
            Err(e) => Err(async_nats::ConnectError::with_source(
                async_nats::ConnectErrorKind::Io,
                e,
            )),
        };
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                tracing::error!("cluster: cannot set up the NATS client: {e}");
                return;
            }
        };
        let mut bridge = Bridge {
            shared: shared.clone(),
            link,
            client,
            subscriptions: HashMap::new(),
            was_connected: false,
            generation: 0,
            probed,
            deflater: Arc::new(Mutex::new(Deflater::new(
                shared.config.deflate.level,
                shared.config.deflate.min_size,
            ))),
        };
        let mut batch = Vec::with_capacity(256);
        loop {
            if bridge.link.stopping.load(Ordering::Acquire) {
                break;
            }
            tokio::select! {
                n = outbox.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    bridge.publish(&mut batch).await;
                }
                () = bridge.link.wake.notified() => bridge.reconcile().await,
                Some(event) = events.recv() => bridge.on_event(event),
                Some((generation, answered)) = probes.recv() => bridge.on_probe(generation, answered),
                () = bridge.link.stop.notified() => break,
            }
        }
        // Flushing waits for a connection: bounded, so a node stops while NATS is down.
        let _ = tokio::time::timeout(Duration::from_secs(1), bridge.client.flush()).await;
        tracing::debug!("cluster: bridge stopped");
    }

    /// Sends a batch of publishes, or drops it (counted) while disconnected.
    async fn publish(&mut self, batch: &mut Vec<Outgoing>) {
        let stats = &self.link.stats;
        let prefix = &self.shared.config.cluster.subject_prefix;
        for Outgoing { topic, data } in batch.drain(..) {
            if !self.link.is_connected() {
                stats.dropped_out.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.client.publish(subject::of(prefix, &topic), data).await {
                Ok(()) => stats.messages_out.fetch_add(1, Ordering::Relaxed),
                Err(_) => stats.dropped_out.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// Brings the NATS subscriptions in line with the node's interest, then confirms the
    /// topics wanted once the server has processed the subscriptions.
    async fn reconcile(&mut self) {
        let mut wanted = Vec::new();
        for topic in self.link.take_changed() {
            let want = self.shared.fanout.interested(&topic) != 0;
            match (want, self.subscriptions.contains_key(&topic)) {
                (true, false) => {
                    let subject = subject::of(&self.shared.config.cluster.subject_prefix, &topic);
                    match self.client.subscribe(subject).await {
                        Ok(sub) => {
                            let relay = tokio::spawn(relay(
                                self.shared.clone(),
                                self.link.clone(),
                                topic.clone(),
                                sub,
                                self.deflater.clone(),
                            ));
                            self.subscriptions
                                .insert(topic.clone(), relay.abort_handle());
                            wanted.push(topic);
                        }
                        Err(e) => tracing::warn!("cluster: cannot subscribe to {topic}: {e}"),
                    }
                }
                (false, true) => {
                    // Dropping the subscriber (with its task) unsubscribes.
                    if let Some(relay) = self.subscriptions.remove(&topic) {
                        relay.abort();
                    }
                }
                // Wanted again before the bridge let go of it: the subscription is there.
                (true, true) => wanted.push(topic),
                (false, false) => {}
            }
        }
        if wanted.is_empty() || !self.link.is_connected() {
            // Disconnected: confirmed after the reconnection, with everything else.
            return;
        }
        let (client, fanout_of) = (self.client.clone(), self.shared.clone());
        let timeout = self.shared.config.cluster.confirm_timeout;
        tokio::spawn(async move {
            if round_trip(&client, timeout).await {
                for topic in &wanted {
                    fanout_of.fanout.confirm(topic);
                }
            }
        });
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                // Subscriptions are re-sent on every (re)connection; once the server has
                // processed them, the node counts as connected and every topic as
                // confirmed. The probe runs beside the bridge's loop, which goes on
                // serving publishes (dropped and counted until then) and a stop.
                self.generation += 1;
                let (client, probed, generation) =
                    (self.client.clone(), self.probed.clone(), self.generation);
                let timeout = self.shared.config.cluster.confirm_timeout;
                tokio::spawn(async move {
                    let answered = round_trip(&client, timeout).await;
                    let _ = probed.send((generation, answered));
                });
            }
            Event::Disconnected => {
                self.generation += 1;
                self.link.stats.connected.store(false, Ordering::Release);
                tracing::warn!("cluster: disconnected from NATS; reconnecting");
            }
            Event::SlowConsumer(_) => {
                // async-nats dropped messages for a relay that fell behind.
                self.link.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
            }
            other => tracing::debug!("cluster: {other}"),
        }
    }

    /// The probe sent after connection `generation` came back (`answered`) or timed out.
    fn on_probe(&mut self, generation: u64, answered: bool) {
        if generation != self.generation {
            // That connection is gone; its successor has a probe of its own.
            return;
        }
        if !answered {
            // The connection is up, but the probe proves nothing: a subscriber to `>` or
            // `_INBOX.>` takes it, a user without the right to publish to `_INBOX.>` has
            // it refused, or the server is slow. Count the node connected all the same:
            // waiting would drop every cross-node message meanwhile, and keep a stop
            // from being served.
            tracing::warn!(
                "cluster: NATS did not answer the connection's probe request within {:?} \
                 (is a client subscribed to `>` or `_INBOX.>`, or may this user not publish \
                 to `_INBOX.>`?); counting the node connected without it: subscribe \
                 acknowledgements will wait for cluster_confirm_timeout",
                self.shared.config.cluster.confirm_timeout
            );
        }
        if std::mem::replace(&mut self.was_connected, true) {
            self.link.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.link.stats.connected.store(true, Ordering::Release);
        if answered {
            for topic in self.subscriptions.keys() {
                self.shared.fanout.confirm(topic);
            }
        }
        tracing::info!("cluster: connected to NATS");
    }
}

/// Waits until the server has processed everything sent before: a request to a subject
/// nobody subscribes to comes back as "no responders" from the server itself, after the
/// commands queued ahead of it.
async fn round_trip(client: &Client, timeout: Duration) -> bool {
    let probe = client.new_inbox();
    let reply = tokio::time::timeout(timeout, client.request(probe, bytes::Bytes::new())).await;
    matches!(
        reply,
        Ok(Err(ref e)) if e.kind() == async_nats::RequestErrorKind::NoResponders
    )
}

/// Delivers what arrives on one topic's subscription to this node's subscribers, in order,
/// compressed here once when one of them negotiated permessage-deflate.
async fn relay(
    shared: Arc<Shared>,
    link: Arc<Link>,
    topic: Arc<str>,
    mut sub: Subscriber,
    deflater: Arc<Mutex<Deflater>>,
) {
    let max = shared.config.limits.max_publish_bytes;
    while let Some(message) = sub.next().await {
        link.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        // Anyone with access to the subjects may publish: only what a local publish would
        // accept reaches subscribers.
        let data = match json::document(&message.payload) {
            Ok(data) if data.len() <= max => data,
            _ => {
                link.stats.dropped_in.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let mut prepared = broadcast::prepare_delivery(&topic, data);
        let mut deflater = deflater.lock().expect("deflater lock poisoned");
        shared.fanout.publish(
            None,
            &topic,
            &mut prepared,
            &mut deflater,
            &link.stats.compressions,
            Instant::now(),
        );
    }
}

/// The client's options from the `cluster` section.
async fn options(
    config: &Cluster,
    events: mpsc::UnboundedSender<Event>,
) -> std::io::Result<ConnectOptions> {
    let mut options = match &config.creds_file {
        Some(path) => ConnectOptions::with_credentials_file(path).await?,
        None => ConnectOptions::new(),
    };
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if config.tls {
        options = options.require_tls(true);
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.into());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) {
        options = options.add_client_certificate(cert.into(), key.into());
    }
    let name = config.name.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("wsgate-{}-{}", host.trim(), std::process::id())
    });
    Ok(options
        .name(name)
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event);
            }
        }))
}
