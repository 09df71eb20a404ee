//! Partial-frame input buffers, and the memory they may touch for the first time a turn.
//!
//! A connection's unhandled input (the start of a frame, or frames held while it is parked)
//! lives in its [`PendingIn`]; frames that arrive whole are handled straight from the
//! reactor's scratch buffer and never come here. Memory written for the first time costs a
//! page fault per 4 KiB page (4–8 µs of CPU each at 10M entries, far more in a slow window),
//! so a 1 MiB frame copied into a fresh buffer, or a buffer grown by `realloc` (which copies
//! what it holds into fresh pages), held the loop for milliseconds.
//!
//! # Invariants
//! - **Fresh memory per turn:** one connection writes at most [`FRESH_BYTES_PER_TURN`] bytes
//!   into memory it had not written before in one turn, plus at most one small frame's
//!   [`KEEP_PENDING_BYTES`]. The reactor reads no more from its socket than it can store
//!   within that ([`InputBuffers::read_limit`]): the rest waits in the kernel.
//! - **Never grown in place:** a full buffer whose frame needs more room gets a successor,
//!   and its bytes are copied into it a budget at a time across turns; meanwhile nothing more
//!   is read for that connection.
//! - **One warm spare:** the reactor keeps one buffer with room for the largest frame it
//!   accepts (up to [`SPARE_MAX_BYTES`]), made the first time a big frame needs one and then
//!   reused, its pages written once and kept. It is lent to one big partial frame at a time
//!   (the successor of a growing buffer, or a big piece read at once) and given back when
//!   the frame is handled or the connection closes.
//! - **Room in proportion to what arrived:** a buffer of a connection's own has room for at
//!   most the whole frame, or twice what arrived, or what arrived plus [`RESERVE_AHEAD`]
//!   (see [`frame_room`]): a header that claims 1 MiB followed by 1,000 bytes holds about
//!   65 KiB, not 1 MiB. So each connection holds at most its frame's room (twice that
//!   while a successor is filled), and the spare is held by one connection at most.
//! - **Freed in steps:** a big buffer that is no longer needed is shrunk by
//!   [`RETIRE_STEP_BYTES`] a turn ([`InputBuffers::retire_step`]), not freed at once.

use crate::codec::Decoder;

/// Bytes of never-written memory one connection may write a turn (sixteen pages).
pub(crate) const FRESH_BYTES_PER_TURN: usize = 64 * 1024;
/// Largest buffer an idle connection keeps for its next partial frame; a bigger one is given
/// back once its frame is handled, or a thousand idle peers would each hold their largest
/// request's worth of memory.
pub(crate) const KEEP_PENDING_BYTES: usize = 4 * 1024;
/// How far ahead of the bytes received a partial frame's buffer may reserve room for it,
/// besides as much again as has arrived: a header alone that claims 1 MiB reserves 64 KiB,
/// not the whole frame, so connections that never finish a frame hold buffers in proportion
/// to what they sent (see [`frame_room`]).
pub(crate) const RESERVE_AHEAD: usize = 64 * 1024;
/// The spare buffer has room for the largest frame, if that is at most this big (a peer
/// accepts frames of 16 MiB: those grow in buffers of their own).
pub(crate) const SPARE_MAX_BYTES: usize = 2 << 20;
/// How much of a retired buffer is given back to the allocator a turn.
pub(crate) const RETIRE_STEP_BYTES: usize = 64 * 1024;

/// The room to keep for a partial frame of `whole` bytes of which `have` have arrived: the
/// whole frame once half of it is in, else twice what is in, or that plus
/// [`RESERVE_AHEAD`] while it is small.
pub(crate) fn frame_room(whole: usize, have: usize) -> usize {
    whole.min(
        have.saturating_mul(2)
            .max(have.saturating_add(RESERVE_AHEAD)),
    )
}

/// A buffer and how much of its allocation has been written since it was allocated.
#[derive(Debug, Default)]
struct Buf {
    bytes: Vec<u8>,
    /// Bytes of the allocation written at least once: `len <= touched <= capacity`.
    touched: usize,
}

