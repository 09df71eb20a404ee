//! `peer`: a p2pshare peer. Thin main: flags → config → threads → reactor.

use clap::Parser;
use p2pshare::logging;
use p2pshare::peer::download::{self, DownloadLimits};
use p2pshare::peer::output::{Format, Line, Stream, Style};
use p2pshare::peer::render;
use p2pshare::peer::startup;
use p2pshare::peer::{self, Peer, PeerConfig};
use p2pshare::reactor::{Config, HttpLimits, Reactor, WebLimits};
use p2pshare::sys::process;
use p2pshare::wire;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// A p2pshare peer: shares a directory, searches the index, downloads from other peers.
#[derive(Parser, Debug)]
#[command(version)]
struct Flags {
    /// Directory to share (scanned recursively; links are not followed).
    #[arg(long)]
    share: PathBuf,
    /// The index server, `HOST:PORT` (an IPv6 address in brackets: `[::1]:9000`); several,
    /// separated by commas, are the nodes of one index cluster: after a failure the next one
    /// is tried, and the peer registers there.
    #[arg(long, default_value = "127.0.0.1:9000")]
    index: String,
    /// An index that owes an answer (to a request, to the keep-alive ping sent every 5 s)
    /// and stays silent this long, in ms, is taken for hung: the request fails, and the peer
    /// moves to the next `--index` and registers its share there.
    #[arg(long, value_name = "MS",
          default_value_t = peer::session::DEFAULT_REPLY_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(100..))]
    index_timeout_ms: u64,
    /// Where this peer's file server listens (port 0: any free port, announced to the index).
    /// The default `[::]:0` takes IPv4 and IPv6 downloaders (dual-stack), or IPv4 only where
    /// the host has no IPv6; `0.0.0.0:PORT` or `[::1]:PORT` narrow it. `none`: no file
    /// server (the peer announces port 0 and serves only through pushes).
    #[arg(long, default_value = "[::]:0", value_parser = parse_listen)]
    listen: Listen,
    /// Serve Prometheus metrics on `http://ADDR/metrics` (off by default).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Serve the web page on `http://ADDR/` (off by default; `--web` alone: 127.0.0.1:8080).
    /// Stderr then says `peer: web page on http://ADDR/#token=TOKEN`: open that link (the
    /// token is new at every start, travels in the fragment, which browsers never send, and
    /// every API request must carry it).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8080")]
    web: Option<SocketAddr>,
    /// A web connection that neither completes a request nor reads its answer for this long
    /// is closed, in ms (idle keep-alive connections, slow senders).
    #[arg(long, value_name = "MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    web_idle_ms: u64,
    /// Where downloads land (default: the shared directory, so downloads are shared too).
    #[arg(long)]
    downloads: Option<PathBuf>,
    /// No console: share and serve until SIGINT/SIGTERM.
    #[arg(long)]
    serve: bool,
    /// Write every result, progress event, note and error as one JSON object per line on
    /// stdout (for scripts and programs; see README for the fields).
    #[arg(long)]
    json: bool,
    /// Largest frame accepted from the index or other peers, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_frame_bytes: usize,
    /// Most connections the file server takes at once (more are answered "busy").
    #[arg(long, default_value_t = 1024)]
    max_uploads: usize,
    /// Most file-server connections at once from one IPv4 address or IPv6 /64 (more are
    /// answered "busy"). 0: no limit.
    #[arg(long, default_value_t = 32)]
    max_uploads_per_ip: usize,
    /// At the --max-uploads limit, a newcomer takes the place of a connection that has asked
    /// for nothing for this long (in ms), from the address holding the most connections and
    /// at least two more than the newcomer's. 0: never; the newcomer is answered "busy".
    #[arg(long, value_name = "MS", default_value_t = peer::UPLOAD_EVICT_IDLE.as_millis() as u64)]
    upload_evict_idle_ms: u64,
    /// Do not watch the share for changes (then the index learns of new, changed or deleted
    /// files only at `register` or a restart).
    #[arg(long)]
    no_watch: bool,
    /// How long a changed file must be quiet (no more writes) before it is hashed and
    /// registered, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = peer::watch::DEFAULT_QUIET.as_millis() as u64)]
    watch_quiet_ms: u64,
    /// Uploads sent at once; further requests wait in the upload queue, told their position,
    /// and are served in order as uploads finish.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    upload_slots: u64,
    /// Requests waiting in the upload queue at once from one IPv4 address or IPv6 /64 (more
    /// are answered "busy").
    #[arg(long, default_value_t = 4)]
    max_queued_per_ip: usize,
    /// While requests wait in the upload queue, an upload sending fewer bytes per second than
    /// this over a whole --rate-window-ms loses its slot to the head of the line. 0: never.
    #[arg(long, default_value_t = 1024)]
    upload_min_rate: u64,
    /// All uploads together send at most this many bytes per second, shared fairly among
    /// them (one range each in turn); K, M, G are powers of 1000 (50M = 50,000,000 B/s).
    /// 0: no limit.
    #[arg(long, value_name = "BYTES/s", default_value = "0",
          value_parser = peer::throttle::parse_rate)]
    max_upload_rate: u64,
    /// The longest a download waits in a holder's upload queue before trying the next
    /// holder, in seconds.
    #[arg(long, default_value_t = download::QUEUE_WAIT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    queue_wait: u64,
    /// A holder sending fewer bytes per second than this, averaged over --rate-window-ms,
    /// is dropped and the next holder tried. 0: no floor.
    #[arg(long, default_value_t = download::MIN_RATE_BYTES_PER_SEC)]
    min_rate: u64,
    /// The window the rate floors (--min-rate, sliding; --upload-min-rate) are measured over,
    /// in ms.
    #[arg(long, default_value_t = download::RATE_WINDOW.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(10..))]
    rate_window_ms: u64,
    /// A holder silent this long (connecting, before its header, between bytes) is dropped,
    /// in ms.
    #[arg(long, default_value_t = download::STALL.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(10..))]
    stall_ms: u64,
    /// A whole `get` (every holder tried) fails after this many seconds; the partial file is
    /// kept for a resume.
    #[arg(long, default_value_t = download::MAX_GET.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    get_timeout: u64,
    /// Log filter: a level (error, warn, info, debug, trace) or per-module directives such as
    /// `warn,p2pshare::peer=debug` (default: RUST_LOG, else warn).
    #[arg(long)]
    log: Option<String>,
}

