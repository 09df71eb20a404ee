//! [`ChunkVec`] and [`ChunkSlab`]: the index's big record vectors, in fixed-size chunks that
//! never move once allocated.
//!
//! A `Vec` that grows reallocates and copies every item it holds; for a vector of hundreds of
//! megabytes that is a copy of megabytes on the reactor thread (glibc moves a block it
//! `mmap`ed with `mremap`, but once its dynamic mmap threshold has risen past a block's size,
//! the block comes from its heap and is copied), a pause of several milliseconds at ten
//! million entries. Here an index `i` is item `i % CHUNK` of chunk `i / CHUNK`: growth
//! appends a chunk and never touches the ones before, and a lookup costs one more read (the
//! chunk's pointer, from a small vector that stays in cache).
//!
//! The first chunk grows by doubling up to the chunk size (a small table costs little), every
//! later one is allocated at its full size and filled in place; so the slack is at most one
//! chunk, less than the sixteenth a growing vector kept.

use std::ops::{Index, IndexMut};

/// Items per chunk, as a power of two: 16,384 (a small one in tests, so that the store's
/// property tests cross chunk boundaries).
pub(super) const CHUNK_SHIFT: u32 = if cfg!(test) { 3 } else { 14 };
const CHUNK: usize = 1 << CHUNK_SHIFT;
const MASK: usize = CHUNK - 1;

/// A vector of items in chunks of [`CHUNK_SHIFT`] (see the module docs). It only grows, item
/// by item, or is dropped whole.
pub(super) struct ChunkVec<T> {
    /// Every chunk but the last holds `CHUNK` items.
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> ChunkVec<T> {
    pub(super) const fn new() -> Self {
        ChunkVec {
            chunks: Vec::new(),
            len: 0,
        }
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Items the chunks have room for (capacity, not length).
    pub(super) fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }

    /// Heap bytes held: the chunks and the vector of chunks.
    pub(super) fn heap_bytes(&self) -> usize {
        self.capacity() * std::mem::size_of::<T>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<T>>()
    }

    #[inline]
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i >> CHUNK_SHIFT)?.get(i & MASK)
    }

    /// Appends `item` (its index is the old length). Copies at most half a chunk, while the
    /// first chunk grows.
    pub(super) fn push(&mut self, item: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => {
                if last.len() == last.capacity() {
                    let cap = last.capacity();
                    last.reserve_exact(cap.max(16).min(CHUNK - cap));
                }
                last.push(item);
            }
            _ => {
                let first = self.chunks.is_empty();
                let mut chunk = Vec::with_capacity(if first { CHUNK.min(16) } else { CHUNK });
                chunk.push(item);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// The items in index order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> Index<usize> for ChunkVec<T> {
    type Output = T;

    #[inline]
    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> CHUNK_SHIFT][i & MASK]
    }
}

impl<T> IndexMut<usize> for ChunkVec<T> {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i >> CHUNK_SHIFT][i & MASK]
    }
}

