//! The peer's console language: one command per line, parsed without I/O.
//!
//! Every line from stdin goes through [`parse`]; a line that is not a command yields a
//! [`ParseError`] with a sentence for the person (the peer prints it and goes on). Blank lines and
//! lines starting with `#` are ignored, so command files can carry comments.

use crate::wire::{self, FileHash, FileKind, SearchFilter};
use std::fmt;

/// How a person names a file: a full hash, a hash prefix, or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// 64 hex digits.
    Hash(FileHash),
    /// 8 to 63 hex digits; may also be a file name (tried second).
    HashPrefix(String),
    /// Anything else: an exact file name.
    Name(String),
}

impl Target {
    /// Reads the rest of a command line as a target. A name may contain spaces.
    pub fn parse(s: &str) -> Target {
        if s.len() == 64 {
            if let Ok(h) = s.parse::<FileHash>() {
                return Target::Hash(h);
            }
        }
        if wire::is_hex_prefix(s) {
            return Target::HashPrefix(s.to_ascii_lowercase());
        }
        Target::Name(s.to_string())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Hash(h) => write!(f, "{h}"),
            Target::HashPrefix(p) => f.write_str(p),
            Target::Name(n) => f.write_str(&crate::peer::display_name(n)),
        }
    }
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `help`
    Help,
    /// `search WORDS... [FILTERS]`
    Search {
        /// The words, separated by single spaces.
        query: String,
        /// The filters typed after or among them.
        filter: SearchFilter,
    },
    /// `lookup NAME|HASH`
    Lookup(Target),
    /// `more`: the next page of the last search, or of the last lookup of a name borne by
    /// more files than one answer holds, whichever came last.
    More,
    /// `get [-b] NAME|HASH [N]`: from every holder of the lookup at once (holder N first).
    Get {
        /// What to download.
        target: Target,
        /// 1-based holder number from the lookup.
        holder: Option<usize>,
        /// `-b`: in the background (the console goes on once the download started).
        background: bool,
    },
    /// `downloads`: the downloads running.
    Downloads,
    /// `files`
    Files,
    /// `register [PATH...]`: rescan the share, or add these paths.
    Register(Vec<String>),
    /// `unregister NAME|HASH`
    Unregister(Target),
    /// `status`
    Status,
    /// `quit`
    Quit,
}

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// The `help` text.
pub const HELP: &str = "\
commands:
  search WORDS... [FILTERS]
                         find files whose names contain every word (or a word prefix);
                         filters: ext:flac,mp3  type:audio|video|image|document|archive|program
                         size>10M  size<1G  size:10M..1G  holders>=2  (K M G T: powers of 1024)
  lookup NAME|HASH       list the peers holding a file, numbered (a name many files bear:
                         the first 100, most holders first)
  more                   the next page of the last search or name lookup that had more
  get NAME|HASH [N]      download a file from all its holders at once (holder N of the
                         lookup first), waiting for it
  get -b NAME|HASH [N]   the same in the background: the next command runs at once
  downloads              the downloads running: name, size, done, rate, sources
  files                  list the files this peer shares
  register [PATH...]     rescan the shared directory, or share these files too
  unregister NAME|HASH   stop sharing a file
  status                 index connection, files shared, transfers in progress
  help                   this text
  quit                   leave (also at end of input)
HASH is 64 hex digits; a unique prefix of 8 or more is accepted.";

