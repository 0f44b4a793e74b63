//! A minimal HTTP/1.1 client for the client benchmarks (`bench delivery`, `bench ingest`): one
//! keep-alive TCP connection per client, JSON POSTs, and Server-Sent Events streams.
//!
//! Hand-rolled (parsing in [`super::wire`]) so that thousands of streams cost a few KiB each and
//! the client spends little CPU on a machine it shares with the server it measures.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::wire::{Chunked, Frame, ResponseHead, ServerUrl, WireError, parse_frames, parse_head};

/// Why a client benchmark could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum ClientBenchError {
    /// Arguments the benchmark cannot work with, with the reason.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached.
    #[error("cannot connect to the server at {addr}: {source} (is `flightdeck serve` running there?)")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why not.
        source: std::io::Error,
    },
    /// A connection failed while in use.
    #[error("connection to the server failed: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent something this client does not understand.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The server answered with an unexpected status.
    #[error("the server answered {status} to {what}: {body}")]
    Status {
        /// What was asked.
        what: String,
        /// The status code.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// The measurement itself went wrong (e.g. subscribers could not all connect).
    #[error("{0}")]
    Failed(String),
}

/// Where the server is: its URL, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    /// The parsed URL.
    pub url: ServerUrl,
    /// The resolved socket address.
    pub addr: SocketAddr,
    /// `Authorization: Bearer …\r\n` for a server that requires tokens, or nothing.
    authorization: String,
}

impl Target {
    /// Parses and resolves `url` (`http://host:port`).
    pub async fn resolve(url: &str) -> Result<Self, ClientBenchError> {
        let url: ServerUrl = url.parse().map_err(|e| ClientBenchError::Usage(format!("--url {e}")))?;
        let addr = tokio::net::lookup_host(&url.authority)
            .await
            .map_err(|source| ClientBenchError::Connect { addr: url.authority.clone(), source })?
            .next()
            .ok_or_else(|| ClientBenchError::Usage(format!("--url: {} resolves to no address", url.authority)))?;
        Ok(Target { url, addr, authorization: String::new() })
    }

    /// Sends `token` with every request (`--token`: a server started without
    /// `--insecure-no-auth` requires one; its `--max-streams-per-token` must allow the subscribers).
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.authorization = token.map(|t| format!("Authorization: Bearer {}\r\n", t.trim())).unwrap_or_default();
        self
    }

    /// The full path of `path` (which starts with `/`) under the URL's base path.
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.url.base_path)
    }
}

/// Microseconds since the Unix epoch on the wall clock (the clock PostgreSQL's timestamps use).
pub fn wall_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// One keep-alive HTTP/1.1 connection.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    host: String,
    /// The `Authorization` header line, if any.
    authorization: String,
    /// Bytes read and not yet used.
    buf: Vec<u8>,
    /// The request being written (kept to reuse its allocation).
    out: Vec<u8>,
    /// The server said it would close the connection after the last response.
    closing: bool,
}

