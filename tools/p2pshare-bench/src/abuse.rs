//! The abuse mode (`--abuse`): can one connection stall the index for everyone? An honest
//! client (one session, one request at a time) times its searches and lookups on the idle
//! index, then does the same operations again while an abuser, on its own connection, keeps
//! `in_flight` of the most expensive requests it can find pipelined, refilling as fast as
//! the answers come back. Reported: the honest client's p50 and p99 in both phases and their
//! ratios; the target is a p99 under abuse within [`TARGET_P99_RATIO`] × the idle p99.
//!
//! The expensive requests come from the indexed names' statistics
//! ([`crate::corpus::NameStats`]): searches for the commonest one-letter prefixes and the
//! commonest words (each matches a large share of the index), and lookups by the commonest
//! exact names (each answers every file of that name with its holders).
//!
//! # Invariants
//! - Both phases run the same operations in the same order (same run number and seed); a
//!   phase ends when its operations are done or its time limit has passed.
//! - The abuser reads every answer (so the index never parks it for unread output) and is
//!   stopped, its connection shut down, before the results are reported.
//! - Against an index on IPv4 loopback the abuser connects from its own address,
//!   [`ABUSER_LOOPBACK`], so that indexd's per-address budget and bans tell it from the
//!   honest client (on 127.0.0.1), as they would two hosts. Its answers are counted by kind:
//!   searched, looked up, rate limited, banned (indexd then closes its connection, and the
//!   abuser stops: a ban ends the abuse), other errors.
//! - When the abuser's first refusal, its ban and indexd's close of its connection came is
//!   kept (from its start), and so are its answers when the measured phase starts: a run in
//!   which it was banned, or closed by indexd, before that phase measured an index without
//!   abuse, and says which happened and when ([`gone_text`],
//!   [`AbuseSummary::banned_before_phase`]).

use super::client::Client;
use super::corpus::NameStats;
use super::report::PerClass;
use super::stats::OpSummary;
use p2pshare::codec::Decoder;
use p2pshare::wire::{self, LookupKey, Request, RequestBody, Response, ResponseBody};
use serde::Serialize;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The target: the honest client's p99 under abuse at most this multiple of its idle p99.
pub const TARGET_P99_RATIO: f64 = 2.0;

/// The honest client starts an op at most this often (100 a second: a busy user or script,
/// not a flood; a closed loop of its own would spend its session's rate limit and measure
/// that instead of the abuser's effect).
pub const HONEST_PACE: Duration = Duration::from_millis(10);

/// How long the abuser runs before the honest client's abused phase starts: longer than the
/// 2 s burst indexd's rate limits allow a session or an address at once, so the phase
/// measures the abuse indexd sustains, not the first burst (which a token bucket lets
/// through by design; it delays honest requests for a fraction of a second).
pub const WARMUP: Duration = Duration::from_secs(3);

/// Largest answer frame the abuser accepts: a lookup of a common name may be huge, and the
/// abuser only counts answers.
const ABUSER_MAX_FRAME_BYTES: usize = 1 << 30;

/// How often the abuser's threads look at the stop flag while blocked.
const POLL: Duration = Duration::from_millis(50);

/// The abuser's listening port (fake, as every bench session's).
const ABUSER_PORT: u16 = 39999;

/// The address the abuser connects from when the index is on IPv4 loopback.
pub const ABUSER_LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

/// A connection to `addr`, from [`ABUSER_LOOPBACK`] if `addr` is IPv4 loopback.
fn connect_from_own_address(addr: SocketAddr) -> io::Result<TcpStream> {
    let ipv4_loopback = matches!(addr, SocketAddr::V4(a) if a.ip().is_loopback());
    if !ipv4_loopback {
        return TcpStream::connect(addr);
    }
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((ABUSER_LOOPBACK, 0)).into())?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// The abuser's answers, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AbuserAnswers {
    /// Search results.
    pub searched: u64,
    /// Lookup answers (holders).
    pub looked_up: u64,
    /// Refused over a rate limit (`RateLimited`, not banned).
    pub rate_limited: u64,
    /// Told its address is banned (the connection then closes).
    pub banned: u64,
    /// Error answers.
    pub errors: u64,
}

