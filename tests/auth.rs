//! JWT on /ws (issue 12): which tokens open a connection, and the topics their claims let
//! it subscribe and publish to. Keys are generated per test (HS256 secret, ES256 and
//! Ed25519 key pairs) but for RSA (test-only keys in tests/keys/); tokens are signed with
//! `jsonwebtoken`, clients are tungstenite or raw HTTP where the refusal's body matters.

mod util;

use std::path::PathBuf;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::Message;
use util::*;
use wsgate::config::IoBackend;

const SECRET: &[u8] = b"a test-only HMAC secret, not used anywhere else";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "wsgate-test";
const RS256_PUBLIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rs256.pem");
const RS256_PRIVATE: &[u8] = include_bytes!("keys/rs256-private.pem");

/// Freshly generated keys, their files, and a signer for each algorithm.
struct Keys {
    dir: PathBuf,
    es256_private: String,
    ed25519_private: String,
}

impl Keys {
    /// Writes the HMAC secret (with a trailing newline, as `echo` leaves it) and the public
    /// halves of new ES256 and Ed25519 key pairs under a directory of this test's own.
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wsgate-auth-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let es = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(dir.join("secret"), [SECRET, b"\n"].concat()).unwrap();
        std::fs::write(dir.join("es256.pem"), es.public_key_pem()).unwrap();
        std::fs::write(dir.join("ed25519.pem"), ed.public_key_pem()).unwrap();
        Self {
            dir,
            es256_private: es.serialize_pem(),
            ed25519_private: ed.serialize_pem(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_owned()
    }

    /// A gateway that verifies with all four keys and checks issuer and audience.
    fn server(&self, io: IoBackend, required: bool) -> TestServer {
        self.server_with(io, required, |_| {})
    }

    fn server_with(
        &self,
        io: IoBackend,
        required: bool,
        tweak: impl FnOnce(&mut wsgate::config::RawConfig),
    ) -> TestServer {
        TestServer::start(io, |c| {
            tweak(c);
            c.auth = wsgate::config::auth::Raw {
                auth_required: Some(required),
                jwt_secret_file: Some(Some(self.path("secret"))),
                jwt_public_keys: Some(vec![
                    self.path("es256.pem"),
                    self.path("ed25519.pem"),
                    RS256_PUBLIC.into(),
                ]),
                jwt_issuer: Some(Some(ISSUER.into())),
                jwt_audience: Some(Some(AUDIENCE.into())),
                ..Default::default()
            };
        })
    }

    /// `POST /publish/{topic}` with `token` as the bearer token, on a new connection.
    fn publish(server: &TestServer, topic: &str, token: Option<&str>) -> Response {
        let auth = token.map(bearer).unwrap_or_default();
        let request = format!(
            "POST /publish/{topic} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1\r\n\r\n7"
        );
        http(server, &request)
    }

    fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let key = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                EncodingKey::from_secret(SECRET)
            }
            Algorithm::ES256 => EncodingKey::from_ec_pem(self.es256_private.as_bytes()).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(self.ed25519_private.as_bytes()).unwrap(),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(RS256_PRIVATE).unwrap(),
            other => panic!("no test key for {other:?}"),
        };
        jsonwebtoken::encode(&Header::new(alg), claims, &key).unwrap()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now() -> i64 {
    wsgate::auth::unix_now() as i64
}

