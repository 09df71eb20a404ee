//! The output to the person: results on stdout, notes and errors on stderr, and the progress
//! bar (drawn by `indicatif` on stderr, only when stderr is a terminal); or, with `--json`,
//! every line as one JSON object on stdout. What is said is a [`Line`] (a result, an event, a
//! note or an error, with its data, not its text); how it is written is [`render`]'s.
//!
//! Two halves. [`Output`] is the sans-IO queue the role machines write to: it holds
//! [`Line`]s in the order they were produced and never blocks. [`Writer`] is its I/O side:
//! a thread that owns stdout and stderr and writes what it is handed through a bounded
//! channel, so a person (or a pipe) reading slowly never stalls the reactor thread and the
//! uploads it serves.
//!
//! # Invariants
//! - Nothing on the reactor thread writes to stdout or stderr: it only moves lines into the
//!   channel with `try_send`. (The one exception is the log, `--log info` and above, which
//!   `env_logger` writes to stderr directly; by default the peer logs only warnings.)
//! - When the channel is full the reactor does not retry until the writer wakes it: a
//!   reader that never reads costs the loop nothing.
//! - At exit the writer gets a bounded time to write what is left ([`Writer::finish`]).
//! - Results and errors are never dropped. When the channel is full they wait in [`Output`];
//!   once that backlog passes [`BACKLOG_HIGH_WATER`] lines, the command runner starts no new
//!   console command until it drains (back-pressure on the console, never on the sockets).
//!   The writer thread wakes the reactor when it makes room, so the backlog is retried.
//! - Progress lines are best effort: a progress update that finds the channel full is
//!   dropped (the next one carries the newer position), and a queued update is replaced by a
//!   newer one rather than queued behind it.
//! - Notes (background events: the index going away, scan warnings) are bounded too: past
//!   [`MAX_BACKLOG_LINES`] queued lines a note is counted and dropped, and the count is said
//!   once there is room again.
//! - Lines reach the person in the order they were produced.
//! - Every error said is counted ([`Output::errors`]): a console run from a pipe or a file
//!   exits with status 1 if there was any.

use super::render::{
    self, DownloadStatus, FileRow, LookupPage, Saved, SearchPage, ShareSummary, StatusReport,
};
pub use super::render::{Stream, Style};
use crate::wire::FileHash;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Lines the writer thread's channel holds before `try_send` reports it full.
const CHANNEL_LINES: usize = 64;
/// Backlog (lines waiting for room in the channel) at which no new console command starts.
pub const BACKLOG_HIGH_WATER: usize = 16;
/// Backlog past which notes are dropped (counted) instead of queued.
const MAX_BACKLOG_LINES: usize = 1024;
/// How often [`Writer::finish`] looks again at a full channel or a writer still writing
/// (nothing else can be waited on: the writer may be stuck in a write to a pipe).
const FINISH_POLL: Duration = Duration::from_millis(10);

