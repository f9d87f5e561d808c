//! A Redis server of the tests' own: Debian's `redis-server` (installed by `scripts/setup.sh`)
//! started on a free loopback port with nothing saved to disk, and stopped when dropped.
//!
//! Only the standard library is used, so the state crate's tests include this file by path
//! (`#[path]`) as well as the tests crate.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`; killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts a server and returns once it has said it accepts connections. Panics, naming the
    /// fix, when `redis-server` is missing.
    pub fn start() -> Self {
        // A free port can be taken between asking and binding: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
            if let Some(server) = Self::try_start_on(port) {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts a server on `port` (a restart where an earlier one listened), or panics.
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port).unwrap_or_else(|| panic!("redis-server did not start on port {port}"))
    }

    fn try_start_on(port: u16) -> Option<Self> {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--loglevel", "notice", "--daemonize", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); scripts/setup.sh installs Debian's redis-server"));
        if Self::wait_ready(&mut child) {
            return Some(Self { child, port });
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Reads the server's log until it accepts connections (true) or exits (false). The rest of
    /// the log is drained by a thread, so the server never blocks on a full pipe.
    fn wait_ready(child: &mut Child) -> bool {
        let Some(stdout) = child.stdout.take() else { return false };
        let mut lines = BufReader::new(stdout).lines();
        let started = Instant::now();
        for line in lines.by_ref() {
            let Ok(line) = line else { return false };
            if line.contains("Ready to accept connections") {
                std::thread::spawn(move || lines.for_each(drop));
                return true;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "redis-server is not ready after a minute");
        }
        false
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
