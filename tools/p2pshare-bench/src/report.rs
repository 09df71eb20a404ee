//! The outputs: `summary.json` (stable schema), the `.hgrm` percentile files and
//! `report.md`. Pure formatting of results already measured; the only I/O is writing files
//! and reading the machine's description from /proc.

use super::abuse::{AbuseSummary, TARGET_P99_RATIO};
use super::config::OpCounts;
use super::corpus::{NameStats, QueryClass};
use super::stats::OpSummary;
use super::transfer::{Series, TransferSummary, CONCURRENT_DOWNLOADS};
use super::workload::{OpKind, FILES_PER_REGISTER};
use serde::Serialize;
use std::fmt::Write as _;

/// The pre-run floor: bare loopback TCP round trips of one client alone, with no operations
/// running, timed before each run, µs. Context only: the ratios use each run's own floor
/// ([`RunSummary::floor`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Floor {
    /// Median round trip.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Round trips timed.
    pub round_trips: u64,
    /// Bytes per ping.
    pub ping_bytes: usize,
}

/// The three op kinds' figures, in report order (a struct, so JSON keeps the order).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PerOp<T> {
    /// Search.
    pub search: T,
    /// Register.
    pub register: T,
    /// Lookup.
    pub lookup: T,
}

impl<T: Clone> PerOp<T> {
    /// From an array in [`OpKind::ALL`] order.
    pub fn from_array(a: &[T; 3]) -> PerOp<T> {
        PerOp {
            search: a[0].clone(),
            register: a[1].clone(),
            lookup: a[2].clone(),
        }
    }
}

/// Figures per search [`QueryClass`], in report order (a struct, so JSON keeps the order).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PerClass<T> {
    /// One whole word of an indexed name.
    pub one_word: T,
    /// Two whole words of one indexed name.
    pub two_words: T,
    /// A one-letter prefix.
    pub prefix_1: T,
    /// A three-letter prefix.
    pub prefix_3: T,
    /// One of the ten commonest words.
    pub common_word: T,
}

impl<T> PerClass<T> {
    /// From `f(class)` for each class.
    pub fn from_fn(mut f: impl FnMut(QueryClass) -> T) -> PerClass<T> {
        PerClass {
            one_word: f(QueryClass::OneWord),
            two_words: f(QueryClass::TwoWords),
            prefix_1: f(QueryClass::Prefix1),
            prefix_3: f(QueryClass::Prefix3),
            common_word: f(QueryClass::CommonWord),
        }
    }

    /// The figures of `class`.
    pub fn get(&self, class: QueryClass) -> &T {
        match class {
            QueryClass::OneWord => &self.one_word,
            QueryClass::TwoWords => &self.two_words,
            QueryClass::Prefix1 => &self.prefix_1,
            QueryClass::Prefix3 => &self.prefix_3,
            QueryClass::CommonWord => &self.common_word,
        }
    }
}

/// The names the index was pre-populated with, when read from `--names` (`corpus` in
/// summary.json).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CorpusSummary {
    /// The file.
    pub file: String,
    /// Lines read (reading stops once enough names are read).
    pub lines_read: usize,
    /// Valid names among them.
    pub names_read: usize,
    /// Lines that were not UTF-8, decoded as the peer decodes such a name.
    pub not_utf8_decoded: usize,
    /// Lines skipped because the index refuses such a name: empty, too long, `/` or NUL.
    pub skipped: usize,
    /// Files pre-populated.
    pub files: usize,
    /// Files beyond the names read, named by growing the corpus.
    pub grown_files: usize,
    /// The indexed names' statistics.
    pub stats: NameStats,
}

/// One closed-loop run (an element of `runs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// Concurrent simulated peers.
    pub peers: usize,
    /// Figures per op kind.
    pub ops: PerOp<OpSummary>,
    /// All operations of all peers per second of the run.
    pub ops_per_s: f64,
    /// Length of the run, seconds.
    pub elapsed_s: f64,
    /// The run's floor: the bare loopback round trips each simulated peer times right after
    /// each of its operations, so they share the operations' moments and CPU contention.
    pub floor: OpSummary,
    /// `floor.p50_us`: what every ratio of this run divides by, µs.
    pub floor_p50_us: f64,
    /// Each op's p50 divided by `floor_p50_us`, rounded to 2 decimals.
    pub p50_over_floor: PerOp<f64>,
    /// The pre-run floor's p50, timed by one client right before this run, µs (context).
    pub prerun_floor_p50_us: f64,
    /// indexd's own `Ping`, timed by each simulated peer after each of its operations (after
    /// the op's floor ping, and followed by one): what the server's protocol costs with no
    /// index work, under the run's conditions.
    pub ping: OpSummary,
    /// `ping.p50_us`: what the `p50_over_ping` ratios divide by, µs.
    pub ping_p50_us: f64,
    /// `ping_p50_us / floor_p50_us`, rounded to 2 decimals.
    pub ping_over_floor: f64,
    /// Each op's p50 divided by `ping_p50_us`, rounded to 2 decimals.
    pub p50_over_ping: PerOp<f64>,
    /// Searches per query class, when drawn from a corpus of real names (`--names`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_classes: Option<PerClass<OpSummary>>,
    /// The same searches' server time per query class, as indexd reports it in each answer
    /// (from the decoded request to the answer built).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_class_server: Option<PerClass<OpSummary>>,
}

/// The latency targets: an op's p50 within a multiple of a reference round trip timed in
/// the same run, in runs of some number of peers. Issue 12 asks for lookup and register
/// within 1.15× the floor at one peer, which a readiness loop's turn and the protocol
/// (indexd's own `Ping`, no index work) use much of; the targets proposed beside them bound
/// what the index work adds to that `Ping`, timed in the same run: lookup within 1.15×,
/// register (10 entries of index work, on caches the mix cooled) within 1.25× (1.2× held in 8
/// of 9 runs of session 17's code, its miss 1.21× in the fastest window).
pub const TARGETS: [Target; 4] = [
    Target {
        op: OpKind::Lookup,
        peers: 1,
        over: Reference::Floor,
        bound: 1.15,
        origin: Origin::Issue,
    },
    Target {
        op: OpKind::Register,
        peers: 1,
        over: Reference::Floor,
        bound: 1.15,
        origin: Origin::Issue,
    },
    Target {
        op: OpKind::Lookup,
        peers: 1,
        over: Reference::Ping,
        bound: 1.15,
        origin: Origin::Proposed,
    },
    Target {
        op: OpKind::Register,
        peers: 1,
        over: Reference::Ping,
        bound: 1.25,
        origin: Origin::Proposed,
    },
];

