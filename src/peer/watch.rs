//! Watching the share: the operating system's file events (inotify on Linux, through the
//! `notify` crate) turned into batches of paths for the hasher to look at again.
//!
//! The watcher thread owns the `notify` watcher and a [`Debouncer`]; it hands each batch to
//! the reactor as [`Event::Watched`], and the core gives it to the hashing thread as
//! [`Job::Watched`](super::threads::Job::Watched). The hasher decides what each path now is
//! (a regular file to hash, a directory to walk, or gone: nothing), so this module never
//! needs to know whether an event was a create, a write, a rename or a delete.
//!
//! # Invariants
//! - Links are never followed: directories are watched one by one (not recursively through
//!   `notify`), and the walk that finds them does not descend into a symbolic link. A link
//!   dropped into the share is a touched path like any other, and the hasher refuses it.
//! - A path is handed on only once it has been quiet for the debounce time (a file still
//!   being written is not hashed ten times), and a burst is handed on in a few large batches:
//!   everything quiet is released together, at least every [`FLUSH_EVERY`] while events keep
//!   coming ([`Debouncer`]).
//! - The peer's own files (the hash cache, the withdrawn list, partial downloads) and reads
//!   (its own hashing opens files) never make a batch.
//! - When the system's watch limit is reached, the peer says so once, with the sysctl to
//!   raise, and the directories it could not watch are rescanned every [`RESCAN_EVERY`] (and
//!   watching them is tried again then).

use super::share::is_own_file;
use super::threads::Event;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a path must be quiet before it is looked at, unless `--watch-quiet-ms` says.
pub const DEFAULT_QUIET: Duration = Duration::from_millis(500);
/// While events keep coming, what is quiet is still released at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often directories that could not be watched are rescanned.
pub const RESCAN_EVERY: Duration = Duration::from_secs(60);

/// Collects touched paths and releases them in batches once they are quiet. Sans-IO: time is
/// passed in.
#[derive(Debug)]
pub struct Debouncer {
    quiet: Duration,
    flush_every: Duration,
    /// Each touched path and when it was last touched.
    pending: HashMap<PathBuf, Instant>,
    /// The last touch of any path.
    last_touch: Option<Instant>,
    /// When what is quiet is released even though other paths are still busy.
    next_flush: Option<Instant>,
}

impl Debouncer {
    /// A debouncer releasing paths quiet for `quiet`, at least every `flush_every` in a burst.
    pub fn new(quiet: Duration, flush_every: Duration) -> Debouncer {
        Debouncer {
            quiet,
            flush_every,
            pending: HashMap::new(),
            last_touch: None,
            next_flush: None,
        }
    }

    /// `path` was created, written, renamed (from or to) or removed at `now`.
    pub fn handle_touched(&mut self, now: Instant, path: PathBuf) {
        self.pending.insert(path, now);
        self.last_touch = Some(now);
        self.next_flush.get_or_insert(now + self.flush_every);
    }

    /// Paths waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no path waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When [`Debouncer::poll_batch`] may next release something.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        let all_quiet = self.last_touch.map(|t| t + self.quiet);
        match (all_quiet, self.next_flush) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The paths to look at now, sorted: everything once all has been quiet, else at each
    /// flush the paths that are quiet themselves. `None` when nothing is due.
    pub fn poll_batch(&mut self, now: Instant) -> Option<Vec<PathBuf>> {
        let last = self.last_touch?;
        if self.pending.is_empty() {
            return None;
        }
        let all_quiet = now >= last + self.quiet;
        let flush = self.next_flush.is_some_and(|at| now >= at);
        if !all_quiet && !flush {
            return None;
        }
        let mut ready: Vec<PathBuf> = if all_quiet {
            self.pending.drain().map(|(p, _)| p).collect()
        } else {
            let quiet = self.quiet;
            let due: Vec<PathBuf> = self
                .pending
                .iter()
                .filter(|(_, at)| now >= **at + quiet)
                .map(|(p, _)| p.clone())
                .collect();
            for p in &due {
                self.pending.remove(p);
            }
            due
        };
        self.next_flush = (!self.pending.is_empty()).then(|| now + self.flush_every);
        ready.sort();
        (!ready.is_empty()).then_some(ready)
    }
}

/// Why a directory could not be watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchError {
    /// The system's limit on watches is reached (`fs.inotify.max_user_watches`).
    Limit,
    /// Anything else (the directory went away, no permission): not retried.
    Other(String),
}

