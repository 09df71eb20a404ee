//! The index server's connection handler: turns peers' requests into calls on the pure
//! [`Index`] and answers them. Runs on one reactor thread.
//!
//! # Session lifecycle (see docs/LIFECYCLE.md)
//! `AwaitingHello` → (Hello with our version) → `Ready` → (Bye, EOF, error, idle timeout) →
//! closed. A connection that sends anything but Hello first, a second Hello, or an
//! undecodable frame gets an error response and is closed after it is sent; the rest of the
//! server is untouched. When a `Ready` session's connection closes for any reason, all of its
//! peer's entries leave the index at once (soft state).
//!
//! # Addresses
//! The address given out for a peer is the IP seen on its socket with the port it announced in
//! Hello, never an address the peer claims.

use super::store::{Index, LookupError, PeerId};
use crate::log;
use crate::log::Level;
use crate::reactor::codec::FrameError;
use crate::reactor::{CloseReason, ConnId, Ctx, Handler, Verdict};
use crate::wire::{
    self, ErrorCode, LookupKey, Request, RequestBody, Response, ResponseBody, ServerStats,
    PROTOCOL_VERSION,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Limits of the server's behaviour (the reactor's own limits live in its `Config`).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Most results one search returns.
    pub max_results: usize,
    /// Most files one peer may hold in the index.
    pub max_files_per_peer: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_results: 100,
            max_files_per_peer: 1_000_000,
        }
    }
}

enum Session {
    AwaitingHello { remote: SocketAddr },
    Ready { peer: PeerId, addr: SocketAddr },
}

/// The index server: an [`Index`] plus one session per connection.
pub struct IndexServer {
    index: Index,
    limits: ServerLimits,
    /// Indexed by `ConnId.0` (slab keys are dense and reused).
    sessions: Vec<Option<Session>>,
    next_session: u64,
    stats: ServerStats,
    /// Set by the signal thread; checked when the reactor is woken.
    shutdown: Option<Arc<AtomicBool>>,
}

impl IndexServer {
    /// An empty index with these limits.
    pub fn new(limits: ServerLimits) -> Self {
        IndexServer {
            index: Index::new(),
            limits,
            sessions: Vec::new(),
            next_session: 1,
            stats: ServerStats::default(),
            shutdown: None,
        }
    }

    /// Stops the reactor when `flag` is set and the reactor is woken (SIGINT/SIGTERM).
    pub fn stop_on(&mut self, flag: Arc<AtomicBool>) {
        self.shutdown = Some(flag);
    }

    /// The index (for tests and stats).
    pub fn index(&self) -> &Index {
        &self.index
    }

    fn session_mut(&mut self, conn: ConnId) -> &mut Option<Session> {
        if self.sessions.len() <= conn.0 {
            self.sessions.resize_with(conn.0 + 1, || None);
        }
        &mut self.sessions[conn.0]
    }

    /// Queues an error response and says how the connection goes on.
    fn error(
        &mut self,
        ctx: &mut Ctx,
        conn: ConnId,
        id: u32,
        code: ErrorCode,
        message: impl Into<String>,
    ) {
        self.stats.errors += 1;
        ctx.send(
            conn,
            &Response {
                id,
                body: ResponseBody::Error {
                    code,
                    message: message.into(),
                },
            },
        );
    }

    /// Answers a request that is not acceptable on this connection, then closes it.
    fn fatal(
        &mut self,
        ctx: &mut Ctx,
        conn: ConnId,
        id: u32,
        code: ErrorCode,
        message: String,
    ) -> Verdict {
        log!(Level::Debug, "indexd", "conn {}: {code}: {message}", conn.0);
        self.error(ctx, conn, id, code, message.clone());
        Verdict::CloseAfterFlush(CloseReason::Protocol(message))
    }

