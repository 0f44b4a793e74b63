//! A small Server-Sent Events client over a real socket (reqwest), for tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

/// One frame as received.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
}

pub struct SseClient {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseClient {
    /// Opens `url`; panics unless the answer is a 200 event stream.
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> SseClient {
        let mut request = reqwest::Client::new().get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseClient { body: response.bytes_stream().boxed(), buffer: String::new() }
    }

    /// The next frame (comment-only frames skipped), or None when the server ended the stream.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                let mut frame = Frame::default();
                let mut any = false;
                for line in raw.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => frame.id = Some(value.to_string()),
                        "event" => frame.event = Some(value.to_string()),
                        "retry" => frame.retry = value.parse().ok(),
                        "data" => {
                            if !frame.data.is_empty() {
                                frame.data.push('\n');
                            }
                            frame.data.push_str(value);
                        }
                        _ => continue,
                    }
                    any = true;
                }
                if any {
                    return Some(frame);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.body.next()).await.expect("SSE stalled")?;
            self.buffer.push_str(std::str::from_utf8(&chunk.ok()?).unwrap());
        }
    }

    /// The next `n` event frames (frames with data), parsed as JSON envelopes.
    pub async fn events(&mut self, n: usize) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        while out.len() < n {
            let frame = self.next().await.unwrap_or_else(|| panic!("stream ended after {} of {n}", out.len()));
            if frame.data.is_empty() || frame.event.as_deref() == Some("subscribed") {
                continue;
            }
            assert_eq!(frame.event, None, "no event: line");
            out.push((frame.id.unwrap(), serde_json::from_str(&frame.data).unwrap()));
        }
        out
    }
}