impl Buf {
    fn with_room(room: usize) -> Buf {
        Buf {
            bytes: Vec::with_capacity(room),
            touched: 0,
        }
    }

    /// Appends `data` (within capacity); returns the bytes written for the first time.
    fn append(&mut self, data: &[u8]) -> usize {
        debug_assert!(self.bytes.len() + data.len() <= self.bytes.capacity());
        self.bytes.extend_from_slice(data);
        let fresh = self.bytes.len().saturating_sub(self.touched);
        self.touched = self.touched.max(self.bytes.len());
        fresh
    }
}

/// A connection's unhandled input: the bytes, and a bigger buffer they are moving into.
#[derive(Debug, Default)]
pub(crate) struct PendingIn {
    cur: Buf,
    /// While `cur` is full and its frame needs more room: the successor, holding a copy of
    /// `cur`'s first bytes so far.
    next: Option<Buf>,
}

impl PendingIn {
    /// The unhandled bytes, in order.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.cur.bytes
    }

    pub(crate) fn len(&self) -> usize {
        self.cur.bytes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.cur.bytes.is_empty()
    }

    /// Bytes of memory held (capacities, the successor's included).
    pub(crate) fn capacity(&self) -> usize {
        self.cur.bytes.capacity() + self.next.as_ref().map_or(0, |n| n.bytes.capacity())
    }

    /// Each buffer's address and length, for tests that watch what is written.
    #[cfg(test)]
    fn buffers(&self) -> Vec<(usize, usize)> {
        let mut v = vec![(self.cur.bytes.as_ptr() as usize, self.cur.bytes.len())];
        if let Some(n) = &self.next {
            v.push((n.bytes.as_ptr() as usize, n.bytes.len()));
        }
        v
    }
}

/// The reactor's part in input buffers: the spare and the buffers being given back.
#[derive(Debug, Default)]
pub(crate) struct InputBuffers {
    /// The spare's room: the largest whole frame, or 0 (no spare) if that is over
    /// [`SPARE_MAX_BYTES`].
    spare_room: usize,
    /// The spare, while no connection holds it.
    spare: Option<Buf>,
    /// The spare has been made (it is either in `spare` or lent out).
    spare_made: bool,
    /// Buffers no longer needed, shrunk a step a turn.
    retiring: Vec<Vec<u8>>,
    /// Their capacities, summed.
    retiring_bytes: usize,
}

impl InputBuffers {
    /// Buffers for frames of at most `max_payload` bytes of payload.
    pub(crate) fn new(max_payload: usize) -> InputBuffers {
        let whole = crate::codec::MAX_HEADER_BYTES + max_payload + crate::codec::TERMINATOR.len();
        InputBuffers {
            spare_room: if whole <= SPARE_MAX_BYTES { whole } else { 0 },
            ..InputBuffers::default()
        }
    }