    fn handle_hello(
        &mut self,
        ctx: &mut Ctx,
        conn: ConnId,
        id: u32,
        version: u16,
        listen_port: u16,
        agent: &str,
    ) -> Verdict {
        let remote = match self.session_mut(conn) {
            Some(Session::AwaitingHello { remote }) => *remote,
            _ => {
                return self.fatal(
                    ctx,
                    conn,
                    id,
                    ErrorCode::NotReady,
                    "hello sent twice".into(),
                )
            }
        };
        if version != PROTOCOL_VERSION {
            return self.version_mismatch(ctx, conn, id, version);
        }
        // The IP we see, the port they announce.
        let addr = SocketAddr::new(remote.ip(), listen_port);
        let peer = self.index.add_peer(addr);
        let session = self.next_session;
        self.next_session += 1;
        *self.session_mut(conn) = Some(Session::Ready { peer, addr });
        log!(
            Level::Info,
            "indexd",
            "peer {} joined from {remote} serving on port {listen_port} ({})",
            peer.0,
            printable(agent)
        );
        ctx.send(
            conn,
            &Response {
                id,
                body: ResponseBody::Welcome {
                    version: PROTOCOL_VERSION,
                    session,
                    observed: addr,
                },
            },
        );
        Verdict::Continue
    }

    fn version_mismatch(&mut self, ctx: &mut Ctx, conn: ConnId, id: u32, theirs: u16) -> Verdict {
        let msg = format!(
            "protocol version {theirs} is not supported; this server speaks version {PROTOCOL_VERSION}"
        );
        self.fatal(ctx, conn, id, ErrorCode::VersionMismatch, msg)
    }

    fn handle_request(&mut self, ctx: &mut Ctx, conn: ConnId, req: Request) -> Verdict {
        let id = req.id;
        if let RequestBody::Hello {
            version,
            listen_port,
            agent,
        } = &req.body
        {
            return self.handle_hello(ctx, conn, id, *version, *listen_port, agent);
        }
        let (peer, addr) = match self.session_mut(conn) {
            Some(Session::Ready { peer, addr }) => (*peer, *addr),
            _ => {
                return self.fatal(
                    ctx,
                    conn,
                    id,
                    ErrorCode::NotReady,
                    "the first request must be hello".into(),
                )
            }
        };
        let body = match req.body {
            RequestBody::Hello { .. } => unreachable!("handled above"),
            RequestBody::Register { files } => {
                self.stats.registers += 1;
                if addr.port() == 0 && !files.is_empty() {
                    self.error(
                        ctx,
                        conn,
                        id,
                        ErrorCode::Invalid,
                        "announce a listening port in hello to register files",
                    );
                    return Verdict::Continue;
                }
                let held = self.index.holdings_of(peer) as usize;
                let room = self.limits.max_files_per_peer.saturating_sub(held);
                let (accepted, over) = files.split_at(files.len().min(room));
                let outcome = self.index.register(peer, accepted);
                ResponseBody::Registered {
                    added: outcome.added,
                    rejected: outcome.rejected + over.len() as u32,
                    total: outcome.total,
                }
            }
            RequestBody::Unregister { hashes } => {
                self.stats.unregisters += 1;
                let removed = self.index.unregister(peer, &hashes);
                ResponseBody::Unregistered {
                    removed,
                    total: self.index.holdings_of(peer),
                }
            }
            RequestBody::Search { query, limit } => {
                self.stats.searches += 1;
                let limit = match limit as usize {
                    0 => self.limits.max_results,
                    n => n.min(self.limits.max_results),
                };
                let (hits, truncated) = self.index.search(&query, limit);
                ResponseBody::SearchResults { hits, truncated }
            }
            RequestBody::Lookup { key } => {
                self.stats.lookups += 1;
                match self.index.lookup(&key) {
                    Ok(files) => ResponseBody::Holders { files },
                    Err(e) => {
                        let code = match e {
                            LookupError::NotFound => ErrorCode::NotFound,
                            LookupError::Ambiguous => ErrorCode::Ambiguous,
                            LookupError::BadPrefix => ErrorCode::Invalid,
                        };
                        let what = match &key {
                            LookupKey::Hash(h) => h.to_hex(),
                            LookupKey::HashPrefix(p) => printable(p),
                            LookupKey::Name(n) => printable(n),
                        };
                        self.error(ctx, conn, id, code, format!("{e}: {what}"));
                        return Verdict::Continue;
                    }
                }
            }
            RequestBody::Ping => {
                self.stats.pings += 1;
                ResponseBody::Pong
            }
            RequestBody::Stats => ResponseBody::Stats(self.current_stats(ctx)),
            RequestBody::Bye => {
                ctx.send(
                    conn,
                    &Response {
                        id,
                        body: ResponseBody::Bye,
                    },
                );
                return Verdict::CloseAfterFlush(CloseReason::Local);
            }
        };
        ctx.send(conn, &Response { id, body });
        Verdict::Continue
    }

