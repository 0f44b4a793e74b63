//! The little of HTTP/1.1 and Server-Sent Events the client benchmarks speak, as pure functions
//! over bytes: the server's URL, a response head, the chunked transfer coding, and SSE frames.
//!
//! The benchmarks talk to FlightDeck's own server over loopback with a hand-rolled client so that
//! the client costs as little CPU as possible on a machine it shares with the server.

use std::borrow::Cow;

/// Bytes that a peer sent which this client cannot understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected HTTP from the server: {0}")]
pub struct WireError(pub String);

fn wire_error(message: impl Into<String>) -> WireError {
    WireError(message.into())
}

/// A server address from a URL such as `http://127.0.0.1:8080` (plain HTTP only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// `host:port`, for connecting and for the `Host` header.
    pub authority: String,
    /// A path prefix without the trailing slash (empty for the root), put before `/api/…`.
    pub base_path: String,
}

impl std::str::FromStr for ServerUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| format!("{text:?}: give a plain http:// URL, e.g. http://127.0.0.1:8080"))?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{text:?}: expected http://host:port"));
        }
        let has_port = match authority.strip_prefix('[') {
            Some(v6) => v6.split_once(']').is_some_and(|(_, after)| after.starts_with(':')),
            None => authority.contains(':'),
        };
        let authority = if has_port { authority.to_string() } else { format!("{authority}:80") };
        let path = path.trim_end_matches('/');
        let base_path = if path.is_empty() { String::new() } else { format!("/{path}") };
        Ok(ServerUrl { authority, base_path })
    }
}

/// The parts of a response head the client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The body's length, when the server sent `Content-Length`.
    pub content_length: Option<usize>,
    /// Whether the body uses `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Whether the server will close the connection after this response.
    pub close: bool,
}

/// Parses a response head if `buf` holds a complete one; returns it and its length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, WireError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err(wire_error("a response head longer than 64 KiB"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| wire_error("a response head that is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(wire_error(format!("status line {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| wire_error(format!("status line {status_line:?}")))?;
    let mut head = ResponseHead { status, content_length: None, chunked: false, close: version == "HTTP/1.0" };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(wire_error(format!("header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(value.parse().map_err(|_| wire_error(format!("Content-Length {value:?}")))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().split(',').any(|c| c.trim() == "chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(Some((head, end + 4)))
}

/// Decodes the chunked transfer coding incrementally, whatever way the bytes are split.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes to go.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last (empty) chunk: trailer lines up to an empty line.
    Trailer,
    /// The body is complete.
    Done,
}

impl Chunked {
    /// Moves the decoded data of `input` into `out`; returns how many input bytes were used. Bytes
    /// not used (an incomplete size line) must be offered again with more after them.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let take = left.min(rest.len());
                    out.extend_from_slice(&rest[..take]);
                    at += take;
                    self.state = if take == left { ChunkState::DataEnd } else { ChunkState::Data(left - take) };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if rest.len() > 1024 {
                            return Err(wire_error("a chunk size line longer than 1 KiB"));
                        }
                        return Ok(at);
                    };
                    let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
                    at += nl + 1;
                    self.state = match self.state {
                        ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                        ChunkState::DataEnd => return Err(wire_error("chunk data longer than its size")),
                        ChunkState::Trailer if line.is_empty() => ChunkState::Done,
                        ChunkState::Trailer => ChunkState::Trailer,
                        _ => match chunk_size(line)? {
                            0 => ChunkState::Trailer,
                            n => ChunkState::Data(n),
                        },
                    };
                }
            }
        }
    }

    /// Whether the last chunk and the trailer have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// A chunk size line's number (hexadecimal, before any `;extension`), read from the bytes: every
/// SSE event is a chunk, so this runs per event.
fn chunk_size(line: &[u8]) -> Result<usize, WireError> {
    let hex = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    let bad = || wire_error(format!("chunk size {:?}", String::from_utf8_lossy(hex)));
    if hex.is_empty() || hex.len() > 15 {
        return Err(bad());
    }
    hex.iter().try_fold(0usize, |n, &b| Some((n << 4) | usize::from(super::event_frame::hex_digit(b)?))).ok_or_else(bad)
}

/// One Server-Sent Events frame (the lines up to an empty line), as bytes: the client looks at
/// most fields only to compare them, so it does not check that they are UTF-8 (a JSON parser
/// checks the `data` it reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The `id:` field.
    pub id: Option<&'a [u8]>,
    /// The `event:` field.
    pub event: Option<&'a [u8]>,
    /// The `data:` lines joined with `\n`; `None` without any.
    pub data: Option<Cow<'a, [u8]>>,
    /// The `retry:` field, in milliseconds.
    pub retry: Option<u64>,
}