/// Valid claims: may read `news.*` and `room.1`, write `room.*`.
fn claims() -> Value {
    json!({
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + 600,
        "nbf": now() - 10,
        "subscribe": ["news.*", "room.1"],
        "publish": ["room.*"],
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// Connects with `token` in `Authorization: bearer` (lower case).
fn connect_bearer(server: &TestServer, path: &str, token: &str) -> Client {
    try_connect(server, path, |r| {
        r.headers_mut()
            .insert("authorization", format!("bearer {token}").parse().unwrap());
    })
    .expect("the token is accepted")
}

/// Asserts a raw upgrade with `extra` headers is refused with 401, the bearer challenge and
/// `reason` as the body's message.
fn assert_unauthorized(server: &TestServer, path: &str, extra: &str, reason: &str) {
    let r = http(server, &upgrade_request(path, extra));
    assert_eq!(r.status, 401, "{path} {extra:?}: {}", r.body_text());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let body: Value = serde_json::from_slice(&r.body).expect("a JSON body");
    assert_eq!(body, json!({"error": "unauthorized", "message": reason}));
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn text(ws: &mut Client) -> Value {
    match recv(ws) {
        Message::Text(t) => serde_json::from_str(&t).expect("JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

fn send(ws: &mut Client, op: Value) {
    ws.send(Message::Text(op.to_string())).unwrap();
}

fn auth_failures(server: &TestServer) -> u64 {
    server
        .server()
        .shared()
        .metrics
        .iter()
        .map(|m| wsgate::metrics::ReactorMetrics::get(&m.auth_failures))
        .sum()
}

for_each_driver! {
    fn bad_tokens_get_401_and_nothing_is_upgraded(io: IoBackend) {
        let keys = Keys::new(&format!("bad-{io:?}"));
        let server = keys.server(io, true);
        let hs = |claims: Value| bearer(&keys.sign(Algorithm::HS256, &claims));
        assert_unauthorized(&server, "/ws", "", "missing token");
        assert_unauthorized(&server, "/ws", "Authorization: Basic dXNlcjpwdw==\r\n", "missing token");
        assert_unauthorized(&server, "/ws", &bearer("not.a.jwt"), "malformed token");
        assert_unauthorized(&server, "/ws?token=%zz", "", "malformed token");
        // Signed with another secret, or another key of the right type.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"another secret"),
        )
        .unwrap();
        assert_unauthorized(&server, "/ws", &bearer(&forged), "bad token signature");
        let other = Keys::new(&format!("other-{io:?}"));
        let forged = other.sign(Algorithm::ES256, &claims());
        assert_unauthorized(&server, "/ws", &bearer(&forged), "bad token signature");
        // An ES256 token relabelled: as RS256 it meets the RSA key (wrong key type), as
        // PS256 no configured key at all.
        let es = keys.sign(Algorithm::ES256, &claims());
        let relabel = |alg: &str| {
            let header = base64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            bearer(&format!("{header}.{}", es.split_once('.').unwrap().1))
        };
        assert_unauthorized(&server, "/ws", &relabel("RS256"), "bad token signature");
        assert_unauthorized(&server, "/ws", &relabel("PS256"), "token algorithm not accepted");
        // HS256 with the public key as the secret: only the secret file verifies HMAC.
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(&std::fs::read(keys.path("es256.pem")).unwrap()),
        )
        .unwrap();
        assert_unauthorized(&server, "/ws", &bearer(&confused), "bad token signature");
        // Claims.
        assert_unauthorized(&server, "/ws", &hs(with(claims(), "exp", json!(now() - 3600))), "token expired");
        assert_unauthorized(&server, "/ws", &hs(without(claims(), "exp")), "token has no exp, or one that is not a date");
        assert_unauthorized(&server, "/ws", &hs(with(claims(), "nbf", json!(now() + 3600))), "token not yet valid");
        assert_unauthorized(&server, "/ws", &hs(with(claims(), "aud", json!("elsewhere"))), "wrong token audience");
        assert_unauthorized(&server, "/ws", &hs(without(claims(), "aud")), "wrong token audience");
        assert_unauthorized(&server, "/ws", &hs(with(claims(), "iss", json!("https://evil.test"))), "wrong token issuer");
        assert_unauthorized(&server, "/ws", &hs(without(claims(), "iss")), "wrong token issuer");
        assert_eq!(auth_failures(&server), 16);
        // Through tungstenite too: a plain refusal, no upgrade.
        match try_connect(&server, "/ws", |_| {}) {
            Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
            other => panic!("expected 401, got {:?}", other.map(|_| ())),
        }
        let metrics = http(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body_text();
        assert!(metrics.contains("wsgate_auth_failures_total{reactor=\"0\"}"), "{metrics}");
    }

    // An unsecured token (`alg: none`, RFC 7518 §3.6) or one naming an algorithm nobody
    // implements was refused as "malformed token", which sends whoever reads the 401 to
    // look at the token's form; it is the algorithm that is not accepted.
    fn none_and_unknown_algorithms_are_refused_as_such(io: IoBackend) {
        let keys = Keys::new(&format!("none-{io:?}"));
        let server = keys.server(io, true);
        let payload = base64url(claims().to_string().as_bytes());
        for alg in ["none", "None", "HS257"] {
            let header = base64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            let token = format!("{header}.{payload}.");
            assert_unauthorized(&server, "/ws", &bearer(&token), "token algorithm not accepted");
            let r = Keys::publish(&server, "t", Some(&token));
            assert_eq!(r.status, 401, "{alg}");
            assert!(r.body_text().contains("token algorithm not accepted"), "{}", r.body_text());
        }
        // A header that is not JSON, or names no algorithm, is malformed all the same.
        let not_json = format!("{}.{payload}.", base64url(b"not json"));
        assert_unauthorized(&server, "/ws", &bearer(&not_json), "malformed token");
        let no_alg = format!("{}.{payload}.", base64url(br#"{"alg":7}"#));
        assert_unauthorized(&server, "/ws", &bearer(&no_alg), "malformed token");
    }

    fn valid_tokens_upgrade_by_header_or_query(io: IoBackend) {
        let keys = Keys::new(&format!("valid-{io:?}"));
        let server = keys.server(io, true);
        let algs = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512, Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256];
        for alg in algs {
            let token = keys.sign(alg, &claims());
            let mut ws = connect_bearer(&server, "/ws", &token);
            send(&mut ws, json!({"op": "subscribe", "topic": "news.a", "id": 1}));
            assert_eq!(text(&mut ws), json!({"op": "ok", "id": 1}), "{alg:?}");
            let mut ws = connect(&server, &format!("/ws?token={token}&subscribe=room.1"));
            send(&mut ws, json!({"op": "publish", "topic": "room.1", "data": 7}));
            assert_eq!(text(&mut ws), json!({"topic": "room.1", "data": 7}), "{alg:?}");
        }
        // Within the leeway an expiry just past still opens.
        let token = keys.sign(Algorithm::HS256, &with(claims(), "exp", json!(now() - 5)));
        connect_bearer(&server, "/ws", &token);
        assert_eq!(auth_failures(&server), 0);
        // /echo needs no token.
        connect(&server, "/echo");
    }

    fn claims_limit_topics_on_connect_and_by_op(io: IoBackend) {
        let keys = Keys::new(&format!("topics-{io:?}"));
        let server = keys.server(io, true);
        let token = keys.sign(Algorithm::ES256, &claims());
        // ?subscribe= outside the patterns: 403, nothing upgraded; inside: subscribed.
        for path in ["/ws?subscribe=room.2", "/ws?subscribe=news.a,secret", "/ws?subscribe=news"] {
            let r = http(&server, &upgrade_request(path, &bearer(&token)));
            assert_eq!(r.status, 403, "{path}");
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["error"], "forbidden");
        }
        assert_eq!(auth_failures(&server), 0, "403 is not an authentication failure");
        let mut reader = connect_bearer(&server, "/ws?subscribe=news.a,room.1", &token);
        // By op.
        let mut ws = connect_bearer(&server, "/ws", &token);
        send(&mut ws, json!({"op": "subscribe", "topic": "room.2", "id": 1}));
        assert_eq!(
            text(&mut ws),
            json!({"op": "error", "id": 1, "code": "forbidden", "message": "subscribing to this topic is not allowed"})
        );
        send(&mut ws, json!({"op": "subscribe", "topic": "news.b", "id": 2}));
        assert_eq!(text(&mut ws), json!({"op": "ok", "id": 2}));
        // Publish: `room.*` allowed, `news.a` not (though the token may read it).
        send(&mut ws, json!({"op": "publish", "topic": "news.a", "data": 1, "id": 3}));
        assert_eq!(
            text(&mut ws),
            json!({"op": "error", "id": 3, "code": "forbidden", "message": "publishing to this topic is not allowed"})
        );
        send(&mut ws, json!({"op": "publish", "topic": "room.1", "data": 2, "id": 4}));
        assert_eq!(text(&mut ws), json!({"op": "ok", "id": 4}));
        assert_eq!(text(&mut reader), json!({"topic": "room.1", "data": 2}), "only the allowed publish arrives");
        // A token without permission claims may do neither.
        let bare = keys.sign(Algorithm::EdDSA, &without(without(claims(), "subscribe"), "publish"));
        let mut ws = connect_bearer(&server, "/ws", &bare);
        send(&mut ws, json!({"op": "subscribe", "topic": "news.a", "id": 1}));
        assert_eq!(text(&mut ws)["code"], "forbidden");
        send(&mut ws, json!({"op": "publish", "topic": "room.1", "data": 1, "id": 2}));
        assert_eq!(text(&mut ws)["code"], "forbidden");
    }

    fn without_auth_required_a_given_token_is_still_checked(io: IoBackend) {
        let keys = Keys::new(&format!("optional-{io:?}"));
        let server = keys.server(io, false);
        // No token: as before (any subscribe; publish per client_publish, none here).
        let mut ws = connect(&server, "/ws?subscribe=anything");
        send(&mut ws, json!({"op": "subscribe", "topic": "room.2", "id": 1}));
        assert_eq!(text(&mut ws), json!({"op": "ok", "id": 1}));
        send(&mut ws, json!({"op": "publish", "topic": "room.2", "data": 1, "id": 2}));
        assert_eq!(text(&mut ws)["code"], "forbidden");
        // A bad token is refused; a good one restricts and grants.
        let expired = keys.sign(Algorithm::HS256, &with(claims(), "exp", json!(now() - 3600)));
        assert_unauthorized(&server, &format!("/ws?token={expired}"), "", "token expired");
        let token = keys.sign(Algorithm::HS256, &claims());
        let mut ws = connect(&server, &format!("/ws?token={token}"));
        send(&mut ws, json!({"op": "subscribe", "topic": "room.2", "id": 1}));
        assert_eq!(text(&mut ws)["code"], "forbidden");
        send(&mut ws, json!({"op": "publish", "topic": "room.2", "data": 1, "id": 2}));
        assert_eq!(text(&mut ws), json!({"op": "ok", "id": 2}));
        // An empty `?token=` is no token, as an empty `Bearer` is.
        let mut ws = connect(&server, "/ws?token=&subscribe=room.3");
        send(&mut ws, json!({"op": "subscribe", "topic": "room.4", "id": 3}));
        assert_eq!(text(&mut ws), json!({"op": "ok", "id": 3}));
        assert_eq!(auth_failures(&server), 1, "only the expired one");
    }

    // Without keys there is no authentication: a token is not looked at (it was refused
    // with "token algorithm not accepted", which locked out clients that send one when
    // auth was turned off).
    fn without_keys_a_token_is_not_looked_at(io: IoBackend) {
        let server = TestServer::start(io, |_| {});
        for path in ["/ws?token=", "/ws?token=abc", "/ws?token=%zz&subscribe=t"] {
            let mut ws = connect(&server, path);
            send(&mut ws, json!({"op": "subscribe", "topic": "room.1", "id": 1}));
            assert_eq!(text(&mut ws), json!({"op": "ok", "id": 1}), "{path}");
        }
        let mut ws = connect_bearer(&server, "/ws", "abc");
        send(&mut ws, json!({"op": "subscribe", "topic": "room.1", "id": 1}));
        assert_eq!(text(&mut ws), json!({"op": "ok", "id": 1}));
        assert_eq!(auth_failures(&server), 0);
    }

    fn http_publish_takes_a_jwt_scoped_by_its_publish_claim(io: IoBackend) {
        let keys = Keys::new(&format!("http-{io:?}"));
        let server = keys.server_with(io, true, |c| {
            c.http.publish_token = Some(Some("s3cret".into()));
            c.rate.publish_rate_per_token = Some(3);
        });
        let jwt = keys.sign(Algorithm::ES256, &claims());
        let mut reader = connect_bearer(&server, "/ws?subscribe=room.1,news.a", &jwt);
        let publish = |topic: &str, token: Option<&str>| Keys::publish(&server, topic, token);
        let status = |topic: &str, token: Option<&str>| publish(topic, token).status;
        assert_eq!(status("room.1", Some(&jwt)), 202);
        assert_eq!(text(&mut reader), json!({"topic": "room.1", "data": 7}));
        // Outside the `publish` claim: 403 (and not charged to the token's rate).
        let r = publish("news.a", Some(&jwt));
        assert_eq!(r.status, 403);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body, json!({"error": "forbidden", "message": "publishing to this topic is not allowed"}));
        // A bad JWT: 401 with its reason; no token or a wrong static one: 401 as before.
        let expired = keys.sign(Algorithm::HS256, &with(claims(), "exp", json!(now() - 3600)));
        let r = publish("room.1", Some(&expired));
        assert_eq!(r.status, 401);
        assert_eq!(r.header("www-authenticate"), Some("Bearer error=\"invalid_token\""));
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["message"], "token expired");
        assert_eq!(status("room.1", None), 401);
        // The static token publishes anywhere.
        assert_eq!(status("news.a", Some("s3cret")), 202);
        assert_eq!(text(&mut reader), json!({"topic": "news.a", "data": 7}));
        // 3 publishes per second per token: the JWT's third is refused, the static
        // token's bucket is its own.
        assert_eq!(status("room.1", Some(&jwt)), 202);
        assert_eq!(status("room.1", Some(&jwt)), 202);
        let r = publish("room.1", Some(&jwt));
        assert_eq!((r.status, r.header("retry-after")), (429, Some("1")), "{}", r.body_text());
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body, json!({"error": "rate_limited", "message": "too many publishes for this token"}));
        assert_eq!(status("room.1", Some("s3cret")), 202);
        let metrics = &server.server().shared().metrics;
        let limited: u64 = metrics
            .iter()
            .map(|m| wsgate::metrics::ReactorMetrics::get(&m.publish_rate_limited))
            .sum();
        assert_eq!(limited, 1);
        // Without a static token, auth_required asks HTTP publishers for a JWT too.
        let strict = keys.server(io, true);
        let r = Keys::publish(&strict, "room.1", None);
        assert_eq!(r.status, 401);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["message"], "missing token");
        assert_eq!(Keys::publish(&strict, "room.1", Some(&jwt)).status, 202);
        // Nor is a JWT needed where nothing is required.
        let open = keys.server(io, false);
        assert_eq!(Keys::publish(&open, "room.1", None).status, 202);
        assert_eq!(Keys::publish(&open, "news.a", Some(&jwt)).status, 403);
    }

    fn tokens_expire_mid_connection_unless_refreshed(io: IoBackend) {
        let keys = Keys::new(&format!("expiry-{io:?}"));
        let server = keys.server(io, true);
        // Valid at the upgrade only thanks to the leeway, and for one or two seconds more.
        let leeway = wsgate::auth::LEEWAY_SECS as i64;
        let short = with(claims(), "exp", json!(now() - leeway + 2));
        let mut expiring = connect_bearer(&server, "/ws", &keys.sign(Algorithm::HS256, &short));
        let mut refreshed = connect_bearer(&server, "/ws", &keys.sign(Algorithm::ES256, &short));
        let fresh = keys.sign(Algorithm::EdDSA, &claims());
        send(&mut refreshed, json!({"op": "refresh", "token": fresh, "id": 1}));
        assert_eq!(text(&mut refreshed), json!({"op": "ok", "id": 1}));
        let other = keys.sign(Algorithm::HS256, &with(claims(), "sub", json!("mallory")));
        send(&mut refreshed, json!({"op": "refresh", "token": other, "id": 2}));
        assert_eq!(
            text(&mut refreshed),
            json!({"op": "error", "id": 2, "code": "unauthorized", "message": "token names another subject"})
        );
        // The reader blocks until the server closes (within the read timeout).
        match recv(&mut expiring) {
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, tungstenite::protocol::frame::coding::CloseCode::Policy);
                assert_eq!(frame.reason, "token expired");
            }
            other => panic!("expected close 1008, got {other:?}"),
        }
        // By then the refreshed one's old token has expired too: it is still served.
        send(&mut refreshed, json!({"op": "subscribe", "topic": "news.a", "id": 3}));
        assert_eq!(text(&mut refreshed), json!({"op": "ok", "id": 3}));
        let metrics = &server.server().shared().metrics;
        let count = |f: fn(&wsgate::metrics::ReactorMetrics) -> &std::sync::atomic::AtomicU64| {
            metrics.iter().map(|m| wsgate::metrics::ReactorMetrics::get(f(m))).sum::<u64>()
        };
        assert_eq!(count(|m| &m.token_expired_closes), 1);
        assert_eq!(count(|m| &m.token_refreshes), 1);
    }
}

