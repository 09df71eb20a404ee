//! The name codec: names compressed against a table of the words common in names.

use std::cmp::Ordering;
use std::hash::BuildHasher;

/// Compresses names against a growing table of symbols: the words common in names. Most names
/// are a few common words plus a rare one (a number), so storing each common word (with the
/// space after it) as a one- or two-byte code roughly halves the name arena, the biggest part
/// of the index after the file records.
///
/// An encoded ASCII name is a byte string where a byte below `0x80` is itself, `0xC0 + k` is
/// symbol `k` (`k < 64`) and `0x80 + (j >> 8), j & 0xFF` is symbol `64 + j`. A name with any
/// other byte is stored as `0x00` then its bytes (no valid name contains NUL).
///
/// Symbols are only ever added, never changed or removed, so an encoded name stays valid for
/// the index's lifetime; a word becomes a symbol when a name containing it is registered while
/// the word is posted under at least [`NameCodec::MIN_POSTINGS`] entries (so unique words such
/// as catalogue numbers never fill the table), until [`NameCodec::MAX_SYMBOLS`]. The table
/// costs a few hundred kilobytes at most.
#[derive(Default)]
pub(super) struct NameCodec {
    /// The symbols' bytes back to back: symbol `k` is `text[at[k]..at[k + 1]]`.
    text: Vec<u8>,
    /// Symbol offsets into `text`, one more than there are symbols (empty before the first).
    at: Vec<u32>,
    /// Symbol codes hashed by their bytes, compared against `text` (one small contiguous
    /// arena that stays in cache, rather than a boxed key per symbol and a pointer chase per probe).
    codes: hashbrown::HashTable<u16>,
    hasher: hashbrown::DefaultHashBuilder,
}

/// Symbol `k` of a [`NameCodec`]'s `text` and `at`.
#[inline]
fn symbol_in<'a>(text: &'a [u8], at: &[u32], k: usize) -> &'a [u8] {
    &text[at[k] as usize..at[k + 1] as usize]
}

impl NameCodec {
    /// Symbols with a one-byte code.
    const SHORT: usize = 64;
    /// Most symbols: one-byte codes, then two-byte codes.
    const MAX_SYMBOLS: usize = Self::SHORT + (64 << 8);
    /// A word is made a symbol once this many entries contain it.
    pub(super) const MIN_POSTINGS: usize = 3;
    /// Longest word made a symbol: common words are short, and the cap bounds the table
    /// (at most `MAX_SYMBOLS` of these, about half a megabyte) whatever peers register.
    const MAX_SYMBOL_WORD: usize = 32;
    /// Marks a name stored as is.
    const RAW: u8 = 0;

    #[inline]
    fn symbol(&self, k: usize) -> &[u8] {
        symbol_in(&self.text, &self.at, k)
    }

    fn find(&self, sym: &[u8]) -> Option<usize> {
        let hash = self.hasher.hash_one(sym);
        self.codes
            .find(hash, |&k| self.symbol(usize::from(k)) == sym)
            .map(|&k| usize::from(k))
    }

    /// Replaces `out` with `name` encoded without symbols: itself if ASCII, else marked raw.
    pub(super) fn plain(name: &str, out: &mut Vec<u8>) {
        out.clear();
        if !name.is_ascii() {
            out.push(Self::RAW);
        }
        out.extend_from_slice(name.as_bytes());
    }

    /// The length of [`NameCodec::plain`]'s encoding of `name`.
    #[inline]
    pub(super) fn plain_len(name: &str) -> usize {
        name.len() + usize::from(!name.is_ascii())
    }

    /// The name in `enc`, an encoding from [`NameCodec::plain`].
    pub(super) fn plain_str(enc: &[u8]) -> &str {
        let bytes = enc.strip_prefix(&[Self::RAW]).unwrap_or(enc);
        debug_assert!(bytes.iter().all(|&b| b != Self::RAW));
        std::str::from_utf8(bytes).expect("a plain encoding holds the name's bytes")
    }

    /// Appends `name`'s encoding to `out` (after clearing it). `common(i)` says whether the
    /// `i`th word of the name (its `i`th run of ASCII letters and digits) may become a symbol.
    pub(super) fn encode(&mut self, name: &str, out: &mut Vec<u8>, common: impl Fn(usize) -> bool) {
        out.clear();
        let bytes = name.as_bytes();
        if !name.is_ascii() {
            out.push(Self::RAW);
            out.extend_from_slice(bytes);
            return;
        }
        let mut i = 0;
        let mut word = 0;
        while i < bytes.len() {
            if !bytes[i].is_ascii_alphanumeric() {
                out.push(bytes[i]);
                i += 1;
                continue;
            }
            let run_end = bytes[i..]
                .iter()
                .position(|c| !c.is_ascii_alphanumeric())
                .map_or(bytes.len(), |n| i + n);
            // The symbol takes the space after the word with it, when there is one.
            let end = run_end + usize::from(bytes.get(run_end) == Some(&b' '));
            let sym = &bytes[i..end];
            let code = match self.find(sym) {
                Some(k) => Some(k),
                None if (2..=Self::MAX_SYMBOL_WORD).contains(&(run_end - i))
                    && self.at.len() <= Self::MAX_SYMBOLS
                    && common(word) =>
                {
                    Some(self.add(sym))
                }
                None => None,
            };
            match code {
                Some(k) if k < Self::SHORT => out.push(0xC0 + k as u8),
                Some(k) => {
                    let j = k - Self::SHORT;
                    out.push(0x80 + (j >> 8) as u8);
                    out.push(j as u8);
                }
                None => out.extend_from_slice(sym),
            }
            word += 1;
            i = end;
        }
    }