/// Takes the complete frames at the start of `buf`, calling `each` for every frame that has a
/// field (comment-only frames are skipped); returns how many bytes they used.
///
/// This runs for every frame every subscriber reads, on the cores the measured server uses: lines
/// are found with `memchr` and fields are never copied or decoded (only a frame with several
/// `data:` lines allocates).
pub fn parse_frames<'a>(buf: &'a [u8], mut each: impl FnMut(Frame<'a>)) -> Result<usize, WireError> {
    let mut used = 0;
    let mut frame = Frame::default();
    let mut has_field = false;
    let mut at = 0;
    for nl in memchr::memchr_iter(b'\n', buf) {
        let raw = &buf[at..nl];
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        at = nl + 1;
        if line.is_empty() {
            if has_field {
                each(std::mem::take(&mut frame));
            }
            frame = Frame::default();
            has_field = false;
            used = at;
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        has_field = true;
        match name {
            b"id" => frame.id = Some(value),
            b"event" => frame.event = Some(value),
            b"retry" => frame.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
            b"data" => {
                frame.data = Some(match frame.data.take() {
                    None => Cow::Borrowed(value),
                    Some(previous) => {
                        let mut joined = previous.into_owned();
                        joined.push(b'\n');
                        joined.extend_from_slice(value);
                        Cow::Owned(joined)
                    }
                })
            }
            _ => {}
        }
    }
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url: ServerUrl = "http://127.0.0.1:8080".parse().expect("url");
        assert_eq!(url, ServerUrl { authority: "127.0.0.1:8080".into(), base_path: String::new() });
        let url: ServerUrl = "http://localhost/fd/".parse().expect("url");
        assert_eq!(url, ServerUrl { authority: "localhost:80".into(), base_path: "/fd".into() });
        let url: ServerUrl = "http://[::1]:9000/".parse().expect("url");
        assert_eq!(url.authority, "[::1]:9000");
        let url: ServerUrl = "http://[::1]".parse().expect("url");
        assert_eq!(url.authority, "[::1]:80");
        assert!("https://example.com".parse::<ServerUrl>().is_err());
        assert!("127.0.0.1:8080".parse::<ServerUrl>().is_err());
        assert!("http:///x".parse::<ServerUrl>().is_err());
    }

    #[test]
    fn heads() {
        let raw = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{\"events\":1}";
        let (head, len) = parse_head(raw).expect("valid").expect("complete");
        assert_eq!(head, ResponseHead { status: 201, content_length: Some(12), chunked: false, close: false });
        assert_eq!(&raw[len..], b"{\"events\":1}");
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        let (head, _) = parse_head(raw).expect("valid").expect("complete");
        assert!(head.chunked && head.close && head.content_length.is_none());
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nfoo: b").expect("valid"), None);
        assert!(parse_head(b"SSH-2.0 hello\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    }

    #[test]
    fn chunked_in_any_pieces() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut decoder = Chunked::default();
            let mut out = Vec::new();
            let mut pending = body[..split].to_vec();
            let used = decoder.decode(&pending, &mut out).expect("valid");
            pending.drain(..used);
            pending.extend_from_slice(&body[split..]);
            let used = decoder.decode(&pending, &mut out).expect("valid");
            assert_eq!(out, b"hello, world", "split at {split}");
            assert!(decoder.is_done());
            assert_eq!(&pending[used..], b"NEXT");
        }
        assert!(Chunked::default().decode(b"zz\r\n", &mut Vec::new()).is_err());
        assert!(Chunked::default().decode(b"1\r\nab\r\n", &mut Vec::new()).is_err());
    }

    #[test]
    fn frames() {
        let buf = b"retry: 1000\n:flightdeck\n\n: keep-alive\n\nid: 00a\ndata: {\"x\":1}\n\nid: 00b\r\ndata:a\r\ndata: b\r\n\r\nid: 00c\ndata: partial";
        let mut frames = Vec::new();
        let used = parse_frames(buf, |f| frames.push(f)).expect("valid");
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], Frame { retry: Some(1000), ..Frame::default() });
        assert_eq!(frames[1].id, Some(&b"00a"[..]));
        assert_eq!(frames[1].data.as_deref(), Some(&b"{\"x\":1}"[..]));
        assert_eq!(frames[2].data.as_deref(), Some(&b"a\nb"[..]));
        assert_eq!(&buf[used..], b"id: 00c\ndata: partial");
        let mut none = 0;
        assert_eq!(parse_frames(b"data: x", |_| none += 1).expect("valid"), 0);
        assert_eq!(none, 0);
    }
}
