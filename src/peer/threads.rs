//! The peer's helper threads: the hasher (walks and hashes the share, so a large share never
//! freezes the loop; it also looks again at the paths the watcher saw change, see
//! [`super::watch`]), the stdin reader (epoll cannot watch a regular file, and stdin may be
//! one) and the resolver (a host-name lookup blocks). Each hands its results to the reactor as
//! an [`Event`] through a channel and the reactor's waker; none touches the peer's state.
//! (The downloads' verifying thread has its own channel, in [`super::verify`].)

use super::outboard::OutboardStore;
use super::share::{self, HashCache, SharedFile};
use crate::wire::FileHash;
use std::collections::HashSet;
use std::io::BufRead;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest console line read; the rest of a longer line is discarded.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Messages from the helper threads to the reactor.
pub enum Event {
    /// A console line.
    Line(String),
    /// Standard input ended.
    StdinEof,
    /// Hashing progress.
    ScanProgress(share::ScanProgress),
    /// The outboard of a shared file (`Job::Outboard`) was computed: the file's hash as read
    /// now (another hash means the file changed), or why not.
    Outboard {
        /// The file as it was shared.
        file: SharedFile,
        /// The hash read while computing it.
        result: Result<FileHash, String>,
    },
    /// The index's host name was looked up (on a thread of its own: the lookup blocks): its
    /// addresses, in the resolver's order.
    Resolved(Result<Vec<SocketAddr>, String>),
    /// The watcher saw these paths change (created, written, renamed or removed, each quiet
    /// for the debounce time); see [`super::watch`].
    Watched(Vec<PathBuf>),
    /// A scan or hash job finished.
    Scanned {
        /// What was asked.
        job: Job,
        /// The hashed files.
        files: Vec<SharedFile>,
        /// Problems met (unreadable files).
        warnings: Vec<String>,
    },
}

/// Work for the hashing thread.
#[derive(Debug, Clone)]
pub enum Job {
    /// Walk and hash the whole share (startup, `register` with no paths).
    Rescan {
        /// Whether a console command waits for it.
        console: bool,
    },
    /// Hash these paths and add them (`register PATH...`, a changed file).
    Paths {
        /// The files.
        paths: Vec<PathBuf>,
        /// Whether a console command waits for it.
        console: bool,
    },
    /// Look again at paths the watcher saw change: the files now at or under each of them
    /// (regular files hashed, directories walked, links and gone paths: nothing) replace
    /// what was shared there.
    Watched {
        /// The touched paths.
        paths: Vec<PathBuf>,
    },
    /// Compute and store the outboard of a shared file whose outboard is missing or damaged
    /// (the file server refuses its ranges until then).
    Outboard {
        /// The file.
        file: SharedFile,
    },
    /// Delete the stored outboards of these hashes (their files left the share).
    ForgetOutboards {
        /// The hashes no longer shared.
        hashes: Vec<FileHash>,
    },
    /// Delete every stored outboard of a hash that is neither in `keep` (the share after a
    /// full scan) nor hashed by a job since that scan, and leftover temporary files.
    PruneOutboards {
        /// The hashes shared.
        keep: Vec<FileHash>,
    },
}