    /// The counters as `stats` reports them.
    pub fn current_stats(&self, ctx: &Ctx) -> ServerStats {
        ServerStats {
            connections: ctx.connection_count() as u64,
            peers: self.index.peer_count() as u64,
            files: self.index.file_count() as u64,
            names: self.index.entry_count() as u64,
            ..self.stats.clone()
        }
    }
}

impl Handler for IndexServer {
    fn handle_wake(&mut self, ctx: &mut Ctx) {
        if self
            .shutdown
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            log!(
                Level::Info,
                "indexd",
                "shutting down: {} connections, {} files",
                ctx.connection_count(),
                self.index.file_count()
            );
            ctx.stop();
        }
    }

    fn handle_accept(&mut self, _ctx: &mut Ctx, conn: ConnId, remote: SocketAddr) -> Verdict {
        *self.session_mut(conn) = Some(Session::AwaitingHello { remote });
        Verdict::Continue
    }

    fn handle_frame(&mut self, ctx: &mut Ctx, conn: ConnId, payload: &[u8]) -> Verdict {
        match wire::decode::<Request>(payload) {
            Ok(req) => self.handle_request(ctx, conn, req),
            Err(e) => {
                let id = wire::peek_request_id(payload).unwrap_or(0);
                // A Hello from another protocol version may not decode at all: say so.
                if let Some(v) = wire::peek_version(payload, true) {
                    if v != PROTOCOL_VERSION {
                        return self.version_mismatch(ctx, conn, id, v);
                    }
                }
                self.fatal(ctx, conn, id, ErrorCode::Malformed, e.to_string())
            }
        }
    }

    fn handle_bad_frame(&mut self, ctx: &mut Ctx, conn: ConnId, error: FrameError) -> Verdict {
        let msg = error.to_string();
        self.fatal(ctx, conn, 0, ErrorCode::BadFrame, msg);
        Verdict::CloseAfterFlush(CloseReason::Frame(error))
    }

    fn handle_close(&mut self, _ctx: &mut Ctx, conn: ConnId, reason: &CloseReason) {
        match self.session_mut(conn).take() {
            Some(Session::Ready { peer, addr }) => {
                let files = self.index.remove_peer(peer).unwrap_or(0);
                log!(
                    Level::Info,
                    "indexd",
                    "peer {} at {addr} left ({reason}); {files} entries withdrawn",
                    peer.0
                );
            }
            Some(Session::AwaitingHello { remote }) => {
                log!(
                    Level::Debug,
                    "indexd",
                    "connection from {remote} closed before hello ({reason})"
                );
            }
            None => {}
        }
    }
}

/// A name from the network, safe to print on one log line.
fn printable(s: &str) -> String {
    const MAX_CHARS: usize = 120;
    let mut out: String = s
        .chars()
        .take(MAX_CHARS)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if s.chars().count() > MAX_CHARS {
        out.push('…');
    }
    out
}
