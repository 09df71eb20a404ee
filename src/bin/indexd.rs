//! `indexd`: the p2pshare index server. Thin main: flags → config → reactor.

use clap::Parser;
use p2pshare::index::limits::RateLimits;
use p2pshare::index::server::{IndexServer, ServerLimits, OUTPUT_STALL_TIMEOUT};
use p2pshare::logging;
use p2pshare::reactor::{Config, HttpLimits, Reactor};
use p2pshare::wire;
use p2pshare::{codec, sys::process};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// The p2pshare index server: knows which live peer shares which file.
#[derive(Parser, Debug)]
#[command(version)]
struct Flags {
    /// Address to listen on for peers: IPv4 (`0.0.0.0:9000`), IPv6 (`[::1]:9000`), or `[::]:PORT`
    /// for both (dual-stack).
    #[arg(long, default_value = "0.0.0.0:9000")]
    listen: SocketAddr,
    /// Serve Prometheus metrics on `http://ADDR/metrics` (off by default).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Most concurrent connections; more are answered "busy" and closed.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Most concurrent connections from one IPv4 address or IPv6 /64 (several peers behind
    /// one NAT share an address); more are answered "busy" and closed. 0: no limit.
    #[arg(long, default_value_t = 256)]
    max_connections_per_ip: usize,
    /// Largest request frame in bytes (a bulk register must fit in one).
    #[arg(long, default_value_t = codec::DEFAULT_MAX_FRAME_BYTES)]
    max_frame_bytes: usize,
    /// Bytes all connections together may write in one turn of the loop (beyond answers of
    /// at most 64 KiB, written whole); the rest waits for the next turn, and so does output
    /// over 64 KiB once the turn's 1 ms of work is spent. Handlers stop for the turn once
    /// they queued this much. 0: no bound.
    #[arg(long, default_value_t = 64 << 10, value_name = "BYTES")]
    write_per_turn: usize,
    /// Close a connection silent for this many seconds (peers ping well within it); 0: never.
    #[arg(long, default_value_t = 120)]
    idle_timeout: u64,
    /// Most results one search returns.
    #[arg(long, default_value_t = 100)]
    max_results: usize,
    /// Most entries (hash and name pairs) one peer may have in the index.
    #[arg(long, default_value_t = 1_000_000)]
    max_files_per_peer: usize,
    /// Most holdings in the whole index, every peer's entries summed (at most about 150 bytes
    /// of memory each).
    #[arg(long, default_value_t = 20_000_000)]
    max_holdings: usize,
    /// Most holdings of all the peers at one address (an IPv4 address or an IPv6 /64), so
    /// that one host's many sessions cannot fill the index; in cluster mode, its sessions at
    /// every node counted. 0: no limit.
    #[arg(long, default_value_t = 2_000_000, value_name = "ENTRIES")]
    max_holdings_per_ip: usize,
    /// Search work per second one session may spend, in work units (the first 32 units of
    /// each request are free; a search spends at most 32,768). A session may run 2 s of it
    /// at once; over it, requests get `RateLimited` with the time to wait. 0: no limit.
    #[arg(long, default_value_t = RateLimits::default().search_per_s, value_name = "UNITS")]
    rate_search: u64,
    /// Lookup work per second one session may spend, in units (16 per lookup, 8 per file
    /// answered, 1 per holder listed; the first 32 free). 0: no limit.
    #[arg(long, default_value_t = RateLimits::default().lookup_per_s, value_name = "UNITS")]
    rate_lookup: u64,
    /// Register and unregister entries per second one session may send, after a burst of
    /// --rate-register-burst. 0: no limit.
    #[arg(long, default_value_t = RateLimits::default().register_per_s, value_name = "ENTRIES")]
    rate_register: u64,
    /// See --rate-register.
    #[arg(long, default_value_t = RateLimits::default().register_burst, value_name = "ENTRIES")]
    rate_register_burst: u64,
    /// Register and unregister entries per second all sessions of one IPv4 address or IPv6
    /// /64 may send together, after a burst of --rate-register-burst; in cluster mode, stream
    /// units (64 bytes of the cluster's stream; an entry of a short name is about one), the
    /// budget of the whole cluster, each of N live nodes taking 1/N. 0: no limit.
    #[arg(long, default_value_t = RateLimits::default().register_address_per_s, value_name = "ENTRIES")]
    rate_register_address: u64,
    /// Search and lookup work per second all sessions of one IPv4 address or IPv6 /64 may
    /// spend together, in units (burst: 2 s of it). 0: no limit.
    #[arg(long, default_value_t = RateLimits::default().address_per_s, value_name = "UNITS")]
    rate_address: u64,
    /// Push requests per second all sessions of one IPv4 address or IPv6 /64 may make
    /// together (burst: 2 s of it), under the index-wide 200 a second; in cluster mode, over
    /// every node (each of N live nodes takes 1/N). 0: no limit.
    #[arg(long, default_value_t = RateLimits::default().push_address_per_s, value_name = "PUSHES")]
    rate_push_address: u64,
    /// Reachability asks (each may start a probe) per second all sessions of one IPv4
    /// address or IPv6 /64 may make together (burst: 2 s of it); in cluster mode, over every
    /// node (each of N live nodes takes 1/N). 0: no limit.
    #[arg(long, default_value_t = RateLimits::default().reachability_address_per_s, value_name = "ASKS")]
    rate_reachability_address: u64,
    /// An address refused this many times within --ban-window seconds is banned: its
    /// connections are closed and refused for --ban-for seconds. 0: never ban.
    #[arg(long, default_value_t = RateLimits::default().ban_after, value_name = "REFUSALS")]
    ban_after: u64,
    /// See --ban-after.
    #[arg(long, default_value_t = RateLimits::default().ban_window.as_secs(), value_name = "SECS")]
    ban_window: u64,
    /// See --ban-after.
    #[arg(long, default_value_t = RateLimits::default().ban_for.as_secs(), value_name = "SECS")]
    ban_for: u64,
    /// Cluster mode: share one index with the other indexd nodes through these NATS JetStream
    /// servers (`nats://HOST:PORT`, comma-separated, any of the NATS cluster's). Without it,
    /// indexd is a single process.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,
    /// This node's id in the cluster (letters, digits, `_`; at most 32); each start adds a
    /// new incarnation to it (default: a random id).
    #[arg(long, value_name = "ID", requires = "cluster")]
    node_id: Option<String>,
    /// A node whose liveness key has not been refreshed for this long is dead: the others
    /// drop its peers' entries (the bucket's TTL, set by the first node that creates it).
    /// Keep it longer than the NATS cluster's failover, or a NATS server's death makes every
    /// node fence itself (its peers then register again).
    #[arg(long, value_name = "SECS", default_value_t = nats_ttl_default(), requires = "cluster")]
    cluster_ttl: u64,
    /// Replicas of the stream and the liveness bucket when this node creates them (default:
    /// the number of --cluster URLs, at most 3).
    #[arg(long, value_name = "N", requires = "cluster")]
    cluster_replicas: Option<usize>,
    /// Largest size of the cluster's stream (MiB) when this node creates it (or finds it
    /// without a limit). At the limit the stream refuses new records (never drops old ones):
    /// the session whose change was refused is ended, and its peer registers again.
    #[arg(long, value_name = "MIB", default_value_t = 1024, requires = "cluster")]
    cluster_max_mib: u64,
    /// Subject prefix of the cluster's stream (`PREFIX.NODE.SESSION`); the stream is
    /// `PREFIX_INDEX` (upper case) and the liveness bucket `PREFIX_nodes`.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "p2pshare",
        requires = "cluster"
    )]
    cluster_prefix: String,
    /// Log filter: a level (error, warn, info, debug, trace) or per-module directives such as
    /// `info,p2pshare::index=debug` (default: RUST_LOG, else info).
    #[arg(long)]
    log: Option<String>,
}

