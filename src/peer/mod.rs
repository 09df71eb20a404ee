//! The peer: shares a directory, keeps a session with the index, serves files to other peers
//! and downloads from them, all on one reactor thread.
//!
//! Where things live:
//! - [`core`]: the sans-IO core that joins the role machines: [`session`] (the index
//!   session), [`upload`] (a range request answered with its proof and a file range;
//!   [`throttle`], the total upload rate), [`download`] (one file from all its holders at
//!   once, every 16 KiB verified: [`swarm`] schedules the pieces, [`outboard`] verifies them,
//!   on the verifying thread of [`verify`], which also has the syncing thread for writeback
//!   and resume records; several downloads run at once), [`commands`]
//!   (console commands in order; [`console`] parses them) and [`output`] (what the person is
//!   told).
//! - [`share`] (the share's hash → path table, scan and hash cache, both on [`paths`], a
//!   table storing each path once) and [`names`] (untrusted names made safe).
//! - [`render`]: how each output line is written, as text (for a pipe or a terminal) or JSON
//!   (`--json`); [`startup`]: the checks of the flags that stop the peer with status 2.
//! - [`metrics`]: what `--metrics` serves, rendered from the core at scrape time.
//! - [`web`]: the web page of `--web` (routes, token and `Host` checks, the JSON API and its
//!   event stream), beside the core; the reactor speaks its HTTP.
//! - [`threads`]: the hasher, stdin and resolver threads, which report as [`Event`]s;
//!   [`watch`]: the share watcher thread (inotify through `notify`) and its debouncer;
//!   [`withdrawn`]: what `unregister` withdrew, kept across restarts.
//! - this file: [`Peer`], the reactor [`Handler`], a thin router. It hands each reactor event
//!   and helper-thread event to the core with the time, and carries out the core's
//!   [`Action`]s on the reactor; per-connection state is the [`Role`] in the reactor's slot.
//!
//! Output never blocks the loop: lines go to a writer thread through a bounded channel
//! ([`output::Writer`]).

pub mod commands;
pub mod console;
pub mod core;
pub mod download;
pub mod metrics;
pub mod names;
pub mod outboard;
pub mod output;
pub mod paths;
pub mod push;
pub mod rate;
pub mod render;
pub mod session;
pub mod share;
pub mod startup;
pub mod swarm;
pub mod threads;
pub mod throttle;
pub mod upload;
pub mod verify;
pub mod watch;
pub mod web;
pub mod withdrawn;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod tests;

pub use self::core::{Action, CoreConfig, PeerCore, Role};
pub use names::display_name;
pub use threads::{spawn_hasher, spawn_stdin, Event, Job};

use crate::reactor::{
    CloseReason, ConnId, Ctx, Handler, HttpBody, Verdict, WebLimits, WebReply, WebRequest,
};
use output::Writer;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};
use upload::Upload;

/// How long the output may take to drain at exit before the rest is dropped.
const FINISH_PATIENCE: Duration = Duration::from_secs(5);
/// An upload connection waiting this long for a request (or for write progress) is closed.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);
/// At the file server's connection limit, a downloader's connection that has asked for nothing
/// for this long may be closed to make room for one from an address holding fewer
/// (`reactor::Config::evict_idle_after`); an honest downloader asks at once.
pub const UPLOAD_EVICT_IDLE: Duration = Duration::from_secs(5);

/// How a peer is set up.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The directory shared.
    pub share_dir: PathBuf,
    /// Where downloads land (by default the share directory).
    pub downloads_dir: PathBuf,
    /// The index server, `HOST:PORT`.
    pub index: String,
    /// Where the file server listens (`None`: `--listen none`, no file server: the peer
    /// serves only through pushes).
    pub listen: Option<SocketAddr>,
    /// Read commands from stdin (false: `--serve`).
    pub console: bool,
    /// Produce progress lines (a bar on a terminal, or `--json` events).
    pub progress_bar: bool,
    /// How the output is written: text (and its style) or JSON.
    pub format: output::Format,
    /// Seeds the reconnect jitter.
    pub seed: u64,
    /// How long the index may stay silent while it owes an answer before the session is
    /// taken for lost and the next `--index` tried ([`session::DEFAULT_REPLY_TIMEOUT`]).
    pub index_timeout: Duration,
    /// The bounds of every download (stall, rate floor, whole `get`).
    pub download_limits: download::DownloadLimits,
    /// Uploads sent at once; more requests wait in the upload queue.
    pub upload_slots: usize,
    /// Requests waiting in the upload queue at once from one address.
    pub max_queued_per_ip: usize,
    /// While requests wait, an upload slower than this (bytes/s over the download rate
    /// window) loses its slot; 0: never.
    pub upload_min_rate: u64,
    /// All uploads together send at most this many bytes per second; 0: no limit.
    pub max_upload_rate: u64,
}