/// What a target's p50 is divided by: a round trip timed by the same peers in the same run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// The floor: the bare loopback round trip to the echo server.
    Floor,
    /// indexd's own `Ping`.
    Ping,
}

impl Reference {
    /// `floor` or `ping` (summary.json's `over`).
    pub fn key(self) -> &'static str {
        match self {
            Reference::Floor => "floor",
            Reference::Ping => "ping",
        }
    }

    /// How the report names it.
    fn label(self) -> &'static str {
        match self {
            Reference::Floor => "floor",
            Reference::Ping => "indexd Ping",
        }
    }

    /// Its p50 in `run`, µs.
    fn p50_in(self, run: &RunSummary) -> f64 {
        match self {
            Reference::Floor => run.floor_p50_us,
            Reference::Ping => run.ping_p50_us,
        }
    }
}

/// Where a target comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Issue 12's own target.
    Issue,
    /// Proposed in place of the issue's target for the same op, which is out of reach.
    Proposed,
}

impl Origin {
    /// `issue 12` or `proposed` (summary.json's `origin`).
    pub fn key(self) -> &'static str {
        match self {
            Origin::Issue => "issue 12",
            Origin::Proposed => "proposed",
        }
    }
}

/// One latency target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// The op.
    pub op: OpKind,
    /// Concurrent peers of the run it applies to.
    pub peers: usize,
    /// What its p50 is divided by.
    pub over: Reference,
    /// The largest p50 / reference p50 that meets it.
    pub bound: f64,
    /// The issue's target or a proposed one.
    pub origin: Origin,
}

/// A target and what the bench measured for it (an element of `targets`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    /// The op.
    pub op: &'static str,
    /// Concurrent peers of the run it applies to.
    pub peers: usize,
    /// What the op's p50 is divided by: `floor` or `ping` (indexd's `Ping`).
    pub over: &'static str,
    /// The largest p50 / reference p50 that meets it.
    pub bound: f64,
    /// `issue 12` (the issue's target) or `proposed` (the nearest honest target in place of
    /// the issue's for the same op).
    pub origin: &'static str,
    /// The op's p50 in that run, µs (null: no run of that many peers).
    pub p50_us: Option<f64>,
    /// The reference's p50 in that run, µs.
    pub over_p50_us: Option<f64>,
    /// The run's p50 / reference p50 as reported (2 decimals), which is what is compared.
    pub p50_over: Option<f64>,
    /// Met, not met, or null when not measured.
    pub met: Option<bool>,
}

impl Verdict {
    /// `target` judged against `runs`.
    pub fn judge(target: &Target, runs: &[RunSummary]) -> Verdict {
        // A run that did none of the op (`--ops 0,0,800`) measured nothing to judge.
        let run = runs
            .iter()
            .find(|r| r.peers == target.peers && r.op(target.op).count > 0);
        let ratio = run.map(|r| match target.over {
            Reference::Floor => r.p50_ratio(target.op),
            Reference::Ping => r.p50_over_ping_of(target.op),
        });
        Verdict {
            op: target.op.name(),
            peers: target.peers,
            over: target.over.key(),
            bound: target.bound,
            origin: target.origin.key(),
            p50_us: run.map(|r| r.op(target.op).p50_us),
            over_p50_us: run.map(|r| target.over.p50_in(r)),
            p50_over: ratio,
            // A reference not timed (p50 0, ratio 0) judges nothing.
            met: ratio.filter(|x| *x > 0.0).map(|x| x <= target.bound),
        }
    }

    /// What is targeted: `lookup p50 ≤ 1.15 × floor at 1 peer`.
    pub fn target_text(&self) -> String {
        let over = match self.over {
            "ping" => Reference::Ping.label(),
            _ => Reference::Floor.label(),
        };
        format!(
            "{} p50 ≤ {:.2} × {over} at {}",
            self.op,
            self.bound,
            peers_text(self.peers)
        )
    }

    /// The measurement: `1.04× (p50 54.4 µs, floor 52.4 µs)`.
    pub fn measured_text(&self) -> String {
        match (self.p50_over, self.p50_us, self.over_p50_us) {
            (Some(r), Some(p50), Some(over)) if self.met.is_some() => {
                let name = if self.over == "ping" { "Ping" } else { "floor" };
                format!("{r:.2}× (p50 {p50:.1} µs, {name} {over:.1} µs)")
            }
            (Some(_), _, _) => format!(
                "no {} timed in the run with {}",
                self.over,
                peers_text(self.peers)
            ),
            _ => format!("no {} in a run with {}", self.op, peers_text(self.peers)),
        }
    }

    /// `met`, `NOT MET` or `not measured`.
    pub fn verdict_text(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        }
    }
}

/// `1 peer`, `3 peers`.
fn peers_text(n: usize) -> String {
    if n == 1 {
        "1 peer".into()
    } else {
        format!("{n} peers")
    }
}

/// The saturation mode's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SaturationSummary {
    /// The operation (`lookup` by hash).
    pub op: &'static str,
    /// Connections.
    pub connections: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    /// Measured window, seconds (after the warm-up).
    pub duration_s: f64,
    /// Answers in the window.
    pub ops: u64,
    /// Error answers among them.
    pub errors: u64,
    /// Answers per second.
    pub ops_per_s: f64,
    /// Request-to-answer latency under that load.
    pub latency: OpSummary,
}

/// The machine the figures come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    /// CPU model name from /proc/cpuinfo.
    pub cpu: String,
    /// Logical CPUs available to the bench.
    pub cores: usize,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads this machine's description (unknown parts say so).
    pub fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| format!("Linux {}", s.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_string());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
        }
    }
}

