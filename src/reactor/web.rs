//! The HTTP/1.1 server side of web listeners ([`super::Ctx::listen_web`], the peer's web
//! page): keep-alive connections carrying GET, HEAD and POST requests with bounded JSON
//! bodies, answered one at a time, and Server-Sent Event streams. Sans-IO: [`RequestParser`]
//! takes bytes and hands out whole requests; [`write_response`] and [`write_stream_head`]
//! build what goes back. What a request means (routes, tokens, `Host`) is the handler's.
//!
//! # Invariants
//! - A request head is held up to [`WebLimits::max_head_bytes`]: one still incomplete at that
//!   size is answered 431 and the connection closes. A body is held up to
//!   [`WebLimits::max_body_bytes`] (the `Content-Length` is checked before any of it is
//!   read): more is 413 and the connection closes. `Transfer-Encoding` (chunked bodies) is
//!   refused with 411: browsers send a length with `fetch` bodies.
//! - The parser never holds more than one request (head + body limits); input past it waits
//!   in the reactor until that request is answered (requests are answered in order, one at
//!   a time: pipelining works, but no request is parsed while an answer is pending). A head
//!   ends at its blank line, `\r\n\r\n`.
//! - Anything `httparse` rejects is 400 and the connection closes after the answer. So is,
//!   the moment it arrives, a bare `\n` in a head (no browser sends one; servers and proxies
//!   disagree on where such a line ends, the shape of request smuggling), and a request with
//!   more than one `Content-Length` (whose values two parsers could pick apart).
//! - A response always carries `Content-Length`; `Connection: close` when the request asked
//!   for it (or was HTTP/1.0 without keep-alive) or the connection closes after it.

use std::time::Duration;

/// Limits of one web listener.
#[derive(Debug, Clone)]
pub struct WebLimits {
    /// Most connections open at once on the listener; more are closed at accept.
    pub max_connections: usize,
    /// Largest request head (request line and headers).
    pub max_head_bytes: usize,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// A connection that neither completes a request nor makes write progress for this long
    /// is closed (idle keep-alive connections and slowloris senders alike). Event streams
    /// are exempt: they are bounded by [`WebLimits::max_stream_bytes`] instead.
    pub idle_timeout: Duration,
    /// Output queued for an event stream beyond this is not queued: the stream is closed (a
    /// browser that does not read costs at most this much memory; its page reconnects).
    pub max_stream_bytes: usize,
}

impl Default for WebLimits {
    fn default() -> Self {
        WebLimits {
            max_connections: 32,
            max_head_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024,
            idle_timeout: Duration::from_secs(30),
            max_stream_bytes: 256 * 1024,
        }
    }
}

/// The methods a web handler sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD: answered like GET, without the body.
    Head,
    /// POST.
    Post,
}

/// One whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRequest {
    /// Its method.
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
    /// The query string (after `?`), possibly empty.
    pub query: String,
    /// The headers, names in lower case, values as sent (lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// The body (empty without one).
    pub body: Vec<u8>,
    /// The client wants the connection closed after the answer.
    pub close: bool,
}

