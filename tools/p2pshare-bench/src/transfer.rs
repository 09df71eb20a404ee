//! The transfer mode (`--transfer SIZE`): real downloads between real peers, timed in the
//! same run as the baselines they are judged against.
//!
//! One source file of SIZE pseudo-random bytes is shared by a holding `peer --serve`. Each
//! repeat then times, in this order, with `sync` before each so one contender's dirty pages
//! do not slow the next:
//! 1. **p2pshare**: a console `peer` fetching it with `get HASH` (connect, bytes, BLAKE3
//!    verify, fsync, rename; the time the peer itself prints);
//! 2. **bare copy**: the floor for a download (the same bytes between two processes, no
//!    protocol, no hashing): a `sendfile`-to-socket server process (this binary with
//!    `--sendfile-server FILE`) and a read-to-file client here, fsync included;
//! 3. **curl + nginx** (when both are installed): `curl -o FILE` from nginx with `sendfile on`,
//!    wall clock, no fsync.
//!
//! Afterwards 64 raw downloads run against the holder at once while its resident memory is
//! sampled from /proc.
//!
//! # Invariants
//! - Everything lives in `OUT/transfer-work/`, removed when [`run`] returns, on error paths
//!   too; every process started here is killed before that ([`ChildGuard`] drops first).
//! - Every wait on another process or socket is bounded.
//! - Only the transfer is inside a timed region: the source file, its hash and the processes
//!   that serve it exist before any clock starts.

use super::client::{Client, REPLY_TIMEOUT};
use super::floor::{self, ChildGuard};
use super::progress;
use p2pshare::codec::Decoder;
use p2pshare::peer::outboard;
use p2pshare::peer::share::hash_file;
use p2pshare::sys;
use p2pshare::wire::{
    self, ErrorCode, FileHash, LookupKey, RequestBody, ResponseBody, TransferRequest,
    TransferResponse, PROTOCOL_VERSION,
};
use serde::Serialize;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// Simultaneous downloads the holder's memory is measured under (its target: under 20 MB).
pub const CONCURRENT_DOWNLOADS: usize = 64;
/// Most bytes each of the simultaneous downloads reads before closing, so a large file does
/// not make that phase take minutes (64 × 128 MiB = 8 GiB over loopback).
pub const MAX_BYTES_PER_CONCURRENT_DOWNLOAD: u64 = 128 << 20;
/// How often the holder's resident memory is sampled during the simultaneous downloads.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);
/// The source file is generated in chunks of this size.
const GENERATE_CHUNK_BYTES: usize = 1 << 20;
/// Bytes asked of each `read` by the bare copy's client.
const COPY_READ_BYTES: usize = 256 << 10;
/// Longest the holder may take to hash its share and appear in the index.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest nginx or the sendfile server may take to accept connections.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Slowest rate a download may run at before it is called stuck.
const SLOWEST_BYTES_PER_S: u64 = 10 << 20;
/// How often a bounded wait polls.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Name of the work directory inside the output directory.
pub const WORK_DIR: &str = "transfer-work";

/// What the transfer mode needs to know.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    /// Size of the file, bytes.
    pub size: u64,
    /// Timed transfers per contender.
    pub repeats: usize,
    /// The index the peers use.
    pub index: SocketAddr,
    /// The `peer` binary.
    pub peer: &'a Path,
    /// The bench binary (for `--sendfile-server`).
    pub self_exe: &'a Path,
    /// The output directory; the work directory is created inside it.
    pub out: &'a Path,
    /// Seed of the file's bytes.
    pub seed: u64,
    /// Also time a swarm download from [`SWARM_HOLDERS`] holders limited to this rate
    /// against one of them.
    pub swarm_rate: Option<u64>,
}

/// Holders of the swarm comparison.
pub const SWARM_HOLDERS: usize = 4;

/// The swarm comparison: one `get` from one rate-limited holder, then from all of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwarmSummary {
    /// Each holder's `--max-upload-rate`, bytes/s.
    pub holder_rate: u64,
    /// Holders in the swarm.
    pub holders: usize,
    /// The `get` from one holder, MiB/s.
    pub one_holder_mib_per_s: f64,
    /// The `get` from every holder, MiB/s.
    pub all_holders_mib_per_s: f64,
    /// `all / one` (the target: at least 3.6 with 4 holders).
    pub speedup: f64,
}

/// One contender's timed transfers.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Series {
    /// Each repeat's time, seconds.
    pub seconds: Vec<f64>,
    /// Each repeat's rate, MiB/s (size / time).
    pub mib_per_s: Vec<f64>,
    /// The median of `mib_per_s`.
    pub median_mib_per_s: f64,
}

impl Series {
    /// The series of `times` for a file of `size` bytes.
    pub fn new(size: u64, times: &[Duration]) -> Series {
        let seconds: Vec<f64> = times.iter().map(|t| round(t.as_secs_f64(), 4)).collect();
        let rates: Vec<f64> = times
            .iter()
            .map(|t| mib_per_s(size, t.as_secs_f64()))
            .collect();
        Series {
            median_mib_per_s: round(median(&rates), 1),
            mib_per_s: rates.iter().map(|&r| round(r, 1)).collect(),
            seconds,
        }
    }
}