/// Exit status: every command succeeded (or the console is a terminal, or `--serve`).
const EXIT_OK: u8 = 0;
/// Exit status: a console run from a pipe or a file met an error (a command failed).
const EXIT_COMMAND_FAILED: u8 = 1;
/// Exit status: a usage or start-up mistake (clap uses 2 for usage errors too), or the event
/// loop failed.
const EXIT_STARTUP: u8 = 2;

fn main() -> ExitCode {
    let flags = Flags::parse();
    logging::init(flags.log.as_deref(), "warn");
    let json = flags.json;
    match run(flags) {
        Ok(Outcome { failed: false }) => ExitCode::from(EXIT_OK),
        Ok(Outcome { failed: true }) => ExitCode::from(EXIT_COMMAND_FAILED),
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"type": "error", "message": e}));
            } else {
                eprintln!("peer: {e}");
            }
            ExitCode::from(EXIT_STARTUP)
        }
    }
}

/// Says a start-up fact at once, before the loop runs (so before any log line of it: tests
/// and scripts wait for `serving files on` first), in the output's format.
/// `--listen`: an address, or `none`.
#[derive(Debug, Clone, Copy)]
struct Listen(Option<SocketAddr>);

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => write!(f, "{a}"),
            None => f.write_str("none"),
        }
    }
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "none" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|e| format!("{e} (give IP:PORT, or none for no file server)"))
}

fn announce(format: Format, line: &Line) {
    match format {
        Format::Json => {
            if let Some(v) = render::json(line) {
                println!("{v}");
            }
        }
        Format::Text(style) => match render::text(line, style) {
            Some((Stream::Stdout, text)) => println!("{text}"),
            Some((Stream::Stderr, text)) => eprintln!("{text}"),
            None => {}
        },
    }
}

/// How a run ended.
struct Outcome {
    /// A console run from a pipe or a file said an error: a script must be able to tell.
    failed: bool,
}

