//! A table of values keyed by file path, storing each path once and compactly: the
//! directories are interned (a share of 100,000 files in 1,000 directories holds 1,000
//! directory paths), and each file is its directory's id and its own name, kept in one byte
//! arena (no allocation per file: 100,000 small allocations of names, freed and made at other
//! times than their neighbours', fragment the heap more than they weigh). The share's table
//! (`share::Share`) and the hash cache (`share::HashCache`) are built on it; their other
//! indexes (by hash, by inode) hold a file's [`FileId`], never another copy of its path.
//!
//! # Invariants
//! - A path is in the table at most once; [`PathTable::insert`] on a present path replaces
//!   its value and keeps its id.
//! - An id stays valid until its path is removed; ids of removed paths are reused.
//! - A directory is interned while at least one file of the table is in it.
//! - Paths compare as `Path` does (by components): `a//b` and `a/b` are one path.
//! - The names of removed files are garbage in the arena until it is compacted, which happens
//!   once garbage is over half of it: the arena stays within twice the live names.

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};
use slab::Slab;
use std::ffi::{OsStr, OsString};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};

/// A file's place in a [`PathTable`].
pub type FileId = u32;

#[derive(Debug, Clone)]
struct Dir {
    path: PathBuf,
    /// The files of the table in this directory.
    files: Vec<FileId>,
}

#[derive(Debug, Clone)]
struct Slot<T> {
    dir: u32,
    /// The name's length in the arena.
    name_len: u32,
    /// Where the name starts in the arena.
    name_at: usize,
    value: T,
}

/// Values by path; see the module docs.
#[derive(Debug, Clone)]
pub struct PathTable<T> {
    dirs: Slab<Dir>,
    dir_ids: HashMap<PathBuf, u32>,
    files: Slab<Slot<T>>,
    /// Every file's name, back to back.
    names: Vec<u8>,
    /// Bytes of `names` no file uses any more.
    garbage: usize,
    /// File ids, hashed by (directory id, name): the key is read from `files`, not stored.
    index: HashTable<FileId>,
    hasher: DefaultHashBuilder,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        PathTable {
            dirs: Slab::new(),
            dir_ids: HashMap::new(),
            files: Slab::new(),
            names: Vec::new(),
            garbage: 0,
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }
}

/// A path's directory and name (a path with no name, such as `/`, is a directory with an
/// empty name).
fn split(path: &Path) -> (&Path, &OsStr) {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (dir, name),
        _ => (path, OsStr::new("")),
    }
}

/// Bytes of garbage below which the arena is never compacted.
const MIN_GARBAGE_BYTES: usize = 64 * 1024;

fn name_of<'a, T>(names: &'a [u8], s: &Slot<T>) -> &'a OsStr {
    use std::os::unix::ffi::OsStrExt;
    OsStr::from_bytes(&names[s.name_at..s.name_at + s.name_len as usize])
}

impl<T> PathTable<T> {
    fn hash_of(&self, dir: u32, name: &OsStr) -> u64 {
        self.hasher.hash_one((dir, name))
    }

    /// Copies the live names into a new arena, dropping the garbage.
    fn compact(&mut self) {
        let mut names = Vec::with_capacity(self.names.len() - self.garbage);
        for (_, s) in self.files.iter_mut() {
            let at = names.len();
            names.extend_from_slice(&self.names[s.name_at..s.name_at + s.name_len as usize]);
            s.name_at = at;
        }
        self.names = names;
        self.garbage = 0;
    }

    fn find(&self, path: &Path) -> Option<FileId> {
        let (dir, name) = split(path);
        let dir = *self.dir_ids.get(dir)?;
        let hash = self.hash_of(dir, name);
        self.index
            .find(hash, |&id| {
                let s = &self.files[id as usize];
                s.dir == dir && name_of(&self.names, s) == name
            })
            .copied()
    }

    /// Files in the table.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The id and value of `path`.
    pub fn get(&self, path: &Path) -> Option<(FileId, &T)> {
        let id = self.find(path)?;
        Some((id, &self.files[id as usize].value))
    }

