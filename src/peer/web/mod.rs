//! The web page (`peer --web ADDR`): routing, the safety checks and the JSON API over the
//! core, and the event stream that tells the page what happens. Sans-IO: requests come in
//! as [`WebRequest`]s with `now` and the core, answers go out as [`WebReply`]s and [`Out`]s
//! for the reactor handler to carry out ([`crate::reactor::web`] speaks HTTP).
//!
//! # Safety
//! - Every request must name this peer in `Host`: the listening address, or, on a loopback
//!   listener, `localhost:PORT`, `127.0.0.1:PORT` or `[::1]:PORT` (else 403), so a web site
//!   whose name a DNS rebinding points at 127.0.0.1 cannot read or drive the peer.
//! - Every API request must carry the secret [`Token`] printed at start, as
//!   `Authorization: Bearer TOKEN` (else 401). Never in a cookie: browsers send a host's
//!   cookies to every port of it, so any other local web server the owner's browser visits
//!   would receive it. The printed link carries the token in its fragment
//!   (`/#token=TOKEN`), which browsers never send; the page (`/`, its script and style, no
//!   secret in them and served without the token) reads it once, keeps it in
//!   `sessionStorage` (kept apart by port) and sends the header on every `fetch`, the
//!   event stream included (read with `fetch`, since an `EventSource` cannot send headers).
//! - A POST must be `Content-Type: application/json` (415), which no cross-site form or
//!   simple request can send, and a present `Origin` must be this page's (403).
//! - No request names a filesystem path: downloads go to the downloads directory as the
//!   console's `get` does; `register` rescans the share; files are named by hash.
//!
//! # What the page is told
//! The answers are the objects `peer --json` prints for the same commands ([`api`]: one
//! definition of every field, in [`render`]). Index requests of the page (search, lookup,
//! and their next pages) go beside the console's (several at once) and are answered when
//! the index answers, or 504 after [`INDEX_PATIENCE`]. Commands that change things (get,
//! register, unregister) run as console lines, in turn with the console's (a `get` as
//! `get -b`, so that the page's downloads run at once): the answer is 202 and the outcome
//! comes on the event stream. The stream carries every line the console says (`line`: its
//! `--json` object and its text; a download's end is one, `saved`, `already_have`, or an
//! `error` with its `hash`) and the `status` (`--json`'s, with every running download's
//! progress) whenever it changes, looked at every 250 ms and after every line. A page
//! that opens the stream gets the status and the download ends of the last
//! [`RECENT_ENDS_FOR`] first.

pub mod api;

use self::api::{ErrorAnswer, HashBody, PageToken, QueuedAnswer, SearchBody, TargetBody};
use super::commands::lookup_key;
use super::console::{self, Command, Target};
use super::core::PeerCore;
use super::output::Line;
use super::render::{self, FileRow, LookupPage, SearchPage};
use crate::reactor::web::{write_event, Method, Status};
use crate::reactor::{ConnId, WebReply, WebRequest, WebResponse};
use crate::wire::{ErrorCode, FileHash, LookupKey, RequestBody, ResponseBody};
use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most shared files `GET /api/files` lists (its `count` and `bytes` count them all).
pub const MAX_FILES_LISTED: usize = 1000;
/// How long a search or lookup of the page waits for the index before it is answered 504.
pub const INDEX_PATIENCE: Duration = Duration::from_secs(15);
/// How often the status (and so the downloads' progress) is looked at while a page listens.
const TICK: Duration = Duration::from_millis(250);
/// A comment on every event stream this often, so that a dead browser is found out.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long a download's end is told again to a page that opens the event stream.
pub const RECENT_ENDS_FOR: Duration = Duration::from_secs(600);
/// Most download ends kept for that.
const MAX_RECENT_ENDS: usize = 32;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const JSON: &str = "application/json";

/// The secret every request must carry: 128 random bits, in hex.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A fresh token from the system's random source.
    pub fn generate() -> std::io::Result<Token> {
        use std::io::Read;
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        Ok(Token(hex::encode(bytes)))
    }

    /// A given token (tests).
    pub fn from_text(text: &str) -> Token {
        Token(text.to_string())
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is the token, compared in constant time.
    fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// What the reactor handler does for the page after [`Web::poll`].
#[derive(Debug)]
pub enum Out {
    /// Answer the deferred request of this connection.
    Respond(ConnId, WebResponse),
    /// Push these events on this event stream (if it is gone: [`Web::handle_close`]).
    Push(ConnId, Vec<u8>),
}

#[derive(Debug)]
enum Ask {
    /// A search: its words (the filters are the index's business).
    Search { query: String },
    /// A lookup: what was looked up, and the files its pages before showed.
    Lookup { target: String, shown: u64 },
}

#[derive(Debug)]
struct Pending {
    id: u64,
    conn: ConnId,
    deadline: Instant,
    ask: Ask,
}

/// The page's state; see the module docs.
#[derive(Debug)]
pub struct Web {
    token: Token,
    pending: Vec<Pending>,
    streams: Vec<ConnId>,
    /// Streams that have not had the first status.
    fresh: Vec<ConnId>,
    /// The status last sent on the streams.
    sent: Option<Value>,
    /// The `line` events of the latest download ends, with when they were said.
    recent: VecDeque<(Instant, Vec<u8>)>,
    next_tick: Option<Instant>,
    next_keepalive: Option<Instant>,
}

fn json<T: Serialize>(status: Status, value: &T) -> WebResponse {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    WebResponse::new(status, JSON, body)
}

fn error(status: Status, text: impl Into<String>) -> WebResponse {
    json(status, &ErrorAnswer { error: text.into() })
}

/// Whether `host` (a `Host` header) names the listener whose local address is `local`.
pub fn is_own_host(host: &str, local: SocketAddr) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let port = local.port();
    if host == local.to_string() {
        return true;
    }
    local.ip().is_loopback()
        && [
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ]
        .contains(&host)
}

