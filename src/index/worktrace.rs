//! The work trace, a debug aid for indexd's loop pauses: with `P2PSHARE_WORK_TRACE=FILE` in
//! its environment, indexd times each piece of work on its thread by cause (decoding a frame,
//! each kind of request, the deferred register work, each kind of background slice) in the
//! thread's CPU time, and writes to FILE, at most once a second while something changes, the
//! longest, count and mean of each cause, how many turns took 1, 1.5 and 2 ms of thread CPU
//! or more (of how many), the twelve longest turns with what they were made of, and the
//! twelve slowest searches (wall-clock and CPU time, page faults and preemptions: a few
//! system calls more per search while the trace is on). CPU time, unlike the loop pauses
//! `Stats` reports (wall-clock time), leaves out the time the thread waited for a CPU, so the
//! trace says what to slice even on a busy machine (a virtual CPU's steal time may still
//! count).
//!
//! Without the variable each timing point costs one thread-local flag read.

use crate::sys::process::ThreadCounts;
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

/// What the trace holds.
#[derive(Default)]
struct State {
    /// Per cause: the longest, how many, how many of 1 ms or more, and the sum.
    causes: Vec<Cause>,
    /// The pieces of the turn under way.
    turn: Vec<(&'static str, Duration)>,
    /// The longest turns, longest first, with their pieces summed by cause.
    worst: Vec<(Duration, Vec<(&'static str, Duration)>)>,
    /// The thread's CPU time at the end of the last turn.
    turn_cpu: Duration,
    /// The CPU time of the turn's outermost timed pieces (those not inside another).
    traced: Duration,
    last_write: Option<Instant>,
    changed: bool,
    /// The slowest searches by wall-clock time, slowest first.
    slow: Vec<SlowSearch>,
    /// When the loop's wait last returned, and the thread's counts then.
    woke: Option<(Instant, Duration, ThreadCounts)>,
    /// The pieces of the last turn [`end_turn`] closed, for [`turn_paused`].
    last_pieces: Vec<(&'static str, Duration)>,
    /// Whether the last turn wrote the trace file (its wall-clock time then counts the write).
    last_wrote: bool,
    /// The longest turns by wall-clock time, longest first.
    worst_wall: Vec<WallTurn>,
    /// Wall-clock turns of 1 ms or more, and their sums.
    over_1ms: WallSums,
    /// Wall-clock turns of 2 ms or more, and their sums.
    over_2ms: WallSums,
    started: Option<Instant>,
    /// Turns ended, and how many of them took 1, 1.5 and 2 ms of thread CPU or more.
    turn_counts: [u64; 4],
}

/// The thread CPU times per turn [`State::turn_counts`] counts turns at or over (after the
/// first, which counts every turn).
const TURN_MARKS: [Duration; 3] = [
    Duration::from_micros(1_000),
    Duration::from_micros(1_500),
    Duration::from_micros(2_000),
];

/// A turn's wall-clock time, from the wait's return to the next wait, and what the thread did
/// meanwhile: its own CPU time, its wait for a CPU while runnable, what is left (not running
/// and not queued: blocked, or a virtual CPU's steal time, which the guest's clocks leave out
/// of both), its page faults and context switches.
#[derive(Clone)]
struct WallTurn {
    /// Since the trace started.
    at: Duration,
    wall: Duration,
    cpu: Duration,
    run_delay: Duration,
    counts: ThreadCounts,
    wrote_trace: bool,
    pieces: Vec<(&'static str, Duration)>,
}

/// Sums over a class of wall-clock turns.
#[derive(Default, Clone, Copy)]
struct WallSums {
    turns: u64,
    wall: Duration,
    cpu: Duration,
    run_delay: Duration,
    minor_faults: u64,
    major_faults: u64,
    voluntary: u64,
    preempted: u64,
}

impl WallSums {
    fn add(&mut self, t: &WallTurn) {
        self.turns += 1;
        self.wall += t.wall;
        self.cpu += t.cpu;
        self.run_delay += t.run_delay;
        self.minor_faults += t.counts.minor_faults;
        self.major_faults += t.counts.major_faults;
        self.voluntary += t.counts.voluntary_switches;
        self.preempted += t.counts.preemptions;
    }
}

/// A search as [`Searching`] measured it.
struct SlowSearch {
    wall: Duration,
    cpu: Duration,
    faults: u64,
    preempted: u64,
    query: String,
}

/// A search being measured for the trace's slowest searches: its wall-clock and CPU time,
/// the minor page faults it took and the times the thread was preempted during it (so a slow
/// search's cause can be told: its work, memory touched for the first time, or a wait for a
/// CPU).
pub struct Searching {
    wall: Instant,
    cpu: Duration,
    faults: (u64, u64),
}

/// Starts measuring a search (`None` when the trace is off).
pub fn start_search() -> Option<Searching> {
    if !enabled() {
        return None;
    }
    Some(Searching {
        wall: Instant::now(),
        cpu: cpu(),
        faults: crate::sys::process::thread_faults_and_preemptions().unwrap_or_default(),
    })
}

impl Searching {
    /// The search of `query` is done: kept if among the slowest.
    pub fn end(self, query: &str) {
        let wall = self.wall.elapsed();
        let cpu = cpu().saturating_sub(self.cpu);
        let (f, p) = crate::sys::process::thread_faults_and_preemptions().unwrap_or_default();
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            if s.slow.len() == WORST_TURNS && s.slow.last().is_some_and(|w| w.wall >= wall) {
                return;
            }
            s.slow.push(SlowSearch {
                wall,
                cpu,
                faults: f.saturating_sub(self.faults.0),
                preempted: p.saturating_sub(self.faults.1),
                query: query.to_owned(),
            });
            s.slow.sort_by_key(|w| std::cmp::Reverse(w.wall));
            s.slow.truncate(WORST_TURNS);
            s.changed = true;
        })
    }
}

#[derive(Clone)]
struct Cause {
    name: &'static str,
    max: Duration,
    count: u64,
    over_1ms: u64,
    total: Duration,
}

/// How many of the longest turns are kept.
const WORST_TURNS: usize = 12;

thread_local! {
    /// Whether the trace is on (read from the environment once per thread).
    static ENABLED: Cell<Option<bool>> = const { Cell::new(None) };
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// How many timed pieces are under way (a piece inside another is not counted twice in
    /// the turn's traced time).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether `P2PSHARE_WORK_TRACE` is set.
#[inline]
pub fn enabled() -> bool {
    ENABLED.with(|e| match e.get() {
        Some(on) => on,
        None => {
            let on = std::env::var_os("P2PSHARE_WORK_TRACE").is_some();
            e.set(Some(on));
            on
        }
    })
}

fn cpu() -> Duration {
    crate::sys::process::thread_cpu_time().unwrap_or_default()
}

/// Runs `f`, timed under `cause` when the trace is on.
#[inline]
pub fn time<R>(cause: &'static str, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let outermost = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get() == 1
    });
    let started = cpu();
    let r = f();
    let took = cpu().saturating_sub(started);
    DEPTH.with(|d| d.set(d.get() - 1));
    record(cause, took);
    if outermost {
        STATE.with(|s| s.borrow_mut().traced += took);
    }
    r
}

/// Runs `f` and, when the trace is on and it took [`OUTLIER`] or more of wall-clock time,
/// counts that under `cause`: for small pieces done millions of times, where reading the
/// thread's CPU clock (a system call) each time would cost more than the piece, but whose
/// rare long runs are to be found (the cause counts only those).
#[inline]
pub fn time_outlier<R>(cause: &'static str, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let started = Instant::now();
    let r = f();
    let took = started.elapsed();
    if took >= OUTLIER {
        record(cause, took);
    }
    r
}

/// What [`time_outlier`] counts.
pub const OUTLIER: Duration = Duration::from_micros(100);

/// Counts `d` of work under `cause` (when the trace is on).
pub fn record(cause: &'static str, d: Duration) {
    if !enabled() {
        return;
    }
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let i = match s.causes.iter().position(|c| c.name == cause) {
            Some(i) => i,
            None => {
                s.causes.push(Cause {
                    name: cause,
                    max: Duration::ZERO,
                    count: 0,
                    over_1ms: 0,
                    total: Duration::ZERO,
                });
                s.causes.len() - 1
            }
        };
        let c = &mut s.causes[i];
        let longest = d > c.max;
        c.max = c.max.max(d);
        c.count += 1;
        c.over_1ms += u64::from(d >= Duration::from_millis(1));
        c.total += d;
        s.changed |= longest;
        s.turn.push((cause, d));
    })
}

