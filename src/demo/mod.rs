//! `flightdeck demo` and `serve --demo`: synthetic visitors on make-believe websites, sent through
//! `POST /api/track` exactly as `/track.js` would send them, so a new user sees a live dashboard
//! (and the whole path: ingestion, the log, the projector, the stats) within seconds.
//!
//! A scheduler spends a budget of `rate` events per second on a pool of visitors ([`sites`]):
//! each step of a visitor is one request (a page view, sometimes with a click or a form). A few
//! sender tasks, each on its own keep-alive connection, post the requests; a request that fails
//! is resent with the same body (the same event ids), as the tracker does, so it is never counted
//! twice. Once a second the caller gets a [`Progress`] to show.
//!
//! The tracker accepts a site's events only once the site is registered, from its origins
//! (`src/sites/`): each demo site has an origin of its own, sent as `Origin`, and [`register`]
//! puts the sites in the server's database first (`flightdeck demo` through the same data
//! directory or `DATABASE_URL` as the server, `serve --demo` through its own store).

pub mod sites;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bench::client::{ClientBenchError, Connection, Target};
use crate::sites::{AddMode, Origin, SitesError};
use crate::store::Store;

use sites::{Visitor, sites};

/// What to generate.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The FlightDeck server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Events per second, over all sites.
    pub rate: u32,
    /// How many sites.
    pub sites: usize,
    /// Stop after this long; `None`: until shutdown.
    pub duration: Option<Duration>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Options it cannot work with.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached.
    #[error(transparent)]
    Client(#[from] ClientBenchError),
    /// The demo sites could not be registered.
    #[error(
        "cannot register the demo sites in the server's database ({0}); run the demo with the server's \
         --data-dir or DATABASE_URL, or register them yourself (flightdeck site add demo-shop --origin \
         https://shop.demo.flightdeck.test, …) and add --no-register"
    )]
    Register(String),
}

impl DemoOptions {
    /// Checks the options, before anything is registered or sent.
    pub fn check(&self) -> Result<(), DemoError> {
        if self.rate == 0 || self.rate > 100_000 {
            return Err(DemoError::Usage("--rate must be between 1 and 100000 events per second".into()));
        }
        if self.sites == 0 || self.sites > 100 {
            return Err(DemoError::Usage("--sites must be between 1 and 100".into()));
        }
        Ok(())
    }
}

/// Fails with a clear message unless something accepts connections at `url`.
pub async fn reachable(url: &str) -> Result<(), DemoError> {
    let target = Target::resolve(url).await?;
    drop(Connection::open(&target).await?);
    Ok(())
}

/// Registers the demo's first `count` sites (see [`sites::sites`]) with their origins, keeping
/// whatever origins they have already: idempotent, so every demo start runs it.
pub async fn register(store: &Store, count: usize) -> Result<(), DemoError> {
    for site in sites(count) {
        let origin = Origin::parse(&site.origin).map_err(|e| DemoError::Register(e.to_string()))?;
        crate::sites::add(store, &site.id, &[origin], AddMode::Merge)
            .await
            .map_err(|e: SitesError| DemoError::Register(e.to_string()))?;
    }
    Ok(())
}

/// Where the demo is, reported once a second and at the end.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Time since the start.
    pub elapsed: Duration,
    /// Events the server accepted (202).
    pub events: u64,
    /// Events per second over the last report interval.
    pub rate: f64,
    /// Visitor sessions started.
    pub sessions: u64,
    /// Failed attempts (connection errors, non-202 answers); each is retried.
    pub errors: u64,
    /// The last failure, for the progress line.
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    errors: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

impl Counters {
    fn failed(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(why);
        }
    }
}

/// Attempts per request before it is given up.
const ATTEMPTS: u32 = 5;
/// How often the scheduler spends its budget.
const TICK: Duration = Duration::from_millis(50);

