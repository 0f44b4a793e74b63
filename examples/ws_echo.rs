//! An echo server on FlightDeck's WebSocket stack (axum's `ws`, over tungstenite), for the
//! Autobahn conformance suite (`scripts/autobahn.sh`, results in `docs/autobahn.md`).
//!
//! It lives here rather than among the product's routes so that no FlightDeck server ever answers
//! with an echo. It echoes text and binary messages on any path and leaves pings, pongs and the
//! closing handshake to the library, exactly as `/ws/events` does.
//!
//! ```sh
//! cargo run --release --example ws_echo -- 127.0.0.1:9001
//! ```

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::any;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".to_string());
    let app = Router::new().route("/", any(upgrade)).route("/{*path}", any(upgrade));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("echoing WebSocket messages on ws://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

async fn upgrade(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        let reply = match message {
            Message::Text(_) | Message::Binary(_) => message,
            // The library answers pings and close frames; reading on flushes its close reply and
            // then ends the stream.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
