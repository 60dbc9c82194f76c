//! Write batching on real sockets, on both drivers: a publisher floods one topic with a
//! short `max_batch_delay`, so the reactors batch whenever they are busy; every subscriber
//! still gets every message, once, in order, and frames share writes. (That no frame waits
//! past the bound, and that light load never batches, is asserted with a deterministic
//! clock and the in-memory driver in src/reactor/tests.rs.)

mod util;

use std::time::Duration;

use tungstenite::Message;
use util::*;
use wsgate::metrics::ReactorMetrics;

for_each_driver! {
    fn flood_is_batched_without_loss_or_reordering(io: IoBackend) {
        const MESSAGES: usize = 4000;
        let server = TestServer::start(io, |c| {
            c.pubsub.client_publish = Some(vec!["*".into()]);
            c.pubsub.max_batch_delay = Some(Duration::from_millis(5));
        });
        let mut subscribers: Vec<Client> =
            (0..40).map(|_| connect(&server, "/ws?subscribe=flood")).collect();
        let mut publisher = connect(&server, "/ws");
        for i in 0..MESSAGES {
            let op = format!(r#"{{"op":"publish","topic":"flood","data":{i}}}"#);
            publisher.write(Message::text(op)).expect("queue a publish");
        }
        publisher.flush().expect("publishes sent");
        for ws in &mut subscribers {
            for i in 0..MESSAGES {
                match recv(ws) {
                    Message::Text(t) => {
                        assert_eq!(t.as_str(), format!(r#"{{"topic":"flood","data":{i}}}"#))
                    }
                    other => panic!("expected delivery {i}, got {other:?}"),
                }
            }
        }
        let metrics = &server.server().shared().metrics;
        let sum = |f: fn(&ReactorMetrics) -> &std::sync::atomic::AtomicU64| -> u64 {
            metrics.iter().map(|m| ReactorMetrics::get(f(m))).sum()
        };
        assert_eq!(sum(|m| &m.deliveries), (40 * MESSAGES) as u64);
        let writes = sum(|m| &m.writes);
        assert!(writes > 0 && writes < (40 * MESSAGES) as u64, "{writes} writes");
    }
}