/// One thing to tell the person: a command's result, a progress event, a note or an error.
/// How each is written (text or JSON) is [`render`]'s; see the module docs there.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// `help`: the command list (stdout).
    Help,
    /// A page of search results (stdout).
    Search(SearchPage),
    /// A page of a lookup's files and holders (stdout).
    Lookup(LookupPage),
    /// `files`: what this peer shares (stdout).
    Files {
        /// The files.
        files: Vec<FileRow>,
        /// Bytes in them.
        bytes: u64,
    },
    /// What the peer shares after a scan: the result of `register` (stdout), or the start-up
    /// scan's note (stderr).
    Sharing {
        /// The counts.
        summary: ShareSummary,
        /// A command's result (else a note).
        result: bool,
    },
    /// `unregister`: the file withdrawn (stdout).
    Unregistered {
        /// Its hash.
        hash: FileHash,
        /// The names it was shared under.
        names: Vec<String>,
    },
    /// `status` (stdout).
    Status(Box<StatusReport>),
    /// A download verified and landed (stdout).
    Saved(Saved),
    /// `get` of a file this peer already has (stdout).
    AlreadyHave {
        /// Where it is.
        path: PathBuf,
        /// Its hash.
        hash: FileHash,
        /// Its size in bytes.
        size: u64,
    },
    /// The file server listens here (stderr).
    Serving {
        /// Its address (none: `--listen none`, the peer serves only through pushes).
        addr: Option<SocketAddr>,
    },
    /// Metrics are served here (stderr).
    Metrics {
        /// The address of the HTTP listener.
        addr: SocketAddr,
    },
    /// Hashing the share: how far (stderr).
    Hashing {
        /// Files whose hash is known.
        files_done: u64,
        /// Files found.
        files: u64,
        /// Bytes hashed or taken from the cache.
        bytes_done: u64,
        /// Bytes in the files found.
        bytes: u64,
    },
    /// The index session is up again after being down (stderr).
    IndexUp {
        /// The index, as given.
        index: String,
    },
    /// The index could not be reached, said once until it is up again (stderr).
    IndexDown {
        /// The index, as given.
        index: String,
        /// Why.
        reason: String,
        /// Whether a session had been up before (else: not connected yet).
        connected_before: bool,
    },
    /// A download connects to a holder (stderr, unless a bar shows progress).
    Trying {
        /// The file's name.
        name: String,
        /// Its size in bytes.
        size: u64,
        /// The holder.
        holder: SocketAddr,
    },
    /// A download resumes from its partial file (stderr).
    Resuming {
        /// The file's name.
        name: String,
        /// Bytes already there.
        have: u64,
        /// Bytes in the file.
        size: u64,
    },
    /// A download waits in a holder's upload queue (stderr).
    Queued {
        /// The file's name.
        name: String,
        /// The holder.
        holder: SocketAddr,
        /// 1-based place in its line.
        position: u32,
    },
    /// A holder was dropped from a download: it lied (bytes that failed verification), or
    /// stalled, refused or went away; its pieces go to the other holders (stderr).
    Dropped {
        /// The file's name.
        name: String,
        /// The holder.
        holder: SocketAddr,
        /// Why.
        why: String,
        /// It sent bytes that failed verification (never asked again).
        liar: bool,
    },
    /// `get -b`: the download runs in the background (stdout).
    Started {
        /// The file's name.
        name: String,
        /// Its hash.
        hash: FileHash,
        /// Its size in bytes.
        size: u64,
    },
    /// `downloads`: what is running (stdout).
    Downloads(Vec<DownloadStatus>),
    /// A download's progress: the bar is drawn (or moved) on stderr; in JSON, an event.
    Progress {
        /// What is downloading.
        name: String,
        /// Bytes on disk.
        done: u64,
        /// Bytes in the file.
        total: u64,
    },
    /// The download ended: the bar is cleared.
    ProgressEnd,
    /// A note on stderr, as is.
    Note(String),
    /// A warning on stderr, as `warning: TEXT`.
    Warning(String),
    /// An error on stderr, as `error: TEXT`; it makes a piped console exit with status 1.
    Error(String),
    /// A `get` of this hash failed: written as an [`Line::Error`] (with the hash in JSON,
    /// so that a program or the web page knows which download it ends).
    Failed {
        /// The file's hash.
        hash: FileHash,
        /// Why, as the error says it.
        message: String,
    },
}

impl Line {
    /// Whether the line is a background note that may be dropped (counted) when output is
    /// slow; results, errors and a command's own events are never dropped.
    fn is_note(&self) -> bool {
        matches!(
            self,
            Line::Note(_)
                | Line::Warning(_)
                | Line::Hashing { .. }
                | Line::IndexUp { .. }
                | Line::IndexDown { .. }
                | Line::Sharing { result: false, .. }
        )
    }
}

