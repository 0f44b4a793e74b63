//! The bus against a real PostgreSQL: live delivery, replay-then-live, filters, SQL appends woken
//! by NOTIFY, listener loss, lag, and two processes sharing one database.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use flightdeck::bus::{Bus, BusError, BusOptions, FieldMatch, Filter, Start, Subscription};
use flightdeck::store::{ExpectedVersion, NewEvent, Position};
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Running {
    bus: Bus,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await.expect("bus tasks end");
    }
}

async fn start(db: &common::TestDb, options: BusOptions) -> Running {
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let bus = Bus::start(db.store.clone(), db.config.clone(), options, shutdown.clone(), &tasks).await.unwrap();
    // Listening before the test acts, so that a delivery proves a NOTIFY woke the bus (rather than
    // the catch-up every (re)connection does).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !bus.listener_connected() {
        assert!(std::time::Instant::now() < deadline, "the listener never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Running { bus, shutdown, tasks }
}

/// No safety poll to speak of: deliveries in these tests must come from hints and NOTIFY.
fn no_poll() -> BusOptions {
    BusOptions { safety_poll: Duration::from_secs(3600), ..BusOptions::default() }
}

async fn take(sub: &mut Subscription, n: usize) -> Vec<flightdeck::store::RecordedEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(30), sub.next()).await;
        let event = next.unwrap_or_else(|_| panic!("only {} of {n} events arrived", out.len()));
        out.push((*event.unwrap().unwrap()).clone());
    }
    out
}

async fn append(bus: &Bus, stream: &str, ty: &str, data: serde_json::Value) {
    bus.append("default", stream, ExpectedVersion::Any, &[NewEvent::new(ty, data)]).await.unwrap();
}

#[tokio::test]
async fn live_subscribers_receive_appends_in_order() {
    let db = common::test_db().await;
    let r = start(&db, no_poll()).await;
    let mut a = r.bus.subscribe(Filter::default(), Start::Now);
    let mut b = r.bus.subscribe(Filter { types: vec!["Click".into()], ..Filter::default() }, Start::Now);
    for i in 0..50 {
        append(&r.bus, &format!("s{}", i % 3), if i % 2 == 0 { "Click" } else { "View" }, json!({"i": i})).await;
    }
    let all = take(&mut a, 50).await;
    assert_eq!(all.iter().map(|e| e.data["i"].as_i64().unwrap()).collect::<Vec<_>>(), (0..50).collect::<Vec<_>>());
    let clicks = take(&mut b, 25).await;
    assert!(clicks.iter().all(|e| e.event_type == "Click"));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_then_live_has_no_gap_and_no_duplicate_at_the_seam() {
    let db = common::test_db().await;
    let r = start(&db, no_poll()).await;
    for i in 0..300 {
        append(&r.bus, "before", "E", json!({"i": i})).await;
    }
    let writer = {
        let bus = r.bus.clone();
        tokio::spawn(async move {
            for i in 300..600 {
                append(&bus, "during", "E", json!({"i": i})).await;
            }
        })
    };
    let mut sub = r.bus.subscribe(Filter::default(), Start::Beginning);
    let mut evens = r.bus.subscribe(
        Filter { fields: vec![FieldMatch::parse("data.even:true").unwrap()], ..Filter::default() },
        Start::Beginning,
    );
    let got = take(&mut sub, 600).await;
    writer.await.unwrap();
    let ids: HashSet<_> = got.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 600, "no duplicates");
    let full = db.store.read_all(Position::START, 1000).await.unwrap();
    assert_eq!(got, full, "same events, same order as the log");
    // A filter with no match anywhere delivers nothing, even across the seam.
    append(&r.bus, "x", "E", json!({"even": true})).await;
    let only = take(&mut evens, 1).await;
    assert_eq!(only[0].stream, "x");
    r.stop().await;
}

