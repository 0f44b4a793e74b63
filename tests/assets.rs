//! `GET /flightdeck.js` over a real socket: served as a JavaScript module (even before the database is
//! reachable), revalidated by ETag, and it exports `subscribe`. The client's behaviour is tested in
//! Chromium by `tests/browser/`.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::app::App;
use flightdeck::auth::Auth;
use flightdeck::http::AppState;
use flightdeck::store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test]
async fn the_javascript_client_is_served_as_a_module() {
    // A database that does not exist: the client must not depend on one.
    let config: tokio_postgres::Config = "host=/nonexistent-flightdeck-test dbname=none".parse().unwrap();
    let state = AppState::new(Store::new(config, 1).unwrap()).auth(Auth::disabled());
    let app = App::serve(state, CancellationToken::new(), TaskTracker::new()).await;

    let response = app.http.get(app.url("/flightdeck.js")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(header("content-type").as_deref(), Some("text/javascript; charset=utf-8"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header("access-control-allow-origin").as_deref(), Some("*"));
    let etag = header("etag").expect("an ETag");
    let body = response.text().await.unwrap();
    assert!(body.contains("export function subscribe("), "exports subscribe");
    assert!(body.contains("export function connect("), "exports connect");
    assert_eq!(body, include_str!("../assets/flightdeck.js"), "the file, byte for byte");

    let again = app.http.get(app.url("/flightdeck.js")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(again.status(), 304, "unchanged: not sent again");
    assert_eq!(again.headers().get("etag").unwrap().to_str().unwrap(), etag);
    assert!(again.text().await.unwrap().is_empty());
    let other = app.http.get(app.url("/flightdeck.js")).header("if-none-match", "\"other\"").send().await.unwrap();
    assert_eq!(other.status(), 200);

    app.stop().await;
}
