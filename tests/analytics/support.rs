//! Helpers: a server with a running projector, tracker batches, and counts computed straight from
//! `flightdeck.events` to compare the projections with.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flightdeck::auth::Auth;
use flightdeck::bus::{Bus, BusOptions};
use flightdeck::http::AppState;
use flightdeck::projections::Projections;
use flightdeck::store::Position;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::TestDb;
use crate::common::app::App;

/// A server like `serve`'s: routes, bus and the stats projector.
pub struct Analytics {
    pub app: App,
    pub projections: Projections,
}

impl Analytics {
    pub async fn start(db: &TestDb) -> Analytics {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let bus = Bus::start(db.store.clone(), db.config.clone(), BusOptions::default(), shutdown.clone(), &tasks)
            .await
            .unwrap();
        let projections = Projections::start(bus.clone(), shutdown.clone(), &tasks);
        let state = AppState::with_bus(bus).auth(Auth::disabled());
        state.set_projections(projections.clone());
        Analytics { app: App::serve(state, shutdown, tasks).await, projections }
    }

    /// POSTs a tracker batch as `text/plain` (what sendBeacon sends) from `common::sites::ORIGIN`
    /// (register the site first: `app.register_sites`); returns status and body.
    pub async fn track(&self, site: &str, session: &str, events: Vec<Value>) -> (u16, Value) {
        track(&self.app, site, session, events).await
    }

