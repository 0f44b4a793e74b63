//! Creating, starting and stopping one PostgreSQL cluster.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::owner::Owner;
use super::{Binaries, EmbeddedError, find_binaries};

/// The supervisor between FlightDeck and the postmaster. It runs the server in the background and
/// waits on the lifeline (its stdin): end of file or a line means "stop", so PostgreSQL gets a fast
/// shutdown however FlightDeck ends. For an ephemeral cluster it then deletes the cluster's
/// directory. It exits with the server's status, so a failed start is seen as the child exiting.
const SUPERVISOR: &str = r#"
log="$1"; remove_after="$2"; shift 2
exec 3<&0
"$@" </dev/null >>"$log" 2>&1 &
pid=$!
( read -r _ <&3; kill -INT "$pid" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$pid"; status=$?
kill "$watcher" 2>/dev/null
if [ -n "$remove_after" ]; then rm -rf "$remove_after"; fi
exit "$status"
"#;

/// The socket's port number. The socket lives in a private directory, so it never collides.
const PORT: u16 = 5432;

/// How to run the embedded cluster.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// FlightDeck's data directory; the cluster lives in its `postgres/` subdirectory.
    pub data_dir: PathBuf,
    /// A throwaway cluster: no durability (fsync off) and the directory is deleted once
    /// PostgreSQL has stopped. For tests.
    pub ephemeral: bool,
    /// PostgreSQL's `max_connections`.
    pub max_connections: u32,
    /// Use the server binaries in this directory instead of searching for them.
    pub bin_dir: Option<PathBuf>,
}

impl EmbeddedOptions {
    /// A durable cluster under `data_dir`, created on first use and reused afterwards.
    pub fn persistent(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedOptions { data_dir: data_dir.into(), ephemeral: false, max_connections: 200, bin_dir: None }
    }

    /// A throwaway cluster in a fresh directory under the system's temporary directory.
    pub fn ephemeral() -> Self {
        let name = format!("flightdeck-pg-{}-{:08x}", std::process::id(), rand::random::<u32>());
        EmbeddedOptions {
            data_dir: std::env::temp_dir().join(name),
            ephemeral: true,
            max_connections: 300,
            bin_dir: None,
        }
    }
}

/// A running PostgreSQL cluster owned by this process. Dropping it (or this process dying) stops
/// the server; [`EmbeddedPostgres::stop`] does so and waits.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    /// None when attached to a cluster another FlightDeck process runs (it stops it, not us).
    supervisor: Option<Child>,
    lifeline: Option<ChildStdin>,
    socket_dir: PathBuf,
    pgdata: PathBuf,
    log: PathBuf,
    binaries: Binaries,
}