impl WebRequest {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name` in the query string (no percent-decoding: the values this server
    /// reads are hex tokens).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// The statuses a web server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200.
    Ok,
    /// 202: accepted, runs in the background.
    Accepted,
    /// 400.
    BadRequest,
    /// 401: no (or a wrong) token.
    Unauthorized,
    /// 403: a foreign `Host` or `Origin`.
    Forbidden,
    /// 404.
    NotFound,
    /// 405.
    MethodNotAllowed,
    /// 409: it is being done already (a download of that file runs).
    Conflict,
    /// 411: a body without `Content-Length`.
    LengthRequired,
    /// 413: a body over the limit.
    PayloadTooLarge,
    /// 415: a POST that is not JSON.
    UnsupportedMediaType,
    /// 431: a head over the limit.
    HeaderTooLarge,
    /// 503: the peer cannot do it now (not connected to the index).
    Unavailable,
    /// 504: the index did not answer in time.
    GatewayTimeout,
}

impl Status {
    /// The status line's code and reason.
    pub fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::Accepted => "202 Accepted",
            Status::BadRequest => "400 Bad Request",
            Status::Unauthorized => "401 Unauthorized",
            Status::Forbidden => "403 Forbidden",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::Conflict => "409 Conflict",
            Status::LengthRequired => "411 Length Required",
            Status::PayloadTooLarge => "413 Payload Too Large",
            Status::UnsupportedMediaType => "415 Unsupported Media Type",
            Status::HeaderTooLarge => "431 Request Header Fields Too Large",
            Status::Unavailable => "503 Service Unavailable",
            Status::GatewayTimeout => "504 Gateway Timeout",
        }
    }

    /// The numeric code.
    pub fn code(self) -> u16 {
        self.line()[..3].parse().unwrap_or(500)
    }
}

/// A whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebResponse {
    /// Its status.
    pub status: Status,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Further headers (`WWW-Authenticate`, ...).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Close the connection after it.
    pub close: bool,
}

impl WebResponse {
    /// A response with `body` of `content_type`.
    pub fn new(status: Status, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        WebResponse {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
            close: false,
        }
    }

    /// A short plain-text answer (errors the parser decides, before any handler).
    pub fn text(status: Status, text: &str) -> Self {
        WebResponse::new(status, "text/plain; charset=utf-8", format!("{text}\n"))
    }
}

/// What the parser hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request.
    Request(WebRequest),
    /// Answer this and close: the input cannot go on.
    Reject(Status),
}

/// Most headers a request may carry.
const MAX_HEADERS: usize = 64;

/// Accumulates one request at a time; see the module docs.
///
/// It takes bytes only up to the end of the request it is reading (the head's blank line,
/// then exactly `Content-Length` bytes), so whatever follows stays with the caller until
/// that request is answered: a connection whose answer is pending, or whose output is backed
/// up, holds no parsed-ahead input here.
#[derive(Debug, Default)]
pub struct RequestParser {
    buf: Vec<u8>,
    /// The head's end (the blank line) is in `buf`, at this length.
    head_end: Option<usize>,
    /// The head is parsed: the request, waiting for this many bytes of `buf` in all.
    head: Option<(WebRequest, usize)>,
    /// The head holds a `\n` that ends no `\r\n`: answered 400 without waiting for more.
    bare_lf: bool,
}

impl RequestParser {
    /// Bytes held.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Takes what the request being read still needs of `data`, within the limits; returns
    /// how many bytes were taken (the rest is the next request's, or more than the limits).
    pub fn handle_bytes(&mut self, data: &[u8], limits: &WebLimits) -> usize {
        if let Some((_, total)) = &self.head {
            let take = data.len().min(total.saturating_sub(self.buf.len()));
            self.buf.extend_from_slice(&data[..take]);
            return take;
        }
        if self.head_end.is_some() {
            return 0;
        }
        let start = self.buf.len();
        let take = data.len().min(limits.max_head_bytes.saturating_sub(start));
        self.buf.extend_from_slice(&data[..take]);
        // The blank line may straddle the previous bytes: look from three bytes back.
        let from = start.saturating_sub(3);
        let mut taken = take;
        if let Some(pos) = self.buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + pos + 4;
            let extra = self.buf.len() - end;
            self.buf.truncate(end);
            self.head_end = Some(end);
            taken -= extra;
        }
        // Each new byte of the head against the one before it (held, even from an earlier
        // read): a `\n` must end a `\r\n`.
        self.bare_lf |= (start..self.buf.len())
            .any(|i| self.buf[i] == b'\n' && (i == 0 || self.buf[i - 1] != b'\r'));
        taken
    }

    /// The next whole request, if the bytes held make one (or why they never will).
    pub fn poll_request(&mut self, limits: &WebLimits) -> Option<Parsed> {
        if self.head.is_none() {
            if self.bare_lf {
                return Some(Parsed::Reject(Status::BadRequest));
            }
            let Some(head_len) = self.head_end else {
                return (self.buf.len() >= limits.max_head_bytes)
                    .then_some(Parsed::Reject(Status::HeaderTooLarge));
            };
            match parse_head(&self.buf[..head_len], limits) {
                Ok((request, body_len)) => self.head = Some((request, head_len + body_len)),
                Err(status) => return Some(Parsed::Reject(status)),
            }
        }
        let (_, total) = self.head.as_ref()?;
        if self.buf.len() < *total {
            return None;
        }
        let (mut request, _) = self.head.take()?;
        let head_len = self.head_end.take().unwrap_or(0);
        request.body = self.buf[head_len..].to_vec();
        self.buf.clear();
        Some(Parsed::Request(request))
    }
}

/// A request head (through its blank line) as a request without its body, and the body's
/// length.
fn parse_head(head: &[u8], limits: &WebLimits) -> Result<(WebRequest, usize), Status> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) | Err(_) => return Err(Status::BadRequest),
    }
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => return Err(Status::MethodNotAllowed),
    };
    let target = req.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v);
    if find("transfer-encoding").is_some() {
        return Err(Status::LengthRequired);
    }
    let mut lengths = headers.iter().filter(|(k, _)| k == "content-length");
    let body_len = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some((_, v)), None) => v.trim().parse::<usize>().map_err(|_| Status::BadRequest)?,
        (Some(_), Some(_)) => return Err(Status::BadRequest),
    };
    if body_len > limits.max_body_bytes {
        return Err(Status::PayloadTooLarge);
    }
    let connection = find("connection").map(|v| v.to_ascii_lowercase());
    let close = match req.version {
        Some(0) => !connection
            .as_deref()
            .is_some_and(|v| v.contains("keep-alive")),
        _ => connection.as_deref().is_some_and(|v| v.contains("close")),
    };
    let request = WebRequest {
        method,
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
        close,
    };
    Ok((request, body_len))
}

/// Appends a whole response to `out`: headers, and the body unless `head_only`.
pub fn write_response(out: &mut Vec<u8>, r: &WebResponse, head_only: bool) {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(256);
    let _ = write!(
        head,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n\
         Referrer-Policy: no-referrer\r\n",
        r.status.line(),
        r.content_type,
        r.body.len()
    );
    for (name, value) in &r.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if r.close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if !head_only {
        out.extend_from_slice(&r.body);
    }
}

/// Appends the head of an event stream (`text/event-stream`, no length: it lasts as long as
/// the connection).
pub fn write_stream_head(out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
          X-Content-Type-Options: nosniff\r\n\r\n",
    );
}

/// Appends one Server-Sent Event: `event: NAME` and `data` (one line: JSON has no raw
/// newlines; any that come are split into several `data:` lines, as the format wants).
pub fn write_event(out: &mut Vec<u8>, name: &str, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]], limits: &WebLimits) -> Vec<Parsed> {
        let mut p = RequestParser::default();
        let mut got = Vec::new();
        for c in chunks {
            let mut at = 0;
            loop {
                let n = p.handle_bytes(&c[at..], limits);
                at += n;
                match p.poll_request(limits) {
                    Some(r @ Parsed::Reject(_)) => {
                        got.push(r);
                        return got;
                    }
                    Some(r) => got.push(r),
                    None if n == 0 || at == c.len() => break,
                    None => {}
                }
            }
        }
        got
    }

    #[test]
    fn keep_alive_requests_split_anywhere_come_out_whole_and_in_order() {
        let two = b"POST /api/search HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
                    Content-Length: 11\r\n\r\n{\"q\":\"abc\"}GET /?token=ff HTTP/1.1\r\nHost: a\r\n\
                    Connection: close\r\n\r\n";
        for split in 0..two.len() {
            let (a, b) = two.split_at(split);
            let got = parse_all(&[a, b], &WebLimits::default());
            assert_eq!(got.len(), 2, "split at {split}: {got:?}");
            let Parsed::Request(first) = &got[0] else {
                panic!("{got:?}")
            };
            assert_eq!(first.method, Method::Post);
            assert_eq!(first.body, b"{\"q\":\"abc\"}");
            assert_eq!(first.header("content-type"), Some("application/json"));
            assert!(!first.close);
            let Parsed::Request(second) = &got[1] else {
                panic!("{got:?}")
            };
            assert_eq!(
                (second.path.as_str(), second.query_param("token")),
                ("/", Some("ff"))
            );
            assert!(second.close);
        }
    }

    #[test]
    fn oversize_heads_and_bodies_chunked_and_garbage_are_refused() {
        let l = WebLimits {
            max_head_bytes: 128,
            max_body_bytes: 16,
            ..WebLimits::default()
        };
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 1000));
        assert_eq!(
            parse_all(&[&big], &l),
            vec![Parsed::Reject(Status::HeaderTooLarge)]
        );
        // Byte by byte too, and never more than the limits held.
        let mut p = RequestParser::default();
        let mut got = None;
        for b in &big {
            p.handle_bytes(std::slice::from_ref(b), &l);
            assert!(p.held() <= 128 + 16);
            if let Some(r) = p.poll_request(&l) {
                got = Some(r);
                break;
            }
        }
        assert_eq!(got, Some(Parsed::Reject(Status::HeaderTooLarge)));
        assert_eq!(
            parse_all(&[b"POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n"], &l),
            vec![Parsed::Reject(Status::PayloadTooLarge)]
        );
        assert_eq!(
            parse_all(
                &[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"],
                &l
            ),
            vec![Parsed::Reject(Status::LengthRequired)]
        );
        assert_eq!(
            parse_all(&[b"DELETE / HTTP/1.1\r\n\r\n"], &l),
            vec![Parsed::Reject(Status::MethodNotAllowed)]
        );
        assert_eq!(
            parse_all(&[b"\x00\x01 nonsense\r\n\r\n"], &l),
            vec![Parsed::Reject(Status::BadRequest)]
        );
        assert_eq!(
            parse_all(&[b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"], &l),
            vec![Parsed::Reject(Status::BadRequest)]
        );
    }

    #[test]
    fn a_bare_lf_is_refused_at_once_and_two_lengths_are_refused() {
        let l = WebLimits::default();
        // The whole head with bare line ends, or one in the middle: 400 without the blank
        // line, even byte by byte.
        for head in [
            &b"GET / HTTP/1.1\nHost: a\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n",
            b"\n",
        ] {
            assert_eq!(
                parse_all(&[head], &l),
                vec![Parsed::Reject(Status::BadRequest)],
                "{head:?}"
            );
            let chunks: Vec<&[u8]> = head.chunks(1).collect();
            assert_eq!(
                parse_all(&chunks, &l),
                vec![Parsed::Reject(Status::BadRequest)],
                "{head:?}, byte by byte"
            );
        }
        // A \r\n split across reads is no bare \n.
        let ok = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in 0..ok.len() {
            let (a, b) = ok.split_at(split);
            assert!(matches!(&parse_all(&[a, b], &l)[..], [Parsed::Request(_)]));
        }
        // Two lengths, equal or not, in any case: 400.
        for two in [
            &b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nab"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nab",
        ] {
            assert_eq!(
                parse_all(&[two], &l),
                vec![Parsed::Reject(Status::BadRequest)]
            );
        }
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let got = parse_all(&[b"GET / HTTP/1.0\r\n\r\n"], &WebLimits::default());
        assert!(matches!(&got[0], Parsed::Request(r) if r.close));
        let got = parse_all(
            &[b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"],
            &WebLimits::default(),
        );
        assert!(matches!(&got[0], Parsed::Request(r) if !r.close));
    }

    proptest::proptest! {
        /// Any bytes, cut anywhere: no panic, never more than the limits held.
        #[test]
        fn any_bytes_are_bounded(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..800),
                                 cut in 1usize..64) {
            let limits = WebLimits { max_head_bytes: 200, max_body_bytes: 50, ..WebLimits::default() };
            let mut p = RequestParser::default();
            for chunk in data.chunks(cut) {
                let mut at = 0;
                while at < chunk.len() {
                    let n = p.handle_bytes(&chunk[at..], &limits);
                    at += n;
                    proptest::prop_assert!(p.held() <= 250);
                    match p.poll_request(&limits) {
                        Some(Parsed::Reject(_)) => return Ok(()),
                        Some(Parsed::Request(_)) => {}
                        None if n == 0 => return Ok(()),
                        None => {}
                    }
                }
            }
        }
    }

    #[test]
    fn responses_and_events_are_framed() {
        let mut r = WebResponse::new(Status::Ok, "application/json", b"{}".to_vec());
        r.headers.push(("WWW-Authenticate", "Bearer".into()));
        let mut out = Vec::new();
        write_response(&mut out, &r, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"), "{s}");
        assert!(s.contains("Content-Length: 2\r\n") && s.contains("WWW-Authenticate: Bearer\r\n"));
        assert!(!s.contains("Connection: close") && s.ends_with("\r\n\r\n{}"));
        let mut out = Vec::new();
        write_event(&mut out, "line", "a\nb");
        assert_eq!(out, b"event: line\ndata: a\ndata: b\n\n");
        assert_eq!(Status::HeaderTooLarge.code(), 431);
    }
}