/// Values by `usize` key with a free list of keys to reuse, like `slab::Slab` (the subset the
/// index uses), stored in a [`ChunkVec`] so that growth never copies the values.
pub(super) struct ChunkSlab<T> {
    slots: ChunkVec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for ChunkSlab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ChunkSlab<T> {
    pub(super) const fn new() -> Self {
        ChunkSlab {
            slots: ChunkVec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Values held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated (capacity, not length).
    pub(super) fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Stores `value`; returns its key (a freed one if any).
    pub(super) fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        if let Some(key) = self.free.pop() {
            self.slots[key as usize] = Some(value);
            return key as usize;
        }
        self.slots.push(Some(value));
        self.slots.len() - 1
    }

    /// Takes the value of `key` out; its key is reused. Panics if `key` holds none.
    pub(super) fn remove(&mut self, key: usize) -> T {
        let value = self.slots[key].take().expect("a live key");
        self.len -= 1;
        self.free
            .push(u32::try_from(key).expect("keys stay below 2^32"));
        value
    }

    /// The values with their keys, in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }
}

impl<T> Index<usize> for ChunkSlab<T> {
    type Output = T;

    #[inline]
    fn index(&self, key: usize) -> &T {
        self.slots[key].as_ref().expect("a live key")
    }
}

impl<T> IndexMut<usize> for ChunkSlab<T> {
    #[inline]
    fn index_mut(&mut self, key: usize) -> &mut T {
        self.slots[key].as_mut().expect("a live key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32),
        Set(usize, u32),
    }

    #[derive(Debug, Clone)]
    enum SlabOp {
        Insert(u32),
        Remove(usize),
        Set(usize, u32),
    }

    proptest! {
        /// A `ChunkVec` reads like a `Vec` given the same pushes and writes, across chunks.
        #[test]
        fn chunk_vec_is_a_vec(ops in prop::collection::vec(
            prop_oneof![
                3 => any::<u32>().prop_map(Op::Push),
                1 => (any::<usize>(), any::<u32>()).prop_map(|(i, x)| Op::Set(i, x)),
            ],
            0..200,
        )) {
            let mut v: ChunkVec<u32> = ChunkVec::new();
            let mut model: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(x) => {
                        v.push(x);
                        model.push(x);
                    }
                    Op::Set(i, x) if !model.is_empty() => {
                        let i = i % model.len();
                        v[i] = x;
                        model[i] = x;
                    }
                    Op::Set(..) => {}
                }
                prop_assert_eq!(v.len(), model.len());
                prop_assert!(v.capacity() >= v.len());
                // The slack is at most one chunk (or the first chunk's doubling).
                prop_assert!(v.capacity() < v.len().max(8) + CHUNK);
            }
            prop_assert_eq!(v.iter().copied().collect::<Vec<_>>(), model.clone());
            for (i, x) in model.iter().enumerate() {
                prop_assert_eq!(v[i], *x);
                prop_assert_eq!(v.get(i), Some(x));
            }
            prop_assert_eq!(v.get(model.len()), None);
        }

        /// A `ChunkSlab` holds the values a model of keyed values holds, reuses freed keys,
        /// and iterates in key order.
        #[test]
        fn chunk_slab_is_a_slab(ops in prop::collection::vec(
            prop_oneof![
                3 => any::<u32>().prop_map(SlabOp::Insert),
                2 => any::<usize>().prop_map(SlabOp::Remove),
                1 => (any::<usize>(), any::<u32>()).prop_map(|(i, x)| SlabOp::Set(i, x)),
            ],
            0..300,
        )) {
            let mut s: ChunkSlab<u32> = ChunkSlab::new();
            let mut model: std::collections::BTreeMap<usize, u32> = Default::default();
            let mut freed: Vec<usize> = Vec::new();
            for op in ops {
                match op {
                    SlabOp::Insert(x) => {
                        let key = s.insert(x);
                        prop_assert!(!model.contains_key(&key));
                        // A freed key is reused first, the last freed one.
                        if let Some(k) = freed.pop() {
                            prop_assert_eq!(key, k);
                        }
                        model.insert(key, x);
                    }
                    SlabOp::Remove(i) if !model.is_empty() => {
                        let key = *model.keys().nth(i % model.len()).unwrap();
                        prop_assert_eq!(s.remove(key), model.remove(&key).unwrap());
                        freed.push(key);
                    }
                    SlabOp::Set(i, x) if !model.is_empty() => {
                        let key = *model.keys().nth(i % model.len()).unwrap();
                        s[key] = x;
                        model.insert(key, x);
                    }
                    _ => {}
                }
                prop_assert_eq!(s.len(), model.len());
            }
            let got: Vec<(usize, u32)> = s.iter().map(|(k, v)| (k, *v)).collect();
            let want: Vec<(usize, u32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(got, want);
            for (k, v) in &model {
                prop_assert_eq!(s[*k], *v);
            }
        }
    }
}