impl EmbeddedPostgres {
    /// Creates the cluster if needed, starts it and waits until it accepts connections. Blocking:
    /// call it from `spawn_blocking` inside an async runtime.
    pub fn start(options: &EmbeddedOptions) -> Result<Self, EmbeddedError> {
        let owner = Owner::detect()?;
        std::fs::create_dir_all(&options.data_dir)
            .map_err(EmbeddedError::io("cannot create the data directory", &options.data_dir))?;
        let data_dir = options
            .data_dir
            .canonicalize()
            .map_err(EmbeddedError::io("cannot resolve the data directory", &options.data_dir))?;
        if options.ephemeral {
            owner.give(&data_dir)?;
        }
        let pg_dir = cluster_home(&data_dir, owner, options.ephemeral)?;
        private_dir(&pg_dir)?;
        owner.give(&pg_dir)?;
        owner.check_reachable(&pg_dir)?;
        let pgdata = pg_dir.join("data");
        let log = pg_dir.join("postgres.log");

        let binaries = match std::fs::read_to_string(pgdata.join("PG_VERSION")) {
            Ok(text) => {
                let major = text.trim().parse().map_err(|_| EmbeddedError::Failed {
                    step: "reading the cluster's PG_VERSION",
                    detail: format!("unexpected contents {text:?}"),
                    log: String::new(),
                })?;
                find_binaries(options.bin_dir.as_deref(), Some(major))?
            }
            Err(_) => {
                let binaries = find_binaries(options.bin_dir.as_deref(), None)?;
                initdb(&binaries, owner, &pg_dir, &pgdata, &log, options.ephemeral)?;
                binaries
            }
        };

        if let Some(socket_dir) = clear_stale_pid(&pgdata)? {
            tracing::info!("PostgreSQL in {} is run by another FlightDeck process; using it", pgdata.display());
            return Ok(EmbeddedPostgres { supervisor: None, lifeline: None, socket_dir, pgdata, log, binaries });
        }
        let socket_dir = socket_dir_for(&pg_dir, owner)?;

        let mut cmd = Command::new("sh");
        let remove_after = if options.ephemeral { data_dir.as_os_str() } else { "".as_ref() };
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("flightdeck-pg-supervisor")
            .arg(&log)
            .arg(remove_after)
            .arg(binaries.postgres())
            .arg("-D")
            .arg(&pgdata)
            .args(["-c", "listen_addresses="])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", socket_dir.display()))
            .args(["-c", &format!("port={PORT}")])
            .args(["-c", &format!("max_connections={}", options.max_connections)]);
        if options.ephemeral {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]);
        }
        cmd.current_dir(&pg_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C in the terminal reaches FlightDeck, which stops
            // PostgreSQL last, after its own clean shutdown.
            .process_group(0);
        owner.apply(&mut cmd);
        let mut supervisor = cmd.spawn().map_err(EmbeddedError::io("cannot start", binaries.postgres()))?;
        let lifeline = supervisor.stdin.take();
        let mut pg = EmbeddedPostgres { supervisor: Some(supervisor), lifeline, socket_dir, pgdata, log, binaries };
        pg.wait_ready(Duration::from_secs(60))?;
        Ok(pg)
    }

    /// Connection settings for this cluster (superuser `postgres`, database `postgres`).
    pub fn config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config.host_path(&self.socket_dir).port(PORT).user("postgres").dbname("postgres");
        config
    }

    /// The same settings as a libpq-style connection string, for `psql` or a child process.
    pub fn connection_string(&self, dbname: &str) -> String {
        format!("host='{}' port={PORT} user=postgres dbname='{dbname}'", self.socket_dir.display())
    }

    /// The binaries this cluster runs on.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The cluster's data directory (PGDATA).
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// Fast shutdown (open transactions are rolled back, sessions ended) and wait for it. Blocking.
    pub fn stop(mut self) -> Result<(), EmbeddedError> {
        let Some(mut supervisor) = self.supervisor.take() else { return Ok(()) };
        if let Some(mut lifeline) = self.lifeline.take() {
            // Either the line or the end of file wakes the supervisor; a broken pipe means it
            // already left.
            let _ = lifeline.write_all(b"stop\n");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match supervisor.try_wait() {
                Ok(Some(_)) | Err(_) => return Ok(()),
                Ok(None) if Instant::now() > deadline => {
                    let _ = supervisor.kill();
                    return Err(EmbeddedError::Failed {
                        step: "stopping PostgreSQL",
                        detail: "it did not stop within 60 s".into(),
                        log: log_tail(&self.log),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), EmbeddedError> {
        let deadline = Instant::now() + timeout;
        let socket = self.socket_dir.join(format!(".s.PGSQL.{PORT}"));
        loop {
            if let Some(Ok(Some(status))) = self.supervisor.as_mut().map(Child::try_wait) {
                return Err(EmbeddedError::Failed {
                    step: "starting PostgreSQL",
                    detail: format!("the server exited ({status})"),
                    log: log_tail(&self.log),
                });
            }
            let ready = std::fs::read_to_string(self.pgdata.join("postmaster.pid"))
                .map(|pid| pid.lines().nth(7).map(str::trim) == Some("ready"))
                .unwrap_or(false);
            if ready && socket.exists() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(EmbeddedError::Failed {
                    step: "starting PostgreSQL",
                    detail: format!("not ready after {} s", timeout.as_secs()),
                    log: log_tail(&self.log),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        // Closing the lifeline is the stop signal; the supervisor finishes on its own.
        self.lifeline.take();
    }
}

/// Where the cluster lives: `<data dir>/postgres`, unless FlightDeck runs as root and the
/// `postgres` user cannot reach that (say, a data directory under root's 0700 home). Then the
/// cluster lives under /var/lib/flightdeck and `<data dir>/postgres` is a symlink to it, so that
/// zero config works from any directory and later runs find the same cluster.
fn cluster_home(data_dir: &Path, owner: Owner, ephemeral: bool) -> Result<PathBuf, EmbeddedError> {
    let link = data_dir.join("postgres");
    if let Ok(target) = std::fs::read_link(&link) {
        return Ok(target);
    }
    let unreachable = owner.check_reachable(&link).is_err();
    if !unreachable || ephemeral || link.exists() {
        return Ok(link);
    }
    let name: String = data_dir
        .to_string_lossy()
        .trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
        .collect();
    let home = PathBuf::from(RELOCATED_ROOT).join(name);
    std::fs::create_dir_all(&home).map_err(EmbeddedError::io("cannot create", &home))?;
    let target = home.join("postgres");
    std::os::unix::fs::symlink(&target, &link).map_err(EmbeddedError::io("cannot create the symlink", &link))?;
    tracing::info!(
        "the postgres user cannot reach {}; keeping the cluster in {} instead",
        data_dir.display(),
        target.display()
    );
    Ok(target)
}

/// Home of clusters whose data directory the `postgres` user cannot reach (root only).
pub const RELOCATED_ROOT: &str = "/var/lib/flightdeck";

fn private_dir(path: &Path) -> Result<(), EmbeddedError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(EmbeddedError::io("cannot create", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(EmbeddedError::io("cannot restrict", path))
}

/// Creates the cluster in a scratch directory and renames it into place, so an interrupted
/// `initdb` never leaves a half-made cluster that later starts would trip over.
fn initdb(
    binaries: &Binaries,
    owner: Owner,
    pg_dir: &Path,
    pgdata: &Path,
    log: &Path,
    ephemeral: bool,
) -> Result<(), EmbeddedError> {
    let scratch = pg_dir.join("data.initdb");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(EmbeddedError::io("cannot remove", &scratch))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(EmbeddedError::io("cannot open", log))?;
    owner.give(log)?;
    let mut cmd = Command::new(binaries.initdb());
    cmd.arg("-D")
        .arg(&scratch)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"])
        .current_dir(pg_dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(EmbeddedError::io("cannot open", log))?)
        .stderr(log_file);
    if ephemeral {
        cmd.arg("--no-sync");
    }
    owner.apply(&mut cmd);
    let status = cmd.status().map_err(EmbeddedError::io("cannot run", binaries.initdb()))?;
    if !status.success() {
        return Err(EmbeddedError::Failed {
            step: "creating the cluster (initdb)",
            detail: format!("initdb exited with {status}"),
            log: log_tail(log),
        });
    }
    std::fs::rename(&scratch, pgdata).map_err(EmbeddedError::io("cannot move the new cluster to", pgdata))
}

/// Unix socket paths are limited to 107 bytes; a deep data directory gets its socket in a private
/// directory under /tmp instead.
fn socket_dir_for(pg_dir: &Path, owner: Owner) -> Result<PathBuf, EmbeddedError> {
    if pg_dir.as_os_str().len() + ".s.PGSQL.5432.lock".len() < 100 {
        return Ok(pg_dir.to_path_buf());
    }
    let name = format!("flightdeck-sock-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let dir = std::env::temp_dir().join(name);
    private_dir(&dir)?;
    owner.give(&dir)?;
    Ok(dir)
}

/// Deals with an existing `postmaster.pid`. If a supervised postmaster serves this cluster (another
/// FlightDeck process, e.g. `serve` while the user runs `flightdeck read`), returns its socket
/// directory so this process can use it. If the postmaster is orphaned (its supervisor was killed
/// outright), it is asked to stop. Otherwise the file is stale (left by a crash, possibly naming a
/// recycled pid that PostgreSQL would mistake for a live server) and is removed.
fn clear_stale_pid(pgdata: &Path) -> Result<Option<PathBuf>, EmbeddedError> {
    let pidfile = pgdata.join("postmaster.pid");
    let Ok(text) = std::fs::read_to_string(&pidfile) else { return Ok(None) };
    let pid = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|&p| p > 0).map(Pid::from_raw)
        && is_our_postmaster(pid, pgdata)
    {
        let ready = text.lines().nth(7).map(str::trim) == Some("ready");
        if is_supervised(pid) && ready {
            if let Some(dir) = text.lines().nth(4).map(str::trim).filter(|d| !d.is_empty()) {
                return Ok(Some(PathBuf::from(dir)));
            }
        }
        tracing::warn!(%pid, "an earlier PostgreSQL is still running on this data directory; stopping it");
        let _ = kill(pid, Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(60);
        // Done when its pid file is gone (it removes it last) or it has exited (a zombie counts:
        // its parent may not have reaped it yet).
        while pidfile.exists() && kill(pid, None).is_ok() && !is_zombie(pid) {
            if Instant::now() > deadline {
                return Err(EmbeddedError::Failed {
                    step: "stopping an earlier PostgreSQL",
                    detail: format!("process {pid} did not stop within 60 s"),
                    log: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        tracing::info!("removing a stale postmaster.pid left by a crash");
    }
    match std::fs::remove_file(&pidfile) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(EmbeddedError::io("cannot remove", &pidfile)(e)),
        _ => Ok(None),
    }
}

fn is_zombie(pid: Pid) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("Z")
}

/// Whether the postmaster's parent is a FlightDeck supervisor (so a live FlightDeck owns it).
fn is_supervised(pid: Pid) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesized command name: state, ppid, ...
    let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
    let Some(ppid) = ppid else { return false };
    let cmdline = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
    let marker = b"flightdeck-pg-supervisor";
    cmdline.windows(marker.len()).any(|w| w == marker)
}

fn is_our_postmaster(pid: Pid, pgdata: &Path) -> bool {
    if kill(pid, None).is_err() {
        return false;
    }
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    let want = pgdata.as_os_str().as_encoded_bytes();
    comm.trim() == "postgres" && cmdline.windows(want.len()).any(|w| w == want)
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(15)..];
    if tail.is_empty() { String::new() } else { format!("PostgreSQL said ({}):\n{}", log.display(), tail.join("\n")) }
}