/// The reactor turn ends (when the trace is on): its CPU time since the last call is a turn.
pub fn end_turn() {
    if !enabled() {
        return;
    }
    let now = cpu();
    let (d, traced) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let d = now.saturating_sub(std::mem::replace(&mut s.turn_cpu, now));
        (d, std::mem::take(&mut s.traced))
    });
    // What no timed piece covered: the loop's own steps, or work not traced yet.
    record("untraced", d.saturating_sub(traced));
    let report = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let pieces = std::mem::take(&mut s.turn);
        let mut merged: Vec<(&'static str, Duration)> = Vec::new();
        for (c, x) in pieces {
            match merged.iter_mut().find(|m| m.0 == c) {
                Some(m) => m.1 += x,
                None => merged.push((c, x)),
            }
        }
        s.last_pieces.clone_from(&merged);
        s.last_wrote = false;
        s.turn_counts[0] += 1;
        for (i, mark) in TURN_MARKS.iter().enumerate() {
            if d >= *mark {
                s.turn_counts[i + 1] += 1;
                s.changed = true;
            }
        }
        if s.worst.len() < WORST_TURNS || s.worst.last().is_some_and(|w| d > w.0) {
            s.worst.push((d, merged));
            s.worst.sort_by_key(|w| std::cmp::Reverse(w.0));
            s.worst.truncate(WORST_TURNS);
            s.changed = true;
        }
        let due = s
            .last_write
            .map_or(true, |t| t.elapsed() >= Duration::from_secs(1));
        if !(s.changed && due) {
            return None;
        }
        s.changed = false;
        s.last_write = Some(Instant::now());
        Some(render(&s))
    });
    if let (Some(report), Some(path)) = (report, std::env::var_os("P2PSHARE_WORK_TRACE")) {
        if let Err(e) = std::fs::write(&path, report) {
            log::warn!("work trace: cannot write {}: {e}", path.to_string_lossy());
        }
        // The trace's own writing is no turn's work (it still counts in the loop's
        // wall-clock pauses, so figures for pauses are taken without the trace).
        let written = cpu();
        STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.turn_cpu = written;
            s.last_wrote = true;
        });
    }
}