impl AbuserAnswers {
    fn count(&mut self, payload: &[u8]) {
        match wire::decode::<Response>(payload).map(|r| r.body) {
            Ok(ResponseBody::SearchResults { .. }) => self.searched += 1,
            Ok(ResponseBody::Holders { .. }) => self.looked_up += 1,
            Ok(ResponseBody::RateLimited { banned: false, .. }) => self.rate_limited += 1,
            Ok(ResponseBody::RateLimited { banned: true, .. }) => self.banned += 1,
            _ => self.errors += 1,
        }
    }

    /// Every answer.
    pub fn total(&self) -> u64 {
        self.searched + self.looked_up + self.rate_limited + self.banned + self.errors
    }

    fn add(&mut self, o: &AbuserAnswers) {
        self.searched += o.searched;
        self.looked_up += o.looked_up;
        self.rate_limited += o.rate_limited;
        self.banned += o.banned;
        self.errors += o.errors;
    }

    /// These answers less those of `earlier`, a snapshot of the same counts.
    pub fn since(&self, earlier: &AbuserAnswers) -> AbuserAnswers {
        AbuserAnswers {
            searched: self.searched - earlier.searched,
            looked_up: self.looked_up - earlier.looked_up,
            rate_limited: self.rate_limited - earlier.rate_limited,
            banned: self.banned - earlier.banned,
            errors: self.errors - earlier.errors,
        }
    }
}

/// What the abuser's reader has seen so far, shared with [`Abuser::answers_so_far`].
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    answers: AbuserAnswers,
    bytes: u64,
    /// When the first `RateLimited` answer (banned or not) was read.
    first_refusal: Option<Instant>,
    /// When the `banned` answer was read.
    banned: Option<Instant>,
    /// When indexd closed the connection (end of stream or a reset before the stop).
    closed: Option<Instant>,
}

/// The abuser's requests: one-letter prefixes and common words to search, common names to
/// look up.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expensive {
    /// Search queries, sent in turn.
    pub searches: Vec<String>,
    /// Exact names looked up, in turn between the searches.
    pub lookups: Vec<String>,
}

impl Expensive {
    /// The most expensive requests by `stats`: the commonest first letters and words (a
    /// one-character word, `1` say, only once), and the commonest names.
    pub fn from_stats(stats: &NameStats) -> Expensive {
        let mut searches: Vec<String> = Vec::new();
        for s in stats.top_letters.iter().chain(&stats.top_words) {
            if !searches.contains(&s.text) {
                searches.push(s.text.clone());
            }
        }
        Expensive {
            searches,
            lookups: stats.top_names.iter().map(|s| s.text.clone()).collect(),
        }
    }

    /// Request `k` of the abuser's cycle: searches and lookups alternate.
    fn request(&self, k: usize) -> RequestBody {
        let lookup = k % 2 == 1 && !self.lookups.is_empty();
        if lookup || self.searches.is_empty() {
            RequestBody::Lookup {
                key: LookupKey::Name(self.lookups[(k / 2) % self.lookups.len()].clone()),
                after: None,
            }
        } else {
            RequestBody::Search {
                query: self.searches[(k / 2) % self.searches.len()].clone(),
                limit: super::load::SEARCH_LIMIT,
                filter: Default::default(),
                after: None,
            }
        }
    }
}

/// A running abuser: a writer thread keeping the pipeline full, a reader thread counting
/// answers.
pub struct Abuser {
    stop: Arc<AtomicBool>,
    stream: TcpStream,
    writer: thread::JoinHandle<io::Result<u64>>,
    reader: thread::JoinHandle<io::Result<()>>,
    progress: Arc<Mutex<Progress>>,
    /// The address it connects from.
    local: SocketAddr,
    began: Instant,
}