/// The token a request carries (`Authorization: Bearer`), if any.
fn token_of(req: &WebRequest) -> Option<&str> {
    req.header("authorization")
        .and_then(|v| v.trim().strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether `path` is the page itself (its HTML, script or style): the same for everyone,
/// holding no secret, so served without the token (the token comes in the link's fragment,
/// which only the page's script can read).
fn is_page_asset(path: &str) -> bool {
    matches!(path, "/" | "/index.html" | "/app.js" | "/style.css")
}

impl Web {
    /// The page's state, with this token; the core's output is copied for the page.
    pub fn new(token: Token, core: &mut PeerCore) -> Web {
        core.output().set_tap();
        Web {
            token,
            pending: Vec::new(),
            streams: Vec::new(),
            fresh: Vec::new(),
            sent: None,
            recent: VecDeque::new(),
            next_tick: None,
            next_keepalive: None,
        }
    }

    /// The URL to print: the page at `addr`, with the token in the fragment (never sent to
    /// a server, never in a cookie).
    pub fn url(&self, addr: SocketAddr) -> String {
        format!("http://{addr}/#token={}", self.token.as_str())
    }

    /// A request on connection `conn`, which arrived at `local` (its local address).
    pub fn handle_request(
        &mut self,
        core: &mut PeerCore,
        now: Instant,
        local: SocketAddr,
        conn: ConnId,
        req: WebRequest,
    ) -> WebReply {
        let Some(host) = req.header("host").filter(|h| is_own_host(h, local)) else {
            return refuse(error(
                Status::Forbidden,
                "this Host is not the peer's address (open the link the peer printed)",
            ));
        };
        let host = host.to_string();
        let asset = matches!(req.method, Method::Get | Method::Head) && is_page_asset(&req.path);
        if !asset && !token_of(&req).is_some_and(|t| self.token.matches(t)) {
            return refuse(unauthorized());
        }
        if req.method == Method::Post {
            let content_type = req.header("content-type").unwrap_or("");
            let mime = content_type.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case(JSON) {
                return refuse(error(
                    Status::UnsupportedMediaType,
                    "a POST must be application/json",
                ));
            }
            if req
                .header("origin")
                .is_some_and(|o| !o.eq_ignore_ascii_case(&format!("http://{host}")))
            {
                return refuse(error(Status::Forbidden, "foreign Origin"));
            }
        }
        if req.header("sec-fetch-site") == Some("cross-site") {
            return refuse(error(Status::Forbidden, "cross-site request"));
        }
        self.route(core, now, conn, &req)
    }

    fn route(
        &mut self,
        core: &mut PeerCore,
        now: Instant,
        conn: ConnId,
        req: &WebRequest,
    ) -> WebReply {
        let get = matches!(req.method, Method::Get | Method::Head);
        let post = req.method == Method::Post;
        let asset =
            |ct: &'static str, body: &str| WebResponse::new(Status::Ok, ct, body.as_bytes());
        let reply = match req.path.as_str() {
            "/" | "/index.html" if get => asset("text/html; charset=utf-8", INDEX_HTML),
            "/app.js" if get => asset("text/javascript; charset=utf-8", APP_JS),
            "/style.css" if get => asset("text/css; charset=utf-8", STYLE_CSS),
            "/api/status" if get => json(Status::Ok, &status(core, now)),
            "/api/files" if get => json(Status::Ok, &files(core)),
            "/api/events" if get && req.method == Method::Get => {
                self.streams.push(conn);
                self.fresh.push(conn);
                self.next_tick.get_or_insert(now);
                self.next_keepalive.get_or_insert(now + KEEPALIVE);
                return WebReply::Stream;
            }
            "/api/search" if post => return self.search(core, now, conn, &req.body),
            "/api/lookup" if post => return self.lookup(core, now, conn, &req.body),
            "/api/get" if post => get_file(core, now, &req.body),
            "/api/unregister" if post => match parse_hash(&req.body) {
                Ok(hash) => queue(core, now, format!("unregister {hash}")),
                Err(r) => r,
            },
            "/api/register" if post => queue(core, now, "register".into()),
            "/" | "/index.html" | "/app.js" | "/style.css" | "/api/status" | "/api/files"
            | "/api/events" | "/api/search" | "/api/lookup" | "/api/get" | "/api/unregister"
            | "/api/register" => error(Status::MethodNotAllowed, "wrong method"),
            _ => error(Status::NotFound, "no such page"),
        };
        WebReply::Respond(reply)
    }

    /// `POST /api/search`: the console's syntax, filters included, parsed by the console's
    /// parser; with `next`, the following page.
    fn search(&mut self, core: &mut PeerCore, now: Instant, conn: ConnId, body: &[u8]) -> WebReply {
        let SearchBody { query, next } = match serde_json::from_slice::<SearchBody>(body) {
            Ok(b) => b,
            Err(e) => return respond(error(Status::BadRequest, format!("bad JSON: {e}"))),
        };
        if query.contains(['\n', '\r']) {
            return respond(error(Status::BadRequest, "a search is one line"));
        }
        let (query, filter) = match console::parse(&format!("search {query}")) {
            Ok(Some(Command::Search { query, filter })) => (query, filter),
            Ok(_) => return respond(error(Status::BadRequest, "type words to search for")),
            Err(e) => return respond(error(Status::BadRequest, e.0)),
        };
        let after = match next.as_deref().map(PageToken::decode) {
            None => None,
            Some(Some(PageToken::Search(cursor))) => Some(cursor),
            Some(_) => return respond(error(Status::BadRequest, "not a search's next page")),
        };
        let body = RequestBody::Search {
            query: query.clone(),
            limit: 0,
            filter,
            after,
        };
        self.ask(core, now, conn, body, Ask::Search { query })
    }

    /// `POST /api/lookup`: a name, a hash or a hash prefix, as the console's `lookup` takes
    /// it; with `next`, the following page of the files of that name.
    fn lookup(&mut self, core: &mut PeerCore, now: Instant, conn: ConnId, body: &[u8]) -> WebReply {
        let TargetBody { target, next } = match serde_json::from_slice::<TargetBody>(body) {
            Ok(b) => b,
            Err(e) => return respond(error(Status::BadRequest, format!("bad JSON: {e}"))),
        };
        let target = target.trim().to_string();
        if target.is_empty() {
            return respond(error(Status::BadRequest, "name a file or a hash"));
        }
        if target.contains(['\n', '\r']) {
            return respond(error(Status::BadRequest, "a name is one line"));
        }
        let (key, after, shown) = match next.as_deref().map(PageToken::decode) {
            None => (lookup_key(&Target::parse(&target)), None, 0),
            // Next pages are of a name (as the console's `more` asks them).
            Some(Some(PageToken::Lookup(token, shown))) => {
                (LookupKey::Name(target.clone()), Some(token), shown)
            }
            Some(_) => return respond(error(Status::BadRequest, "not a lookup's next page")),
        };
        let body = RequestBody::Lookup { key, after };
        self.ask(core, now, conn, body, Ask::Lookup { target, shown })
    }

    fn ask(
        &mut self,
        core: &mut PeerCore,
        now: Instant,
        conn: ConnId,
        body: RequestBody,
        ask: Ask,
    ) -> WebReply {
        match core.handle_web_request(now, body) {
            Some(id) => {
                self.pending.push(Pending {
                    id,
                    conn,
                    deadline: now + INDEX_PATIENCE,
                    ask,
                });
                WebReply::Defer
            }
            None => respond(not_connected()),
        }
    }

    /// A web connection is gone.
    pub fn handle_close(&mut self, conn: ConnId) {
        self.pending.retain(|p| p.conn != conn);
        self.streams.retain(|c| *c != conn);
        self.fresh.retain(|c| *c != conn);
    }

    /// The earliest time [`Web::poll`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let pending = self.pending.iter().map(|p| p.deadline).min();
        [pending, self.next_tick, self.next_keepalive]
            .into_iter()
            .flatten()
            .min()
    }

    /// What the page is owed now: the index's answers (or their time-outs), and the events
    /// for the streams. Call after the core has run (each loop turn).
    pub fn poll(&mut self, core: &mut PeerCore, now: Instant) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some((id, body)) = core.poll_web_answer() {
            if let Some(i) = self.pending.iter().position(|p| p.id == id) {
                let p = self.pending.swap_remove(i);
                out.push(Out::Respond(p.conn, answer(p.ask, body)));
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].deadline <= now {
                let p = self.pending.swap_remove(i);
                out.push(Out::Respond(
                    p.conn,
                    error(Status::GatewayTimeout, "the index did not answer in time"),
                ));
            } else {
                i += 1;
            }
        }
        // A page that just opened the stream: the status, and the downloads that ended
        // lately (this turn's lines come after, with everyone's).
        self.recent
            .retain(|(at, _)| now.saturating_duration_since(*at) < RECENT_ENDS_FOR);
        if !self.fresh.is_empty() {
            let status = status(core, now);
            let mut first = Vec::new();
            event(&mut first, "status", &status);
            for (_, end) in &self.recent {
                first.extend_from_slice(end);
            }
            self.sent.get_or_insert(status);
            for conn in std::mem::take(&mut self.fresh) {
                out.push(Out::Push(conn, first.clone()));
            }
        }
        let mut events = Vec::new();
        let mut said = false;
        while let Some(line) = core.output().poll_tapped() {
            let Some(data) = api::line_event(&line) else {
                continue;
            };
            said = true;
            let mut one = Vec::new();
            event(&mut one, "line", &data);
            if matches!(
                line,
                Line::Saved(_) | Line::AlreadyHave { .. } | Line::Failed { .. }
            ) {
                if self.recent.len() >= MAX_RECENT_ENDS {
                    self.recent.pop_front();
                }
                self.recent.push_back((now, one.clone()));
            }
            if !self.streams.is_empty() {
                events.extend_from_slice(&one);
            }
        }
        // The status (with every download's progress) at ticks, and after anything said
        // (a download started or ended, a scan registered files).
        let tick = self.next_tick.is_some_and(|t| t <= now);
        if !self.streams.is_empty() && (tick || said) {
            let status = status(core, now);
            if self.sent.as_ref() != Some(&status) {
                event(&mut events, "status", &status);
                self.sent = Some(status);
            }
        }
        if tick {
            self.next_tick = (!self.streams.is_empty()).then_some(now + TICK);
        }
        if self.next_keepalive.is_some_and(|t| t <= now) {
            events.extend_from_slice(b": keepalive\n\n");
            self.next_keepalive = (!self.streams.is_empty()).then_some(now + KEEPALIVE);
        }
        if !events.is_empty() {
            for &conn in &self.streams {
                out.push(Out::Push(conn, events.clone()));
            }
        }
        out
    }
}

