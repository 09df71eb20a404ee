//! The test harness: the peer's sans-IO core wired to an in-memory index (the real
//! [`IndexServer`], which is sans-IO too) and to scripted in-memory holders, with virtual
//! time. [`Harness::drive`] carries out the core's actions the way the reactor would, and
//! delivers every answer at once; [`Harness::advance`] moves the clock and fires the core's
//! deadlines. Output lines are collected instead of printed.

use super::core::{Action, CoreConfig, PeerCore, Role};
use super::output::Line;
use super::share::SharedFile;
use super::threads::{Event, Job};
use crate::codec::Decoder;
use crate::index::server::{IndexServer, ServerLimits, Session};
use crate::reactor::{CloseReason, ConnId, Verdict};
use crate::wire::{
    self, ErrorCode, FileEntry, FileHash, Request, RequestBody, Response, ResponseBody,
    TransferRequest, TransferResponse, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The index's address, as the peer is told it.
pub const INDEX: &str = "127.0.0.1:9000";
/// The peer's own address, as the index sees it.
const ME: &str = "127.0.0.1:5000";

/// How a scripted holder answers a Get.
#[derive(Debug, Clone)]
pub enum Holder {
    /// Sends the bytes asked for.
    Good(Vec<u8>),
    /// Answers with an error frame.
    Refuses,
    /// Accepts the connection and never answers.
    Silent,
    /// Sends the true proof with these bytes instead (same length, wrong content).
    Wrong(Vec<u8>),
    /// Answers that the request waits in its upload queue at position 3, then nothing.
    Queues,
}

enum Conn {
    /// Boxed: an index session is large beside a holder's address.
    Index(Box<Session>),
    Holder(SocketAddr),
}

/// The core and its in-memory world.
pub struct Harness {
    pub core: PeerCore,
    pub now: Instant,
    pub index: IndexServer,
    /// Whether the index accepts connections.
    pub index_up: bool,
    /// Whether the index answers Hello with a version mismatch.
    pub index_other_version: bool,
    /// Whether the index is hung (SIGSTOPped): it accepts connections and reads nothing.
    pub index_hung: bool,
    /// Each holder's behaviour and the true content of its file.
    pub holders: HashMap<SocketAddr, (Holder, Vec<u8>)>,
    /// The groups of every range request a holder received, by holder.
    pub gets: Vec<(SocketAddr, Range<u64>)>,
    /// When each connect to the index was attempted.
    pub index_connects: Vec<Instant>,
    /// Everything the person was told, in order.
    pub lines: Vec<Line>,
    pub jobs: Vec<Job>,
    pub stopped: bool,
    conns: HashMap<ConnId, (Conn, Role)>,
    next_conn: usize,
    pub dir: PathBuf,
}

impl Harness {
    /// A started peer (console on) downloading into a fresh directory named for `tag`.
    pub fn new(tag: &str) -> Harness {
        let dir =
            std::env::temp_dir().join(format!("p2pshare-harness-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let core = PeerCore::new(CoreConfig {
            share_dir: dir.join("share"),
            downloads_dir: dir.clone(),
            index: INDEX.into(),
            console: true,
            progress_bar: false,
            seed: 42,
            index_timeout: super::session::DEFAULT_REPLY_TIMEOUT,
            download_limits: Default::default(),
            upload_slots: 4,
            max_queued_per_ip: 4,
            upload_min_rate: 1024,
            upload_rate_window: Duration::from_secs(10),
            max_upload_rate: 0,
        });
        let mut h = Harness {
            core,
            now: Instant::now(),
            index: IndexServer::new(ServerLimits::default()),
            index_up: true,
            index_other_version: false,
            index_hung: false,
            holders: HashMap::new(),
            gets: Vec::new(),
            index_connects: Vec::new(),
            lines: Vec::new(),
            jobs: Vec::new(),
            stopped: false,
            conns: HashMap::new(),
            next_conn: 1,
            dir,
        };
        h.core.start(5000);
        h.drive();
        h
    }

    /// The first scan found `files` (name, bytes); they are not on disk.
    pub fn scanned(&mut self, files: &[(&str, &[u8])]) {
        let files = files
            .iter()
            .map(|(name, bytes)| SharedFile {
                path: self.dir.join("share").join(name),
                name: name.to_string(),
                size: bytes.len() as u64,
                file_id: (0, 0),
                mtime_ns: 0,
                hash: FileHash::of(bytes),
            })
            .collect();
        let event = Event::Scanned {
            job: Job::Rescan { console: false },
            files,
            warnings: Vec::new(),
        };
        self.core.handle_event(self.now, event);
        self.drive();
    }

    /// Console lines typed by the person.
    pub fn type_lines(&mut self, lines: &[&str]) {
        for l in lines {
            self.core.handle_event(self.now, Event::Line(l.to_string()));
        }
        self.drive();
    }

    /// A holder at `addr` shares `bytes` as `name` in the index, answering as `how`.
    pub fn holder(&mut self, addr: &str, name: &str, bytes: &[u8], how: Holder) -> SocketAddr {
        let addr: SocketAddr = addr.parse().unwrap();
        let mut session = self.index.accept(addr);
        let mut out = Vec::new();
        for body in [
            RequestBody::Hello {
                version: PROTOCOL_VERSION,
                listen_port: addr.port(),
                agent: "holder".into(),
            },
            RequestBody::Register {
                files: vec![FileEntry {
                    hash: FileHash::of(bytes),
                    size: bytes.len() as u64,
                    name: name.into(),
                }],
            },
        ] {
            let payload = postcard_request(body);
            self.index.handle_payload(&mut session, &payload, &mut out);
        }
        self.index.settle();
        // The holder's session stays open for the rest of the test (never closed).
        let _ = session;
        self.holders.insert(addr, (how, bytes.to_vec()));
        addr
    }

    /// Holders of `hash` in the index, as a fresh client would see them.
    pub fn index_holders(&mut self, hash: FileHash) -> usize {
        let mut session = self.index.accept("10.9.9.9:1".parse().unwrap());
        let mut out = Vec::new();
        let hello = postcard_request(RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port: 1,
            agent: "observer".into(),
        });
        self.index.handle_payload(&mut session, &hello, &mut out);
        out.clear();
        let lookup = postcard_request(RequestBody::Lookup {
            key: wire::LookupKey::Hash(hash),
            after: None,
        });
        self.index.handle_payload(&mut session, &lookup, &mut out);
        let n = match frames(&out)
            .first()
            .map(|p| wire::decode::<Response>(p).unwrap().body)
        {
            Some(ResponseBody::Holders { files, .. }) => {
                files.iter().map(|f| f.holders.len()).sum()
            }
            _ => 0,
        };
        self.index.close(session, &CloseReason::Local);
        n
    }

    /// The index goes away (every session closes) and comes back empty when `up` is set.
    pub fn restart_index(&mut self, up: bool) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, (c, _))| matches!(c, Conn::Index(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.close(id, CloseReason::Eof);
        }
        self.index = IndexServer::new(ServerLimits::default());
        self.index_up = up;
        self.drive();
    }

    /// Moves virtual time forward by `by`, firing every deadline on the way.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(at) = self.core.poll_timeout().filter(|at| *at <= end) {
            self.now = self.now.max(at);
            self.core.handle_timeout(self.now);
            self.drive();
        }
        self.now = end;
    }

    /// Stdout results and stderr errors and notes, as text lines in order.
    pub fn said(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter_map(|l| super::render::text(l, super::render::Style::default()))
            .map(|(_, text)| text)
            .collect()
    }

    /// Carries out the core's actions until it has none, collecting what it says.
    pub fn drive(&mut self) {
        loop {
            while let Some(action) = self.core.poll_action() {
                match action {
                    Action::Connect { addr, role } => self.connect(addr, role),
                    Action::Send { conn, frame } => self.deliver(conn, &frame),
                    Action::Close { conn, reason, .. } => self.close(conn, reason),
                    Action::Hash(job) => self.jobs.push(job),
                    // Verified at once, as if the verifying thread answered before the next
                    // read.
                    Action::Verify(job) => {
                        let done = super::verify::run(job);
                        self.core.handle_verified(self.now, done);
                    }
                    // Done at once, as if the syncing thread ran before the next input.
                    Action::Sync(job) => super::verify::sync(job),
                    Action::Hold(_) | Action::Resume(_) => {}
                    Action::Stop => self.stopped = true,
                    Action::SetRole { conn, role } => {
                        if let Some((_, r)) = self.conns.get_mut(&conn) {
                            *r = role;
                        }
                    }
                    Action::Resolve(_) | Action::SendFile { .. } | Action::ExpectRaw { .. } => {}
                }
            }
            if self.core.output().is_empty() {
                return;
            }
            while let Some(line) = self.core.output().poll_line() {
                self.lines.push(line);
            }
            // As the reactor does once the writer took the output.
            self.core.handle_output_room(self.now);
        }
    }

    fn connect(&mut self, addr: SocketAddr, mut role: Role) {
        let conn = match &role {
            Role::Index => {
                self.index_connects.push(self.now);
                if !self.index_up || addr != INDEX.parse().unwrap() {
                    None
                } else {
                    Some(Conn::Index(Box::new(
                        self.index.accept(ME.parse().unwrap()),
                    )))
                }
            }
            _ => self
                .holders
                .contains_key(&addr)
                .then_some(Conn::Holder(addr)),
        };
        let Some(conn) = conn else {
            let refused = CloseReason::ConnectFailed(io::ErrorKind::ConnectionRefused);
            return self.core.handle_close(self.now, None, role, &refused);
        };
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let verdict = self.core.handle_connected(self.now, id, &mut role);
        self.conns.insert(id, (conn, role));
        self.verdict(id, verdict);
    }

    fn verdict(&mut self, id: ConnId, verdict: Verdict) {
        match verdict {
            Verdict::Continue => {}
            Verdict::Close(r) | Verdict::CloseAfterFlush(r) => self.close(id, r),
        }
    }

    fn close(&mut self, id: ConnId, reason: CloseReason) {
        if let Some((conn, role)) = self.conns.remove(&id) {
            if let Conn::Index(session) = conn {
                self.index.close(*session, &reason);
            }
            self.core.handle_close(self.now, Some(id), role, &reason);
        }
    }

    /// A frame from the peer reaches the other end, whose answers come straight back.
    fn deliver(&mut self, id: ConnId, frame: &[u8]) {
        for payload in frames(frame) {
            let (answers, verdict) = match self.conns.get_mut(&id) {
                None => return,
                Some((Conn::Holder(addr), _)) => {
                    let addr = *addr;
                    let Ok(TransferRequest::Range { first, end, .. }) = wire::decode(&payload)
                    else {
                        panic!("a range request")
                    };
                    self.gets.push((addr, first..end));
                    self.serve(id, addr, first..end);
                    continue;
                }
                // The kernel takes the bytes; the stopped process never reads them.
                Some((Conn::Index(_), _)) if self.index_hung => return,
                Some((Conn::Index(session), _)) => {
                    let mut out = Vec::new();
                    let verdict = if self.index_other_version {
                        let req: Request = wire::decode(&payload).unwrap();
                        wire::encode_frame(
                            &Response {
                                id: req.id,
                                body: ResponseBody::Error {
                                    code: ErrorCode::VersionMismatch,
                                    message: "this index speaks version 99".into(),
                                },
                            },
                            &mut out,
                        );
                        Verdict::CloseAfterFlush(CloseReason::Local)
                    } else {
                        self.index.handle_payload(session, &payload, &mut out)
                    };
                    self.index.settle();
                    (frames(&out), verdict)
                }
            };
            for answer in answers {
                self.answer_peer(id, &answer);
            }
            if verdict != Verdict::Continue {
                self.close(id, CloseReason::Eof);
            }
        }
    }

    fn serve(&mut self, id: ConnId, addr: SocketAddr, groups: Range<u64>) {
        let (how, real) = self.holders[&addr].clone();
        let sent = match how {
            Holder::Good(b) | Holder::Wrong(b) => b,
            Holder::Silent => return,
            Holder::Queues => {
                let mut out = Vec::new();
                wire::encode_frame(&TransferResponse::Queued { position: 3 }, &mut out);
                self.answer_peer(id, &frames(&out)[0]);
                return;
            }
            Holder::Refuses => {
                let mut out = Vec::new();
                wire::encode_frame(
                    &TransferResponse::Error {
                        code: ErrorCode::NotFound,
                        message: "not sharing it".into(),
                    },
                    &mut out,
                );
                self.answer_peer(id, &frames(&out)[0]);
                return self.close(id, CloseReason::Eof);
            }
        };
        // The proof of the true file, the data of the bytes this holder sends.
        let (_, ob) = super::outboard::compute_in_memory(&real);
        let range = super::outboard::answer_range(&ob, groups.clone()).unwrap();
        let mut out = Vec::new();
        wire::encode_frame(
            &TransferResponse::Sending {
                size: real.len() as u64,
                first: groups.start,
                end: groups.end,
            },
            &mut out,
        );
        if !self.answer_peer(id, &frames(&out)[0]) {
            return;
        }
        let mut raw = range.proof;
        raw.extend_from_slice(&sent[range.data.start as usize..range.data.end as usize]);
        for chunk in raw.chunks(4096) {
            let Some((_, role)) = self.conns.get_mut(&id) else {
                return;
            };
            let verdict = self.core.handle_raw(self.now, role, chunk);
            if verdict != Verdict::Continue {
                return self.verdict(id, verdict);
            }
        }
    }

    /// Hands one payload to the core; false if the connection closed because of it.
    fn answer_peer(&mut self, id: ConnId, payload: &[u8]) -> bool {
        let Some((_, role)) = self.conns.get_mut(&id) else {
            return false;
        };
        let verdict = self.core.handle_frame(self.now, id, role, payload);
        let open = verdict == Verdict::Continue;
        self.verdict(id, verdict);
        open
    }

    /// Where a download of `name` lands.
    pub fn landed(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The partial file of `bytes`' download.
    pub fn part_path(&self, bytes: &[u8]) -> PathBuf {
        part_path(&self.dir, FileHash::of(bytes))
    }
}

fn part_path(dir: &Path, hash: FileHash) -> PathBuf {
    dir.join(format!(".{hash}{}", super::share::PART_SUFFIX))
}

fn postcard_request(body: RequestBody) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_frame(&Request { id: 1, body }, &mut frame);
    frames(&frame).remove(0)
}

/// The payloads of the frames in `buf`.
fn frames(buf: &[u8]) -> Vec<Vec<u8>> {
    let mut decoder = Decoder::new(64 << 20);
    crate::codec::decode_all(&mut decoder, buf)
        .expect("well-formed frames")
        .0
}