/// Parses one line. `Ok(None)` for a blank or comment line.
pub fn parse(line: &str) -> Result<Option<Command>, ParseError> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    let need = |what: &str| -> Result<&str, ParseError> {
        if rest.is_empty() {
            Err(ParseError(format!("usage: {word} {what}")))
        } else {
            Ok(rest)
        }
    };
    let no_args = |cmd: Command| -> Result<Option<Command>, ParseError> {
        if rest.is_empty() {
            Ok(Some(cmd))
        } else {
            Err(ParseError(format!("{word} takes no arguments")))
        }
    };
    match word.to_ascii_lowercase().as_str() {
        "help" | "?" => no_args(Command::Help),
        "search" => parse_search(need("WORDS... [FILTERS]")?).map(Some),
        "more" => no_args(Command::More),
        "lookup" => Ok(Some(Command::Lookup(Target::parse(need("NAME|HASH")?)))),
        "get" | "obtain" => {
            let arg = need("[-b] NAME|HASH [N]")?;
            // `-b` first: in the background. (A file called "-b" is `get ./-b`... or its hash.)
            let (background, arg) = match arg.split_once(char::is_whitespace) {
                Some(("-b", rest)) if !rest.trim().is_empty() => (true, rest.trim()),
                _ => (false, arg),
            };
            // A trailing number is a holder choice, unless the whole argument is one token
            // (a file may well be called "42").
            let (target, holder) = match arg.rsplit_once(char::is_whitespace) {
                Some((t, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                    let n: usize = n
                        .parse()
                        .map_err(|_| ParseError(format!("holder number too large: {n}")))?;
                    if n == 0 {
                        return Err(ParseError("holders are numbered from 1".into()));
                    }
                    (t.trim_end(), Some(n))
                }
                _ => (arg, None),
            };
            Ok(Some(Command::Get {
                target: Target::parse(target),
                holder,
                background,
            }))
        }
        "downloads" => no_args(Command::Downloads),
        "files" | "ls" => no_args(Command::Files),
        "register" => Ok(Some(Command::Register(
            rest.split_whitespace().map(str::to_string).collect(),
        ))),
        "unregister" => Ok(Some(Command::Unregister(Target::parse(need("NAME|HASH")?)))),
        "status" => no_args(Command::Status),
        "quit" | "exit" | "bye" => no_args(Command::Quit),
        _ => Err(ParseError(format!(
            "unknown command {:?}; type help for the list",
            crate::peer::display_name(word)
        ))),
    }
}

/// Reads `search`'s arguments: words, and filters anywhere among them (see [`HELP`]).
fn parse_search(args: &str) -> Result<Command, ParseError> {
    let mut words: Vec<&str> = Vec::new();
    let mut filter = SearchFilter::default();
    let bad = |tok: &str, why: &str| {
        ParseError(format!(
            "search filter {}: {why}",
            crate::peer::display_name(tok)
        ))
    };
    for tok in args.split_whitespace() {
        let lower = tok.to_ascii_lowercase();
        if let Some(list) = lower.strip_prefix("ext:") {
            for e in list.split(',').map(|e| e.trim_start_matches('.')) {
                if e.is_empty() || e.len() > SearchFilter::MAX_EXT_BYTES {
                    return Err(bad(tok, "expected ext:flac or ext:flac,mp3"));
                }
                filter.exts.push(e.to_string());
            }
            if filter.exts.len() > SearchFilter::MAX_EXTS {
                return Err(bad(tok, "too many extensions"));
            }
        } else if let Some(kind) = lower
            .strip_prefix("type:")
            .or_else(|| lower.strip_prefix("kind:"))
        {
            let names: Vec<&str> = FileKind::ALL.iter().map(|k| k.name()).collect();
            filter.kind = Some(
                kind.parse()
                    .map_err(|()| bad(tok, &format!("expected one of {}", names.join(", "))))?,
            );
        } else if let Some(cond) = lower.strip_prefix("size").filter(|c| is_bound(c)) {
            let (min, max) = parse_bound(cond, parse_size)
                .ok_or_else(|| bad(tok, "expected size>10M, size<1G or size:10M..1G"))?;
            filter.min_size = filter.min_size.max(min);
            filter.max_size = Some(filter.max_size.unwrap_or(u64::MAX).min(max));
            if filter.max_size == Some(u64::MAX) {
                filter.max_size = None;
            }
        } else if let Some(cond) = lower.strip_prefix("holders").filter(|c| is_bound(c)) {
            let (min, _) = parse_bound(cond, |n| n.parse::<u64>().ok())
                .filter(|&(_, max)| max == u64::MAX)
                .ok_or_else(|| bad(tok, "expected holders>=2"))?;
            filter.min_holders = filter.min_holders.max(min.min(u64::from(u32::MAX)) as u32);
        } else {
            words.push(tok);
        }
    }
    if filter.max_size.is_some_and(|m| m < filter.min_size) {
        return Err(ParseError("search: the size range is empty".into()));
    }
    if words.is_empty() && filter != SearchFilter::default() {
        return Err(ParseError(
            "search: filters narrow a search by words; give at least one word too \
             (e.g. `search live ext:flac`)"
                .into(),
        ));
    }
    if words.is_empty() {
        return Err(ParseError("usage: search WORDS... [FILTERS]".into()));
    }
    Ok(Command::Search {
        query: words.join(" "),
        filter,
    })
}