/// The transfer mode's result (`transfer` in summary.json).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TransferSummary {
    /// Size of the file, bytes.
    pub size_bytes: u64,
    /// Timed transfers per contender.
    pub repeats: usize,
    /// The file's BLAKE3 hash.
    pub file_hash: String,
    /// `peer` console `get HASH`: connect → bytes → BLAKE3 verify → fsync → rename, as the
    /// downloading peer reports it.
    pub p2pshare: Series,
    /// `sendfile` server process → `read` + `write` client, connect → fsync done.
    pub bare_copy: Series,
    /// The same bare copies, connect → last byte written (before the fsync).
    pub bare_copy_without_fsync: Series,
    /// `curl -o FILE` from nginx (`sendfile on`), wall clock of the curl process, no fsync;
    /// `None` when it could not run (see `curl_nginx_skipped`).
    pub curl_nginx: Option<Series>,
    /// Why `curl_nginx` is missing.
    pub curl_nginx_skipped: Option<String>,
    /// `nginx -v` and the first line of `curl --version`, when they ran.
    pub curl_nginx_versions: Option<String>,
    /// Median p2pshare rate / median curl + nginx rate.
    pub p2pshare_over_curl: Option<f64>,
    /// Median p2pshare rate / median bare copy rate (fsync included on both sides).
    pub p2pshare_over_bare_copy: f64,
    /// Median p2pshare rate / median bare copy rate without its fsync.
    pub p2pshare_over_bare_copy_without_fsync: f64,
    /// Downloads the holder served at once for the memory figures.
    pub concurrent_downloads: usize,
    /// Bytes each of those downloads read before closing.
    pub bytes_per_concurrent_download: u64,
    /// Seconds from the start of all those downloads to the end of the last.
    pub concurrent_downloads_s: f64,
    /// The holder's VmRSS right before the simultaneous downloads, KiB.
    pub holder_rss_before_kib: u64,
    /// The largest VmRSS sampled (every 50 ms) while the holder served them, KiB.
    pub holder_rss_max_kib_64_downloads: u64,
    /// The same in MB (10^6 bytes), the unit of the 20 MB target.
    pub holder_rss_max_mb_64_downloads: f64,
    /// The holder's VmHWM (peak resident memory over its whole life, hashing at start
    /// included) at the end, KiB.
    pub holder_vmhwm_kib: u64,
    /// The same in MB (10^6 bytes).
    pub holder_vmhwm_mb: f64,
    /// The swarm comparison, when `--swarm-rate` was given.
    pub swarm: Option<SwarmSummary>,
}

