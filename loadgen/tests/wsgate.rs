//! Each mode at tiny scale against a real wsgate, started in-process on 127.0.0.1:0.

mod util;

use util::*;
use wsgate::config::RawConfig;
use wsgate::server::Server;

struct Gateway(Option<Server>);

impl Gateway {
    fn start(tweak: impl FnOnce(&mut RawConfig)) -> Self {
        let mut raw = RawConfig {
            net: wsgate::config::net::Raw {
                listen: Some(([127, 0, 0, 1], 0).into()),
                threads: Some(2),
                pin: Some(false),
                ..Default::default()
            },
            ..Default::default()
        };
        tweak(&mut raw);
        Self(Some(
            Server::start(raw.validate().unwrap()).expect("wsgate starts"),
        ))
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.0.as_ref().unwrap().local_addr())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            let _ = server.shutdown();
        }
    }
}

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = SHORT.to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn echo_against_wsgate() {
    let gw = Gateway::start(|_| {});
    let v = loadgen_ok(
        "echo",
        &gw.url("/echo"),
        &args(&["--connections", "10", "--pipeline", "4"]),
    );
    assert!(v["received"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(v["latency_us"]["count"], v["received"]);
    assert_eq!(errors_total(&v), 0, "{v}");
}

#[test]
fn fanout_against_wsgate_over_ws_publish() {
    let gw = Gateway::start(|c| c.pubsub.client_publish = Some(vec!["*".into()]));
    let v = loadgen_ok(
        "fanout",
        &gw.url("/ws"),
        &args(&[
            "--subscribers",
            "20",
            "--publishers",
            "2",
            "--rate",
            "200",
            "--publish-via",
            "ws",
        ]),
    );
    assert!(v["fanout"]["expected"].as_u64().unwrap() >= 20 * 150, "{v}");
    assert_every_delivery(&v);
}

/// Publishes the gateway refuses over /ws (no `client_publish`) are counted and said, and
/// a run with no delivery exits 1 (it reported "1000 lost" and no error, exit 0).
#[test]
fn refused_ws_publishes_are_counted_and_said() {
    let gw = Gateway::start(|_| {});
    let (out, v) = loadgen(
        "fanout",
        &gw.url("/ws"),
        &args(&["--subscribers", "2", "--publishers", "1", "--rate", "100"]),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no delivery arrived") && err.contains("forbidden"),
        "{err}"
    );
    let v = v.expect("the summary is written");
    assert!(v["errors"]["refused"].as_u64().unwrap() >= 90, "{v}");
}

/// A refused publish is a reason the run failed whenever it came, and is said once as it
/// comes: it was given only as the connect phase's first error, so an error there before it
/// (here a subscriber's connect to a port where nothing listens) hid it.
#[test]
fn a_refused_publish_is_said_after_a_connect_error() {
    let gw = Gateway::start(|_| {});
    let port = closed_port();
    let closed = format!("ws://127.0.0.1:{port}/ws");
    let (out, v) = loadgen(
        "fanout",
        &gw.url("/ws"),
        &args(&[
            "--url",
            &closed,
            "--subscribers",
            "2",
            "--publishers",
            "1",
            "--rate",
            "100",
        ]),
    );
    assert_eq!(out.status.code(), Some(1));
    let v = v.expect("the summary is written");
    assert_eq!(v["errors"]["connect"], 1, "{v}");
    assert!(v["errors"]["refused"].as_u64().unwrap() >= 90, "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    let why = err
        .split("no delivery arrived in the measured window: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("a reason");
    let (connect, refused) = why.split_once("; ").expect("two reasons");
    assert!(
        connect.starts_with(&format!("connect to 127.0.0.1:{port}: ")),
        "{err}"
    );
    assert!(
        refused.starts_with("publish refused: ") && refused.contains("forbidden"),
        "{err}"
    );
    assert_eq!(
        err.matches("warning: publish refused: ").count(),
        1,
        "{err}"
    );
}

/// `--deflate` (issue 10): permessage-deflate negotiated, every compressed delivery
/// inflated (its stamp is inside), nothing lost, and fewer bytes on the wire than inflated;
/// the same with `--inflate-once`, which inflates each broadcast once per thread.
#[test]
fn fanout_and_echo_with_deflate_against_wsgate() {
    let gw = Gateway::start(|c| c.pubsub.client_publish = Some(vec!["*".into()]));
    let fanout = |extra: &[&str]| {
        let mut a = vec![
            "--deflate",
            "--size",
            "1024",
            "--subscribers",
            "20",
            "--publishers",
            "1",
            "--rate",
            "200",
        ];
        a.extend_from_slice(extra);
        loadgen_ok("fanout", &gw.url("/ws"), &args(&a))
    };
    let (every, once) = (fanout(&[]), fanout(&["--inflate-once"]));
    let echo = loadgen_ok(
        "echo",
        &gw.url("/echo"),
        &args(&["--deflate", "--size", "1024", "--connections", "4"]),
    );
    for f in [&every, &once] {
        assert!(f["fanout"]["expected"].as_u64().unwrap() >= 20 * 150, "{f}");
        assert_every_delivery(f);
    }
    for v in [&every, &once, &echo] {
        assert_eq!(errors_total(v), 0, "{v}");
        assert!(v["received"].as_u64().unwrap() > 100, "{v}");
        let (wire, payload) = (
            v["wire_bytes_in"].as_f64().unwrap(),
            v["payload_bytes_in"].as_f64().unwrap(),
        );
        assert!(
            wire < 0.7 * payload,
            "compressed on the wire: {wire} of {payload} B: {v}"
        );
    }
}

#[test]
fn fanout_against_wsgate_over_http_publish_with_token() {
    let gw = Gateway::start(|c| c.http.publish_token = Some(Some("t0k".into())));
    let v = loadgen_ok(
        "fanout",
        &gw.url("/ws"),
        &args(&[
            "--subscribers",
            "10",
            "--publishers",
            "1",
            "--rate",
            "100",
            "--publish-via",
            "http",
            "--token",
            "t0k",
            "--subscribe-op",
        ]),
    );
    let f = &v["fanout"];
    assert!(f["expected"].as_u64().unwrap() >= 10 * 70, "{v}");
    assert_eq!(f["deliveries"], f["expected"], "{v}");
    assert_eq!(f["lost"], 0, "{v}");
    assert_eq!(errors_total(&v), 0, "{v}");
}

#[test]
fn connect_churn_against_wsgate() {
    let gw = Gateway::start(|_| {});
    let v = loadgen_ok(
        "connect",
        &gw.url("/echo"),
        &args(&["--rate", "50", "--hold", "100ms"]),
    );
    assert!(v["received"].as_u64().unwrap() >= 40, "{v}");
    assert_eq!(errors_total(&v), 0, "{v}");
}

#[test]
fn fanout_over_two_nodes_sharing_topics_through_nats() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut nats = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server is installed (apt-get install nats-server)");
    let url = format!("nats://127.0.0.1:{port}");
    let nodes: Vec<Gateway> = (0..2)
        .map(|_| {
            Gateway::start(|c| {
                c.cluster.urls = Some(vec![url.clone()]);
                c.pubsub.client_publish = Some(vec!["*".into()]);
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !nodes.iter().all(|n| {
        let shared = n.0.as_ref().unwrap().shared();
        shared.cluster.as_ref().unwrap().is_connected()
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "nodes connect to NATS"
        );
        std::thread::yield_now();
    }
    let (a, b) = (nodes[0].url("/ws"), nodes[1].url("/ws"));
    let v = loadgen_ok(
        "fanout",
        &a,
        &args(&[
            "--url",
            &b,
            "--subscribers",
            "10",
            "--publishers",
            "1",
            "--rate",
            "100",
            "--subscribe-op",
        ]),
    );
    let _ = nats.kill();
    let _ = nats.wait();
    let f = &v["fanout"];
    assert_eq!(f["deliveries"], f["expected"], "{v}");
    assert_eq!(f["lost"], 0, "{v}");
    let per = f["per_url"].as_array().expect("latency per node");
    assert_eq!(per.len(), 2, "{v}");
    assert_eq!(
        (per[0]["url"].as_str(), per[1]["url"].as_str()),
        (Some(&*a), Some(&*b))
    );
    assert_eq!(per[0]["publishers_here"], true);
    assert_eq!(per[1]["publishers_here"], false);
    let counts: Vec<u64> = per
        .iter()
        .map(|u| u["latency_us"]["count"].as_u64().unwrap())
        .collect();
    assert!(counts.iter().all(|&c| c > 0), "{v}");
    assert_eq!(
        counts.iter().sum::<u64>(),
        f["deliveries"].as_u64().unwrap()
    );
}
