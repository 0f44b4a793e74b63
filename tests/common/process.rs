//! Running the real `flightdeck` binary from tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The binary under test, with a clean environment for FlightDeck's own variables.
pub fn flightdeck() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flightdeck"));
    for var in ["DATABASE_URL", "FLIGHTDECK_ADDR", "FLIGHTDECK_DATA_DIR", "FLIGHTDECK_PG_BIN_DIR"] {
        cmd.env_remove(var);
    }
    cmd.env("FLIGHTDECK_LOG", "info").env("NO_COLOR", "1");
    cmd
}

/// Runs a command to completion, with standard input closed.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `flightdeck serve` process, its address, and what it has logged so far.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `serve --insecure-no-auth` on a free loopback port with `configure` applied, and
    /// waits for its address. For tests about something other than tokens.
    pub fn start(configure: impl FnOnce(&mut Command)) -> Server {
        Server::start_with_auth(|cmd| {
            cmd.arg("--insecure-no-auth");
            configure(cmd);
        })
    }

    /// Starts `serve` as a user would, tokens required, with `configure` applied.
    pub fn start_with_auth(configure: impl FnOnce(&mut Command)) -> Server {
        let mut cmd = flightdeck();
        cmd.arg("serve").env("FLIGHTDECK_ADDR", "127.0.0.1:0");
        configure(&mut cmd);
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("serve did not start; it said:\n{}", log.lock().unwrap());
            }
        };
        Server { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends `signal` and waits for the process to exit; returns whether it exited successfully.
    pub fn stop(mut self, signal: Signal) -> bool {
        kill(self.pid(), signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < deadline, "serve did not stop; it said:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(self.url("/readyz")).await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "never ready; it said:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pid written in a cluster's postmaster.pid, if any.
pub fn postmaster_pid(data_dir: &Path) -> Option<Pid> {
    let text = std::fs::read_to_string(data_dir.join("postgres/data/postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok().map(Pid::from_raw)
}

/// Whether a process is alive (and not a zombie).
pub fn alive(pid: Pid) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next().map(str::to_string));
    kill(pid, None).is_ok() && state.as_deref() != Some("Z")
}

/// Waits until `pid` has exited.
pub fn wait_gone(pid: Pid) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still running");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scratch directory the `postgres` user can reach (the system temp dir), removed on drop.
pub fn scratch_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("flightdeck-cli-").tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}
