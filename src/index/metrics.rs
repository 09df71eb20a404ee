//! indexd's metrics: the counters the server keeps only for `--metrics` (requests, errors and
//! server time by request kind, the rate-limit and ban counts), and [`render`], which writes
//! every family from the server's and the reactor's state at scrape time (see
//! [`crate::metrics`] for the format). Families are prefixed `p2pshare_index_`.

use super::cluster::link::ClusterStatus;
use super::server::push::PushCounts;
use super::server::IndexServer;
use super::worktrace;
use crate::metrics::{BucketCounts, Exposition, REQUEST_BUCKETS_S};
use crate::reactor::Ctx;
use crate::wire::{ErrorCode, RequestBody};
use std::time::SystemTime;

/// Request kinds, as the `kind` label says them; `malformed` is a frame that did not decode.
pub const REQUEST_KINDS: [&str; 11] = [
    "hello",
    "register",
    "unregister",
    "search",
    "lookup",
    "ping",
    "stats",
    "bye",
    "reachability",
    "push",
    "malformed",
];

/// The position of a request's kind in [`REQUEST_KINDS`].
pub fn request_kind(body: Option<&RequestBody>) -> usize {
    match body {
        Some(RequestBody::Hello { .. }) => 0,
        Some(RequestBody::Register { .. }) => 1,
        Some(RequestBody::Unregister { .. }) => 2,
        Some(RequestBody::Search { .. }) => 3,
        Some(RequestBody::Lookup { .. }) => 4,
        Some(RequestBody::Ping) => 5,
        Some(RequestBody::Stats) => 6,
        Some(RequestBody::Bye) => 7,
        Some(RequestBody::Reachability) => 8,
        Some(RequestBody::Push { .. }) => 9,
        None => 10,
    }
}

/// What only the metrics need counted.
pub struct IndexMetrics {
    started: SystemTime,
    requests: [u64; REQUEST_KINDS.len()],
    /// Server time of each request by kind, counted in the exposition's buckets.
    request_times: [BucketCounts; REQUEST_KINDS.len()],
    /// Error answers by code, in order of first occurrence.
    errors: Vec<(ErrorCode, u64)>,
    /// Requests refused by a rate limit (`p2pshare_index_rate_limited_total`), copied from
    /// the rate limiter's counts before each scrape.
    pub rate_limited: u64,
    /// Addresses banned for exceeding the rate limits (`p2pshare_index_banned_total`), copied
    /// from the rate limiter's counts before each scrape.
    pub banned: u64,
}

impl Default for IndexMetrics {
    fn default() -> Self {
        IndexMetrics {
            started: SystemTime::now(),
            requests: [0; REQUEST_KINDS.len()],
            request_times: Default::default(),
            errors: Vec::new(),
            rate_limited: 0,
            banned: 0,
        }
    }
}

impl IndexMetrics {
    /// One request of kind `kind` (see [`request_kind`]) took `ns` of server time.
    pub fn record_request(&mut self, kind: usize, ns: u64) {
        self.requests[kind] += 1;
        self.request_times[kind].record(ns as f64 * 1e-9);
    }

    /// One error answer with `code`.
    pub fn record_error(&mut self, code: ErrorCode) {
        match self.errors.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => self.errors.push((code, 1)),
        }
    }

    /// Requests of kind `kind` so far.
    pub fn requests(&self, kind: usize) -> u64 {
        self.requests[kind]
    }
}

