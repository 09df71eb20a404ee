//! What the person withdrew with `unregister`, remembered across rescans, change events and
//! restarts, so a withdrawn file does not come back on its own.
//!
//! A file is withheld when its path or its hash was withdrawn: a withdrawn file renamed,
//! or a copy of it, stays withdrawn too. `register PATH` shares the files at those paths
//! again (and forgets their paths and hashes here).
//!
//! The list lives next to the hash cache, in `DIR/.p2pshare-cache.withdrawn` (a name the scan
//! and the watcher skip as the peer's own), one entry a line: `path HEX` (the path's bytes as
//! hex, so any name survives) or `hash HASH`. It is written atomically: a temporary file,
//! fsynced, then renamed over the old one. Unparseable lines are ignored.

use super::share::SharedFile;
use crate::wire::FileHash;
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The withdrawn list's file name inside the shared directory.
pub const WITHDRAWN_FILE: &str = ".p2pshare-cache.withdrawn";

/// The withdrawn paths and hashes, and where they are kept.
#[derive(Debug, Default)]
pub struct Withdrawn {
    file: PathBuf,
    paths: BTreeSet<PathBuf>,
    hashes: BTreeSet<FileHash>,
}

impl Withdrawn {
    /// Loads the list kept in `share_dir` (empty if there is none or it cannot be read).
    pub fn load(share_dir: &Path) -> Withdrawn {
        use std::os::unix::ffi::OsStringExt;
        let mut w = Withdrawn {
            file: share_dir.join(WITHDRAWN_FILE),
            ..Withdrawn::default()
        };
        let Ok(text) = fs::read_to_string(&w.file) else {
            return w;
        };
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("path", hex)) => {
                    if let Ok(bytes) = hex::decode(hex) {
                        w.paths
                            .insert(PathBuf::from(std::ffi::OsString::from_vec(bytes)));
                    }
                }
                Some(("hash", h)) => {
                    if let Ok(h) = h.parse() {
                        w.hashes.insert(h);
                    }
                }
                _ => {}
            }
        }
        w
    }

    /// Whether `f` was withdrawn (its path or its hash).
    pub fn contains(&self, f: &SharedFile) -> bool {
        self.hashes.contains(&f.hash) || self.paths.contains(&f.path)
    }

    /// Whether nothing is withdrawn.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.hashes.is_empty()
    }

    /// The person withdrew these files: remembered, and saved.
    pub fn withdraw(&mut self, files: &[SharedFile]) -> io::Result<()> {
        for f in files {
            self.paths.insert(f.path.clone());
            self.hashes.insert(f.hash);
        }
        self.save()
    }

    /// The person shares these files again (`register PATH`): forgotten here, and saved if
    /// anything changed. Returns whether anything did.
    pub fn restore(&mut self, files: &[SharedFile]) -> io::Result<bool> {
        let mut changed = false;
        for f in files {
            changed |= self.paths.remove(&f.path);
            changed |= self.hashes.remove(&f.hash);
        }
        if changed {
            self.save()?;
        }
        Ok(changed)
    }

    /// Writes the list atomically (temporary file, fsync, rename).
    fn save(&self) -> io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        let mut text = String::new();
        for p in &self.paths {
            text.push_str("path ");
            text.push_str(&hex::encode(p.as_os_str().as_bytes()));
            text.push('\n');
        }
        for h in &self.hashes {
            text.push_str(&format!("hash {h}\n"));
        }
        let mut tmp = self.file.clone().into_os_string();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::peer::share::tests::file;

    #[test]
    fn withdrawn_files_stay_withdrawn_across_a_reload_until_registered_again() {
        let d = std::env::temp_dir().join(format!("p2pshare-withdrawn-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        let mut w = Withdrawn::load(&d);
        assert!(w.is_empty());
        let odd = file("/s/new\nline \u{e9}", b"odd");
        w.withdraw(&[file("/s/a", b"A"), odd.clone()]).unwrap();
        // Only the list itself is left in the directory (the temporary file was renamed).
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [WITHDRAWN_FILE]);

        let w2 = Withdrawn::load(&d);
        assert!(w2.contains(&file("/s/a", b"A")));
        assert!(w2.contains(&odd));
        // The same bytes elsewhere (a rename, a copy), and other bytes at the same path.
        assert!(w2.contains(&file("/s/moved/a2", b"A")));
        assert!(w2.contains(&file("/s/a", b"A, edited")));
        assert!(!w2.contains(&file("/s/b", b"B")));

        let mut w3 = w2;
        assert!(w3.restore(&[file("/s/a", b"A")]).unwrap());
        assert!(!w3.restore(&[file("/s/b", b"B")]).unwrap());
        let w4 = Withdrawn::load(&d);
        assert!(!w4.contains(&file("/s/a", b"A")));
        assert!(w4.contains(&odd));
        // A damaged list only forgets what it cannot read.
        fs::write(d.join(WITHDRAWN_FILE), "garbage\nhash zz\npath q\n").unwrap();
        assert!(Withdrawn::load(&d).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }
}
