//! The peer's metrics (`peer --metrics ADDR`): [`PeerCounters`], the totals only the metrics
//! need (kept in the core), and [`render`], which writes every family from the core's and the
//! reactor's state at scrape time (see [`crate::metrics`] for the format). Families are
//! prefixed `p2pshare_peer_`.

use super::core::PeerCore;
use crate::metrics::Exposition;
use crate::reactor::Ctx;
use std::time::SystemTime;

/// Totals the core counts for the metrics alone.
#[derive(Debug, Clone)]
pub struct PeerCounters {
    /// When the process started (for `process_start_time_seconds`).
    pub started: SystemTime,
    /// Downloads started (one `get` may try several holders: one download).
    pub downloads_started: u64,
    /// Downloads that ended with the file saved (or already there).
    pub downloads_saved: u64,
    /// Downloads that ended without the file.
    pub downloads_failed: u64,
    /// Get requests refused by the file server (unknown hash, file changed, bad offset...).
    pub gets_refused: u64,
}

impl Default for PeerCounters {
    fn default() -> Self {
        PeerCounters {
            started: SystemTime::now(),
            downloads_started: 0,
            downloads_saved: 0,
            downloads_failed: 0,
            gets_refused: 0,
        }
    }
}

/// What the core reports to a scrape.
#[derive(Debug, Clone)]
pub struct CoreView {
    /// The totals above.
    pub counters: PeerCounters,
    /// Uploads sending now.
    pub uploads_active: u64,
    /// Uploads sent to the end.
    pub uploads_done: u64,
    /// File bytes sent by finished uploads.
    pub upload_bytes: u64,
    /// A download is in progress.
    pub download_active: bool,
    /// The index session's state (see [`super::session::IndexSession::state_name`]).
    pub session_state: &'static str,
    /// Files shared, and their bytes.
    pub shared_files: u64,
    /// See `shared_files`.
    pub shared_bytes: u64,
}

/// The index session states a scrape lists (one of them is 1, the others 0).
const SESSION_STATES: [&str; 7] = [
    "down",
    "resolving",
    "connecting",
    "awaiting_welcome",
    "ready",
    "refused",
    "closed",
];

/// The text of one scrape of the peer.
pub fn render<C>(core: &PeerCore, ctx: &Ctx<C>) -> String {
    let v = core.metrics_view();
    let io = ctx.io_totals();
    let mut e = Exposition::new();
    e.gauge(
        "p2pshare_peer_uploads_active",
        "Uploads sending now.",
        v.uploads_active as f64,
    );
    e.counter(
        "p2pshare_peer_upload_connections_evicted_total",
        "File-server connections idle without asking, closed at the connection limit to make \
         room for a downloader from an address holding fewer.",
        io.evicted,
    );
    e.counter(
        "p2pshare_peer_uploads_total",
        "Uploads sent to the end.",
        v.uploads_done,
    );
    e.counters(
        "p2pshare_peer_uploads_refused_total",
        "Downloaders refused: busy (at the upload or per-address limit) or a Get not served.",
        "reason",
        &[
            ("busy", io.refused),
            ("not_served", v.counters.gets_refused),
        ],
    );
    e.counter(
        "p2pshare_peer_upload_file_bytes_total",
        "File bytes sent by finished uploads.",
        v.upload_bytes,
    );
    e.gauge(
        "p2pshare_peer_downloads_active",
        "Downloads in progress.",
        u8::from(v.download_active) as f64,
    );
    e.counter(
        "p2pshare_peer_downloads_total",
        "Downloads started.",
        v.counters.downloads_started,
    );
    e.counter(
        "p2pshare_peer_downloads_saved_total",
        "Downloads that ended with the file saved.",
        v.counters.downloads_saved,
    );
    e.counter(
        "p2pshare_peer_downloads_failed_total",
        "Downloads that ended without the file.",
        v.counters.downloads_failed,
    );
    e.counter(
        "p2pshare_peer_received_bytes_total",
        "Bytes read from every connection (index, downloads, file server).",
        io.bytes_in,
    );
    e.counter(
        "p2pshare_peer_sent_bytes_total",
        "Bytes written to every connection, file ranges included.",
        io.bytes_out,
    );
    let e_states: Vec<(&str, bool)> = SESSION_STATES
        .iter()
        .map(|s| (*s, *s == v.session_state))
        .collect();
    e.gauge_states(
        "p2pshare_peer_index_session",
        "The index session's state: 1 for the current one.",
        "state",
        &e_states,
    );
    e.gauge(
        "p2pshare_peer_shared_files",
        "Files shared.",
        v.shared_files as f64,
    );
    e.gauge(
        "p2pshare_peer_shared_bytes",
        "Bytes of the files shared.",
        v.shared_bytes as f64,
    );
    e.loop_pauses(
        "p2pshare_peer_loop_pause_seconds",
        "Time the reactor loop worked between two waits.",
        ctx.loop_pauses().histogram(),
    );
    e.process(v.counters.started);
    e.finish()
}
