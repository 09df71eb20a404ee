//! `bench`: the p2pshare benchmark (run it through `tools/bench`). Thin main: flags →
//! validated config → `p2pshare_bench::run`.

use clap::Parser;
use p2pshare_bench::config::{self, Config, Mode, OpCounts};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Smallest `--transfer` size: the peer prints its download time in milliseconds.
const MIN_TRANSFER_BYTES: u64 = 1 << 20;

/// Times search, register and lookup against a real indexd over loopback, next to the bare
/// loopback round trip, and writes summary.json, .hgrm files, report.md and charts; with
/// --transfer, times downloads between real peers next to a bare copy and curl + nginx.
#[derive(Parser, Debug)]
#[command(version)]
struct Flags {
    /// Search, register and lookup operations per simulated peer.
    #[arg(long, value_name = "S,R,L", default_value = "1000,200,800", value_parser = config::parse_ops)]
    ops: OpCounts,
    /// Concurrent simulated peers, one run per count: N runs 1, 2, ..., N peers (a sweep);
    /// A..B runs A, A+1, ..., B (3..3: one run of 3 peers); a list A,B,C runs exactly those
    /// (two or more elements, each a count or a range).
    #[arg(long, value_name = "N|A..B|A,B,...", default_value = "1,2,3", value_parser = config::parse_peers)]
    // Spelled out so clap takes the whole list as one value, not as repeated flags.
    peers: std::vec::Vec<usize>,
    /// Measure an indexd already running at this address instead of starting one.
    #[arg(long, value_name = "ADDR")]
    index: Option<SocketAddr>,
    /// Files to pre-populate the index with (from fake peers, 1,000 files each).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    files: usize,
    /// Fake peers holding each pre-populated file: fake peer n registers its own 1,000 files
    /// and those of the H-1 peers before it, so --files 1000000 --holders 2 is 1,000 peers
    /// of 2,000 files each.
    #[arg(long, value_name = "H", default_value_t = 1)]
    holders: usize,
    /// Name the pre-populated files from this file, one name a line (any bytes but `/` and
    /// NUL; not UTF-8 is decoded as the peer decodes it; lines the index would refuse are
    /// skipped and counted), and draw searches from them by class: one word, two words, a
    /// 1- or 3-letter prefix, one of the ten commonest words (reported per class). With more
    /// --files than names, copies of names that occur once get a version or number token or
    /// a prefix word; names that repeat are copied unchanged. `tools/corpus` builds such a
    /// file from this machine's file names.
    #[arg(long, value_name = "FILE")]
    names: Option<PathBuf>,
    /// Abuse mode: an honest client's searches and lookups (--ops S,_,L) on the idle index,
    /// then again while one connection keeps IN_FLIGHT of the most expensive searches and
    /// name lookups pipelined (default 128); each phase stops after --duration seconds.
    #[arg(long, value_name = "IN_FLIGHT", num_args = 0..=1, default_missing_value = "128")]
    abuse: Option<usize>,
    /// Reconnect-storm mode: PEERS simulated peers of 100 files each (default 10,000)
    /// register with an indexd the bench starts (--indexd); indexd is SIGKILLed, left down
    /// --storm-outage seconds, restarted on the same address; reported: the time until the
    /// index is whole again and an honest client's lookup latency meanwhile (storm.json in
    /// --out). The initial load and the refill are each given at most 180 s.
    #[arg(long, value_name = "PEERS", num_args = 0..=1, default_missing_value = "10000")]
    storm: Option<usize>,
    /// Cluster mode (issue 16): 3 nats-servers in one JetStream cluster and 3 indexd nodes
    /// on loopback; --files entries pre-populated at node a; reported: bulk replication,
    /// a fourth node's rebuild, memory and disk per entry, replication lag over --ops _,R,_
    /// registers, reads (--ops S,R,L) at each node against the floor, one nats-server
    /// SIGKILLed under load, node a SIGKILLed with --cluster-peers peer processes on it
    /// (cluster.json in --out, the processes' logs in cluster-logs/).
    #[arg(long)]
    cluster: bool,
    /// Cluster mode: `peer` processes of 10 files on node a when it is killed (`peer --serve
    /// --index A,B,C`: each moves to the next node).
    #[arg(long, value_name = "N", default_value_t = 100)]
    cluster_peers: usize,
    /// Cluster mode: stop after the bulk load, the rebuild and the memory and disk figures
    /// (phases 1 to 3 of the --cluster run).
    #[arg(long)]
    cluster_rebuild_only: bool,
    /// Cluster mode: the nodes' liveness TTL (indexd --cluster-ttl).
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    cluster_ttl: u64,
    /// Cluster mode: the nats-server binary.
    #[arg(long, value_name = "PATH", default_value = "nats-server")]
    nats_server: PathBuf,
    /// Reconnect-storm mode: seconds indexd stays down.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    storm_outage: f64,
    /// Saturation mode: requests in flight per connection.
    #[arg(long, value_name = "K")]
    pipeline: Option<usize>,
    /// Saturation mode: connections.
    #[arg(long, value_name = "C")]
    connections: Option<usize>,
    /// Saturation mode: seconds measured (after a 1 s warm-up). Abuse mode: the longest each
    /// phase runs.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    duration: f64,
    /// Transfer mode: time verified downloads of a file of this size (e.g. 1G) between real
    /// peers, next to a bare sendfile copy and curl from nginx, and the uploader's memory
    /// under 64 simultaneous downloads.
    #[arg(long, value_name = "SIZE", value_parser = config::parse_size)]
    transfer: Option<u64>,
    /// Transfer mode: also time one `get` from 4 holders each limited to this upload rate
    /// (`peer --max-upload-rate`, e.g. 50M) against the same `get` from one of them.
    #[arg(long, value_name = "BYTES/s", value_parser = p2pshare::peer::throttle::parse_rate)]
    swarm_rate: Option<u64>,
    /// Transfer mode: timed downloads per contender.
    #[arg(long, value_name = "R", default_value_t = 3)]
    repeats: usize,
    /// Directory for the outputs.
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    out: PathBuf,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Round trips timed for the loopback floor.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    floor_round_trips: usize,
    /// The indexd binary to start (default: the one next to this binary).
    #[arg(long, value_name = "PATH")]
    indexd: Option<PathBuf>,
    /// The peer binary the transfer and cluster modes start (default: the one next to this
    /// binary).
    #[arg(long, value_name = "PATH")]
    peer: Option<PathBuf>,
    /// Internal: run the echo server the floor is measured against.
    #[arg(long, hide = true)]
    echo_server: bool,
    /// Internal: run the sendfile server the transfer mode's bare copy reads from.
    #[arg(long, hide = true, value_name = "FILE")]
    sendfile_server: Option<PathBuf>,
}