/// How the writer writes lines: text for people, or JSON for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text: results on stdout, the rest on stderr.
    Text(Style),
    /// One JSON object per line, everything on stdout.
    Json,
}

/// The queue the machines write to; see the module docs.
#[derive(Debug, Default)]
pub struct Output {
    queue: VecDeque<Line>,
    /// Whether progress lines are wanted at all (a bar on a terminal, or JSON).
    progress: bool,
    /// Notes dropped since the backlog overflowed; said once there is room.
    notes_dropped: u64,
    /// Errors said so far (a piped console exits with status 1 if any).
    errors: u64,
    /// With the web page on: a copy of each result, note and error for its event stream,
    /// at most [`MAX_TAPPED_LINES`] (the oldest go first; the page is told lines, not owed
    /// them).
    tap: Option<VecDeque<Line>>,
}

/// Lines the web page's copy holds between two turns at most.
const MAX_TAPPED_LINES: usize = 256;

impl Output {
    /// An empty queue; progress lines are kept only with `progress`.
    pub fn new(progress: bool) -> Output {
        Output {
            progress,
            ..Output::default()
        }
    }

    /// Whether progress lines are produced.
    pub fn shows_progress(&self) -> bool {
        self.progress
    }

    /// A line for the person. A note is dropped (and counted) while the backlog is over its
    /// bound; anything else is always kept.
    pub fn say(&mut self, line: Line) {
        if line.is_note() {
            if self.queue.len() >= MAX_BACKLOG_LINES {
                self.notes_dropped += 1;
                return;
            }
            if self.notes_dropped > 0 {
                let n = std::mem::take(&mut self.notes_dropped);
                self.queue
                    .push_back(Line::Note(format!("({n} notes dropped: output was slow)")));
            }
        }
        if let Line::Error(_) | Line::Failed { .. } = line {
            self.errors += 1;
        }
        self.push(line);
    }

    /// Keeps a copy of every line said from now on ([`Output::poll_tapped`]).
    pub fn set_tap(&mut self) {
        self.tap.get_or_insert_with(VecDeque::new);
    }

    /// The next copied line, oldest first.
    pub fn poll_tapped(&mut self) -> Option<Line> {
        self.tap.as_mut()?.pop_front()
    }

    fn push(&mut self, line: Line) {
        if let Some(tap) = &mut self.tap {
            if tap.len() >= MAX_TAPPED_LINES {
                tap.pop_front();
            }
            tap.push_back(line.clone());
        }
        self.queue.push_back(line);
    }

    /// An error for stderr (`error: ` is added).
    pub fn error(&mut self, text: impl Into<String>) {
        self.say(Line::Error(text.into()));
    }

    /// A note for stderr, dropped (and counted) while the backlog is over its bound.
    pub fn note(&mut self, text: impl Into<String>) {
        self.say(Line::Note(text.into()));
    }

    /// A warning for stderr (`warning: ` is added), dropped like a note.
    pub fn warning(&mut self, text: impl Into<String>) {
        self.say(Line::Warning(text.into()));
    }

    /// How many errors were said.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// A download's position; replaces a progress line still queued.
    pub fn progress(&mut self, name: &str, done: u64, total: u64) {
        if !self.progress {
            return;
        }
        let line = Line::Progress {
            name: name.to_string(),
            done,
            total,
        };
        match self.queue.back_mut() {
            Some(last @ Line::Progress { .. }) => *last = line,
            _ => self.queue.push_back(line),
        }
    }

    /// The download ended: clear the bar.
    pub fn progress_end(&mut self) {
        if self.progress {
            self.queue.push_back(Line::ProgressEnd);
        }
    }

    /// The next line to hand to the writer.
    pub fn poll_line(&mut self) -> Option<Line> {
        self.queue.pop_front()
    }

    /// Puts back a line the writer had no room for; it stays first.
    pub fn unpoll(&mut self, line: Line) {
        self.queue.push_front(line);
    }

