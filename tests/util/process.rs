//! The `wsgate` binary as a child process, for what only the binary shows: start-up lines,
//! signals, exit codes, reloads.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

use super::TIMEOUT;

/// A running `wsgate serve`, its log lines (stderr) read on a thread, killed when dropped.
pub struct GatewayProcess {
    child: Child,
    /// Read until the reader thread ends: the pipe never fills while the gateway runs.
    log: Receiver<String>,
    /// The start-up line, and the plain listener's address from it.
    pub startup: String,
    pub addr: String,
    /// Log lines before the start-up line, not yet looked at by `wait_log`.
    pub before: Vec<String>,
}

impl GatewayProcess {
    /// Starts `wsgate serve ARGS` with `RUST_LOG=info` and waits (at most `TIMEOUT`) for the
    /// start-up line "listening on ADDR".
    pub fn start(args: &[&str]) -> Self {
        Self::launch(Command::new(env!("CARGO_BIN_EXE_wsgate")), args)
    }

    /// `one_reactor` with the open-files limit, soft and hard, at `limit` (set by `sh`,
    /// which then becomes wsgate).
    pub fn one_reactor_with_files_limit(limit: u32, extra: &[&str]) -> Self {
        let mut command = Command::new("sh");
        command.args(["-c", "ulimit -n \"$0\" && exec \"$@\""]);
        command
            .arg(limit.to_string())
            .arg(env!("CARGO_BIN_EXE_wsgate"));
        Self::launch(command, &one_reactor_args(extra))
    }

    fn launch(mut command: Command, args: &[&str]) -> Self {
        let mut child = command
            .arg("serve")
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
                    log,
                    addr,
                    startup: line,
                    before,
                };
            }
            before.push(line);
        }
    }

    /// `start` with one unpinned reactor on 127.0.0.1:0, then `extra`.
    pub fn one_reactor(extra: &[&str]) -> Self {
        Self::start(&one_reactor_args(extra))
    }

    /// How many log lines so far contain `what` (without waiting for more).
    pub fn count_log(&mut self, what: &str) -> usize {
        self.before.extend(self.log.try_iter());
        self.before.iter().filter(|l| l.contains(what)).count()
    }

    /// The first log line not yet looked at that contains `what` (earlier ones are passed
    /// over); panics when none comes within `TIMEOUT`.
    pub fn wait_log(&mut self, what: &str) -> String {
        if let Some(i) = self.before.iter().position(|l| l.contains(what)) {
            return self.before.drain(..=i).next_back().expect("the match");
        }
        self.before.clear();
        loop {
            match self.log.recv_timeout(TIMEOUT) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(e) => panic!("no log line with {what:?} ({e})"),
            }
        }
    }

    /// Sends `signal` (e.g. "HUP") to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGKILL: the process dies without a word to its peers.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill wsgate");
        self.child.wait().expect("wait for wsgate");
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait(mut self) -> Option<i32> {
        self.child.wait().expect("wait for wsgate").code()
    }

    /// SIGTERM, then the exit status must be 0 (drained).
    pub fn stop(self) {
        self.signal("TERM");
        assert_eq!(self.wait(), Some(0));
    }
}

/// One unpinned reactor on 127.0.0.1:0, then `extra`.
fn one_reactor_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--pin",
        "false",
    ];
    args.extend_from_slice(extra);
    args
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