/// Longest the storm's initial load, and its refill, may take.
const STORM_LIMIT: Duration = Duration::from_secs(180);

/// The cluster mode, apart from the others (it starts and kills its own processes).
fn run_cluster(flags: &Flags) -> ExitCode {
    let fail = |e: String| {
        eprintln!("bench --cluster: {e}");
        ExitCode::FAILURE
    };
    if !(1..=1_000).contains(&flags.cluster_peers) {
        return fail(format!(
            "--cluster-peers {} is outside 1..=1000 (each is a process)",
            flags.cluster_peers
        ));
    }
    if !(1..=3600).contains(&flags.cluster_ttl) {
        return fail(format!(
            "--cluster-ttl {} is outside 1..=3600",
            flags.cluster_ttl
        ));
    }
    if flags.files == 0 {
        return fail("--files must be at least 1".into());
    }
    let present = std::process::Command::new(&flags.nats_server)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        return fail(format!(
            "{} not found: apt-get install nats-server, or pass --nats-server PATH",
            flags.nats_server.display()
        ));
    }
    let self_exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return fail(format!("cannot find this binary: {e}")),
    };
    let indexd = flags
        .indexd
        .clone()
        .unwrap_or_else(|| self_exe.with_file_name("indexd"));
    if !indexd.exists() {
        return fail(format!(
            "{} not found: build it (cargo build --release --bins)",
            indexd.display()
        ));
    }
    let peer = flags
        .peer
        .clone()
        .unwrap_or_else(|| self_exe.with_file_name("peer"));
    if !peer.exists() {
        return fail(format!(
            "{} not found: build it (cargo build --release --bins)",
            peer.display()
        ));
    }
    if let Err(e) = std::fs::create_dir_all(&flags.out) {
        return fail(format!("cannot create {}: {e}", flags.out.display()));
    }
    let command = std::iter::once("tools/bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let params = p2pshare_bench::cluster::Params {
        indexd: &indexd,
        nats_server: &flags.nats_server,
        self_exe: &self_exe,
        peer: &peer,
        out: &flags.out,
        files: flags.files,
        ops: flags.ops,
        peers: flags.cluster_peers,
        ttl: Duration::from_secs(flags.cluster_ttl),
        seed: flags.seed,
        rebuild_only: flags.cluster_rebuild_only,
    };
    let r = match p2pshare_bench::cluster::run(&params, command) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    print!("{}", p2pshare_bench::cluster::console(&r));
    let json = serde_json::to_string_pretty(&r).expect("serialisable");
    if let Err(e) = std::fs::write(flags.out.join("cluster.json"), json + "\n") {
        return fail(format!("cannot write {}: {e}", flags.out.display()));
    }
    println!("wrote {}", flags.out.join("cluster.json").display());
    ExitCode::SUCCESS
}

