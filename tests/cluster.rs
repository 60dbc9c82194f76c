//! Several wsgate nodes sharing topics through real `nats-server` processes (started here on
//! free loopback ports, killed on drop): delivery exactly once and in per-publisher order,
//! the subscribe acknowledgement, interest-based NATS subscriptions, a NATS restart, a NATS
//! cluster losing a server, a node killed, and every character a topic may hold.
//!
//! Needs `nats-server` on the PATH (Debian: `apt-get install nats-server`).

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;
use util::*;
use wsgate::cluster::Link;
use wsgate::config::IoBackend;

/// One `nats-server` process; killed on drop.
struct Nats {
    port: u16,
    monitor: u16,
    cluster: Option<(u16, Vec<u16>)>,
    /// Extra flags (authentication).
    extra: Vec<String>,
    child: Option<Child>,
}

/// `N` distinct free ports, held together while they are chosen so that none repeats.
/// They are released before nats-server binds them, so a test running beside may take
/// one meanwhile: `Nats::with` then starts again on fresh ones.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

impl Nats {
    fn start() -> Self {
        Self::with(&[])
    }

    /// Three servers routed to each other.
    fn cluster() -> Vec<Self> {
        let ports: [u16; 9] = free_ports();
        let routes = ports[..3].to_vec();
        (0..3)
            .map(|i| {
                let (port, monitor) = (ports[3 + 2 * i], ports[4 + 2 * i]);
                Self::spawn(port, monitor, Some((routes[i], routes.clone())))
            })
            .collect()
    }

    /// One server started with `extra` flags, on fresh ports if the first ones were taken.
    fn with(extra: &[&str]) -> Self {
        for _ in 0..5 {
            let [port, monitor] = free_ports();
            let mut nats = Self {
                port,
                monitor,
                cluster: None,
                extra: extra.iter().map(|s| s.to_string()).collect(),
                child: None,
            };
            if nats.try_start() {
                return nats;
            }
        }
        panic!("nats-server exited before serving on five pairs of free ports");
    }

    fn spawn(port: u16, monitor: u16, cluster: Option<(u16, Vec<u16>)>) -> Self {
        let mut nats = Self {
            port,
            monitor,
            cluster,
            extra: Vec::new(),
            child: None,
        };
        nats.restart();
        nats
    }

    /// Starts the process (again, on the same ports) and waits until it serves.
    fn restart(&mut self) {
        assert!(
            self.try_start(),
            "nats-server exited before serving on port {} (monitor {})",
            self.port,
            self.monitor
        );
    }