/// The loop's wait has returned (when the trace is on): the thread's clocks and counts now,
/// for [`turn_paused`].
pub fn turn_woke() {
    if !enabled() {
        return;
    }
    let (now, cpu, counts) = (
        Instant::now(),
        cpu(),
        crate::sys::process::thread_counts().unwrap_or_default(),
    );
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.started.is_none() {
            // The first turn's CPU time counts from here, not from the thread's start (the
            // process's set-up, which was the first turn's "untraced" 2–5 ms).
            s.started = Some(now);
            s.turn_cpu = cpu;
        }
        s.woke = Some((now, cpu, counts));
    });
}

/// The loop is about to wait again after working `wall` since [`turn_woke`] (when the trace
/// is on): the turn's wall-clock time is split into the thread's CPU time, its wait for a
/// CPU, and the rest, with its page faults and context switches.
pub fn turn_paused(wall: Duration) {
    if !enabled() {
        return;
    }
    let (cpu_now, counts) = (
        cpu(),
        crate::sys::process::thread_counts().unwrap_or_default(),
    );
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let Some((woke, cpu0, c0)) = s.woke.take() else {
            return;
        };
        let started = s.started.unwrap_or(woke);
        let t = WallTurn {
            at: woke.saturating_duration_since(started),
            wall,
            cpu: cpu_now.saturating_sub(cpu0),
            run_delay: counts.run_delay.saturating_sub(c0.run_delay),
            counts: ThreadCounts {
                minor_faults: counts.minor_faults.saturating_sub(c0.minor_faults),
                major_faults: counts.major_faults.saturating_sub(c0.major_faults),
                voluntary_switches: counts
                    .voluntary_switches
                    .saturating_sub(c0.voluntary_switches),
                preemptions: counts.preemptions.saturating_sub(c0.preemptions),
                run_delay: Duration::ZERO,
            },
            wrote_trace: s.last_wrote,
            pieces: std::mem::take(&mut s.last_pieces),
        };
        if wall >= Duration::from_millis(1) {
            s.over_1ms.add(&t);
        }
        if wall >= Duration::from_millis(2) {
            s.over_2ms.add(&t);
        }
        if s.worst_wall.len() < WORST_TURNS || s.worst_wall.last().is_some_and(|w| wall > w.wall) {
            s.worst_wall.push(t);
            s.worst_wall.sort_by_key(|w| std::cmp::Reverse(w.wall));
            s.worst_wall.truncate(WORST_TURNS);
            s.changed = true;
        }
    })
}

