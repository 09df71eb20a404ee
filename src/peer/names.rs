//! File names from the network are untrusted: this module turns them into one safe path
//! component, and picks a final name that never overwrites a different existing file.
//!
//! # Invariants
//! - [`sanitize`] returns a non-empty single path component: no `/` or `\`, no control or
//!   invisible format characters ([`is_hidden_char`]: bidirectional overrides such as U+202E
//!   would make `<U+202E>txt.exe` print as `exe.txt`), no leading dot (so no `.`/`..`, no hidden
//!   dotfiles like `.bashrc`), at most
//!   [`MAX_NAME_BYTES`] bytes. Joined to a directory it always names an entry *in* that
//!   directory.
//! - [`display_name`] makes any name printable on one line, with nothing invisible: control
//!   and format characters are escaped (`\u{202e}`).

use std::path::{Path, PathBuf};

/// Longest file name written, in bytes (Linux's NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;
/// What an untrusted name that sanitises to nothing becomes.
const FALLBACK_NAME: &str = "download";

/// Whether `c` is removed from saved names and escaped when printed: control characters,
/// invisible format characters (Unicode category Cf: bidirectional overrides and isolates,
/// zero-width spaces and joiners, the byte order mark, tags) and the line and paragraph
/// separators (Zl, Zp), which break a printed line.
pub fn is_hidden_char(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    c.is_control()
        || (!c.is_ascii()
            && matches!(
                c.general_category(),
                GeneralCategory::Format
                    | GeneralCategory::LineSeparator
                    | GeneralCategory::ParagraphSeparator
            ))
}

/// One safe path component from an untrusted name.
pub fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c == '/' || c == '\\' { '_' } else { c })
        .filter(|&c| !is_hidden_char(c))
        .collect();
    // Leading dots and spaces: hidden files, `.`, `..`, and names that look empty.
    let trimmed = out.trim_start_matches(['.', ' ']).trim_end();
    out = trimmed.to_string();
    if out.is_empty() {
        return FALLBACK_NAME.to_string();
    }
    // Cutting a long name can leave blanks at its end again.
    truncate_keeping_extension(&out, MAX_NAME_BYTES)
        .trim_end()
        .to_string()
}

/// Cuts `name` to at most `max` bytes on a character boundary, keeping a short extension.
fn truncate_keeping_extension(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let (stem, ext) = split_extension(name);
    let ext = if ext.len() <= 16 { ext } else { "" };
    let mut cut = max - ext.len();
    while !stem.is_char_boundary(cut.min(stem.len())) {
        cut -= 1;
    }
    format!("{}{}", &stem[..cut.min(stem.len())], ext)
}

/// `("song", ".mp3")` from `"song.mp3"`; a leading dot is not an extension.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 => name.split_at(i),
        _ => (name, ""),
    }
}

/// The `n`th alternative of a name: `song (1).mp3`, `song (2).mp3`, ...
pub fn numbered(name: &str, n: u32) -> String {
    let (stem, ext) = split_extension(name);
    let suffix = format!(" ({n})");
    // A remote's name can carry an "extension" of 250 bytes: keep it only if the number and
    // one byte of stem still fit beside it (else shortening the stem could never succeed).
    let ext = if ext.len() + suffix.len() < MAX_NAME_BYTES {
        ext
    } else {
        ""
    };
    let mut stem = stem.to_string();
    while stem.len() + suffix.len() + ext.len() > MAX_NAME_BYTES {
        stem.pop();
    }
    format!("{stem}{suffix}{ext}")
}

/// Where a verified download should land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Landing {
    /// A free path to rename the download to.
    Free(PathBuf),
    /// This path already holds the identical bytes: nothing to write.
    Identical(PathBuf),
}

/// Picks the final path for a download of `name` into `dir`: the sanitised name if free, the
/// existing path if it already holds the same bytes (`same_bytes` decides), else the first
/// free `name (N).ext`.
pub fn landing(dir: &Path, name: &str, mut same_bytes: impl FnMut(&Path) -> bool) -> Landing {
    let base = sanitize(name);
    for n in 0u32.. {
        let candidate = if n == 0 {
            base.clone()
        } else {
            numbered(&base, n)
        };
        let path = dir.join(&candidate);
        match std::fs::symlink_metadata(&path) {
            Err(_) => return Landing::Free(path),
            Ok(meta) if meta.is_file() && same_bytes(&path) => return Landing::Identical(path),
            Ok(_) => {}
        }
    }
    unreachable!("u32 names exhausted")
}

