//! Work the server does in slices across reactor turns, so that no request holds the loop for
//! long: big registers (and unregisters), departing peers' removal, the hash filter's rebuild
//! and the arenas' compaction.
//!
//! # Sliced requests
//! A `Register` of more than [`SLICE_UNITS`] files, or an `Unregister` of more than that many
//! hashes, is applied a slice at a time as background work at the ends of turns (none of it in
//! the turn its frame arrives). A register frame over `LAZY_REGISTER_BYTES` is not even decoded
//! whole: its job decodes each slice's entries from the frame's bytes (see
//! `register_frame.rs`). The session is *held* meanwhile (the reactor delivers none of its
//! later frames, see [`Ctx::hold`]), and its answer, the sum of the slices' outcomes, is sent
//! when the last slice is done; then it is resumed. So the session's next request sees its
//! whole register, while other sessions see after every slice an index in which the peer has
//! registered part of its list so far. Requests of at most [`SLICE_UNITS`] files are answered
//! in the same turn, as before.
//!
//! # Departures
//! When a `Ready` session closes its peer is marked departing at once (no answer lists it from
//! then on) and its holdings are withdrawn in slices (see `store/depart.rs`).
//!
//! # Word posting
//! A register's words are posted after its answer is decided (see `Index::post_pending`):
//! at the end of the turn for a small one, after each group for a big one, in both cases
//! only until the turn's deadline; the rest waits for the next turn (a big register's answer
//! waits for all of it, and any request that reads the index finishes it first).
//!
//! # The hash filter, the arenas and the name table
//! A due rebuild of the index's hash filter, a compaction of its name or word-text arena, and
//! the name table's walks after a word crossed a crowded mark, are each done a step per turn
//! (see `store/filter.rs`, `store/names.rs`, `store/byname.rs`), before the slices: in a
//! turn whose requests took [`STEPS_AFTER`] already they wait for the next, three turns in a
//! row at most, and a name walk's step also ends at the turn's [`TURN_WORK_TARGET`].
//!
//! # The budget
//! All background work shares one budget per turn: slices of at most [`SLICE_UNITS`] holdings
//! are done, requests first-come first-served in turn with departures, until
//! [`BACKGROUND_WORK_PER_TURN`] of time is used, or until the turn as a whole (its frames
//! included) has lasted [`TURN_WORK_TARGET`], after one slice at least. However many big
//! registers and departures are waiting (a reconnect storm), a turn spends about that on them,
//! and lookups and searches keep being answered between turns: this is the admission control
//! of a storm.

use super::register_frame::{EntryError, LazyEntries};
use super::{IndexServer, Verdict};
use crate::index::store::{PeerId, RegisterOutcome};
use crate::index::worktrace as trace;
use crate::reactor::{CloseReason, ConnId, Ctx};
use crate::wire::{self, ErrorCode, FileEntry, FileHash, Response, ResponseBody};
use std::time::{Duration, Instant};

/// Holdings (files registered or withdrawn) in one slice of background work; also the largest
/// register or unregister answered in the turn its frame arrives.
pub const SLICE_UNITS: usize = 64;

/// Holdings registered, withdrawn or departed between two looks at the clock: a slice stops
/// after the group during which its deadline passed.
pub const GROUP_UNITS: usize = crate::index::store::DEPARTURE_GROUP_HOLDINGS;

/// A big register's group between two looks at the clock: smaller than [`GROUP_UNITS`],
/// because a file it gives a second holder moves the postings of the file's other entries to
/// a new tier when the next group starts, whatever the clock says (words reposted in long
/// lists: 16 such files took up to 2.5 ms on 10M real names, session 17's `measure_churn`).
pub const REGISTER_GROUP_UNITS: usize = 4;

/// Time the background work may take per turn (checked after each group of [`GROUP_UNITS`]
/// holdings).
pub const BACKGROUND_WORK_PER_TURN: Duration = Duration::from_micros(800);