const fn nats_ttl_default() -> u64 {
    p2pshare::index::cluster::nats::DEFAULT_TTL.as_secs()
}

fn main() -> ExitCode {
    // The one loop thread pays for every `free`: none may give the heap back to the system
    // at a cost that grows with what others freed before it (see the function's docs).
    process::keep_freed_memory();
    let flags = Flags::parse();
    if !flags.cluster.is_empty() {
        // Before any thread starts: the NATS thread's buffers, once freed, are reused by the
        // index (see the function's docs).
        process::share_one_malloc_arena();
    }
    logging::init(flags.log.as_deref(), "info");
    match run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("indexd: {e}");
            // Exit status 2: the cluster could not be joined (a supervisor may try again
            // later); 1: any other failure.
            let joining = e.get_ref().is_some_and(|i| i.is::<JoinFailed>());
            ExitCode::from(if joining { 2 } else { 1 })
        }
    }
}

/// Why the cluster could not be joined at start (exit status 2).
#[derive(Debug)]
struct JoinFailed(String);

impl std::fmt::Display for JoinFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cluster: {}", self.0)
    }
}

impl std::error::Error for JoinFailed {}

fn run(flags: Flags) -> std::io::Result<()> {
    match process::raise_fd_limit() {
        Ok(n) if (n as usize) < flags.max_connections + 64 + p2pshare::reactor::MAX_BURIED => {
            log::warn!(
                "open-files limit {n} is below --max-connections {}",
                flags.max_connections
            )
        }
        Ok(_) => {}
        Err(e) => log::warn!("cannot raise open-files limit: {e}"),
    }
    let per_ip = match flags.max_connections_per_ip {
        0 => usize::MAX,
        n => n,
    };
    let config = Config {
        max_frame_bytes: flags.max_frame_bytes,
        max_connections: flags.max_connections,
        idle_timeout: (flags.idle_timeout > 0).then(|| Duration::from_secs(flags.idle_timeout)),
        busy_reply: wire::index_busy_frame(format!(
            "server full ({} connections)",
            flags.max_connections
        )),
        max_connections_per_source: per_ip,
        source_busy_reply: wire::index_busy_frame(format!(
            "too many connections from your address ({per_ip})"
        )),
        out_stall_timeout: Some(OUTPUT_STALL_TIMEOUT),
        write_per_turn: (flags.write_per_turn > 0).then_some(flags.write_per_turn),
        ..Config::default()
    };
    let mut reactor = Reactor::new(config)?;
    let waker = reactor.ctx().waker();
    let stop = process::on_termination(move || {
        let _ = waker.wake();
    })?;
    let mut server = IndexServer::new(ServerLimits {
        max_results: flags.max_results,
        max_files_per_peer: flags.max_files_per_peer,
        max_holdings: flags.max_holdings,
        max_holdings_per_address: match flags.max_holdings_per_ip {
            0 => usize::MAX,
            n => n,
        },
        ..ServerLimits::default()
    });
    server.set_rate_limits(RateLimits {
        search_per_s: flags.rate_search,
        lookup_per_s: flags.rate_lookup,
        register_per_s: flags.rate_register,
        register_burst: flags.rate_register_burst,
        register_address_per_s: flags.rate_register_address,
        address_per_s: flags.rate_address,
        push_address_per_s: flags.rate_push_address,
        reachability_address_per_s: flags.rate_reachability_address,
        ban_after: flags.ban_after,
        ban_window: Duration::from_secs(flags.ban_window),
        ban_for: Duration::from_secs(flags.ban_for),
        ..RateLimits::default()
    });
    server.stop_on(stop);
    // In cluster mode the listeners open once the stream has been read and applied.
    let nats = match flags.cluster.is_empty() {
        true => None,
        false => Some(join_cluster(&flags, &mut reactor, &mut server)?),
    };
    let addr = reactor.ctx().listen(flags.listen)?;
    let metrics = match flags.metrics {
        Some(m) => Some(
            reactor
                .ctx()
                .listen_http(m, HttpLimits::default())
                .map_err(|e| std::io::Error::new(e.kind(), format!("--metrics {m}: {e}")))?,
        ),
        None => None,
    };
    // The first stdout line tells scripts and tests the bound port (useful with port 0).
    println!("indexd listening on {addr}");
    if let Some(m) = metrics {
        // The second line, with --metrics only: where the metrics are served.
        println!("indexd metrics on http://{m}/metrics");
        log::info!("metrics on http://{m}/metrics");
    }
    std::io::stdout().flush()?;
    log::info!("listening on {addr}");
    reactor.run(&mut server)?;
    if let Some(nats) = nats {
        // The NATS thread deletes our liveness key; give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !nats.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    match server.cluster_failure() {
        Some(why) => Err(std::io::Error::other(format!("cluster: {why}"))),
        None => Ok(()),
    }
}