/// Removes the work directory when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs the transfer mode (see the module docs).
pub fn run(p: &Params) -> io::Result<TransferSummary> {
    // Declared first so it is dropped last, after every process using the directory is dead.
    let work = WorkDir(p.out.join(WORK_DIR));
    let _ = fs::remove_dir_all(&work.0);
    let src_dir = work.0.join("src");
    let dst_dir = work.0.join("dst");
    fs::create_dir_all(&src_dir)?;
    fs::create_dir_all(&dst_dir)?;
    let name = format!("p2pshare-transfer-{}.bin", p.size);
    let src = src_dir.join(&name);

    progress(&format!(
        "bench: transfer: writing {} bytes to {}",
        p.size,
        src.display()
    ));
    generate(&src, p.size, p.seed)?;
    progress("bench: transfer: hashing the source file");
    let (hash, _) = hash_file(&src, |_| {})?;

    let holder_log = work.0.join("holder.log");
    let mut holder = ChildGuard(
        Command::new(p.peer)
            .arg("--share")
            .arg(&src_dir)
            .args(["--index", &p.index.to_string()])
            .args(["--listen", "127.0.0.1:0", "--serve"])
            // The simultaneous downloads all come from 127.0.0.1.
            .args(["--max-uploads-per-ip", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&holder_log)?)
            .spawn()
            .map_err(|e| with_context(e, &format!("cannot start {}", p.peer.display())))?,
    );
    progress("bench: transfer: waiting for the holding peer to register the file");
    let holder_addr = wait_for_holder(p.index, hash, &mut holder.0, &holder_log)?;
    progress_line(&format!(
        "bench: transfer: {} ({} bytes, {}) held by peer {holder_addr}",
        name,
        p.size,
        &hash.to_hex()[..16]
    ));

    let src_arg = src.to_string_lossy().into_owned();
    let (_sendfile_server, sendfile_addr) =
        floor::spawn_listening(p.self_exe, &["--sendfile-server", &src_arg])?;

    let mut curl = match Nginx::start(&work.0, &src_dir) {
        Ok(n) => Ok(n),
        Err(why) => {
            progress_line(&format!("bench: transfer: curl + nginx skipped: {why}"));
            Err(why)
        }
    };

    let mut p2p_times = Vec::new();
    let mut copy_times = Vec::new();
    let mut copy_times_nofsync = Vec::new();
    let mut curl_times = Vec::new();
    let limit = transfer_timeout(p.size);
    for i in 0..p.repeats {
        let tag = format!("bench: transfer {}/{}", i + 1, p.repeats);
        sync_disks();
        progress(&format!("{tag}: p2pshare get"));
        let t = p2pshare_once(
            p,
            hash,
            &dst_dir.join(format!("peer-{i}")),
            &work.0,
            i,
            limit,
        )?;
        progress_line(&format!("{tag}: p2pshare {:.1} MiB/s", rate(p.size, t)));
        p2p_times.push(t);

        sync_disks();
        progress(&format!("{tag}: bare copy"));
        let (no_fsync, with_fsync) =
            bare_copy_once(sendfile_addr, p.size, &dst_dir.join(format!("copy-{i}")))?;
        progress_line(&format!(
            "{tag}: bare copy {:.1} MiB/s ({:.1} MiB/s before its fsync)",
            rate(p.size, with_fsync),
            rate(p.size, no_fsync)
        ));
        copy_times.push(with_fsync);
        copy_times_nofsync.push(no_fsync);

        if let Ok(nginx) = &curl {
            sync_disks();
            progress(&format!("{tag}: curl + nginx"));
            match nginx.fetch(&name, p.size, &dst_dir.join(format!("curl-{i}")), limit) {
                Ok(t) => {
                    progress_line(&format!("{tag}: curl + nginx {:.1} MiB/s", rate(p.size, t)));
                    curl_times.push(t);
                }
                Err(why) => {
                    let why = format!("curl failed in repeat {}: {why}", i + 1);
                    progress_line(&format!("bench: transfer: {why}"));
                    curl = Err(why);
                }
            }
        }
    }
    let (curl_versions, curl_skipped) = match curl {
        Ok(n) => (Some(n.versions.clone()), None),
        Err(why) => (None, Some(why)),
    };

    progress(&format!(
        "bench: transfer: {CONCURRENT_DOWNLOADS} simultaneous downloads from the holder"
    ));
    let mem = concurrent_downloads(holder_addr, holder.0.id(), hash, p.size)?;
    progress_line(&format!(
        "bench: transfer: holder under {CONCURRENT_DOWNLOADS} downloads: max VmRSS {} KiB \
         ({:.1} MB), VmHWM {} KiB",
        mem.rss_max_kib,
        kib_to_mb(mem.rss_max_kib),
        mem.hwm_kib
    ));

    let swarm = match p.swarm_rate {
        Some(rate) => {
            // The unlimited holder leaves first: only the limited ones may serve.
            drop(holder);
            Some(swarm_comparison(p, hash, &src, &work.0, rate, limit)?)
        }
        None => None,
    };
    let p2pshare = Series::new(p.size, &p2p_times);
    let bare_copy = Series::new(p.size, &copy_times);
    let bare_copy_without_fsync = Series::new(p.size, &copy_times_nofsync);
    let curl_nginx = curl_skipped
        .is_none()
        .then(|| Series::new(p.size, &curl_times));
    Ok(TransferSummary {
        size_bytes: p.size,
        repeats: p.repeats,
        file_hash: hash.to_hex(),
        p2pshare_over_curl: curl_nginx
            .as_ref()
            .map(|c| ratio(p2pshare.median_mib_per_s, c.median_mib_per_s)),
        p2pshare_over_bare_copy: ratio(p2pshare.median_mib_per_s, bare_copy.median_mib_per_s),
        p2pshare_over_bare_copy_without_fsync: ratio(
            p2pshare.median_mib_per_s,
            bare_copy_without_fsync.median_mib_per_s,
        ),
        p2pshare,
        bare_copy,
        bare_copy_without_fsync,
        curl_nginx,
        curl_nginx_skipped: curl_skipped,
        curl_nginx_versions: curl_versions,
        concurrent_downloads: CONCURRENT_DOWNLOADS,
        bytes_per_concurrent_download: mem.bytes_each,
        concurrent_downloads_s: round(mem.elapsed.as_secs_f64(), 3),
        holder_rss_before_kib: mem.rss_before_kib,
        holder_rss_max_kib_64_downloads: mem.rss_max_kib,
        holder_rss_max_mb_64_downloads: round(kib_to_mb(mem.rss_max_kib), 2),
        holder_vmhwm_kib: mem.hwm_kib,
        holder_vmhwm_mb: round(kib_to_mb(mem.hwm_kib), 2),
        swarm,
    })
}