/// What the abuser did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbuserResult {
    /// Requests written.
    pub sent: u64,
    /// Answers read.
    pub answered: u64,
    /// Answers read, by kind.
    pub answers: AbuserAnswers,
    /// The address it connected from.
    pub local: SocketAddr,
    /// Bytes of answers read.
    pub bytes: u64,
    /// From its first write to its stop.
    pub elapsed: Duration,
    /// From its start to its first refusal (`RateLimited`), if any.
    pub first_refusal: Option<Duration>,
    /// From its start to the answer saying its address is banned, if any.
    pub banned: Option<Duration>,
    /// From its start to indexd closing its connection, if that came before the stop.
    pub closed: Option<Duration>,
}

impl Abuser {
    /// Connects, completes the handshake and starts pipelining `expensive`'s requests,
    /// `in_flight` at a time.
    pub fn start(addr: SocketAddr, expensive: Expensive, in_flight: usize) -> io::Result<Abuser> {
        if expensive.searches.is_empty() && expensive.lookups.is_empty() {
            return Err(io::Error::other("the abuser has no request to send"));
        }
        let stream = connect_from_own_address(addr)?;
        let local = stream.local_addr()?;
        let stream =
            Client::hello_on(stream, addr, ABUSER_PORT, "p2pshare-bench abuser")?.into_stream()?;
        stream.set_read_timeout(Some(POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (credit, credits) = mpsc::channel::<u64>();
        let progress = Arc::new(Mutex::new(Progress::default()));
        let reader = {
            let mut stream = stream.try_clone()?;
            let stop = stop.clone();
            let progress = progress.clone();
            thread::spawn(move || read_answers(&mut stream, &stop, &credit, &progress))
        };
        let writer = {
            let mut stream = stream.try_clone()?;
            let stop = stop.clone();
            thread::spawn(move || {
                write_requests(&mut stream, &stop, &credits, &expensive, in_flight)
            })
        };
        Ok(Abuser {
            stop,
            stream,
            writer,
            reader,
            progress,
            local,
            began: Instant::now(),
        })
    }

    /// The answers read so far, by kind.
    pub fn answers_so_far(&self) -> AbuserAnswers {
        self.progress.lock().map(|p| p.answers).unwrap_or_default()
    }

    /// When it started.
    pub fn began(&self) -> Instant {
        self.began
    }

    /// Stops both threads, shuts the connection down, and says what the abuser did.
    pub fn stop(self) -> io::Result<AbuserResult> {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.began.elapsed();
        // Unblocks a writer stuck on a full socket buffer and a reader waiting for an answer.
        let _ = self.stream.shutdown(Shutdown::Both);
        let sent = self
            .writer
            .join()
            .map_err(|_| io::Error::other("the abuser's writer panicked"))?;
        // After the shutdown, a write or read may fail: what was counted still stands.
        let _ = self
            .reader
            .join()
            .map_err(|_| io::Error::other("the abuser's reader panicked"))?;
        let sent = sent.unwrap_or(0);
        let p = *self
            .progress
            .lock()
            .map_err(|_| io::Error::other("the abuser's reader panicked"))?;
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(self.began));
        Ok(AbuserResult {
            sent,
            answered: p.answers.total(),
            answers: p.answers,
            local: self.local,
            bytes: p.bytes,
            elapsed,
            first_refusal: since(p.first_refusal),
            banned: since(p.banned),
            closed: since(p.closed),
        })
    }
}

/// Writes `in_flight` requests, then one more per answer credited, until stopped. Returns
/// the requests written.
fn write_requests(
    stream: &mut TcpStream,
    stop: &AtomicBool,
    credits: &mpsc::Receiver<u64>,
    expensive: &Expensive,
    in_flight: usize,
) -> io::Result<u64> {
    // The whole cycle encoded once: the abuser spends its time writing, not encoding.
    let cycle = expensive.searches.len().max(expensive.lookups.len()) * 2;
    let frames: Vec<Vec<u8>> = (0..cycle)
        .map(|k| {
            let mut f = Vec::new();
            wire::encode_frame(
                &Request {
                    id: 1 + k as u32,
                    body: expensive.request(k),
                },
                &mut f,
            );
            f
        })
        .collect();
    let mut sent = 0u64;
    let mut allowed = in_flight as u64;
    let mut batch = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        while allowed > 0 {
            batch.extend_from_slice(&frames[(sent % frames.len() as u64) as usize]);
            sent += 1;
            allowed -= 1;
        }
        if !batch.is_empty() && stream.write_all(&batch).is_err() {
            // Closed by the index (a ban) or by the stop: what was written stands.
            break;
        }
        match credits.recv_timeout(POLL) {
            Ok(n) => allowed += n,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        allowed += credits.try_iter().sum::<u64>();
    }
    Ok(sent)
}

/// Reads and counts answer frames into `progress` until stopped or closed, crediting the
/// writer with each read's answers.
fn read_answers(
    stream: &mut TcpStream,
    stop: &AtomicBool,
    credit: &mpsc::Sender<u64>,
    progress: &Mutex<Progress>,
) -> io::Result<()> {
    let mut decoder = Decoder::new(ABUSER_MAX_FRAME_BYTES);
    let mut buf = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 << 10];
    let update = |f: &mut dyn FnMut(&mut Progress)| {
        if let Ok(mut p) = progress.lock() {
            f(&mut p);
        }
    };
    // Closed by indexd, not by our stop (which shuts the socket down after setting it).
    let closed = |progress: &Mutex<Progress>| {
        if !stop.load(Ordering::Relaxed) {
            if let Ok(mut p) = progress.lock() {
                p.closed.get_or_insert_with(Instant::now);
            }
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let n = match stream.read(&mut chunk) {
            Ok(0) => {
                closed(progress);
                break;
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                closed(progress);
                return Err(e);
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        let mut got = 0;
        let mut answers = AbuserAnswers::default();
        while let Some(d) = decoder
            .decode(&buf[at..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
        {
            answers.count(&buf[at..][d.payload.clone()]);
            at += d.consumed;
            got += 1;
        }
        buf.drain(..at);
        update(&mut |p| {
            let now = Instant::now();
            if answers.rate_limited + answers.banned > 0 {
                p.first_refusal.get_or_insert(now);
            }
            if answers.banned > 0 {
                p.banned.get_or_insert(now);
            }
            p.answers.add(&answers);
            p.bytes += n as u64;
        });
        if got > 0 {
            let _ = credit.send(got);
        }
    }
    Ok(())
}

/// The honest client's figures in one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbusePhase {
    /// Its searches.
    pub search: OpSummary,
    /// Its lookups by hash.
    pub lookup: OpSummary,
    /// Its searches by query class (with `--names`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_classes: Option<PerClass<OpSummary>>,
    /// A bare loopback round trip after each op (context).
    pub floor: OpSummary,
    /// Length of the phase, seconds.
    pub elapsed_s: f64,
    /// Requests that got no answer within the client's reply timeout (the phase ended there).
    pub unanswered: u64,
}

/// A ratio of two figures (abused over idle), 2 decimals; 0 with nothing to divide by.
pub fn ratio(abused: f64, idle: f64) -> f64 {
    if idle > 0.0 {
        (abused / idle * 100.0).round() / 100.0
    } else {
        0.0
    }
}

/// Abused over idle, per op.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SearchLookup {
    /// Searches.
    pub search: f64,
    /// Lookups.
    pub lookup: f64,
}

/// Seconds, rounded to the ms.
pub fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// What happened to the abuser before the abused phase started at `phase_start`, as
/// measured (seconds from the abuser's start), when it was gone by then (banned, or its
/// connection closed by indexd): `refused (first at 0.004 s), banned (at 0.010 s) and closed
/// by indexd (at 0.011 s), 2.990 s before the abused phase started`. A close without a ban
/// answer says so. `None` while the abuser was still there when the phase started.
pub fn gone_text(
    first_refusal: Option<f64>,
    banned: Option<f64>,
    closed: Option<f64>,
    phase_start: f64,
) -> Option<String> {
    let before = |t: Option<f64>| t.filter(|t| *t < phase_start);
    let (refused, banned, closed) = (before(first_refusal), before(banned), before(closed));
    let gone = match (banned, closed) {
        (Some(b), Some(c)) => b.min(c),
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return None,
    };
    let mut events = Vec::new();
    if let Some(t) = refused {
        events.push(format!("refused (first at {t:.3} s)"));
    }
    if let Some(t) = banned {
        events.push(format!("banned (at {t:.3} s)"));
    }
    if let Some(t) = closed {
        events.push(format!("closed by indexd (at {t:.3} s)"));
    }
    let last = events.pop().expect("banned or closed");
    let mut text = if events.is_empty() {
        last
    } else {
        format!("{} and {last}", events.join(", "))
    };
    if banned.is_none() {
        text.push_str(" without a ban");
    }
    Some(format!(
        "{text}, {:.3} s before the abused phase started",
        phase_start - gone
    ))
}

/// The abuse mode's result (`abuse` in summary.json).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbuseSummary {
    /// Requests the abuser kept in flight.
    pub in_flight: usize,
    /// What it sent.
    pub abuser_requests: Expensive,
    /// Requests it wrote during the abused phase.
    pub abuser_sent: u64,
    /// Answers it read.
    pub abuser_answered: u64,
    /// Those answers by kind: how many the index ran, refused, banned.
    pub abuser_answers: AbuserAnswers,
    /// The address it connected from.
    pub abuser_from: String,
    /// Answers per second.
    pub abuser_answers_per_s: f64,
    /// Bytes of answers it read.
    pub abuser_bytes_read: u64,
    /// Longest a phase may run, seconds (`--duration`).
    pub phase_limit_s: f64,
    /// Operations the honest client plans per phase (searches, lookups).
    pub honest_ops: SearchLookup,
    /// The honest client on the idle index.
    pub idle: AbusePhase,
    /// The honest client under abuse.
    pub abused: AbusePhase,
    /// p50 under abuse over idle p50.
    pub p50_ratio: SearchLookup,
    /// p99 under abuse over idle p99.
    pub p99_ratio: SearchLookup,
    /// The largest p99 ratio that meets the target.
    pub target_p99_ratio: f64,
    /// Whether both p99 ratios meet it (false when a phase measured nothing).
    pub met: bool,
    /// Seconds from the abuser's start to its first refusal (`RateLimited`), if any.
    pub abuser_first_refusal_s: Option<f64>,
    /// Seconds from the abuser's start to the answer saying its address is banned, if any.
    pub abuser_banned_s: Option<f64>,
    /// Seconds from the abuser's start to indexd closing its connection, if it did.
    pub abuser_closed_s: Option<f64>,
    /// Seconds from the abuser's start to the start and the end of the abused phase.
    pub abused_phase_s: [f64; 2],
    /// The abuser's answers read during the abused phase (the others came before it, in the
    /// warm-up, or after it).
    pub abuser_answers_in_phase: AbuserAnswers,
    /// The abuser was banned, or its connection closed by indexd (with or without a ban),
    /// before the abused phase started: that phase measured an index without abuse, and the
    /// verdict says little. Which of the two happened, and when: [`gone_text`] of the
    /// timeline's fields.
    pub banned_before_phase: bool,
}

impl AbuseSummary {
    /// The ratios and the verdict from the two phases.
    pub fn judge(idle: &AbusePhase, abused: &AbusePhase) -> (SearchLookup, SearchLookup, bool) {
        let p50 = SearchLookup {
            search: ratio(abused.search.p50_us, idle.search.p50_us),
            lookup: ratio(abused.lookup.p50_us, idle.lookup.p50_us),
        };
        let p99 = SearchLookup {
            search: ratio(abused.search.p99_us, idle.search.p99_us),
            lookup: ratio(abused.lookup.p99_us, idle.lookup.p99_us),
        };
        let measured = |p: &AbusePhase| p.search.count + p.lookup.count > 0;
        let within = |r: f64, n: u64| n == 0 || (r > 0.0 && r <= TARGET_P99_RATIO);
        let met = measured(idle)
            && measured(abused)
            && abused.unanswered == 0
            && within(p99.search, abused.search.count)
            && within(p99.lookup, abused.lookup.count);
        (p50, p99, met)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Share;

    fn phase(search_p99: f64, lookup_p99: f64) -> AbusePhase {
        let op = |p99_us| OpSummary {
            count: 100,
            p50_us: p99_us / 2.0,
            p99_us,
            ..OpSummary::default()
        };
        AbusePhase {
            search: op(search_p99),
            lookup: op(lookup_p99),
            search_classes: None,
            floor: op(10.0),
            elapsed_s: 1.0,
            unanswered: 0,
        }
    }

    #[test]
    fn the_verdict_needs_both_p99s_within_twice_idle() {
        let idle = phase(100.0, 50.0);
        let (p50, p99, met) = AbuseSummary::judge(&idle, &phase(200.0, 60.0));
        assert_eq!((p99.search, p99.lookup, met), (2.0, 1.2, true));
        assert_eq!(p50.search, 2.0);
        let (_, p99, met) = AbuseSummary::judge(&idle, &phase(150.0, 101.0));
        assert_eq!((p99.lookup, met), (2.02, false));
        let mut stalled = phase(100.0, 50.0);
        stalled.unanswered = 1;
        assert!(!AbuseSummary::judge(&idle, &stalled).2);
    }

    #[test]
    fn a_ban_or_close_before_the_phase_flags_the_run() {
        let gone = |b, c| gone_text(None, b, c, 3.0).is_some();
        assert!(gone(Some(1.0), Some(1.0)));
        assert!(gone(None, Some(2.0)));
        assert!(!gone(Some(4.0), Some(4.0)));
        assert!(!gone(None, None));
        // The words say what was measured before the phase, nothing more.
        assert_eq!(
            gone_text(Some(0.004), Some(0.01), Some(0.011), 3.0).as_deref(),
            Some(
                "refused (first at 0.004 s), banned (at 0.010 s) and closed by indexd \
                 (at 0.011 s), 2.990 s before the abused phase started"
            )
        );
        let closed_only = gone_text(Some(0.5), None, Some(1.0), 3.0).unwrap();
        assert_eq!(
            closed_only,
            "refused (first at 0.500 s) and closed by indexd (at 1.000 s) without a ban, \
             2.000 s before the abused phase started"
        );
        assert!(!closed_only.contains("banned"), "{closed_only}");
        // Closed, never refused; a ban that came only after the phase started is not named.
        assert_eq!(
            gone_text(None, Some(4.0), Some(2.0), 3.0).as_deref(),
            Some("closed by indexd (at 2.000 s) without a ban, 1.000 s before the abused phase started")
        );
        // Refused but still there: not gone.
        assert_eq!(gone_text(Some(0.5), None, None, 3.0), None);
        assert_eq!(gone_text(Some(0.5), Some(3.5), Some(3.6), 3.0), None);
        let a = AbuserAnswers {
            searched: 5,
            rate_limited: 7,
            banned: 1,
            ..AbuserAnswers::default()
        };
        let earlier = AbuserAnswers {
            searched: 2,
            rate_limited: 7,
            ..AbuserAnswers::default()
        };
        assert_eq!(
            a.since(&earlier),
            AbuserAnswers {
                searched: 3,
                banned: 1,
                ..AbuserAnswers::default()
            }
        );
    }

    #[test]
    fn the_abuser_alternates_searches_and_lookups() {
        let share = |t: &str| Share {
            text: t.into(),
            names: 1,
            fraction: 0.1,
        };
        let stats = NameStats {
            top_letters: vec![share("s"), share("a")],
            top_words: vec![share("copyright"), share("a")],
            top_names: vec![share("COPYING")],
            ..NameStats::default()
        };
        let e = Expensive::from_stats(&stats);
        assert_eq!(e.searches, ["s", "a", "copyright"]);
        let kinds: Vec<RequestBody> = (0..4).map(|k| e.request(k)).collect();
        assert!(matches!(&kinds[0], RequestBody::Search { query, .. } if query == "s"));
        assert!(
            matches!(&kinds[1], RequestBody::Lookup { key: LookupKey::Name(n), .. } if n == "COPYING")
        );
        assert!(matches!(&kinds[2], RequestBody::Search { query, .. } if query == "a"));
        let only_searches = Expensive {
            searches: vec!["x".into()],
            lookups: vec![],
        };
        assert!(matches!(
            only_searches.request(1),
            RequestBody::Search { .. }
        ));
    }
}