fn render(s: &State) -> String {
    let us = |d: Duration| d.as_micros();
    let mut out = String::from(
        "# indexd work trace (thread CPU time, µs)\n\
         # cause                     longest      count  >=1ms       mean\n",
    );
    let mut causes = s.causes.clone();
    causes.sort_by_key(|c| std::cmp::Reverse(c.max));
    for c in causes {
        let mean = c.total.as_secs_f64() * 1e6 / c.count.max(1) as f64;
        out += &format!(
            "{:<28} {:>8} {:>10} {:>6} {:>10.1}\n",
            c.name,
            us(c.max),
            c.count,
            c.over_1ms,
            mean
        );
    }
    let [turns, ms1, ms15, ms2] = s.turn_counts;
    out += &format!(
        "# turns by thread CPU: {turns} turns, {ms1} of 1 ms or more, {ms15} of 1.5 ms or more, \
         {ms2} of 2 ms or more\n"
    );
    out += "# longest turns: the turn, then its pieces by cause\n";
    for (d, pieces) in &s.worst {
        out += &format!("{:>8}:", us(*d));
        for (c, x) in pieces {
            out += &format!(" {c}={}", us(*x));
        }
        out += "\n";
    }
    out += "# wall-clock turns: turns, then sums in µs of wall, thread CPU, wait for a CPU, \
            the rest; minor, major faults; voluntary, involuntary switches\n";
    for (class, w) in [(">=1ms", &s.over_1ms), (">=2ms", &s.over_2ms)] {
        let rest = w.wall.saturating_sub(w.cpu + w.run_delay);
        out += &format!(
            "{class} {} wall={} cpu={} runq={} rest={} minflt={} majflt={} vcsw={} ivcsw={}\n",
            w.turns,
            us(w.wall),
            us(w.cpu),
            us(w.run_delay),
            us(rest),
            w.minor_faults,
            w.major_faults,
            w.voluntary,
            w.preempted
        );
    }
    out += "# longest turns by wall clock: at (ms since the first turn), wall, cpu, runq, rest \
            (µs), minflt majflt vcsw ivcsw, then its pieces (thread CPU µs)\n";
    for t in &s.worst_wall {
        let rest = t.wall.saturating_sub(t.cpu + t.run_delay);
        out += &format!(
            "{:>9} {:>6} {:>6} {:>6} {:>6} {:>5} {} {} {}{}:",
            t.at.as_millis(),
            us(t.wall),
            us(t.cpu),
            us(t.run_delay),
            us(rest),
            t.counts.minor_faults,
            t.counts.major_faults,
            t.counts.voluntary_switches,
            t.counts.preemptions,
            if t.wrote_trace {
                " (wrote the trace)"
            } else {
                ""
            }
        );
        for (c, x) in &t.pieces {
            out += &format!(" {c}={}", us(*x));
        }
        out += "\n";
    }
    out += "# slowest searches: wall-clock µs, CPU µs, minor page faults, preemptions, query\n";
    for w in &s.slow {
        out += &format!(
            "{:>8} {:>8} {:>6} {:>3} {:?}\n",
            us(w.wall),
            us(w.cpu),
            w.faults,
            w.preempted,
            w.query
        );
    }
    out
}