/// Runs the demo until `options.duration` has passed or `shutdown` is cancelled; calls `progress`
/// about once a second and once at the end (with `true`).
pub async fn run(
    options: &DemoOptions,
    shutdown: CancellationToken,
    mut progress: impl FnMut(&Progress, bool),
) -> Result<Progress, DemoError> {
    options.check()?;
    let target = Arc::new(Target::resolve(&options.url).await?);
    // Fail now, with a clear message, if nothing listens there.
    drop(Connection::open(&target).await?);
    let sites = sites(options.sites);
    let counters = Arc::new(Counters::default());
    let senders = (options.rate as usize / 200 + 2).min(16);
    let (queue, receiver) = mpsc::channel::<Request>(senders * 4);
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let mut workers = JoinSet::new();
    for _ in 0..senders {
        workers.spawn(send_loop(target.clone(), receiver.clone(), counters.clone(), shutdown.clone()));
    }

    let mut rng = StdRng::from_rng(&mut rand::rng());
    let pool = (options.rate as usize).clamp(4, 500);
    let mut visitors: Vec<Visitor> = Vec::with_capacity(pool);
    let started = Instant::now();
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let (mut budget, mut last_tick, mut sessions) = (0.0f64, Instant::now(), 0u64);
    let (mut last_report, mut reported_events) = (Instant::now(), 0u64);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'run: loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
            _ = sleep_until(deadline) => break,
        }
        let now = Instant::now();
        budget = (budget + f64::from(options.rate) * (now - last_tick).as_secs_f64()).min(f64::from(options.rate));
        last_tick = now;
        while budget >= 1.0 {
            if visitors.len() < pool || rng.random_bool(0.05) {
                visitors.push(Visitor::new(rng.random_range(0..sites.len()), &mut rng));
                sessions += 1;
            }
            let index = rng.random_range(0..visitors.len());
            let visitor = &mut visitors[index];
            let site = &sites[visitor.site];
            let events = visitor.step(site, &mut rng);
            let body = serde_json::json!({"site": site.id, "session": visitor.session, "events": events});
            if visitor.done() {
                visitors.swap_remove(index);
            }
            budget -= events.len() as f64;
            let request = Request { body: body.to_string(), events: events.len() as u64, origin: site.origin.clone() };
            tokio::select! {
                sent = queue.send(request) => if sent.is_err() { break 'run },
                _ = shutdown.cancelled() => break 'run,
                _ = sleep_until(deadline) => break 'run,
            }
            // Also here: when the server is slower than the rate, this loop waits on the senders.
            if last_report.elapsed() >= Duration::from_secs(1) {
                progress(&snapshot(&counters, started, sessions, &mut last_report, &mut reported_events), false);
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            progress(&snapshot(&counters, started, sessions, &mut last_report, &mut reported_events), false);
        }
    }
    drop(queue);
    // Senders finish what is queued (unless shutting down), then end.
    while workers.join_next().await.is_some() {}
    let done = snapshot(&counters, started, sessions, &mut last_report, &mut reported_events);
    progress(&done, true);
    Ok(done)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn snapshot(
    counters: &Counters,
    started: Instant,
    sessions: u64,
    last_report: &mut Instant,
    reported_events: &mut u64,
) -> Progress {
    let events = counters.events.load(Ordering::Relaxed);
    let interval = last_report.elapsed().as_secs_f64().max(1e-3);
    let rate = (events - *reported_events) as f64 / interval;
    *last_report = Instant::now();
    *reported_events = events;
    Progress {
        elapsed: started.elapsed(),
        events,
        rate,
        sessions,
        errors: counters.errors.load(Ordering::Relaxed),
        last_error: counters.last_error.lock().ok().and_then(|e| e.clone()),
    }
}

/// One tracker request: its body, how many events it carries, and the site's origin.
struct Request {
    body: String,
    events: u64,
    origin: String,
}

/// One sender: takes requests off the queue and posts each until it is accepted (or given up).
async fn send_loop(
    target: Arc<Target>,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Request>>>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    let path = target.path("/api/track");
    let mut connection: Option<Connection> = None;
    loop {
        let next = {
            let mut queue = queue.lock().await;
            tokio::select! {
                next = queue.recv() => next,
                _ = shutdown.cancelled() => None,
            }
        };
        let Some(Request { body, events, origin }) = next else { return };
        let origin = Some(origin.as_str());
        for attempt in 1..=ATTEMPTS {
            let answer = match connection.as_mut() {
                Some(conn) => conn.post_json_from(&path, body.as_bytes(), origin).await,
                None => match Connection::open(&target).await {
                    Ok(conn) => connection.insert(conn).post_json_from(&path, body.as_bytes(), origin).await,
                    Err(err) => Err(err),
                },
            };
            match answer {
                Ok((202, _)) => {
                    counters.events.fetch_add(events, Ordering::Relaxed);
                    if connection.as_ref().is_some_and(Connection::closing) {
                        connection = None;
                    }
                    break;
                }
                Ok((status, reply)) => {
                    let reply = String::from_utf8_lossy(&reply[..reply.len().min(200)]).into_owned();
                    counters.failed(format!("{status}: {reply}"));
                    connection = None;
                    // Refused for good: resending the same body cannot help.
                    if (400..500).contains(&status) && status != 408 && status != 429 {
                        break;
                    }
                }
                Err(err) => {
                    counters.failed(err.to_string());
                    connection = None;
                }
            }
            if attempt < ATTEMPTS {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}
