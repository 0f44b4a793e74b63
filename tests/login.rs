//! Secure by default, as a person meets it: a bare `flightdeck serve` prints a one-time login link;
//! following it sets the dashboard's session cookie once; `/` without a session answers 401 with a
//! page saying how to get in; the generated secret is private (0600) and survives a restart, so a
//! token made before the restart still opens the dashboard after it.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::process::{Server, flightdeck, run, scratch_dir, stderr, stdout};
use flightdeck::auth::{Action, Auth, Verifier, secret};
use nix::sys::signal::Signal;
use reqwest::header;

/// A client that shows redirects instead of following them, and keeps no cookies.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The login link a server printed at start.
fn login_link(server: &Server) -> String {
    let log = server.log();
    let at = log.find("/login?token=").unwrap_or_else(|| panic!("no login link in the log:\n{log}"));
    let start = log[..at].rfind("http://").unwrap();
    let end = at + log[at..].find(|c: char| c.is_whitespace()).unwrap_or(log.len() - at);
    log[start..end].to_string()
}

/// The `flightdeck_session=…` pair of a `Set-Cookie` header, and the header itself.
fn session_cookie(response: &reqwest::Response) -> (String, String) {
    let set = response.headers().get(header::SET_COOKIE).expect("a Set-Cookie header").to_str().unwrap().to_string();
    let pair = set.split(';').next().unwrap().trim().to_string();
    assert!(pair.starts_with("flightdeck_session="), "{set}");
    (pair, set)
}

async fn get_dashboard(server: &Server, cookie: Option<&str>) -> (u16, String, reqwest::header::HeaderMap) {
    let mut request = client().get(server.url("/"));
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.text().await.unwrap(), headers)
}

fn start(data_dir: &std::path::Path) -> Server {
    let dir = data_dir.to_path_buf();
    Server::start_with_auth(move |cmd| {
        cmd.arg("--data-dir").arg(dir);
    })
}

#[tokio::test]
async fn a_bare_serve_prints_a_one_time_login_link_and_keeps_its_secret_across_restarts() {
    let scratch = scratch_dir();
    let data_dir = scratch.path().join("data");
    let server = start(&data_dir);
    server.wait_ready().await;

    // The link is printed after the address line, on the server's own address.
    let log = server.log();
    let link = login_link(&server);
    assert!(link.starts_with(&server.url("/login?token=")), "{link}");
    assert!(log.find("listening on http://").unwrap() < log.find("/login?token=").unwrap(), "{log}");
    assert!(!log.contains("AUTHENTICATION IS OFF"), "{log}");

    // Without a session, `/` is the login page: 401, self-contained, saying how to get in.
    let (status, page, headers) = get_dashboard(&server, None).await;
    assert_eq!(status, 401, "{page}");
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    assert!(headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(page.contains("You are not logged in."), "{page}");
    assert!(page.contains("flightdeck token create --login --site '*'"), "{page}");
    assert!(!page.to_ascii_lowercase().contains("<script"), "the login page runs no script: {page}");
    assert!(!page.contains("{{reason}}"), "{page}");
    // The stylesheet it uses stays public.
    let css = client().get(server.url("/assets/dashboard/dashboard.css")).send().await.unwrap();
    assert_eq!(css.status(), 200);

    // Following the link: 303 to the dashboard with the session cookie…
    let response = client().get(&link).send().await.unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[header::LOCATION], "/");
    let (cookie, set_cookie) = session_cookie(&response);
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set_cookie.contains(attribute), "{attribute} in {set_cookie}");
    }
    // …which opens the dashboard.
    let (status, page, _) = get_dashboard(&server, Some(&cookie)).await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"connection\""), "{page}");
    // A damaged session is not one.
    let (status, page, _) = get_dashboard(&server, Some(&format!("{cookie}x"))).await;
    assert_eq!(status, 401);
    assert!(page.contains("not valid on this server"), "{page}");

    // The same link a second time: refused, no cookie.
    let again = client().get(&link).send().await.unwrap();
    assert_eq!(again.status(), 401);
    assert!(again.headers().get(header::SET_COOKIE).is_none());
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_token", "{body}");

    // The secret: generated in the data directory, private.
    let secret_file = data_dir.join("auth-secret");
    let mode = std::fs::metadata(&secret_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the secret file's mode");
    let secret_before = std::fs::read(&secret_file).unwrap();

    // A reading token made by the CLI (another process, the same secret file) before the restart.
    let out = run(flightdeck().arg("--data-dir").arg(&data_dir).args([
        "token",
        "create",
        "--site",
        "*",
        "--subscribe",
        "--ttl",
        "1h",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let token = stdout(&out).trim().to_string();
    assert!(server.stop(Signal::SIGTERM), "serve stops cleanly");

    // Restarted on the same data directory: the same secret, so the old token and the old
    // session still work; a new one-time link is printed.
    let server = start(&data_dir);
    server.wait_ready().await;
    assert_eq!(std::fs::read(&secret_file).unwrap(), secret_before, "the secret survives the restart");
    let (status, _, _) = get_dashboard(&server, Some(&format!("flightdeck_session={token}"))).await;
    assert_eq!(status, 200, "a token made before the restart opens the dashboard after it");
    let (status, _, _) = get_dashboard(&server, Some(&cookie)).await;
    assert_eq!(status, 200, "the session survives the restart");
    // And on the API (reads check tokens): with it, an answer; without, 401.
    let read = client().get(server.url("/api/streams/nothing-here")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(read.status(), 200, "the token reads after the restart");
    let anonymous = client().get(server.url("/api/streams/nothing-here")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let auth = Auth::tokens(Verifier::new().with_secret(&secret::load(&secret_file).unwrap()), None);
    let claims = auth.verify(&token).unwrap();
    assert!(claims.allows(Action::Subscribe));
    let new_link = login_link(&server);
    assert_ne!(new_link, link);
    let response = client().get(&new_link).send().await.unwrap();
    assert_eq!(response.status(), 303, "the new link works");
    assert!(server.stop(Signal::SIGTERM));
}

#[tokio::test]
async fn without_auth_the_dashboard_is_open_and_the_server_says_so() {
    let scratch = scratch_dir();
    let data_dir = scratch.path().join("data");
    let server = Server::start(|cmd| {
        cmd.arg("--data-dir").arg(&data_dir);
    });
    server.wait_ready().await;
    assert!(server.log().contains("AUTHENTICATION IS OFF"), "{}", server.log());
    assert!(!server.log().contains("/login?token="), "no login link without auth");
    let (status, page, _) = get_dashboard(&server, None).await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"connection\""), "{page}");
    assert!(server.stop(Signal::SIGTERM));
}
