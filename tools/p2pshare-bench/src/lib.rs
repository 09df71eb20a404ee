//! p2pshare-bench: the benchmark behind `tools/bench`: real index sessions over loopback,
//! timed one operation at a time into HdrHistograms, next to the bare loopback round trip
//! measured in the same run, written out as JSON, `.hgrm` files, a Markdown report and charts.
//!
//! Its own crate so that the servers never link what only the bench needs (plotters, a
//! compiled-in font, serde_json); it uses the `p2pshare` library's codec, wire messages,
//! reactor and process helpers like any other client.
//!
//! Parts: [`config`] (flags → validated config), [`workload`] (what the simulated peers ask,
//! seeded and pure), [`corpus`] (real names from `--names`, grown, counted, and the query
//! classes drawn from them), [`client`] (a blocking session), [`load`] (pre-population and the
//! closed-loop runs), [`saturate`] (the pipelined throughput mode on the reactor), [`abuse`]
//! (an honest client next to one that pipelines the most expensive requests), [`floor`]
//! (the echo server and the ping-pong), [`transfer`] (downloads between real peers next to a
//! bare copy and curl + nginx), [`cluster`] (three nats-servers and indexd nodes: lag, reads,
//! rebuild, memory, engine fault, node death), [`stats`], [`report`] and [`charts`] (outputs).
//!
//! # Invariants
//! - Every process the bench starts (indexd, the echo server, the transfer mode's peers,
//!   sendfile server and nginx) is killed when the bench ends, on error paths too
//!   ([`floor::ChildGuard`]).
//! - Pre-populated files stay in the index for the whole bench: their connections stay open
//!   and ping.
//! - Only the request/answer round trip is timed; building requests happens before the clock.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod abuse;
pub mod charts;
pub mod client;
pub mod cluster;
pub mod config;
pub mod corpus;
pub mod floor;
pub mod load;
pub mod report;
pub mod saturate;
pub mod stats;
pub mod storm;
pub mod transfer;
pub mod workload;

use config::{Config, Mode, OpCounts};
use corpus::{Corpus, NameStats, QueryClass};
use load::{Population, RunSpec};
use report::{
    CorpusSummary, Floor, Machine, PerClass, PerOp, RunSummary, SaturationSummary, Summary, Verdict,
};
use stats::OpSummary;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use workload::OpKind;

/// indexd's `--max-connections` unless told otherwise.
const DEFAULT_INDEXD_CONNECTIONS: usize = 10_000;