/// Whether a word after `size` or `holders` is a bound (else the word is a search word:
/// `sizes` is one).
fn is_bound(cond: &str) -> bool {
    cond.starts_with(['>', '<', ':', '='])
}

/// A bound after a filter's name: `>N`, `>=N`, `<N`, `<=N`, `=N`, `:N`, `:A..B` (either side
/// may be left out), as an inclusive range.
fn parse_bound(cond: &str, num: impl Fn(&str) -> Option<u64>) -> Option<(u64, u64)> {
    if let Some(n) = cond.strip_prefix(">=") {
        Some((num(n)?, u64::MAX))
    } else if let Some(n) = cond.strip_prefix('>') {
        Some((num(n)?.checked_add(1)?, u64::MAX))
    } else if let Some(n) = cond.strip_prefix("<=") {
        Some((0, num(n)?))
    } else if let Some(n) = cond.strip_prefix('<') {
        Some((0, num(n)?.checked_sub(1)?))
    } else if let Some(r) = cond.strip_prefix(':').or_else(|| cond.strip_prefix('=')) {
        match r.split_once("..") {
            Some((a, b)) => {
                let lo = if a.is_empty() { 0 } else { num(a)? };
                let hi = if b.is_empty() { u64::MAX } else { num(b)? };
                Some((lo, hi))
            }
            None => {
                let n = num(r)?;
                Some((n, n))
            }
        }
    } else {
        None
    }
}

