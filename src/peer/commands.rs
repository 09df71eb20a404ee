//! The command runner: console lines in, one command at a time out, and the text of their
//! results. Sans-IO: it is fed lines, the end of input and the answers of the index; it hands
//! commands to the peer ([`Commands::poll_command`]), which runs them on the other machines
//! and says what the command now waits for ([`Commands::wait`]) or that it finished.
//!
//! # Invariants
//! - Commands run in input order; a command that waits (on the index, a download, a scan)
//!   finishes before the next starts, so its output comes before the next one's.
//! - Startup is a wait like any other: no command runs before the first scan is done and
//!   registered (or the index is found unreachable).
//! - No command starts while the output to the person is backed up (see `output`): slow
//!   reading of stdout pauses the console, never the sockets.
//! - At the end of input (with a console) the peer quits once the running command finished.

use super::console::{self, Command, Target};
use super::output::{Line, Output};
use super::render::{LookupPage, SearchPage};
use crate::wire::{
    ErrorCode, HeldFile, LookupKey, LookupToken, ResponseBody, SearchCursor, SearchFilter,
};
use std::collections::VecDeque;

/// What the running command waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Startup: the first scan (`scanned` once it is done) and its registration.
    Startup {
        /// The first scan is done.
        scanned: bool,
    },
    /// A search answer.
    Search {
        /// The query, for `more`.
        query: String,
        /// The filter, for `more`.
        filter: SearchFilter,
    },
    /// A lookup answer; then a get (with the holder asked for) or the holders printed.
    Lookup {
        /// What was looked up.
        target: Target,
        /// `Some(holder)`: download it next.
        then_get: Option<Option<usize>>,
        /// The hex was already retried as a name (or this is a `more` page, asked by name).
        by_name_retry: bool,
        /// Files of the same lookup shown by earlier pages.
        shown: u64,
    },
    /// A download.
    Get,
    /// A scan started by `register`.
    Scan,
}

/// What the peer should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Run this command.
    Run(Command),
    /// Input ended and nothing runs: quit.
    Quit,
}

/// What an index answer leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// Ask the index again (hex that is no known hash, tried as a name).
    Lookup(LookupKey),
    /// Download one of these files (the runner now waits for [`Waiting::Get`] or a finish).
    Get {
        /// What the person named.
        target: Target,
        /// The lookup's answer.
        files: Vec<HeldFile>,
        /// Holder number asked for.
        holder: Option<usize>,
        /// How many files bear that name (`files` may hold only the first page of them).
        total: u64,
    },
}

/// Where `more` continues: the last lookup of a name whose answer had more files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MorePage {
    /// What the person looked up.
    pub target: Target,
    /// The name asked for.
    pub name: String,
    /// The index's continuation token.
    pub token: LookupToken,
    /// Files shown so far.
    pub shown: u64,
}

/// The runner; see the module docs.
#[derive(Debug)]
pub struct Commands {
    lines: VecDeque<String>,
    waiting: Option<Waiting>,
    input_done: bool,
    /// Quit at the end of input (false with `--serve`).
    console: bool,
    /// The last lookup's answer, for `get X N` after `lookup X`.
    last_lookup: Option<(Target, Vec<HeldFile>)>,
    /// `more` continues the last search or name lookup whose answer had more; at most one of
    /// these is set, the one of the latest such command.
    /// The last search with more results, and where they start.
    last_search: Option<(String, SearchFilter, SearchCursor)>,
    /// The last lookup of a name whose answer had more files.
    more: Option<MorePage>,
}

impl Commands {
    /// A runner that first waits for startup.
    pub fn new(console: bool) -> Commands {
        Commands {
            lines: VecDeque::new(),
            waiting: Some(Waiting::Startup { scanned: false }),
            input_done: false,
            console,
            last_lookup: None,
            last_search: None,
            more: None,
        }
    }

    /// A console line arrived.
    pub fn handle_line(&mut self, line: String) {
        self.lines.push_back(line);
    }

    /// The console's input ended.
    pub fn handle_input_end(&mut self) {
        self.input_done = true;
    }

    /// The next command to run, if none is running and the output has room. Lines that are
    /// not commands are answered with an error here.
    pub fn poll_command(&mut self, out: &mut Output) -> Option<Next> {
        while self.waiting.is_none() && !out.is_backed_up() {
            let Some(line) = self.lines.pop_front() else {
                return (self.input_done && self.console).then_some(Next::Quit);
            };
            match console::parse(&line) {
                Ok(None) => {}
                Ok(Some(cmd)) => return Some(Next::Run(cmd)),
                Err(e) => out.error(e.0),
            }
        }
        None
    }

    /// The command just handed out waits for `what`.
    pub fn wait(&mut self, what: Waiting) {
        self.waiting = Some(what);
    }

    /// What the running command waits for.
    pub fn waiting(&self) -> Option<&Waiting> {
        self.waiting.as_ref()
    }

    /// The running command is over.
    pub fn finish(&mut self) {
        self.waiting = None;
    }

    /// The first scan is done (startup then waits for its registration).
    pub fn handle_startup_scanned(&mut self) {
        if let Some(Waiting::Startup { scanned }) = &mut self.waiting {
            *scanned = true;
        }
    }

    /// Files remembered from `lookup X`, for `get X N`.
    pub fn remembered(&self, target: &Target) -> Option<Vec<HeldFile>> {
        match &self.last_lookup {
            Some((t, files)) if t == target => Some(files.clone()),
            _ => None,
        }
    }