/// The read behind a lone append cannot see it while an older transaction is open (its xid is
/// above the visibility horizon); the pump retries, and both arrive in log order once the older one
/// commits, with no hint from the test and no safety poll.
#[tokio::test]
async fn an_append_behind_an_open_older_transaction_arrives_after_it_once_it_commits() {
    let db = common::test_db().await;
    let r = start(&db, no_poll()).await;
    let mut sub = r.bus.subscribe(Filter::default(), Start::Now);
    let mut client = db.connect().await;
    let older = client.transaction().await.unwrap();
    flightdeck::store::append_in(&older, "default", "older", ExpectedVersion::Any, &[NewEvent::new("Older", json!(1))])
        .await
        .unwrap();
    append(&r.bus, "newer", "Newer", json!(2)).await;
    // Delivering the newer event now would put it before the older one in every subscriber's order.
    let early = tokio::time::timeout(Duration::from_millis(300), sub.next()).await;
    assert!(early.is_err(), "an event arrived while an older transaction was open: {early:?}");
    older.commit().await.unwrap();
    let got = take(&mut sub, 2).await;
    assert_eq!(got.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), ["Older", "Newer"]);
    assert!(got[0].position < got[1].position);
    let reads_behind = r.bus.stats().reads_behind_appends.load(std::sync::atomic::Ordering::Relaxed);
    assert!(reads_behind >= 1, "the lone append was read behind");
    r.stop().await;
}

#[tokio::test]
async fn appends_through_sql_are_woken_by_notify_and_rollbacks_never_arrive() {
    let db = common::test_db().await;
    let r = start(&db, no_poll()).await;
    let mut sub = r.bus.subscribe(Filter::default(), Start::Now);
    let client = db.connect().await;
    client
        .batch_execute(
            "BEGIN; SELECT flightdeck.append('sql', 'RolledBack', '{}'); ROLLBACK;
             BEGIN; SELECT flightdeck.append('sql', 'Committed', '{}'); COMMIT;",
        )
        .await
        .unwrap();
    let got = take(&mut sub, 1).await;
    assert_eq!(got[0].event_type, "Committed");
    assert!(r.bus.stats().notifications.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_listener_repeatedly_loses_nothing() {
    let db = common::test_db().await;
    // A long safety poll: recovery must come from reconnect + catch-up, not from polling.
    let r = start(&db, no_poll()).await;
    let mut sub = r.bus.subscribe(Filter::default(), Start::Now);
    let admin = db.connect().await;
    let killer = {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut kills = 0;
            while !s.is_cancelled() {
                let n = admin
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                         WHERE datname = current_database() AND pid <> pg_backend_pid()
                           AND (query LIKE 'LISTEN%' OR query = 'SELECT 1')",
                        &[],
                    )
                    .await
                    .unwrap()
                    .len();
                kills += n;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            kills
        });
        (stop, task)
    };
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let bus = r.bus.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    append(&bus, &format!("w{w}"), "E", json!({"w": w, "i": i})).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let got = take(&mut sub, 2000).await;
    killer.0.cancel();
    let kills = killer.1.await.unwrap();
    assert!(kills > 0, "the listener was terminated at least once");
    assert!(r.bus.stats().reconnects.load(std::sync::atomic::Ordering::Relaxed) > 0, "and reconnected");
    let ids: HashSet<_> = got.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 2000);
    for pair in got.windows(2) {
        assert!(pair[0].position < pair[1].position, "log order");
    }
    r.stop().await;
}

