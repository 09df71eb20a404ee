//! The saturation mode: open-loop-ish throughput. One reactor thread keeps `pipeline`
//! Lookup requests in flight on each of `connections` connections (a new one goes out as
//! each answer arrives) and counts answers over a fixed window after a warm-up — the shape
//! of `redis-benchmark -c C -P K`, so the two can be compared at the same C and K.

use super::stats;
use super::workload::Rng;
use hdrhistogram::Histogram;
use p2pshare::reactor::{
    CloseReason, Config as ReactorConfig, ConnId, Ctx, Handler, Reactor, Verdict,
};
use p2pshare::wire::{
    self, FileHash, LookupKey, Request, RequestBody, Response, ResponseBody, PROTOCOL_VERSION,
};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Time given to connect, handshake and reach a steady state before counting.
pub const WARMUP: Duration = Duration::from_secs(1);

/// What a saturation run measured.
pub struct SaturationResult {
    /// Connections that completed the handshake.
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Answers counted in the window.
    pub ops: u64,
    /// Error answers among them.
    pub errors: u64,
    /// The measured window.
    pub window: Duration,
    /// Request-to-answer latencies (ns) in the window (queueing included).
    pub latency: Histogram<u64>,
}

impl SaturationResult {
    /// Answers per second over the window.
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64().max(1e-9)
    }
}

const TIMER_START_COUNTING: u64 = 1;
const TIMER_STOP: u64 = 2;
const TIMER_PROGRESS: u64 = 3;
/// Hello requests use this id; lookups count up from 1.
const HELLO_ID: u32 = 0;

#[derive(Default)]
struct ConnState {
    welcomed: bool,
    next_id: u32,
    /// Sent and not yet answered, oldest first (the index answers a connection in order).
    in_flight: VecDeque<(u32, Instant)>,
}

struct Saturator {
    keys: Vec<FileHash>,
    rng: Rng,
    pipeline: usize,
    counting_since: Option<Instant>,
    stopped_at: Option<Instant>,
    ops: u64,
    errors: u64,
    latency: Histogram<u64>,
    welcomed: usize,
    failure: Option<String>,
}

impl Saturator {
    fn send_lookup(&mut self, ctx: &mut Ctx<ConnState>, conn: ConnId, st: &mut ConnState) {
        let key = LookupKey::Hash(self.keys[self.rng.below(self.keys.len())]);
        st.next_id = st.next_id.wrapping_add(1).max(1);
        let id = st.next_id;
        st.in_flight.push_back((id, ctx.now()));
        ctx.send(
            conn,
            wire::framed(&Request {
                id,
                body: RequestBody::Lookup { key, after: None },
            }),
        );
    }
}

impl Handler for Saturator {
    type Conn = ConnState;

