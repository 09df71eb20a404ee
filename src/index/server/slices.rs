//! Work the server does in slices across reactor turns, so that no request holds the loop for
//! long: big registers (and unregisters) and departing peers' removal.
//!
//! # Sliced requests
//! A `Register` of more than [`SLICE_UNITS`] files, or an `Unregister` of more than that many
//! hashes, is applied a slice at a time: the first slice while its frame is handled, the rest
//! as background work at the ends of turns. The session is *held* meanwhile (the reactor
//! delivers none of its later frames, see [`Ctx::hold`]), and its answer, the sum of the
//! slices' outcomes, is sent when the last slice is done; then it is resumed. So the session's
//! next request sees its whole register, while other sessions see after every slice an index
//! in which the peer has registered part of its list so far. Requests of at most
//! [`SLICE_UNITS`] files are answered in the same turn, as before.
//!
//! # Departures
//! When a `Ready` session closes its peer is marked departing at once (no answer lists it from
//! then on) and its holdings are withdrawn in slices (see `store/depart.rs`).
//!
//! # The hash filter
//! A due rebuild of the index's hash filter is done a step per turn (see `store/filter.rs`).
//!
//! # The budget
//! All background work shares one budget per turn: slices of at most [`SLICE_UNITS`] holdings
//! are done, requests first-come first-served in turn with departures, until
//! [`BACKGROUND_WORK_PER_TURN`] of time is used. However many big registers and departures
//! are waiting (a reconnect storm), a turn spends about that on them, and lookups and searches
//! keep being answered between turns: this is the admission control of a storm.

use super::{IndexServer, Verdict};
use crate::index::store::{PeerId, RegisterOutcome};
use crate::reactor::{ConnId, Ctx};
use crate::wire::{self, FileEntry, FileHash, Response, ResponseBody};
use std::time::{Duration, Instant};

/// Holdings (files registered or withdrawn) in one slice of background work; also the largest
/// register or unregister answered in the turn its frame arrives.
pub const SLICE_UNITS: usize = 64;

/// Time the background work may take per turn (checked between slices).
pub const BACKGROUND_WORK_PER_TURN: Duration = Duration::from_micros(800);

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
        files: Vec<FileEntry>,
        outcome: RegisterOutcome,
    },
    Unregister {
        hashes: Vec<FileHash>,
        removed: u32,
    },
}

impl IndexServer {
    /// Registers `files` for `peer` (a `Register` request), in slices if it is big and the
    /// connection can be held: then `None`, and the answer follows when the job is done.
    pub(super) fn start_register(
        &mut self,
        peer: PeerId,
        id: u32,
        files: Vec<FileEntry>,
    ) -> Option<ResponseBody> {
        let first = files.len().min(SLICE_UNITS);
        let outcome = self.register_slice(peer, &files[..first]);
        match self.current_conn {
            Some(conn) if first < files.len() => {
                self.jobs.push_back(Job {
                    conn,
                    peer,
                    id,
                    work: JobWork::Register { files, outcome },
                    at: first,
                });
                self.hold_current = true;
                None
            }
            _ => {
                let rest = self.register_slice(peer, &files[first..]);
                let outcome = add_outcomes(outcome, rest);
                self.cluster_registered(peer, files, outcome);
                Some(registered(outcome))
            }
        }
    }

    /// Withdraws `peer`'s holdings of `hashes` (an `Unregister` request), in slices if there
    /// are many and the connection can be held (see [`IndexServer::start_register`]).
    pub(super) fn start_unregister(
        &mut self,
        peer: PeerId,
        id: u32,
        hashes: Vec<FileHash>,
    ) -> Option<ResponseBody> {
        let first = hashes.len().min(SLICE_UNITS);
        let removed = self.unregister_slice(peer, &hashes[..first]);
        match self.current_conn {
            Some(conn) if first < hashes.len() => {
                self.jobs.push_back(Job {
                    conn,
                    peer,
                    id,
                    work: JobWork::Unregister { hashes, removed },
                    at: first,
                });
                self.hold_current = true;
                None
            }
            _ => {
                let removed = removed + self.unregister_slice(peer, &hashes[first..]);
                self.cluster_unregistered(peer, hashes, removed);
                Some(ResponseBody::Unregistered {
                    removed,
                    total: self.index.holdings_of(peer),
                })
            }
        }
    }

