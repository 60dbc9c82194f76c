//! One test per fixed bug, each linked to its issue item. They run the `wsgate` binary,
//! since what they guard is what a user starting it sees.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_wsgate");
/// A start-up that takes longer than this is a failure, not a slow machine.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A running `wsgate serve`, its log lines (stderr) read on a thread.
struct Gateway {
    child: Child,
    /// Kept so that the reader thread drains the pipe for as long as the gateway runs.
    _log: Receiver<String>,
    /// The address from the start-up line.
    addr: String,
    /// Log lines before the start-up line.
    before: Vec<String>,
}

impl Gateway {
    /// Starts `wsgate serve ARGS` (epoll, unpinned) and waits for its start-up line.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--io", "epoll", "--pin", "false"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wsgate runs");
        let stderr = child.stderr.take().expect("piped");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut before = Vec::new();
        loop {
            let Ok(line) = log.recv_timeout(TIMEOUT) else {
                let _ = child.kill();
                let status = child.wait();
                panic!("no start-up line ({status:?}); log so far: {before:?}");
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split(',').next().expect("an address").to_owned();
                return Self {
                    child,
                    _log: log,
                    addr,
                    before,
                };
            }
            before.push(line);
        }
    }

    /// SIGTERM, then the exit status must be 0 (drained).
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        assert_eq!(self.child.wait().unwrap().code(), Some(0));
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `wsgate serve ARGS`, which must exit (not start serving) within `TIMEOUT`.
fn run(args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .args(["serve", "--io", "epoll", "--pin", "false"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wsgate runs");
    let pid = child.id().to_string();
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match done.recv_timeout(TIMEOUT) {
        Ok(output) => output.expect("wsgate's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("wsgate serve {args:?} started instead of exiting");
        }
    }
}

/// Issue 9, item 1: a second instance on a port in use silently shared it (SO_REUSEPORT
/// on every listener) and split the pub/sub traffic; it must fail, naming the address.
#[test]
fn second_instance_on_a_port_in_use_fails() {
    let first = Gateway::start(&["--listen", "127.0.0.1:0", "--threads", "2"]);
    for threads in ["1", "2"] {
        let out = run(&["--listen", &first.addr, "--threads", threads]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("in use"), "{stderr}");
        assert!(stderr.contains(&first.addr), "names the address: {stderr}");
    }
    // The first instance is untouched: it still serves and drains.
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/echo", first.addr)).unwrap();
    ws.send(tungstenite::Message::text("still here")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("still here"));
    drop(ws);
    first.stop();
}

/// Issue 9, item 1: sharing a port stays possible when asked for (a handover), and only then.
#[test]
fn share_port_lets_two_instances_listen_together() {
    let first = Gateway::start(&["--listen", "127.0.0.1:0", "--threads", "1", "--share-port"]);
    let second = Gateway::start(&["--listen", &first.addr, "--threads", "1", "--share-port"]);
    assert_eq!(second.addr, first.addr);
    let out = run(&["--listen", &first.addr, "--threads", "1"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a third without --share-port is refused"
    );
    let echo = |addr: &str| {
        let (mut ws, _) = tungstenite::connect(format!("ws://{addr}/echo")).unwrap();
        ws.send(tungstenite::Message::text("hi")).unwrap();
        assert_eq!(ws.read().unwrap(), tungstenite::Message::text("hi"));
    };
    echo(&first.addr);
    // The handover: the old instance drains and exits, the new one serves on.
    let addr = first.addr.clone();
    first.stop();
    for _ in 0..4 {
        echo(&addr);
    }
    second.stop();
}

/// Issue 9, item 6: `--threads 64` on 2 cores started 64 reactors without a word; more
/// reactors than available cores must be warned about, naming both numbers.
#[test]
fn more_reactors_than_cores_is_warned_about() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores + 1;
    if threads > 64 {
        eprintln!("skipping: {cores} cores leave no room above them under the 64-reactor cap");
        return;
    }
    let over = Gateway::start(&["--listen", "127.0.0.1:0", "--threads", &threads.to_string()]);
    let warning = over
        .before
        .iter()
        .find(|l| l.contains("WARN") && l.contains("reactors"))
        .unwrap_or_else(|| panic!("no warning in {:?}", over.before));
    assert!(
        warning.contains(&format!("{threads} reactors but {cores} cores")),
        "{warning}"
    );
    // A warning, not a refusal: it serves.
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/echo", over.addr)).unwrap();
    ws.send(tungstenite::Message::text("ok")).unwrap();
    assert_eq!(ws.read().unwrap(), tungstenite::Message::text("ok"));
    drop(ws);
    over.stop();
    let fits = Gateway::start(&["--listen", "127.0.0.1:0", "--threads", &cores.to_string()]);
    assert!(
        !fits.before.iter().any(|l| l.contains("reactors but")),
        "no warning when they fit: {:?}",
        fits.before
    );
    fits.stop();
}
