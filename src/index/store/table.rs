//! [`Table`]: records in a chunked vector ([`ChunkVec`]), addressed by `u32` ids, with a free
//! list of ids to reuse. The files, entries, words and peers are each one.

use std::ops::{Index, IndexMut};

use super::chunked::ChunkVec;

/// A record kind a [`Table`] can hold: one value of it marks a free slot.
pub(super) trait Slot {
    /// The value of a free slot.
    const FREE: Self;
    /// Whether this is a free slot (so that iteration skips it).
    fn is_free(&self) -> bool;
}

impl<T> Slot for Option<T> {
    const FREE: Self = None;
    fn is_free(&self) -> bool {
        self.is_none()
    }
}

/// Records by `u32` id. A removed record's slot is marked [`Slot::FREE`] and its id reused by
/// the next insert, so ids stay dense and nothing is allocated per record. The records are in
/// fixed-size chunks (see `chunked.rs`), so growth never copies them; they are released once
/// the table is empty.
pub(super) struct Table<T> {
    slots: ChunkVec<T>,
    free: Vec<u32>,
    live: usize,
}

impl<T: Slot> Table<T> {
    /// Heap bytes held (capacity, not length).
    pub(super) fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes() + self.free.capacity() * 4
    }

    pub(super) const fn new() -> Self {
        Table {
            slots: ChunkVec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Live records.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    pub(super) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// One more than the largest id in use (or free): the size of a bitmap over ids.
    pub(super) fn id_bound(&self) -> usize {
        self.slots.len()
    }

    /// The slot of `id`, free or not, if it was ever handed out.
    pub(super) fn get(&self, id: u32) -> Option<&T> {
        self.slots.get(id as usize)
    }

    /// The id the next [`Table::insert`] will return.
    pub(super) fn next_id(&self) -> u32 {
        self.free.last().copied().unwrap_or(self.slots.len() as u32)
    }

    /// Stores `rec`; returns its id.
    pub(super) fn insert(&mut self, rec: T) -> u32 {
        self.live += 1;
        if let Some(id) = self.free.pop() {
            self.slots[id as usize] = rec;
            return id;
        }
        self.slots.push(rec);
        (self.slots.len() - 1) as u32
    }

    /// Frees `id` (live); returns its record. The last removal gives the memory back.
    pub(super) fn remove(&mut self, id: u32) -> T {
        let rec = std::mem::replace(&mut self.slots[id as usize], T::FREE);
        self.live -= 1;
        if self.live == 0 {
            *self = Self::new();
        } else {
            self.free.push(id);
        }
        rec
    }

    /// The live records with their ids, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_free())
            .map(|(i, r)| (i as u32, r))
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.slots.capacity()
    }
}

impl<T> Index<u32> for Table<T> {
    type Output = T;

    fn index(&self, id: u32) -> &T {
        &self.slots[id as usize]
    }
}

impl<T> IndexMut<u32> for Table<T> {
    fn index_mut(&mut self, id: u32) -> &mut T {
        &mut self.slots[id as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reused_and_the_last_removal_frees_the_memory() {
        let mut t: Table<Option<char>> = Table::new();
        let (a, b) = (t.insert(Some('a')), t.insert(Some('b')));
        assert_eq!((a, b, t.len()), (0, 1, 2));
        assert_eq!(t.remove(a), Some('a'));
        assert_eq!(t.get(a), Some(&None));
        assert_eq!(t.insert(Some('c')), a);
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            [(0, &Some('c')), (1, &Some('b'))]
        );
        t.remove(a);
        t.remove(b);
        assert!(t.is_empty() && t.capacity() == 0 && t.id_bound() == 0);
    }
}
