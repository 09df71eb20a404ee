//! [`Index::lookup`]: who holds a file, by hash, hash prefix or exact name.

use super::words::{lower_words, Scratch};
use super::{Index, LookupError, PeerId, ID_MASK, NONE};
use crate::wire::{is_hex_prefix, HeldFile, LookupKey};
use std::cmp::Ordering;

impl Index {
    /// Who holds a file. `Hash` and a unique `HashPrefix` give one file, named by its most held
    /// name (ties: the smallest name); `Name` gives every hash with an entry of exactly that
    /// name, in hash order. `holders` are the distinct holders' addresses in peer-id order.
    pub fn lookup(&mut self, key: &LookupKey) -> Result<Vec<HeldFile>, LookupError> {
        self.post_pending();
        match key {
            LookupKey::Hash(h) => {
                let file = self.files.find(h).ok_or(LookupError::NotFound)?;
                Ok(vec![self.held_file(file, None)])
            }
            LookupKey::HashPrefix(p) => {
                if !is_hex_prefix(p) {
                    return Err(LookupError::BadPrefix);
                }
                let p = p.to_ascii_lowercase();
                // `is_hex_prefix` guarantees at least 8 hex digits: the first 4 bytes.
                let p32 = u32::from_str_radix(&p[..8], 16).map_err(|_| LookupError::BadPrefix)?;
                let file = self.files.find_prefix(p32, &p)?;
                Ok(vec![self.held_file(file, None)])
            }
            LookupKey::Name(name) => {
                let mut scratch = Scratch::default();
                lower_words(name, &mut scratch);
                // The rarest word of the name bounds the scan; a wordless name uses the
                // empty word's postings.
                let mut best: Option<(usize, u32)> = None; // (postings, word id)
                let words: Vec<&str> = if scratch.spans.is_empty() {
                    vec![""]
                } else {
                    scratch.words().collect()
                };
                for w in words {
                    let Some(id) = self.words.find(w.as_bytes()) else {
                        return Err(LookupError::NotFound);
                    };
                    let n = self.words.posting_count(id);
                    if best.map_or(true, |(b, _)| n < b) {
                        best = Some((n, id));
                    }
                }
                let (_, w) = best.ok_or(LookupError::NotFound)?;
                let mut files: Vec<HeldFile> = self
                    .words
                    .postings(w)
                    .map(|key| key & ID_MASK)
                    .filter(|&e| self.entries.cmp_name(e, name.as_bytes()) == Ordering::Equal)
                    .map(|e| self.held_file(self.entries[e].file(), Some(e)))
                    .collect();
                if files.is_empty() {
                    return Err(LookupError::NotFound);
                }
                files.sort_unstable_by_key(|f| f.hash);
                Ok(files)
            }
        }
    }

    /// Distinct holder ids of `file`, ascending.
    fn file_holders(&self, file: u32) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut e = self.files[file].first_entry;
        while e != NONE {
            ids.extend_from_slice(self.entries.holders(e));
            e = self.entries[e].next;
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// `file` as a lookup answer, named by `entry`, or by its most held name.
    fn held_file(&self, file: u32, entry: Option<u32>) -> HeldFile {
        let name_of = |e: u32| {
            let mut name = Vec::new();
            self.entries.decode_name(e, &mut name);
            name
        };
        let entry = entry.unwrap_or_else(|| {
            let mut best = self.files[file].first_entry;
            let mut e = self.entries[best].next;
            while e != NONE {
                let (n, bn) = (
                    self.entries.holders(e).len(),
                    self.entries.holders(best).len(),
                );
                if n > bn || (n == bn && name_of(e) < name_of(best)) {
                    best = e;
                }
                e = self.entries[e].next;
            }
            best
        });
        let rec = &self.files[file];
        HeldFile {
            hash: rec.hash,
            size: rec.size(),
            name: String::from_utf8(name_of(entry)).expect("names are stored from str"),
            holders: self
                .file_holders(file)
                .into_iter()
                .filter_map(|p| self.peer_addr(PeerId(p)))
                .collect(),
        }
    }
}