    /// The next page of the last search, for `more`: its query, filter and cursor.
    pub fn continuation(&self) -> Option<(String, SearchFilter, SearchCursor)> {
        self.last_search.clone()
    }

    /// Where `more` continues after a lookup, if anywhere.
    pub fn more(&self) -> Option<&MorePage> {
        self.more.as_ref()
    }

    /// The index answered the running command.
    pub fn handle_answer(&mut self, body: ResponseBody, out: &mut Output) -> Option<Follow> {
        let waiting = self.waiting.take();
        match (waiting, body) {
            (
                Some(Waiting::Search { query, filter }),
                ResponseBody::SearchResults {
                    hits,
                    total,
                    total_exact,
                    next,
                    partial,
                    ..
                },
            ) => {
                let more = next.is_some();
                self.last_search = next.map(|c| (query.clone(), filter, c));
                self.more = None;
                out.say(Line::Search(SearchPage {
                    query,
                    hits,
                    total,
                    total_exact,
                    more,
                    partial,
                }));
                None
            }
            (Some(Waiting::Search { .. }), ResponseBody::Error { message, .. }) => {
                out.error(format!("search: {message}"));
                None
            }
            (
                Some(Waiting::Lookup {
                    target,
                    then_get,
                    shown,
                    ..
                }),
                ResponseBody::Holders {
                    files, total, next, ..
                },
            ) => match then_get {
                None => {
                    let last = shown + files.len() as u64;
                    out.say(Line::Lookup(LookupPage {
                        target: target.to_string(),
                        files: files.clone(),
                        shown_before: shown,
                        total,
                        more: next.is_some(),
                    }));
                    self.last_search = None;
                    self.more = next.and_then(|token| {
                        let name = match &target {
                            Target::Name(n) | Target::HashPrefix(n) => n.clone(),
                            Target::Hash(_) => return None,
                        };
                        Some(MorePage {
                            target: target.clone(),
                            name,
                            token,
                            shown: last,
                        })
                    });
                    self.last_lookup = Some((target, files));
                    None
                }
                Some(holder) => Some(Follow::Get {
                    target,
                    files,
                    holder,
                    total,
                }),
            },
            (
                Some(Waiting::Lookup {
                    target,
                    then_get,
                    by_name_retry,
                    shown,
                }),
                ResponseBody::Error { code, message },
            ) => {
                // Hex that is no known hash may still be a file's name.
                if code == ErrorCode::NotFound && !by_name_retry {
                    if let Target::HashPrefix(p) = &target {
                        let key = LookupKey::Name(p.clone());
                        self.waiting = Some(Waiting::Lookup {
                            target,
                            then_get,
                            by_name_retry: true,
                            shown,
                        });
                        return Some(Follow::Lookup(key));
                    }
                }
                let message = match code {
                    ErrorCode::NotFound => format!("no peer shares {target}"),
                    _ => format!("lookup {target}: {message}"),
                };
                match (&target, then_get) {
                    // A `get` by hash: the failure names the download it ends.
                    (Target::Hash(hash), Some(_)) => out.say(Line::Failed {
                        hash: *hash,
                        message,
                    }),
                    _ => out.error(message),
                }
                None
            }
            (
                Some(_),
                ResponseBody::RateLimited {
                    retry_after_ms,
                    banned,
                },
            ) => {
                let secs = retry_after_ms as f64 / 1000.0;
                out.error(if banned {
                    format!("index: our address is banned for {secs:.1} s (too many requests over its rate limits)")
                } else {
                    format!("index: rate limited: try again in {secs:.1} s")
                });
                None
            }
            (waiting, other) => {
                // Not an answer to what runs (cannot happen with one command at a time).
                log::warn!(target: "peer", "unexpected index answer: {other:?}");
                self.waiting = waiting;
                None
            }
        }
    }
}

/// What `lookup` and `get` ask the index for.
pub fn lookup_key(target: &Target) -> LookupKey {
    match target {
        Target::Hash(h) => LookupKey::Hash(*h),
        Target::HashPrefix(p) => LookupKey::HashPrefix(p.clone()),
        Target::Name(n) => LookupKey::Name(n.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_command_at_a_time_and_quit_after_the_last() {
        let mut out = Output::new(false);
        let mut c = Commands::new(true);
        c.handle_line("files".into());
        c.handle_line("bogus".into());
        c.handle_line("status".into());
        c.handle_input_end();
        assert_eq!(c.poll_command(&mut out), None, "startup runs first");
        c.finish();
        assert_eq!(c.poll_command(&mut out), Some(Next::Run(Command::Files)));
        c.wait(Waiting::Scan);
        assert_eq!(c.poll_command(&mut out), None);
        c.finish();
        assert_eq!(c.poll_command(&mut out), Some(Next::Run(Command::Status)));
        assert!(
            matches!(out.poll_line(), Some(super::super::output::Line::Error(e)) if e.contains("unknown"))
        );
        assert_eq!(c.poll_command(&mut out), Some(Next::Quit));
    }

    #[test]
    fn a_backed_up_output_pauses_the_console() {
        let mut out = Output::new(false);
        let mut c = Commands::new(false);
        c.finish();
        for _ in 0..super::super::output::BACKLOG_HIGH_WATER {
            out.say(Line::Help);
        }
        c.handle_line("files".into());
        assert_eq!(c.poll_command(&mut out), None);
        while out.poll_line().is_some() {}
        assert_eq!(c.poll_command(&mut out), Some(Next::Run(Command::Files)));
    }
}