/// An error code as a label value: its variant name in snake case (`NotFound`: `not_found`).
fn error_label(code: ErrorCode) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{code:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

/// The text of one scrape of indexd.
pub fn render<C>(server: &mut IndexServer, ctx: &Ctx<C>) -> String {
    let mut e = Exposition::new();
    let io = ctx.io_totals();
    let (connections, sessions) = server.connection_counts();
    let m = server.metrics();
    let kinds: Vec<(&str, u64)> = REQUEST_KINDS
        .iter()
        .zip(m.requests)
        .map(|(k, n)| (*k, n))
        .collect();
    e.counters(
        "p2pshare_index_requests_total",
        "Requests handled, by kind.",
        "kind",
        &kinds,
    );
    let labels: Vec<(String, u64)> = m
        .errors
        .iter()
        .map(|(c, n)| (error_label(*c), *n))
        .collect();
    let errors: Vec<(&str, u64)> = labels.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    e.counters(
        "p2pshare_index_errors_total",
        "Error answers sent, by error code.",
        "kind",
        &errors,
    );
    e.counter(
        "p2pshare_index_rate_limited_total",
        "Requests refused by a rate limit.",
        m.rate_limited,
    );
    e.counter(
        "p2pshare_index_banned_total",
        "Temporary bans of an address for exceeding the rate limits.",
        m.banned,
    );
    // Traced apart (as the process figures are): the request times are read from their
    // buckets, the loop's pauses from an hdrhistogram walked whole.
    worktrace::time("metrics: histograms", || {
        let series: Vec<(&str, &BucketCounts)> = REQUEST_KINDS
            .iter()
            .copied()
            .zip(&m.request_times)
            .collect();
        e.bucket_histograms(
            "p2pshare_index_request_duration_seconds",
            "Server time per request (decode, work and encoding the answer), by kind.",
            "kind",
            REQUEST_BUCKETS_S,
            &series,
        );
        e.loop_pauses(
            "p2pshare_index_loop_pause_seconds",
            "Time the reactor loop worked between two waits (every connection waits meanwhile).",
            ctx.loop_pauses().histogram(),
        );
    });
    let started = m.started;
    e.counter(
        "p2pshare_index_received_bytes_total",
        "Bytes read from connections.",
        io.bytes_in,
    );
    e.counter(
        "p2pshare_index_sent_bytes_total",
        "Bytes written to connections.",
        io.bytes_out,
    );
    e.counter(
        "p2pshare_index_accepted_connections_total",
        "Peer connections accepted.",
        io.accepted,
    );
    e.counter(
        "p2pshare_index_refused_connections_total",
        "Peer connections refused at the connection or per-address limit.",
        io.refused,
    );
    e.gauge(
        "p2pshare_index_connections",
        "Open peer connections (handshaken or not).",
        connections as f64,
    );
    let buffers = ctx.buffer_usage();
    e.gauge(
        "p2pshare_index_input_buffer_bytes",
        "Bytes held by the connections' buffers of unhandled input (partial frames) and the spare one.",
        buffers.input() as f64,
    );
    e.gauge(
        "p2pshare_index_input_retiring_bytes",
        "Bytes of input buffers no longer needed, being given back to the allocator (in input_buffer_bytes too).",
        buffers.input_retiring as f64,
    );
    e.gauge(
        "p2pshare_index_output_queued_bytes",
        "Bytes of answers queued and not yet written, every connection's.",
        buffers.output_queued as f64,
    );
    e.gauge(
        "p2pshare_index_output_buffer_bytes",
        "Bytes held by the connections' output queues (their buffers' capacities).",
        buffers.output_held as f64,
    );
    e.gauge(
        "p2pshare_index_sessions",
        "Peer sessions past the handshake.",
        sessions as f64,
    );
    push_families(&mut e, &server.push_counts());
    if let Some(c) = server.cluster_status() {
        cluster_families(&mut e, &c);
    }
    let index = server.index_mut();
    e.gauge(
        "p2pshare_index_peers",
        "Peers with entries in the index.",
        index.peer_count() as f64,
    );
    e.gauge(
        "p2pshare_index_files",
        "Distinct files (hashes) indexed.",
        index.file_count() as f64,
    );
    e.gauge(
        "p2pshare_index_entries",
        "Distinct (hash, name) entries indexed.",
        index.entry_count() as f64,
    );
    e.gauge(
        "p2pshare_index_holdings",
        "Holdings: every peer's entries summed.",
        index.holding_count() as f64,
    );
    e.gauge(
        "p2pshare_index_words",
        "Distinct words in the word index.",
        index.word_count() as f64,
    );
    worktrace::time("metrics: process", || e.process(started));
    e.finish()
}

/// The families of reachability probes and pushes.
fn push_families(e: &mut Exposition, p: &PushCounts) {
    e.counter(
        "p2pshare_index_pushes_relayed_total",
        "Pushes relayed to a firewalled holder's session.",
        p.relayed,
    );
    e.counter(
        "p2pshare_index_pushes_rate_limited_total",
        "Pushes refused over a budget (the session's, the address's or the index's).",
        p.rate_limited,
    );
    e.counters(
        "p2pshare_index_probes_total",
        "Reachability probes that ended, by what they found.",
        "result",
        &[
            ("reachable", p.probes_reachable),
            ("unreachable", p.probes_unreachable),
        ],
    );
    e.gauge(
        "p2pshare_index_push_sessions",
        "Sessions that take pushes (they asked whether they are reachable).",
        p.taking as f64,
    );
    e.gauge(
        "p2pshare_index_probes_waiting",
        "Sessions waiting in the probe lines.",
        p.waiting as f64,
    );
    e.gauge(
        "p2pshare_index_probes_in_flight",
        "Reachability probes in flight.",
        p.in_flight as f64,
    );
    e.counters(
        "p2pshare_index_pushes_relayed_between_nodes_total",
        "Cluster: pushes sent to the holder's node (out), and pushes from other nodes \
         delivered to a holder here (in).",
        "direction",
        &[("out", p.relay.out), ("in", p.relay.in_delivered)],
    );
    e.counters(
        "p2pshare_index_pushes_relay_refused_total",
        "Cluster: pushes to another node's holder refused (out: by that node, not answered \
         in time, dropped unsent past their deadline, or over the relays in flight), and \
         pushes from other nodes refused here (in; past their deadline included).",
        "direction",
        &[("out", p.relay.out_refused), ("in", p.relay.in_refused)],
    );
}

/// The `p2pshare_index_cluster_` families (cluster mode only).
fn cluster_families(e: &mut Exposition, c: &ClusterStatus) {
    e.counter(
        "p2pshare_index_cluster_records_published_total",
        "This node's records the stream stored.",
        c.nats.published,
    );
    e.counter(
        "p2pshare_index_cluster_publish_errors_total",
        "Publish tries that failed (tried again for up to 20 s).",
        c.nats.publish_errors,
    );
    e.counter(
        "p2pshare_index_cluster_records_lost_total",
        "Records not stored within the retry limit (their sessions were ended).",
        c.nats.lost,
    );
    e.counter(
        "p2pshare_index_cluster_snapshots_total",
        "Snapshots of this node's sessions published (their subjects compacted).",
        c.nats.snapshots,
    );
    e.counter(
        "p2pshare_index_cluster_records_deleted_total",
        "Records this node deleted from the stream (ended, compacted, of dead nodes).",
        c.nats.deleted,
    );
    e.counter(
        "p2pshare_index_cluster_records_applied_total",
        "Other nodes' records applied to this node's index.",
        c.applied,
    );
    e.counter(
        "p2pshare_index_cluster_records_dropped_total",
        "Other nodes' records dropped (of an ended session or a dead node).",
        c.dropped,
    );
    e.gauge(
        "p2pshare_index_cluster_stream_sequence",
        "The stream's last sequence as this node last saw it.",
        c.nats.stream_sequence as f64,
    );
    e.gauge(
        "p2pshare_index_cluster_read_sequence",
        "The stream sequence of the last record this node read.",
        c.nats.read_sequence as f64,
    );
    e.gauge(
        "p2pshare_index_cluster_apply_lag_records",
        "Records of the stream not applied here yet (not read, or read and queued).",
        c.apply_lag() as f64,
    );
    e.gauge(
        "p2pshare_index_cluster_nodes_alive",
        "Nodes alive, this one included.",
        (c.nats.nodes_alive + 1) as f64,
    );
    e.counter(
        "p2pshare_index_cluster_node_deaths_total",
        "Other nodes found dead (their peers' entries withdrawn).",
        c.deaths,
    );
    e.gauge(
        "p2pshare_index_cluster_remote_sessions",
        "Other nodes' peer sessions in this node's index.",
        c.remote_sessions as f64,
    );
    e.gauge(
        "p2pshare_index_cluster_remote_holdings",
        "Holdings of other nodes' peers in this node's index.",
        c.remote_holdings as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::server::{ServerLimits, Session};
    use crate::reactor::{Config, Reactor};
    use crate::wire::{self, FileEntry, FileHash, LookupKey, Request, PROTOCOL_VERSION};
    use std::net::SocketAddr;

    fn request(server: &mut IndexServer, session: &mut Session, id: u32, body: RequestBody) {
        let mut out = Vec::new();
        let _ = server.handle_payload(session, &wire::to_payload(&Request { id, body }), &mut out);
        assert!(!out.is_empty());
    }

    /// The value of the sample `series` (exactly as printed) in `text`.
    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    #[test]
    fn a_scrape_shows_requests_errors_times_and_sizes() {
        let mut reactor = Reactor::<Session>::new(Config::default()).unwrap();
        let mut server = IndexServer::new(ServerLimits::default());
        let mut session = server.accept(SocketAddr::from(([127, 0, 0, 1], 5000)));
        let hello = RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port: 5000,
            agent: "test".into(),
        };
        request(&mut server, &mut session, 1, hello);
        let files = vec![FileEntry {
            hash: FileHash([1; 32]),
            size: 10,
            name: "song one.flac".into(),
        }];
        request(
            &mut server,
            &mut session,
            2,
            RequestBody::Register { files },
        );
        for (id, byte) in [(3, 1), (4, 2)] {
            let key = LookupKey::Hash(FileHash([byte; 32]));
            request(
                &mut server,
                &mut session,
                id,
                RequestBody::Lookup { key, after: None },
            );
        }
        let mut out = Vec::new();
        let _ = server.handle_payload(&mut session, b"\xff\xff\xff", &mut out);
        let text = render(&mut server, reactor.ctx());
        let count = |k: &str| {
            sample(
                &text,
                &format!("p2pshare_index_requests_total{{kind=\"{k}\"}}"),
            )
        };
        assert_eq!(
            (count("hello"), count("register"), count("lookup")),
            (1.0, 1.0, 2.0)
        );
        assert_eq!((count("search"), count("malformed")), (0.0, 1.0));
        assert_eq!(
            sample(&text, "p2pshare_index_errors_total{kind=\"not_found\"}"),
            1.0
        );
        assert_eq!(
            sample(&text, "p2pshare_index_errors_total{kind=\"malformed\"}"),
            1.0
        );
        let lookups = "p2pshare_index_request_duration_seconds_count{kind=\"lookup\"}";
        assert_eq!(sample(&text, lookups), 2.0);
        let inf = "p2pshare_index_request_duration_seconds_bucket{kind=\"lookup\",le=\"+Inf\"}";
        assert_eq!(sample(&text, inf), 2.0);
        assert_eq!(sample(&text, "p2pshare_index_connections"), 1.0);
        assert_eq!(sample(&text, "p2pshare_index_sessions"), 1.0);
        assert_eq!(sample(&text, "p2pshare_index_files"), 1.0);
        assert_eq!(sample(&text, "p2pshare_index_holdings"), 1.0);
        // song, one, flac
        assert_eq!(sample(&text, "p2pshare_index_words"), 3.0);
        assert_eq!(sample(&text, "p2pshare_index_rate_limited_total"), 0.0);
        assert_eq!(sample(&text, "p2pshare_index_banned_total"), 0.0);
        assert_eq!(sample(&text, "p2pshare_index_pushes_relayed_total"), 0.0);
        let probes = "p2pshare_index_probes_total{result=\"unreachable\"}";
        assert_eq!(sample(&text, probes), 0.0);
        assert_eq!(sample(&text, "p2pshare_index_push_sessions"), 0.0);
        // No allocator statistics: glibc's walk its free lists, milliseconds of the loop.
        assert!(!text.contains("malloc"), "{text}");
    }

    #[test]
    fn error_codes_become_snake_case_labels() {
        assert_eq!(error_label(ErrorCode::NotFound), "not_found");
        assert_eq!(error_label(ErrorCode::Busy), "busy");
        assert_eq!(error_label(ErrorCode::VersionMismatch), "version_mismatch");
    }
}
