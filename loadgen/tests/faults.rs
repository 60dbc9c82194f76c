//! Faults are counted and reported, never a panic or a hang.

mod util;

use serde_json::Value;
use util::*;

#[test]
fn unreachable_target_is_a_clear_error() {
    let url = format!("ws://127.0.0.1:{}/", closed_port());
    let (out, _) = loadgen("echo", &url, &SHORT);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not connect"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

/// A run in which nothing came back is counted in the summary (still written) and exits
/// 1 with the reason (it exited 0).
#[track_caller]
fn assert_failed_with_summary(out: &std::process::Output, v: Option<Value>) -> Value {
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in the measured window: "), "{err}");
    v.expect("the summary is written")
}

#[test]
fn server_close_is_counted() {
    let url = closing_server();
    let (out, v) = loadgen("echo", &url, &SHORT);
    let v = assert_failed_with_summary(&out, v);
    assert!(v["errors"]["closed_by_server"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn malformed_frames_are_protocol_errors() {
    let url = malformed_server();
    let (out, v) = loadgen("echo", &url, &SHORT);
    let v = assert_failed_with_summary(&out, v);
    assert!(v["errors"]["protocol"].as_u64().unwrap() > 0, "{v}");
}

/// An error on a connection after its handshake is said, the first of its kind once, and
/// is the reason the run failed (it was only counted, and the run failed without a reason).
#[test]
fn a_protocol_error_after_the_handshake_is_said_once() {
    let url = malformed_server();
    let mut a = SHORT.to_vec();
    a.extend(["--connections", "3"]);
    let (out, v) = loadgen("echo", &url, &a);
    let v = assert_failed_with_summary(&out, v);
    assert_eq!(v["errors"]["protocol"], 3, "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    let said = "warning: a connection failed after its handshake: \
                protocol: reserved opcode 0x3 (later protocol errors are only counted)";
    assert_eq!(err.matches(said).count(), 1, "{err}");
    assert!(
        err.contains("in the measured window: protocol: reserved opcode 0x3\n"),
        "{err}"
    );
}

/// A server's close of an open connection is said with its code and reason.
#[test]
fn a_close_after_the_handshake_is_said_with_its_code_and_reason() {
    let port = listen(|s| {
        use std::io::{Read, Write};
        let Ok(ws) = tungstenite::accept(s) else {
            return;
        };
        let mut s = ws.get_ref().try_clone().unwrap();
        // Close, 1008 (policy violation), reason "go away".
        let _ = s.write_all(&[
            0x88, 9, 0x03, 0xf0, b'g', b'o', b' ', b'a', b'w', b'a', b'y',
        ]);
        let mut sink = [0u8; 1024];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    let url = format!("ws://127.0.0.1:{port}/");
    let mut a = SHORT.to_vec();
    a.extend(["--connections", "2"]);
    let (out, v) = loadgen("echo", &url, &a);
    let v = assert_failed_with_summary(&out, v);
    assert_eq!(v["errors"]["closed_by_server"], 2, "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    let why = "server closed the connection: code 1008, reason \"go away\"";
    assert_eq!(
        err.matches(&format!(
            "warning: a connection failed after its handshake: {why} (later close errors"
        ))
        .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains(&format!("in the measured window: {why}\n")),
        "{err}"
    );
}

/// A run that failed gives as its reason every kind of error it had, the connect phase's
/// first: it gave that one alone, and hid those after the handshake (here a malformed frame
/// and a close). The publisher and a subscriber reach the malformed server, a subscriber
/// each the closing one and a port where nothing listens.
#[test]
fn a_failure_gives_every_kind_of_error_the_connect_phase_first() {
    let port = closed_port();
    let (closing, closed) = (closing_server(), format!("ws://127.0.0.1:{port}/"));
    let mut a = SHORT.to_vec();
    a.extend(["--url", &closing, "--url", &closed]);
    a.extend([
        "--dialect",
        "raw",
        "--publishers",
        "1",
        "--subscribers",
        "3",
    ]);
    let (out, v) = loadgen("fanout", &malformed_server(), &a);
    let v = assert_failed_with_summary(&out, v);
    assert_eq!(v["errors"]["connect"], 1, "{v}");
    assert_eq!(v["errors"]["protocol"], 2, "{v}");
    assert_eq!(v["errors"]["closed_by_server"], 1, "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    let why = err
        .split("in the measured window: ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("a reason");
    let mut reasons: Vec<&str> = why.split("; ").collect();
    assert_eq!(reasons.len(), 3, "{err}");
    let connect = format!("connect to 127.0.0.1:{port}: ");
    assert!(
        reasons[0].starts_with(&connect) && reasons[0].contains("refused"),
        "{err}"
    );
    // The two after the handshake in the order they happened, which is either.
    reasons[1..].sort_unstable();
    assert_eq!(
        reasons[1..],
        [
            "protocol: reserved opcode 0x3",
            "server closed the connection: no code"
        ],
        "{err}"
    );
}

#[test]
fn bad_arguments_fail_cleanly() {
    let (out, _) = loadgen("echo", "http://127.0.0.1:1/", &SHORT);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ws://"));
    let (out, _) = loadgen("echo", "ws://127.0.0.1:1/", &["--size", "8"]);
    assert!(!out.status.success());
}

/// Open-loop sends to a server that stopped reading queue up to 32 MiB a connection; past
/// that they are not made, and the table, a warning and the JSON say how many (they were
/// only in the JSON, and the latencies silently omitted them).
#[test]
fn sends_dropped_at_a_stalled_server_are_said() {
    let url = stalled_server();
    let (out, v) = loadgen(
        "echo",
        &url,
        &[
            "--connections",
            "1",
            "--rate",
            "100",
            "--size",
            "1000000",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--drain",
            "0s",
        ],
    );
    let v = v.expect("the summary is written");
    let drops = v["client"]["backlog_drops"].as_u64().unwrap();
    assert!(drops > 0, "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{drops} sends were not made")),
        "{err}"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("dropped: {drops} sends not made")),
        "{table}"
    );
}

/// connect mode: an attempt that fails before its connection exists (here a bind to a
/// source address not on this machine) is a connect error only; the drain does not wait
/// for it and the end does not count it again as a timeout (it held the whole --drain and
/// was counted twice).
#[test]
fn connect_failures_at_open_are_counted_once_and_not_waited_for() {
    let url = echo_server();
    let started = std::time::Instant::now();
    let (_, v) = loadgen(
        "connect",
        &url,
        &[
            "--rate",
            "20",
            "--hold",
            "50ms",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--drain",
            "20s",
            "--threads",
            "1",
            "--source",
            "127.0.0.1,192.0.2.7",
        ],
    );
    let v = v.expect("the summary is written");
    assert!(v["errors"]["connect"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["errors"]["timeout"], 0, "{v}");
    assert!(v["received"].as_u64().unwrap() > 0, "{v}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the drain waited it out"
    );
}

/// connect mode: handshakes still under way when the run ends are counted as timeouts
/// (they were dropped uncounted).
#[test]
fn handshakes_under_way_at_the_end_are_timeouts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        // Accepted, never answered.
        let held: Vec<_> = listener.incoming().flatten().collect();
        drop(held);
    });
    let (out, v) = loadgen(
        "connect",
        &url,
        &[
            "--rate",
            "20",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--drain",
            "300ms",
            "--connect-timeout",
            "30s",
            "--threads",
            "1",
        ],
    );
    let v = v.expect("the summary is written");
    let sent = v["sent"].as_u64().unwrap();
    assert!(sent > 0, "{v}");
    assert_eq!(v["errors"]["timeout"].as_u64().unwrap(), sent, "{v}");
    assert_eq!(out.status.code(), Some(1));
}

/// Arguments for one connection whose every send is in the window.
fn one_conn() -> Vec<&'static str> {
    let mut a = IN_WINDOW.to_vec();
    a.extend(["--connections", "1"]);
    a
}

/// An echo server that answers the first message of each connection twice.
fn echo_first_twice_server() -> String {
    echo_server_with(|n, m| if n == 0 { vec![m.clone(), m] } else { vec![m] })
}

/// An echo received twice is a duplicate (`echo.duplicates`, and the table says it): not
/// a second answer nor a second latency sample. It was both: `received` was one over
/// `sent`, and in closed loop it sent one more message, two in flight from then on.
#[test]
fn a_duplicate_echo_is_counted_not_timed() {
    let url = echo_first_twice_server();
    let (out, v) = loadgen_ok_with_output("echo", &url, &one_conn());
    assert_eq!(v["echo"]["duplicates"], 1, "{v}");
    let received = v["received"].as_u64().unwrap();
    assert!(received > 10, "{v}");
    assert_eq!(v["sent"].as_u64().unwrap(), received, "{v}");
    assert_eq!(v["latency_us"]["count"].as_u64().unwrap(), received, "{v}");
    // Over the run, the duplicate is one more message in.
    assert_eq!(v["messages_in"].as_u64().unwrap(), received + 1, "{v}");
    assert_eq!(errors_total(&v), 0, "{v}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("  echo: 0 lost, 1 duplicates, 0 reordered\n"),
        "{table}"
    );
}

/// Arguments for one connection with `n` messages in flight, every send in the window.
fn pipelined(n: &'static str) -> Vec<&'static str> {
    let mut a = one_conn();
    a.extend(["--pipeline", n]);
    a
}

/// An echo server that holds the first message back until it has answered the second: the
/// two come back swapped. For one connection.
fn swapping_echo_server() -> String {
    let held = std::sync::Mutex::new(None);
    echo_server_with(move |n, m| match n {
        0 => {
            *held.lock().unwrap() = Some(m);
            vec![]
        }
        1 => vec![m, held.lock().unwrap().take().expect("the first")],
        _ => vec![m],
    })
}

/// An echo that comes back behind a later one on its connection is counted as reordered
/// (`echo.reordered`, and the table says it), and is still an answer, timed once. It was
/// not counted.
#[test]
fn a_reordered_echo_is_counted() {
    let (out, v) = loadgen_ok_with_output("echo", &swapping_echo_server(), &pipelined("2"));
    assert_eq!(v["echo"]["reordered"], 1, "{v}");
    assert_eq!(v["echo"]["lost"], 0, "{v}");
    assert_eq!(v["echo"]["duplicates"], 0, "{v}");
    assert_every_echo_whole(&v, 64);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("  echo: 0 lost, 0 duplicates, 1 reordered\n"),
        "{table}"
    );
}

/// A message sent in the window whose echo had not come by the end of the drain is lost:
/// counted (`echo.lost`, the table) and said. It was only a timeout, which counts the
/// warm-up's too. The server never answers the first message; a second in flight keeps
/// the closed loop going.
#[test]
fn a_lost_echo_is_counted_and_said() {
    let url = echo_server_with(|n, m| if n == 0 { vec![] } else { vec![m] });
    let (out, v) = loadgen_ok_with_output("echo", &url, &pipelined("2"));
    assert_eq!(v["echo"]["lost"], 1, "{v}");
    assert_eq!(v["echo"]["reordered"], 0, "{v}");
    let received = v["received"].as_u64().unwrap();
    assert!(received > 10, "{v}");
    assert_eq!(v["sent"].as_u64().unwrap(), received + 1, "{v}");
    assert_eq!(v["latency_us"]["count"].as_u64().unwrap(), received, "{v}");
    assert_eq!(v["errors"]["timeout"], 1, "{v}");
    assert_eq!(errors_total(&v), 1, "the timeout and nothing else: {v}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("  echo: 1 lost, 0 duplicates, 0 reordered\n"),
        "{table}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: 1 messages sent in the window had no echo by the end of the run"),
        "{err}"
    );
}

/// An echo server that moves the stamp of each connection's first echo far into the future
/// and that of its second 300 ms ahead of the send time, within the measured window; it
/// echoes the others as sent.
fn future_stamp_server() -> String {
    echo_server_with(|n, m| {
        vec![restamped(m, |ts| match n {
            0 => FAR_FUTURE_NS,
            1 => ts + 300_000_000,
            _ => ts,
        })]
    })
}

/// A stamp later than its arrival is counted (`errors.future_stamp`, the table, a warning)
/// and not timed: the one 300 ms ahead was recorded as a latency of 1 ns, and the far one
/// left out without a word.
#[test]
fn a_stamp_from_the_future_is_counted_not_timed() {
    let url = future_stamp_server();
    let (out, v) = loadgen_ok_with_output("echo", &url, &one_conn());
    assert_eq!(v["errors"]["future_stamp"], 2, "{v}");
    let received = v["received"].as_u64().unwrap();
    assert!(received > 10, "{v}");
    assert_eq!(v["sent"].as_u64().unwrap(), received + 2, "{v}");
    assert_eq!(v["echo"]["lost"], 0, "they came back: {v}");
    assert_eq!(v["messages_in"].as_u64().unwrap(), received + 2, "{v}");
    let l = &v["latency_us"];
    assert_eq!(l["count"].as_u64().unwrap(), received, "{v}");
    // A round trip through a server thread on 127.0.0.1 takes microseconds, not 1 ns.
    assert!(l["min"].as_f64().unwrap() >= 1.0, "{v}");
    assert_eq!(
        errors_total(&v),
        2,
        "the future stamps and nothing else: {v}"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(" bad_stamp 0 future_stamp 2\n"), "{table}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: 2 messages carried a stamp later than their arrival"),
        "{err}"
    );
}

/// Runs the binary with `args`, expecting it to fail on `path`, given to `flag`, before
/// anything else: exit status 1, nothing printed but the one error, which names both and
/// says why.
#[track_caller]
fn assert_fails_on_output(args: &[&str], flag: &str, path: &std::path::Path, why: &str) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .arg(flag)
        .arg(path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        format!("error: {flag} {}: {why}", path.display()),
        "{flag}"
    );
    assert!(out.stdout.is_empty(), "nothing was measured: {err}");
}

/// An output that cannot be written fails the run before it starts, naming the path and
/// why: it was found out at the end of the run, whose results were lost. Nothing listens at
/// the target, so a connection attempt would be an error of its own.
#[test]
fn an_unwritable_output_fails_before_the_run() {
    let url = format!("ws://127.0.0.1:{}/", closed_port());
    let run = ["echo", "--url", &url, "--quiet", "--duration", "5s"];
    let missing = tmp("no-such-dir");
    let enoent = "cannot write: No such file or directory (os error 2)";
    for (flag, file) in [
        ("--json", "out.json"),
        ("--hgrm", "out.hgrm"),
        ("--plot", "out.svg"),
        ("--hlog", "out.hlog"),
    ] {
        assert_fails_on_output(&run, flag, &missing.join(file), enoent);
    }
    let dir = std::env::temp_dir();
    assert_fails_on_output(
        &run,
        "--json",
        &dir,
        "cannot write: Is a directory (os error 21)",
    );
    let err = std::process::Command::new(BIN)
        .args(run)
        .args(["--plot", "out.txt"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&err.stderr).trim_end(),
        "error: --plot: unknown file type \"out.txt\", use .svg or .png"
    );

    // The check leaves no file behind, nor changes one that was there: here the run
    // fails later, at the target.
    let (fresh, kept) = (tmp("fresh.json"), tmp("kept.hgrm"));
    std::fs::write(&kept, "an earlier run's").unwrap();
    let out = std::process::Command::new(BIN)
        .args(run)
        .arg("--json")
        .arg(&fresh)
        .arg("--hgrm")
        .arg(&kept)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not connect"), "{err}");
    assert!(!fresh.exists());
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "an earlier run's");
    let _ = std::fs::remove_file(kept);

    // `merge` too: before reading its logs (it printed their merged table first).
    let log = tmp("one.hlog");
    std::fs::write(&log, interval_log()).unwrap();
    let merge = ["merge", log.to_str().unwrap()];
    for (flag, file) in [
        ("--json", "m.json"),
        ("--hgrm", "m.hgrm"),
        ("--plot", "m.svg"),
    ] {
        assert_fails_on_output(&merge, flag, &missing.join(file), enoent);
    }
    let _ = std::fs::remove_file(log);
}