/// Starts a holder of `src` (hard-linked into a directory of its own) limited to `rate`.
fn start_limited_holder(
    p: &Params,
    src: &Path,
    work: &Path,
    i: usize,
    rate: u64,
) -> io::Result<ChildGuard> {
    let dir = work.join(format!("swarm-holder-{i}"));
    fs::create_dir_all(&dir)?;
    let name = src.file_name().expect("a file name");
    if fs::hard_link(src, dir.join(name)).is_err() {
        fs::copy(src, dir.join(name))?;
    }
    let log = work.join(format!("swarm-holder-{i}.log"));
    Ok(ChildGuard(
        Command::new(p.peer)
            .arg("--share")
            .arg(&dir)
            .args(["--index", &p.index.to_string()])
            .args(["--listen", "127.0.0.1:0", "--serve"])
            .args(["--max-uploads-per-ip", "0"])
            .args(["--max-upload-rate", &rate.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .map_err(|e| with_context(e, &format!("cannot start {}", p.peer.display())))?,
    ))
}

/// Polls the index until exactly `n` holders of `hash` are listed.
fn wait_for_holders(index: SocketAddr, hash: FileHash, n: usize) -> io::Result<()> {
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    let mut client = Client::hello(index, 0, "p2pshare-bench-swarm")?;
    loop {
        let listed = match client.call(RequestBody::Lookup {
            key: LookupKey::Hash(hash),
            after: None,
        })? {
            ResponseBody::Holders { files, .. } => files
                .iter()
                .filter(|f| f.hash == hash)
                .map(|f| f.holders.len())
                .sum(),
            _ => 0,
        };
        if listed == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{listed} holders listed, not {n}, after {REGISTER_TIMEOUT:?}"),
            ));
        }
        thread::sleep(RSS_SAMPLE_INTERVAL);
    }
}

/// One `get` from one holder limited to `rate`, then from [`SWARM_HOLDERS`] of them.
fn swarm_comparison(
    p: &Params,
    hash: FileHash,
    src: &Path,
    work: &Path,
    holder_rate: u64,
    limit: Duration,
) -> io::Result<SwarmSummary> {
    let slow_limit = limit.max(Duration::from_secs(p.size / holder_rate.max(1) * 3 + 60));
    wait_for_holders(p.index, hash, 0)?;
    let mut holders = vec![start_limited_holder(p, src, work, 0, holder_rate)?];
    wait_for_holders(p.index, hash, 1)?;
    progress(&format!(
        "bench: transfer: swarm: get from 1 holder at {holder_rate} B/s"
    ));
    sync_disks();
    let dst = work.join("dst");
    let one = p2pshare_once(p, hash, &dst.join("swarm-1"), work, 1000, slow_limit)?;
    progress_line(&format!(
        "bench: transfer: swarm: 1 holder {:.1} MiB/s",
        rate(p.size, one)
    ));
    for i in 1..SWARM_HOLDERS {
        holders.push(start_limited_holder(p, src, work, i, holder_rate)?);
    }
    wait_for_holders(p.index, hash, SWARM_HOLDERS)?;
    progress(&format!(
        "bench: transfer: swarm: get from {SWARM_HOLDERS} holders at {holder_rate} B/s each"
    ));
    sync_disks();
    let all = p2pshare_once(p, hash, &dst.join("swarm-all"), work, 1001, slow_limit)?;
    let (one_rate, all_rate) = (rate(p.size, one), rate(p.size, all));
    progress_line(&format!(
        "bench: transfer: swarm: {SWARM_HOLDERS} holders {all_rate:.1} MiB/s ({:.2}x one)",
        ratio(all_rate, one_rate)
    ));
    drop(holders);
    Ok(SwarmSummary {
        holder_rate,
        holders: SWARM_HOLDERS,
        one_holder_mib_per_s: round(one_rate, 1),
        all_holders_mib_per_s: round(all_rate, 1),
        speedup: ratio(all_rate, one_rate),
    })
}

// ----- the source file and the holder -----------------------------------------------------

/// Writes `size` bytes of xorshift64 output to `path` in 1 MiB chunks and fsyncs it, so its
/// write-back cannot land inside a timed transfer.
fn generate(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    let mut file = File::create(path)
        .map_err(|e| with_context(e, &format!("cannot create {}", path.display())))?;
    let mut buf = vec![0u8; GENERATE_CHUNK_BYTES];
    // xorshift64 never leaves zero, so the state must not start there.
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    if x == 0 {
        x = 1;
    }
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for word in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
        file.write_all(&buf[..n])
            .map_err(|e| with_context(e, &format!("cannot write {}", path.display())))?;
        left -= n as u64;
    }
    file.sync_all()
}

/// Polls the index until it lists a holder of `hash`, and returns that holder's address.
fn wait_for_holder(
    index: SocketAddr,
    hash: FileHash,
    holder: &mut Child,
    log: &Path,
) -> io::Result<SocketAddr> {
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    let mut client = Client::hello(index, 0, "p2pshare-bench-transfer")?;
    loop {
        if let Some(status) = holder.try_wait()? {
            return Err(io::Error::other(format!(
                "the holding peer exited ({status}) before registering the file: {}",
                tail(log)
            )));
        }
        match client.call(RequestBody::Lookup {
            key: LookupKey::Hash(hash),
            after: None,
        })? {
            ResponseBody::Holders { files, .. } => {
                let addr = files
                    .iter()
                    .filter(|f| f.hash == hash)
                    .find_map(|f| f.holders.first());
                if let Some(addr) = addr {
                    return Ok(*addr);
                }
            }
            ResponseBody::Error {
                code: ErrorCode::NotFound,
                ..
            } => {}
            other => {
                return Err(io::Error::other(format!(
                    "unexpected answer to a lookup: {other:?}"
                )))
            }
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the holding peer did not register the file within {} s: {}",
                    REGISTER_TIMEOUT.as_secs(),
                    tail(log)
                ),
            ));
        }
        thread::sleep(RSS_SAMPLE_INTERVAL);
    }
}