/// Background work stops, once it has done a slice, when the turn as a whole (its frames,
/// then the background work) has lasted this long: a turn whose frames took their time
/// leaves the background less, so the loop's pause stays under the 2 ms of issue 12.
pub const TURN_WORK_TARGET: Duration = Duration::from_micros(1200);

/// The bounded steps of background work (the hash filter's rebuild, the arenas' compaction,
/// the name table's walks, the search memory's growth) wait for a later turn when the turn's
/// requests have already taken this long ...
pub const STEPS_AFTER: Duration = Duration::from_micros(600);

/// ... but for at most this many turns in a row.
pub const STEPS_WAIT_AT_MOST: u32 = 3;

/// A request being applied in slices, for a held session.
#[derive(Debug)]
pub(super) struct Job {
    /// The held connection, to answer and resume.
    pub(super) conn: ConnId,
    pub(super) peer: PeerId,
    /// The request id to answer.
    id: u32,
    work: JobWork,
    /// What is left starts here.
    at: usize,
}

#[derive(Debug)]
enum JobWork {
    Register {
        files: RegisterFiles,
        outcome: RegisterOutcome,
    },
    Unregister {
        hashes: Vec<FileHash>,
        removed: u32,
    },
}

/// The files of a register: decoded with its frame, or decoded a slice at a time from the
/// frame's bytes (a big frame: see `register_frame.rs`).
#[derive(Debug)]
pub(super) enum RegisterFiles {
    Decoded(Vec<FileEntry>),
    Lazy {
        entries: LazyEntries,
        /// The slice being registered.
        slice: Vec<FileEntry>,
        /// Every entry decoded so far, kept in cluster mode only (the other nodes are sent
        /// the whole register once it is done).
        kept: Option<Vec<FileEntry>>,
    },
}

impl RegisterFiles {
    /// The next slice of at most `n` files, from `*at` (which it advances).
    fn next_slice(&mut self, at: &mut usize, n: usize) -> Result<&[FileEntry], EntryError> {
        match self {
            RegisterFiles::Decoded(files) => {
                let end = (*at + n).min(files.len());
                let slice = &files[*at..end];
                *at = end;
                Ok(slice)
            }
            RegisterFiles::Lazy {
                entries,
                slice,
                kept,
            } => {
                entries.next_slice(n, slice)?;
                *at += slice.len();
                if let Some(kept) = kept {
                    kept.extend_from_slice(slice);
                }
                Ok(slice)
            }
        }
    }

    /// The files registered, for the cluster: all of a decoded request; of a big frame, what
    /// was kept (nothing outside cluster mode).
    fn into_registered(self) -> Vec<FileEntry> {
        match self {
            RegisterFiles::Decoded(files) => files,
            RegisterFiles::Lazy { kept, .. } => kept.unwrap_or_default(),
        }
    }

    /// Whether every file has been taken.
    fn is_done(&self, at: usize) -> bool {
        match self {
            RegisterFiles::Decoded(files) => at == files.len(),
            RegisterFiles::Lazy { entries, .. } => entries.is_done(),
        }
    }
}