/// Runs the bench described by `config`, writes every output into `config.out`, and
/// returns the summary.
pub fn run(config: &Config) -> io::Result<Summary> {
    fs::create_dir_all(&config.out).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", config.out.display()),
        )
    })?;
    let machine = Machine::detect();
    let names = match (&config.names, &config.mode) {
        (Some(path), Mode::Latency { .. } | Mode::Saturation { .. } | Mode::Abuse { .. }) => {
            let began = Instant::now();
            let c = Corpus::read(path, config.files)?;
            eprintln!(
                "bench: read {} names from {} ({} lines, {} skipped, {} not UTF-8) in {:.1}s",
                c.len(),
                path.display(),
                c.lines,
                c.skipped(),
                c.not_utf8,
                began.elapsed().as_secs_f64()
            );
            Some(c)
        }
        _ => None,
    };

    // Servers (indexd, the echo server) on the last CPU, clients on the first: the floor
    // and every operation then cross the same two cores, as the targets are defined. A
    // spawned process inherits the affinity of the thread that spawns it.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinned = cpus >= 2 && !matches!(config.mode, Mode::Transfer { .. });
    if pinned {
        p2pshare::sys::process::pin_current_thread(cpus - 1)?;
    }
    let (_indexd, addr, index_label) = match config.index {
        Some(addr) => (None, addr, addr.to_string()),
        None => {
            // Every simulated peer connects from 127.0.0.1.
            let mut args = vec![
                "--listen".to_string(),
                "127.0.0.1:0".into(),
                "--log".into(),
                "warn".into(),
                "--max-connections-per-ip".into(),
                "0".into(),
                "--max-holdings-per-ip".into(),
                "0".into(),
            ];
            // The fake peers stay connected: beyond indexd's default of 10,000 connections
            // (10M files), room for them and the runs' sessions.
            // A simulated peer is a closed loop of thousands of requests a second, far beyond
            // what the rate limits allow one session (they are there for abusers): they are
            // off when measuring latency and throughput, and on in the abuse mode, which
            // measures what they protect.
            if !matches!(config.mode, Mode::Abuse { .. }) {
                for flag in [
                    "--rate-search",
                    "--rate-lookup",
                    "--rate-address",
                    "--rate-register-address",
                ] {
                    args.extend([flag.to_string(), "0".into()]);
                }
            }
            let sessions = config.files.div_ceil(workload::FILES_PER_FAKE_PEER) + 1_000;
            if sessions > DEFAULT_INDEXD_CONNECTIONS {
                args.extend(["--max-connections".to_string(), sessions.to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (child, addr) = floor::spawn_listening(&config.indexd, &args)?;
            eprintln!("bench: started indexd on {addr}");
            (Some(child), addr, "started".to_string())
        }
    };

    // The echo server lives for the whole bench. A closed-loop run's floor, which its ratios
    // divide by, is taken *inside* the run: every simulated peer pings the echo server after
    // each of its operations, so op and floor samples share the same moments and the same
    // concurrency (a shared machine's loopback latency drifts, and a lone client on an idle
    // virtual CPU pays wake-up latencies a busy one does not). The pre-run floor, one client
    // right before each run, is context only.
    let (_echo, echo_addr) = floor::spawn_listening(&config.self_exe, &["--echo-server"])?;
    if pinned {
        p2pshare::sys::process::pin_current_thread(0)?;
        eprintln!(
            "bench: indexd and the echo server pinned to CPU {}, clients to CPU 0",
            cpus - 1
        );
    }
    let mut prerun_all = stats::new_histogram();
    let mut measure_prerun_floor = || -> io::Result<Floor> {
        let single = floor::measure(echo_addr, config.floor_round_trips)?;
        prerun_all.add(&single).expect("same histogram bounds");
        let f = floor_of(&single);
        eprintln!(
            "bench: pre-run floor (loopback round trip, 1 client alone): p50 {:.1} µs, p99 {:.1} µs",
            f.p50, f.p99
        );
        Ok(f)
    };

    // The transfer mode does not touch the index's data, so it skips the pre-population.
    let prepopulated = match config.mode {
        Mode::Transfer { .. } => 0,
        _ => config.files,
    };

    let mut runs = Vec::new();
    let mut chart_runs = Vec::new();
    let mut saturation = None;
    let mut transfer = None;
    let mut abuse = None;
    let mut name_stats = None;
    let mut ops_per_peer = None;
    match &config.mode {
        Mode::Latency { ops, peers } => {
            ops_per_peer = Some(PerOp::from_array(&ops.as_array()));
            let (population, st) = populate(config, addr, names.as_ref(), false)?;
            name_stats = st;
            for (i, &n) in peers.iter().enumerate() {
                let prerun = measure_prerun_floor()?;
                let spec = RunSpec {
                    run: i,
                    peers: n,
                    ops: *ops,
                    limit: None,
                    pace: None,
                };
                let r = load::run_closed_loop_with(
                    addr,
                    echo_addr,
                    spec,
                    &population,
                    config.seed,
                    load::Pings::Timed,
                )?;
                let run_floor = OpSummary::of(&r.floor, 0);
                let run_ping = OpSummary::of(&r.ping, 0);
                eprintln!(
                    "bench: floor of the run (pings after each op of {n} peer(s)): p50 {:.1} µs, p99 {:.1} µs; indexd Ping: p50 {:.1} µs, p99 {:.1} µs",
                    run_floor.p50_us, run_floor.p99_us, run_ping.p50_us, run_ping.p99_us
                );
                write_file(
                    &config.out.join(format!("peers{n}-floor.hgrm")),
                    &stats::to_hgrm(&r.floor),
                )?;
                write_file(
                    &config.out.join(format!("peers{n}-ping.hgrm")),
                    &stats::to_hgrm(&r.ping),
                )?;
                let summaries = [0, 1, 2].map(|k| OpSummary::of(&r.hists[k], r.errors[k]));
                for kind in OpKind::ALL {
                    write_file(
                        &config.out.join(format!("peers{n}-{}.hgrm", kind.name())),
                        &stats::to_hgrm(&r.hists[kind.index()]),
                    )?;
                }
                chart_runs.push(charts::ChartRun {
                    peers: n,
                    ops: summaries.clone(),
                    curves: [0, 1, 2].map(|k| stats::percentile_curve(&r.hists[k])),
                    floor_p50_us: run_floor.p50_us,
                    ping_p50_us: run_ping.p50_us,
                });
                let mut run = RunSummary::new(
                    n,
                    summaries,
                    r.ops_per_s(),
                    r.elapsed.as_secs_f64(),
                    run_floor,
                    run_ping,
                    prerun.p50,
                );
                if !r.classes.is_empty() {
                    for class in QueryClass::ALL {
                        write_file(
                            &config
                                .out
                                .join(format!("peers{n}-search-{}.hgrm", class.key())),
                            &stats::to_hgrm(&r.classes[class.index()]),
                        )?;
                    }
                    run.search_classes = Some(PerClass::from_fn(|c| {
                        OpSummary::of(&r.classes[c.index()], 0)
                    }));
                    run.search_class_server = Some(PerClass::from_fn(|c| {
                        OpSummary::of(&r.class_server[c.index()], 0)
                    }));
                }
                runs.push(run);
            }
        }
        Mode::Abuse {
            ops,
            in_flight,
            duration,
        } => {
            let (population, st) = populate(config, addr, names.as_ref(), true)?;
            let st = st.expect("statistics asked for");
            measure_prerun_floor()?;
            let a = run_abuse(
                config,
                addr,
                echo_addr,
                &population,
                &st,
                *ops,
                *in_flight,
                *duration,
            )?;
            abuse = Some(a);
            name_stats = Some(st);
        }
        Mode::Saturation {
            connections,
            pipeline,
            duration,
        } => {
            let (population, st) = populate(config, addr, names.as_ref(), false)?;
            name_stats = st;
            measure_prerun_floor()?;
            let keys = population.files.iter().map(|f| f.hash).collect();
            let r = saturate::run(addr, *connections, *pipeline, *duration, keys, config.seed)?;
            write_file(
                &config.out.join("saturation-lookup.hgrm"),
                &stats::to_hgrm(&r.latency),
            )?;
            saturation = Some(SaturationSummary {
                op: "lookup",
                connections: r.connections,
                pipeline: r.pipeline,
                duration_s: (r.window.as_secs_f64() * 1000.0).round() / 1000.0,
                ops: r.ops,
                errors: r.errors,
                ops_per_s: r.ops_per_s().round(),
                latency: OpSummary::of(&r.latency, r.errors),
            });
        }
        Mode::Transfer {
            size,
            repeats,
            swarm_rate,
        } => {
            measure_prerun_floor()?;
            transfer = Some(transfer::run(&transfer::Params {
                size: *size,
                repeats: *repeats,
                index: addr,
                peer: &config.peer,
                self_exe: &config.self_exe,
                out: &config.out,
                seed: config.seed,
                swarm_rate: *swarm_rate,
            })?);
        }
    }
    if !chart_runs.is_empty() {
        charts::means_chart(&config.out, &chart_runs)?;
        charts::percentiles_chart(&config.out, &chart_runs)?;
    }
    let targets = match config.mode {
        Mode::Latency { .. } => report::TARGETS
            .iter()
            .map(|t| Verdict::judge(t, &runs))
            .collect(),
        Mode::Saturation { .. } | Mode::Transfer { .. } | Mode::Abuse { .. } => Vec::new(),
    };
    let corpus = match (&names, name_stats) {
        (Some(c), Some(stats)) => Some(CorpusSummary {
            file: config
                .names
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string()),
            lines_read: c.lines,
            names_read: c.len(),
            not_utf8_decoded: c.not_utf8,
            skipped: c.skipped(),
            files: prepopulated,
            grown_files: prepopulated.saturating_sub(c.len()),
            stats,
        }),
        _ => None,
    };
    let summary = Summary {
        prerun_floor_us: floor_of(&prerun_all),
        runs,
        targets,
        saturation,
        transfer,
        abuse,
        corpus,
        ops_per_peer,
        files_per_register: workload::FILES_PER_REGISTER,
        prepopulated_files: prepopulated,
        holders_per_prepopulated_file: config.holders,
        index: index_label,
        placement: if pinned {
            format!(
                "indexd and the echo server pinned to CPU {}, the bench's clients to CPU 0",
                cpus - 1
            )
        } else {
            "not pinned".to_string()
        },
        latency_unit: "microseconds (recorded in nanoseconds, 3 significant digits)",
        command: config.command.clone(),
        machine,
        version: env!("CARGO_PKG_VERSION"),
    };
    let json = serde_json::to_string_pretty(&summary).map_err(io::Error::other)?;
    write_file(&config.out.join("summary.json"), &(json + "\n"))?;
    let ops = match &config.mode {
        Mode::Latency { ops, .. } => Some(*ops),
        Mode::Saturation { .. } | Mode::Transfer { .. } | Mode::Abuse { .. } => None,
    };
    write_file(
        &config.out.join("report.md"),
        &report::markdown(&summary, ops),
    )?;
    Ok(summary)
}

/// Pre-populates the index at `addr` (named from `names` when given) and counts the names'
/// statistics when searches are drawn from them or `want_stats`.
fn populate(
    config: &Config,
    addr: SocketAddr,
    names: Option<&Corpus>,
    want_stats: bool,
) -> io::Result<(Population, Option<NameStats>)> {
    let mut population =
        Population::create(addr, config.files, config.holders, config.seed, names)?;
    if names.is_none() && !want_stats {
        return Ok((population, None));
    }
    let began = Instant::now();
    let files = population.files.clone();
    let st = NameStats::of(files.len(), |i| files[i].name.clone());
    eprintln!(
        "bench: counted the words of {} indexed names in {:.1}s; commonest: {}",
        st.names_counted,
        began.elapsed().as_secs_f64(),
        st.top_words
            .iter()
            .map(|s| format!("{} {:.1}%", s.text, s.fraction * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if names.is_some() {
        population.common_words = Some(Arc::new(st.top_words.clone()));
    }
    Ok((population, Some(st)))
}

/// The abuse mode: the honest client's two phases around the abuser.
#[allow(clippy::too_many_arguments)]
fn run_abuse(
    config: &Config,
    addr: SocketAddr,
    echo_addr: SocketAddr,
    population: &Population,
    st: &NameStats,
    ops: OpCounts,
    in_flight: usize,
    duration: std::time::Duration,
) -> io::Result<abuse::AbuseSummary> {
    let expensive = abuse::Expensive::from_stats(st);
    let honest = OpCounts { register: 0, ..ops };
    // The same run number in both phases: the same requests in the same order.
    let spec = RunSpec {
        run: 0,
        peers: 1,
        ops: honest,
        limit: Some(duration),
        pace: Some(abuse::HONEST_PACE),
    };
    eprintln!("bench: abuse: the honest client on the idle index");
    let idle = load::run_closed_loop(addr, echo_addr, spec, population, config.seed)?;
    eprintln!(
        "bench: abuse: again while one connection keeps {in_flight} requests in flight: \
         searches {:?}, lookups {:?}",
        expensive.searches, expensive.lookups
    );
    let abuser = abuse::Abuser::start(addr, expensive.clone(), in_flight)?;
    // The abuser first spends the burst its rate limits allow at once; the honest client is
    // measured against what it can keep up after that (see `abuse::WARMUP`).
    std::thread::sleep(abuse::WARMUP);
    let before = abuser.answers_so_far();
    let phase_start = abuser.began().elapsed();
    let abused = load::run_closed_loop(addr, echo_addr, spec, population, config.seed);
    let phase_end = abuser.began().elapsed();
    let in_phase = abuser.answers_so_far().since(&before);
    let done = abuser.stop()?;
    let abused = abused?;
    // From the same rounded times summary.json keeps, so the flag, stderr and the report
    // agree.
    let gone = abuse::gone_text(
        done.first_refusal.map(abuse::seconds),
        done.banned.map(abuse::seconds),
        done.closed.map(abuse::seconds),
        abuse::seconds(phase_start),
    );
    let banned_before_phase = gone.is_some();
    if let Some(gone) = gone {
        eprintln!(
            "bench: abuse: WARNING: the abuser was {gone}: that phase measured an index \
             without abuse"
        );
    }
    let phase = |name: &str, r: &load::RunResult| -> io::Result<abuse::AbusePhase> {
        for kind in [OpKind::Search, OpKind::Lookup] {
            write_file(
                &config
                    .out
                    .join(format!("abuse-{name}-{}.hgrm", kind.name())),
                &stats::to_hgrm(&r.hists[kind.index()]),
            )?;
        }
        Ok(abuse::AbusePhase {
            search: OpSummary::of(&r.hists[0], r.errors[0]),
            lookup: OpSummary::of(&r.hists[2], r.errors[2]),
            search_classes: (!r.classes.is_empty())
                .then(|| PerClass::from_fn(|c| OpSummary::of(&r.classes[c.index()], 0))),
            floor: OpSummary::of(&r.floor, 0),
            elapsed_s: (r.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            unanswered: r.unanswered,
        })
    };
    let (idle, abused) = (phase("idle", &idle)?, phase("abused", &abused)?);
    let (p50_ratio, p99_ratio, met) = abuse::AbuseSummary::judge(&idle, &abused);
    Ok(abuse::AbuseSummary {
        in_flight,
        abuser_requests: expensive,
        abuser_sent: done.sent,
        abuser_answered: done.answered,
        abuser_answers: done.answers,
        abuser_from: done.local.ip().to_string(),
        abuser_answers_per_s: (done.answered as f64 / done.elapsed.as_secs_f64().max(1e-9)).round(),
        abuser_bytes_read: done.bytes,
        phase_limit_s: duration.as_secs_f64(),
        honest_ops: abuse::SearchLookup {
            search: honest.search as f64,
            lookup: honest.lookup as f64,
        },
        idle,
        abused,
        p50_ratio,
        p99_ratio,
        target_p99_ratio: abuse::TARGET_P99_RATIO,
        met,
        abuser_first_refusal_s: done.first_refusal.map(abuse::seconds),
        abuser_banned_s: done.banned.map(abuse::seconds),
        abuser_closed_s: done.closed.map(abuse::seconds),
        abused_phase_s: [abuse::seconds(phase_start), abuse::seconds(phase_end)],
        abuser_answers_in_phase: in_phase,
        banned_before_phase,
    })
}

/// The floor's figures from its histogram (ns).
fn floor_of(hist: &hdrhistogram::Histogram<u64>) -> Floor {
    let s = OpSummary::of(hist, 0);
    Floor {
        p50: s.p50_us,
        p99: s.p99_us,
        mean: s.mean_us,
        round_trips: s.count,
        ping_bytes: floor::PING_BYTES,
    }
}

fn write_file(path: &Path, text: &str) -> io::Result<()> {
    fs::write(path, text)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

/// The figures printed at the end: one line per run and op.
pub fn console_table(s: &Summary) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    if s.runs.is_empty() {
        let _ = writeln!(
            t,
            "pre-run floor (loopback round trip, 1 client alone): p50 {:.1} µs  p99 {:.1} µs",
            s.prerun_floor_us.p50, s.prerun_floor_us.p99
        );
    } else {
        let _ = writeln!(
            t,
            "{:>5} {:<8} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "peers",
            "op",
            "count",
            "errors",
            "mean µs",
            "p50 µs",
            "p99 µs",
            "max µs",
            "p50/floor",
            "p50/ping"
        );
    }
    let row = |t: &mut String, peers: usize, name: &str, o: &OpSummary, ratio: &str| {
        let line = format!(
            "{peers:>5} {name:<8} {:>7} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {ratio}",
            o.count, o.errors, o.mean_us, o.p50_us, o.p99_us, o.max_us,
        );
        let _ = writeln!(t, "{}", line.trim_end());
    };
    for r in &s.runs {
        for kind in OpKind::ALL {
            let ratio = format!(
                "{:>9} {:>9}",
                format!("{:.2}x", r.p50_ratio(kind)),
                format!("{:.2}x", r.p50_over_ping_of(kind))
            );
            row(&mut t, r.peers, kind.name(), r.op(kind), &ratio);
        }
        if let Some(c) = &r.search_classes {
            for class in QueryClass::ALL {
                let ratio = format!("{:>9}", format!("{:.2}x", r.class_ratio(class)));
                row(&mut t, r.peers, class.label(), c.get(class), &ratio);
            }
        }
        if let Some(c) = &r.search_class_server {
            for class in QueryClass::ALL {
                let label = format!("{}*", class.label());
                row(&mut t, r.peers, &label, c.get(class), "");
            }
        }
        let ping_ratio = format!("{:>9}", format!("{:.2}x", r.ping_over_floor));
        row(&mut t, r.peers, "ping", &r.ping, &ping_ratio);
        row(&mut t, r.peers, "floor", &r.floor, "");
        let _ = writeln!(t, "{:>5} all ops: {:.0} ops/s", r.peers, r.ops_per_s);
    }
    if !s.runs.is_empty() {
        let _ = writeln!(
            t,
            "floor: a bare loopback round trip each simulated peer times after each of its ops \
             and pings; ping: indexd's own Ping, timed after each op's floor ping; p50/floor and \
             p50/ping divide by their p50 in the same run; a class marked * is its searches' \
             server time as indexd reports it"
        );
    }
    for v in &s.targets {
        let _ = writeln!(
            t,
            "target {} ({}): {}, {}",
            v.target_text(),
            v.origin,
            v.verdict_text(),
            v.measured_text()
        );
    }
    if s.targets
        .iter()
        .any(|v| v.origin != report::Origin::Issue.key())
    {
        let _ = writeln!(
            t,
            "(proposed: the nearest honest targets, in place of issue 12's two on the floor, \
             relative to indexd's own Ping timed in the same run; see report.md)"
        );
    }
    if let Some(sat) = &s.saturation {
        let _ = writeln!(
            t,
            "saturation: {} connections x {} in flight, lookups: {:.0} ops/s ({} errors), p50 {:.1} µs, p99 {:.1} µs",
            sat.connections, sat.pipeline, sat.ops_per_s, sat.errors, sat.latency.p50_us, sat.latency.p99_us
        );
    }
    if let Some(a) = &s.abuse {
        t.push_str(&report::abuse_console(a));
    }
    if let Some(tr) = &s.transfer {
        t.push_str(&report::transfer_console(tr));
    }
    t
}

/// Prints a progress line on stderr: rewritten in place on a terminal, one line per call
/// otherwise (so logs of CI runs stay readable).
pub fn progress(line: &str) {
    use std::io::{IsTerminal, Write};
    let mut err = io::stderr().lock();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

/// Ends a sequence of [`progress`] lines with `line`.
pub fn progress_done(line: &str) {
    use std::io::{IsTerminal, Write};
    let mut err = io::stderr().lock();
    if err.is_terminal() {
        let _ = writeln!(err, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(err, "{line}");
    }
}