// ----- p2pshare -----------------------------------------------------------------------------

/// One `get HASH` by a fresh console peer sharing the empty directory `dst`; returns the
/// time the peer printed. The saved file and `dst` are removed afterwards.
fn p2pshare_once(
    p: &Params,
    hash: FileHash,
    dst: &Path,
    work: &Path,
    i: usize,
    limit: Duration,
) -> io::Result<Duration> {
    fs::create_dir_all(dst)?;
    let out_path = work.join(format!("peer-{i}.stdout"));
    let err_path = work.join(format!("peer-{i}.stderr"));
    let mut child = ChildGuard(
        Command::new(p.peer)
            .arg("--share")
            .arg(dst)
            .args(["--index", &p.index.to_string()])
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(File::create(&out_path)?)
            .stderr(File::create(&err_path)?)
            .spawn()
            .map_err(|e| with_context(e, &format!("cannot start {}", p.peer.display())))?,
    );
    {
        // Dropped at the end of this block: end of input, so the peer quits after the get.
        let mut stdin = child.0.stdin.take().expect("piped stdin");
        writeln!(stdin, "get {}", hash.to_hex())?;
    }
    let status = wait_bounded(&mut child.0, limit, "the downloading peer")?;
    let stdout = fs::read_to_string(&out_path)?;
    let Some(saved) = parse_saved(&stdout) else {
        return Err(io::Error::other(format!(
            "the downloading peer ({status}) printed no `saved` line; stdout {:?}; stderr: {}",
            stdout.trim(),
            tail(&err_path)
        )));
    };
    let on_disk = fs::metadata(&saved.path)?.len();
    if saved.size != p.size || on_disk != p.size {
        return Err(io::Error::other(format!(
            "the downloading peer saved {} ({on_disk} bytes on disk, {} reported), expected {}",
            saved.path.display(),
            saved.size,
            p.size
        )));
    }
    if saved.seconds <= 0.0 {
        return Err(io::Error::other(format!(
            "the download took less than the peer's 1 ms resolution ({:?}); use a larger size",
            stdout.trim()
        )));
    }
    fs::remove_file(&saved.path)?;
    fs::remove_dir_all(dst)?;
    Ok(Duration::from_secs_f64(saved.seconds))
}

/// What a console peer's `saved PATH (SIZE bytes in T s, R MiB/s)` line says.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// Where the file landed.
    pub path: PathBuf,
    /// Its size, bytes.
    pub size: u64,
    /// The download's time, seconds.
    pub seconds: f64,
}

/// Finds and parses the `saved` line in a console peer's stdout. The path may contain spaces
/// and parentheses, so the figures are taken from the last ` (`.
pub fn parse_saved(stdout: &str) -> Option<Saved> {
    stdout.lines().find_map(|line| {
        let rest = line.strip_prefix("saved ")?;
        let (path, figures) = rest.rsplit_once(" (")?;
        let words: Vec<&str> = figures.split_whitespace().collect();
        match words.as_slice() {
            [size, "bytes", "in", secs, "s,", _rate, "MiB/s)"] => Some(Saved {
                path: PathBuf::from(path),
                size: size.parse().ok()?,
                seconds: secs.parse().ok()?,
            }),
            _ => None,
        }
    })
}

// ----- the bare copy ------------------------------------------------------------------------

/// The `--sendfile-server FILE` mode: binds loopback port 0, prints `sendfile listening on
/// ADDR`, and sends the whole of `path` to every connection with `sendfile(2)`, then closes
/// it. Exits when its stdin closes, so it never outlives the bench that started it.
pub fn run_sendfile_server(path: &Path) -> io::Result<()> {
    File::open(path).map_err(|e| with_context(e, &format!("cannot open {}", path.display())))?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("sendfile listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                eprintln!("bench --sendfile-server: accept: {e}");
                thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        let path = path.to_path_buf();
        thread::spawn(move || {
            if let Err(e) = send_whole_file(&mut stream, &path) {
                eprintln!("bench --sendfile-server: {e}");
            }
        });
    }
    Ok(())
}