    /// Bytes held by the spare (idle) and the buffers being given back (the reactor reports
    /// them apart: [`spare_bytes`](Self::spare_bytes), [`retiring_bytes`](Self::retiring_bytes)).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.spare.as_ref().map_or(0, |s| s.bytes.capacity()) + self.retiring_bytes
    }

    /// Bytes held by the spare while no connection holds it.
    pub(crate) fn spare_bytes(&self) -> usize {
        self.spare.as_ref().map_or(0, |s| s.bytes.capacity())
    }

    /// Bytes held by the buffers being given back.
    pub(crate) fn retiring_bytes(&self) -> usize {
        self.retiring_bytes
    }

    /// How many bytes a connection with `pending` input may read now, `fresh` being what is
    /// left of its budget of fresh memory this turn. A full buffer moves on into its
    /// successor first (a budget at a time); 0 means wait for the next turn.
    pub(crate) fn read_limit(
        &mut self,
        pending: &mut PendingIn,
        decoder: &Decoder,
        fresh: &mut usize,
    ) -> usize {
        if pending.is_empty() {
            // A big piece of a frame left over from this read goes to the spare if it is
            // idle (see `store`), anything else into fresh memory.
            let warm = self.spare.as_ref().map_or(0, |s| s.touched);
            return warm.max(*fresh);
        }
        if pending.next.is_none() && pending.len() == pending.cur.bytes.capacity() {
            let whole = decoder.frame_len(pending.as_slice());
            // Full, and its frame needs more: a successor (nothing grows in place).
            if let Some(whole) = whole.filter(|&w| w > pending.len()) {
                pending.next = Some(self.successor(whole, pending.len()));
            }
        }
        if pending.next.is_some() {
            self.copy_step(pending, fresh);
            if pending.next.is_some() {
                return 0;
            }
        }
        let cur = &pending.cur;
        let room = cur.bytes.capacity() - cur.bytes.len();
        room.min(cur.touched - cur.bytes.len() + *fresh)
    }

    /// Stores bytes just read for a connection with `pending` input (within
    /// [`read_limit`](Self::read_limit)), or, when it had none, the part of them left
    /// after its complete frames were handled.
    pub(crate) fn store(
        &mut self,
        pending: &mut PendingIn,
        decoder: &Decoder,
        data: &[u8],
        fresh: &mut usize,
    ) {
        if pending.is_empty() {
            // A new buffer: the spare, for a big frame that fits in it or for more than the
            // budget allows; else one of its own, with room for the frame as `frame_room`
            // allows (a header that claims 1 MiB gets 64 KiB more than arrived, not 1 MiB).
            let whole = decoder.frame_len(data);
            let fits = |w: usize| w > KEEP_PENDING_BYTES && w <= self.spare_room;
            let take_spare = self.spare.is_some()
                && (whole.is_some_and(fits) || data.len() > (*fresh).min(RESERVE_AHEAD));
            let room = whole
                .map_or(KEEP_PENDING_BYTES, |w| frame_room(w, data.len()))
                .max(data.len());
            let kept = pending.cur.bytes.capacity();
            if take_spare || kept < room {
                let old = std::mem::take(&mut pending.cur);
                self.give_back(old);
                pending.cur = match self.spare.take() {
                    Some(spare) if take_spare => spare,
                    other => {
                        self.spare = other;
                        Buf::with_room(room)
                    }
                };
            }
        }
        debug_assert!(pending.next.is_none());
        if pending.cur.bytes.capacity() - pending.len() < data.len() {
            // Beyond what `read_limit` allowed (a caller's error): grow in place, correct
            // but not bounded.
            debug_assert!(false, "stored past the read limit");
            pending.cur.bytes.reserve(data.len());
            pending.cur.touched = pending.len();
        }
        let fresh_now = pending.cur.append(data);
        *fresh = fresh.saturating_sub(fresh_now);
    }

    /// Drops the first `used` bytes of `pending` (frames handled); an empty buffer bigger
    /// than [`KEEP_PENDING_BYTES`] is given back.
    pub(crate) fn consumed(&mut self, pending: &mut PendingIn, used: usize) {
        if used == 0 {
            return;
        }
        pending.cur.bytes.drain(..used);
        if let Some(next) = pending.next.take() {
            // Only a lone partial frame grows, so this does not happen; be correct anyway.
            self.give_back(next);
        }
        if pending.is_empty() && pending.cur.bytes.capacity() > KEEP_PENDING_BYTES {
            let spent = std::mem::take(&mut pending.cur);
            self.give_back(spent);
        }
    }

    /// A closed connection's input buffers.
    pub(crate) fn release(&mut self, pending: PendingIn) {
        self.give_back(pending.cur);
        if let Some(next) = pending.next {
            self.give_back(next);
        }
    }

    /// Every buffer it holds, address and length, for tests that watch what is written.
    #[cfg(test)]
    fn buffers(&self) -> Vec<(usize, usize)> {
        let spare = self
            .spare
            .iter()
            .map(|s| (s.bytes.as_ptr() as usize, s.bytes.len()));
        let retiring = self.retiring.iter().map(|b| (b.as_ptr() as usize, b.len()));
        spare.chain(retiring).collect()
    }

    /// Some buffers are being given back ([`retire_step`](Self::retire_step) has work).
    pub(crate) fn is_retiring(&self) -> bool {
        !self.retiring.is_empty()
    }

    /// Gives a step of the retired buffers back to the allocator; true while some are left.
    pub(crate) fn retire_step(&mut self) -> bool {
        if let Some(b) = self.retiring.last_mut() {
            let had = b.capacity();
            let keep = had.saturating_sub(RETIRE_STEP_BYTES);
            if keep < RETIRE_STEP_BYTES {
                self.retiring.pop();
                self.retiring_bytes -= had;
            } else {
                // Shrinks where it lies (glibc's `realloc` to less neither moves nor
                // copies), unmapping or freeing one step of pages.
                b.shrink_to(keep);
                self.retiring_bytes -= had - b.capacity();
            }
        }
        !self.retiring.is_empty()
    }

    /// A successor for a full buffer of `len` bytes whose frame has `whole`: the spare if
    /// the frame fits in it (made now if it never was), else one with room as
    /// [`frame_room`] allows.
    fn successor(&mut self, whole: usize, len: usize) -> Buf {
        if whole <= self.spare_room {
            if let Some(spare) = self.spare.take() {
                return spare;
            }
            if !self.spare_made {
                self.spare_made = true;
                return Buf::with_room(self.spare_room);
            }
        }
        Buf::with_room(frame_room(whole, len))
    }

    /// Copies as much of `pending`'s bytes into its successor as `fresh` allows (copying
    /// over bytes the successor has written before is free); swaps them when all are in.
    fn copy_step(&mut self, pending: &mut PendingIn, fresh: &mut usize) {
        let Some(next) = pending.next.as_mut() else {
            return;
        };
        let from = next.bytes.len();
        let left = pending.cur.bytes.len() - from;
        let warm = next.touched.saturating_sub(from);
        let n = left.min(warm + *fresh);
        let fresh_now = next.append(&pending.cur.bytes[from..from + n]);
        *fresh = fresh.saturating_sub(fresh_now);
        if next.bytes.len() == pending.cur.bytes.len() {
            let next = pending.next.take().expect("checked above");
            let old = std::mem::replace(&mut pending.cur, next);
            self.give_back(old);
        }
    }

    /// An empty buffer no connection uses any more: the spare's place if it is big enough and
    /// that place is free, else retired.
    fn give_back(&mut self, mut buf: Buf) {
        let cap = buf.bytes.capacity();
        if self.spare_room > 0 && cap >= self.spare_room && self.spare.is_none() {
            buf.bytes.clear();
            self.spare = Some(buf);
            self.spare_made = true;
        } else if cap > 2 * RETIRE_STEP_BYTES {
            buf.bytes.clear();
            self.retiring_bytes += cap;
            self.retiring.push(buf.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode, DEFAULT_MAX_FRAME_BYTES};
    use std::collections::HashMap;

    /// The scratch buffer's size in the reactor: no read is longer.
    const SCRATCH: usize = 256 * 1024;

    /// One connection: its bytes on their way in, what has reached its socket, what it has
    /// handled.
    struct Sender {
        wire: Vec<u8>,
        /// Bytes read from the socket so far.
        read: usize,
        /// Bytes that have reached the socket so far.
        arrived: usize,
        pending: PendingIn,
        decoder: Decoder,
        frames: Vec<usize>,
    }

    impl Sender {
        fn new(payloads: &[usize]) -> Sender {
            Sender::with_limit(payloads, DEFAULT_MAX_FRAME_BYTES)
        }

        /// A sender to a connection that accepts frames of up to `max_payload` bytes.
        fn with_limit(payloads: &[usize], max_payload: usize) -> Sender {
            let mut wire = Vec::new();
            for (i, &len) in payloads.iter().enumerate() {
                encode(&vec![i as u8; len], &mut wire);
            }
            Sender {
                wire,
                read: 0,
                arrived: 0,
                pending: PendingIn::default(),
                decoder: Decoder::new(max_payload),
                frames: Vec::new(),
            }
        }

        fn done(&self) -> bool {
            self.read == self.wire.len() && self.pending.is_empty()
        }

        /// Handles the complete frames at the front of `data`; returns the bytes used.
        fn handle(&mut self, data: &[u8]) -> usize {
            let mut at = 0;
            while let Ok(Some(d)) = self.decoder.decode(&data[at..]) {
                let payload = &data[at + d.payload.start..at + d.payload.end];
                assert!(payload.iter().all(|&b| b == self.frames.len() as u8));
                self.frames.push(payload.len());
                at += d.consumed;
            }
            at
        }
    }

    /// Watches every live buffer's address and length after each call: bytes written beyond
    /// a buffer's high-water mark are memory written for the first time (a new address is a
    /// new buffer, all of it fresh). It relies on nothing the buffers count themselves.
    #[derive(Default)]
    struct Watch {
        high: HashMap<usize, usize>,
        /// Each buffer's length when last seen.
        len: HashMap<usize, usize>,
        /// Bytes appended to any buffer so far (read into it or copied into it).
        written: usize,
    }

    impl Watch {
        fn look(&mut self, bufs: &InputBuffers, senders: &[Sender]) -> usize {
            let mut live = bufs.buffers();
            for s in senders {
                live.extend(s.pending.buffers());
            }
            // A freed buffer's address may be handed out again, as fresh memory.
            self.high
                .retain(|at, _| live.iter().any(|&(a, _)| a == *at));
            self.len.retain(|at, _| live.iter().any(|&(a, _)| a == *at));
            let mut fresh = 0;
            for &(at, len) in &live {
                let was = self.len.insert(at, len).unwrap_or(0);
                self.written += len.saturating_sub(was);
            }
            for (at, len) in live {
                let high = self.high.entry(at).or_insert(0);
                fresh += len.saturating_sub(*high);
                *high = (*high).max(len);
            }
            fresh
        }
    }

    /// Sender `i`'s share of a turn, as the reactor's `read_conn` takes it: its pending input
    /// first, then reads within the read limit (each at most a scratch buffer) until its
    /// socket is empty or it holds a scratch buffer's worth of a frame. Returns the memory
    /// written for the first time, as the watch saw it.
    fn turn(senders: &mut [Sender], i: usize, bufs: &mut InputBuffers, watch: &mut Watch) -> usize {
        let mut fresh = FRESH_BYTES_PER_TURN;
        let mut seen = 0;
        loop {
            let s = &mut senders[i];
            if !s.pending.is_empty() {
                let data = s.pending.as_slice().to_vec();
                let used = s.handle(&data);
                bufs.consumed(&mut s.pending, used);
            }
            let can = bufs.read_limit(&mut s.pending, &s.decoder, &mut fresh);
            seen += watch.look(bufs, senders);
            let s = &mut senders[i];
            let n = can.min(SCRATCH).min(s.arrived - s.read);
            if n == 0 {
                return seen;
            }
            let data = s.wire[s.read..s.read + n].to_vec();
            s.read += n;
            let had_pending = !s.pending.is_empty();
            if had_pending {
                bufs.store(&mut s.pending, &s.decoder, &data, &mut fresh);
            } else {
                let used = s.handle(&data);
                if used < n {
                    bufs.store(&mut s.pending, &s.decoder, &data[used..], &mut fresh);
                }
            }
            seen += watch.look(bufs, senders);
            let s = &senders[i];
            if had_pending && s.pending.len() >= SCRATCH {
                return seen;
            }
        }
    }

    /// Runs the senders turn by turn, `arrive(turn, sender)` bytes reaching each socket a
    /// turn, until everything is handled; returns the most memory one sender wrote for the
    /// first time in one turn, and checks that every frame arrived whole and in order.
    fn run(
        senders: &mut [Sender],
        bufs: &mut InputBuffers,
        watch: &mut Watch,
        mut arrive: impl FnMut(usize, usize) -> usize,
    ) -> usize {
        let mut most = 0;
        let mut turns = 0;
        while !senders.iter().all(Sender::done) {
            for i in 0..senders.len() {
                let s = &mut senders[i];
                s.arrived = (s.arrived + arrive(turns, i)).min(s.wire.len());
                most = most.max(turn(senders, i, bufs, watch));
            }
            bufs.retire_step();
            turns += 1;
            assert!(turns < 100_000, "no progress");
        }
        most
    }

    /// A frame of nearly 1 MiB, as a bulk register sends.
    const BIG: usize = DEFAULT_MAX_FRAME_BYTES - 100;
    /// The most a sender may write into fresh memory a turn.
    const BOUND: usize = FRESH_BYTES_PER_TURN + KEEP_PENDING_BYTES;

    fn check_frames(s: &Sender, payloads: &[usize]) {
        assert_eq!(
            s.frames, payloads,
            "every frame handled, whole and in order"
        );
    }

    #[test]
    fn big_frames_touch_at_most_the_budget_a_turn_then_reuse_the_warm_spare() {
        for arrive in [SCRATCH, 100_000, 4 * SCRATCH, 1_000] {
            let payloads = [BIG, 10, BIG, 300_000, BIG, 5];
            let mut s = [Sender::new(&payloads)];
            let mut bufs = InputBuffers::new(DEFAULT_MAX_FRAME_BYTES);
            let mut watch = Watch::default();
            let most = run(&mut s, &mut bufs, &mut watch, |_, _| arrive);
            assert!(
                most <= BOUND,
                "arrivals of {arrive}: {most} fresh bytes in a turn"
            );
            check_frames(&s[0], &payloads);
            // Once warm, the spare takes later frames without a fresh page.
            let again = [BIG, BIG];
            let mut s = [Sender::new(&again)];
            let (mut fresh_total, mut turns) = (0, 0);
            while !s[0].done() {
                s[0].arrived = (s[0].arrived + arrive).min(s[0].wire.len());
                fresh_total += turn(&mut s, 0, &mut bufs, &mut watch);
                turns += 1;
                assert!(turns < 100_000);
            }
            check_frames(&s[0], &again);
            assert!(
                fresh_total <= KEEP_PENDING_BYTES,
                "arrivals of {arrive}: {fresh_total} fresh bytes with a warm spare"
            );
        }
    }

    #[test]
    fn a_second_big_frame_while_the_spare_is_held_grows_within_the_budget() {
        let a = [BIG, BIG, BIG];
        let b = [200_000, BIG, 3, BIG, 700_000];
        for arrive in [SCRATCH, 50_000, 333_333] {
            let mut s = [Sender::new(&a), Sender::new(&b)];
            let mut bufs = InputBuffers::new(DEFAULT_MAX_FRAME_BYTES);
            let most = run(&mut s, &mut bufs, &mut Watch::default(), |_, _| arrive);
            assert!(
                most <= BOUND,
                "arrivals of {arrive}: {most} fresh bytes in a turn"
            );
            check_frames(&s[0], &a);
            check_frames(&s[1], &b);
            // The spare and at most the buffers being given back are left, and those go.
            while bufs.retire_step() {}
            assert!(bufs.capacity() <= bufs.spare_room);
        }
    }

    #[test]
    fn uneven_arrivals_and_frames_that_outgrow_each_other() {
        // Frames growing past one another (as a register's names gain a digit), small ones
        // between, arriving in uneven pieces from three senders at once.
        let payloads: Vec<usize> = (0..12)
            .map(|i| [600_000 + i * 40_000, 7, 20_000][i % 3])
            .collect();
        let mut seed = 12345u64;
        let mut s = [
            Sender::new(&payloads),
            Sender::new(&payloads),
            Sender::new(&payloads),
        ];
        let mut bufs = InputBuffers::new(DEFAULT_MAX_FRAME_BYTES);
        let most = run(&mut s, &mut bufs, &mut Watch::default(), |_, _| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % 400_000
        });
        assert!(most <= BOUND, "{most} fresh bytes in a turn");
        for s in &s {
            check_frames(s, &payloads);
        }
    }

    #[test]
    fn stalled_headers_hold_room_in_proportion_to_what_they_sent() {
        // A header claiming 1 MiB and 1,000 bytes of it, then nothing: 64 KiB of room
        // beyond what arrived, no spare made for it.
        let mut s: Vec<Sender> = (0..20).map(|_| Sender::new(&[BIG])).collect();
        let mut bufs = InputBuffers::new(DEFAULT_MAX_FRAME_BYTES);
        let mut watch = Watch::default();
        for i in 0..s.len() {
            s[i].arrived = 3 + 1000;
            for _ in 0..3 {
                turn(&mut s, i, &mut bufs, &mut watch);
            }
            assert_eq!(s[i].pending.len(), 1003);
            assert!(s[i].pending.capacity() <= 1003 + RESERVE_AHEAD);
        }
        assert_eq!(bufs.capacity(), 0);
        // One that sends 100 KB and stalls holds the spare (one such at a time); the
        // others hold room in proportion (twice what arrived, a successor's copy aside).
        for i in 0..s.len() {
            s[i].arrived = 100_000;
            for _ in 0..5 {
                turn(&mut s, i, &mut bufs, &mut watch);
            }
            assert_eq!(s[i].pending.len(), 100_000);
        }
        let spare_holders = s
            .iter()
            .filter(|s| s.pending.capacity() == bufs.spare_room)
            .count();
        assert_eq!(spare_holders, 1);
        for s in s.iter().filter(|s| s.pending.capacity() != bufs.spare_room) {
            assert!(s.pending.capacity() <= 2 * 100_000 + RESERVE_AHEAD);
        }
    }

    #[test]
    fn a_closed_connection_gives_the_spare_back() {
        let mut s = [Sender::new(&[BIG])];
        let mut bufs = InputBuffers::new(DEFAULT_MAX_FRAME_BYTES);
        let mut watch = Watch::default();
        s[0].arrived = 500_000;
        for _ in 0..20 {
            turn(&mut s, 0, &mut bufs, &mut watch);
        }
        assert_eq!(s[0].pending.capacity(), bufs.spare_room);
        assert!(bufs.spare.is_none());
        bufs.release(std::mem::take(&mut s[0].pending));
        assert_eq!(bufs.capacity(), bufs.spare_room);
        assert!(bufs.spare.is_some());
    }

    #[test]
    fn retired_buffers_shrink_a_step_a_turn() {
        let mut bufs = InputBuffers::new(DEFAULT_MAX_FRAME_BYTES);
        bufs.give_back(Buf::with_room(10 * RETIRE_STEP_BYTES));
        let mut steps = 0;
        let mut last = bufs.capacity();
        while bufs.retire_step() {
            steps += 1;
            assert!(last - bufs.capacity() <= RETIRE_STEP_BYTES);
            last = bufs.capacity();
        }
        assert_eq!(bufs.capacity(), 0);
        // Nine steps of 64 KiB, then the last 64 KiB freed.
        assert_eq!(steps, 9);
    }

    #[test]
    fn a_16_mib_frame_is_copied_at_most_once_over_in_linear_turns() {
        // A peer accepts frames of 16 MiB: no spare, the frame grows through successors.
        const PEER_MAX: usize = 16 << 20;
        let payloads = [PEER_MAX - 100, 10];
        let mut s = [Sender::with_limit(&payloads, PEER_MAX)];
        s[0].arrived = s[0].wire.len();
        let mut bufs = InputBuffers::new(PEER_MAX);
        let mut watch = Watch::default();
        let (mut turns, mut most) = (0, 0);
        while !s[0].done() {
            most = most.max(turn(&mut s, 0, &mut bufs, &mut watch));
            bufs.retire_step();
            turns += 1;
            assert!(turns < 100_000, "no progress");
        }
        check_frames(&s[0], &payloads);
        assert!(most <= BOUND, "{most} fresh bytes in a turn");
        let wire = s[0].wire.len();
        let copied = watch.written - wire;
        // Each successor at least doubles, so the copies add up to at most the frame.
        assert!(
            copied <= wire,
            "{copied} bytes copied for a {wire}-byte frame"
        );
        // Every byte read or copied is written into fresh memory once, a budget a turn: about
        // 512 turns.
        assert!(
            turns <= (wire + copied) / FRESH_BYTES_PER_TURN + 4,
            "{turns} turns for {copied} bytes copied"
        );
    }

    #[test]
    fn frame_room_grows_with_what_arrived() {
        assert_eq!(frame_room(1 << 20, 1003), 1003 + RESERVE_AHEAD);
        assert_eq!(frame_room(1 << 20, 300_000), 600_000);
        assert_eq!(frame_room(1 << 20, 600_000), 1 << 20);
        assert_eq!(frame_room(100, 10), 100);
    }
}
