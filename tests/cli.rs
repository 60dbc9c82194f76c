//! The `wsgate` binary: settings errors, help, a config file, and SIGTERM → drain → exit 0.

mod util;

use std::process::Command;

use tungstenite::Message;
use util::GatewayProcess;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");

fn fails_with(args: &[&str], setting: &str) {
    let out = Command::new(BIN).args(args).output().expect("runs");
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(setting), "{args:?}: {stderr}");
}

#[test]
fn bad_settings_exit_2_naming_the_setting() {
    fails_with(&["serve", "--listen", "nowhere"], "listen");
    fails_with(
        &["serve", "--handshake-timeout", "soon"],
        "--handshake-timeout",
    );
    fails_with(&["serve", "--threads", "65"], "threads");
    fails_with(&["serve", "--max-frame-size", "0"], "max_frame_size");
    fails_with(&["serve", "--slow-consumer", "explode"], "slow-consumer");
    fails_with(&["serve", "--no-such-flag"], "no-such-flag");
    fails_with(
        &["serve", "--jwt-public-keys", "/nonexistent/wsgate-key.pem"],
        "`jwt_public_keys`: /nonexistent/wsgate-key.pem: No such file",
    );
    let dir = std::env::temp_dir().join(format!("wsgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "threads = \"many\"\n").unwrap();
    fails_with(&["serve", "--config", bad.to_str().unwrap()], "bad.toml");
    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "listen = \"127.0.0.1:0\"\nno_such_key = true\n").unwrap();
    fails_with(
        &["serve", "--config", unknown.to_str().unwrap()],
        "unknown setting `no_such_key`",
    );
    let bad_value = dir.join("bad_value.toml");
    std::fs::write(&bad_value, "max-topic-len = 0\n").unwrap();
    fails_with(
        &["serve", "--config", bad_value.to_str().unwrap()],
        "`max_topic_len`",
    );
    fails_with(
        &[
            "serve",
            "--config",
            dir.join("missing.toml").to_str().unwrap(),
        ],
        "missing.toml",
    );
}

#[test]
fn help_documents_every_setting_with_its_default() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--share-port",
        "--threads",
        "--pin",
        "--io",
        "--max-connections",
        "--handshake-timeout",
        "--idle-timeout",
        "--pong-timeout",
        "--close-timeout",
        "--drain-grace",
        "--max-frame-size",
        "--max-message-size",
        "--max-header-bytes",
        "--max-outbound-bytes",
        "--slow-consumer",
        "--echo",
        "--subprotocols",
        "--allowed-origins",
        "--publish-token",
        "--client-publish",
        "--max-subscriptions",
        "--max-topic-len",
        "--max-publish-bytes",
        "--inbox-capacity",
        "--max-batch-delay",
        "--socket-send-buffer",
        "--config",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(
        help.matches("[default: ").count() >= 25,
        "each setting states its default"
    );
}

#[test]
fn serves_from_a_config_file_and_drains_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("wsgate-cli-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("wsgate.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nthreads = 2\npin = false\nmax-outbound-bytes = 65536\n",
    )
    .unwrap();
    // The start-up line (logs go to stderr) names the address, reactors, pinning and I/O backend.
    let gateway = GatewayProcess::start(&["--config", config.to_str().unwrap()]);
    let line = &gateway.startup;
    assert!(
        line.contains("2 reactors") && line.contains("pinning off") && line.contains("io "),
        "{line}"
    );
    let addr = gateway.addr.clone();
    let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/echo")).unwrap();
    ws.send(Message::text("before")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("before"));
    // SIGTERM: the client gets 1001, answers, and the process exits 0.
    gateway.signal("TERM");
    match ws.read().unwrap() {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    drop(ws);
    assert_eq!(gateway.wait(), Some(0));
}

/// SIGHUP, or a change of the file, reads the JWT key files again: a rotated secret takes
/// effect without a restart, connections already open stay.
#[test]
fn sighup_or_a_file_change_reloads_the_jwt_keys() {
    let dir = std::env::temp_dir().join(format!("wsgate-cli-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "first secret\n").unwrap();
    let mut gateway = GatewayProcess::one_reactor(&[
        "--auth-required",
        "--jwt-secret-file",
        secret.to_str().unwrap(),
    ]);
    let addr = gateway.addr.clone();
    let token = |secret: &[u8]| {
        let exp = wsgate::auth::unix_now() + 600;
        let key = jsonwebtoken::EncodingKey::from_secret(secret);
        let claims = serde_json::json!({"exp": exp, "subscribe": ["*"]});
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    // The upgrade's status: 101 and the socket, or the refusal's status.
    let open = |token: &str| match tungstenite::connect(format!("ws://{addr}/ws?token={token}")) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    };
    let mut before = open(&token(b"first secret")).expect("the first secret's token");
    std::fs::write(&secret, "second secret\n").unwrap();
    gateway.signal("HUP");
    let line = gateway.wait_log("jwt keys");
    assert!(line.contains("jwt keys reloaded"), "{line}");
    assert_eq!(open(&token(b"first secret")).err(), Some(401));
    open(&token(b"second secret")).expect("the second secret's token");
    before
        .send(Message::text(r#"{"op":"subscribe","topic":"t","id":1}"#))
        .unwrap();
    assert_eq!(
        before.read().unwrap(),
        Message::text(r#"{"op":"ok","id":1}"#)
    );
    // A bad file is refused and the keys in use stay.
    std::fs::write(&secret, "").unwrap();
    gateway.signal("HUP");
    let line = gateway.wait_log("jwt keys");
    assert!(
        line.contains("not reloaded") && line.contains("the secret is empty"),
        "{line}"
    );
    open(&token(b"second secret")).expect("still the second secret");
    // A changed file is reloaded without a signal (the reloader looks once a second).
    std::fs::write(&secret, "third secret\n").unwrap();
    gateway.wait_log("jwt keys reloaded");
    assert_eq!(open(&token(b"second secret")).err(), Some(401));
    open(&token(b"third secret")).expect("the third secret's token");
    drop(before);
    gateway.stop();
    std::fs::remove_dir_all(dir).unwrap();
}