/// `--json`'s `status` object: the index connection, the share, the uploads, and every
/// running download (console's and page's, foreground and background) with its progress.
fn status(core: &PeerCore, now: Instant) -> Value {
    render::json(&Line::Status(Box::new(core.status_view(now)))).unwrap_or_default()
}

/// `POST /api/get`: `get -b HASH` in turn with the console's commands (so that several
/// downloads of the page run at once). Refused at once when it could only fail: without
/// the index (503) or while that file downloads already (409).
fn get_file(core: &mut PeerCore, now: Instant, body: &[u8]) -> WebResponse {
    let hash = match parse_hash(body) {
        Ok(hash) => hash,
        Err(r) => return r,
    };
    if core.metrics_view().session_state != "ready" {
        return not_connected();
    }
    if core.downloads_view(now).iter().any(|d| d.hash == hash) {
        return error(Status::Conflict, "that file is being downloaded already");
    }
    queue(core, now, format!("get -b {hash}"))
}

/// The hash a `get` or `unregister` names, or the answer to a body that names none.
fn parse_hash(body: &[u8]) -> Result<FileHash, WebResponse> {
    let HashBody { hash } = serde_json::from_slice(body)
        .map_err(|e| error(Status::BadRequest, format!("bad JSON: {e}")))?;
    hash.trim().parse::<FileHash>().map_err(|_| {
        error(
            Status::BadRequest,
            "a file is named by its hash: 64 hex digits",
        )
    })
}

