//! The real `sipadmit` binary as a child process, its console log (stderr)
//! read line by line, every wait bounded by [`BOUND`].
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest any single wait here lasts before the test fails.
pub const BOUND: Duration = Duration::from_secs(20);

/// How long [`Sipadmit::stop`] lets a drain run before it sends the second
/// SIGTERM that stops at once.
pub const DRAIN_BOUND: Duration = Duration::from_secs(5);

/// A running `sipadmit` whose stderr a thread reads line by line. Killed
/// (by its own pid) on drop.
pub struct Sipadmit {
    /// The process.
    pub child: Child,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub lines: Vec<String>,
}

impl Sipadmit {
    /// Spawn `command` (a `sipadmit` command line; stdout as it says) with
    /// stdin from `/dev/null` and stderr piped to the reading thread.
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stderr,
            lines: Vec::new(),
        }
    }

    /// The first stderr line (read so far or to come) containing `text`.
    pub fn wait_for(&mut self, text: &str) -> String {
        if let Some(line) = self.lines.iter().find(|l| l.contains(text)) {
            return line.clone();
        }
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.lines.push(line);
                    let line = self.lines.last().unwrap();
                    if line.contains(text) {
                        return line.clone();
                    }
                }
                Err(e) => panic!(
                    "no stderr line with {text:?} ({e}); so far:\n{}",
                    self.lines.join("\n")
                ),
            }
        }
    }

    /// Every stderr line read so far, after taking in what is waiting.
    pub fn stderr_so_far(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.lines.push(line);
        }
        self.lines.join("\n")
    }

    /// Send signal `name` (`HUP`, `TERM`, ...) with `kill -NAME pid`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// SIGTERM (a drain: the process stops once nothing is pending for a
    /// second), a second SIGTERM (at once) if it still runs after
    /// [`DRAIN_BOUND`], then wait (bounded) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + BOUND;
        let second = Instant::now() + DRAIN_BOUND;
        let mut signalled_twice = false;
        loop {
            if !signalled_twice && Instant::now() >= second {
                signalled_twice = true;
                let _ = Command::new("kill")
                    .args(["-TERM", &self.child.id().to_string()])
                    .status();
            }
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(
                Instant::now() < deadline,
                "sipadmit did not stop on SIGTERM; stderr so far:\n{}",
                self.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait (bounded) for the process to exit by itself, then the whole
    /// stderr; panics unless the exit was clean.
    pub fn exited(&mut self) -> String {
        let deadline = Instant::now() + BOUND;
        let exit = loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "sipadmit did not exit; stderr so far:\n{}",
                self.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.stderr.recv_timeout(BOUND) {
            self.lines.push(line);
        }
        let stderr = self.lines.join("\n");
        assert!(exit.success(), "exit {exit:?}:\n{stderr}");
        stderr
    }

    /// [`Sipadmit::stop`], then the whole stderr (read to its end); panics
    /// unless the exit was clean.
    pub fn terminate(&mut self) -> String {
        let exit = self.stop();
        // The reader thread ends at EOF, now that the process has exited.
        while let Ok(line) = self.stderr.recv_timeout(BOUND) {
            self.lines.push(line);
        }
        let stderr = self.lines.join("\n");
        assert!(exit.success(), "exit {exit:?}:\n{stderr}");
        stderr
    }
}

impl Drop for Sipadmit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `name=` in a console log line (`addr=127.0.0.1:5060`).
pub fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        + key.len();
    line[start..].split_whitespace().next().unwrap()
}

/// A TCP port of 127.0.0.1 that is free now, for a `--listen` (or
/// `--admin`) that must be known before the process starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `sipadmit run --config config` (the binary, a child process) with a
/// `[limits]` table of `limits`, listening on a free TCP port and UDP port 0
/// of 127.0.0.1, relaying to `upstream`, its stdout discarded and
/// `RUST_LOG=info`, once it listens; its TCP port. The config file lives
/// in `dir`.
#[cfg(test)]
pub fn sipadmit_on_tcp(dir: &std::path::Path, limits: &str, upstream: &str) -> (Sipadmit, u16) {
    let config = dir.join("sipadmit.toml");
    std::fs::write(
        &config,
        format!("[response_group]\nworkflows = [\"sip:helpdesk@contoso.com\"]\n[limits]\n{limits}"),
    )
    .unwrap();
    let port = free_port();
    let mut sipadmit = Sipadmit::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", &format!("tcp:127.0.0.1:{port}")])
            .args(["--listen", "udp:127.0.0.1:0", "--upstream", upstream])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null()),
    );
    sipadmit.wait_for("listening");
    (sipadmit, port)
}

/// `sipadmit run --config config` (the binary, a child process) on UDP
/// port 0 of 127.0.0.1, relaying to `upstream` (`udp:IP:PORT`), with
/// `extra` arguments, its stdout discarded and `RUST_LOG=info`; its UDP
/// listener's address, from its `listening` line.
#[cfg(test)] // CARGO_BIN_EXE_* exists for tests only, not the examples that use this file
pub fn sipadmit_on_udp(
    config: &std::path::Path,
    upstream: &str,
    extra: &[&str],
) -> (Sipadmit, std::net::SocketAddr) {
    let mut sipadmit = Sipadmit::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_sipadmit"))
            .args(["run", "--config", config.to_str().unwrap()])
            .args(["--listen", "udp:127.0.0.1:0", "--upstream", upstream])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null()),
    );
    let listening = sipadmit.wait_for("listening");
    let udp = field(&listening, "addr").parse().unwrap();
    (sipadmit, udp)
}