/// The whole of `summary.json`. `prerun_floor_us` and `runs` (with `peers`, `ops.*.{count,
/// errors, mean_us, p50_us, p90_us, p99_us, p999_us, max_us}`, `ops_per_s`, `floor_p50_us` and
/// `p50_over_floor`) are the stable schema; the rest may grow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The pre-run floor over all runs (context; no ratio uses it).
    pub prerun_floor_us: Floor,
    /// Closed-loop runs, in the order run.
    pub runs: Vec<RunSummary>,
    /// The latency targets and their verdicts (closed-loop mode; empty otherwise).
    pub targets: Vec<Verdict>,
    /// The saturation run, when that mode ran.
    pub saturation: Option<SaturationSummary>,
    /// The transfer mode's downloads and baselines, when that mode ran.
    pub transfer: Option<TransferSummary>,
    /// The abuse mode's two phases, when that mode ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abuse: Option<AbuseSummary>,
    /// The corpus of real names, with `--names`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corpus: Option<CorpusSummary>,
    /// Operations per simulated peer.
    pub ops_per_peer: Option<PerOp<usize>>,
    /// Files one register operation announces.
    pub files_per_register: usize,
    /// Files pre-populated before measuring.
    pub prepopulated_files: usize,
    /// Fake peers holding each pre-populated file.
    pub holders_per_prepopulated_file: usize,
    /// `started` (the bench ran its own indexd) or the address given with `--index`.
    pub index: String,
    /// Where the processes ran: which CPUs the servers and the clients were pinned to.
    pub placement: String,
    /// The unit of every `*_us` figure and how it was recorded.
    pub latency_unit: &'static str,
    /// The command that produced this.
    pub command: String,
    /// Where it ran.
    pub machine: Machine,
    /// The p2pshare version.
    pub version: &'static str,
}

/// `p50 / floor`, or 0 with no floor.
fn ratio(p50: f64, floor: f64) -> f64 {
    if floor > 0.0 {
        (p50 / floor * 100.0).round() / 100.0
    } else {
        0.0
    }
}

impl RunSummary {
    /// A run's summary from its per-op figures, its floor (the pings interleaved with its
    /// ops), indexd's `Ping` timed beside them and the pre-run floor's p50.
    pub fn new(
        peers: usize,
        ops: [OpSummary; 3],
        ops_per_s: f64,
        elapsed_s: f64,
        floor: OpSummary,
        ping: OpSummary,
        prerun_floor_p50_us: f64,
    ) -> RunSummary {
        let ratios = [0, 1, 2].map(|k| ratio(ops[k].p50_us, floor.p50_us));
        let over_ping = [0, 1, 2].map(|k| ratio(ops[k].p50_us, ping.p50_us));
        let ping_over_floor = ratio(ping.p50_us, floor.p50_us);
        RunSummary {
            peers,
            ops: PerOp::from_array(&ops),
            ops_per_s: ops_per_s.round(),
            elapsed_s: (elapsed_s * 1000.0).round() / 1000.0,
            floor_p50_us: floor.p50_us,
            floor,
            p50_over_floor: PerOp::from_array(&ratios),
            prerun_floor_p50_us,
            ping_p50_us: ping.p50_us,
            ping_over_floor,
            ping,
            p50_over_ping: PerOp::from_array(&over_ping),
            search_classes: None,
            search_class_server: None,
        }
    }

    /// The p50 of query class `class` as a multiple of this run's floor (0 without classes).
    pub fn class_ratio(&self, class: QueryClass) -> f64 {
        self.search_classes
            .as_ref()
            .map_or(0.0, |c| ratio(c.get(class).p50_us, self.floor_p50_us))
    }

    /// The figures of `kind`.
    pub fn op(&self, kind: OpKind) -> &OpSummary {
        match kind {
            OpKind::Search => &self.ops.search,
            OpKind::Register => &self.ops.register,
            OpKind::Lookup => &self.ops.lookup,
        }
    }

    /// The p50 of `kind` as a multiple of this run's floor.
    pub fn p50_ratio(&self, kind: OpKind) -> f64 {
        match kind {
            OpKind::Search => self.p50_over_floor.search,
            OpKind::Register => self.p50_over_floor.register,
            OpKind::Lookup => self.p50_over_floor.lookup,
        }
    }

    /// The p50 of `kind` as a multiple of this run's indexd `Ping` (0 without pings).
    pub fn p50_over_ping_of(&self, kind: OpKind) -> f64 {
        match kind {
            OpKind::Search => self.p50_over_ping.search,
            OpKind::Register => self.p50_over_ping.register,
            OpKind::Lookup => self.p50_over_ping.lookup,
        }
    }
}

/// What each op kind does, for the report.
pub fn op_meaning(kind: OpKind) -> String {
    match kind {
        OpKind::Search => "one Search of 1–2 words (whole or prefix) taken from an indexed file's name, up to 100 results".into(),
        OpKind::Register => format!("one bulk Register of {FILES_PER_REGISTER} new files (unique hashes per peer and op)"),
        OpKind::Lookup => "one Lookup by full hash of a pre-populated file".into(),
    }
}