    /// Lines waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether so much waits that no new console command should start.
    pub fn is_backed_up(&self) -> bool {
        self.queue.len() >= BACKLOG_HIGH_WATER
    }
}

/// The I/O side: the writer thread and the channel to it.
pub struct Writer {
    tx: Option<SyncSender<Line>>,
    /// Set by the reactor when the channel was full; the writer wakes it after making room.
    waiting: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread. `wake` is called (from that thread) when the channel has
    /// room again after [`Writer::drain`] found it full. Lines are written in `format`; with
    /// text whose style has `bar`, progress is drawn as a bar on stderr.
    pub fn spawn(format: Format, wake: impl Fn() + Send + 'static) -> io::Result<Writer> {
        let (tx, rx) = mpsc::sync_channel(CHANNEL_LINES);
        let waiting = Arc::new(AtomicBool::new(false));
        let theirs = waiting.clone();
        let thread = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || write_lines(rx, format, &theirs, &wake))?;
        Ok(Writer {
            tx: Some(tx),
            waiting,
            thread: Some(thread),
        })
    }

    /// Moves queued lines into the channel without blocking; what does not fit stays queued.
    /// Returns whether lines are left waiting for room: the writer wakes the reactor once it
    /// has made some, so the caller need not (and must not spin to) try again before.
    pub fn drain(&self, output: &mut Output) -> bool {
        let Some(tx) = &self.tx else { return false };
        while let Some(line) = output.poll_line() {
            match tx.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(Line::Progress { .. })) => {}
                Err(TrySendError::Full(line)) => {
                    self.waiting.store(true, Ordering::SeqCst);
                    // The writer may have emptied the channel before it could see the flag:
                    // try once more, so a wake is never missed.
                    match tx.try_send(line) {
                        Ok(()) => continue,
                        Err(TrySendError::Full(line)) => {
                            output.unpoll(line);
                            return true;
                        }
                        Err(TrySendError::Disconnected(_)) => return false,
                    }
                }
                // The writer is gone (it cannot fail short of a panic): nothing can be said.
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        false
    }

    /// Hands over everything left and waits for the writer to write it all (the reactor has
    /// stopped), for at most `patience`: a reader that never reads (a stopped pager, a pipe
    /// into a process that does not read) must not keep the peer from exiting. Returns
    /// whether everything was written.
    pub fn finish(mut self, output: &mut Output, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        let Some(tx) = self.tx.take() else {
            return true;
        };
        while let Some(line) = output.poll_line() {
            let mut line = line;
            loop {
                match tx.try_send(line) {
                    Ok(()) => break,
                    Err(TrySendError::Disconnected(_)) => return false,
                    Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                        line = back;
                        std::thread::sleep(FINISH_POLL);
                    }
                    // Out of patience: what is left is dropped, and the writer thread (stuck
                    // in a write) ends with the process.
                    Err(TrySendError::Full(_)) => return false,
                }
            }
        }
        drop(tx);
        let Some(thread) = self.thread.take() else {
            return true;
        };
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(FINISH_POLL);
        }
        thread.join().is_ok()
    }
}

