//! The minimal HTTP/1.x server side the reactor speaks on listeners opened with
//! [`super::Ctx::listen_http`] (the metrics endpoints): one request per connection, parsed
//! with `httparse`, one response, then close. Sans-IO: [`RequestReader`] takes bytes and
//! says what the request is once its head is complete; [`response`] builds the answer.
//!
//! # Invariants
//! - A request head is held in memory up to [`HttpLimits::max_request_bytes`]; one that is
//!   still incomplete at that size is answered 431 and the connection closes.
//! - Anything `httparse` rejects is answered 400; a method other than GET or HEAD, 405.
//! - Request bodies are never read: GET and HEAD have none, and the connection closes after
//!   the one response.

use std::time::Duration;

/// Limits of one HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Most connections open at once on the listener; more are closed at accept.
    pub max_connections: usize,
    /// Largest request head (request line and headers) accepted.
    pub max_request_bytes: usize,
    /// A connection that has not sent a whole request head (or read its answer) in this long
    /// is closed.
    pub timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 16,
            max_request_bytes: 8 * 1024,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a handler answers to a GET: the body and its content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBody {
    /// The `Content-Type` header's value.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

/// A complete request head, as far as the reactor cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A GET (or HEAD: `head` is true) of `path` (the query string removed).
    Get {
        /// The path, without `?query`.
        path: String,
        /// A HEAD request: answer the headers only.
        head: bool,
    },
    /// Answer with this status (4xx) and close.
    Reject(Status),
}

/// The statuses the reactor sends itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200 OK.
    Ok,
    /// 400: the request did not parse.
    BadRequest,
    /// 404: no such path.
    NotFound,
    /// 405: only GET and HEAD.
    MethodNotAllowed,
    /// 431: the request head is over the size limit.
    TooLarge,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::TooLarge => "431 Request Header Fields Too Large",
        }
    }
}

/// Accumulates one request head.
#[derive(Debug, Default)]
pub struct RequestReader {
    buf: Vec<u8>,
}

/// Most headers a request may carry.
const MAX_HEADERS: usize = 64;

impl RequestReader {
    /// Takes `data`; `Some` once the head is complete (or can never be acceptable).
    pub fn handle_bytes(&mut self, data: &[u8], limits: &HttpLimits) -> Option<Request> {
        let room = limits.max_request_bytes.saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("");
                let target = req.path.unwrap_or("");
                let path = target.split('?').next().unwrap_or("").to_string();
                Some(match method {
                    "GET" => Request::Get { path, head: false },
                    "HEAD" => Request::Get { path, head: true },
                    _ => Request::Reject(Status::MethodNotAllowed),
                })
            }
            Ok(httparse::Status::Partial) if data.len() > room => {
                Some(Request::Reject(Status::TooLarge))
            }
            Ok(httparse::Status::Partial) => None,
            Err(_) => Some(Request::Reject(Status::BadRequest)),
        }
    }
}

/// Appends a whole response (headers, and the body unless `head`) to `out`.
pub fn response(out: &mut Vec<u8>, status: Status, body: &HttpBody, head: bool) {
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            status.line(),
            body.content_type,
            body.body.len()
        )
        .as_bytes(),
    );
    if !head {
        out.extend_from_slice(&body.body);
    }
}

/// The short plain-text body of an error status.
pub fn error_body(status: Status) -> HttpBody {
    HttpBody {
        content_type: "text/plain; charset=utf-8",
        body: format!("{}\n", status.line()).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[&[u8]], limits: &HttpLimits) -> Option<Request> {
        let mut r = RequestReader::default();
        let mut last = None;
        for c in chunks {
            last = r.handle_bytes(c, limits);
            if last.is_some() {
                break;
            }
        }
        last
    }

    #[test]
    fn a_get_split_anywhere_parses_once_complete() {
        let req = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in 0..req.len() {
            let (a, b) = req.split_at(split);
            let got = feed(&[a, b], &HttpLimits::default());
            assert_eq!(
                got,
                Some(Request::Get {
                    path: "/metrics".into(),
                    head: false
                }),
                "split at {split}"
            );
        }
        let mut r = RequestReader::default();
        for (i, b) in req.iter().enumerate() {
            let got = r.handle_bytes(std::slice::from_ref(b), &HttpLimits::default());
            assert_eq!(got.is_some(), i == req.len() - 1);
        }
    }

    #[test]
    fn garbage_is_400_other_methods_405_oversize_431() {
        let l = HttpLimits::default();
        assert_eq!(
            feed(&[b"\x00\x01\x02 nonsense\r\n\r\n"], &l),
            Some(Request::Reject(Status::BadRequest))
        );
        assert_eq!(
            feed(&[b"POST /metrics HTTP/1.1\r\n\r\n"], &l),
            Some(Request::Reject(Status::MethodNotAllowed))
        );
        assert_eq!(
            feed(&[b"HEAD / HTTP/1.0\r\n\r\n"], &l),
            Some(Request::Get {
                path: "/".into(),
                head: true
            })
        );
        let small = HttpLimits {
            max_request_bytes: 64,
            ..HttpLimits::default()
        };
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 100));
        assert_eq!(
            feed(&[&big], &small),
            Some(Request::Reject(Status::TooLarge))
        );
        // Byte by byte, the limit holds too: never more than the limit is kept.
        let mut r = RequestReader::default();
        let mut got = None;
        for b in &big {
            got = r.handle_bytes(std::slice::from_ref(b), &small);
            assert!(r.buf.len() <= 64);
            if got.is_some() {
                break;
            }
        }
        assert_eq!(got, Some(Request::Reject(Status::TooLarge)));
    }

    proptest::proptest! {
        /// Any bytes, cut anywhere: no panic, never more than the limit held, and once an
        /// answer is decided the reader says so.
        #[test]
        fn any_bytes_are_bounded(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
                                 cut in 1usize..64) {
            let limits = HttpLimits { max_request_bytes: 256, ..HttpLimits::default() };
            let mut r = RequestReader::default();
            for chunk in data.chunks(cut) {
                let got = r.handle_bytes(chunk, &limits);
                proptest::prop_assert!(r.buf.len() <= 256);
                if got.is_some() {
                    break;
                }
            }
        }
    }

    #[test]
    fn responses_carry_length_and_close() {
        let body = HttpBody {
            content_type: "text/plain",
            body: b"hello".to_vec(),
        };
        let mut out = Vec::new();
        response(&mut out, Status::Ok, &body, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Length: 5\r\n") && s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\nhello"));
        let mut out = Vec::new();
        response(&mut out, Status::Ok, &body, true);
        assert!(String::from_utf8(out).unwrap().ends_with("\r\n\r\n"));
    }
}