impl IndexServer {
    /// Registers `files` for `peer` (a `Register` request), in slices if it is big and the
    /// connection can be held: then `Ok(None)`, and the answer follows when the job is done.
    /// A big frame's files come from `self.lazy_register` (see `register_frame.rs`), and an
    /// entry of it that does not decode is an `Err` (the session is to be closed).
    pub(super) fn start_register(
        &mut self,
        peer: PeerId,
        id: u32,
        files: Vec<FileEntry>,
    ) -> Result<Option<ResponseBody>, EntryError> {
        let mut files = match self.lazy_register.take() {
            Some(entries) => RegisterFiles::Lazy {
                entries,
                slice: Vec::with_capacity(SLICE_UNITS),
                kept: self.cluster.is_some().then(Vec::new),
            },
            None => RegisterFiles::Decoded(files),
        };
        let big = match &files {
            RegisterFiles::Decoded(f) => f.len() > SLICE_UNITS,
            RegisterFiles::Lazy { .. } => true,
        };
        match self.current_conn {
            Some(conn) if big => {
                // All of it as background work, none in this frame's turn: the turn that
                // brought a 1 MiB frame has spent its share on reading it.
                self.jobs.push_back(Job {
                    conn,
                    peer,
                    id,
                    work: JobWork::Register {
                        files,
                        outcome: RegisterOutcome::default(),
                    },
                    at: 0,
                });
                self.hold_current = true;
                Ok(None)
            }
            _ => {
                let mut at = 0;
                let mut outcome = RegisterOutcome::default();
                while !files.is_done(at) {
                    let slice = files.next_slice(&mut at, SLICE_UNITS)?;
                    let more = self.register_slice(peer, slice);
                    outcome = add_outcomes(outcome, more);
                }
                if let RegisterFiles::Lazy { entries, .. } = &mut files {
                    self.spare_frame =
                        std::mem::replace(entries, LazyEntries::empty()).into_buffer();
                }
                outcome.total = self.index.holdings_of(peer);
                self.cluster_registered(peer, files.into_registered(), outcome);
                Ok(Some(registered(outcome)))
            }
        }
    }

