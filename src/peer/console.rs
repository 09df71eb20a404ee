//! The peer's console language: one command per line, parsed without I/O.
//!
//! Every line from stdin goes through [`parse`]; a line that is not a command yields a
//! [`ParseError`] with a sentence for the person (the peer prints it and goes on). Blank lines and
//! lines starting with `#` are ignored, so command files can carry comments.

use crate::wire::{self, FileHash};
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
    /// `search WORDS...`
    Search(String),
    /// `lookup NAME|HASH`
    Lookup(Target),
    /// `more`: the next page of the last lookup of a name borne by more files than one
    /// answer holds.
    More,
    /// `get NAME|HASH [N]`: from holder N of the lookup, else the first that answers.
    Get {
        /// What to download.
        target: Target,
        /// 1-based holder number from the lookup.
        holder: Option<usize>,
    },
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
  search WORDS...        find files whose names contain every word (or a word prefix)
  lookup NAME|HASH       list the peers holding a file, numbered (a name many files bear:
                         the first 100, most holders first)
  more                   the next files of the last lookup
  get NAME|HASH [N]      download a file (from holder N of the lookup, else the first that answers)
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
        "search" => Ok(Some(Command::Search(need("WORDS...")?.to_string()))),
        "lookup" => Ok(Some(Command::Lookup(Target::parse(need("NAME|HASH")?)))),
        "more" => no_args(Command::More),
        "get" | "obtain" => {
            let arg = need("NAME|HASH [N]")?;
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
            }))
        }
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
                    Command::Search(words) => {
                        assert!(!words.is_empty());
                        None
                    }
                    Command::Get { target, holder } => {
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
            Command::Search("zeb  cross".into())
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
                holder: Some(2)
            }
        );
        assert_eq!(
            ok("get 42"),
            Command::Get {
                target: Target::Name("42".into()),
                holder: None
            }
        );
        assert_eq!(
            ok("get deadbeef01 1"),
            Command::Get {
                target: Target::HashPrefix("deadbeef01".into()),
                holder: Some(1)
            }
        );
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