/// The peer's reactor handler: the core, the channels to the helper threads, and the one
/// reactor timer it keeps armed at the core's next deadline.
pub struct Peer {
    core: PeerCore,
    listen: Option<SocketAddr>,
    events: Receiver<Event>,
    jobs: Sender<Job>,
    /// Hands an event from a helper thread to the reactor and wakes it.
    notify: Arc<dyn Fn(Event) + Send + Sync>,
    writer: Option<Writer>,
    shutdown: Option<Arc<AtomicBool>>,
    /// The deadline the reactor timer is armed for, and that arming's timer id: an earlier
    /// deadline re-arms with a new id, and a timer whose id is not the current one is stale
    /// (the reactor cannot cancel timers), so superseded timers never pile up.
    timer: Option<(Instant, u64)>,
    next_timer_id: u64,
    /// The web page, with `--web`.
    web: Option<web::Web>,
    /// The connection whose role is lent to the running callback, and the role the core
    /// set for it meanwhile (see [`Peer::apply_lent`]).
    lent: Option<(ConnId, Option<Role>)>,
    /// Wakes the reactor (for the verifying thread).
    waker: Arc<mio::Waker>,
    /// The verifying thread, started by the first download's first bytes.
    verifier: Option<verify::Verifier>,
    /// The syncing thread, started by a download's first writeback or resume record.
    syncer: Option<verify::Syncer>,
}

impl Peer {
    /// A peer; call [`Peer::start`] on the reactor before running it.
    pub fn new(
        cfg: PeerConfig,
        events: (Sender<Event>, Receiver<Event>),
        jobs: Sender<Job>,
        waker: Arc<mio::Waker>,
    ) -> Peer {
        let (events_tx, events) = events;
        let events_tx = std::sync::Mutex::new(events_tx);
        let event_waker = waker.clone();
        let own_waker = waker.clone();
        let notify: Arc<dyn Fn(Event) + Send + Sync> = Arc::new(move |event: Event| {
            if let Ok(tx) = events_tx.lock() {
                let _ = tx.send(event);
            }
            let _ = event_waker.wake();
        });
        // Without a writer the peer still shares and serves; it cannot tell anyone anything.
        let writer = Writer::spawn(cfg.format, move || {
            let _ = waker.wake();
        })
        .ok();
        let core = PeerCore::new(CoreConfig {
            share_dir: cfg.share_dir,
            downloads_dir: cfg.downloads_dir,
            index: cfg.index,
            console: cfg.console,
            progress_bar: cfg.progress_bar,
            seed: cfg.seed,
            index_timeout: cfg.index_timeout,
            download_limits: cfg.download_limits,
            upload_slots: cfg.upload_slots,
            max_queued_per_ip: cfg.max_queued_per_ip,
            upload_min_rate: cfg.upload_min_rate,
            upload_rate_window: cfg.download_limits.rate_window,
            max_upload_rate: cfg.max_upload_rate,
        });
        Peer {
            core,
            listen: cfg.listen,
            events,
            jobs,
            notify,
            writer,
            shutdown: None,
            timer: None,
            next_timer_id: 0,
            web: None,
            lent: None,
            waker: own_waker,
            verifier: None,
            syncer: None,
        }
    }

    /// Stops the reactor when `flag` is set and the reactor is woken (SIGINT/SIGTERM).
    pub fn stop_on(&mut self, flag: Arc<AtomicBool>) {
        self.shutdown = Some(flag);
    }

    /// Starts listening, scanning and connecting. Returns the file server's address (none
    /// with `--listen none`).
    pub fn start(&mut self, ctx: &mut Ctx<Role>) -> std::io::Result<Option<SocketAddr>> {
        let addr = match self.listen {
            Some(listen) => Some(ctx.listen(listen)?),
            None => None,
        };
        self.core.start(addr.map_or(0, |a| a.port()));
        self.apply(ctx);
        Ok(addr)
    }

    /// How many errors the person was told (a piped console exits with status 1 if any).
    pub fn errors(&mut self) -> u64 {
        self.core.output().errors()
    }