#[tokio::test]
async fn a_slow_subscriber_is_told_it_lagged_and_resumes_without_loss() {
    let db = common::test_db().await;
    let r = start(&db, BusOptions { subscriber_queue: 16, ..no_poll() }).await;
    let mut slow = r.bus.subscribe(Filter::default(), Start::Now);
    for i in 0..100 {
        append(&r.bus, "s", "E", json!({"i": i})).await;
    }
    let mut got = Vec::new();
    let last = loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.next()).await.unwrap() {
            Some(Ok(event)) => got.push(event.data["i"].as_i64().unwrap()),
            Some(Err(BusError::Lagged { last })) => break last,
            other => panic!("expected a lag, got {other:?}"),
        }
    };
    assert!(slow.next().await.is_none(), "a lagged subscription ends");
    // Resuming from the reported position out of the store delivers the rest, nothing lost. The
    // resumed subscription may lag again (a burst it cannot queue: the test cluster is shared, and
    // another test's open transaction holds the visibility horizon back, then releases many
    // events at once); a client resumes again from the position it is told, as here.
    let mut from = last;
    let mut resumes = 0;
    while got.len() < 100 {
        resumes += 1;
        assert!(resumes <= 20, "resumed 20 times without catching up");
        let mut resumed = r.bus.subscribe(Filter::default(), Start::After(from));
        while got.len() < 100 {
            match tokio::time::timeout(Duration::from_secs(30), resumed.next()).await.unwrap() {
                Some(Ok(event)) => got.push(event.data["i"].as_i64().unwrap()),
                Some(Err(BusError::Lagged { last })) => {
                    from = last;
                    break;
                }
                other => panic!("expected events or a lag, got {other:?}"),
            }
        }
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    r.stop().await;
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn subscribing_and_dropping_ten_thousand_times_leaves_nothing_behind() {
    let db = common::test_db().await;
    let r = start(&db, no_poll()).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let subscribers = r.bus.subscribers();
    let (mut rss, mut tasks) = (Vec::new(), Vec::new());
    for round in 0..3 {
        // 10,000 live at once, each receiving an event, then all dropped.
        let mut subs: Vec<Subscription> = (0..10_000)
            .map(|i| r.bus.subscribe(Filter { types: vec![format!("T{}", i % 2)], ..Filter::default() }, Start::Now))
            .collect();
        assert_eq!(r.bus.subscribers(), subscribers + 10_000);
        append(&r.bus, "s", "T0", json!(round)).await;
        append(&r.bus, "s", "T1", json!(round)).await;
        for sub in subs.iter_mut() {
            assert_eq!(take(sub, 1).await.len(), 1);
        }
        drop(subs);
        assert_eq!(r.bus.subscribers(), subscribers, "round {round}");
        // Each pooled connection has a driver task; count the rest.
        tasks.push(metrics.num_alive_tasks() - db.store.pool().status().size);
        rss.push(rss_kib());
    }
    // Rounds leave no task behind: subscriptions have none.
    assert_eq!(tasks[1], tasks[0], "{tasks:?}");
    assert_eq!(tasks[2], tasks[0], "{tasks:?}");
    // The first round warms the allocator; later rounds must not keep growing.
    assert!(rss[2] <= rss[1] + 16 * 1024, "memory kept growing: {rss:?} KiB");
    r.stop().await;
}

#[tokio::test]
async fn two_processes_on_one_database_see_each_others_events() {
    let db = common::test_db().await;
    let one = start(&db, no_poll()).await;
    let two = start(&db, no_poll()).await;
    let mut on_one = one.bus.subscribe(Filter::default(), Start::Now);
    let mut on_two = two.bus.subscribe(Filter::default(), Start::Now);
    append(&one.bus, "a", "FromOne", json!(1)).await;
    append(&two.bus, "b", "FromTwo", json!(2)).await;
    for sub in [&mut on_one, &mut on_two] {
        let got = take(sub, 2).await;
        let types: HashSet<_> = got.iter().map(|e| e.event_type.clone()).collect();
        assert_eq!(types, HashSet::from(["FromOne".to_string(), "FromTwo".to_string()]));
    }
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn a_process_alone_sends_no_wake_ups_and_one_that_starts_listening_is_told() {
    let db = common::test_db().await;
    let r = start(&db, no_poll()).await;
    let (watcher, mut heard) = db.listen(flightdeck::bus::CHANNEL).await;
    let mut sub = r.bus.subscribe(Filter::default(), Start::Now);
    // Alone (the watcher is not named as a FlightDeck listener): delivered here, announced nowhere.
    for i in 0..20 {
        append(&r.bus, "alone", "Alone", json!(i)).await;
    }
    take(&mut sub, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(heard.try_recv().is_err(), "a NOTIFY was sent with nobody else listening");
    assert_eq!(r.bus.stats().notifications.load(std::sync::atomic::Ordering::Relaxed), 0, "the bus heard itself");

    // The watcher takes the listener's name right after an append, so the next append is held on
    // an answer from before it: it must still be announced, with nothing appended after it.
    let first = append_n(&r.bus, "alone", "Alone", 1).await;
    watcher.batch_execute(&format!("SET application_name = '{}'", flightdeck::bus::LISTENER_NAME)).await.unwrap();
    let second = append_n(&r.bus, "alone", "Alone", 1).await;
    assert!(second > first);
    loop {
        let note = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await.expect("no wake-up came").unwrap();
        // The first one may be announced too, if the answer was renewed between the two appends.
        let position: Position = note.parse().unwrap();
        assert!(position == first || position == second, "a wake-up for {position}");
        if position == second {
            break;
        }
    }

    // Now that someone listens, each append is announced.
    let third = append_n(&r.bus, "alone", "Alone", 1).await;
    let note = tokio::time::timeout(Duration::from_secs(10), heard.recv()).await.expect("no wake-up came").unwrap();
    assert_eq!(note, third.to_string());
    r.stop().await;
}

#[tokio::test]
async fn shutdown_ends_subscriptions() {
    let db = common::test_db().await;
    let r = start(&db, no_poll()).await;
    let mut sub = r.bus.subscribe(Filter::default(), Start::Now);
    r.shutdown.cancel();
    let end = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap();
    assert!(matches!(end, Some(Err(BusError::Closed))));
    r.stop().await;
}

#[tokio::test]
async fn channels_and_publishing_are_applied_live_and_in_replays() {
    let db = common::test_db().await;
    let routing = flightdeck::bus::Routing::new()
        .with_channels(["FormSubmitted=forms", "Click=ui"])
        .unwrap()
        .publish_only(["PageViewed", "FormSubmitted", "Click"]);
    let r = start(&db, BusOptions { routing, ..no_poll() }).await;
    let channel =
        |names: &[&str]| Filter { channels: names.iter().map(|s| s.to_string()).collect(), ..Filter::default() };
    let mut forms = r.bus.subscribe(channel(&["forms"]), Start::Now);
    let mut default = r.bus.subscribe(channel(&["default"]), Start::Now);
    let mut everything = r.bus.subscribe(Filter::default(), Start::Now);
    for ty in ["PageViewed", "Secret", "FormSubmitted", "Click", "PageViewed"] {
        append(&r.bus, "s", ty, json!({})).await;
    }
    let types =
        |events: Vec<flightdeck::store::RecordedEvent>| events.into_iter().map(|e| e.event_type).collect::<Vec<_>>();
    assert_eq!(types(take(&mut forms, 1).await), vec!["FormSubmitted"]);
    assert_eq!(types(take(&mut default, 2).await), vec!["PageViewed", "PageViewed"]);
    assert_eq!(types(take(&mut everything, 4).await), vec!["PageViewed", "FormSubmitted", "Click", "PageViewed"]);
    // Replays obey the same rules; the unpublished event is still in the store.
    let mut replay = r.bus.subscribe(Filter::default(), Start::Beginning);
    assert_eq!(types(take(&mut replay, 4).await), vec!["PageViewed", "FormSubmitted", "Click", "PageViewed"]);
    assert_eq!(db.store.read_stream("s", 2, 1).await.unwrap()[0].event_type, "Secret");
    r.stop().await;
}

/// Appends `n` events of type `ty` to `stream` in one append; returns the last one's position.
async fn append_n(bus: &Bus, stream: &str, ty: &str, n: usize) -> Position {
    let events: Vec<_> = (0..n).map(|i| NewEvent::new(ty, json!({"i": i}))).collect();
    let appended = bus.append("default", stream, ExpectedVersion::Any, &events).await.unwrap();
    appended.events.last().unwrap().position
}

#[tokio::test]
async fn progress_never_passes_a_matching_event_not_yet_handed_out() {
    let db = common::test_db().await;
    let running = start(&db, no_poll()).await;
    // Pages of the replay hold 500 events: the wanted ones sit inside pages of unwanted ones.
    let first_b = append_n(&running.bus, "other", "B", 600).await;
    let a1 = append_n(&running.bus, "wanted", "A", 1).await;
    append_n(&running.bus, "other", "B", 300).await;
    let a2 = append_n(&running.bus, "wanted", "A", 1).await;
    let last_b = append_n(&running.bus, "other", "B", 450).await;
    assert!(first_b < a1 && a1 < a2 && a2 < last_b);

    let filter = Filter { types: vec!["A".into()], ..Filter::default() };
    let mut sub = running.bus.subscribe(filter, Start::Beginning);
    let progress = sub.progress();
    assert_eq!(progress.get(), None, "nothing looked at before the first poll");
    let got = take(&mut sub, 1).await;
    assert_eq!(got[0].position, a1);
    // The replay has read past A2 (same page) but not handed it out: progress stays before it.
    assert!(progress.get().is_none_or(|p| p < a2), "progress {:?} passed A2 {a2}", progress.get());
    let got = take(&mut sub, 1).await;
    assert_eq!(got[0].position, a2);
    // Nothing more matches: once the stream waits, it has looked through the whole log.
    assert!(tokio::time::timeout(Duration::from_millis(500), sub.next()).await.is_err());
    assert_eq!(progress.get(), Some(last_b));
    // Live, an unwanted event moves it too, with nothing handed out.
    let live_b = append_n(&running.bus, "other", "B", 1).await;
    assert!(tokio::time::timeout(Duration::from_millis(500), sub.next()).await.is_err());
    assert_eq!(progress.get(), Some(live_b));
    drop(sub);
    running.stop().await;
}