/// The reconnect-storm mode, apart from the others (it starts and kills its own indexd).
fn run_storm(flags: &Flags, peers: usize) -> ExitCode {
    let fail = |e: String| {
        eprintln!("bench --storm: {e}");
        ExitCode::FAILURE
    };
    if !(1..=100_000).contains(&peers) {
        return fail(format!("{peers} peers is outside 1..=100000"));
    }
    if !(0.0..=600.0).contains(&flags.storm_outage) {
        return fail("--storm-outage is outside [0, 600] seconds".into());
    }
    let indexd = match &flags.indexd {
        Some(p) => p.clone(),
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("indexd"),
            Err(e) => return fail(format!("cannot find this binary: {e}")),
        },
    };
    let limit = STORM_LIMIT;
    let outage = Duration::from_secs_f64(flags.storm_outage);
    let r = match p2pshare_bench::storm::run(&indexd, peers, outage, limit, flags.seed) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let whole = match r.whole_after_s {
        Some(s) => format!("{s:.2} s after the restart"),
        None => format!(
            "NOT within {limit:?} ({} of {} files back)",
            r.files_back, r.files
        ),
    };
    println!(
        "storm: {} peers × {} files: loaded in {:.1} s; after SIGKILL and {:.1} s down, whole again {whole}",
        r.peers,
        p2pshare_bench::storm::FILES_PER_PEER,
        r.initial_load_s,
        r.outage_s
    );
    println!(
        "storm: honest lookups meanwhile: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} lookups, {} not yet back); peers rate limited {}",
        r.lookup.p50_us, r.lookup.p99_us, r.lookup.max_us, r.lookup.count, r.lookups_not_found, r.peers_rate_limited
    );
    let json = serde_json::to_string_pretty(&r).expect("serialisable");
    if let Err(e) = std::fs::create_dir_all(&flags.out)
        .and_then(|()| std::fs::write(flags.out.join("storm.json"), json))
    {
        return fail(format!("cannot write {}: {e}", flags.out.display()));
    }
    println!("wrote {}", flags.out.join("storm.json").display());
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    if flags.echo_server {
        return match p2pshare_bench::floor::run_echo_server() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench --echo-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(file) = &flags.sendfile_server {
        return match p2pshare_bench::transfer::run_sendfile_server(file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench --sendfile-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(peers) = flags.storm {
        return run_storm(&flags, peers);
    }
    if flags.cluster {
        return run_cluster(&flags);
    }
    let config = match validate(flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    match p2pshare_bench::run(&config) {
        Ok(summary) => {
            print!("{}", p2pshare_bench::console_table(&summary));
            println!("wrote {}", config.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--duration` as a duration, if within (0, 3600] seconds.
fn duration(secs: f64) -> Result<Duration, String> {
    if secs > 0.0 && secs <= 3600.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("--duration {secs} is outside (0, 3600] seconds"))
    }
}

/// Raw flags → a config, or the reason they do not make one.
fn validate(flags: Flags) -> Result<Config, String> {
    let saturation = flags.pipeline.is_some() || flags.connections.is_some();
    let modes = [saturation, flags.transfer.is_some(), flags.abuse.is_some()];
    if modes.iter().filter(|&&m| m).count() > 1 && flags.abuse.is_some() {
        return Err(
            "--abuse, --transfer and --pipeline/--connections are different modes: pick one".into(),
        );
    }
    let mode = if let Some(in_flight) = flags.abuse {
        if flags.files == 0 {
            return Err("--files must be at least 1: the abuser needs indexed names".into());
        }
        if flags.ops.search + flags.ops.lookup == 0 {
            return Err("--abuse times searches and lookups: --ops S,R,L needs S or L".into());
        }
        if !(1..=100_000).contains(&in_flight) {
            return Err(format!(
                "--abuse {in_flight} is outside 1..=100000 in flight"
            ));
        }
        Mode::Abuse {
            ops: flags.ops,
            in_flight,
            duration: duration(flags.duration)?,
        }
    } else if let Some(size) = flags.transfer {
        if saturation {
            return Err(
                "--transfer and --pipeline/--connections are different modes: pick one".into(),
            );
        }
        if size < MIN_TRANSFER_BYTES {
            return Err(format!(
                "--transfer {size} bytes is below 1M: the peer reports its download time in \
                 milliseconds, too coarse for smaller files"
            ));
        }
        if !(1..=100).contains(&flags.repeats) {
            return Err(format!("--repeats {} is outside 1..=100", flags.repeats));
        }
        Mode::Transfer {
            size,
            repeats: flags.repeats,
            swarm_rate: flags.swarm_rate,
        }
    } else if saturation {
        if flags.files == 0 {
            return Err("--files must be at least 1: lookups need indexed files".into());
        }
        let connections = flags.connections.unwrap_or(64);
        let pipeline = flags.pipeline.unwrap_or(16);
        if !(1..=10_000).contains(&connections) {
            return Err(format!("--connections {connections} is outside 1..=10000"));
        }
        if !(1..=4096).contains(&pipeline) {
            return Err(format!("--pipeline {pipeline} is outside 1..=4096"));
        }
        Mode::Saturation {
            connections,
            pipeline,
            duration: duration(flags.duration)?,
        }
    } else {
        if flags.files == 0 {
            return Err(
                "--files must be at least 1: searches and lookups need indexed files".into(),
            );
        }
        Mode::Latency {
            ops: flags.ops,
            peers: flags.peers,
        }
    };
    let fake_peers = flags
        .files
        .div_ceil(p2pshare_bench::workload::FILES_PER_FAKE_PEER);
    if !matches!(mode, Mode::Transfer { .. }) && !(1..=fake_peers).contains(&flags.holders) {
        return Err(format!(
            "--holders {} is outside 1..={fake_peers}: {} files make {fake_peers} fake peer(s) \
             of up to 1,000 files, and each holder of a file is a different peer",
            flags.holders, flags.files
        ));
    }
    let self_exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let indexd = flags
        .indexd
        .unwrap_or_else(|| self_exe.with_file_name("indexd"));
    if flags.index.is_none() && !indexd.exists() {
        return Err(format!(
            "{} not found: build it (cargo build --release --bins) or pass --index ADDR",
            indexd.display()
        ));
    }
    let peer = flags
        .peer
        .unwrap_or_else(|| self_exe.with_file_name("peer"));
    if let Some(names) = &flags.names {
        if matches!(mode, Mode::Transfer { .. }) {
            return Err("--names goes with the index modes, not --transfer".into());
        }
        if !names.is_file() {
            return Err(format!("--names {}: no such file", names.display()));
        }
    }
    if matches!(mode, Mode::Transfer { .. }) && !peer.exists() {
        return Err(format!(
            "{} not found: build it (cargo build --release --bins) or pass --peer PATH",
            peer.display()
        ));
    }
    let command = std::iter::once("tools/bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Config {
        mode,
        index: flags.index,
        indexd,
        files: flags.files,
        names: flags.names,
        holders: flags.holders,
        out: flags.out,
        seed: flags.seed,
        floor_round_trips: flags.floor_round_trips.max(1),
        peer,
        self_exe,
        command,
    })
}
