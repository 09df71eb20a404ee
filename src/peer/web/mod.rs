//! The web page (`peer --web ADDR`): routing, the safety checks and the JSON API over the
//! core, and the event stream that tells the page what happens. Sans-IO: requests come in
//! as [`WebRequest`]s with `now` and the core, answers go out as [`WebReply`]s and [`Out`]s
//! for the reactor handler to carry out ([`crate::reactor::web`] speaks HTTP).
//!
//! # Safety
//! - Every request must name this peer in `Host`: the listening address, or, on a loopback
//!   listener, `localhost:PORT`, `127.0.0.1:PORT` or `[::1]:PORT` (else 403), so a web site
//!   whose name a DNS rebinding points at 127.0.0.1 cannot read or drive the peer.
//! - Every request must carry the secret [`Token`] printed at start (else 401): as
//!   `Authorization: Bearer TOKEN`, or in the cookie `p2pshare_token_PORT` that
//!   `GET /?token=TOKEN` sets (`HttpOnly`, `SameSite=Strict`) before redirecting to `/`.
//! - A POST must be `Content-Type: application/json` (415), which no cross-site form or
//!   simple request can send, and a present `Origin` must be this page's (403).
//! - No request names a filesystem path: downloads go to the downloads directory as the
//!   console's `get` does; `register` rescans the share; files are named by hash.
//!
//! # What the page is told
//! Index requests of the page (search, lookup) go beside the console's (several at once)
//! and are answered when the index answers, or 504 after [`INDEX_PATIENCE`]. Commands that
//! change things (get, register, unregister) run as console lines, in turn with the
//! console's: the answer is 202 and the outcome comes on the event stream, which carries
//! every line the console prints (`line`), the status when it changes (`status`) and the
//! download's progress and end (`download`).

pub mod api;

use self::api::{
    DownloadAnswer, ErrorAnswer, FilesAnswer, HeldAnswer, Hit, LineEvent, LookupAnswer,
    QueuedAnswer, SearchAnswer, SharedAnswer, StatusAnswer,
};
use super::commands::lookup_key;
use super::console::{self, Command, Target};
use super::core::PeerCore;
use super::names::display_name;
use super::output::Line;
use super::render;
use crate::reactor::web::{write_event, Method, Status};
use crate::reactor::{ConnId, WebReply, WebRequest, WebResponse};
use crate::wire::{ErrorCode, FileHash, RequestBody, ResponseBody};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Most shared files `GET /api/files` lists (the totals count them all).
pub const MAX_FILES_LISTED: usize = 1000;
/// How long a search or lookup of the page waits for the index before it is answered 504.
pub const INDEX_PATIENCE: Duration = Duration::from_secs(15);
/// How often the status and the download's progress are looked at while the page listens.
const TICK: Duration = Duration::from_millis(250);
/// A comment on every event stream this often, so that a dead browser is found out.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The window a download's rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(1);

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Search,
    Lookup,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    conn: ConnId,
    deadline: Instant,
    ask: Ask,
}

/// The download being watched, for its rate.
#[derive(Debug)]
struct Tracked {
    answer: DownloadAnswer,
    /// When and at what count the rate window started.
    since: (Instant, u64),
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
    sent: Option<StatusAnswer>,
    tracked: Option<Tracked>,
    /// The downloads saved and failed when last looked.
    seen: (u64, u64),
    /// The last result or error said (how a download ended, in the console's words).
    last_words: Option<String>,
    next_tick: Option<Instant>,
    next_keepalive: Option<Instant>,
}

#[derive(Deserialize)]
struct SearchBody {
    query: String,
}

#[derive(Deserialize)]
struct TargetBody {
    target: String,
}