/// The writer thread: writes each line as it comes, until the channel closes.
fn write_lines(rx: Receiver<Line>, format: Format, waiting: &AtomicBool, wake: &dyn Fn()) {
    let mut progress: Option<indicatif::ProgressBar> = None;
    for line in rx {
        if waiting.swap(false, Ordering::SeqCst) {
            wake();
        }
        // Errors writing to the person (a closed pipe) cannot be reported anywhere better.
        let style = match format {
            Format::Json => {
                if let Some(v) = render::json(&line) {
                    let mut out = io::stdout().lock();
                    let _ = serde_json::to_writer(&mut out, &v);
                    let _ = out.write_all(b"\n");
                    let _ = out.flush();
                }
                continue;
            }
            Format::Text(style) => style,
        };
        match &line {
            Line::Progress { name, done, total } if style.bar => {
                let pb = progress.get_or_insert_with(|| new_bar(name, *total));
                pb.set_position(*done);
                continue;
            }
            Line::ProgressEnd => {
                if let Some(pb) = progress.take() {
                    pb.finish_and_clear();
                }
                continue;
            }
            _ => {}
        }
        let Some((stream, text)) = render::text(&line, style) else {
            continue;
        };
        print_over(&progress, || match stream {
            Stream::Stdout => {
                let mut out = io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                if !text.ends_with('\n') {
                    let _ = out.write_all(b"\n");
                }
                let _ = out.flush();
            }
            Stream::Stderr => {
                let _ = writeln!(io::stderr().lock(), "{text}");
            }
        });
    }
    if let Some(pb) = progress.take() {
        pb.finish_and_clear();
    }
}

/// Runs `print` with the bar (if any) lifted off the terminal, so text never mixes with it.
fn print_over(bar: &Option<indicatif::ProgressBar>, print: impl FnOnce()) {
    match bar {
        Some(pb) => pb.suspend(print),
        None => print(),
    }
}

fn new_bar(name: &str, total: u64) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:30} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("#> ");
    pb.set_style(style);
    pb.set_prefix(
        super::display_name(name)
            .chars()
            .take(30)
            .collect::<String>(),
    );
    pb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_kept_in_order_and_progress_is_coalesced() {
        let mut out = Output::new(true);
        out.error("a");
        out.progress("f", 1, 10);
        out.progress("f", 2, 10);
        out.error("b");
        let lines: Vec<Line> = std::iter::from_fn(|| out.poll_line()).collect();
        assert_eq!(
            lines,
            vec![
                Line::Error("a".into()),
                Line::Progress {
                    name: "f".into(),
                    done: 2,
                    total: 10
                },
                Line::Error("b".into()),
            ]
        );
    }

    #[test]
    fn notes_past_the_bound_are_counted_then_said() {
        let mut out = Output::new(false);
        for i in 0..MAX_BACKLOG_LINES + 5 {
            out.note(format!("n{i}"));
        }
        assert!(out.is_backed_up());
        while out.poll_line().is_some() {}
        out.note("after");
        assert_eq!(
            out.poll_line(),
            Some(Line::Note("(5 notes dropped: output was slow)".into()))
        );
        assert_eq!(out.poll_line(), Some(Line::Note("after".into())));
    }

    #[test]
    fn a_full_channel_keeps_results_and_drops_progress() {
        let mut out = Output::new(true);
        // A writer that never writes: the channel fills.
        let (tx, _rx) = mpsc::sync_channel(1);
        let writer = Writer {
            tx: Some(tx),
            waiting: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        out.error("first");
        out.error("second");
        assert!(writer.drain(&mut out), "a line waits for room");
        assert_eq!(out.poll_line(), Some(Line::Error("second".into())));
        assert!(writer.waiting.load(Ordering::SeqCst));
        out.progress("f", 1, 2);
        assert!(
            !writer.drain(&mut out),
            "nothing waits: the progress line was dropped"
        );
        assert_eq!(out.poll_line(), None, "progress is dropped, not queued");
    }

    #[test]
    fn finish_gives_up_on_a_reader_that_never_reads() {
        let mut out = Output::new(false);
        // A writer thread stuck in a write, as on a pipe nobody reads: it holds the channel's
        // receiver and never takes from it.
        let (tx, rx) = mpsc::sync_channel(1);
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = release_rx.recv();
            drop(rx);
        });
        let writer = Writer {
            tx: Some(tx),
            waiting: Arc::new(AtomicBool::new(false)),
            thread: Some(thread),
        };
        for i in 0..5 {
            out.error(format!("line {i}"));
        }
        assert!(!writer.finish(&mut out, Duration::from_millis(50)));
        release_tx.send(()).unwrap();
    }
}