    /// Serves the web page on `addr` (see [`web`]) with a fresh token. Returns the URL to
    /// open (the bound address and the token).
    pub fn start_web(
        &mut self,
        ctx: &mut Ctx<Role>,
        addr: SocketAddr,
        limits: WebLimits,
    ) -> std::io::Result<String> {
        let token = web::Token::generate()?;
        let bound = ctx.listen_web(addr, limits)?;
        let web = web::Web::new(token, &mut self.core);
        let url = web.url(bound);
        self.web = Some(web);
        Ok(url)
    }

    /// Hands the page what it is owed (index answers, events), then keeps the timer right.
    fn poll_web(&mut self, ctx: &mut Ctx<Role>) {
        if let Some(w) = &mut self.web {
            for out in w.poll(&mut self.core, ctx.now()) {
                match out {
                    web::Out::Respond(conn, response) => ctx.web_respond(conn, response),
                    web::Out::Push(conn, events) => {
                        if !ctx.web_push(conn, &events) {
                            w.handle_close(conn);
                        }
                    }
                }
            }
        }
        self.apply(ctx);
    }

    /// After the reactor stopped: what is still queued for the person is written, waiting
    /// at most [`FINISH_PATIENCE`] for a slow reader.
    pub fn finish(mut self) {
        if let Some(w) = self.writer.take() {
            if !w.finish(self.core.output(), FINISH_PATIENCE) {
                log::warn!("output not read for {FINISH_PATIENCE:?}: the rest is dropped");
            }
        }
    }

    /// Carries out the core's actions, then keeps the reactor timer at its next deadline.
    /// [`Peer::apply`] from inside a callback of `conn`, to which the reactor lent its role
    /// (the slab holds no state for `conn` until the callback returns): a new role the core
    /// sets for `conn` goes to `role`, the last one set winning. Without this, a range that
    /// the upload rate let through while its own connection drained was sent with the role
    /// left `AwaitingGet`, its end never seen, and the connection stalled for good.
    fn apply_lent(&mut self, ctx: &mut Ctx<Role>, conn: ConnId, role: &mut Role) {
        self.lent = Some((conn, None));
        self.apply(ctx);
        if let Some((_, Some(new))) = self.lent.take() {
            *role = new;
        }
    }