#[derive(Deserialize)]
struct HashBody {
    hash: String,
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

/// The cookie that carries the token: named for the port, since cookies are not kept apart
/// by port and two peers may run on one host.
pub fn cookie_name(port: u16) -> String {
    format!("p2pshare_token_{port}")
}

/// The token a request carries, if any.
fn token_of(req: &WebRequest, port: u16) -> Option<&str> {
    if let Some(bearer) = req
        .header("authorization")
        .and_then(|v| v.trim().strip_prefix("Bearer "))
    {
        return Some(bearer.trim());
    }
    let name = cookie_name(port);
    req.headers
        .iter()
        .filter(|(n, _)| n == "cookie")
        .flat_map(|(_, v)| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl Web {
    /// The page's state, with this token; the core's output is copied for the page.
    pub fn new(token: Token, core: &mut PeerCore) -> Web {
        core.output().set_tap();
        let v = core.metrics_view();
        Web {
            token,
            pending: Vec::new(),
            streams: Vec::new(),
            fresh: Vec::new(),
            sent: None,
            tracked: None,
            seen: (v.counters.downloads_saved, v.counters.downloads_failed),
            last_words: None,
            next_tick: None,
            next_keepalive: None,
        }
    }

    /// The URL to print: the page at `addr`, with the token.
    pub fn url(&self, addr: SocketAddr) -> String {
        format!("http://{addr}/?token={}", self.token.as_str())
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
            return WebReply::Respond(error(
                Status::Forbidden,
                "this Host is not the peer's address (open the link the peer printed)",
            ));
        };
        let host = host.to_string();
        let port = local.port();
        if req.method == Method::Get && req.path == "/" {
            if let Some(given) = req.query_param("token") {
                if !self.token.matches(given) {
                    return WebReply::Respond(unauthorized());
                }
                // The token goes into a cookie and out of the address bar (and history).
                let mut r = WebResponse::text(Status::SeeOther, "see /");
                r.headers.push(("Location", "/".into()));
                r.headers.push((
                    "Set-Cookie",
                    format!(
                        "{}={}; Path=/; HttpOnly; SameSite=Strict",
                        cookie_name(port),
                        self.token.as_str()
                    ),
                ));
                return WebReply::Respond(r);
            }
        }
        if !token_of(&req, port).is_some_and(|t| self.token.matches(t)) {
            return WebReply::Respond(unauthorized());
        }
        if req.method == Method::Post {
            let content_type = req.header("content-type").unwrap_or("");
            let mime = content_type.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case(JSON) {
                return WebReply::Respond(error(
                    Status::UnsupportedMediaType,
                    "a POST must be application/json",
                ));
            }
            if req
                .header("origin")
                .is_some_and(|o| !o.eq_ignore_ascii_case(&format!("http://{host}")))
            {
                return WebReply::Respond(error(Status::Forbidden, "foreign Origin"));
            }
        }
        if req.header("sec-fetch-site") == Some("cross-site") {
            return WebReply::Respond(error(Status::Forbidden, "cross-site request"));
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
            "/api/status" if get => json(Status::Ok, &self.status(core, now)),
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
            "/api/get" if post => self.command(core, now, &req.body, "get"),
            "/api/unregister" if post => self.command(core, now, &req.body, "unregister"),
            "/api/register" if post => {
                core.handle_web_command(now, "register".into());
                json(
                    Status::Accepted,
                    &QueuedAnswer {
                        queued: "register".into(),
                    },
                )
            }
            "/" | "/index.html" | "/app.js" | "/style.css" | "/api/status" | "/api/files"
            | "/api/events" | "/api/search" | "/api/lookup" | "/api/get" | "/api/unregister"
            | "/api/register" => error(Status::MethodNotAllowed, "wrong method"),
            _ => error(Status::NotFound, "no such page"),
        };
        WebReply::Respond(reply)
    }

    fn search(&mut self, core: &mut PeerCore, now: Instant, conn: ConnId, body: &[u8]) -> WebReply {
        let query = match serde_json::from_slice::<SearchBody>(body) {
            Ok(b) => b.query,
            Err(e) => return respond(error(Status::BadRequest, format!("bad JSON: {e}"))),
        };
        if query.contains(['\n', '\r']) {
            return respond(error(Status::BadRequest, "a search is one line"));
        }
        // The console's syntax, filters included, parsed by the console's parser.
        let (query, filter) = match console::parse(&format!("search {query}")) {
            Ok(Some(Command::Search { query, filter })) => (query, filter),
            Ok(_) => return respond(error(Status::BadRequest, "type words to search for")),
            Err(e) => return respond(error(Status::BadRequest, e.0)),
        };
        let body = RequestBody::Search {
            query,
            limit: 0,
            filter,
            after: None,
        };
        self.ask(core, now, conn, body, Ask::Search)
    }

    fn lookup(&mut self, core: &mut PeerCore, now: Instant, conn: ConnId, body: &[u8]) -> WebReply {
        let target = match serde_json::from_slice::<TargetBody>(body) {
            Ok(b) => b.target,
            Err(e) => return respond(error(Status::BadRequest, format!("bad JSON: {e}"))),
        };
        if target.trim().is_empty() {
            return respond(error(Status::BadRequest, "name a file or a hash"));
        }
        let body = RequestBody::Lookup {
            key: lookup_key(&Target::parse(target.trim())),
            after: None,
        };
        self.ask(core, now, conn, body, Ask::Lookup)
    }

    fn ask(
        &mut self,
        core: &mut PeerCore,
        now: Instant,
        conn: ConnId,
        body: RequestBody,
        ask: Ask,
    ) -> WebReply {
        match core.handle_web_request(body) {
            Some(id) => {
                self.pending.push(Pending {
                    id,
                    conn,
                    deadline: now + INDEX_PATIENCE,
                    ask,
                });
                WebReply::Defer
            }
            None => respond(error(
                Status::Unavailable,
                "not connected to the index (the status says why)",
            )),
        }
    }

    /// `get` and `unregister`: a file named by hash, run as a console line.
    fn command(
        &mut self,
        core: &mut PeerCore,
        now: Instant,
        body: &[u8],
        verb: &str,
    ) -> WebResponse {
        let hash = match serde_json::from_slice::<HashBody>(body) {
            Ok(b) => b.hash,
            Err(e) => return error(Status::BadRequest, format!("bad JSON: {e}")),
        };
        let Ok(hash) = hash.trim().parse::<FileHash>() else {
            return error(
                Status::BadRequest,
                "a file is named by its hash: 64 hex digits",
            );
        };
        let line = format!("{verb} {hash}");
        core.handle_web_command(now, line.clone());
        json(Status::Accepted, &QueuedAnswer { queued: line })
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
        let mut events = Vec::new();
        let mut saved = Vec::new();
        while let Some(line) = core.output().poll_tapped() {
            if let Line::Saved(s) = &line {
                saved.push(s.clone());
            }
            // As a pipe would get it: results (stdout), errors, and notes (the rest of
            // stderr); progress is the download events' business.
            let kind = match (&line, render::text(&line, render::Style::default())) {
                (Line::Progress { .. } | Line::ProgressEnd, _) | (_, None) => continue,
                (Line::Error(_), Some((_, t))) => ("error", t),
                (_, Some((render::Stream::Stdout, t))) => ("result", t),
                (_, Some((render::Stream::Stderr, t))) => ("note", t),
            };
            let (kind, text) = (kind.0, &kind.1);
            if kind != "note" {
                self.last_words = Some(text.clone());
            }
            if !self.streams.is_empty() {
                event(&mut events, "line", &LineEvent { kind, text });
            }
        }
        if !self.fresh.is_empty() {
            let mut first = Vec::new();
            let status = self.status(core, now);
            event(&mut first, "status", &status);
            self.sent.get_or_insert(status);
            for conn in std::mem::take(&mut self.fresh) {
                out.push(Out::Push(conn, first.clone()));
            }
        }
        // A download's start and end are seen at every turn (a small file may come and go
        // between two ticks); its progress and the status, at ticks.
        let followed = self.tracked.as_ref().map(|t| t.answer.hash.clone());
        let mut ended = self.track(core, now, &mut events);
        // Downloads that started and landed between two polls, never seen running.
        for s in saved {
            let hash = s.hash.to_string();
            if ended && followed.as_deref() == Some(hash.as_str()) {
                continue;
            }
            let name = s.path.file_name().map(|n| n.to_string_lossy().into_owned());
            let answer = DownloadAnswer {
                hash,
                name: display_name(&name.unwrap_or_default()),
                done: s.size,
                total: s.size,
                rate: 0,
                eta_secs: None,
                state: "saved",
                message: self.last_words.clone(),
            };
            event(&mut events, "download", &answer);
            ended = true;
        }
        let tick = self.next_tick.is_some_and(|t| t <= now);
        if tick || ended {
            if let Some(t) = &self.tracked {
                if tick {
                    event(&mut events, "download", &t.answer);
                }
            }
            let status = self.status(core, now);
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

    /// Follows the core's download: its rate, and its end (said as a `download` event with
    /// the outcome). Returns whether one ended.
    fn track(&mut self, core: &PeerCore, now: Instant, events: &mut Vec<u8>) -> bool {
        // The page follows one download at a time: the oldest running.
        let view = core
            .downloads_view(now)
            .into_iter()
            .next()
            .map(|d| (d.hash, d.name, d.done, d.total));
        let same = match (&self.tracked, &view) {
            (Some(t), Some((hash, ..))) => t.answer.hash == hash.to_string(),
            (None, None) => true,
            _ => false,
        };
        let mut ended = false;
        if !same {
            if let Some(mut t) = self.tracked.take() {
                let v = core.metrics_view();
                let saved = v.counters.downloads_saved > self.seen.0;
                self.seen = (v.counters.downloads_saved, v.counters.downloads_failed);
                t.answer.state = if saved { "saved" } else { "failed" };
                if saved {
                    t.answer.done = t.answer.total;
                }
                t.answer.eta_secs = None;
                t.answer.message = self.last_words.clone();
                event(events, "download", &t.answer);
                ended = true;
            }
            if let Some((hash, name, done, total)) = view {
                self.tracked = Some(Tracked {
                    answer: DownloadAnswer {
                        hash: hash.to_string(),
                        name: display_name(&name),
                        done,
                        total,
                        rate: 0,
                        eta_secs: None,
                        state: "running",
                        message: None,
                    },
                    since: (now, done),
                });
                let t = self.tracked.as_ref().map(|t| &t.answer);
                if let Some(a) = t {
                    event(events, "download", a);
                }
                self.next_tick.get_or_insert(now + TICK);
            }
            return ended;
        }
        if let (Some(t), Some((_, _, done, total))) = (&mut self.tracked, view) {
            t.answer.done = done;
            t.answer.total = total;
            let (since, then) = t.since;
            let dt = now.saturating_duration_since(since);
            if dt >= RATE_WINDOW {
                t.answer.rate = (done.saturating_sub(then) as f64 / dt.as_secs_f64()) as u64;
                t.since = (now, done);
            }
            t.answer.eta_secs =
                (t.answer.rate > 0).then(|| total.saturating_sub(done).div_ceil(t.answer.rate));
        }
        ended
    }

    fn status(&self, core: &mut PeerCore, _now: Instant) -> StatusAnswer {
        let v = core.metrics_view();
        let report = core.status_view(_now);
        let status = render::text(&Line::Status(Box::new(report.clone())), Default::default());
        let index = status
            .and_then(|(_, t)| t.lines().next().map(str::to_string))
            .unwrap_or_default();
        let listen_port = report.listen_port;
        let (upload_slots, uploads_queued) = core.upload_queue_view();
        StatusAnswer {
            index,
            session: v.session_state,
            listen_port,
            shared_files: v.shared_files,
            shared_bytes: v.shared_bytes,
            uploads_active: v.uploads_active,
            upload_slots,
            uploads_queued,
            uploads_done: v.uploads_done,
            upload_bytes: v.upload_bytes,
            downloads_saved: v.counters.downloads_saved,
            downloads_failed: v.counters.downloads_failed,
            download: self.tracked.as_ref().map(|t| t.answer.clone()),
        }
    }
}

fn respond(r: WebResponse) -> WebReply {
    WebReply::Respond(r)
}

fn unauthorized() -> WebResponse {
    let mut r = WebResponse::new(
        Status::Unauthorized,
        "text/html; charset=utf-8",
        "<!doctype html><title>p2pshare</title><p>This page needs the secret link the peer \
         printed when it started (<code>http://ADDR/?token=...</code>): open that one.</p>"
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

fn files(core: &PeerCore) -> FilesAnswer {
    let mut total = 0u64;
    let mut total_bytes = 0u64;
    let mut files = Vec::new();
    for f in core.shared_files() {
        total += 1;
        total_bytes += f.size;
        if files.len() < MAX_FILES_LISTED {
            files.push(SharedAnswer {
                name: display_name(&f.name),
                size: f.size,
                hash: f.hash.to_string(),
                kind: api::kind_of(&f.name),
            });
        }
    }
    FilesAnswer {
        files,
        total,
        total_bytes,
    }
}

/// The index's answer to a search or lookup of the page.
fn answer(ask: Ask, body: ResponseBody) -> WebResponse {
    match (ask, body) {
        (
            Ask::Search,
            ResponseBody::SearchResults {
                hits,
                total,
                total_exact,
                partial,
                ..
            },
        ) => json(
            Status::Ok,
            &SearchAnswer {
                results: hits.iter().map(Hit::from).collect(),
                total,
                total_exact,
                partial,
            },
        ),
        (Ask::Lookup, ResponseBody::Holders { files, total, .. }) => json(
            Status::Ok,
            &LookupAnswer {
                files: files.iter().map(HeldAnswer::from).collect(),
                total,
            },
        ),
        (
            Ask::Lookup,
            ResponseBody::Error {
                code: ErrorCode::NotFound,
                ..
            },
        ) => error(Status::NotFound, "no peer shares that file"),
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
        let cookie = format!("other=1; {}={TOKEN}", cookie_name(8080));
        let cases: Vec<(WebRequest, u16)> = vec![
            (
                request(Method::Get, "/api/status", &[("host", LOCAL)], ""),
                401,
            ),
            (request(Method::Get, "/", &[("host", LOCAL)], ""), 401),
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
                200,
            ),
            // A cookie for another port's peer is not ours.
            (
                request(
                    Method::Get,
                    "/api/status",
                    &[
                        ("host", LOCAL),
                        ("cookie", &format!("{}={TOKEN}", cookie_name(8081))),
                    ],
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
                303,
            ),
            (
                request(Method::Get, "/?token=0123", &[("host", LOCAL)], ""),
                401,
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
            if want == 303 {
                let WebReply::Respond(r) = reply else {
                    unreachable!()
                };
                let cookie = r.headers.iter().find(|(n, _)| *n == "Set-Cookie").unwrap();
                assert!(cookie
                    .1
                    .starts_with(&format!("{}={TOKEN};", cookie_name(8080))));
                assert!(cookie.1.contains("HttpOnly") && cookie.1.contains("SameSite=Strict"));
            }
        }
        // Nothing that was refused ran: no command reached the console.
        assert!(
            h.said().iter().all(|l| !l.contains("passwd")),
            "{:?}",
            h.said()
        );
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
        let out = web.poll(&mut h.core, h.now);
        let [Out::Respond(ConnId(3), r)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(r.status, Status::Ok);
        let v = body_of(r);
        assert_eq!(v["results"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["results"][0]["name"], "blue-moon.mp3");
        assert_eq!(v["results"][0]["kind"], "audio");
        assert_eq!(v["results"][0]["hash"], FileHash::of(b"moon").to_string());

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
        // Without the index: 503 at once.
        h.restart_index(false);
        let reply = call(
            &mut h,
            &mut web,
            6,
            from_page(Method::Post, "/api/search", r#"{"query":"blue"}"#),
        );
        assert_eq!(status_of(&reply), 503);
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
        let reply = call(
            &mut h,
            &mut web,
            7,
            from_page(Method::Get, "/api/events", ""),
        );
        assert!(matches!(reply, WebReply::Stream));
        let first = web.poll(&mut h.core, h.now);
        let text = |out: &[Out]| -> String {
            out.iter()
                .filter_map(|o| match o {
                    Out::Push(ConnId(7), b) => Some(String::from_utf8_lossy(b).into_owned()),
                    _ => None,
                })
                .collect()
        };
        assert!(
            text(&first).starts_with("event: status\ndata: {"),
            "{}",
            text(&first)
        );
        let hash = FileHash::of(&content).to_string();
        let reply = call(
            &mut h,
            &mut web,
            8,
            from_page(Method::Post, "/api/get", &format!(r#"{{"hash":"{hash}"}}"#)),
        );
        assert_eq!(status_of(&reply), 202);
        // The in-memory holders answer at once: the download started and landed within the
        // call, between two polls, and the page is still told it was saved.
        let ended = text(&web.poll(&mut h.core, h.now));
        assert!(ended.contains("\"state\":\"saved\""), "{ended}");
        assert!(ended.contains("\"done\":70000"), "{ended}");
        assert!(
            ended.contains("event: line\ndata: {\"kind\":\"result\",\"text\":\"saved "),
            "{ended}"
        );
        assert!(ended.contains("\"downloads_saved\":1"), "{ended}");
        assert_eq!(std::fs::read(h.landed("tune.flac")).unwrap(), content);
        // A closed stream gets nothing more.
        web.handle_close(ConnId(7));
        h.type_lines(&["status"]);
        assert!(text(&web.poll(&mut h.core, h.now + TICK)).is_empty());
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