/// Something that watches one directory (not its subdirectories): `notify`'s watcher, or a
/// fake in tests.
pub trait WatchDir {
    /// Starts watching `dir`.
    fn watch_dir(&mut self, dir: &Path) -> Result<(), WatchError>;
}

/// The system's watcher, or none when it could not be made (no inotify instance left): then
/// every directory is "past the limit" and rescanned.
struct OsWatcher(Option<notify::RecommendedWatcher>);

impl WatchDir for OsWatcher {
    fn watch_dir(&mut self, dir: &Path) -> Result<(), WatchError> {
        use notify::Watcher as _;
        let Some(w) = &mut self.0 else {
            return Err(WatchError::Limit);
        };
        w.watch(dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| match e.kind {
                notify::ErrorKind::MaxFilesWatch => WatchError::Limit,
                _ => WatchError::Other(e.to_string()),
            })
    }
}

/// The directories of the share being watched, and those that could not be (rescanned
/// instead).
#[derive(Debug, Default)]
pub struct DirWatches {
    /// Directories watched.
    pub watched: usize,
    /// Directories that hit the watch limit, rescanned every [`RESCAN_EVERY`].
    pub unwatched: BTreeSet<PathBuf>,
    /// The limit was reported (it is said once).
    limit_said: bool,
}

/// What a person is told when the watch limit is reached.
pub fn limit_message() -> String {
    format!(
        "warning: the system's limit on inotify watches is reached, so some directories of the \
         share are not watched; they are rescanned every {} s instead. Raise the limit with \
         `sysctl fs.inotify.max_user_watches=1048576` (as root; add it to /etc/sysctl.conf \
         to keep it)",
        RESCAN_EVERY.as_secs()
    )
}

impl DirWatches {
    /// Watches `dir` and every directory below it (links not followed). Directories past the
    /// watch limit are remembered as unwatched; the first time, `say` is told.
    pub fn add_tree(&mut self, w: &mut dyn WatchDir, dir: &Path, say: &mut dyn FnMut(String)) {
        for d in dirs_under(dir) {
            self.add_one(w, d, say);
        }
    }

    fn add_one(&mut self, w: &mut dyn WatchDir, dir: PathBuf, say: &mut dyn FnMut(String)) {
        match w.watch_dir(&dir) {
            Ok(()) => {
                self.watched += 1;
                self.unwatched.remove(&dir);
            }
            Err(WatchError::Limit) => {
                if !self.limit_said {
                    self.limit_said = true;
                    say(limit_message());
                }
                self.unwatched.insert(dir);
            }
            Err(WatchError::Other(e)) => {
                log::debug!(target: "peer", "cannot watch {}: {e}", dir.display())
            }
        }
    }

    /// Tries watching the unwatched directories again (the limit may have been raised);
    /// returns those to rescan: every one that was unwatched (a directory watched only now
    /// may have changed unseen).
    pub fn retry(&mut self, w: &mut dyn WatchDir, say: &mut dyn FnMut(String)) -> Vec<PathBuf> {
        let dirs: Vec<PathBuf> = std::mem::take(&mut self.unwatched).into_iter().collect();
        for d in &dirs {
            if d.is_dir() {
                self.add_one(w, d.clone(), say);
            }
        }
        dirs
    }
}

/// `dir` and every directory below it, never through a symbolic link.
pub fn dirs_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                // `file_type` of a directory entry does not follow a link.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
        }
        out.push(d);
    }
    out
}

/// Whether an event is one that can change what is shared: not the peer's own reads.
fn matters(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    use notify::EventKind;
    match kind {
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// The watcher thread's state: the debouncer, the watched directories, the share's root.
struct Watching<W> {
    root: PathBuf,
    watcher: W,
    dirs: DirWatches,
    debouncer: Debouncer,
}

impl<W: WatchDir> Watching<W> {
    fn handle(&mut self, now: Instant, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                log::warn!(target: "peer", "watching the share: {e}");
                return;
            }
        };
        if event.need_rescan() {
            // The kernel's queue overflowed: events were lost, so look at everything.
            log::warn!(target: "peer", "watching the share: events were lost; rescanning it");
            self.debouncer.handle_touched(now, self.root.clone());
        }
        if !matters(&event.kind) {
            return;
        }
        for path in event.paths {
            if !path.starts_with(&self.root) || path.file_name().is_some_and(is_own_file) {
                continue;
            }
            // A directory created or moved in: watch it and what is below it (its files are
            // found by the hasher's walk of the touched directory).
            if matches!(
                event.kind,
                notify::EventKind::Create(_) | notify::EventKind::Modify(_)
            ) && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir())
            {
                self.dirs.add_tree(
                    &mut self.watcher,
                    &path,
                    &mut |m| log::warn!(target: "peer", "{m}"),
                );
            }
            self.debouncer.handle_touched(now, path);
        }
    }
}