    fn apply(&mut self, ctx: &mut Ctx<Role>) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Resolve(name) => {
                    if let Err(e) = threads::spawn_resolver(name.clone(), self.notify.clone()) {
                        let why = format!("cannot start a lookup of {name}: {e}");
                        self.core.handle_event(ctx.now(), Event::Resolved(Err(why)));
                    }
                }
                Action::Connect { addr, role } => match ctx.connect(addr, role.clone()) {
                    // A push connection is an upload, but one that must ask for a range
                    // soon (its first file range sets the upload's idle timeout).
                    Ok(conn) if matches!(role, Role::Push(_)) => {
                        ctx.set_idle_timeout(conn, Some(push::PUSH_FIRST_RANGE_WAIT))
                    }
                    Ok(conn) => ctx.set_idle_timeout(conn, None),
                    Err(e) => self.core.handle_close(
                        ctx.now(),
                        None,
                        role,
                        &CloseReason::ConnectFailed(e.kind()),
                    ),
                },
                Action::Send { conn, frame } => ctx.send(conn, |buf| buf.extend_from_slice(&frame)),
                Action::SendFile {
                    conn,
                    file,
                    offset,
                    len,
                } => {
                    ctx.send_file(conn, file, offset, len);
                    ctx.notify_drained(conn);
                    ctx.set_idle_timeout(conn, Some(UPLOAD_IDLE));
                }
                Action::ExpectRaw { conn, len } => ctx.expect_raw(conn, len),
                Action::Close {
                    conn,
                    reason,
                    after_flush: false,
                } => ctx.close(conn, reason),
                Action::Close { conn, reason, .. } => ctx.close_after_flush(conn, reason),
                Action::SetRole { conn, role } => {
                    // A request waiting in the upload queue has no deadline of its own (the
                    // downloader bounds its wait); the queue is bounded per address.
                    // Nor has a download on a connection a holder pushed to us.
                    if matches!(
                        role,
                        Role::Upload(Upload::Queued { .. }) | Role::Download(_)
                    ) {
                        ctx.set_idle_timeout(conn, None);
                    }
                    if matches!(self.lent, Some((lent, _)) if lent == conn) {
                        // Lent to the running callback: the slab holds no state for it now.
                        self.lent = Some((conn, Some(role)));
                    } else if let Some(state) = ctx.state_mut(conn) {
                        *state = role;
                    }
                }
                Action::Hash(job) => {
                    if let Err(e) = self.jobs.send(job) {
                        self.core.handle_hasher_gone(ctx.now(), e.0);
                    }
                }
                Action::Verify(job) => self.verify(ctx, job),
                Action::Sync(job) => self.sync(job),
                Action::Hold(conn) => ctx.hold(conn),
                Action::Resume(conn) => ctx.resume(conn),
                Action::Stop => ctx.stop(),
            }
        }
        let web = self.web.as_ref().and_then(web::Web::poll_timeout);
        if let Some(at) = [self.core.poll_timeout(), web].into_iter().flatten().min() {
            if self.timer.map_or(true, |(armed, _)| at < armed) {
                self.next_timer_id += 1;
                self.timer = Some((at, self.next_timer_id));
                ctx.set_timer(at.saturating_duration_since(ctx.now()), self.next_timer_id);
            }
        }
    }

    /// Hands a job to the verifying thread (started on first use); if it cannot be started
    /// or is gone, the job is done here, on the loop, as before it existed.
    fn verify(&mut self, ctx: &mut Ctx<Role>, job: verify::VerifyJob) {
        if self.verifier.is_none() {
            let waker = self.waker.clone();
            match verify::Verifier::spawn(Arc::new(move || {
                let _ = waker.wake();
            })) {
                Ok(v) => self.verifier = Some(v),
                Err(e) => {
                    log::warn!("cannot start the verifying thread ({e}): verifying on the loop")
                }
            }
        }
        let job = match &self.verifier {
            Some(v) => match v.submit(job) {
                Ok(()) => return,
                Err(job) => job,
            },
            None => job,
        };
        self.core.handle_verified(ctx.now(), verify::run(job));
    }

    /// Hands a job to the syncing thread (started on first use); if it cannot be started or
    /// is gone, the job is done here, on the loop.
    fn sync(&mut self, job: verify::SyncJob) {
        if self.syncer.is_none() {
            match verify::Syncer::spawn() {
                Ok(s) => self.syncer = Some(s),
                Err(e) => log::warn!("cannot start the syncing thread ({e}): syncing on the loop"),
            }
        }
        let job = match &self.syncer {
            Some(s) => match s.submit(job) {
                Ok(()) => return,
                Err(job) => job,
            },
            None => job,
        };
        verify::sync(job);
    }

    /// Moves output to the writer (never blocking) and runs the console commands that were
    /// paused for room, until the output is backed up (the writer wakes the reactor when it
    /// has room) or nothing more runs.
    fn flush_output(&mut self, ctx: &mut Ctx<Role>) {
        loop {
            let Some(w) = &self.writer else { return };
            if w.drain(self.core.output()) && self.core.output().is_backed_up() {
                // Full, and too much waits to start another command: the writer's wake
                // brings the loop back once it has room.
                return;
            }
            let waiting = self.core.output().len();
            self.core.handle_output_room(ctx.now());
            self.apply(ctx);
            // Nothing new to hand over (or only what already found the channel full): done
            // until the next turn or the writer's wake.
            if self.core.output().len() <= waiting {
                return;
            }
        }
    }
}

impl Handler for Peer {
    type Conn = Role;

    fn handle_accept(&mut self, ctx: &mut Ctx<Role>, conn: ConnId, from: SocketAddr) -> Role {
        ctx.set_idle_timeout(conn, Some(UPLOAD_IDLE));
        self.core.handle_accept(from.ip())
    }

    fn evictable(&self, role: &Role) -> bool {
        // Only a downloader's connection that has asked for nothing it is still owed: one in
        // line or being sent to keeps its place.
        matches!(role, Role::Upload(Upload::AwaitingGet { .. }))
    }