    /// GET /api/stats with `query`; panics unless 200.
    pub async fn stats(&self, query: &str) -> Value {
        let (status, body) = self.app.get(&format!("/api/stats?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        body
    }

    /// Waits until the projector has applied every tracker event stored so far.
    pub async fn caught_up(&self, db: &TestDb) {
        caught_up(db, &self.projections).await;
    }

    pub async fn stop(self) {
        self.app.stop().await;
    }
}

pub async fn track(app: &App, site: &str, session: &str, events: Vec<Value>) -> (u16, Value) {
    let body = json!({"site": site, "session": session, "events": events}).to_string();
    let r = app.http.post(app.url("/api/track")).header("content-type", "text/plain;charset=UTF-8");
    let r = r.header("origin", crate::common::sites::ORIGIN).body(body);
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn event(kind: &str, data: Value) -> Value {
    json!({"id": uuid::Uuid::now_v7().to_string(), "type": kind, "data": data})
}

pub fn page(path: &str) -> Value {
    event("PageViewed", json!({"path": path, "title": format!("Title of {path}"), "viewport": {"w": 1280, "h": 800}}))
}

pub fn click(element: &str) -> Value {
    event("ElementInteraction", json!({"element": element, "action": "click", "path": "/"}))
}

pub fn form(name: &str, fields: &[&str]) -> Value {
    event("FormSubmitted", json!({"form": name, "fields": fields}))
}

/// The position of the last tracker event in the log, if any.
pub async fn last_tracker_position(db: &TestDb) -> Option<Position> {
    let client = db.connect().await;
    let row = client
        .query_opt(
            "SELECT flightdeck.format_position(xid, seq) FROM flightdeck.events WHERE stream_id LIKE 'visit-%' \
             ORDER BY xid DESC, seq DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    row.map(|r| r.get::<_, String>(0).parse().unwrap())
}

pub async fn caught_up(db: &TestDb, projections: &Projections) {
    let Some(last) = last_tracker_position(db).await else { return };
    let waited = tokio::time::timeout(Duration::from_secs(60), projections.wait_for(last)).await;
    assert!(matches!(waited, Ok(true)), "the projector never reached {last} (at {})", projections.position());
}

/// What the projections should say, counted from the raw log with SQL.
#[derive(Debug, Default, PartialEq)]
pub struct Raw {
    pub totals: [i64; 3],
    pub pages: BTreeMap<String, i64>,
    pub elements: BTreeMap<String, i64>,
    pub forms: BTreeMap<String, i64>,
    pub per_minute: BTreeMap<DateTime<Utc>, [i64; 3]>,
    pub unique_sessions: i64,
}

/// Counts the tracker's events of `site` (all sites if `None`) straight from `flightdeck.events`.
pub async fn raw(db: &TestDb, site: Option<&str>) -> Raw {
    let client = db.connect().await;
    // What counts: the tracker's types on visit- streams, with site, session and the type's key as strings.
    let scope = "stream_id LIKE 'visit-%' AND type IN ('PageViewed', 'ElementInteraction', 'FormSubmitted') \
                 AND jsonb_typeof(data->'site') = 'string' AND jsonb_typeof(data->'session') = 'string' \
                 AND jsonb_typeof(data->CASE type WHEN 'PageViewed' THEN 'path' WHEN 'ElementInteraction' \
                     THEN 'element' ELSE 'form' END) = 'string' \
                 AND ($1::text IS NULL OR data->>'site' = $1)";
    let mut raw = Raw::default();
    for (kind, key, map) in [
        ("PageViewed", "path", &mut raw.pages),
        ("ElementInteraction", "element", &mut raw.elements),
        ("FormSubmitted", "form", &mut raw.forms),
    ] {
        let sql = format!(
            "SELECT data->>'{key}', count(*) FROM flightdeck.events WHERE {scope} AND type = '{kind}' GROUP BY 1"
        );
        for row in client.query(&sql, &[&site]).await.unwrap() {
            map.insert(row.get(0), row.get(1));
        }
    }
    let sql = format!(
        "SELECT date_trunc('minute', created_at, 'UTC'), count(*) FILTER (WHERE type = 'PageViewed'), \
         count(*) FILTER (WHERE type = 'ElementInteraction'), count(*) FILTER (WHERE type = 'FormSubmitted') \
         FROM flightdeck.events WHERE {scope} GROUP BY 1"
    );
    for row in client.query(&sql, &[&site]).await.unwrap() {
        let counts = [row.get(1), row.get(2), row.get(3)];
        for (total, n) in raw.totals.iter_mut().zip(counts) {
            *total += n;
        }
        raw.per_minute.insert(row.get(0), counts);
    }
    let sql = format!("SELECT count(DISTINCT (data->>'site', data->>'session')) FROM flightdeck.events WHERE {scope}");
    raw.unique_sessions = client.query_one(&sql, &[&site]).await.unwrap().get(0);
    raw
}

/// The same numbers, as the stats API reports them over a range covering every event.
pub fn reported(stats: &Value) -> Raw {
    let map = |list: &str, key: &str, count: &str| -> BTreeMap<String, i64> {
        stats[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e[key].as_str().unwrap().to_string(), e[count].as_i64().unwrap()))
            .collect()
    };
    let totals = &stats["totals"];
    Raw {
        totals: [
            totals["PageViewed"].as_i64().unwrap(),
            totals["ElementInteraction"].as_i64().unwrap(),
            totals["FormSubmitted"].as_i64().unwrap(),
        ],
        pages: map("pageViews", "path", "count"),
        elements: map("interactions", "element", "count"),
        forms: map("formSubmissions", "form", "count"),
        per_minute: stats["perMinute"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let minute = m["minute"].as_str().unwrap().parse().unwrap();
                let counts = [&m["pageViews"], &m["interactions"], &m["formSubmissions"]].map(|v| v.as_i64().unwrap());
                (minute, counts)
            })
            .collect(),
        unique_sessions: stats["uniqueSessions"].as_i64().unwrap(),
    }
}

/// A query string covering the last `minutes` minutes and the next one, listing everything.
pub fn everything(site: Option<&str>) -> String {
    let now = Utc::now();
    let from = (now - chrono::TimeDelta::hours(3)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (now + chrono::TimeDelta::minutes(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let site = site.map(|s| format!("&site={s}")).unwrap_or_default();
    format!("from={from}&to={to}&top=1000{site}")
}

/// Asserts that the stats API's numbers equal those counted from the raw log, for every site
/// and for all together.
pub async fn assert_exact(analytics: &Analytics, db: &TestDb, sites: &[&str]) {
    for site in sites.iter().map(|s| Some(*s)).chain([None]) {
        let stats = analytics.stats(&everything(site)).await;
        let want = raw(db, site).await;
        assert!(want.totals[0] > 0, "{site:?}: nothing to compare");
        assert_eq!(reported(&stats), want, "{site:?}: projections vs the raw log");
    }
}

/// Registers the demo's sites, then runs the demo generator in-process against `app` for `seconds`.
pub async fn demo_traffic(app: &App, rate: u32, sites: usize, seconds: f64) -> u64 {
    flightdeck::demo::register(&app.store, sites).await.unwrap();
    app.sites.invalidate();
    let options = flightdeck::demo::DemoOptions {
        url: app.base.clone(),
        rate,
        sites,
        duration: Some(Duration::from_secs_f64(seconds)),
    };
    let done = flightdeck::demo::run(&options, CancellationToken::new(), |_, _| {}).await.unwrap();
    assert_eq!(done.errors, 0, "{done:?}");
    done.events
}