/// Runs `line` as a console command; 202.
fn queue(core: &mut PeerCore, now: Instant, line: String) -> WebResponse {
    core.handle_web_command(now, line.clone());
    json(Status::Accepted, &QueuedAnswer { queued: line })
}

fn not_connected() -> WebResponse {
    error(
        Status::Unavailable,
        "not connected to the index (the status says why)",
    )
}

fn respond(r: WebResponse) -> WebReply {
    WebReply::Respond(r)
}

/// A request refused before it is routed (wrong Host, no token, a foreign or cross-site
/// request): answered, and the connection closed, so that a client without the token cannot
/// keep the page's few connections for itself by asking again and again.
fn refuse(mut r: WebResponse) -> WebReply {
    r.close = true;
    WebReply::Respond(r)
}

fn unauthorized() -> WebResponse {
    let mut r = WebResponse::new(
        Status::Unauthorized,
        "text/html; charset=utf-8",
        "<!doctype html><title>p2pshare</title><p>This page needs the secret link the peer \
         printed when it started (<code>http://ADDR/#token=...</code>): open that one.</p>"
            .as_bytes()
            .to_vec(),
    );
    r.headers.push(("WWW-Authenticate", "Bearer".into()));
    r
}

fn event<T: Serialize>(out: &mut Vec<u8>, name: &str, value: &T) {
    if let Ok(data) = serde_json::to_string(value) {
        write_event(out, name, &data);
    }
}

/// `GET /api/files`: `--json`'s `files` object of the first [`MAX_FILES_LISTED`] files;
/// its `count` and `bytes` are those of all the files shared.
fn files(core: &PeerCore) -> Value {
    let files: Vec<FileRow> = core
        .shared_files()
        .take(MAX_FILES_LISTED)
        .map(|f| FileRow {
            hash: f.hash,
            size: f.size,
            name: f.name,
        })
        .collect();
    let v = core.metrics_view();
    let mut answer = render::json(&Line::Files {
        files,
        bytes: v.shared_bytes,
    })
    .unwrap_or_default();
    answer["count"] = v.shared_files.into();
    answer
}

