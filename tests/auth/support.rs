//! Helpers: a server with authentication on (HS256 secret plus the RS256 and ES256 test public
//! keys) and a stats projector; tokens good and bad; requests with a token; events on two sites.

use std::time::Duration;

use base64::Engine as _;
use flightdeck::auth::{Action, Auth, Claims, Signer, TokenRequest, Verifier};
use flightdeck::bus::{Bus, BusOptions};
use flightdeck::http::{AppState, LimitsConfig};
use flightdeck::projections::Projections;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::TestDb;
use crate::common::app::App;
use crate::common::ws::WsClient;

/// The server's HS256 secret.
pub const SECRET: &[u8] = b"tests/auth secret: 32 bytes or more, never used for real";

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/auth/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A server like `serve`'s with tokens required: routes, bus, projector.
pub struct Secured {
    pub app: App,
}

impl Secured {
    pub async fn start(db: &TestDb) -> Secured {
        Secured::with_limits(db, LimitsConfig::default()).await
    }

    pub async fn with_limits(db: &TestDb, limits: LimitsConfig) -> Secured {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let bus = Bus::start(db.store.clone(), db.config.clone(), BusOptions::default(), shutdown.clone(), &tasks)
            .await
            .unwrap();
        let projections = Projections::start(bus.clone(), shutdown.clone(), &tasks);
        let verifier = Verifier::new()
            .with_secret(SECRET)
            .with_public_key_pem(&fixture("rsa-public.pem"))
            .unwrap()
            .with_public_key_pem(&fixture("ec-public.pem"))
            .unwrap();
        let state = AppState::with_bus(bus).limits(limits).auth(Auth::tokens(verifier, Some(Signer::hs256(SECRET))));
        state.set_projections(projections.clone());
        Secured { app: App::serve(state, shutdown, tasks).await }
    }

    pub fn url(&self, path: &str) -> String {
        self.app.url(path)
    }

    /// GET `path` with `token` as a bearer token (none if `None`); status and JSON body.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.app.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// POST /api/events with `token`; status and JSON body.
    pub async fn post(&self, body: &Value, token: Option<&str>) -> (u16, Value) {
        let mut request = self.app.http.post(self.url("/api/events")).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Opens `/ws/events` with `token` in the `Authorization` header.
    pub async fn ws(&self, token: Option<&str>) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let url = self.url("/ws/events").replacen("http://", "ws://", 1);
        let mut request = url.into_client_request().unwrap();
        if let Some(token) = token {
            request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        WsClient::connect_request(request).await
    }

    pub async fn stop(self) {
        self.app.stop().await;
    }
}

/// What a test token covers.
#[derive(Clone)]
pub struct Tok {
    pub request: TokenRequest,
}

impl Tok {
    /// A subscribe token for `sites`, valid for an hour.
    pub fn sites(sites: &[&str]) -> Tok {
        Tok {
            request: TokenRequest {
                sites: sites.iter().map(|s| s.to_string()).collect(),
                actions: vec![Action::Subscribe],
                types: None,
                streams: None,
                ttl: Duration::from_secs(3600),
                subject: Some("tests/auth".into()),
            },
        }
    }

    pub fn publish(mut self) -> Tok {
        self.request.actions.push(Action::Publish);
        self
    }

    pub fn only_publish(mut self) -> Tok {
        self.request.actions = vec![Action::Publish];
        self
    }

    pub fn types(mut self, types: &[&str]) -> Tok {
        self.request.types = Some(types.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn streams(mut self, prefixes: &[&str]) -> Tok {
        self.request.streams = Some(prefixes.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn ttl(mut self, ttl: Duration) -> Tok {
        self.request.ttl = ttl;
        self
    }

    /// Signed with the server's secret.
    pub fn sign(&self) -> String {
        Signer::hs256(SECRET).sign(&self.request.claims()).unwrap()
    }

    /// Signed with `signer`.
    pub fn sign_with(&self, signer: &Signer) -> String {
        signer.sign(&self.request.claims()).unwrap()
    }

    fn claims(&self) -> Claims {
        self.request.claims()
    }
}

/// The ways a token can be unacceptable, with the code the server must answer.
#[derive(Debug, Clone, Copy)]
pub enum Bad {
    Missing,
    WrongSecret,
    AlgNone,
    Expired,
}

impl Bad {
    pub const ALL: [Bad; 4] = [Bad::Missing, Bad::WrongSecret, Bad::AlgNone, Bad::Expired];

    /// The token (for `*`, subscribe and publish, so only its flaw can be why it is refused).
    pub fn token(self) -> Option<String> {
        let good = Tok::sites(&["*"]).publish();
        match self {
            Bad::Missing => None,
            Bad::WrongSecret => Some(good.sign_with(&Signer::hs256(b"another secret, just as long as the right one"))),
            Bad::AlgNone => {
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let claims = serde_json::to_vec(&good.claims()).unwrap();
                Some(format!("{}.{}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#), b64.encode(claims)))
            }
            Bad::Expired => {
                let mut claims = good.claims();
                claims.iat -= 7200;
                claims.exp = chrono::Utc::now().timestamp() - 60;
                Some(Signer::hs256(SECRET).sign(&claims).unwrap())
            }
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Bad::Missing => "token_required",
            Bad::WrongSecret | Bad::AlgNone => "invalid_token",
            Bad::Expired => "token_expired",
        }
    }
}

/// One stored event, as the tests know it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seeded {
    pub position: String,
    pub id: String,
    pub site: String,
    pub stream: String,
    pub event_type: String,
}

/// Stores 2 events of each type (`Viewed`, `Clicked`) in streams `<site>-a` and `<site>-b` of each
/// of `sites`, interleaved across sites; returns them in log order.
pub async fn seed(server: &Secured, sites: &[&str]) -> Vec<Seeded> {
    let admin = Tok::sites(&["*"]).publish().sign();
    let mut out = Vec::new();
    for round in 0..2 {
        for stream in ["a", "b"] {
            for site in sites {
                for ty in ["Viewed", "Clicked"] {
                    let stream = format!("{site}-{stream}");
                    let body = json!({"site": site, "stream": stream, "type": ty, "data": {"round": round}});
                    let (status, answer) = server.post(&body, Some(&admin)).await;
                    assert_eq!(status, 201, "{answer}");
                    out.push(appended(&answer["events"][0], ty));
                }
            }
        }
    }
    out
}

/// A stored event's identity from its JSON (an envelope or an ingestion answer).
pub fn seeded(event: &Value) -> Seeded {
    let text = |k: &str| event[k].as_str().unwrap_or_else(|| panic!("no {k} in {event}")).to_string();
    Seeded {
        position: text("position"),
        id: text("id"),
        site: text("site"),
        stream: text("stream"),
        event_type: text("type"),
    }
}

/// Appends a marker event to `site` (stream `<site>-marker`): readers that reach it have seen
/// everything stored before it.
pub async fn marker(server: &Secured, site: &str) -> Seeded {
    let admin = Tok::sites(&["*"]).publish().sign();
    let body = json!({"site": site, "stream": format!("{site}-marker"), "type": "Marker", "data": {}});
    let (status, answer) = server.post(&body, Some(&admin)).await;
    assert_eq!(status, 201, "{answer}");
    appended(&answer["events"][0], "Marker")
}

/// An ingestion answer's event (which does not repeat the type) as a [`Seeded`].
fn appended(event: &Value, ty: &str) -> Seeded {
    let mut with_type = event.clone();
    with_type["type"] = json!(ty);
    seeded(&with_type)
}