/// Starts the NATS thread, links it to `server` and rebuilds the index from the stream.
fn join_cluster(
    flags: &Flags,
    reactor: &mut Reactor<p2pshare::index::server::Session>,
    server: &mut IndexServer,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    use p2pshare::index::cluster::{self, link::Link, nats};
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let id = match &flags.node_id {
        Some(id) => id.clone(),
        None => format!("n{:06x}", fastrand::u32(..1 << 24)),
    };
    if !cluster::is_valid_node_id(&id) {
        return Err(invalid(format!(
            "--node-id {id}: 1 to 32 letters, digits or _"
        )));
    }
    if !cluster::is_valid_node_id(&flags.cluster_prefix) {
        return Err(invalid(format!(
            "--cluster-prefix {}: 1 to 32 letters, digits or _",
            flags.cluster_prefix
        )));
    }
    if flags.cluster_ttl == 0 {
        return Err(invalid("--cluster-ttl must be at least 1".into()));
    }
    let config = nats::NatsConfig {
        servers: flags.cluster.clone(),
        node: nats::incarnation(&id),
        node_id: id,
        prefix: flags.cluster_prefix.clone(),
        ttl: Duration::from_secs(flags.cluster_ttl),
        replicas: flags
            .cluster_replicas
            .unwrap_or(flags.cluster.len().min(3))
            .clamp(1, 5),
        max_bytes: flags.cluster_max_mib.max(1).saturating_mul(1 << 20),
    };
    log::info!(
        "cluster: joining as {} through {}",
        config.node,
        config.servers.join(",")
    );
    let (to_nats, outbound) = tokio::sync::mpsc::unbounded_channel();
    let (inbound, from_nats) = std::sync::mpsc::channel();
    let waker = reactor.ctx().waker();
    let wake: std::sync::Arc<dyn Fn() + Send + Sync> = std::sync::Arc::new(move || {
        let _ = waker.wake();
    });
    let link = Link::new(to_nats, from_nats);
    let thread = nats::spawn(
        config,
        outbound,
        inbound,
        wake,
        link.counters(),
        link.backlog(),
    )?;
    server.join_cluster(link);
    let started = std::time::Instant::now();
    server
        .rebuild_from_cluster()
        .map_err(|e| std::io::Error::other(JoinFailed(e)))?;
    let stats = server.current_stats();
    log::info!(
        "cluster: rebuilt in {:.3} s: {} peers, {} entries",
        started.elapsed().as_secs_f64(),
        stats.peers,
        stats.names
    );
    Ok(thread)
}