/// `sendfile` of the whole file on a blocking socket, looping over short sends.
fn send_whole_file(stream: &mut TcpStream, path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut offset = 0u64;
    while offset < len {
        let count = (len - offset).min(1 << 30) as usize;
        match sys::io::sendfile(stream, &file, &mut offset, count) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while being sent", path.display()),
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One bare copy from the sendfile server into a new file `dst`, which is removed
/// afterwards. Returns (connect → last byte written, connect → fsync done).
fn bare_copy_once(server: SocketAddr, size: u64, dst: &Path) -> io::Result<(Duration, Duration)> {
    let mut buf = vec![0u8; COPY_READ_BYTES];
    let start = Instant::now();
    let mut sock = TcpStream::connect(server)?;
    sock.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut file = File::create(dst)?;
    let mut total = 0u64;
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                file.write_all(&buf[..n])?;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let written = start.elapsed();
    file.sync_all()?;
    let synced = start.elapsed();
    drop(file);
    fs::remove_file(dst)?;
    if total != size {
        return Err(io::Error::other(format!(
            "the bare copy received {total} bytes, expected {size}"
        )));
    }
    Ok((written, synced))
}

// ----- curl + nginx -------------------------------------------------------------------------

/// An nginx serving the source directory, and the curl that fetches from it.
struct Nginx {
    _child: ChildGuard,
    port: u16,
    curl: PathBuf,
    versions: String,
}

impl Nginx {
    /// Starts nginx on a free loopback port with a config generated in `work`, serving
    /// `root`; the error says why curl + nginx cannot run.
    fn start(work: &Path, root: &Path) -> Result<Nginx, String> {
        let nginx =
            find_program("nginx").ok_or("nginx is not installed (not on PATH nor in /usr/sbin)")?;
        let curl =
            find_program("curl").ok_or("curl is not installed (not on PATH nor in /usr/sbin)")?;
        let nginx_v = Command::new(&nginx)
            .arg("-V")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", nginx.display()))?;
        let nginx_v = String::from_utf8_lossy(&nginx_v.stderr).into_owned();
        let curl_v = Command::new(&curl)
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", curl.display()))?;
        let curl_v = String::from_utf8_lossy(&curl_v.stdout).into_owned();
        // `nginx version: nginx/1.22.1` and `curl 7.88.1 (x86_64-pc-linux-gnu) libcurl/...`.
        let nginx_version = nginx_v
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("nginx");
        let curl_version = curl_v
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let versions = format!("{nginx_version}, {curl_version}");

        // Bind port 0 to learn a free port, then hand it to nginx.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port: {e}"))?
            .port();
        let root = root
            .canonicalize()
            .map_err(|e| format!("{}: {e}", root.display()))?;
        let prefix = work
            .canonicalize()
            .map_err(|e| format!("{}: {e}", work.display()))?;
        fs::create_dir_all(prefix.join("nginx-tmp"))
            .map_err(|e| format!("cannot create nginx's temp directory: {e}"))?;
        let conf = prefix.join("nginx.conf");
        let text = nginx_config(&prefix, &root, port, &nginx_v, is_root());
        fs::write(&conf, text).map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
        let log = prefix.join("nginx.stderr");
        let stderr = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = ChildGuard(
            Command::new(&nginx)
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(&prefix)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", nginx.display()))?,
        );
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.0.try_wait() {
                let why = [log.clone(), prefix.join("nginx-error.log")]
                    .iter()
                    .map(|p| tail(p))
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(format!("nginx exited ({status}): {}", why.trim()));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nginx did not accept on port {port} within {} s",
                    SERVER_START_TIMEOUT.as_secs()
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
        Ok(Nginx {
            _child: child,
            port,
            curl,
            versions,
        })
    }

    /// Times `curl -s --noproxy '*' -o DST http://127.0.0.1:PORT/NAME` (the whole curl
    /// process, wall clock), checks the size and removes `dst`.
    fn fetch(
        &self,
        name: &str,
        size: u64,
        dst: &Path,
        limit: Duration,
    ) -> Result<Duration, String> {
        let url = format!("http://127.0.0.1:{}/{name}", self.port);
        let start = Instant::now();
        let mut child = ChildGuard(
            Command::new(&self.curl)
                .args(["-s", "--noproxy", "*", "-o"])
                .arg(dst)
                .arg(&url)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start curl: {e}"))?,
        );
        let status = wait_bounded(&mut child.0, limit, "curl").map_err(|e| e.to_string())?;
        let took = start.elapsed();
        let got = fs::metadata(dst).map(|m| m.len());
        let _ = fs::remove_file(dst);
        if !status.success() {
            return Err(format!("curl {url} failed ({status})"));
        }
        match got {
            Ok(n) if n == size => Ok(took),
            Ok(n) => Err(format!("curl {url} saved {n} bytes, expected {size}")),
            Err(e) => Err(format!("curl {url} saved nothing: {e}")),
        }
    }
}

/// The nginx config: one process serving (`master_process off`, so killing the child the
/// bench started leaves no orphaned worker behind), no access log, `sendfile on`, every path inside `prefix`
/// (temp paths too, for the modules `nginx -V` does not list as left out), so nginx needs no
/// system directory. Run by root, the worker stays root so it can read a root-only tree.
fn nginx_config(prefix: &Path, root: &Path, port: u16, nginx_v: &str, as_root: bool) -> String {
    let p = prefix.display();
    let mut temp = format!("        client_body_temp_path {p}/nginx-tmp/body;\n");
    for module in ["proxy", "fastcgi", "uwsgi", "scgi"] {
        if !nginx_v.contains(&format!("--without-http_{module}_module")) {
            temp.push_str(&format!(
                "        {module}_temp_path {p}/nginx-tmp/{module};\n"
            ));
        }
    }
    format!(
        "# Generated by the p2pshare bench (--transfer).\n\
         {user}daemon off;\n\
         master_process off;\n\
         error_log {p}/nginx-error.log;\n\
         pid {p}/nginx.pid;\n\
         events {{}}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   sendfile on;\n\
         \x20   tcp_nopush on;\n\
         \x20   default_type application/octet-stream;\n\
         {temp}\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       root {root};\n\
         \x20   }}\n\
         }}\n",
        user = if as_root { "user root;\n" } else { "" },
        root = root.display(),
    )
}

/// Whether this process runs as root (the owner of its /proc entry).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `name` on PATH, else in the sbin directories a non-root PATH often lacks.
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

// ----- the holder's memory under simultaneous downloads ------------------------------------

/// The memory figures of [`concurrent_downloads`].
struct Memory {
    bytes_each: u64,
    elapsed: Duration,
    rss_before_kib: u64,
    rss_max_kib: u64,
    hwm_kib: u64,
}

/// Opens [`CONCURRENT_DOWNLOADS`] downloads of `hash` from the holder, all requested before
/// any is read, reads up to [`MAX_BYTES_PER_CONCURRENT_DOWNLOAD`] of each, and samples the
/// holder's VmRSS meanwhile.
fn concurrent_downloads(
    holder: SocketAddr,
    pid: u32,
    hash: FileHash,
    size: u64,
) -> io::Result<Memory> {
    let bytes_each = size.min(MAX_BYTES_PER_CONCURRENT_DOWNLOAD);
    let rss_before_kib = proc_status_kib(pid, "VmRSS")?;
    let start_together = Arc::new(Barrier::new(CONCURRENT_DOWNLOADS + 1));
    let finished = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..CONCURRENT_DOWNLOADS)
        .map(|_| {
            let start_together = Arc::clone(&start_together);
            let finished = Arc::clone(&finished);
            thread::spawn(move || {
                let requested = request_download(holder, hash, size, bytes_each);
                // Every thread reaches the barrier, failed or not, so none waits forever.
                start_together.wait();
                let r = requested.and_then(|s| read_download(s, size, bytes_each));
                finished.fetch_add(1, Ordering::SeqCst);
                r
            })
        })
        .collect();
    start_together.wait();
    let start = Instant::now();
    let mut rss_max_kib = rss_before_kib;
    // `is_finished` too, so a thread that panicked cannot keep this loop going.
    while finished.load(Ordering::SeqCst) < CONCURRENT_DOWNLOADS
        && !handles.iter().all(|h| h.is_finished())
    {
        rss_max_kib = rss_max_kib.max(proc_status_kib(pid, "VmRSS")?);
        thread::sleep(RSS_SAMPLE_INTERVAL);
    }
    let elapsed = start.elapsed();
    rss_max_kib = rss_max_kib.max(proc_status_kib(pid, "VmRSS")?);
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("a download thread panicked"))??;
    }
    Ok(Memory {
        bytes_each,
        elapsed,
        rss_before_kib,
        rss_max_kib,
        hwm_kib: proc_status_kib(pid, "VmHWM")?,
    })
}