fn run(flags: Flags) -> Result<Outcome, String> {
    let share = flags
        .share
        .canonicalize()
        .map_err(|e| format!("--share {}: {e}", flags.share.display()))?;
    if !share.is_dir() {
        return Err(format!("--share {}: not a directory", share.display()));
    }
    startup::check_index(&flags.index)?;
    let downloads = peer::downloads_dir(&share, flags.downloads.as_deref());
    let what = if flags.downloads.is_some() {
        "--downloads"
    } else {
        "the downloads directory (by default the share; --downloads DIR sets another)"
    };
    std::fs::create_dir_all(&downloads)
        .map_err(|e| format!("{what} {}: {e}", downloads.display()))?;
    let downloads = downloads
        .canonicalize()
        .map_err(|e| format!("{what} {}: {e}", downloads.display()))?;
    // A console downloads; a serving peer only if it was given somewhere to (a read-only
    // share can still be served).
    if !flags.serve || flags.downloads.is_some() {
        startup::check_writable(&downloads, what)?;
    }
    let _ = process::raise_fd_limit();
    // A full disk or a file-size limit must fail the download's write (the partial file is
    // kept for resume), not kill the peer with SIGXFSZ.
    let _ = process::ignore_file_size_signal();

    let per_ip = match flags.max_uploads_per_ip {
        0 => usize::MAX,
        n => n,
    };
    let config = Config {
        max_frame_bytes: flags.max_frame_bytes,
        max_connections: flags.max_uploads,
        busy_reply: wire::transfer_busy_frame(format!(
            "holder busy ({} uploads)",
            flags.max_uploads
        )),
        max_connections_per_source: per_ip,
        evict_idle_after: (flags.upload_evict_idle_ms > 0)
            .then(|| Duration::from_millis(flags.upload_evict_idle_ms)),
        source_busy_reply: wire::transfer_busy_frame(format!(
            "too many downloads from your address ({per_ip})"
        )),
        ..Config::default()
    };
    let mut reactor = Reactor::new(config).map_err(|e| e.to_string())?;
    let waker = reactor.ctx().waker();
    let signal_waker = waker.clone();
    // Before any other thread starts, so they all inherit the blocked signal mask.
    let stop = process::on_termination(move || {
        let _ = signal_waker.wake();
    })
    .map_err(|e| e.to_string())?;
    let (events_tx, events_rx) = mpsc::channel();
    let jobs = peer::spawn_hasher(share.clone(), events_tx.clone(), waker.clone())
        .map_err(|e| e.to_string())?;
    if !flags.no_watch {
        // Before the start-up scan is asked for: nothing written after it began is missed.
        let quiet = std::time::Duration::from_millis(flags.watch_quiet_ms);
        peer::watch::spawn_watcher(share.clone(), quiet, events_tx.clone(), waker.clone())
            .map_err(|e| format!("cannot start watching the share: {e}"))?;
    }
    let console = !flags.serve;
    let bar = console && !flags.json && std::io::stderr().is_terminal();
    let format = if flags.json {
        Format::Json
    } else {
        Format::Text(Style {
            human: std::io::stdout().is_terminal(),
            bar,
        })
    };
    let cfg = PeerConfig {
        share_dir: share,
        downloads_dir: downloads,
        index: flags.index,
        listen: flags.listen.0,
        console,
        progress_bar: bar || (console && flags.json),
        format,
        // Only spreads reconnects of different peers apart: any varying value will do.
        seed: std::process::id() as u64
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        index_timeout: Duration::from_millis(flags.index_timeout_ms),
        download_limits: DownloadLimits {
            stall: Duration::from_millis(flags.stall_ms),
            min_rate: flags.min_rate,
            rate_window: Duration::from_millis(flags.rate_window_ms),
            max_get: Duration::from_secs(flags.get_timeout),
            queue_wait: Duration::from_secs(flags.queue_wait),
        },
        upload_slots: flags.upload_slots as usize,
        upload_min_rate: flags.upload_min_rate,
        max_upload_rate: flags.max_upload_rate,
        max_queued_per_ip: flags.max_queued_per_ip,
    };
    let mut peer = Peer::new(cfg, (events_tx.clone(), events_rx), jobs, waker.clone());
    peer.stop_on(stop);
    let addr = peer
        .start(reactor.ctx())
        .map_err(|e| format!("--listen {}: {e}", flags.listen))?;
    // Every listener is bound before either is announced: a start-up error says only itself.
    let metrics = match flags.metrics {
        Some(m) => Some(
            reactor
                .ctx()
                .listen_http(m, HttpLimits::default())
                .map_err(|e| format!("--metrics {m}: {e}"))?,
        ),
        None => None,
    };
    announce(format, &Line::Serving { addr });
    if let Some(addr) = metrics {
        announce(format, &Line::Metrics { addr });
    }
    if let Some(w) = flags.web {
        let limits = WebLimits {
            idle_timeout: Duration::from_millis(flags.web_idle_ms),
            ..WebLimits::default()
        };
        let url = peer
            .start_web(reactor.ctx(), w, limits)
            .map_err(|e| format!("--web {w}: {e}"))?;
        eprintln!("peer: web page on {url}");
    }
    if console {
        peer::spawn_stdin(events_tx, waker).map_err(|e| e.to_string())?;
    }
    let ran = reactor.run(&mut peer);
    // A person at a terminal sees the errors; only a script needs the status to tell.
    let failed = console && !std::io::stdin().is_terminal() && peer.errors() > 0;
    // The reactor has stopped: close every socket (downloaders move on at once), then write
    // out what is still queued for the person.
    drop(reactor);
    peer.finish();
    ran.map_err(|e| e.to_string())?;
    Ok(Outcome { failed })
}