/// An output path that is a symlink to a missing file is checked through the link without
/// leaving that file behind when the run fails (the check created it, empty), and a run
/// that succeeds writes it through the link.
#[test]
fn the_check_of_a_symlinked_output_leaves_no_file_behind() {
    let url = format!("ws://127.0.0.1:{}/", closed_port());
    let outputs = [
        ("--json", "json"),
        ("--hgrm", "hgrm"),
        ("--plot", "svg"),
        ("--hlog", "hlog"),
    ];
    let links: Vec<_> = outputs
        .iter()
        .map(|(_, ext)| {
            let (link, target) = (tmp(&format!("link.{ext}")), tmp(&format!("target.{ext}")));
            std::os::unix::fs::symlink(&target, &link).unwrap();
            (link, target)
        })
        .collect();
    let mut run = std::process::Command::new(BIN);
    run.args(["echo", "--url", &url, "--quiet", "--duration", "1s"]);
    for ((flag, _), (link, _)) in outputs.iter().zip(&links) {
        run.arg(flag).arg(link);
    }
    let out = run.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not connect"), "{err}");
    for (link, target) in &links {
        assert!(!target.exists(), "{} was left behind", target.display());
        let meta = link.symlink_metadata().unwrap();
        assert!(meta.file_type().is_symlink(), "{}", link.display());
    }

    let (hgrm_link, hgrm_target) = &links[1];
    let v = loadgen_ok(
        "echo",
        &echo_server(),
        &[&one_conn()[..], &["--hgrm", hgrm_link.to_str().unwrap()]].concat(),
    );
    let written = std::fs::read_to_string(hgrm_target).unwrap();
    let count = v["latency_us"]["count"].as_u64().unwrap();
    assert!(
        written.contains(&format!("Total count    = {count:12}]")),
        "{written}"
    );
    for (link, target) in links {
        let _ = std::fs::remove_file(link);
        let _ = std::fs::remove_file(target);
    }
    assert!(!tmp("link-time.svg").exists(), "the time plot's check");
}

/// An interval log of one second with one latency of 1 ms, as `--hlog` writes.
fn interval_log() -> Vec<u8> {
    use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
    use hdrhistogram::serialization::V2DeflateSerializer;
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
    h.record(1_000_000).unwrap();
    let (mut out, mut serializer) = (Vec::new(), V2DeflateSerializer::new());
    let mut log = IntervalLogWriterBuilder::new()
        .with_start_time(std::time::SystemTime::now())
        .begin_log_with(&mut out, &mut serializer)
        .unwrap();
    log.write_histogram(
        &h,
        std::time::Duration::ZERO,
        std::time::Duration::from_secs(1),
        None,
    )
    .unwrap();
    drop(log);
    out
}