/// Groups asked for in one range request of the memory mode (4 MiB).
const RANGE_GROUPS: u64 = 256;

/// The range requests covering the first `want` bytes of a file of `size` bytes.
fn ranges(size: u64, want: u64) -> Vec<std::ops::Range<u64>> {
    let groups = outboard::group_count(size).min(want.div_ceil(outboard::GROUP_BYTES).max(1));
    (0..groups)
        .step_by(RANGE_GROUPS as usize)
        .map(|g| g..(g + RANGE_GROUPS).min(groups))
        .collect()
}

/// Connects to the holder and sends, pipelined, the range requests for its first `want`
/// bytes.
fn request_download(
    holder: SocketAddr,
    hash: FileHash,
    size: u64,
    want: u64,
) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect(holder)?;
    s.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut frame = Vec::new();
    for r in ranges(size, want) {
        wire::encode_frame(
            &TransferRequest::Range {
                version: PROTOCOL_VERSION,
                hash,
                size,
                first: r.start,
                end: r.end,
            },
            &mut frame,
        );
    }
    s.write_all(&frame)?;
    Ok(s)
}

/// Reads each range's `Sending` header, proof and data bytes (not verified: this measures the
/// holder), and closes.
fn read_download(mut s: TcpStream, size: u64, want: u64) -> io::Result<()> {
    let mut decoder = Decoder::new(64 << 10);
    let mut inbuf = Vec::new();
    let mut buf = vec![0u8; COPY_READ_BYTES];
    for r in ranges(size, want) {
        let body = loop {
            if let Some(d) = decoder
                .decode(&inbuf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
            {
                match wire::decode::<TransferResponse>(&inbuf[d.payload.clone()]) {
                    Ok(TransferResponse::Sending {
                        size: s,
                        first,
                        end,
                    }) if s == size && first == r.start && end == r.end => {}
                    other => {
                        return Err(io::Error::other(format!(
                            "unexpected answer from the holder: {other:?}"
                        )))
                    }
                }
                inbuf.drain(..d.consumed);
                let data = outboard::group_bytes(size, r.clone());
                let proof = outboard::proof_len(size, r.clone())
                    .map_err(|e| io::Error::other(e.to_string()))?;
                break proof as u64 + (data.end - data.start);
            }
            let n = read_some(&mut s, &mut buf)?;
            inbuf.extend_from_slice(&buf[..n]);
        };
        let mut got = (inbuf.len() as u64).min(body);
        inbuf.drain(..got as usize);
        while got < body {
            let n = read_some(&mut s, &mut buf)?;
            let take = (n as u64).min(body - got) as usize;
            got += take as u64;
            inbuf.extend_from_slice(&buf[take..n]);
        }
    }
    Ok(())
}

/// One read that is not end of stream.
fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match s.read(buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the holder closed the download early",
                ))
            }
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A `Vm*:` figure of `/proc/PID/status`, KiB.
fn proc_status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status_kib(&status, field).ok_or_else(|| {
        io::Error::other(format!(
            "no {field} in /proc/{pid}/status (did the holder exit?)"
        ))
    })
}