    /// Registers a small register's entries (at most [`SLICE_UNITS`], their names borrowed
    /// from the frame) at once, as [`IndexServer::start_register`] does a decoded one of that
    /// size.
    pub(super) fn register_borrowed(
        &mut self,
        peer: PeerId,
        files: &[wire::FileEntryRef<'_>],
    ) -> ResponseBody {
        debug_assert!(files.len() <= SLICE_UNITS);
        let mut outcome = self.register_slice(peer, files);
        outcome.total = self.index.holdings_of(peer);
        if self.cluster.is_some() {
            let owned = files
                .iter()
                .map(wire::FileEntryRef::to_owned_entry)
                .collect();
            self.cluster_registered(peer, owned, outcome);
        }
        registered(outcome)
    }

    /// Withdraws `peer`'s holdings of `hashes` (an `Unregister` request), in slices if there
    /// are many and the connection can be held (see [`IndexServer::start_register`]).
    pub(super) fn start_unregister(
        &mut self,
        peer: PeerId,
        id: u32,
        hashes: Vec<FileHash>,
    ) -> Option<ResponseBody> {
        match self.current_conn {
            Some(conn) if hashes.len() > SLICE_UNITS => {
                self.jobs.push_back(Job {
                    conn,
                    peer,
                    id,
                    work: JobWork::Unregister { hashes, removed: 0 },
                    at: 0,
                });
                self.hold_current = true;
                None
            }
            _ => {
                let removed = self.unregister_slice(peer, &hashes);
                self.cluster_unregistered(peer, hashes, removed);
                Some(ResponseBody::Unregistered {
                    removed,
                    total: self.index.holdings_of(peer),
                })
            }
        }
    }

    /// Does up to about `budget` holdings of background work: one slice of the oldest request
    /// job, then departures, in groups of [`GROUP_UNITS`] holdings ([`REGISTER_GROUP_UNITS`] for
    /// a register), stopping after a group once
    /// `deadline` has passed (the first group is always done). Appends the answers of finished
    /// jobs (their connection, the encoded frame) to `answers`. Returns the work done (0:
    /// nothing was waiting).
    pub fn poll_background(
        &mut self,
        budget: usize,
        deadline: Option<Instant>,
        answers: &mut Vec<(ConnId, Vec<u8>)>,
    ) -> usize {
        let budget = budget.max(1);
        let is_late = || deadline.is_some_and(|d| Instant::now() >= d);
        let mut used = 0;
        let mut late = false;
        if let Some(mut job) = self.jobs.pop_front() {
            let before = job.at;
            let done = match &mut job.work {
                JobWork::Register { files, outcome } => loop {
                    // The words of the last group, if its turn ended before they were all
                    // posted; then this group's. The answer waits for all of them.
                    if !self.index.post_pending_until(is_late) {
                        late = true;
                        break None;
                    }
                    if files.is_done(job.at) {
                        outcome.total = self.index.holdings_of(job.peer);
                        break Some(Ok(registered(*outcome)));
                    }
                    if job.at - before >= budget || late {
                        break None;
                    }
                    let group = (budget - (job.at - before)).min(REGISTER_GROUP_UNITS);
                    match files.next_slice(&mut job.at, group) {
                        Ok(slice) => {
                            let more = trace::time("register slice", || {
                                self.register_slice(job.peer, slice)
                            });
                            *outcome = add_outcomes(*outcome, more);
                        }
                        Err(e) => break Some(Err(e)),
                    }
                    late = is_late();
                },
                JobWork::Unregister { hashes, removed } => loop {
                    let group = (budget - (job.at - before)).min(GROUP_UNITS);
                    let end = (job.at + group).min(hashes.len());
                    *removed += trace::time("unregister slice", || {
                        self.unregister_slice(job.peer, &hashes[job.at..end])
                    });
                    job.at = end;
                    if end == hashes.len() {
                        break Some(Ok(ResponseBody::Unregistered {
                            removed: *removed,
                            total: self.index.holdings_of(job.peer),
                        }));
                    }
                    late = is_late();
                    if job.at - before >= budget || late {
                        break None;
                    }
                },
            };
            used += (job.at - before).max(1);
            if done.is_some() {
                if let JobWork::Register {
                    files: RegisterFiles::Lazy { entries, .. },
                    ..
                } = &mut job.work
                {
                    self.spare_frame =
                        std::mem::replace(entries, LazyEntries::empty()).into_buffer();
                }
            }
            match done {
                None => self.jobs.push_back(job),
                Some(Ok(body)) => {
                    match job.work {
                        JobWork::Register { files, outcome } => {
                            self.cluster_registered(job.peer, files.into_registered(), outcome)
                        }
                        JobWork::Unregister { hashes, removed } => {
                            self.cluster_unregistered(job.peer, hashes, removed)
                        }
                    }
                    let mut out = Vec::new();
                    wire::encode_frame(&Response { id: job.id, body }, &mut out);
                    answers.push((job.conn, out));
                }
                Some(Err(EntryError(message))) => {
                    // As for a frame that does not decode at all: an error, then the close.
                    let mut out = Vec::new();
                    let message = format!("register entry: {message}");
                    self.error(&mut out, job.id, ErrorCode::Malformed, message.clone());
                    answers.push((job.conn, out));
                    self.closing.push((job.conn, message));
                }
            }
        }
        if used < budget && !late {
            used += trace::time("departure slice", || {
                self.index.continue_departures_until(budget - used, is_late)
            });
        }
        used
    }

    /// Whether background work is waiting.
    pub fn has_background_work(&self) -> bool {
        !self.jobs.is_empty()
            || self.index.has_departures()
            || self.index.is_rebuilding_filter()
            || self.index.is_compacting()
            || self.index.has_name_walks()
            || self.index.has_pending()
            || self.index.is_search_memory_short()
    }

    /// Does all background work now, in one go (for sans-IO callers and tests); returns the
    /// answers of the jobs it finished.
    pub fn finish_background(&mut self) -> Vec<(ConnId, Vec<u8>)> {
        let mut answers = Vec::new();
        while self.has_background_work() {
            self.poll_background(usize::MAX, None, &mut answers);
            self.index.post_pending();
            self.index.continue_filter_rebuild();
            self.index.continue_compaction();
            self.index.continue_name_walks();
            self.index.continue_search_memory();
        }
        answers
    }

    /// The jobs of `peer`'s session are dropped (its connection closed).
    pub(super) fn cancel_jobs(&mut self, peer: PeerId) {
        self.jobs.retain(|j| j.peer != peer);
    }

    /// The end of a reactor turn: background work within [`BACKGROUND_WORK_PER_TURN`], the
    /// finished jobs answered and their sessions resumed; another turn at once if work is left.
    pub(super) fn turn_end(&mut self, ctx: &mut Ctx<super::Session>) {
        if !self.has_background_work() {
            return;
        }
        // The steps of the filter's rebuild, the compactions, the name walks and the search
        // memory come on top of the turn's requests: in a turn whose requests already took
        // [`STEPS_AFTER`] they wait, but never more than [`STEPS_WAIT_AT_MOST`] turns in a
        // row, so they progress under any load.
        let late = ctx.now() + TURN_WORK_TARGET;
        if Instant::now() < ctx.now() + STEPS_AFTER || self.steps_waited >= STEPS_WAIT_AT_MOST {
            self.steps_waited = 0;
            trace::time("filter rebuild step", || {
                self.index.continue_filter_rebuild()
            });
            trace::time("compaction step", || self.index.continue_compaction());
            trace::time("name walk step", || {
                self.index
                    .continue_name_walks_until(|| Instant::now() >= late)
            });
            trace::time("search memory step", || self.index.continue_search_memory());
        } else {
            self.steps_waited += 1;
        }
        let deadline = (Instant::now() + BACKGROUND_WORK_PER_TURN).min(late);
        let mut answers = Vec::new();
        while self.poll_background(SLICE_UNITS, Some(deadline), &mut answers) > 0 {
            if Instant::now() >= deadline {
                break;
            }
        }
        for (conn, frame) in answers {
            ctx.send(conn, |out| out.extend_from_slice(&frame));
            ctx.resume(conn);
        }
        for (conn, message) in self.closing.drain(..) {
            ctx.close_after_flush(conn, CloseReason::Protocol(message));
        }
        if self.has_background_work() {
            ctx.request_turn();
        }
    }

    /// After a frame of `conn` was handled: hold it if its request became a job.
    pub(super) fn after_frame(&mut self, ctx: &mut Ctx<super::Session>, conn: ConnId, v: &Verdict) {
        self.current_conn = None;
        if std::mem::take(&mut self.hold_current) && *v == Verdict::Continue {
            ctx.hold(conn);
            ctx.request_turn();
        }
    }
}

fn add_outcomes(a: RegisterOutcome, b: RegisterOutcome) -> RegisterOutcome {
    RegisterOutcome {
        added: a.added + b.added,
        rejected: a.rejected + b.rejected,
        total: b.total,
    }
}

fn registered(o: RegisterOutcome) -> ResponseBody {
    ResponseBody::Registered {
        added: o.added,
        rejected: o.rejected,
        total: o.total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::server::{ServerLimits, Session};
    use crate::wire::{Request, RequestBody};
    use std::net::SocketAddr;

    fn join(server: &mut IndexServer, port: u16) -> Session {
        let mut session = server.accept(SocketAddr::from(([127, 0, 0, 1], port)));
        let hello = RequestBody::Hello {
            version: wire::PROTOCOL_VERSION,
            listen_port: port,
            agent: String::new(),
        };
        let mut out = Vec::new();
        let payload = wire::to_payload(&Request { id: 0, body: hello });
        server.handle_payload(&mut session, &payload, &mut out);
        session
    }

    fn files(tag: u16, n: usize) -> Vec<FileEntry> {
        (0..n)
            .map(|i| FileEntry {
                hash: FileHash::of(format!("{tag}/{i}").as_bytes()),
                size: 1,
                name: format!("storm {tag} {i}"),
            })
            .collect()
    }

    /// Handles `body` as the frame of connection `conn` (as the reactor handler does);
    /// returns what was written at once and whether the connection is to be held.
    fn frame(
        server: &mut IndexServer,
        session: &mut Session,
        conn: ConnId,
        body: RequestBody,
    ) -> (Vec<u8>, bool) {
        let payload = wire::to_payload(&Request { id: 9, body });
        let (out, verdict, held) = raw_frame(server, session, Some(conn), &payload);
        assert_eq!(verdict, Verdict::Continue);
        (out, held)
    }

    /// Handles `payload` as a frame (of connection `conn`, if it can be held).
    fn raw_frame(
        server: &mut IndexServer,
        session: &mut Session,
        conn: Option<ConnId>,
        payload: &[u8],
    ) -> (Vec<u8>, Verdict, bool) {
        let mut out = Vec::new();
        server.current_conn = conn;
        let verdict = server.handle_payload(session, payload, &mut out);
        server.current_conn = None;
        (out, verdict, std::mem::take(&mut server.hold_current))
    }

    fn responses(out: &[u8]) -> Vec<wire::Response> {
        let (frames, used) =
            crate::codec::decode_all(&mut crate::codec::Decoder::default(), out).unwrap();
        assert_eq!(used, out.len());
        frames.iter().map(|f| wire::decode(f).unwrap()).collect()
    }

    fn register_payload(files: Vec<FileEntry>) -> Vec<u8> {
        wire::to_payload(&Request {
            id: 9,
            body: RequestBody::Register { files },
        })
    }

    #[test]
    fn a_big_register_frame_is_decoded_in_slices_and_registered_whole() {
        let mut server = IndexServer::new(ServerLimits::default());
        let mut s = join(&mut server, 1);
        let all = files(1, 3_000);
        let payload = register_payload(all.clone());
        assert!(payload.len() > super::super::LAZY_REGISTER_BYTES);
        let (out, verdict, held) = raw_frame(&mut server, &mut s, Some(ConnId(1)), &payload);
        assert!(out.is_empty() && held && verdict == Verdict::Continue);
        // Nothing of it is decoded or registered in the frame's own turn.
        assert_eq!(server.index().entry_count(), 0);
        let mut answers = Vec::new();
        while !server.jobs.is_empty() || server.index().has_departures() {
            let before = server.index().entry_count();
            let used = server.poll_background(SLICE_UNITS, None, &mut answers);
            assert!(used <= SLICE_UNITS);
            assert_eq!(server.index().entry_count(), before + used);
        }
        assert_eq!(answers.len(), 1);
        let resp = &responses(&answers[0].1)[0];
        assert_eq!(
            resp.body,
            ResponseBody::Registered {
                added: 3_000,
                rejected: 0,
                total: 3_000
            }
        );
        for f in [&all[0], &all[1_500], &all[2_999]] {
            let found = server.index_mut().lookup(&wire::LookupKey::Hash(f.hash));
            assert_eq!(found.unwrap()[0].name, f.name);
        }
        // Its buffer is kept for the next big frame.
        assert!(server.spare_frame.capacity() >= payload.len() - 8);
        // Without a connection to hold (a sans-IO caller), it is done at once.
        let mut t = join(&mut server, 2);
        let (out, verdict, held) = raw_frame(&mut server, &mut t, None, &payload);
        assert!(!held && verdict == Verdict::Continue);
        assert_eq!(
            responses(&out)[0].body,
            ResponseBody::Registered {
                added: 3_000,
                rejected: 0,
                total: 3_000
            }
        );
    }

    #[test]
    fn a_big_register_frame_that_turns_out_malformed_gets_an_error_and_a_close() {
        let mut server = IndexServer::new(ServerLimits::default());
        let mut s = join(&mut server, 1);
        let mut payload = register_payload(files(1, 3_000));
        payload.extend_from_slice(b"trailing junk");
        let (out, _, held) = raw_frame(&mut server, &mut s, Some(ConnId(1)), &payload);
        assert!(out.is_empty() && held);
        let answers = server.finish_background();
        assert_eq!(answers.len(), 1);
        let resp = &responses(&answers[0].1)[0];
        assert_eq!(resp.id, 9);
        assert!(
            matches!(&resp.body, ResponseBody::Error { code: wire::ErrorCode::Malformed, message } if message.contains("trailing")),
            "{resp:?}"
        );
        assert_eq!(server.closing.len(), 1);
        assert_eq!(server.closing[0].0, ConnId(1));
        // Its close withdraws what it registered before the bad part.
        server.close(s, &crate::reactor::CloseReason::Eof);
        server.finish_background();
        assert_eq!(server.index().entry_count(), 0);

        // Sans-IO: the same error at once, and the verdict closes.
        let mut t = join(&mut server, 2);
        let (out, verdict, _) = raw_frame(&mut server, &mut t, None, &payload);
        assert!(
            matches!(verdict, Verdict::CloseAfterFlush(_)),
            "{verdict:?}"
        );
        assert!(matches!(
            responses(&out)[0].body,
            ResponseBody::Error {
                code: wire::ErrorCode::Malformed,
                ..
            }
        ));
    }

    #[test]
    fn a_storm_of_big_registers_is_worked_on_in_bounded_slices_and_small_ones_at_once() {
        const PEERS: u16 = 5;
        const FILES: usize = 2_000;
        let mut server = IndexServer::new(ServerLimits::default());
        // A small register is answered at once, not held.
        let mut small = join(&mut server, 100);
        let (out, held) = frame(
            &mut server,
            &mut small,
            ConnId(100),
            RequestBody::Register {
                files: files(100, 10),
            },
        );
        assert!(!held && !out.is_empty());
        let mut sessions: Vec<Session> = (1..=PEERS).map(|p| join(&mut server, p)).collect();
        for (p, s) in sessions.iter_mut().enumerate() {
            let (out, held) = frame(
                &mut server,
                s,
                ConnId(p + 1),
                RequestBody::Register {
                    files: files(p as u16 + 1, FILES),
                },
            );
            assert!(
                held && out.is_empty(),
                "a big register is held, not answered"
            );
        }
        // None of them is worked on in its frame's turn.
        assert_eq!(server.index().entry_count(), 10);
        let mut answers = Vec::new();
        let mut polls = 0;
        while !server.jobs.is_empty() || server.index().has_departures() {
            let before = server.index().entry_count();
            let used = server.poll_background(SLICE_UNITS, None, &mut answers);
            // Each poll is one bounded slice, and other sessions see it whole.
            assert!(used <= SLICE_UNITS, "{used}");
            assert_eq!(server.index().entry_count(), before + used);
            polls += 1;
        }
        let needed = PEERS as usize * FILES;
        assert!(polls >= needed / SLICE_UNITS, "{polls} polls");
        // Each session is answered once, with the whole register.
        let mut answered: Vec<usize> = answers.iter().map(|(c, _)| c.0).collect();
        answered.sort_unstable();
        assert_eq!(answered, (1..=PEERS as usize).collect::<Vec<_>>());
        for (_, frame) in &answers {
            let (frames, _) =
                crate::codec::decode_all(&mut crate::codec::Decoder::default(), frame).unwrap();
            let resp: wire::Response = wire::decode(&frames[0]).unwrap();
            assert_eq!(resp.id, 9);
            assert_eq!(
                resp.body,
                ResponseBody::Registered {
                    added: FILES as u32,
                    rejected: 0,
                    total: FILES as u32
                }
            );
        }
        // A session that closes mid-register has the rest dropped, and departs in slices.
        let mut quitter = join(&mut server, 77);
        let (_, held) = frame(
            &mut server,
            &mut quitter,
            ConnId(77),
            RequestBody::Register {
                files: files(77, FILES),
            },
        );
        assert!(held);
        server.close(quitter, &crate::reactor::CloseReason::Eof);
        assert!(server.finish_background().is_empty());
        assert_eq!(server.index().entry_count(), 10 + PEERS as usize * FILES);
    }
}