    /// The value of file `id`.
    pub fn value(&self, id: FileId) -> Option<&T> {
        self.files.get(id as usize).map(|s| &s.value)
    }

    /// The path of file `id` (built: the table stores it in pieces).
    pub fn path(&self, id: FileId) -> Option<PathBuf> {
        let s = self.files.get(id as usize)?;
        let dir = &self.dirs[s.dir as usize].path;
        let name = name_of(&self.names, s);
        Some(if name.is_empty() {
            dir.clone()
        } else {
            dir.join(name)
        })
    }

    /// The file name of file `id` (empty for a path with none).
    pub fn name(&self, id: FileId) -> Option<&OsStr> {
        self.files.get(id as usize).map(|s| name_of(&self.names, s))
    }

    /// Every file's id and value, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (FileId, &T)> {
        self.files.iter().map(|(id, s)| (id as FileId, &s.value))
    }

    /// Adds `path` with `value`, or replaces its value. Returns its id and the value replaced.
    pub fn insert(&mut self, path: &Path, value: T) -> (FileId, Option<T>) {
        if let Some(id) = self.find(path) {
            let old = std::mem::replace(&mut self.files[id as usize].value, value);
            return (id, Some(old));
        }
        let (dir_path, name) = split(path);
        let dir = match self.dir_ids.get(dir_path) {
            Some(&d) => d,
            None => {
                let d = self.dirs.insert(Dir {
                    path: dir_path.to_path_buf(),
                    files: Vec::new(),
                }) as u32;
                self.dir_ids.insert(dir_path.to_path_buf(), d);
                d
            }
        };
        use std::os::unix::ffi::OsStrExt;
        let name_at = self.names.len();
        self.names.extend_from_slice(name.as_bytes());
        let id = self.files.insert(Slot {
            dir,
            // A file name is at most NAME_MAX (255) bytes.
            name_len: u32::try_from(name.len()).unwrap_or(u32::MAX),
            name_at,
            value,
        }) as FileId;
        self.dirs[dir as usize].files.push(id);
        let hash = self.hash_of(dir, name);
        let (files, names, hasher) = (&self.files, &self.names, &self.hasher);
        self.index.insert_unique(hash, id, |&other| {
            let s = &files[other as usize];
            hasher.hash_one((s.dir, name_of(names, s)))
        });
        (id, None)
    }

    /// Removes file `id`; its path and value.
    pub fn remove_id(&mut self, id: FileId) -> Option<(PathBuf, T)> {
        let path = self.path(id)?;
        let hash = self.hash_of(self.files[id as usize].dir, self.name(id)?);
        if let Ok(entry) = self.index.find_entry(hash, |&other| other == id) {
            entry.remove();
        }
        let slot = self.files.remove(id as usize);
        self.garbage += slot.name_len as usize;
        if self.garbage > MIN_GARBAGE_BYTES && self.garbage > self.names.len() / 2 {
            self.compact();
        }
        let dir = &mut self.dirs[slot.dir as usize];
        if let Some(at) = dir.files.iter().position(|&f| f == id) {
            dir.files.swap_remove(at);
        }
        if dir.files.is_empty() {
            let dir = self.dirs.remove(slot.dir as usize);
            self.dir_ids.remove(&dir.path);
        }
        Some((path, slot.value))
    }

    /// Removes `path`; its id and value.
    pub fn remove(&mut self, path: &Path) -> Option<(FileId, T)> {
        let id = self.find(path)?;
        self.remove_id(id).map(|(_, v)| (id, v))
    }

    /// The files at `root` or under it (in a directory at or below it).
    pub fn ids_under(&self, root: &Path) -> Vec<FileId> {
        let mut ids: Vec<FileId> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.path.starts_with(root))
            .flat_map(|(_, d)| d.files.iter().copied())
            .collect();
        if let Some(id) = self.find(root) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The name of file `id` as text (lossy for a name that is not UTF-8).
    pub fn name_lossy(&self, id: FileId) -> String {
        self.name(id)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A path's file name as the table stores it, for comparing with [`PathTable::name`].
pub fn file_name(path: &Path) -> OsString {
    split(path).1.to_os_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_path_once_by_directory_and_name() {
        let mut t = PathTable::default();
        let (a, old) = t.insert(Path::new("/s/d1/a.txt"), 1);
        assert_eq!(old, None);
        let (b, _) = t.insert(Path::new("/s/d1/b.txt"), 2);
        let (c, _) = t.insert(Path::new("/s/d2/a.txt"), 3);
        assert_eq!(t.insert(Path::new("/s//d1/a.txt"), 10), (a, Some(1)));
        assert_eq!(t.len(), 3);
        assert_eq!(t.dirs.len(), 2, "two directories interned");
        assert_eq!(t.get(Path::new("/s/d1/a.txt")), Some((a, &10)));
        assert_eq!(t.path(c), Some(PathBuf::from("/s/d2/a.txt")));
        assert_eq!(t.get(Path::new("/s/d3/a.txt")), None);
        let mut under = t.ids_under(Path::new("/s/d1"));
        under.sort();
        assert_eq!(under, vec![a, b]);
        assert_eq!(t.ids_under(Path::new("/s/d2/a.txt")), vec![c]);
        assert_eq!(t.ids_under(Path::new("/s")).len(), 3);
        assert_eq!(t.ids_under(Path::new("/s/d")), Vec::<FileId>::new());
        assert_eq!(t.remove(Path::new("/s/d2/a.txt")), Some((c, 3)));
        assert_eq!(t.dirs.len(), 1, "an empty directory is dropped");
        assert_eq!(t.get(Path::new("/s/d2/a.txt")), None);
        assert_eq!(t.remove_id(b), Some((PathBuf::from("/s/d1/b.txt"), 2)));
        assert_eq!(t.get(Path::new("/s/d1/a.txt")), Some((a, &10)));
        // Odd names: bytes that are not UTF-8, newlines, a path with no name.
        use std::os::unix::ffi::OsStrExt;
        let odd = Path::new(OsStr::from_bytes(b"/s/x\xff\r\r\ny"));
        let (o, _) = t.insert(odd, 5);
        assert_eq!(t.path(o).as_deref(), Some(odd));
        let (r, _) = t.insert(Path::new("/"), 6);
        assert_eq!(t.path(r), Some(PathBuf::from("/")));
        assert_eq!(t.get(Path::new("/")), Some((r, &6)));
    }

    #[test]
    fn many_files_find_their_own_values() {
        let mut t = PathTable::default();
        for i in 0..5000u32 {
            t.insert(&PathBuf::from(format!("/r/d{}/f{i}", i % 50)), i);
        }
        for i in (0..5000u32).step_by(3) {
            assert_eq!(
                t.remove(&PathBuf::from(format!("/r/d{}/f{i}", i % 50)))
                    .map(|x| x.1),
                Some(i)
            );
        }
        for i in 0..5000u32 {
            let got = t
                .get(&PathBuf::from(format!("/r/d{}/f{i}", i % 50)))
                .map(|x| *x.1);
            assert_eq!(got, (i % 3 != 0).then_some(i));
        }
    }

    #[test]
    fn removed_names_are_compacted_away_and_the_rest_still_found() {
        let mut t = PathTable::default();
        let path = |i: u32| PathBuf::from(format!("/r/d{}/{i:0>120}", i % 7));
        for i in 0..2000u32 {
            t.insert(&path(i), i);
        }
        let full = t.names.len();
        for i in 0..1500u32 {
            assert_eq!(t.remove(&path(i)).map(|x| x.1), Some(i));
        }
        assert!(
            t.names.len() < full / 2,
            "compacted: {} of {full}",
            t.names.len()
        );
        for i in 0..2000u32 {
            assert_eq!(t.get(&path(i)).map(|x| *x.1), (i >= 1500).then_some(i));
        }
        for (id, &v) in t.iter() {
            assert_eq!(t.path(id), Some(path(v)));
        }
    }
}