/// `report.md`: machine, command, targets and verdicts, the floor, tables, charts.
pub fn markdown(s: &Summary, ops: Option<OpCounts>) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# p2pshare benchmark\n");
    let _ = writeln!(md, "Command:\n\n```\n{}\n```\n", s.command);
    let _ = writeln!(
        md,
        "Machine: {}, {} logical CPUs, {}. Index: {} (p2pshare {}), {} files pre-populated \
         ({} holder(s) each). Placement: {}.\n",
        s.machine.cpu,
        s.machine.cores,
        s.machine.kernel,
        s.index,
        s.version,
        s.prepopulated_files,
        s.holders_per_prepopulated_file,
        s.placement
    );
    if let Some(c) = &s.corpus {
        corpus_markdown(&mut md, c);
    }
    let prerun = format!(
        "p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs ({} round trips of {} bytes)",
        s.prerun_floor_us.p50,
        s.prerun_floor_us.p99,
        s.prerun_floor_us.mean,
        s.prerun_floor_us.round_trips,
        s.prerun_floor_us.ping_bytes
    );
    if s.runs.is_empty() {
        let _ = writeln!(
            md,
            "**Pre-run floor** (the bare loopback round trip: a TCP ping-pong between this \
             process and a child echo process, one client, timed before the run): {prerun}.\n"
        );
    } else {
        if !s.targets.is_empty() {
            targets_markdown(&mut md, s);
        }
        let _ = writeln!(
            md,
            "## The floor\n\n\
             The **floor** is the bare loopback round trip: a TCP ping-pong of {} bytes between a \
             simulated peer and a child echo process, one round trip in flight. Every simulated \
             peer pings the echo server right after each of its operations (and after each \
             indexd `Ping`, below), so a run's floor \
             shares the operations' moments and CPU contention (on a 2-core machine, 3 peers \
             plus indexd oversubscribe the CPUs). Each run's *floor* row below is those pings, \
             and every *p50 / floor* (tables, targets, summary.json) divides by that row's \
             p50; the chart draws it. On a shared or virtualised machine the round trip itself \
             swings (an idle vCPU takes tens of µs to wake), so compare ratios within a run \
             rather than absolute figures across runs.\n\n\
             Before each run one client also times the ping-pong alone, with no operations \
             running: the *pre-run floor* (`prerun_floor_us` in summary.json): {prerun} over \
             all runs. It is context only; no ratio uses it.\n\n\
             **indexd's `Ping`** is timed the same way: after each operation's floor ping, \
             each simulated peer sends indexd a `Ping` on its index session, then pings the \
             echo server again (so every index request follows a floor ping). It is the \
             server's protocol with no index work; each run's *Ping* row below is those, \
             *p50 / Ping* divides by its p50, and the proposed targets are on it.\n",
            s.prerun_floor_us.ping_bytes
        );
        let _ = writeln!(md, "## Closed loop\n");
        if let Some(o) = ops {
            let _ = writeln!(
                md,
                "Each simulated peer is a real connection (Hello handshake first) doing {} searches, \
                 {} registers and {} lookups interleaved in a seeded random order, one request \
                 outstanding; all peers of a run start together. One operation is:\n",
                o.search, o.register, o.lookup
            );
        }
        for kind in OpKind::ALL {
            let _ = writeln!(md, "- **{}**: {}.", kind.name(), op_meaning(kind));
        }
        let _ = writeln!(
            md,
            "- **Ping**: one indexd `Ping` after each operation's floor ping, followed by \
             another floor ping.\n\
             - **floor**: one bare round trip to the echo server, after each operation and \
             after each `Ping`.\n\n\
             Latencies are recorded in ns (HdrHistogram, 3 significant digits) and shown in µs; \
             *errors* counts error or unexpected answers (their latency is included). \
             *ops/s* counts the operations only, not the pings between them.\n"
        );
        let _ = writeln!(
            md,
            "| peers | op | count | errors | mean µs | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | p50 / floor | p50 / Ping |"
        );
        let _ = writeln!(
            md,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let row = |md: &mut String, peers: usize, name: &str, o: &OpSummary, ratios: [&str; 2]| {
            let _ = writeln!(
                md,
                "| {peers} | {name} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} |",
                o.count, o.errors, o.mean_us, o.p50_us, o.p90_us, o.p99_us, o.p999_us, o.max_us,
                ratios[0], ratios[1],
            );
        };
        for r in &s.runs {
            for kind in OpKind::ALL {
                let over_floor = format!("{:.2}×", r.p50_ratio(kind));
                let over_ping = format!("{:.2}×", r.p50_over_ping_of(kind));
                row(
                    &mut md,
                    r.peers,
                    kind.name(),
                    r.op(kind),
                    [&over_floor, &over_ping],
                );
            }
            let ping_over_floor = format!("{:.2}×", r.ping_over_floor);
            row(&mut md, r.peers, "*Ping*", &r.ping, [&ping_over_floor, ""]);
            row(&mut md, r.peers, "*floor*", &r.floor, ["", ""]);
        }
        let _ = writeln!(
            md,
            "\n| peers | ops/s (all peers) | run time s | pre-run floor p50 µs |\n\
             |---:|---:|---:|---:|"
        );
        for r in &s.runs {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.2} | {:.1} |",
                r.peers, r.ops_per_s, r.elapsed_s, r.prerun_floor_p50_us
            );
        }
        if s.runs.iter().any(|r| r.search_classes.is_some()) {
            classes_markdown(&mut md, &s.runs);
        }
        let _ = writeln!(
            md,
            "\n### Mean time per operation vs concurrent peers\n\n\
             ![mean time per operation](means.svg)\n\n\
             Solid: mean; dashed: p99; grey: each run's floor (p50); black dotted: each \
             run's indexd `Ping` (p50). PNG: [means.png](means.png).\n"
        );
        let _ = writeln!(
            md,
            "### Latency by percentile\n\n![latency by percentile](percentiles.svg)\n\n\
             PNG: [percentiles.png](percentiles.png). The full distributions are in the `.hgrm` \
             files (HdrHistogram percentile format, µs), one per peer count and op, and \
             `peersN-floor.hgrm` and `peersN-ping.hgrm` for each run's floor and `Ping`.\n"
        );
    }
    if let Some(sat) = &s.saturation {
        let _ = writeln!(md, "## Saturation\n");
        let _ = writeln!(
            md,
            "One reactor thread keeps {} Lookup-by-hash requests in flight on each of {} \
             connections for {:.1} s (after a 1 s warm-up).\n\n\
             **{:.0} ops/s**, {} answers, {} errors; latency under that load: p50 {:.1} µs, \
             p99 {:.1} µs, max {:.1} µs.\n\n\
             To compare with Redis at the same connection count and pipeline depth: \
             `redis-benchmark -t get -c {} -P {} -n {} -q`.\n",
            sat.pipeline,
            sat.connections,
            sat.duration_s,
            sat.ops_per_s,
            sat.ops,
            sat.errors,
            sat.latency.p50_us,
            sat.latency.p99_us,
            sat.latency.max_us,
            sat.connections,
            sat.pipeline,
            sat.ops.max(100_000)
        );
    }
    if let Some(a) = &s.abuse {
        abuse_markdown(&mut md, a);
    }
    if let Some(tr) = &s.transfer {
        transfer_markdown(&mut md, tr, &s.command);
    }
    md
}

/// The "Targets" section: each target with its verdict, which are the issue's and which
/// the proposed ones, and the `Ping`'s own cost over the floor in the judged run.
fn targets_markdown(md: &mut String, s: &Summary) {
    let _ = writeln!(
        md,
        "## Targets\n\n| target | from | measured (p50 / reference) | verdict |\n|---|---|---|---|"
    );
    for t in &s.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | **{}** |",
            t.target_text(),
            t.origin,
            t.measured_text(),
            t.verdict_text()
        );
    }
    let _ = write!(
        md,
        "\nThe targets on the floor are issue 12's. Those on indexd's `Ping` are proposed in \
         their place (README, issue 12): they bound what a lookup or a register adds to the \
         server's bare request timed beside it (the protocol and a readiness loop's turn, \
         no index work), which a bare echo does not pay."
    );
    if let Some(r) = s.runs.iter().find(|r| r.peers == 1 && r.ping.count > 0) {
        let _ = write!(
            md,
            " In this run of 1 peer the `Ping`'s p50 was {:.1} µs, {:.2}× the floor's {:.1} µs \
             ({:+.1} µs).",
            r.ping_p50_us,
            r.ping_over_floor,
            r.floor_p50_us,
            r.ping_p50_us - r.floor_p50_us
        );
    }
    let _ = writeln!(md, "\n");
}