/// A size: digits (a decimal point allowed) and an optional unit K, M, G or T (powers of 1024,
/// an optional `B` or `iB` after it).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim_end_matches('b').trim_end_matches('i');
    let (digits, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let mult: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let value: f64 = digits.parse().ok()?;
    let bytes = value * mult as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Fuzzing entry point (`fuzz/fuzz_targets/console.rs`): parses every line of `data`. Parsing
/// never panics, surrounding blanks change nothing, and whatever is printed back (errors,
/// targets) is one line without control characters.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        let parsed = parse(line);
        assert_eq!(parse(&format!(" \t{line}  ")), parsed);
        let printable = |s: &str| !s.chars().any(char::is_control);
        match parsed {
            Ok(None) => {}
            Err(e) => assert!(printable(&e.0), "{e:?}"),
            Ok(Some(cmd)) => {
                let target = match &cmd {
                    Command::Search { query, filter } => {
                        assert!(!query.is_empty() && filter.is_valid());
                        None
                    }
                    Command::Get { target, holder, .. } => {
                        assert_ne!(*holder, Some(0));
                        Some(target)
                    }
                    Command::Lookup(t) | Command::Unregister(t) => Some(t),
                    Command::Register(paths) => {
                        assert!(paths.iter().all(|p| !p.is_empty()));
                        None
                    }
                    _ => None,
                };
                if let Some(t) = target {
                    assert!(printable(&t.to_string()), "{t:?}");
                    match t {
                        Target::Name(n) => assert!(!n.is_empty() && n.trim() == n),
                        Target::HashPrefix(p) => assert!(wire::is_hex_prefix(p)),
                        Target::Hash(_) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).unwrap().unwrap()
    }

    #[test]
    fn commands() {
        assert_eq!(parse("   "), Ok(None));
        assert_eq!(parse("# a comment"), Ok(None));
        assert_eq!(ok("help"), Command::Help);
        assert_eq!(
            ok("SEARCH zeb  cross "),
            Command::Search {
                query: "zeb cross".into(),
                filter: SearchFilter::default()
            }
        );
        assert_eq!(ok("files"), Command::Files);
        assert_eq!(ok("status"), Command::Status);
        assert_eq!(ok("more"), Command::More);
        assert_eq!(ok("MORE"), Command::More);
        assert_eq!(ok("quit"), Command::Quit);
        assert_eq!(ok("register"), Command::Register(vec![]));
        assert_eq!(
            ok("register a b"),
            Command::Register(vec!["a".into(), "b".into()])
        );
        assert!(parse("search").is_err());
        assert!(parse("status now").is_err());
        assert!(parse("frobnicate").is_err());
    }

    #[test]
    fn search_filters() {
        let search = |line: &str| match ok(line) {
            Command::Search { query, filter } => (query, filter),
            other => panic!("{other:?}"),
        };
        let (q, f) = search("search zebra ext:flac size>10M holders>=2");
        assert_eq!(q, "zebra");
        assert_eq!(
            f,
            SearchFilter {
                min_size: (10 << 20) + 1,
                max_size: None,
                exts: vec!["flac".into()],
                kind: None,
                min_holders: 2,
            }
        );
        let (q, f) = search("search type:Audio live size:1.5k..1G ext:.MP3,ogg zebra");
        assert_eq!(q, "live zebra");
        assert_eq!(f.kind, Some(FileKind::Audio));
        assert_eq!((f.min_size, f.max_size), (1536, Some(1 << 30)));
        assert_eq!(f.exts, ["mp3", "ogg"]);
        let (_, f) = search("search x size<1G size>=2MB holders>1");
        assert_eq!(
            (f.min_size, f.max_size, f.min_holders),
            (2 << 20, Some((1 << 30) - 1), 2)
        );
        for line in [
            "search ext:flac",
            "search x type:smell",
            "search x size>lots",
            "search x size>1Q",
            "search x size<0",
            "search x size>2G size<1G",
            "search x holders<3",
            "search x ext:",
            "search x size>99999999999T",
        ] {
            assert!(parse(line).is_err(), "{line}");
        }
        assert_eq!(search("search size holders sizes").0, "size holders sizes");
        // Filters alone: told to add a word, not just shown the usage.
        let why = parse("search ext:md type:document").unwrap_err().0;
        assert!(why.contains("at least one word"), "{why}");
        assert_eq!(
            parse("search").unwrap_err().0,
            "usage: search WORDS... [FILTERS]"
        );
    }

    #[test]
    fn targets() {
        let h = FileHash::of(b"x");
        assert_eq!(ok(&format!("lookup {h}")), Command::Lookup(Target::Hash(h)));
        let upper = h.to_hex().to_uppercase();
        assert_eq!(
            ok(&format!("lookup {upper}")),
            Command::Lookup(Target::Hash(h))
        );
        assert_eq!(
            ok("lookup DEADBEEF"),
            Command::Lookup(Target::HashPrefix("deadbeef".into()))
        );
        assert_eq!(
            ok("lookup my song.mp3"),
            Command::Lookup(Target::Name("my song.mp3".into()))
        );
        assert_eq!(
            ok("unregister deadbee"),
            Command::Unregister(Target::Name("deadbee".into()))
        );
    }

    #[test]
    fn get_holder_numbers() {
        assert_eq!(
            ok("get my song.mp3 2"),
            Command::Get {
                target: Target::Name("my song.mp3".into()),
                holder: Some(2),
                background: false,
            }
        );
        assert_eq!(
            ok("get 42"),
            Command::Get {
                target: Target::Name("42".into()),
                holder: None,
                background: false,
            }
        );
        assert_eq!(
            ok("get deadbeef01 1"),
            Command::Get {
                target: Target::HashPrefix("deadbeef01".into()),
                holder: Some(1),
                background: false,
            }
        );
        assert_eq!(
            ok("get -b my song.mp3 2"),
            Command::Get {
                target: Target::Name("my song.mp3".into()),
                holder: Some(2),
                background: true,
            }
        );
        // Alone, `-b` is a name.
        assert_eq!(
            ok("get -b"),
            Command::Get {
                target: Target::Name("-b".into()),
                holder: None,
                background: false,
            }
        );
        assert_eq!(ok("downloads"), Command::Downloads);
        assert!(parse("get x 0").is_err());
        assert!(parse("get x 99999999999999999999999").is_err());
    }

    #[test]
    fn hostile_lines_never_panic() {
        for line in [
            "get \u{0}",
            "lookup \r\r\n",
            "get  3",
            "\u{feff}help",
            "get é 1",
        ] {
            let _ = parse(line);
        }
    }
}