/// The index's answer to a search or lookup of the page.
fn answer(ask: Ask, body: ResponseBody) -> WebResponse {
    match (ask, body) {
        (
            Ask::Search { query },
            ResponseBody::SearchResults {
                hits,
                total,
                total_exact,
                next,
                partial,
                ..
            },
        ) => {
            let page = SearchPage {
                query,
                hits,
                total,
                total_exact,
                more: next.is_some(),
                partial,
            };
            json(Status::Ok, &api::search_answer(page, next))
        }
        (
            Ask::Lookup { target, shown },
            ResponseBody::Holders {
                files, total, next, ..
            },
        ) => {
            let page = LookupPage {
                target,
                files,
                shown_before: shown,
                total,
                more: next.is_some(),
            };
            json(Status::Ok, &api::lookup_answer(page, next))
        }
        (
            Ask::Lookup { target, .. },
            ResponseBody::Error {
                code: ErrorCode::NotFound,
                ..
            },
        ) => error(Status::NotFound, format!("no peer shares {target}")),
        (_, ResponseBody::Error { code, message }) => {
            error(Status::BadRequest, format!("index: {code}: {message}"))
        }
        (
            _,
            ResponseBody::RateLimited {
                retry_after_ms,
                banned,
            },
        ) => {
            let secs = retry_after_ms as f64 / 1000.0;
            error(
                Status::Unavailable,
                if banned {
                    format!("the index banned this peer's address for {secs:.1} s")
                } else {
                    format!("the index asks to slow down: try again in {secs:.1} s")
                },
            )
        }
        (_, other) => error(
            Status::BadRequest,
            format!("unexpected index answer: {other:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::harness::{Harness, Holder};
    use crate::reactor::web::Method;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";
    const LOCAL: &str = "127.0.0.1:8080";

    fn request(method: Method, target: &str, headers: &[(&str, &str)], body: &str) -> WebRequest {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        WebRequest {
            method,
            path: path.into(),
            query: query.into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
            close: false,
        }
    }

    /// A request from the page: the right Host and token (and JSON for a POST).
    fn from_page(method: Method, target: &str, body: &str) -> WebRequest {
        let auth = format!("Bearer {TOKEN}");
        let mut headers = vec![("host", LOCAL), ("authorization", auth.as_str())];
        if method == Method::Post {
            headers.push(("content-type", "application/json"));
        }
        request(method, target, &headers, body)
    }

    fn status_of(reply: &WebReply) -> u16 {
        match reply {
            WebReply::Respond(r) => r.status.code(),
            other => panic!("not a response: {other:?}"),
        }
    }

    fn body_of(r: &WebResponse) -> serde_json::Value {
        serde_json::from_slice(&r.body).expect("JSON")
    }

    fn setup(tag: &str) -> (Harness, Web) {
        let mut h = Harness::new(tag);
        h.scanned(&[("mine.txt", b"my own file")]);
        let web = Web::new(Token::from_text(TOKEN), &mut h.core);
        (h, web)
    }

    fn call(h: &mut Harness, web: &mut Web, conn: usize, req: WebRequest) -> WebReply {
        let local = LOCAL.parse().unwrap();
        let reply = web.handle_request(&mut h.core, h.now, local, ConnId(conn), req);
        h.drive();
        reply
    }

    #[test]
    fn only_this_peers_host_names_pass() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
        ] {
            assert!(is_own_host(host, lo), "{host}");
        }
        for host in [
            "evil.example:8080",
            "localhost:8081",
            "127.0.0.1",
            "localhost",
            "",
        ] {
            assert!(!is_own_host(host, lo), "{host}");
        }
        // A listener on a public address answers to that address only.
        let public: SocketAddr = "192.0.2.7:8080".parse().unwrap();
        assert!(is_own_host("192.0.2.7:8080", public));
        assert!(!is_own_host("localhost:8080", public));
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert!(is_own_host("[::1]:9", v6) && is_own_host("localhost:9", v6));
    }

    #[test]
    fn the_token_the_host_and_json_posts_are_required() {
        let (mut h, mut web) = setup("web-auth");
        let auth = format!("Bearer {TOKEN}");
        // What the old page's cookie carried: no longer a way in.
        let cookie = format!("other=1; p2pshare_token_8080={TOKEN}");
        let cases: Vec<(WebRequest, u16)> = vec![
            (
                request(Method::Get, "/api/status", &[("host", LOCAL)], ""),
                401,
            ),
            // The page itself holds no secret: its script reads the token from the link.
            (request(Method::Get, "/", &[("host", LOCAL)], ""), 200),
            (request(Method::Get, "/app.js", &[("host", LOCAL)], ""), 200),
            (
                request(Method::Get, "/", &[("host", "evil.example:8080")], ""),
                403,
            ),
            (
                request(
                    Method::Get,
                    "/api/status",
                    &[("host", LOCAL), ("authorization", "Bearer 0123")],
                    "",
                ),
                401,
            ),
            (
                request(Method::Get, "/api/status", &[("authorization", &auth)], ""),
                403,
            ),
            (
                request(
                    Method::Get,
                    "/api/status",
                    &[("host", "rebound.example:8080"), ("authorization", &auth)],
                    "",
                ),
                403,
            ),
            (
                request(
                    Method::Get,
                    "/api/status",
                    &[("host", LOCAL), ("authorization", &auth)],
                    "",
                ),
                200,
            ),
            (
                request(
                    Method::Get,
                    "/api/status",
                    &[("host", LOCAL), ("cookie", &cookie)],
                    "",
                ),
                401,
            ),
            // The old link's query is no token either, and sets nothing.
            (
                request(
                    Method::Get,
                    &format!("/api/status?token={TOKEN}"),
                    &[("host", LOCAL)],
                    "",
                ),
                401,
            ),
            (
                request(
                    Method::Get,
                    &format!("/?token={TOKEN}"),
                    &[("host", LOCAL)],
                    "",
                ),
                200,
            ),
            (
                request(
                    Method::Post,
                    "/api/register",
                    &[
                        ("host", LOCAL),
                        ("authorization", &auth),
                        ("content-type", "text/plain"),
                    ],
                    "{}",
                ),
                415,
            ),
            (
                request(
                    Method::Post,
                    "/api/register",
                    &[
                        ("host", LOCAL),
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                        ("origin", "http://evil.example"),
                    ],
                    "{}",
                ),
                403,
            ),
            (
                request(
                    Method::Get,
                    "/api/status",
                    &[
                        ("host", LOCAL),
                        ("authorization", &auth),
                        ("sec-fetch-site", "cross-site"),
                    ],
                    "",
                ),
                403,
            ),
            (from_page(Method::Get, "/nowhere", ""), 404),
            (from_page(Method::Post, "/api/status", "{}"), 405),
            (
                from_page(Method::Post, "/api/get", r#"{"hash":"/etc/passwd"}"#),
                400,
            ),
            (from_page(Method::Post, "/api/get", "not json"), 400),
            (
                from_page(Method::Post, "/api/search", r#"{"query":""}"#),
                400,
            ),
            (
                from_page(Method::Post, "/api/search", r#"{"query":"a\nquit"}"#),
                400,
            ),
            (from_page(Method::Get, "/app.js", ""), 200),
        ];
        for (i, (req, want)) in cases.into_iter().enumerate() {
            let reply = call(&mut h, &mut web, 1, req);
            assert_eq!(status_of(&reply), want, "case {i}: {reply:?}");
            // A refusal before routing also ends the connection; a routed answer keeps it.
            if let WebReply::Respond(r) = &reply {
                assert_eq!(r.close, matches!(want, 401 | 403 | 415), "case {i}: {r:?}");
            }
            if let WebReply::Respond(r) = &reply {
                assert!(
                    r.headers.iter().all(|(n, _)| *n != "Set-Cookie"),
                    "case {i}: no cookie, ever: {r:?}"
                );
            }
        }
        // Nothing that was refused ran: no command reached the console.
        assert!(
            h.said().iter().all(|l| !l.contains("passwd")),
            "{:?}",
            h.said()
        );
    }

    /// The events pushed to stream `conn`: (name, data).
    fn events_of(out: &[Out], conn: usize) -> Vec<(String, serde_json::Value)> {
        let mut events = Vec::new();
        for o in out {
            let Out::Push(ConnId(c), bytes) = o else {
                continue;
            };
            if *c != conn {
                continue;
            }
            let text = String::from_utf8_lossy(bytes);
            for block in text.split("\n\n") {
                let name = block.lines().find_map(|l| l.strip_prefix("event: "));
                let data = block.lines().find_map(|l| l.strip_prefix("data: "));
                if let (Some(name), Some(data)) = (name, data) {
                    events.push((name.to_string(), serde_json::from_str(data).expect("JSON")));
                }
            }
        }
        events
    }

    /// The answer to the deferred request of `conn`, after the index answered.
    fn answered(h: &mut Harness, web: &mut Web, conn: usize) -> WebResponse {
        let out = web.poll(&mut h.core, h.now);
        out.into_iter()
            .find_map(|o| match o {
                Out::Respond(ConnId(c), r) if c == conn => Some(r),
                _ => None,
            })
            .expect("an answer")
    }

    fn open_stream(
        h: &mut Harness,
        web: &mut Web,
        conn: usize,
    ) -> Vec<(String, serde_json::Value)> {
        let reply = call(h, web, conn, from_page(Method::Get, "/api/events", ""));
        assert!(matches!(reply, WebReply::Stream));
        events_of(&web.poll(&mut h.core, h.now), conn)
    }

    #[test]
    fn a_search_is_answered_when_the_index_answers_and_504_when_it_does_not() {
        let (mut h, mut web) = setup("web-search");
        h.holder(
            "10.0.0.5:1",
            "blue-moon.mp3",
            b"moon",
            Holder::Good(b"moon".to_vec()),
        );
        h.holder(
            "10.0.0.6:1",
            "blue-sky.avi",
            b"sky",
            Holder::Good(b"sky".to_vec()),
        );
        let reply = call(
            &mut h,
            &mut web,
            3,
            from_page(
                Method::Post,
                "/api/search",
                r#"{"query":"blue type:audio"}"#,
            ),
        );
        assert!(matches!(reply, WebReply::Defer), "{reply:?}");
        let r = answered(&mut h, &mut web, 3);
        assert_eq!(r.status, Status::Ok);
        // `peer --json`'s search object, field for field.
        let v = body_of(&r);
        assert_eq!(v["type"], "search");
        assert_eq!(v["query"], "blue");
        assert_eq!(v["hits"].as_array().unwrap().len(), 1, "{v}");
        let hit = &v["hits"][0];
        assert_eq!(hit["name"], "blue-moon.mp3");
        assert_eq!(hit["kind"], "audio");
        assert_eq!(hit["holders"], 1);
        assert_eq!(hit["size"], 4);
        assert_eq!(hit["hash"], FileHash::of(b"moon").to_string());
        assert_eq!(
            (&v["total"], &v["total_exact"], &v["more"], &v["partial"]),
            (&1.into(), &true.into(), &false.into(), &false.into())
        );
        assert_eq!(v["next"], serde_json::Value::Null);

        // Asked, but the index's answer never comes: 504 after the patience, not before.
        let local = LOCAL.parse().unwrap();
        let req = from_page(Method::Post, "/api/lookup", r#"{"target":"blue-sky.avi"}"#);
        let reply = web.handle_request(&mut h.core, h.now, local, ConnId(4), req);
        assert!(matches!(reply, WebReply::Defer));
        assert_eq!(web.poll_timeout(), Some(h.now + INDEX_PATIENCE));
        assert!(web.poll(&mut h.core, h.now + INDEX_PATIENCE / 2).is_empty());
        let out = web.poll(&mut h.core, h.now + INDEX_PATIENCE);
        let [Out::Respond(ConnId(4), r)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(r.status, Status::GatewayTimeout);
        // The late answer finds nobody waiting, and a closed connection is forgotten.
        h.drive();
        assert!(web.poll(&mut h.core, h.now).is_empty());
        let req = from_page(Method::Post, "/api/lookup", r#"{"target":"blue-sky.avi"}"#);
        assert!(matches!(
            web.handle_request(&mut h.core, h.now, local, ConnId(5), req),
            WebReply::Defer
        ));
        web.handle_close(ConnId(5));
        h.drive();
        assert!(web.poll(&mut h.core, h.now).is_empty());
        // A lookup is `--json`'s lookup object; an unknown name is 404 in words.
        call(
            &mut h,
            &mut web,
            6,
            from_page(Method::Post, "/api/lookup", r#"{"target":"blue-sky.avi"}"#),
        );
        let v = body_of(&answered(&mut h, &mut web, 6));
        assert_eq!(v["type"], "lookup");
        assert_eq!(v["target"], "blue-sky.avi");
        assert_eq!(v["files"][0]["holders"], serde_json::json!(["10.0.0.6:1"]));
        assert_eq!(v["files"][0]["holder_count"], 1);
        assert_eq!(v["files"][0]["kind"], "video");
        assert_eq!(
            (&v["first"], &v["total"], &v["more"]),
            (&1.into(), &1.into(), &false.into())
        );
        call(
            &mut h,
            &mut web,
            7,
            from_page(Method::Post, "/api/lookup", r#"{"target":"green.avi"}"#),
        );
        let r = answered(&mut h, &mut web, 7);
        assert_eq!(r.status, Status::NotFound);
        assert_eq!(body_of(&r)["error"], "no peer shares green.avi");
        // Without the index: 503 at once, for a download too.
        h.restart_index(false);
        let reply = call(
            &mut h,
            &mut web,
            8,
            from_page(Method::Post, "/api/search", r#"{"query":"blue"}"#),
        );
        assert_eq!(status_of(&reply), 503);
        let hash = FileHash::of(b"sky");
        let reply = call(
            &mut h,
            &mut web,
            9,
            from_page(Method::Post, "/api/get", &format!(r#"{{"hash":"{hash}"}}"#)),
        );
        assert_eq!(status_of(&reply), 503);
    }

    #[test]
    fn next_pages_of_a_search_and_of_a_lookup_come_with_the_next_token() {
        let (mut h, mut web) = setup("web-pages");
        // More matches than the index's page (100), and more files of one name than its
        // lookup page (100).
        for i in 0..103u32 {
            let bytes = format!("song {i}").into_bytes();
            h.holder(
                &format!("10.0.{}.{}:1", i / 200, i % 200 + 1),
                &format!("river-song-{i}.ogg"),
                &bytes,
                Holder::Good(bytes.clone()),
            );
            let same = format!("same name {i}").into_bytes();
            h.holder(
                &format!("10.1.{}.{}:1", i / 200, i % 200 + 1),
                "same.txt",
                &same,
                Holder::Good(same.clone()),
            );
        }
        let search = |h: &mut Harness, web: &mut Web, conn, body: &str| {
            let reply = call(h, web, conn, from_page(Method::Post, "/api/search", body));
            assert!(matches!(reply, WebReply::Defer), "{reply:?}");
            body_of(&answered(h, web, conn))
        };
        let first = search(&mut h, &mut web, 1, r#"{"query":"river"}"#);
        assert_eq!(first["hits"].as_array().unwrap().len(), 100);
        assert_eq!(
            (&first["total"], &first["more"]),
            (&103.into(), &true.into())
        );
        let next = first["next"].as_str().expect("a next token").to_string();
        let body = serde_json::json!({"query": "river", "next": next}).to_string();
        let second = search(&mut h, &mut web, 2, &body);
        let hits = second["hits"].as_array().unwrap();
        assert_eq!(hits.len(), 3, "{second}");
        assert_eq!(
            (&second["more"], &second["next"]),
            (&false.into(), &serde_json::Value::Null)
        );
        // The two pages together are the 103 files, each once.
        let mut names: Vec<&str> = first["hits"]
            .as_array()
            .unwrap()
            .iter()
            .chain(hits)
            .map(|h| h["name"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 103);
        // A token that is no search's is refused before the index is asked.
        for bad in [
            r#"{"query":"river","next":"l-1-2"}"#,
            r#"{"query":"river","next":"zz"}"#,
        ] {
            let reply = call(
                &mut h,
                &mut web,
                3,
                from_page(Method::Post, "/api/search", bad),
            );
            assert_eq!(status_of(&reply), 400, "{bad}");
        }

        let lookup = |h: &mut Harness, web: &mut Web, conn, body: &str| {
            let reply = call(h, web, conn, from_page(Method::Post, "/api/lookup", body));
            assert!(matches!(reply, WebReply::Defer), "{reply:?}");
            body_of(&answered(h, web, conn))
        };
        let first = lookup(&mut h, &mut web, 4, r#"{"target":"same.txt"}"#);
        assert_eq!(first["files"].as_array().unwrap().len(), 100);
        assert_eq!(
            (&first["first"], &first["total"], &first["more"]),
            (&1.into(), &103.into(), &true.into())
        );
        let next = first["next"].as_str().unwrap().to_string();
        let body = serde_json::json!({"target": "same.txt", "next": next}).to_string();
        let second = lookup(&mut h, &mut web, 5, &body);
        assert_eq!(second["files"].as_array().unwrap().len(), 3, "{second}");
        assert_eq!(
            (&second["first"], &second["more"]),
            (&101.into(), &false.into())
        );
        let reply = call(
            &mut h,
            &mut web,
            6,
            from_page(
                Method::Post,
                "/api/lookup",
                r#"{"target":"same.txt","next":"s-1-2-3"}"#,
            ),
        );
        assert_eq!(status_of(&reply), 400);
    }

    #[test]
    fn a_download_from_the_page_is_followed_on_the_stream_to_its_end() {
        let (mut h, mut web) = setup("web-get");
        let content: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        h.holder(
            "10.0.0.5:1",
            "tune.flac",
            &content,
            Holder::Good(content.clone()),
        );
        let first = open_stream(&mut h, &mut web, 7);
        assert_eq!(first.len(), 1, "{first:?}");
        let (name, status) = &first[0];
        assert_eq!(name, "status");
        // `peer --json`'s status object.
        assert_eq!(status["type"], "status");
        assert_eq!(status["index"]["state"], "connected");
        assert_eq!(status["share"]["files"], 1);
        assert_eq!(status["uploads"]["slots"], 4);
        assert_eq!(status["downloads"], serde_json::json!([]));
        let hash = FileHash::of(&content).to_string();
        let reply = call(
            &mut h,
            &mut web,
            8,
            from_page(Method::Post, "/api/get", &format!(r#"{{"hash":"{hash}"}}"#)),
        );
        assert_eq!(status_of(&reply), 202);
        let WebReply::Respond(r) = &reply else {
            unreachable!()
        };
        assert_eq!(body_of(r)["queued"], format!("get -b {hash}"));
        // The in-memory holders answer at once: the download started and landed within the
        // call, between two polls, and the page is still told it was saved.
        let ended = events_of(&web.poll(&mut h.core, h.now), 7);
        let saved = ended
            .iter()
            .find(|(n, v)| n == "line" && v["type"] == "saved")
            .unwrap_or_else(|| panic!("{ended:?}"));
        assert_eq!(saved.1["hash"], hash.as_str());
        assert_eq!(saved.1["size"], 70_000);
        assert!(
            saved.1["text"].as_str().unwrap().starts_with("saved "),
            "{saved:?}"
        );
        assert!(
            ended
                .iter()
                .any(|(n, v)| n == "line" && v["type"] == "started" && v["hash"] == hash.as_str()),
            "{ended:?}"
        );
        assert_eq!(std::fs::read(h.landed("tune.flac")).unwrap(), content);
        // A page opened later is told the download's end with the status.
        let later = open_stream(&mut h, &mut web, 9);
        assert!(
            later
                .iter()
                .any(|(n, v)| n == "line" && v["type"] == "saved"),
            "{later:?}"
        );
        // But not once it is old.
        h.advance(RECENT_ENDS_FOR);
        let much_later = open_stream(&mut h, &mut web, 10);
        assert_eq!(much_later.len(), 1, "{much_later:?}");
        // A closed stream gets nothing more.
        web.handle_close(ConnId(7));
        h.type_lines(&["status"]);
        assert!(events_of(&web.poll(&mut h.core, h.now + TICK), 7).is_empty());
    }

    #[test]
    fn every_running_download_shows_in_the_status_and_a_failure_names_its_hash() {
        let (mut h, mut web) = setup("web-two");
        let a: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
        let b: Vec<u8> = (0..60_000u32).map(|i| (i % 17) as u8).collect();
        // Holders that accept and never send: the downloads stay running.
        h.holder("10.0.0.5:1", "a.iso", &a, Holder::Silent);
        h.holder("10.0.0.6:1", "b.iso", &b, Holder::Silent);
        open_stream(&mut h, &mut web, 1);
        // One from the page (in the background, so the console goes on), and one started
        // on the console in the foreground.
        let hb = FileHash::of(&b);
        let reply = call(
            &mut h,
            &mut web,
            2,
            from_page(Method::Post, "/api/get", &format!(r#"{{"hash":"{hb}"}}"#)),
        );
        assert_eq!(status_of(&reply), 202);
        // A get by hash that fails says which download it ends.
        let nobody = FileHash::of(b"nobody has this");
        let reply = call(
            &mut h,
            &mut web,
            4,
            from_page(
                Method::Post,
                "/api/get",
                &format!(r#"{{"hash":"{nobody}"}}"#),
            ),
        );
        assert_eq!(status_of(&reply), 202);
        let events = events_of(&web.poll(&mut h.core, h.now), 1);
        let failed = events
            .iter()
            .find(|(n, v)| n == "line" && v["type"] == "error")
            .unwrap_or_else(|| panic!("{events:?}"));
        assert_eq!(failed.1["hash"], nobody.to_string());
        assert_eq!(failed.1["text"], format!("error: no peer shares {nobody}"));
        h.type_lines(&["get a.iso"]);
        h.advance(TICK);
        let events = events_of(&web.poll(&mut h.core, h.now), 1);
        let (_, status) = events
            .iter()
            .rev()
            .find(|(n, _)| n == "status")
            .expect("a status");
        let downloads = status["downloads"].as_array().expect("downloads");
        assert_eq!(downloads.len(), 2, "{status}");
        let by_name = |n: &str| downloads.iter().find(|d| d["name"] == n).expect(n);
        assert_eq!(by_name("a.iso")["background"], false);
        assert_eq!(by_name("b.iso")["background"], true);
        assert_eq!(by_name("b.iso")["hash"], hb.to_string());
        assert_eq!(by_name("b.iso")["total"], 60_000);
        assert_eq!(by_name("b.iso")["sources"], 1);
        // The same file again while it runs: 409, nothing queued.
        let reply = call(
            &mut h,
            &mut web,
            3,
            from_page(Method::Post, "/api/get", &format!(r#"{{"hash":"{hb}"}}"#)),
        );
        assert_eq!(status_of(&reply), 409);
        // Between ticks, with nothing said, nothing is sent.
        let quiet = events_of(&web.poll(&mut h.core, h.now), 1);
        assert!(quiet.is_empty(), "{quiet:?}");
    }

    #[test]
    fn the_files_are_the_json_files_with_counts_of_all() {
        let (mut h, mut web) = setup("web-files");
        let reply = call(
            &mut h,
            &mut web,
            1,
            from_page(Method::Get, "/api/files", ""),
        );
        let WebReply::Respond(r) = reply else {
            panic!("{reply:?}")
        };
        let v = body_of(&r);
        assert_eq!(v["type"], "files");
        assert_eq!((&v["count"], &v["bytes"]), (&1.into(), &11.into()));
        assert_eq!(v["files"][0]["name"], "mine.txt");
        assert_eq!(v["files"][0]["kind"], "document");
        assert_eq!(
            v["files"][0]["hash"],
            FileHash::of(b"my own file").to_string()
        );
        let reply = call(
            &mut h,
            &mut web,
            2,
            from_page(Method::Get, "/api/status", ""),
        );
        let WebReply::Respond(r) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(body_of(&r), status(&h.core, h.now));
    }

    #[test]
    fn tokens_compare_whole() {
        let t = Token::from_text("abcd");
        assert!(t.matches("abcd"));
        assert!(!t.matches("abc") && !t.matches("abcde") && !t.matches("abce") && !t.matches(""));
        let a = Token::generate().unwrap();
        let b = Token::generate().unwrap();
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a.as_str(), b.as_str());
    }
}
