//! The JSON of the web API. An answer is the object `peer --json` prints for the same
//! command, built by [`render::json`] (one definition of every field, so the API and
//! `--json` cannot drift apart); what only the page needs is added here: `next`, the opaque
//! token of a search's or lookup's next page ([`PageToken`]), and the bodies of the page's
//! requests. Names are as they are (as in `--json`): the page shows hidden characters
//! escaped, and sets every text as text, never as HTML.

use crate::peer::output::Line;
use crate::peer::render::{self, LookupPage, SearchPage};
use crate::wire::{LookupToken, SearchCursor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /api/search`: the console's search syntax (words and filters); with `next`, the
/// page after the answer that gave that token (to the same query).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// What the console's `search` takes.
    pub query: String,
    /// The `next` of the previous page's answer.
    #[serde(default)]
    pub next: Option<String>,
}

/// `POST /api/lookup`: a name, a hash or a hash prefix; with `next`, the page after the
/// answer that gave that token (to the same name).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    /// What the console's `lookup` takes.
    pub target: String,
    /// The `next` of the previous page's answer.
    #[serde(default)]
    pub next: Option<String>,
}

/// `POST /api/get` and `/api/unregister`: a file, by hash.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashBody {
    /// 64 hex digits.
    pub hash: String,
}

/// An error: what went wrong, in words for a person.
#[derive(Debug, Serialize)]
pub struct ErrorAnswer {
    /// The text.
    pub error: String,
}

/// `POST /api/get`, `/api/register`, `/api/unregister`: the command queued; its outcome
/// comes on the event stream.
#[derive(Debug, Serialize)]
pub struct QueuedAnswer {
    /// The console command it runs as.
    pub queued: String,
}

/// Where the next page of a search or lookup starts, as the page holds it: an opaque
/// string it hands back (`s-` and the index's search cursor; `l-`, the index's lookup
/// token and the files shown so far). Whatever a client makes of it, the index checks the
/// cursor against the query it continues; a malformed one is a 400 here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageToken {
    /// The next page of a search.
    Search(SearchCursor),
    /// The next page of a lookup by name, and how many files the pages before showed.
    Lookup(LookupToken, u64),
}

impl PageToken {
    /// The token's text.
    pub fn encode(&self) -> String {
        match self {
            PageToken::Search(c) => format!("s-{:02x}-{:08x}-{:08x}", c.whole, c.key, c.check),
            PageToken::Lookup(t, shown) => format!("l-{:032x}-{shown:x}", t.0),
        }
    }

    /// A token's text back, or `None` if it is not one.
    pub fn decode(text: &str) -> Option<PageToken> {
        let mut parts = text.split('-');
        let kind = parts.next()?;
        let hex: Vec<&str> = parts.collect();
        let ok = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_hexdigit())
        };
        match (kind, hex.as_slice()) {
            ("s", [w, k, c]) if ok(w, 2) && ok(k, 8) && ok(c, 8) => {
                Some(PageToken::Search(SearchCursor {
                    whole: u8::from_str_radix(w, 16).ok()?,
                    key: u32::from_str_radix(k, 16).ok()?,
                    check: u32::from_str_radix(c, 16).ok()?,
                }))
            }
            ("l", [t, s]) if ok(t, 32) && ok(s, 16) => Some(PageToken::Lookup(
                LookupToken(u128::from_str_radix(t, 16).ok()?),
                u64::from_str_radix(s, 16).ok()?,
            )),
            _ => None,
        }
    }
}

/// `POST /api/search`'s answer: `--json`'s `search` object and `next`.
pub fn search_answer(page: SearchPage, next: Option<SearchCursor>) -> Value {
    let mut v = render::json(&Line::Search(page)).unwrap_or_default();
    v["next"] = next.map(|c| PageToken::Search(c).encode()).into();
    v
}

/// `POST /api/lookup`'s answer: `--json`'s `lookup` object and `next`.
pub fn lookup_answer(page: LookupPage, next: Option<LookupToken>) -> Value {
    let shown = page.shown_before + page.files.len() as u64;
    let mut v = render::json(&Line::Lookup(page)).unwrap_or_default();
    v["next"] = next.map(|t| PageToken::Lookup(t, shown).encode()).into();
    v
}

/// The `line` event of a line the person is told: its `--json` object, with `text`, the
/// console's words for it (as a pipe gets them). `None` for what has neither (the end of
/// a progress bar).
pub fn line_event(line: &Line) -> Option<Value> {
    let mut v = render::json(line)?;
    let text = render::text(line, render::Style::default())
        .map(|(_, t)| t)
        .unwrap_or_default();
    v["text"] = text.into();
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FileHash, SearchHit};

    #[test]
    fn page_tokens_round_trip_and_junk_is_refused() {
        for t in [
            PageToken::Search(SearchCursor {
                whole: 0,
                key: 0,
                check: 0,
            }),
            PageToken::Search(SearchCursor {
                whole: u8::MAX,
                key: u32::MAX,
                check: 0x1234_5678,
            }),
            PageToken::Lookup(LookupToken(u128::MAX), u64::MAX),
            PageToken::Lookup(LookupToken(7), 100),
        ] {
            assert_eq!(PageToken::decode(&t.encode()), Some(t), "{}", t.encode());
        }
        for junk in [
            "",
            "s",
            "s-1-2",
            "s-1-2-3-4",
            "s-100-2-3",
            "s-1-123456789-3",
            "s-1-+2-3",
            "s--2-3",
            "l-1",
            "l-123456789012345678901234567890123-1",
            "x-1-2-3",
            "s-1-2-zz",
        ] {
            assert_eq!(PageToken::decode(junk), None, "{junk}");
        }
    }

    #[test]
    fn answers_are_the_json_lines_with_next() {
        let page = SearchPage {
            query: "zeb".into(),
            hits: vec![SearchHit {
                name: "Zebra.flac".into(),
                size: 9,
                hash: FileHash::of(b"z"),
                holders: 2,
            }],
            total: 40,
            total_exact: true,
            more: true,
            partial: false,
        };
        let cursor = SearchCursor {
            whole: 1,
            key: 2,
            check: 3,
        };
        let v = search_answer(page.clone(), Some(cursor));
        let mut line = render::json(&Line::Search(page)).unwrap();
        line["next"] = "s-01-00000002-00000003".into();
        assert_eq!(v, line);
        assert_eq!(v["hits"][0]["kind"], "audio");
        let v = line_event(&Line::Error("no".into())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "message": "no", "text": "error: no"})
        );
        assert_eq!(line_event(&Line::ProgressEnd), None);
    }
}