    fn handle_connected(&mut self, ctx: &mut Ctx<Role>, conn: ConnId, role: &mut Role) -> Verdict {
        let verdict = self.core.handle_connected(ctx.now(), conn, role);
        self.apply_lent(ctx, conn, role);
        verdict
    }

    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<Role>,
        conn: ConnId,
        role: &mut Role,
        payload: &[u8],
    ) -> Verdict {
        let verdict = self.core.handle_frame(ctx.now(), conn, role, payload);
        self.apply_lent(ctx, conn, role);
        if self.core.take_registers_done() {
            // A share's worth of registers (and their copies kept for a resend) was freed.
            crate::sys::process::release_free_memory();
        }
        verdict
    }

    fn handle_raw(
        &mut self,
        ctx: &mut Ctx<Role>,
        conn: ConnId,
        role: &mut Role,
        data: &[u8],
    ) -> Verdict {
        let verdict = self.core.handle_raw(ctx.now(), role, data);
        self.apply_lent(ctx, conn, role);
        verdict
    }

    fn handle_drained(&mut self, ctx: &mut Ctx<Role>, conn: ConnId, role: &mut Role) -> Verdict {
        self.core.handle_drained(ctx.now(), conn, role);
        self.apply_lent(ctx, conn, role);
        Verdict::Continue
    }

    fn handle_close(
        &mut self,
        ctx: &mut Ctx<Role>,
        conn: ConnId,
        role: Role,
        reason: &CloseReason,
    ) {
        self.core.handle_close(ctx.now(), Some(conn), role, reason);
        self.apply(ctx);
    }

    fn handle_wake(&mut self, ctx: &mut Ctx<Role>) {
        if self
            .shutdown
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            self.core.handle_shutdown();
            return self.apply(ctx);
        }
        if let Some(v) = &self.verifier {
            for done in v.drain() {
                self.core.handle_verified(ctx.now(), done);
            }
        }
        let mut scanned = false;
        while let Ok(event) = self.events.try_recv() {
            scanned |= matches!(event, Event::Scanned { .. });
            self.core.handle_event(ctx.now(), event);
        }
        if scanned {
            // A scan's transient lists (and its registers, once written) are freed.
            crate::sys::process::release_free_memory();
        }
        self.apply(ctx);
    }

    fn handle_timer(&mut self, ctx: &mut Ctx<Role>, id: u64) {
        if self.timer.map(|(_, current)| current) != Some(id) {
            return;
        }
        self.timer = None;
        self.core.handle_timeout(ctx.now());
        if self.core.wants_upload_progress(ctx.now()) {
            let uploads: Vec<(ConnId, Upload, u64)> = ctx
                .states()
                .filter_map(|(conn, role)| match role {
                    Role::Upload(u @ Upload::Sending { .. }) => {
                        Some((conn, *u, ctx.unsent_bytes(conn)))
                    }
                    _ => None,
                })
                .collect();
            self.core.handle_upload_progress(ctx.now(), &uploads);
        }
        // The page's deadlines share this timer: they are met (and moved on) here, or the
        // timer would be re-armed at a deadline already past.
        self.poll_web(ctx);
    }

    fn handle_turn_end(&mut self, ctx: &mut Ctx<Role>) {
        self.flush_output(ctx);
        // After the console commands that the output's room let run: the page hears their
        // lines in this turn.
        self.poll_web(ctx);
    }

    fn handle_web_request(
        &mut self,
        ctx: &mut Ctx<Role>,
        conn: ConnId,
        request: WebRequest,
    ) -> WebReply {
        let Some(w) = &mut self.web else {
            return WebReply::Respond(crate::reactor::WebResponse::text(
                crate::reactor::web::Status::NotFound,
                "404 Not Found",
            ));
        };
        let Some(local) = ctx.local_addr(conn) else {
            return WebReply::Respond(crate::reactor::WebResponse::text(
                crate::reactor::web::Status::BadRequest,
                "no local address",
            ));
        };
        let reply = w.handle_request(&mut self.core, ctx.now(), local, conn, request);
        self.apply(ctx);
        reply
    }

    fn handle_web_close(&mut self, _: &mut Ctx<Role>, conn: ConnId) {
        if let Some(w) = &mut self.web {
            w.handle_close(conn);
        }
    }

    fn handle_http_get(&mut self, ctx: &mut Ctx<Role>, path: &str) -> Option<HttpBody> {
        (path == "/metrics").then(|| HttpBody {
            content_type: crate::metrics::CONTENT_TYPE,
            body: metrics::render(&self.core, ctx).into_bytes(),
        })
    }
}

/// Resolves the downloads directory: the share directory unless given.
pub fn downloads_dir(share: &Path, downloads: Option<&Path>) -> PathBuf {
    downloads.map_or_else(|| share.to_path_buf(), Path::to_path_buf)
}