/// A name made safe to print on one line: control and invisible format characters are
/// escaped (`\r`, `\n`, `\u{1b}`, `\u{202e}`).
pub fn display_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if is_hidden_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Fuzzing entry point (`fuzz/fuzz_targets/sanitize.rs`): whatever name a remote sends, the
/// sanitised name (and each numbered alternative) joined to a directory names an entry directly
/// inside it, and the display form is one printable line.
#[doc(hidden)]
pub fn fuzz_sanitize(data: &[u8]) {
    let name = String::from_utf8_lossy(data);
    let base = Path::new("/downloads");
    let s = sanitize(&name);
    for candidate in [s.clone(), numbered(&s, 1), numbered(&s, u32::MAX)] {
        assert!(!candidate.is_empty() && candidate.len() <= MAX_NAME_BYTES);
        assert!(!candidate.contains(['/', '\\', '\0']), "{candidate:?}");
        assert!(!candidate.starts_with('.'), "{candidate:?}");
        assert!(!candidate.chars().any(is_hidden_char), "{candidate:?}");
        let joined = base.join(&candidate);
        assert_eq!(joined.parent(), Some(base), "{candidate:?}");
        assert_eq!(joined.components().count(), 3, "{candidate:?}");
        assert_eq!(
            joined.file_name().map(|f| f.len()),
            Some(candidate.len()),
            "{candidate:?}"
        );
    }
    // Sanitising is idempotent: a saved name read back and saved again stays the same.
    assert_eq!(sanitize(&s), s);
    assert!(!display_name(&name).chars().any(is_hidden_char));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hostile_names() {
        assert_eq!(sanitize("../../x"), "_.._x");
        assert_eq!(sanitize("/etc/passwd"), "_etc_passwd");
        assert_eq!(sanitize(".bashrc"), "bashrc");
        assert_eq!(sanitize(".."), FALLBACK_NAME);
        assert_eq!(sanitize(""), FALLBACK_NAME);
        assert_eq!(sanitize("a\r\r\nb"), "ab");
        assert_eq!(sanitize("..\\..\\win"), "_.._win");
        assert_eq!(sanitize("  . hidden"), "hidden");
        assert_eq!(sanitize("ünïcødé song.flac"), "ünïcødé song.flac");
        let long = format!("{}.mp3", "é".repeat(300));
        let s = sanitize(&long);
        assert!(s.len() <= MAX_NAME_BYTES && s.ends_with(".mp3"), "{s}");
    }

    #[test]
    fn numbering() {
        assert_eq!(numbered("song.mp3", 1), "song (1).mp3");
        assert_eq!(numbered("README", 2), "README (2)");
        assert!(numbered(&"x".repeat(255), 7).len() <= MAX_NAME_BYTES);
    }

    #[test]
    fn numbering_a_name_whose_extension_fills_it() {
        // Found by fuzz/sanitize: `numbered` looped forever popping an empty stem when the
        // extension alone left no room for " (N)", hanging the peer's reactor in `landing`.
        let name = format!("a.{}", "x".repeat(253));
        assert_eq!(sanitize(&name), name);
        let n = numbered(&name, 1);
        assert!(n.len() <= MAX_NAME_BYTES && n.ends_with(" (1)"), "{n}");
        let n = numbered(&format!("a.{}", "é".repeat(126)), u32::MAX);
        assert!(n.len() <= MAX_NAME_BYTES, "{n}");
    }

    #[test]
    fn a_long_name_cut_at_a_blank_has_no_trailing_blank() {
        // Found by fuzz/sanitize: truncation left trailing spaces, which the untruncated path
        // trims, so sanitising a saved name again changed it.
        let input = b"\x13\x86\x20\x21\x20\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\xa4\x3a\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x20\x03\x13\x20\x86";
        let s = sanitize(&String::from_utf8_lossy(input));
        assert_eq!(s.trim_end(), s);
        assert_eq!(sanitize(&s), s);
        let s = sanitize(&format!("{}{}", "x".repeat(250), " ".repeat(10)));
        assert_eq!(s, "x".repeat(250));
    }

    #[test]
    fn landing_never_overwrites() {
        let dir = std::env::temp_dir().join(format!("p2pshare-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.txt"), b"other").unwrap();
        std::fs::write(dir.join("a (1).txt"), b"mine").unwrap();
        let same = |p: &Path| std::fs::read(p).unwrap() == b"mine";
        assert_eq!(
            landing(&dir, "a.txt", same),
            Landing::Identical(dir.join("a (1).txt"))
        );
        let never = |_: &Path| false;
        assert_eq!(
            landing(&dir, "a.txt", never),
            Landing::Free(dir.join("a (2).txt"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn display_escapes_controls() {
        assert_eq!(display_name("a\r\r\nb"), "a\\r\\r\\nb");
        assert_eq!(display_name("plain é"), "plain é");
    }

    #[test]
    fn bidi_overrides_and_invisible_characters_never_land_and_print_escaped() {
        // Issue 13, case 9: U+202E makes `\u{202e}txt.exe` print as `exe.txt`.
        assert_eq!(sanitize("\u{202E}txt.exe"), "txt.exe");
        assert_eq!(sanitize("song\u{202E}3pm.exe"), "song3pm.exe");
        for c in [
            '\u{200B}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{2066}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{E0041}',
            '\u{2028}',
            '\u{2029}',
        ] {
            assert!(is_hidden_char(c), "{c:?}");
            assert_eq!(sanitize(&format!("a{c}b.txt")), "ab.txt", "{c:?}");
            let shown = display_name(&format!("a{c}b"));
            assert_eq!(shown, format!("a{}b", c.escape_default()), "{c:?}");
        }
        assert_eq!(display_name("\u{202E}txt.exe"), "\\u{202e}txt.exe");
        // Visible letters, marks and spaces of every script stay.
        for name in [
            "straße",
            "İstanbul",
            "cafe\u{301}",
            "한국어",
            "हिन्दी",
            "عربي",
            "a b",
        ] {
            assert_eq!(sanitize(name), name);
            assert_eq!(display_name(name), name);
        }
    }

    proptest! {
        #[test]
        fn sanitized_names_stay_inside(name in ".{0,300}") {
            let s = sanitize(&name);
            prop_assert!(!s.is_empty() && s.len() <= MAX_NAME_BYTES);
            prop_assert!(!s.contains('/') && !s.contains('\\') && !s.starts_with('.'));
            prop_assert!(!s.chars().any(is_hidden_char));
            let base = Path::new("/downloads");
            let joined = base.join(&s);
            prop_assert_eq!(joined.parent(), Some(base));
            let comps: Vec<_> = joined.components().collect();
            prop_assert_eq!(comps.len(), 3);
        }
    }
}