/// The "Search by query class" table of the closed-loop runs.
fn classes_markdown(md: &mut String, runs: &[RunSummary]) {
    let _ = writeln!(
        md,
        "\n### Search by query class\n\n\
         Each search of a run on real names is one of five classes, drawn at random:\n"
    );
    for class in QueryClass::ALL {
        let _ = writeln!(md, "- **{}**: {}.", class.key(), class.meaning());
    }
    let _ = writeln!(
        md,
        "\nRound trip as the client times it, and server time as indexd reports it in each \
         answer (from the decoded request to the answer built; the targets of issue 12 are on \
         this: p99 ≤ 500 µs and max ≤ 1,000 µs for every class at 10M entries).\n\n\
         | peers | class | count | errors | p50 µs | p99 µs | max µs | p50 / floor | server p50 µs | server p99 µs | server max µs |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in runs {
        let Some(c) = &r.search_classes else { continue };
        for class in QueryClass::ALL {
            let o = c.get(class);
            let server = r.search_class_server.as_ref().map(|s| s.get(class));
            let cell = |f: fn(&OpSummary) -> f64| {
                server.map_or("–".to_string(), |s| format!("{:.0}", f(s)))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2}× | {} | {} | {} |",
                r.peers,
                class.key(),
                o.count,
                o.errors,
                o.p50_us,
                o.p99_us,
                o.max_us,
                r.class_ratio(class),
                cell(|s| s.p50_us),
                cell(|s| s.p99_us),
                cell(|s| s.max_us),
            );
        }
    }
}