    /// `restart`, but false if the process exits before it serves (a port taken).
    fn try_start(&mut self) -> bool {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor.to_string()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((own, routes)) = &self.cluster {
            let routes: Vec<String> = routes
                .iter()
                .filter(|&r| r != own)
                .map(|r| format!("nats://127.0.0.1:{r}"))
                .collect();
            cmd.args(["--cluster_name", "wsgate-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{own}")])
                .args(["--routes", &routes.join(",")]);
        }
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "nats-server is not installed: these tests need it on the PATH \
                 (Debian/Ubuntu: apt-get install nats-server; .ci/run installs it)"
            ),
            Err(e) => panic!("cannot start nats-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.get("/varz").is_some() {
                return true;
            }
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for nats-server to serve"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A monitoring endpoint's JSON, or `None` if the server does not answer.
    fn get(&self, path: &str) -> Option<Value> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.monitor)).ok()?;
        stream.set_read_timeout(Some(TIMEOUT)).ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str(body).ok()
    }

    /// How many client subscriptions this server holds on `subject` (routed ones excluded).
    fn subscriptions(&self, subject: &str) -> usize {
        let subsz = self.get("/subsz?subs=1&limit=100000").expect("subsz");
        subsz["subscriptions_list"].as_array().map_or(0, |subs| {
            subs.iter()
                .filter(|s| s["subject"] == subject && s["account"] == "$G")
                .count()
        })
    }

    /// Names of the client connections on this server.
    fn connection_names(&self) -> Vec<String> {
        let connz = self.get("/connz?limit=1000").expect("connz");
        connz["connections"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A wsgate node in this process, with its own bridge thread and NATS connection.
fn node(urls: &[String], name: &str) -> TestServer {
    let node = TestServer::start(IoBackend::Epoll, |c| {
        c.cluster.urls = Some(urls.to_vec());
        c.cluster.name = Some(Some(name.to_owned()));
        c.pubsub.client_publish = Some(vec!["*".into()]);
    });
    wait_until("the node to connect to NATS", || link(&node).is_connected());
    node
}

fn link(node: &TestServer) -> &Link {
    node.server()
        .shared()
        .cluster
        .as_deref()
        .expect("clustered")
}

fn stat(node: &TestServer, counter: fn(&Link) -> &std::sync::atomic::AtomicU64) -> u64 {
    counter(link(node)).load(Ordering::Relaxed)
}

/// Subscribes and waits for the `ok`: from then on, a publish on any node reaches `ws`.
fn subscribe(ws: &mut Client, topic: &str) {
    send_json(ws, json!({"op": "subscribe", "topic": topic, "id": 1}));
    assert_eq!(next_json(ws), json!({"op": "ok", "id": 1}));
}

/// A keep-alive HTTP connection for publishing.
struct Publisher(TcpStream);

impl Publisher {
    fn new(node: &TestServer) -> Self {
        Self(tcp(node))
    }

    fn publish(&mut self, topic: &str, body: &str) {
        let request = format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.0.write_all(request.as_bytes()).unwrap();
        let response = read_response(&mut self.0);
        assert_eq!(response.status, 202, "{}", response.body_text());
    }
}

fn delivery(topic: &str, data: Value) -> Value {
    json!({"topic": topic, "data": data})
}

#[test]
fn every_subscriber_on_every_node_gets_every_message_once_in_order() {
    const MESSAGES: usize = 200;
    let nats = Nats::start();
    let urls = [nats.url()];
    let nodes: Vec<TestServer> = ["a", "b", "c"].iter().map(|n| node(&urls, n)).collect();
    let mut subscribers: Vec<Client> = Vec::new();
    for node in &nodes {
        for _ in 0..3 {
            let mut ws = connect(node, "/ws");
            subscribe(&mut ws, "feed");
            subscribers.push(ws);
        }
    }
    // On every node one publisher over HTTP and one over /ws, all at once, right after
    // the last ok.
    let publishers: Vec<_> = nodes
        .iter()
        .enumerate()
        .flat_map(|(n, node)| [(2 * n, node), (2 * n + 1, node)])
        .map(|(p, node)| {
            let (addr, url) = (node.addr, node.url("/ws"));
            std::thread::spawn(move || {
                if p % 2 == 0 {
                    let stream = TcpStream::connect(addr).unwrap();
                    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                    let mut publisher = Publisher(stream);
                    for s in 0..MESSAGES {
                        publisher.publish("feed", &json!({"p": p, "s": s}).to_string());
                    }
                } else {
                    let (mut ws, _) = tungstenite::connect(url).unwrap();
                    for s in 0..MESSAGES {
                        let op =
                            json!({"op": "publish", "topic": "feed", "data": {"p": p, "s": s}});
                        ws.send(Message::text(op.to_string())).unwrap();
                    }
                    ws.close(None).unwrap();
                    while ws.read().is_ok() {}
                }
            })
        })
        .collect();
    let count = publishers.len();
    for ws in &mut subscribers {
        let mut next = vec![0usize; count];
        for _ in 0..count * MESSAGES {
            let m = next_json(ws);
            assert_eq!(m["topic"], "feed");
            let p = m["data"]["p"].as_u64().unwrap() as usize;
            let s = m["data"]["s"].as_u64().unwrap() as usize;
            assert_eq!(s, next[p], "publisher {p}: in order, no loss, no duplicate");
            next[p] += 1;
        }
    }
    for p in publishers {
        p.join().unwrap();
    }
    // Nothing extra arrives (a node hearing its own publish back would deliver it twice):
    // the next messages are one marker from each node.
    for (n, node) in nodes.iter().enumerate() {
        Publisher::new(node).publish("feed", &format!("\"end {n}\""));
        for ws in &mut subscribers {
            assert_eq!(next_json(ws), delivery("feed", json!(format!("end {n}"))));
        }
    }
    for node in &nodes {
        assert_eq!(
            stat(node, |l| &l.stats.messages_out),
            2 * MESSAGES as u64 + 1
        );
        assert_eq!(
            stat(node, |l| &l.stats.messages_in),
            4 * MESSAGES as u64 + 2
        );
        let counters: [fn(&Link) -> &std::sync::atomic::AtomicU64; 3] = [
            |l| &l.stats.dropped_in,
            |l| &l.stats.dropped_out,
            |l| &l.stats.unconfirmed,
        ];
        for counter in counters {
            assert_eq!(stat(node, counter), 0);
        }
    }
}

#[test]
fn a_publish_on_another_node_right_after_the_ok_arrives() {
    let nats = Nats::start();
    let urls = [nats.url()];
    let (a, b) = (node(&urls, "a"), node(&urls, "b"));
    let mut publisher = Publisher::new(&b);
    // Each topic is new, so each ok waits for NATS to have node a's subscription.
    for i in 0..30 {
        let topic = format!("race.{i}");
        let mut ws = connect(&a, "/ws");
        subscribe(&mut ws, &topic);
        publisher.publish(&topic, &i.to_string());
        assert_eq!(next_json(&mut ws), delivery(&topic, json!(i)));
    }
    assert_eq!(stat(&a, |l| &l.stats.unconfirmed), 0);
}

#[test]
fn the_last_subscriber_leaving_removes_the_nodes_nats_subscription() {
    let nats = Nats::start();
    let urls = [nats.url()];
    let (a, b) = (node(&urls, "a"), node(&urls, "b"));
    let subject = "wsgate.leave.x";
    // Several subscribers, over both reactors (the kernel spreads connections by hash:
    // open them until both have some): one NATS subscription for the node.
    let reactors = || {
        a.server()
            .shared()
            .fanout
            .interested("leave.x")
            .count_ones()
    };
    let mut subs: Vec<Client> = Vec::new();
    while subs.len() < 4 || reactors() < 2 {
        assert!(subs.len() < 64, "64 connections all on one reactor");
        let mut ws = connect(&a, "/ws");
        subscribe(&mut ws, "leave.x");
        subs.push(ws);
    }
    assert_eq!(nats.subscriptions(subject), 1);
    let mut on_b = connect(&b, "/ws");
    subscribe(&mut on_b, "leave.x");
    assert_eq!(nats.subscriptions(subject), 2, "one per node");
    while subs.len() > 1 {
        let mut ws = subs.pop().unwrap();
        send_json(
            &mut ws,
            json!({"op": "unsubscribe", "topic": "leave.x", "id": 2}),
        );
        assert_eq!(next_json(&mut ws), json!({"op": "ok", "id": 2}));
    }
    assert_eq!(nats.subscriptions(subject), 2, "a subscriber is left on a");
    drop(subs.pop());
    wait_until("a's NATS subscription to go", || {
        nats.subscriptions(subject) == 1
    });
    drop(on_b);
    wait_until("b's NATS subscription to go", || {
        nats.subscriptions(subject) == 0
    });
    // And back: a new first subscriber subscribes again.
    let mut again = connect(&a, "/ws");
    subscribe(&mut again, "leave.x");
    assert_eq!(nats.subscriptions(subject), 1);
    Publisher::new(&b).publish("leave.x", "7");
    assert_eq!(next_json(&mut again), delivery("leave.x", json!(7)));
}

#[test]
fn a_nats_restart_loses_only_the_outage_and_counts_it() {
    let mut nats = Nats::start();
    let urls = [nats.url()];
    let (a, b) = (node(&urls, "a"), node(&urls, "b"));
    let (mut on_a, mut on_b) = (connect(&a, "/ws"), connect(&b, "/ws"));
    subscribe(&mut on_a, "r");
    subscribe(&mut on_b, "r");
    let mut publisher = Publisher::new(&a);
    publisher.publish("r", "\"before\"");
    assert_eq!(next_json(&mut on_a), delivery("r", json!("before")));
    assert_eq!(next_json(&mut on_b), delivery("r", json!("before")));

    nats.kill();
    wait_until("both nodes to see the outage", || {
        !link(&a).is_connected() && !link(&b).is_connected()
    });
    let health = http(&a, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        (health.status, health.body_text()),
        (200, "ok\ncluster: disconnected\n".into())
    );
    // Local fan-out goes on; what node b would have got is dropped and counted.
    let dropped = stat(&a, |l| &l.stats.dropped_out);
    for i in 0..10 {
        publisher.publish("r", &i.to_string());
        assert_eq!(next_json(&mut on_a), delivery("r", json!(i)));
    }
    wait_until("the bridge to count what it could not send", || {
        stat(&a, |l| &l.stats.dropped_out) == dropped + 10
    });
    // A subscribe during the outage is acknowledged at once (there is nothing to wait for).
    let mut late = connect(&b, "/ws");
    subscribe(&mut late, "r2");

    nats.restart();
    wait_until("both nodes to reconnect and re-subscribe", || {
        link(&a).is_connected() && link(&b).is_connected()
    });
    assert!(stat(&a, |l| &l.stats.reconnects) >= 1);
    assert!(stat(&b, |l| &l.stats.reconnects) >= 1);
    publisher.publish("r", "\"after\"");
    publisher.publish("r2", "\"new\"");
    assert_eq!(next_json(&mut on_a), delivery("r", json!("after")));
    assert_eq!(
        next_json(&mut on_b),
        delivery("r", json!("after")),
        "nothing from the outage arrives late"
    );
    assert_eq!(next_json(&mut late), delivery("r2", json!("new")));
    let metrics = http(&a, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body_text();
    assert!(metrics.contains("wsgate_cluster_connected 1"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "wsgate_cluster_dropped_total{{direction=\"out\"}} {}",
            dropped + 10
        )),
        "{metrics}"
    );
}

#[test]
fn a_required_cluster_makes_a_disconnected_node_unhealthy() {
    let mut nats = Nats::start();
    let node = TestServer::start(IoBackend::Epoll, |c| {
        c.cluster.urls = Some(vec![nats.url()]);
        c.cluster.required = Some(true);
    });
    wait_until("connected", || link(&node).is_connected());
    let health = http(&node, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        (health.status, health.body_text()),
        (200, "ok\ncluster: connected\n".into())
    );
    nats.kill();
    wait_until("disconnected", || !link(&node).is_connected());
    let health = http(&node, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(health.status, 503, "{}", health.body_text());
    assert!(health.body_text().contains("cluster: disconnected"));
}

#[test]
fn nodes_fail_over_when_a_nats_cluster_server_dies() {
    let mut servers = Nats::cluster();
    let urls: Vec<String> = servers.iter().map(Nats::url).collect();
    wait_until("the NATS cluster to form", || {
        servers.iter().all(|s| {
            s.get("/routez")
                .is_some_and(|r| r["num_routes"].as_u64() == Some(2))
        })
    });
    let nodes: Vec<TestServer> = ["fa", "fb", "fc"].iter().map(|n| node(&urls, n)).collect();
    let mut subs: Vec<Client> = nodes.iter().map(|n| connect(n, "/ws")).collect();
    for ws in &mut subs {
        subscribe(ws, "fo");
    }
    let subject = "wsgate.fo";
    // Subscriptions travel between NATS servers on their own time: a publish through
    // another server reaches a node once that server knows of the node's interest.
    let routed = |servers: &[Nats]| {
        wait_until("interest to reach every NATS server", || {
            interest_routed(servers, subject)
        })
    };
    routed(&servers);
    let round = |nodes: &[TestServer], subs: &mut [Client], tag: &str| {
        for (n, node) in nodes.iter().enumerate() {
            Publisher::new(node).publish("fo", &format!("\"{tag} {n}\""));
            for ws in subs.iter_mut() {
                assert_eq!(next_json(ws), delivery("fo", json!(format!("{tag} {n}"))));
            }
        }
    };
    round(&nodes, &mut subs, "before");
    // Kill the server node fa is connected to.
    let victim = servers
        .iter()
        .position(|s| s.connection_names().iter().any(|n| n == "fa"))
        .expect("fa is connected somewhere");
    servers[victim].kill();
    let survivors: Vec<Nats> = servers
        .into_iter()
        .enumerate()
        .filter(|&(i, _)| i != victim)
        .map(|(_, s)| s)
        .collect();
    wait_until("every node on a surviving server", || {
        let names: Vec<String> = survivors.iter().flat_map(Nats::connection_names).collect();
        ["fa", "fb", "fc"]
            .iter()
            .all(|n| names.iter().any(|m| m == n))
            && nodes.iter().all(|n| link(n).is_connected())
    });
    routed(&survivors);
    round(&nodes, &mut subs, "after");
    assert!(stat(&nodes[0], |l| &l.stats.reconnects) >= 1);
}

/// Whether every server has heard, over its routes, of each other server's local
/// subscriptions on `subject` (routes carry one interest per subject and server).
fn interest_routed(servers: &[Nats], subject: &str) -> bool {
    let ids: Vec<Value> = servers
        .iter()
        .map(|s| s.get("/varz").expect("varz")["server_id"].clone())
        .collect();
    servers.iter().enumerate().all(|(i, server)| {
        let routes = server.get("/routez?subs=1").expect("routez");
        let heard_from = |id: &Value| {
            routes["routes"].as_array().is_some_and(|routes| {
                routes.iter().any(|r| {
                    r["remote_id"] == *id
                        && r["subscriptions_list"]
                            .as_array()
                            .is_some_and(|l| l.iter().any(|s| s == subject))
                })
            })
        };
        servers
            .iter()
            .zip(&ids)
            .enumerate()
            .all(|(j, (other, id))| i == j || other.subscriptions(subject) == 0 || heard_from(id))
    })
}

/// A wsgate node as its own process, so that it can be killed; returns once it has
/// connected to NATS.
fn node_process(nats: &Nats) -> GatewayProcess {
    let url = nats.url();
    let mut node = GatewayProcess::one_reactor(&[
        "--io",
        "epoll",
        "--cluster-urls",
        &url,
        "--cluster-name",
        "doomed",
    ]);
    node.wait_log("cluster: connected");
    node
}

#[test]
fn a_killed_node_leaves_the_others_unaffected() {
    let nats = Nats::start();
    let urls = [nats.url()];
    let (a, b) = (node(&urls, "a"), node(&urls, "b"));
    let mut doomed = node_process(&nats);
    let stream = TcpStream::connect(doomed.addr.as_str()).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut on_doomed, _) = tungstenite::client("ws://x/ws", stream).unwrap();
    subscribe(&mut on_doomed, "k");
    let (mut on_a, mut on_b) = (connect(&a, "/ws"), connect(&b, "/ws"));
    subscribe(&mut on_a, "k");
    subscribe(&mut on_b, "k");
    Publisher::new(&a).publish("k", "1");
    for ws in [&mut on_doomed, &mut on_a, &mut on_b] {
        assert_eq!(next_json(ws), delivery("k", json!(1)));
    }
    doomed.kill();
    wait_until("NATS to drop the dead node's subscription", || {
        nats.subscriptions("wsgate.k") == 2
    });
    for (i, node) in [&a, &b].iter().enumerate() {
        Publisher::new(node).publish("k", &i.to_string());
        assert_eq!(next_json(&mut on_a), delivery("k", json!(i)));
        assert_eq!(next_json(&mut on_b), delivery("k", json!(i)));
    }
    assert!(link(&a).is_connected() && link(&b).is_connected());
    assert_eq!(stat(&a, |l| &l.stats.dropped_out), 0);
}

#[test]
fn a_topic_with_every_allowed_character_crosses_nodes() {
    let nats = Nats::start();
    let urls = [nats.url()];
    let (a, b) = (node(&urls, "a"), node(&urls, "b"));
    let topic = ".aZ09-_:/@..x.";
    let mut ws = connect(&a, "/ws");
    subscribe(&mut ws, topic);
    assert_eq!(nats.subscriptions("wsgate.~.aZ09-_:/@.~.x.~"), 1);
    // A topic differing only in the escaped dots is another subject.
    let mut other = connect(&a, "/ws");
    subscribe(&mut other, "aZ09-_:/@.x");
    Publisher::new(&b).publish(topic, "\"http\"");
    let mut publisher = connect(&b, "/ws");
    send_json(
        &mut publisher,
        json!({"op": "publish", "topic": topic, "data": "ws", "id": 5}),
    );
    assert_eq!(next_json(&mut publisher), json!({"op": "ok", "id": 5}));
    assert_eq!(next_json(&mut ws), delivery(topic, json!("http")));
    assert_eq!(next_json(&mut ws), delivery(topic, json!("ws")));
    Publisher::new(&b).publish("aZ09-_:/@.x", "1");
    assert_eq!(next_json(&mut other), delivery("aZ09-_:/@.x", json!(1)));
}

/// A raw NATS client (the text protocol over TCP) that has sent `commands` and seen the
/// server process them (its PONG); the connection stays open while the stream lives.
fn raw_nats(nats: &Nats, commands: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    assert!(info.starts_with("INFO "), "{info}");
    let mut out = b"CONNECT {\"verbose\":false}\r\n".to_vec();
    out.extend_from_slice(commands);
    out.extend_from_slice(b"PING\r\n");
    stream.write_all(&out).unwrap();
    let mut pong = String::new();
    reader.read_line(&mut pong).unwrap();
    assert_eq!(pong, "PONG\r\n");
    stream
}

/// Another publisher on the subjects.
fn raw_nats_publish(nats: &Nats, subject: &str, payload: &[u8]) {
    let mut pub_ = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
    pub_.extend_from_slice(payload);
    pub_.extend_from_slice(b"\r\n");
    raw_nats(nats, &pub_);
}

/// A client on the full wildcard (`nats sub '>'` while debugging) takes the probe the
/// bridge sends after connecting, which then times out: the node still counts as
/// connected and carries messages, its subscribes are acknowledged after the confirm
/// timeout (counted), and it stops when told to.
#[test]
fn a_nats_client_on_the_full_wildcard_does_not_keep_a_node_out() {
    let nats = Nats::start();
    let _observer = raw_nats(&nats, b"SUB > 1\r\n");
    let urls = [nats.url()];
    let (a, b) = (node(&urls, "a"), node(&urls, "b"));
    let mut ws = connect(&b, "/ws");
    subscribe(&mut ws, "w");
    assert_eq!(stat(&b, |l| &l.stats.unconfirmed), 1);
    wait_until("NATS to have b's subscription", || {
        nats.subscriptions("wsgate.w") == 1
    });
    Publisher::new(&a).publish("w", "1");
    assert_eq!(next_json(&mut ws), delivery("w", json!(1)));
    assert_eq!(stat(&a, |l| &l.stats.messages_out), 1);
    assert_eq!(stat(&a, |l| &l.stats.dropped_out), 0);
}

#[test]
fn messages_from_other_nats_clients_are_checked_like_a_publish() {
    let nats = Nats::start();
    let a = node(&[nats.url()], "a");
    let mut ws = connect(&a, "/ws");
    subscribe(&mut ws, "ext");
    for bad in [&b"not json"[..], b"", b"{\"a\":1} 2", &[b'1'; 70_000][..]] {
        raw_nats_publish(&nats, "wsgate.ext", bad);
    }
    raw_nats_publish(&nats, "wsgate.ext", b" {\"ok\": true} ");
    assert_eq!(next_json(&mut ws), delivery("ext", json!({"ok": true})));
    assert_eq!(stat(&a, |l| &l.stats.messages_in), 5);
    assert_eq!(stat(&a, |l| &l.stats.dropped_in), 4);
}

#[test]
fn a_node_starts_while_nats_is_down_and_connects_later() {
    let mut nats = Nats::start();
    nats.kill();
    let started = Instant::now();
    let node = TestServer::start(IoBackend::Epoll, |c| {
        c.cluster.urls = Some(vec![nats.url()]);
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!link(&node).is_connected());
    let mut ws = connect(&node, "/ws");
    subscribe(&mut ws, "early");
    Publisher::new(&node).publish("early", "1");
    assert_eq!(
        next_json(&mut ws),
        delivery("early", json!(1)),
        "local fan-out"
    );
    nats.restart();
    wait_until("connected", || link(&node).is_connected());
    raw_nats_publish(&nats, "wsgate.early", b"2");
    assert_eq!(next_json(&mut ws), delivery("early", json!(2)));
}

#[test]
fn credentials_reach_nats_and_wrong_ones_keep_the_node_out() {
    for (flags, good, bad) in [
        (
            &["--auth", "s3cret"][..],
            (|c: &mut wsgate::config::RawConfig| c.cluster.token = Some(Some("s3cret".into())))
                as fn(&mut wsgate::config::RawConfig),
            (|c: &mut wsgate::config::RawConfig| c.cluster.token = Some(Some("wrong".into())))
                as fn(&mut wsgate::config::RawConfig),
        ),
        (
            &["--user", "gw", "--pass", "pw"][..],
            |c| {
                c.cluster.user = Some(Some("gw".into()));
                c.cluster.password = Some(Some("pw".into()));
            },
            |c| {
                c.cluster.user = Some(Some("gw".into()));
                c.cluster.password = Some(Some("nope".into()));
            },
        ),
    ] {
        let nats = Nats::with(flags);
        let start = |tweak: fn(&mut wsgate::config::RawConfig)| {
            let url = nats.url();
            TestServer::start(IoBackend::Epoll, move |c| {
                c.cluster.urls = Some(vec![url]);
                tweak(c);
            })
        };
        let (a, b) = (start(good), start(good));
        wait_until("both nodes to authenticate", || {
            link(&a).is_connected() && link(&b).is_connected()
        });
        let mut ws = connect(&a, "/ws");
        subscribe(&mut ws, "auth");
        Publisher::new(&b).publish("auth", "1");
        assert_eq!(next_json(&mut ws), delivery("auth", json!(1)));
        let refused = start(bad);
        // The server refuses it (and keeps refusing its retries): it never counts as
        // connected.
        wait_until("NATS to refuse the bad credentials", || {
            nats.get("/connz?state=closed").is_some_and(|c| {
                c["connections"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["reason"] == "Authentication Failure"))
            })
        });
        assert_eq!(nats.connection_names().len(), 2, "{flags:?}");
        assert!(!link(&refused).is_connected(), "{flags:?}");
    }
}

#[test]
fn tls_to_nats_with_a_private_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a certificate");
    let dir = std::env::temp_dir().join(format!("wsgate-cluster-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_file, key_file) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.key_pair.serialize_pem()).unwrap();
    let (cert_path, key_path) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());
    let nats = Nats::with(&["--tls", "--tlscert", cert_path, "--tlskey", key_path]);
    let start = |ca: Option<&str>| {
        let url = nats.url();
        let ca = ca.map(str::to_owned);
        TestServer::start(IoBackend::Epoll, move |c| {
            c.cluster.urls = Some(vec![url]);
            c.cluster.tls = Some(true);
            c.cluster.tls_ca_file = Some(ca);
        })
    };
    let (a, b) = (start(Some(cert_path)), start(Some(cert_path)));
    wait_until("both nodes to connect over TLS", || {
        link(&a).is_connected() && link(&b).is_connected()
    });
    let tls = nats.get("/connz?limit=10").expect("connz");
    let conns = tls["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 2, "{tls}");
    assert!(conns.iter().all(|c| c["tls_version"].is_string()), "{tls}");
    let mut ws = connect(&a, "/ws");
    subscribe(&mut ws, "tls");
    Publisher::new(&b).publish("tls", "1");
    assert_eq!(next_json(&mut ws), delivery("tls", json!(1)));
    // Without the CA, the server's certificate is not trusted: never connected.
    let untrusting = start(None);
    wait_until("NATS to see the failed handshake", || {
        nats.get("/connz?state=closed")
            .is_some_and(|c| c["connections"].as_array().is_some_and(|c| !c.is_empty()))
    });
    assert!(!link(&untrusting).is_connected());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A message from NATS is compressed once, on the receiving node's bridge thread (its
/// publishing point there), only for a topic with a subscriber that negotiated
/// permessage-deflate; plain subscribers of the same topic get the plain frame.
#[test]
fn messages_from_nats_are_compressed_once_by_the_bridge_for_deflate_subscribers() {
    use wsgate_proto::deflate::{self, Inflater};
    let nats = Nats::start();
    let urls = [nats.url()];
    let (a, b) = (node(&urls, "a"), node(&urls, "b"));
    let (mut zipped, agreed) =
        upgrade_offering(&b, "/ws?subscribe=big", Some(deflate::CLIENT_OFFER));
    assert!(agreed.is_some());
    let mut plain = connect(&b, "/ws");
    subscribe(&mut plain, "big");
    subscribe(&mut plain, "flat");
    let data = json!({"rows": (0..40).map(|i| json!({"id": i, "price": 42000.5, "side": "buy"})).collect::<Vec<_>>()});
    let mut publisher = Publisher::new(&a);
    publisher.publish("big", &data.to_string());
    let (header, payload) = read_wire_frame(&mut zipped);
    assert_eq!(header.rsv, deflate::RSV1);
    let text = Inflater::default()
        .inflate(&payload, 1 << 20, None)
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&text).unwrap(),
        delivery("big", data.clone())
    );
    assert_eq!(next_json(&mut plain), delivery("big", data.clone()));
    // Node a has no subscriber: nothing compressed there; b's bridge did it once.
    let compressions = |node: &TestServer| -> u64 {
        node.server()
            .shared()
            .metrics
            .iter()
            .map(|m| wsgate::metrics::ReactorMetrics::get(&m.deflate_compressions))
            .sum()
    };
    assert_eq!(
        (compressions(&a), compressions(&b)),
        (0, 0),
        "no reactor compressed it"
    );
    assert_eq!(stat(&b, |l| &l.stats.compressions), 1);
    assert_eq!(stat(&a, |l| &l.stats.compressions), 0);
    // A topic whose subscribers are all plain is never compressed.
    publisher.publish("flat", &data.to_string());
    assert_eq!(next_json(&mut plain), delivery("flat", data));
    assert_eq!(stat(&b, |l| &l.stats.compressions), 1);
}