/// Starts the watcher thread for the share at `root`: batches of touched paths, each quiet
/// for `quiet`, reach the reactor as [`Event::Watched`]. Without an inotify instance (the
/// system's limit on them), the whole share is rescanned every [`RESCAN_EVERY`] instead.
pub fn spawn_watcher(
    root: PathBuf,
    quiet: Duration,
    events: Sender<Event>,
    waker: Arc<mio::Waker>,
) -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let config = notify::Config::default().with_follow_symlinks(false);
    use notify::Watcher as _;
    let mut dirs = DirWatches::default();
    let watcher = match notify::RecommendedWatcher::new(tx, config) {
        Ok(w) => Some(w),
        Err(e) => {
            log::warn!(
                target: "peer",
                "warning: cannot watch the share ({e}); it is rescanned every {} s instead \
                 (the system's limit on inotify instances is `sysctl fs.inotify.max_user_instances`)",
                RESCAN_EVERY.as_secs()
            );
            dirs.limit_said = true;
            None
        }
    };
    let mut w = Watching {
        root: root.clone(),
        watcher: OsWatcher(watcher),
        dirs,
        debouncer: Debouncer::new(quiet, FLUSH_EVERY),
    };
    // Watching starts before the thread does, so nothing written after the peer's start-up
    // scan began is missed.
    w.dirs.add_tree(
        &mut w.watcher,
        &root,
        &mut |m| log::warn!(target: "peer", "{m}"),
    );
    log::debug!(target: "peer", "watching {} directories of the share", w.dirs.watched);
    std::thread::Builder::new()
        .name("watcher".into())
        .spawn(move || {
            let mut next_rescan = Instant::now() + RESCAN_EVERY;
            loop {
                let now = Instant::now();
                let rescan = (!w.dirs.unwatched.is_empty()).then_some(next_rescan);
                let deadline = match (w.debouncer.poll_timeout(), rescan) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let got = match deadline {
                    Some(at) => rx.recv_timeout(at.saturating_duration_since(now)),
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                };
                match got {
                    Ok(event) => {
                        let now = Instant::now();
                        w.handle(now, event);
                        while let Ok(event) = rx.try_recv() {
                            w.handle(now, event);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                let now = Instant::now();
                if !w.dirs.unwatched.is_empty() && now >= next_rescan {
                    next_rescan = now + RESCAN_EVERY;
                    let say = &mut |m: String| log::warn!(target: "peer", "{m}");
                    for d in w.dirs.retry(&mut w.watcher, say) {
                        w.debouncer.handle_touched(now, d);
                    }
                }
                if let Some(paths) = w.debouncer.poll_batch(now) {
                    log::debug!(target: "peer", "watch: {} paths changed", paths.len());
                    if events.send(Event::Watched(paths)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(500);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_file_written_many_times_is_released_once_when_quiet() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(QUIET, FLUSH_EVERY);
        assert_eq!(d.poll_timeout(), None);
        // Written every 100 ms for 0.9 s (under a flush: it is the only path).
        for i in 0..10 {
            d.handle_touched(t0 + ms(i * 100), "/s/big.iso".into());
            assert_eq!(d.poll_batch(t0 + ms(i * 100)), None);
        }
        let last = t0 + ms(900);
        // At the flush (1 s) it is not quiet yet: nothing, and the timer moves on.
        assert_eq!(d.poll_timeout(), Some(t0 + FLUSH_EVERY));
        assert_eq!(d.poll_batch(t0 + FLUSH_EVERY), None);
        assert_eq!(d.poll_timeout(), Some(last + QUIET));
        assert_eq!(d.poll_batch(last + QUIET - ms(1)), None);
        assert_eq!(
            d.poll_batch(last + QUIET),
            Some(vec![PathBuf::from("/s/big.iso")])
        );
        assert!(d.is_empty());
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(d.poll_batch(last + QUIET * 10), None);
    }

    #[test]
    fn a_burst_of_50000_files_is_released_in_a_few_batches() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(QUIET, FLUSH_EVERY);
        let mut batches = Vec::new();
        // 50,000 files unpacked over 5 s: each created, written and closed (three events),
        // one every 100 µs, the driver polling whenever a deadline passes, as the thread does.
        let mut now = t0;
        for i in 0..50_000u64 {
            now = t0 + Duration::from_micros(i * 100);
            let path = PathBuf::from(format!("/s/unpacked/{i:05}.txt"));
            for _ in 0..3 {
                d.handle_touched(now, path.clone());
            }
            if d.poll_timeout().is_some_and(|at| now >= at) {
                batches.extend(d.poll_batch(now));
            }
        }
        while let Some(at) = d.poll_timeout() {
            now = now.max(at);
            batches.extend(d.poll_batch(now));
        }
        let total: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(total, 50_000);
        assert!(batches.len() <= 7, "{} batches", batches.len());
        let mut all: Vec<&PathBuf> = batches.iter().flatten().collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 50_000, "a path released twice");
    }

    #[test]
    fn a_rename_releases_both_names_together() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(QUIET, FLUSH_EVERY);
        d.handle_touched(t0, "/s/old name.flac".into());
        d.handle_touched(t0, "/s/new name.flac".into());
        assert_eq!(
            d.poll_batch(t0 + QUIET),
            Some(vec![
                PathBuf::from("/s/new name.flac"),
                PathBuf::from("/s/old name.flac")
            ])
        );
    }

    /// Watches `budget` directories, then answers as the kernel does past its limit.
    struct Limited {
        budget: usize,
        watched: Vec<PathBuf>,
    }

    impl WatchDir for Limited {
        fn watch_dir(&mut self, dir: &Path) -> Result<(), WatchError> {
            if self.watched.len() >= self.budget {
                return Err(WatchError::Limit);
            }
            self.watched.push(dir.to_path_buf());
            Ok(())
        }
    }

    #[test]
    fn past_the_watch_limit_it_says_so_once_and_rescans_what_it_could_not_watch() {
        let root = std::env::temp_dir().join(format!("p2pshare-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["a/x", "b", "c", "d"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::create_dir_all(root.join("elsewhere")).unwrap();
        // A link to a directory is never watched nor walked.
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("d/link")).unwrap();
        let mut w = Limited {
            budget: 3,
            watched: Vec::new(),
        };
        let mut said = Vec::new();
        let mut dirs = DirWatches::default();
        dirs.add_tree(&mut w, &root, &mut |m| said.push(m));
        // root, a, a/x, b, c, d, elsewhere: 7 directories, 3 watched.
        assert_eq!(dirs.watched, 3);
        assert_eq!(dirs.unwatched.len(), 4);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("fs.inotify.max_user_watches"), "{said:?}");
        assert!(!w.watched.iter().any(|p| p.ends_with("link")));
        // Still at the limit: every unwatched directory is rescanned, nothing said again.
        let rescan = dirs.retry(&mut w, &mut |m| said.push(m));
        assert_eq!(rescan.len(), 4);
        assert_eq!(dirs.unwatched.len(), 4);
        assert_eq!(said.len(), 1);
        // The limit was raised: they are watched now, and rescanned one last time.
        w.budget = 100;
        assert_eq!(dirs.retry(&mut w, &mut |m| said.push(m)).len(), 4);
        assert!(dirs.unwatched.is_empty());
        assert_eq!(dirs.watched, 7);
        assert!(dirs.retry(&mut w, &mut |m| said.push(m)).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_peers_own_reads_and_files_are_not_changes() {
        use notify::event::{AccessKind, AccessMode, CreateKind};
        use notify::EventKind;
        assert!(!matters(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!matters(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(matters(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(matters(&EventKind::Create(CreateKind::File)));
        let mut w = Watching {
            root: PathBuf::from("/s"),
            watcher: Limited {
                budget: 0,
                watched: Vec::new(),
            },
            dirs: DirWatches::default(),
            debouncer: Debouncer::new(QUIET, FLUSH_EVERY),
        };
        let now = Instant::now();
        for p in [
            "/s/.p2pshare-cache",
            "/s/.p2pshare-cache.withdrawn",
            "/s/.0123.p2pshare-part",
            "/elsewhere/file",
        ] {
            let e = notify::Event::new(EventKind::Create(CreateKind::File)).add_path(p.into());
            w.handle(now, Ok(e));
        }
        assert!(w.debouncer.is_empty());
        let e = notify::Event::new(EventKind::Create(CreateKind::File)).add_path("/s/a".into());
        w.handle(now, Ok(e));
        assert_eq!(w.debouncer.len(), 1);
    }
}