/// The "Corpus" section: where the names came from and what they hold.
fn corpus_markdown(md: &mut String, c: &CorpusSummary) {
    let st = &c.stats;
    let pct = |n: u64| n as f64 / st.names_counted.max(1) as f64 * 100.0;
    let _ = writeln!(
        md,
        "## Corpus\n\n\
         Names from `{}`: {} lines read, {} names ({} not UTF-8, decoded as the peer decodes \
         them; {} skipped as the index would refuse them). {} files pre-populated, {} of them \
         grown beyond the names read (see `--names` in `--help`).\n\n\
         Over {} indexed names: {} distinct names, {} distinct words; {:.1}% of names have a \
         one-character word, {:.1}% a number.\n",
        c.file,
        c.lines_read,
        c.names_read,
        c.not_utf8_decoded,
        c.skipped,
        c.files,
        c.grown_files,
        st.names_counted,
        st.distinct_names,
        st.distinct_words,
        pct(st.names_with_one_letter_word),
        pct(st.names_with_number),
    );
    let list = |v: &[super::corpus::Share]| {
        v.iter()
            .map(|s| format!("`{}` {:.1}%", s.text.escape_debug(), s.fraction * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        md,
        "- commonest words (share of names): {}\n\
         - commonest first letters of a word: {}\n\
         - commonest names: {}\n",
        list(&st.top_words),
        list(&st.top_letters),
        list(&st.top_names)
    );
}

/// The "Under abuse" section.
fn abuse_markdown(md: &mut String, a: &AbuseSummary) {
    let _ = writeln!(
        md,
        "## Under abuse\n\n\
         One honest session runs {} searches and {} lookups by hash, one at a time, first on \
         the idle index, then again (the same requests in the same order) while an abuser's \
         connection keeps {} of the most expensive requests pipelined, refilled as each \
         answer arrives: searches for `{}` and lookups of the names `{}`. Each phase stops \
         after {:.1} s if its operations are not done.\n",
        a.honest_ops.search,
        a.honest_ops.lookup,
        a.in_flight,
        a.abuser_requests.searches.join("`, `"),
        a.abuser_requests
            .lookups
            .iter()
            .map(|n| n.escape_debug().to_string())
            .collect::<Vec<_>>()
            .join("`, `"),
        a.phase_limit_s,
    );
    let _ = writeln!(
        md,
        "| honest op | idle count | idle p50 µs | idle p99 µs | abused count | abused p50 µs | abused p99 µs | p50 ratio | p99 ratio (target ≤ {TARGET_P99_RATIO:.0}×) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (name, i, b, r50, r99) in [
        (
            "search",
            &a.idle.search,
            &a.abused.search,
            a.p50_ratio.search,
            a.p99_ratio.search,
        ),
        (
            "lookup",
            &a.idle.lookup,
            &a.abused.lookup,
            a.p50_ratio.lookup,
            a.p99_ratio.lookup,
        ),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {r50:.2}× | **{r99:.2}×** |",
            i.count, i.p50_us, i.p99_us, b.count, b.p50_us, b.p99_us
        );
    }
    if let (Some(ic), Some(bc)) = (&a.idle.search_classes, &a.abused.search_classes) {
        for class in QueryClass::ALL {
            let (i, b) = (ic.get(class), bc.get(class));
            let _ = writeln!(
                md,
                "| search: {} | {} | {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.2}× | {:.2}× |",
                class.key(),
                i.count,
                i.p50_us,
                i.p99_us,
                b.count,
                b.p50_us,
                b.p99_us,
                super::abuse::ratio(b.p50_us, i.p50_us),
                super::abuse::ratio(b.p99_us, i.p99_us)
            );
        }
    }
    let _ = writeln!(
        md,
        "\nVerdict: **{}**. Phases: idle {:.2} s, abused {:.2} s{}. The abuser wrote {} \
         requests and read {} answers ({:.0}/s, {} bytes).\n",
        if a.met { "met" } else { "NOT MET" },
        a.idle.elapsed_s,
        a.abused.elapsed_s,
        if a.abused.unanswered > 0 {
            format!(
                "; under abuse the honest client waited {} s for an answer that never came, \
                 which ended the phase",
                super::client::REPLY_TIMEOUT.as_secs()
            )
        } else {
            String::new()
        },
        a.abuser_sent,
        a.abuser_answered,
        a.abuser_answers_per_s,
        a.abuser_bytes_read
    );
    let k = &a.abuser_answers;
    let _ = writeln!(
        md,
        "The abuser's answers (it connected from {}): {} searches and {} lookups answered, {} \
         `RateLimited`, {} banned (indexd then closed its connection), {} errors.",
        a.abuser_from, k.searched, k.looked_up, k.rate_limited, k.banned, k.errors
    );
    let _ = writeln!(md, "\n{}", abuse_timeline(a));
}

/// When the abuser was refused, banned and closed, against the abused phase; with a
/// warning when it was gone before that phase started.
fn abuse_timeline(a: &AbuseSummary) -> String {
    let at = |t: Option<f64>| t.map_or("never".to_string(), |t| format!("at {t:.3} s"));
    let k = &a.abuser_answers_in_phase;
    let mut t = format!(
        "Abuser timeline (seconds from its start): first refusal {}, banned {}, connection \
         closed by indexd {}; the abused phase ran from {:.3} to {:.3} s, during which the \
         abuser got {} searches and {} lookups answered, {} refusals and {} bans.",
        at(a.abuser_first_refusal_s),
        at(a.abuser_banned_s),
        at(a.abuser_closed_s),
        a.abused_phase_s[0],
        a.abused_phase_s[1],
        k.searched,
        k.looked_up,
        k.rate_limited,
        k.banned,
    );
    if let Some(w) = abuse_warning(a) {
        let _ = write!(t, " {w}");
    }
    t
}

/// The WARNING of a run whose abuser was gone (banned, or closed by indexd) before the abused
/// phase started, saying which happened and when.
fn abuse_warning(a: &AbuseSummary) -> Option<String> {
    let gone = super::abuse::gone_text(
        a.abuser_first_refusal_s,
        a.abuser_banned_s,
        a.abuser_closed_s,
        a.abused_phase_s[0],
    )?;
    Some(format!(
        "WARNING: the abuser was {gone}: that phase measured an index without abuse, and its \
         verdict says little."
    ))
}

/// The abuse mode's console lines.
pub fn abuse_console(a: &AbuseSummary) -> String {
    let mut t = String::new();
    for (name, i, b, r99) in [
        (
            "search",
            &a.idle.search,
            &a.abused.search,
            a.p99_ratio.search,
        ),
        (
            "lookup",
            &a.idle.lookup,
            &a.abused.lookup,
            a.p99_ratio.lookup,
        ),
    ] {
        let _ = writeln!(
            t,
            "abuse: honest {name}: idle p50 {:.1} µs p99 {:.1} µs ({} ops) | abused p50 {:.1} µs p99 {:.1} µs ({} ops) | p99 ratio {r99:.2}x",
            i.p50_us, i.p99_us, i.count, b.p50_us, b.p99_us, b.count
        );
    }
    let _ = writeln!(
        t,
        "target honest p99 under abuse ≤ {TARGET_P99_RATIO:.0} × idle p99: {} ({} in flight; abuser {} answers, {:.0}/s)",
        if a.met { "met" } else { "NOT MET" },
        a.in_flight,
        a.abuser_answered,
        a.abuser_answers_per_s
    );
    let k = &a.abuser_answers;
    let _ = writeln!(
        t,
        "abuser (from {}): {} searches and {} lookups answered, {} rate limited, {} banned, {} errors",
        a.abuser_from, k.searched, k.looked_up, k.rate_limited, k.banned, k.errors
    );
    let _ = writeln!(t, "abuse: {}", abuse_timeline(a));
    t
}

/// A size in the largest binary unit that divides it (`1 GiB`, `8 MiB`, `1000 bytes`).
fn size_label(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// Each repeat's rate, `a / b / c`.
fn rates(s: &Series) -> String {
    s.mib_per_s
        .iter()
        .map(|r| format!("{r:.1}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The "Transfer" section of `report.md`.
fn transfer_markdown(md: &mut String, tr: &TransferSummary, command: &str) {
    let size = size_label(tr.size_bytes);
    let _ = writeln!(
        md,
        "## Transfer
"
    );
    let _ = writeln!(
        md,
        "One file of {size} ({} bytes, pseudo-random, BLAKE3 `{}`) shared by a `peer --serve`, \
         downloaded {} times by each contender over loopback, in turn (p2pshare, bare copy, \
         curl + nginx), `sync` before each. Command:\n\n```\n{command}\n```\n",
        tr.size_bytes,
        &tr.file_hash[..16],
        tr.repeats
    );
    let _ = writeln!(
        md,
        "| contender | MiB/s per repeat | median MiB/s | p2pshare ÷ this |\n|---|---:|---:|---:|"
    );
    let _ = writeln!(
        md,
        "| **p2pshare** `get` (verified, fsynced) | {} | **{:.1}** | 1.00× |",
        rates(&tr.p2pshare),
        tr.p2pshare.median_mib_per_s
    );
    let _ = writeln!(
        md,
        "| bare copy: sendfile → read + write, fsync | {} | {:.1} | {:.2}× |",
        rates(&tr.bare_copy),
        tr.bare_copy.median_mib_per_s,
        tr.p2pshare_over_bare_copy
    );
    let _ = writeln!(
        md,
        "| bare copy, before its fsync | {} | {:.1} | {:.2}× |",
        rates(&tr.bare_copy_without_fsync),
        tr.bare_copy_without_fsync.median_mib_per_s,
        tr.p2pshare_over_bare_copy_without_fsync
    );
    match (&tr.curl_nginx, tr.p2pshare_over_curl) {
        (Some(c), Some(r)) => {
            let _ = writeln!(
                md,
                "| curl from nginx (sendfile on), no fsync | {} | {:.1} | {:.2}× |",
                rates(c),
                c.median_mib_per_s,
                r
            );
        }
        _ => {
            let _ = writeln!(
                md,
                "| curl from nginx | not run: {} | | |",
                tr.curl_nginx_skipped.as_deref().unwrap_or("unknown reason")
            );
        }
    }
    let _ = writeln!(
        md,
        "\nWhat each time covers:\n\n\
         - **p2pshare**: the time a fresh console peer (`peer --share DIR --listen 127.0.0.1:0`, \
         stdin `get HASH`) prints in its `saved PATH (SIZE bytes in T s, ...)` line: connect to \
         the holder, request, receive every byte into `.HASH.p2pshare-part`, BLAKE3 verify, \
         fsync and rename. Not included: the peer's start-up and its lookup at the index.\n\
         - **bare copy**: the floor for a download, the same bytes moved between two \
         processes with no protocol and no hashing: a server (this \
         bench binary, `--sendfile-server FILE`) `sendfile`s the whole file to each connection \
         on a blocking socket; the bench connects, reads 256 KiB at a time and writes each \
         chunk to a new file, then fsyncs it. Timed from connect to fsync done; the row \
         *before its fsync* stops the clock after the last write.\n\
         - **curl + nginx**: the wall clock of `curl -s --noproxy '*' -o FILE \
         http://127.0.0.1:PORT/NAME` against nginx started by the bench (`worker_processes 1; \
         sendfile on; tcp_nopush on; access_log off`), curl's process start-up included. curl \
         does **not** fsync, so its file may still be in the page cache when the clock stops; \
         compare it with the bare copy's *before its fsync* row for a like-for-like view.{}\n",
        tr.curl_nginx_versions
            .as_deref()
            .map(|v| format!(" Versions: {v}."))
            .unwrap_or_default()
    );
    let _ = writeln!(
        md,
        "**Uploader memory**: {n} raw downloads (`TransferRequest::Get` from offset 0) opened \
         at once against the holder, all requested before any is read, each reading the \
         header and {} before closing ({:.2} s in all). The holder's VmRSS, sampled every \
         50 ms: {} KiB before, at most **{} KiB ({:.2} MB)** while serving the {n} downloads \
         (target: under 20 MB). Its VmHWM (peak over its life, hashing the file at \
         start included): {} KiB ({:.2} MB).\n",
        size_label(tr.bytes_per_concurrent_download),
        tr.concurrent_downloads_s,
        tr.holder_rss_before_kib,
        tr.holder_rss_max_kib_64_downloads,
        tr.holder_rss_max_mb_64_downloads,
        tr.holder_vmhwm_kib,
        tr.holder_vmhwm_mb,
        n = tr.concurrent_downloads,
    );
}

/// The transfer mode's console lines.
pub fn transfer_console(tr: &TransferSummary) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "transfer of {} x{} (median MiB/s): p2pshare {:.1} | bare copy {:.1} ({:.1} before fsync) | curl+nginx {}",
        size_label(tr.size_bytes),
        tr.repeats,
        tr.p2pshare.median_mib_per_s,
        tr.bare_copy.median_mib_per_s,
        tr.bare_copy_without_fsync.median_mib_per_s,
        match &tr.curl_nginx {
            Some(c) => format!("{:.1}", c.median_mib_per_s),
            None => format!(
                "not run ({})",
                tr.curl_nginx_skipped.as_deref().unwrap_or("unknown reason")
            ),
        }
    );
    let _ = writeln!(
        t,
        "transfer ratios: p2pshare / bare copy {:.2}x (/ bare copy before fsync {:.2}x), p2pshare / curl+nginx {}",
        tr.p2pshare_over_bare_copy,
        tr.p2pshare_over_bare_copy_without_fsync,
        tr.p2pshare_over_curl
            .map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}x"))
    );
    let _ = writeln!(
        t,
        "holder memory under {CONCURRENT_DOWNLOADS} downloads: max VmRSS {} KiB ({:.2} MB), VmHWM {} KiB ({:.2} MB)",
        tr.holder_rss_max_kib_64_downloads,
        tr.holder_rss_max_mb_64_downloads,
        tr.holder_vmhwm_kib,
        tr.holder_vmhwm_mb
    );
    if let Some(sw) = &tr.swarm {
        let _ = writeln!(
            t,
            "swarm: {} holders at {} B/s each {:.1} MiB/s | one of them {:.1} MiB/s | {:.2}x",
            sw.holders,
            sw.holder_rate,
            sw.all_holders_mib_per_s,
            sw.one_holder_mib_per_s,
            sw.speedup
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        let floor = Floor {
            p50: 20.0,
            p99: 40.0,
            mean: 22.0,
            round_trips: 100,
            ping_bytes: 32,
        };
        let op = |p50_us| OpSummary {
            count: 10,
            p50_us,
            ..OpSummary::default()
        };
        let runs = vec![
            // At 1 peer: lookup 1.10× the floor (met), register 1.16× (not met); over the
            // Ping of 19.5 µs, lookup 1.13× (met at 1.15) and register 1.19× (met at 1.25).
            RunSummary::new(
                1,
                [op(30.0), op(23.2), op(22.0)],
                900.0,
                1.0,
                op(20.0),
                op(19.5),
                18.0,
            ),
            RunSummary::new(
                3,
                [op(30.0), op(30.0), op(30.0)],
                1000.0,
                1.0,
                op(20.0),
                op(25.0),
                19.0,
            ),
        ];
        Summary {
            targets: TARGETS.iter().map(|t| Verdict::judge(t, &runs)).collect(),
            runs,
            prerun_floor_us: floor,
            saturation: None,
            transfer: None,
            abuse: None,
            corpus: None,
            ops_per_peer: Some(PerOp::from_array(&[1, 2, 3])),
            files_per_register: FILES_PER_REGISTER,
            prepopulated_files: 10,
            holders_per_prepopulated_file: 1,
            index: "started".into(),
            placement: "not pinned".into(),
            latency_unit: "µs",
            command: "tools/bench".into(),
            machine: Machine::detect(),
            version: "0",
        }
    }

    #[test]
    fn json_has_the_stable_schema() {
        let v = serde_json::to_value(summary()).unwrap();
        assert!(v["prerun_floor_us"]["p50"].is_number());
        assert!(v["prerun_floor_us"]["p99"].is_number());
        let run = &v["runs"][1];
        assert_eq!(run["peers"], 3);
        assert_eq!(run["floor_p50_us"], 20.0);
        assert_eq!(run["floor"]["p50_us"], 20.0);
        assert_eq!(run["prerun_floor_p50_us"], 19.0);
        assert!(run["ops_per_s"].is_number());
        for op in ["search", "register", "lookup"] {
            for key in [
                "count", "errors", "mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
            ] {
                assert!(run["ops"][op][key].is_number(), "runs[0].ops.{op}.{key}");
            }
        }
        assert_eq!(run["p50_over_floor"]["search"], 1.5);
        assert_eq!(run["ping"]["p50_us"], 25.0);
        assert_eq!(run["ping_p50_us"], 25.0);
        assert_eq!(run["ping_over_floor"], 1.25);
        assert_eq!(run["p50_over_ping"]["lookup"], 1.2);
        let t = &v["targets"][3];
        for key in [
            "op",
            "peers",
            "over",
            "bound",
            "origin",
            "p50_us",
            "over_p50_us",
            "p50_over",
            "met",
        ] {
            assert!(!t[key].is_null(), "targets[3].{key}: {t}");
        }
    }

    #[test]
    fn transfer_section_and_json() {
        let series = |r: f64| Series {
            seconds: vec![1.0],
            mib_per_s: vec![r],
            median_mib_per_s: r,
        };
        let mut s = summary();
        s.runs.clear();
        s.transfer = Some(TransferSummary {
            size_bytes: 1 << 30,
            repeats: 1,
            file_hash: "ab".repeat(32),
            p2pshare: series(900.0),
            bare_copy: series(1000.0),
            bare_copy_without_fsync: series(1500.0),
            curl_nginx: None,
            curl_nginx_skipped: Some("nginx is not installed".into()),
            p2pshare_over_bare_copy: 0.9,
            p2pshare_over_bare_copy_without_fsync: 0.6,
            concurrent_downloads: 64,
            bytes_per_concurrent_download: 128 << 20,
            holder_rss_max_kib_64_downloads: 5000,
            ..TransferSummary::default()
        });
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["runs"], serde_json::json!([]));
        assert!(v["prerun_floor_us"]["p50"].is_number());
        assert_eq!(v["transfer"]["p2pshare"]["median_mib_per_s"], 900.0);
        assert!(v["transfer"]["curl_nginx"].is_null());
        assert_eq!(
            v["transfer"]["curl_nginx_skipped"],
            "nginx is not installed"
        );
        let md = markdown(&s, None);
        assert!(md.contains("## Transfer"));
        assert!(md.contains("1 GiB"));
        assert!(md.contains("| **p2pshare** `get` (verified, fsynced) | 900.0 | **900.0** |"));
        assert!(md.contains("not run: nginx is not installed"));
        assert!(md.contains("128 MiB"));
        let c = transfer_console(s.transfer.as_ref().unwrap());
        assert!(c.contains("p2pshare 900.0"));
        assert!(c.contains("0.90x"));
    }

    #[test]
    fn targets_are_judged_at_one_peer_on_the_reported_ratio() {
        let s = summary();
        let [lookup, register, lookup_ping, register_ping] = &s.targets[..] else {
            panic!("four targets: {:?}", s.targets)
        };
        // The issue's two, on the floor.
        assert_eq!(
            (lookup.op, lookup.over, lookup.met),
            ("lookup", "floor", Some(true))
        );
        assert_eq!((lookup.bound, lookup.origin), (1.15, "issue 12"));
        assert_eq!(lookup.p50_over, Some(1.1));
        assert_eq!(lookup.over_p50_us, Some(20.0));
        assert_eq!(
            (register.op, register.over, register.met),
            ("register", "floor", Some(false))
        );
        assert_eq!(register.p50_over, Some(1.16));
        // The proposed two, on the Ping of the same run (19.5 µs), each with its own bound:
        // register's 1.19× meets 1.25 though it would not meet 1.15.
        assert_eq!(
            (lookup_ping.op, lookup_ping.over, lookup_ping.origin),
            ("lookup", "ping", "proposed")
        );
        assert_eq!(lookup_ping.over_p50_us, Some(19.5));
        assert_eq!(
            (lookup_ping.bound, lookup_ping.p50_over, lookup_ping.met),
            (1.15, Some(1.13), Some(true))
        );
        assert_eq!(
            (register_ping.op, register_ping.over, register_ping.bound),
            ("register", "ping", 1.25)
        );
        assert_eq!(
            (register_ping.p50_over, register_ping.met),
            (Some(1.19), Some(true))
        );
        let md = markdown(&s, None);
        assert!(md.contains("## Targets"));
        assert!(
            md.contains("| lookup p50 ≤ 1.15 × floor at 1 peer | issue 12 | 1.10× (p50 22.0 µs, floor 20.0 µs) | **met** |"),
            "{md}"
        );
        assert!(md.contains("| register p50 ≤ 1.15 × floor at 1 peer | issue 12 | 1.16× (p50 23.2 µs, floor 20.0 µs) | **NOT MET** |"));
        assert!(
            md.contains("| register p50 ≤ 1.25 × indexd Ping at 1 peer | proposed | 1.19× (p50 23.2 µs, Ping 19.5 µs) | **met** |"),
            "{md}"
        );
        assert!(
            md.contains("the `Ping`'s p50 was 19.5 µs, 0.98× the floor's 20.0 µs (-0.5 µs)"),
            "{md}"
        );
        // The console states all four, with their origin.
        let c = crate::console_table(&s);
        assert!(
            c.contains("target lookup p50 ≤ 1.15 × indexd Ping at 1 peer (proposed): met, 1.13×"),
            "{c}"
        );
        assert!(
            c.contains("target register p50 ≤ 1.15 × floor at 1 peer (issue 12): NOT MET, 1.16×"),
            "{c}"
        );
        // Without a run of 1 peer, nothing is judged.
        let later = &s.runs[1..];
        let v = Verdict::judge(&TARGETS[0], later);
        assert_eq!(v.met, None);
        assert_eq!(v.verdict_text(), "not measured");
        assert_eq!(v.measured_text(), "no lookup in a run with 1 peer");
        // A run of 1 peer that did no register (`--ops 0,0,800`) judges none either.
        let mut no_registers = s.runs.clone();
        no_registers[0].ops.register = OpSummary::default();
        let v = Verdict::judge(&TARGETS[1], &no_registers);
        assert_eq!((v.op, v.met), ("register", None));
        assert_eq!(v.measured_text(), "no register in a run with 1 peer");
        assert_eq!(
            Verdict::judge(&TARGETS[0], &no_registers).met,
            Some(true),
            "the lookups of that run are still judged"
        );
        // A run whose Ping was not timed judges no target on it.
        let mut no_pings = s.runs.clone();
        no_pings[0] = RunSummary::new(
            1,
            [
                OpSummary::default(),
                no_pings[0].ops.register.clone(),
                no_pings[0].ops.lookup.clone(),
            ],
            900.0,
            1.0,
            no_pings[0].floor.clone(),
            OpSummary::default(),
            18.0,
        );
        let v = Verdict::judge(&TARGETS[2], &no_pings);
        assert_eq!(v.met, None);
        assert_eq!(v.measured_text(), "no ping timed in the run with 1 peer");
        assert_eq!(Verdict::judge(&TARGETS[0], &no_pings).met, Some(true));
    }

    #[test]
    fn markdown_has_tables_and_charts() {
        let md = markdown(
            &summary(),
            Some(OpCounts {
                search: 1,
                register: 2,
                lookup: 3,
            }),
        );
        assert!(md.contains("tools/bench"));
        assert!(md.contains("| 3 | search | 10 |"));
        assert!(md.contains("| 3 | *floor* | 10 |"));
        assert!(md.contains("1.50×"));
        // The Ping row: its p50 over the floor's; the ops' p50 over the Ping's.
        assert!(md.contains("| 3 | *Ping* | 10 | 0 | 0.0 | 25.0 |"), "{md}");
        assert!(md.contains("| 1.25× |  |"), "{md}");
        assert!(md.contains("| 1.50× | 1.20× |"), "{md}");
        assert!(md.contains("means.svg"));
        assert!(md.contains("percentiles.svg"));
    }
}