/// Unpadded base64url, for a hand-made token header.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A key file that is missing or not a key stops the server before it listens.
#[test]
fn bad_key_files_are_configuration_errors() {
    let keys = Keys::new("config");
    let resolve = |tweak: &dyn Fn(&mut wsgate::config::auth::Raw)| {
        let mut raw = wsgate::config::RawConfig::default();
        tweak(&mut raw.auth);
        raw.validate().map(|_| ()).unwrap_err().to_string()
    };
    let missing = keys.path("missing.pem");
    let err = resolve(&|a| a.jwt_public_keys = Some(vec![missing.clone()]));
    assert!(
        err.contains("jwt_public_keys") && err.contains(&missing),
        "{err}"
    );
    let err = resolve(&|a| a.jwt_public_keys = Some(vec![keys.path("secret")]));
    assert!(
        err.contains("not a PEM RSA, EC or Ed25519 public key"),
        "{err}"
    );
    let err = resolve(&|a| a.jwt_secret_file = Some(Some(missing.clone())));
    assert!(
        err.contains("jwt_secret_file") && err.contains(&missing),
        "{err}"
    );
    std::fs::write(keys.path("empty"), "\n").unwrap();
    let err = resolve(&|a| a.jwt_secret_file = Some(Some(keys.path("empty"))));
    assert!(err.contains("the secret is empty"), "{err}");
    let err = resolve(&|a| a.auth_required = Some(true));
    assert!(err.contains("auth_required"), "{err}");
}