    fn handle_accept(
        &mut self,
        ctx: &mut Ctx<ConnState>,
        conn: ConnId,
        _: SocketAddr,
    ) -> ConnState {
        // The saturator only connects; it has no listener.
        ctx.close(conn, CloseReason::Local);
        ConnState::default()
    }

    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<ConnState>,
        conn: ConnId,
        st: &mut ConnState,
        payload: &[u8],
    ) -> Verdict {
        let resp: Response = match wire::decode(payload) {
            Ok(r) => r,
            Err(e) => return Verdict::Close(CloseReason::Protocol(e.to_string())),
        };
        if !st.welcomed {
            if !matches!(resp.body, ResponseBody::Welcome { .. }) {
                self.failure = Some(format!("handshake refused: {:?}", resp.body));
                ctx.stop();
                return Verdict::Close(CloseReason::Local);
            }
            st.welcomed = true;
            self.welcomed += 1;
            for _ in 0..self.pipeline {
                self.send_lookup(ctx, conn, st);
            }
            return Verdict::Continue;
        }
        let Some((id, sent)) = st.in_flight.pop_front() else {
            return Verdict::Close(CloseReason::Protocol("unrequested answer".into()));
        };
        if id != resp.id {
            self.failure = Some(format!("answer {} arrived where {id} was due", resp.id));
            ctx.stop();
            return Verdict::Close(CloseReason::Local);
        }
        // `ctx.now()` is the time this loop turn started: answers are stamped when their
        // readiness was seen, which is the honest arrival time for one thread.
        if self.counting_since.is_some() && self.stopped_at.is_none() {
            self.ops += 1;
            if !matches!(resp.body, ResponseBody::Holders { .. }) {
                self.errors += 1;
            }
            stats::record(&mut self.latency, ctx.now().saturating_duration_since(sent));
        }
        if self.stopped_at.is_none() {
            self.send_lookup(ctx, conn, st);
        }
        Verdict::Continue
    }

    fn handle_close(
        &mut self,
        ctx: &mut Ctx<ConnState>,
        _: ConnId,
        _: ConnState,
        reason: &CloseReason,
    ) {
        if self.stopped_at.is_none() {
            self.failure = Some(format!("a connection closed mid-run: {reason}"));
            ctx.stop();
        }
    }

    fn handle_timer(&mut self, ctx: &mut Ctx<ConnState>, timer: u64) {
        match timer {
            TIMER_START_COUNTING => self.counting_since = Some(ctx.now()),
            TIMER_STOP => {
                self.stopped_at = Some(ctx.now());
                ctx.stop();
            }
            TIMER_PROGRESS if self.stopped_at.is_none() => {
                super::progress(&format!(
                    "bench: saturation: {} connections up, {} answers counted",
                    self.welcomed, self.ops
                ));
                ctx.set_timer(Duration::from_secs(1), TIMER_PROGRESS);
            }
            _ => {}
        }
    }
}

/// Runs the saturation mode against `addr` with lookups of `keys` (hashes known to be
/// indexed).
pub fn run(
    addr: SocketAddr,
    connections: usize,
    pipeline: usize,
    duration: Duration,
    keys: Vec<FileHash>,
    seed: u64,
) -> io::Result<SaturationResult> {
    if keys.is_empty() {
        return Err(io::Error::other("saturation needs indexed files (--files)"));
    }
    let mut reactor = Reactor::new(ReactorConfig {
        max_connections: connections + 16,
        ..ReactorConfig::default()
    })?;
    let mut sat = Saturator {
        keys,
        rng: Rng::for_stream(seed, 0x5A7),
        pipeline,
        counting_since: None,
        stopped_at: None,
        ops: 0,
        errors: 0,
        latency: stats::new_histogram(),
        welcomed: 0,
        failure: None,
    };
    let ctx = reactor.ctx();
    for i in 0..connections {
        let conn = ctx.connect(addr, ConnState::default())?;
        // Frames queued now go out when the connect completes.
        ctx.send(
            conn,
            wire::framed(&Request {
                id: HELLO_ID,
                body: RequestBody::Hello {
                    version: PROTOCOL_VERSION,
                    listen_port: 50000u16.wrapping_add(i as u16 % 10000),
                    agent: "p2pshare-bench saturation".into(),
                },
            }),
        );
    }
    ctx.set_timer(WARMUP, TIMER_START_COUNTING);
    ctx.set_timer(WARMUP + duration, TIMER_STOP);
    ctx.set_timer(Duration::from_secs(1), TIMER_PROGRESS);
    reactor.run(&mut sat)?;
    super::progress_done(&format!("bench: saturation: {} answers counted", sat.ops));
    if let Some(f) = sat.failure {
        return Err(io::Error::other(format!("saturation run failed: {f}")));
    }
    let window = match (sat.counting_since, sat.stopped_at) {
        (Some(a), Some(b)) => b - a,
        _ => duration,
    };
    Ok(SaturationResult {
        connections: sat.welcomed,
        pipeline,
        ops: sat.ops,
        errors: sat.errors,
        window,
        latency: sat.latency,
    })
}
