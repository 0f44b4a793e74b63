//! The OpenAPI description and the security headers, over a real socket (no database needed).
//!
//! The description (`assets/openapi.json`, served at `/api/openapi.json`) must parse and describe
//! every route the router has: the routes are read from the `.route(…)` calls in `src/http/`, so a
//! new route without a description fails here. schemathesis checks the answers against it
//! (`scripts/api-fuzz.sh`). The dashboard must be served with its Content Security Policy and the
//! page must need no inline script; every answer carries `X-Content-Type-Options: nosniff`.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::app::App;
use flightdeck::auth::Auth;
use flightdeck::http::AppState;
use flightdeck::store::Store;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A server whose database does not exist: static routes and the description need none.
async fn app_without_database() -> App {
    let config: tokio_postgres::Config = "host=/nonexistent-flightdeck-test dbname=none".parse().unwrap();
    let state = AppState::new(Store::new(config, 1).unwrap()).auth(Auth::disabled());
    App::serve(state, CancellationToken::new(), TaskTracker::new()).await
}

/// `(METHOD, path)` of every `.route("path", get(…).post(…))` in the Rust files under `dir`, with
/// axum's `{*rest}` written as OpenAPI's `{rest}`.
fn routes_in_source(dir: &Path, out: &mut BTreeSet<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            routes_in_source(&path, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        let mut rest = source.as_str();
        while let Some(at) = rest.find(".route(\"") {
            rest = &rest[at + ".route(\"".len()..];
            let (route, after) = rest.split_once('"').unwrap();
            // The handlers: up to the `)` that closes `.route(`.
            let mut depth = 1;
            let end = after
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap();
            let handlers = &after[..end];
            let openapi_path = route.replace("{*", "{");
            for method in ["get", "post", "put", "patch", "delete", "options", "head"] {
                let called = handlers
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| i == 0 || !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
                if called {
                    out.insert((method.to_uppercase(), openapi_path.clone()));
                }
            }
        }
    }
}

#[tokio::test]
async fn the_openapi_description_is_served_and_describes_every_route() {
    let app = app_without_database().await;
    let response = app.http.get(app.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    let mut described = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            described.insert((method.to_uppercase(), path.clone()));
        }
    }
    let mut routed = BTreeSet::new();
    routes_in_source(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http"), &mut routed);
    // The scan itself must work: these are certainly routed.
    for known in [
        ("POST", "/api/events"),
        ("GET", "/api/events"),
        ("GET", "/api/events/{id}"),
        ("GET", "/api/streams/{stream}"),
        ("GET", "/ws/events"),
        ("POST", "/api/track"),
        ("OPTIONS", "/api/track"),
        ("GET", "/api/stats"),
        ("GET", "/api/stats/stream"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/api/openapi.json"),
        ("GET", "/"),
        ("GET", "/assets/{path}"),
        ("GET", "/flightdeck.js"),
        ("GET", "/track.js"),
    ] {
        assert!(routed.contains(&(known.0.to_string(), known.1.to_string())), "the scan missed {known:?}: {routed:?}");
    }
    let undescribed: Vec<_> = routed.difference(&described).collect();
    assert!(undescribed.is_empty(), "routes missing from assets/openapi.json: {undescribed:?}");
    let unrouted: Vec<_> = described.difference(&routed).collect();
    assert!(unrouted.is_empty(), "described in assets/openapi.json but not routed: {unrouted:?}");

    // Every operation has an id and answers; every $ref resolves.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(operation["operationId"].is_string(), "{method} {path}: operationId");
            assert!(!operation["responses"].as_object().unwrap().is_empty(), "{method} {path}: responses");
        }
    }
    let text = serde_json::to_string(&doc).unwrap();
    for (at, _) in text.match_indices("\"$ref\":\"#/") {
        let target = &text[at + "\"$ref\":\"#/".len()..];
        let target = &target[..target.find('"').unwrap()];
        let found = target.split('/').try_fold(&doc, |node, key| node.get(key));
        assert!(found.is_some(), "$ref #/{target} resolves to nothing");
    }
    app.stop().await;
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_content_security_policy_and_no_inline_script() {
    let app = app_without_database().await;
    let response = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(header("content-type").as_deref(), Some("text/html; charset=utf-8"));
    let csp = header("content-security-policy").expect("a Content-Security-Policy");
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    for wanted in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(directives.contains(&wanted), "{wanted:?} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(header("referrer-policy").as_deref(), Some("same-origin"));
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));

    // What the policy forbids, the page must not need: every script is a file of this origin, and
    // no element carries an inline handler, a `javascript:` URL or a style attribute.
    let page = response.text().await.unwrap();
    let lower = page.to_ascii_lowercase();
    for (at, _) in lower.match_indices("<script") {
        let tag = &lower[at..at + lower[at..].find('>').unwrap()];
        assert!(tag.contains(" src=\"/"), "an inline or foreign script: {tag}");
    }
    assert!(!lower.contains("javascript:"), "a javascript: URL");
    assert!(!lower.contains(" style="), "an inline style attribute");
    for (at, _) in lower.match_indices(" on") {
        let name: String = lower[at + 1..].chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        assert!(!lower[at + 1 + name.len()..].starts_with('='), "an inline handler {name}=");
    }

    // The files it loads are all served, as what they are.
    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in page.match_indices(attribute) {
            let url = &page[at + attribute.len()..];
            let url = &url[..url.find('"').unwrap()];
            if url.starts_with("/assets/") {
                assets.push(url.to_string());
            }
        }
    }
    assert!(assets.len() >= 4, "{assets:?}");
    for asset in assets {
        let response = app.http.get(app.url(&asset)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff", "{asset}");
    }
    app.stop().await;
}

#[tokio::test]
async fn every_answer_says_nosniff() {
    let app = app_without_database().await;
    // (path, the content type it must be served as)
    let cases = [
        ("/flightdeck.js", "text/javascript; charset=utf-8"),
        ("/track.js", "text/javascript; charset=utf-8"),
        ("/assets/dashboard/dashboard.js", "text/javascript; charset=utf-8"),
        ("/assets/dashboard/dashboard.css", "text/css; charset=utf-8"),
        ("/assets/dashboard/icon.svg", "image/svg+xml"),
        ("/api/openapi.json", "application/json"),
        ("/healthz", "application/json"),
        ("/metrics", "text/plain; version=0.0.4; charset=utf-8"),
        ("/readyz", "application/json"),
        ("/api/events/x", "application/json"),
        ("/assets/nothing.js", "text/plain; charset=utf-8"),
    ];
    for (path, content_type) in cases {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    let response = app.http.post(app.url("/api/track")).body("{}").send().await.unwrap();
    assert_eq!(response.headers()["x-content-type-options"], "nosniff", "POST /api/track");
    app.stop().await;
}