impl Connection {
    /// Connects to `target`.
    pub async fn open(target: &Target) -> Result<Self, ClientBenchError> {
        let stream = TcpStream::connect(target.addr)
            .await
            .map_err(|source| ClientBenchError::Connect { addr: target.addr.to_string(), source })?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            host: target.url.authority.clone(),
            authorization: target.authorization.clone(),
            buf: Vec::with_capacity(1024),
            out: Vec::with_capacity(256),
            closing: false,
        })
    }

    /// Whether the server announced it will close this connection (open a new one).
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// POSTs `body` as JSON to `path`; returns the status and the response body.
    pub async fn post_json(&mut self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), ClientBenchError> {
        self.out.clear();
        self.out.extend_from_slice(
            format!(
                "POST {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                self.host,
                self.authorization,
                body.len()
            )
            .as_bytes(),
        );
        self.out.extend_from_slice(body);
        self.exchange().await
    }

    /// GETs `path`; returns the status and the response body.
    pub async fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>), ClientBenchError> {
        self.out.clear();
        self.out.extend_from_slice(
            format!("GET {path} HTTP/1.1\r\nHost: {}\r\n{}\r\n", self.host, self.authorization).as_bytes(),
        );
        self.exchange().await
    }

    /// Sends the request in `out` and reads the whole response.
    async fn exchange(&mut self) -> Result<(u16, Vec<u8>), ClientBenchError> {
        self.stream.write_all(&self.out).await?;
        let head = self.read_head().await?;
        self.closing |= head.close;
        let body = if head.chunked {
            let mut decoder = Chunked::default();
            let mut body = Vec::new();
            loop {
                let used = decoder.decode(&self.buf, &mut body)?;
                self.buf.drain(..used);
                if decoder.is_done() {
                    break body;
                }
                self.fill().await?;
            }
        } else {
            let len = head.content_length.unwrap_or(0);
            while self.buf.len() < len {
                self.fill().await?;
            }
            self.buf.drain(..len).collect()
        };
        Ok((head.status, body))
    }

    /// Reads more bytes into the buffer; end of stream is an error.
    async fn fill(&mut self) -> Result<(), ClientBenchError> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(4096);
        }
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            _ => Ok(()),
        }
    }

    async fn read_head(&mut self) -> Result<ResponseHead, ClientBenchError> {
        loop {
            if let Some((head, len)) = parse_head(&self.buf)? {
                self.buf.drain(..len);
                return Ok(head);
            }
            self.fill().await?;
        }
    }
}

/// An open Server-Sent Events stream.
#[derive(Debug)]
pub struct SseStream {
    conn: Connection,
    /// `Some` when the body is chunked.
    chunked: Option<Chunked>,
    /// Body bytes, decoded, not yet parsed into frames.
    decoded: Vec<u8>,
    /// No read yet: body bytes may have arrived with the head.
    fresh: bool,
}

impl SseStream {
    /// Sends `GET path_and_query` and checks for a `200` event stream.
    pub async fn open(target: &Target, path_and_query: &str) -> Result<Self, ClientBenchError> {
        let mut conn = Connection::open(target).await?;
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {}\r\n{}Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
            conn.host, conn.authorization
        );
        conn.stream.write_all(request.as_bytes()).await?;
        let head = tokio::time::timeout(Duration::from_secs(30), conn.read_head())
            .await
            .map_err(|_| ClientBenchError::Failed("the SSE response head did not arrive within 30 s".into()))??;
        if head.status != 200 {
            let body = String::from_utf8_lossy(&conn.buf[..conn.buf.len().min(300)]).into_owned();
            return Err(ClientBenchError::Status { what: format!("GET {path_and_query}"), status: head.status, body });
        }
        let chunked = head.chunked.then(Chunked::default);
        Ok(SseStream { conn, chunked, decoded: Vec::with_capacity(512), fresh: true })
    }

    /// Waits for bytes, then passes every complete frame to `each` together with the wall-clock
    /// time (µs) at which the bytes were read. Returns `false` once the stream has ended.
    pub async fn read_frames(&mut self, mut each: impl FnMut(Frame<'_>, i64)) -> Result<bool, ClientBenchError> {
        if self.conn.buf.capacity() - self.conn.buf.len() < 512 {
            self.conn.buf.reserve(2048);
        }
        // Bytes that came with the response head are parsed before waiting for more.
        let n = if self.fresh && !self.conn.buf.is_empty() {
            self.conn.buf.len()
        } else {
            self.conn.stream.read_buf(&mut self.conn.buf).await?
        };
        self.fresh = false;
        let now = wall_micros();
        match &mut self.chunked {
            Some(decoder) => {
                let used = decoder.decode(&self.conn.buf, &mut self.decoded)?;
                self.conn.buf.drain(..used);
            }
            None => {
                self.decoded.extend_from_slice(&self.conn.buf);
                self.conn.buf.clear();
            }
        }
        let used = parse_frames(&self.decoded, |frame| each(frame, now))?;
        self.decoded.drain(..used);
        let ended = n == 0 || self.chunked.as_ref().is_some_and(Chunked::is_done);
        Ok(!ended)
    }
}