    fn add(&mut self, sym: &[u8]) -> usize {
        if self.at.is_empty() {
            self.at.push(0);
        }
        let k = self.at.len() - 1;
        self.text.extend_from_slice(sym);
        self.at.push(self.text.len() as u32);
        let NameCodec {
            text,
            at,
            codes,
            hasher,
        } = self;
        let hash = hasher.hash_one(sym);
        codes.insert_unique(hash, k as u16, |&j| {
            hasher.hash_one(symbol_in(text, at, usize::from(j)))
        });
        k
    }

    /// Symbol `k`'s bytes, for the code starting at `enc[*i]` (`>= 0x80`); advances `i`.
    #[inline]
    fn code_at(&self, enc: &[u8], i: &mut usize) -> &[u8] {
        let b = enc[*i];
        let k = if b >= 0xC0 {
            *i += 1;
            usize::from(b - 0xC0)
        } else {
            *i += 2;
            Self::SHORT + (usize::from(b - 0x80) << 8 | usize::from(enc[*i - 1]))
        };
        self.symbol(k)
    }

    /// Replaces `out` with the decoded name.
    pub(super) fn decode(&self, enc: &[u8], out: &mut Vec<u8>) {
        out.clear();
        if enc.first() == Some(&Self::RAW) {
            out.extend_from_slice(&enc[1..]);
            return;
        }
        // Room for the usual ratio at once, rather than doubling from nothing.
        out.reserve(enc.len() * 3);
        let mut i = 0;
        while i < enc.len() {
            if enc[i] < 0x80 {
                out.push(enc[i]);
                i += 1;
            } else {
                out.extend_from_slice(self.code_at(enc, &mut i));
            }
        }
    }

    /// Orders the decoded `enc` against `plain`, decoding no further than the first
    /// difference (byte by byte: the pieces are short, too short for a `memcmp` call per piece to pay).
    pub(super) fn cmp(&self, enc: &[u8], plain: &[u8]) -> Ordering {
        if enc.first() == Some(&Self::RAW) {
            return enc[1..].cmp(plain);
        }
        let mut pos = 0;
        let mut i = 0;
        while i < enc.len() {
            let b = enc[i];
            if b < 0x80 {
                i += 1;
                match plain.get(pos) {
                    Some(&p) if p == b => pos += 1,
                    Some(&p) => return b.cmp(&p),
                    None => return Ordering::Greater,
                }
            } else {
                for &c in self.code_at(enc, &mut i) {
                    match plain.get(pos) {
                        Some(&p) if p == c => pos += 1,
                        Some(&p) => return c.cmp(&p),
                        None => return Ordering::Greater,
                    }
                }
            }
        }
        if pos < plain.len() {
            Ordering::Less
        } else {
            Ordering::Equal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_codec_round_trips_and_orders_like_the_plain_names() {
        let mut codec = NameCodec::default();
        // 100 words made symbols: one- and two-byte codes.
        let names: Vec<String> = (0..300)
            .map(|i| match i % 5 {
                0 => format!("w{} w{} x{i}.flac", i % 100, (i * 7) % 100),
                1 => format!("W{}-w{}  w{}", i % 100, i % 3, i % 100),
                2 => format!("Ünïcode w{} {i}", i % 100),
                3 => format!("w{} ", i % 100),
                _ => format!("{i} w{}w w{}", i % 100, i % 50),
            })
            .collect();
        let mut enc = Vec::new();
        let mut stored = Vec::new();
        for n in &names {
            codec.encode(n, &mut enc, |w| w % 2 == 0);
            stored.push(enc.clone());
        }
        assert!(codec.at.len() > NameCodec::SHORT + 2, "two-byte codes used");
        let mut out = Vec::new();
        for (n, e) in names.iter().zip(&stored) {
            codec.decode(e, &mut out);
            assert_eq!(out, n.as_bytes());
            for m in names.iter().take(40) {
                assert_eq!(codec.cmp(e, m.as_bytes()), n.as_bytes().cmp(m.as_bytes()));
            }
            assert_eq!(
                codec.cmp(e, &n.as_bytes()[..n.len() - 1]),
                Ordering::Greater
            );
        }
        // Common words of ASCII names got shorter.
        let plain: usize = names.iter().map(String::len).sum();
        let packed: usize = stored.iter().map(Vec::len).sum();
        assert!(packed < plain * 4 / 5, "{packed} vs {plain}");
    }
}
