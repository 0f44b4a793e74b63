//! A WebSocket client for `/ws/events` tests: tokio-tungstenite over a real loopback socket, with
//! helpers that pick the frames a test waits for and keep the others for later.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Longest wait for any one frame: only there so a broken test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(60);

pub struct WsClient {
    socket: WebSocketStream<TcpStream>,
    /// JSON frames received but not yet asked for, in arrival order.
    backlog: VecDeque<Value>,
    /// Server pings seen (tungstenite answers them by itself while we read).
    pub pings: usize,
}

/// How the server closed the connection.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

impl WsClient {
    /// Connects to `/ws/events` on `base` (`http://127.0.0.1:port`).
    pub async fn connect(base: &str) -> WsClient {
        Self::connect_with(base, None).await
    }

    /// Connects with the client socket's receive buffer set to `recv_buffer` bytes (which also
    /// turns off the kernel's autotuning), so that a client that does not read blocks the server
    /// after a few megabytes instead of tens.
    pub async fn connect_with(base: &str, recv_buffer: Option<u32>) -> WsClient {
        let addr = base.strip_prefix("http://").unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
        let (socket, response) = tokio_tungstenite::client_async(format!("ws://{addr}/ws/events"), tcp).await.unwrap();
        assert_eq!(response.status(), 101);
        WsClient { socket, backlog: VecDeque::new(), pings: 0 }
    }

    /// Connects with a prepared handshake request (e.g. with an `Authorization` header or an
    /// `access_token` query); the handshake's error (such as an HTTP 401) when it is refused.
    pub async fn connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let addr = format!("{}:{}", request.uri().host().unwrap(), request.uri().port_u16().unwrap());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (socket, _) = tokio_tungstenite::client_async(request, tcp).await?;
        Ok(WsClient { socket, backlog: VecDeque::new(), pings: 0 })
    }

    pub async fn send(&mut self, frame: Value) {
        self.socket.send(Message::text(frame.to_string())).await.unwrap();
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.unwrap();
    }

    /// The next data or close message from the wire (pings counted and skipped); `None` when the
    /// connection ended without a close frame.
    async fn read(&mut self) -> Option<Message> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next()).await.expect("no frame from the server");
            match message {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(other)) => return Some(other),
            }
        }
    }

    /// The next JSON frame (from the backlog first); panics on a close.
    pub async fn next(&mut self) -> Value {
        if let Some(value) = self.backlog.pop_front() {
            return value;
        }
        self.next_from_wire().await.unwrap_or_else(|closed| panic!("connection closed: {closed:?}"))
    }

    /// The next JSON frame from the wire, or how the connection was closed.
    pub async fn next_from_wire(&mut self) -> Result<Value, Closed> {
        match self.read().await {
            Some(Message::Text(text)) => Ok(serde_json::from_str(&text).unwrap()),
            Some(Message::Close(frame)) => Err(Closed {
                code: frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005),
                reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
            }),
            Some(other) => panic!("unexpected message {other:?}"),
            None => Err(Closed { code: 1006, reason: "no close frame".into() }),
        }
    }

    /// Waits for the first frame matching `want`, keeping the frames before it for later.
    pub async fn until(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&want) {
            return self.backlog.remove(i).unwrap();
        }
        loop {
            let value = self.next_from_wire().await.unwrap_or_else(|closed| panic!("connection closed: {closed:?}"));
            if want(&value) {
                return value;
            }
            self.backlog.push_back(value);
        }
    }

    /// The answer with this op and id (`subscribed`, `unsubscribed`, `pong`, `error`).
    pub async fn answer(&mut self, op: &str, id: &str) -> Value {
        let (op, id) = (op.to_string(), id.to_string());
        self.until(move |v| v["op"] == op && v["id"] == id).await
    }

    /// Subscribes with `id` and the extra fields of `options`; returns the `subscribed` answer.
    pub async fn subscribe(&mut self, id: &str, options: Value) -> Value {
        let mut frame = json!({"op": "subscribe", "id": id});
        frame.as_object_mut().unwrap().extend(options.as_object().unwrap().clone());
        self.send(frame).await;
        let answer = self.until(|v| v["id"] == id && (v["op"] == "subscribed" || v["op"] == "error")).await;
        assert_eq!(answer["op"], "subscribed", "{answer}");
        answer
    }

    /// The next `n` event envelopes of subscription `sub` (batches flattened), keeping other frames.
    pub async fn events(&mut self, sub: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        while out.len() < n {
            let sub = sub.to_string();
            let frame = self.until(move |v| v["sub"] == sub).await;
            out.extend(envelopes(&frame));
        }
        assert_eq!(out.len(), n, "more events than expected for {sub}");
        out
    }

    /// Reads until the server's close frame, returning the JSON frames before it (backlog first).
    pub async fn until_closed(&mut self) -> (Vec<Value>, Closed) {
        let mut frames: Vec<Value> = self.backlog.drain(..).collect();
        loop {
            match self.next_from_wire().await {
                Ok(value) => frames.push(value),
                Err(closed) => return (frames, closed),
            }
        }
    }
}

/// The envelopes in an `event` or `batch` frame.
pub fn envelopes(frame: &Value) -> Vec<Value> {
    match frame["op"].as_str() {
        Some("event") => vec![frame["event"].clone()],
        Some("batch") => frame["events"].as_array().unwrap().clone(),
        _ => panic!("not an event frame: {frame}"),
    }
}

/// The `data` of each envelope, as integers.
pub fn numbers(envelopes: &[Value]) -> Vec<i64> {
    envelopes.iter().map(|e| e["data"]["n"].as_i64().unwrap_or_else(|| panic!("no data.n in {e}"))).collect()
}