/// The value of `FIELD:   1234 kB` in a /proc status text.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(field)?.strip_prefix(':')?;
        v.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

// ----- small helpers ------------------------------------------------------------------------

/// Flushes every dirty page on the machine (the `sync` command, i.e. `sync(2)`), so write-back
/// of earlier work does not land inside the next timed transfer. Through the command rather
/// than `libc::sync` so the bench has no `unsafe`.
fn sync_disks() {
    if let Err(e) = Command::new("sync").status() {
        eprintln!("bench: sync: {e} (timings may include earlier write-back)");
    }
}

/// Waits for `child` to exit, at most `limit`.
fn wait_bounded(child: &mut Child, limit: Duration, what: &str) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} did not finish within {} s", limit.as_secs()),
            ));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// How long one transfer of `size` bytes may take: a minute plus 10 MiB/s.
fn transfer_timeout(size: u64) -> Duration {
    Duration::from_secs(60 + size / SLOWEST_BYTES_PER_S)
}

/// The last few hundred bytes of a log file, on one line.
fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(600);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    let t = text[start..].trim().replace('\n', " | ");
    if t.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        t
    }
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn progress_line(line: &str) {
    super::progress_done(line);
}

/// `size` bytes in `secs` seconds, MiB/s.
fn mib_per_s(size: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        size as f64 / secs / (1u64 << 20) as f64
    } else {
        0.0
    }
}

fn rate(size: u64, t: Duration) -> f64 {
    mib_per_s(size, t.as_secs_f64())
}

/// The median (mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `a / b` to two decimals, 0 when `b` is 0.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        round(a / b, 2)
    } else {
        0.0
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let m = 10f64.powi(decimals);
    (x * m).round() / m
}

fn kib_to_mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_line_parses() {
        let out = "get: downloading x (9 bytes) from 127.0.0.1:1\n\
                   saved /tmp/a b (1).bin (1073741824 bytes in 1.234 s, 829.8 MiB/s)\n";
        assert_eq!(
            parse_saved(out),
            Some(Saved {
                path: PathBuf::from("/tmp/a b (1).bin"),
                size: 1 << 30,
                seconds: 1.234,
            })
        );
        assert_eq!(parse_saved("already have /x (9 bytes)\n"), None);
        assert_eq!(parse_saved("saved /x (9 bytes)\n"), None);
        assert_eq!(parse_saved(""), None);
    }

    #[test]
    fn status_fields_parse() {
        let s = "Name:\tpeer\nVmHWM:\t   12345 kB\nVmRSS:\t    6789 kB\n";
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(6789));
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(12345));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn medians_and_series() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let s = Series::new(
            1 << 30,
            &[
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_millis(500),
            ],
        );
        assert_eq!(s.mib_per_s, vec![1024.0, 512.0, 2048.0]);
        assert_eq!(s.median_mib_per_s, 1024.0);
        assert_eq!(s.seconds, vec![1.0, 2.0, 0.5]);
    }

    #[test]
    fn generated_file_has_the_size_and_is_not_constant() {
        let dir = std::env::temp_dir().join(format!("p2pshare-gen-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        generate(&path, (1 << 20) + 5, 7).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), (1 << 20) + 5);
        assert_ne!(bytes[..8], bytes[8..16]);
        assert_ne!(bytes[..4096], bytes[1 << 19..(1 << 19) + 4096]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn nginx_config_keeps_everything_in_the_prefix() {
        let c = nginx_config(
            Path::new("/w"),
            Path::new("/w/src"),
            8080,
            "--without-http_uwsgi_module",
            false,
        );
        assert!(c.contains("daemon off;"));
        assert!(c.contains("sendfile on;"));
        assert!(c.contains("listen 127.0.0.1:8080;"));
        assert!(c.contains("root /w/src;"));
        assert!(c.contains("proxy_temp_path /w/nginx-tmp/proxy;"));
        assert!(!c.contains("uwsgi_temp_path"));
        assert!(!c.contains("user root"));
        assert!(nginx_config(Path::new("/w"), Path::new("/w"), 1, "", true).contains("user root;"));
    }
}