/// Starts the hashing thread; it runs jobs until the job channel closes.
pub fn spawn_hasher(
    root: PathBuf,
    events: Sender<Event>,
    waker: Arc<mio::Waker>,
) -> std::io::Result<Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("hasher".into())
        .spawn(move || {
            let cache_path = root.join(share::CACHE_FILE);
            let mut cache = HashCache::load(&cache_path);
            let outboards = OutboardStore::new(&root);
            // Hashes whose outboard may have been written since the last full scan: a prune
            // keeps them (the core's list of what it shares may not include them yet).
            let mut since_rescan: HashSet<FileHash> = HashSet::new();
            for job in rx {
                match job {
                    Job::Outboard { file } => {
                        since_rescan.insert(file.hash);
                        let result = outboards
                            .compute_file(&file.path, &mut |_| {})
                            .map(|(hash, _)| hash)
                            .map_err(|e| e.to_string());
                        if let Ok(h) = &result {
                            since_rescan.insert(*h);
                        }
                        let _ = events.send(Event::Outboard { file, result });
                        let _ = waker.wake();
                        continue;
                    }
                    Job::ForgetOutboards { hashes } => {
                        for h in &hashes {
                            outboards.remove(h);
                        }
                        continue;
                    }
                    Job::PruneOutboards { keep } => {
                        let keep: HashSet<FileHash> = keep.into_iter().collect();
                        match outboards.prune(&|h| keep.contains(h) || since_rescan.contains(h)) {
                            Ok(n) if n > 0 => {
                                log::info!(target: "peer", "{n} outboards of files no longer shared deleted");
                            }
                            Ok(_) => {}
                            Err(e) => log::warn!(target: "peer", "cannot sweep the outboards: {e}"),
                        }
                        continue;
                    }
                    _ => {}
                }
                let mut warnings = Vec::new();
                let files = match &job {
                    Job::Rescan { .. } => share::walk(&root, &mut |w| warnings.push(w)),
                    Job::Paths { paths, .. } => {
                        share::regular_files(&root, paths, &mut |w| warnings.push(w))
                    }
                    Job::Watched { paths } => share::files_at(&root, paths),
                    Job::Outboard { .. }
                    | Job::ForgetOutboards { .. }
                    | Job::PruneOutboards { .. } => Vec::new(),
                };
                let mut last = Instant::now();
                let hashed = share::hash_all(
                    files,
                    &cache,
                    Some(&outboards),
                    &mut |p| {
                        if last.elapsed() >= Duration::from_millis(500) || p.files_done == p.files {
                            last = Instant::now();
                            let _ = events.send(Event::ScanProgress(p));
                            let _ = waker.wake();
                        }
                    },
                    &mut |w| warnings.push(w),
                );
                if matches!(job, Job::Rescan { .. }) {
                    since_rescan.clear();
                } else {
                    since_rescan.extend(hashed.iter().map(|f| f.hash));
                }
                match &job {
                    Job::Rescan { .. } => {
                        cache = HashCache::from_files(&hashed);
                        // A read-only share just means re-hashing next time.
                        let _ = cache.save(&cache_path);
                    }
                    // A moved file is found in the cache by its inode, so the cache keeps
                    // what was hashed until the next full rescan prunes it.
                    _ => {
                        if cache.insert_all(&hashed) {
                            let _ = cache.save(&cache_path);
                        }
                    }
                }
                let _ = events.send(Event::Scanned {
                    job,
                    files: hashed,
                    warnings,
                });
                let _ = waker.wake();
                // The walk's and the cache's transient lists are freed: give the memory back.
                crate::sys::process::release_free_memory();
            }
        })?;
    Ok(tx)
}

/// Starts the stdin thread: each line becomes [`Event::Line`], end of input
/// [`Event::StdinEof`].
pub fn spawn_stdin(events: Sender<Event>, waker: Arc<mio::Waker>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match std::io::Read::take(&mut lock, MAX_LINE_BYTES as u64)
                    .read_until(b'\n', &mut buf)
                {
                    Ok(0) => break,
                    Ok(_) => {
                        if buf.last() != Some(&b'\n') && buf.len() >= MAX_LINE_BYTES {
                            // Discard the rest of an over-long line.
                            let mut sink = Vec::new();
                            let _ = lock.read_until(b'\n', &mut sink);
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        if events.send(Event::Line(line)).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = events.send(Event::StdinEof);
            let _ = waker.wake();
        })?;
    Ok(())
}

/// Looks `name` up on a thread of its own and reports [`Event::Resolved`] through `notify`.
pub fn spawn_resolver(
    name: String,
    notify: Arc<dyn Fn(Event) + Send + Sync>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            notify(Event::Resolved(match name.to_socket_addrs() {
                Ok(addrs) => Ok(addrs.collect()),
                Err(e) => Err(e.to_string()),
            }))
        })?;
    Ok(())
}