    /// Does up to about `budget` holdings of background work: one slice of the oldest request
    /// job, then departures. Appends the answers of finished jobs (their connection, the
    /// encoded frame) to `answers`. Returns the work done (0: nothing was waiting).
    pub fn poll_background(
        &mut self,
        budget: usize,
        answers: &mut Vec<(ConnId, Vec<u8>)>,
    ) -> usize {
        let budget = budget.max(1);
        let mut used = 0;
        if let Some(mut job) = self.jobs.pop_front() {
            let (len, end) = match &job.work {
                JobWork::Register { files, .. } => {
                    (files.len(), (job.at + budget).min(files.len()))
                }
                JobWork::Unregister { hashes, .. } => {
                    (hashes.len(), (job.at + budget).min(hashes.len()))
                }
            };
            used += end - job.at;
            match &mut job.work {
                JobWork::Register { files, outcome } => {
                    let more = self.register_slice(job.peer, &files[job.at..end]);
                    *outcome = add_outcomes(*outcome, more);
                    // Its words and tables now, within this slice's budget.
                    self.index.post_pending();
                }
                JobWork::Unregister { hashes, removed } => {
                    *removed += self.unregister_slice(job.peer, &hashes[job.at..end]);
                }
            }
            job.at = end;
            if end == len {
                let body = match job.work {
                    JobWork::Register { outcome, files } => {
                        self.cluster_registered(job.peer, files, outcome);
                        registered(outcome)
                    }
                    JobWork::Unregister { removed, hashes } => {
                        self.cluster_unregistered(job.peer, hashes, removed);
                        ResponseBody::Unregistered {
                            removed,
                            total: self.index.holdings_of(job.peer),
                        }
                    }
                };
                let mut out = Vec::new();
                wire::encode_frame(&Response { id: job.id, body }, &mut out);
                answers.push((job.conn, out));
            } else {
                self.jobs.push_back(job);
            }
        }
        if used < budget {
            used += self.index.continue_departures(budget - used);
        }
        used
    }

    /// Whether background work is waiting.
    pub fn has_background_work(&self) -> bool {
        !self.jobs.is_empty() || self.index.has_departures() || self.index.is_rebuilding_filter()
    }

    /// Does all background work now, in one go (for sans-IO callers and tests); returns the
    /// answers of the jobs it finished.
    pub fn finish_background(&mut self) -> Vec<(ConnId, Vec<u8>)> {
        let mut answers = Vec::new();
        while self.has_background_work() {
            self.poll_background(usize::MAX, &mut answers);
            self.index.continue_filter_rebuild();
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
        self.index.continue_filter_rebuild();
        let started = Instant::now();
        let mut answers = Vec::new();
        while self.poll_background(SLICE_UNITS, &mut answers) > 0 {
            if started.elapsed() >= BACKGROUND_WORK_PER_TURN {
                break;
            }
        }
        for (conn, frame) in answers {
            ctx.send(conn, |out| out.extend_from_slice(&frame));
            ctx.resume(conn);
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
        let mut out = Vec::new();
        server.current_conn = Some(conn);
        let payload = wire::to_payload(&Request { id: 9, body });
        assert_eq!(
            server.handle_payload(session, &payload, &mut out),
            Verdict::Continue
        );
        server.current_conn = None;
        (out, std::mem::take(&mut server.hold_current))
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
        // The first slice of each is in at once.
        assert_eq!(
            server.index().entry_count(),
            10 + PEERS as usize * SLICE_UNITS
        );
        let mut answers = Vec::new();
        let mut polls = 0;
        while server.has_background_work() {
            let before = server.index().entry_count();
            let used = server.poll_background(SLICE_UNITS, &mut answers);
            // Each poll is one bounded slice, and other sessions see it whole.
            assert!(used <= SLICE_UNITS, "{used}");
            assert_eq!(server.index().entry_count(), before + used);
            polls += 1;
        }
        let needed = PEERS as usize * (FILES - SLICE_UNITS);
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
