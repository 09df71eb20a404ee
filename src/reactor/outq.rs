//! A connection's output queue: byte chunks and file ranges, written in order, never dropping
//! a partial write.
//!
//! Frames are appended to the last byte chunk (one small buffer in the steady state, reused
//! once drained: no allocation per frame). A file range ([`OutQueue::push_file`]) is a cursor
//! (open file, offset, bytes left) that [`sys::io::sendfile`] advances, so a file is never held in
//! memory. Bytes appended after a file range go into a new chunk behind it.
//!
//! # Memory
//! A chunk's written bytes are freed only with the chunk, once all of it is written. So a
//! chunk takes no more frames once it holds [`CHUNK_BYTES`] or once its writing has begun:
//! later frames go into a new chunk. (One growing buffer, appended to while its front was
//! being written to a socket that never drained it, kept every byte ever written: a client
//! that read nothing made indexd hold the whole of what its kernel buffers had taken, 4.8 MB
//! a connection.) A chunk that takes no more frames is shrunk to its bytes, so the memory
//! held ([`OutQueue::held`], which the reactor parks on) is at most the unsent bytes, plus
//! the written part of the front chunk (under [`CHUNK_BYTES`] plus one append), plus the
//! room of the one chunk still open (under [`CHUNK_BYTES`]) and the spare's (at most
//! [`KEEP_BUF_BYTES`]).

use crate::sys;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};

/// Largest amount handed to one `sendfile` call: big enough to amortise the call, small enough
/// that one upload does not monopolise the loop.
pub const SENDFILE_CHUNK_BYTES: usize = 1 << 20;

/// Buffers that grew past this are freed when drained rather than kept for reuse.
pub const KEEP_BUF_BYTES: usize = 64 * 1024;

/// A byte chunk holding this much takes no more frames (see the module doc).
pub const CHUNK_BYTES: usize = 64 * 1024;

enum Chunk {
    Bytes { buf: Vec<u8>, pos: usize },
    File { file: File, offset: u64, left: u64 },
}

/// Pending output of one connection.
#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes waiting in byte chunks (file ranges not included: they cost no memory).
    buffered: usize,
    /// File ranges queued.
    files: usize,
    /// A drained buffer kept for the next frames, so a steady request/response stream
    /// allocates nothing.
    spare: Vec<u8>,
}

/// What a [`OutQueue::write_to`] call achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes the socket accepted.
    pub written: u64,
    /// File ranges that finished.
    pub files_done: usize,
}

impl OutQueue {
    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes waiting in memory.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Bytes of memory the queued chunks hold: their capacities, what is written of the
    /// front one included (the reactor parks a connection on this, not on
    /// [`buffered`](Self::buffered) alone). 0 when empty.
    pub fn queued_memory(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| match c {
                Chunk::Bytes { buf, .. } => buf.capacity(),
                Chunk::File { .. } => 0,
            })
            .sum()
    }

    /// Bytes of memory held: [`queued_memory`](Self::queued_memory) and the spare buffer kept
    /// for the next frames (at most [`KEEP_BUF_BYTES`]).
    pub fn held(&self) -> usize {
        self.queued_memory() + self.spare.capacity()
    }

    /// File ranges waiting (or being sent).
    pub fn files(&self) -> usize {
        self.files
    }

    /// Bytes not yet written: those in memory and those left of every file range.
    pub fn unsent(&self) -> u64 {
        self.chunks
            .iter()
            .filter_map(|c| match c {
                Chunk::File { left, .. } => Some(*left),
                Chunk::Bytes { .. } => None,
            })
            .sum::<u64>()
            + self.buffered as u64
    }

    /// The buffer to append frame bytes to, at the back of the queue. Call
    /// [`OutQueue::commit`] with the length it had before appending.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        let open = matches!(
            self.chunks.back(),
            Some(Chunk::Bytes { buf, pos }) if *pos == 0 && buf.len() < CHUNK_BYTES
        );
        if !open {
            if let Some(Chunk::Bytes { buf, .. }) = self.chunks.back_mut() {
                // Takes no more frames: its room goes back (glibc shrinks in place).
                buf.shrink_to_fit();
            }
            self.chunks.push_back(Chunk::Bytes {
                buf: std::mem::take(&mut self.spare),
                pos: 0,
            });
        }
        match self.chunks.back_mut() {
            Some(Chunk::Bytes { buf, .. }) => buf,
            _ => unreachable!("a byte chunk was just ensured at the back"),
        }
    }

    /// Accounts for bytes appended to [`OutQueue::tail`], which was `before` long.
    pub fn commit(&mut self, before: usize) {
        let now = match self.chunks.back() {
            Some(Chunk::Bytes { buf, .. }) => buf.len(),
            _ => before,
        };
        self.buffered += now - before;
        // An encoder that appended nothing leaves an empty chunk; drop it so is_empty holds.
        if now == 0 {
            if let Some(Chunk::Bytes { buf, .. }) = self.chunks.pop_back() {
                self.spare = buf;
            }
        } else if now >= CHUNK_BYTES {
            // Full: it takes no more frames, so the room beyond its bytes goes back now
            // (a big answer grew it by doubling).
            if let Some(Chunk::Bytes { buf, .. }) = self.chunks.back_mut() {
                buf.shrink_to_fit();
            }
        }
    }

    /// Appends raw bytes.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let tail = self.tail();
        let before = tail.len();
        tail.extend_from_slice(bytes);
        self.commit(before);
    }

    /// Appends `len` bytes of `file` starting at `offset`.
    pub fn push_file(&mut self, file: File, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.chunks.push_back(Chunk::File {
            file,
            offset,
            left: len,
        });
        self.files += 1;
    }

    /// Whether it holds no memory at all (no chunk, no spare).
    pub fn is_freed(&self) -> bool {
        self.chunks.is_empty() && self.spare.capacity() == 0
    }

    /// Frees the front chunk of a queue nobody will write any more (its connection closed);
    /// returns the bytes of memory it held, or `None` once the queue is empty (the spare is
    /// freed last).
    pub fn free_front(&mut self) -> Option<usize> {
        match self.chunks.pop_front() {
            Some(Chunk::Bytes { buf, pos }) => {
                self.buffered -= buf.len() - pos;
                Some(buf.capacity())
            }
            Some(Chunk::File { .. }) => {
                self.files -= 1;
                Some(0)
            }
            None if self.spare.capacity() > 0 => Some(std::mem::take(&mut self.spare).capacity()),
            None => None,
        }
    }

    /// Writes as much as `sock` accepts, until the queue is empty or the socket would block.
    /// `Ok` with progress on `WouldBlock` or when empty; `Err` on any other failure, including
    /// a file that ended before its range did (it shrank since it was queued).
    pub fn write_to<S>(&mut self, sock: &mut S) -> io::Result<Progress>
    where
        S: Write + std::os::fd::AsRawFd,
    {
        self.write_at_most(sock, u64::MAX)
    }

    /// [`OutQueue::write_to`], stopping once `limit` bytes are written (what a turn's write
    /// budget leaves): then the socket may still accept more, and no writable edge will come.
    pub fn write_at_most<S>(&mut self, sock: &mut S, limit: u64) -> io::Result<Progress>
    where
        S: Write + std::os::fd::AsRawFd,
    {
        let mut progress = Progress::default();
        while let Some(front) = self.chunks.front_mut() {
            match front {
                Chunk::Bytes { buf, pos } => {
                    while *pos < buf.len() {
                        let left = limit - progress.written;
                        if left == 0 {
                            return Ok(progress);
                        }
                        let end = *pos + ((buf.len() - *pos) as u64).min(left) as usize;
                        match sock.write(&buf[*pos..end]) {
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            Ok(n) => {
                                *pos += n;
                                self.buffered -= n;
                                progress.written += n as u64;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(progress),
                            Err(e) => return Err(e),
                        }
                    }
                    if let Some(Chunk::Bytes { mut buf, .. }) = self.chunks.pop_front() {
                        // Keep the buffer for the next frames, unless a burst bloated it.
                        if buf.capacity() <= KEEP_BUF_BYTES && self.spare.capacity() == 0 {
                            buf.clear();
                            self.spare = buf;
                        }
                    }
                }
                Chunk::File { file, offset, left } => {
                    while *left > 0 {
                        let budget = limit - progress.written;
                        if budget == 0 {
                            return Ok(progress);
                        }
                        let want = (*left).min(SENDFILE_CHUNK_BYTES as u64).min(budget) as usize;
                        match sys::io::sendfile(sock, file, offset, want) {
                            Ok(0) => {
                                return Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "file shrank while being sent",
                                ))
                            }
                            Ok(n) => {
                                *left -= n as u64;
                                progress.written += n as u64;
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(progress),
                            Err(e) => return Err(e),
                        }
                    }
                    self.chunks.pop_front();
                    self.files -= 1;
                    progress.files_done += 1;
                }
            }
        }
        Ok(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, RawFd};

    /// A scripted socket: accepts at most `budget[i]` bytes on the i-th write, then WouldBlock.
    struct ShortWriter {
        got: Vec<u8>,
        budget: Vec<usize>,
        calls: usize,
    }

    impl Write for ShortWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let b = self.budget.get(self.calls).copied().unwrap_or(0);
            self.calls += 1;
            if b == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.min(buf.len());
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl AsRawFd for ShortWriter {
        fn as_raw_fd(&self) -> RawFd {
            -1
        }
    }

    /// A socket that takes `left` bytes in all, then says WouldBlock.
    struct Allowance {
        got: Vec<u8>,
        left: usize,
    }

    impl Write for Allowance {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.left.min(buf.len());
            self.left -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl AsRawFd for Allowance {
        fn as_raw_fd(&self) -> RawFd {
            -1
        }
    }

    #[test]
    fn short_writes_never_lose_bytes() {
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; (i as usize * 37) % 500 + 1];
            q.push_bytes(&chunk);
            expect.extend_from_slice(&chunk);
        }
        assert_eq!(q.buffered(), expect.len());
        let mut sock = ShortWriter {
            got: Vec::new(),
            budget: Vec::new(),
            calls: 0,
        };
        // Write in rounds of odd-sized budgets separated by WouldBlock.
        while !q.is_empty() {
            sock.budget = vec![7, 13, 1, 0];
            sock.calls = 0;
            q.write_to(&mut sock).unwrap();
        }
        assert_eq!(sock.got, expect);
        assert_eq!(q.buffered(), 0);
    }

    #[test]
    fn written_bytes_are_freed_a_chunk_at_a_time_while_frames_keep_coming() {
        // A socket that takes a little less than each frame: the queue never empties, and
        // frames keep arriving behind the part being written (a client that reads slowly,
        // or whose kernel buffers take what it does not read). The memory held beyond the
        // unsent bytes stays under the front chunk's written part (a chunk plus one frame),
        // the open chunk's room and the spare: it does not grow with what was written.
        let sizes = [105_000usize, 40, 3_000, 700_000, CHUNK_BYTES, 1, 90_000];
        let largest = *sizes.iter().max().unwrap();
        let bound = largest + 3 * CHUNK_BYTES + KEEP_BUF_BYTES;
        let mut q = OutQueue::default();
        let mut sock = Allowance {
            got: Vec::new(),
            left: 0,
        };
        let mut expect = Vec::new();
        let mut most = 0;
        for round in 0..140 {
            let len = sizes[round % sizes.len()];
            let frame = vec![round as u8; len];
            let tail = q.tail();
            let before = tail.len();
            tail.extend_from_slice(&frame);
            q.commit(before);
            expect.extend_from_slice(&frame);
            sock.left = len * 9 / 10;
            q.write_to(&mut sock).unwrap();
            assert!(!q.is_empty());
            let over = q.held() - q.buffered();
            most = most.max(over);
            assert!(
                over <= bound,
                "round {round}: {} bytes held for {} unsent",
                q.held(),
                q.buffered()
            );
        }
        assert!(sock.got.len() > 10 * bound, "the test wrote enough to tell");
        sock.left = usize::MAX;
        q.write_to(&mut sock).unwrap();
        assert_eq!(sock.got, expect);
        assert_eq!(q.queued_memory(), 0);
        assert!(q.held() <= KEEP_BUF_BYTES);
        println!("most held beyond the unsent bytes: {most} (bound {bound})");
    }

    #[test]
    fn a_limited_write_stops_at_the_limit_and_the_rest_follows() {
        let mut q = OutQueue::default();
        q.push_bytes(&[1u8; 100]);
        q.push_bytes(&[2u8; 50]);
        let mut sock = ShortWriter {
            got: Vec::new(),
            budget: vec![1000; 10],
            calls: 0,
        };
        assert_eq!(q.write_at_most(&mut sock, 0).unwrap().written, 0);
        assert_eq!(q.write_at_most(&mut sock, 120).unwrap().written, 120);
        assert_eq!((sock.got.len(), q.buffered()), (120, 30));
        assert_eq!(q.write_at_most(&mut sock, 1000).unwrap().written, 30);
        assert!(q.is_empty());
        let mut expect = vec![1u8; 100];
        expect.extend_from_slice(&[2u8; 50]);
        assert_eq!(sock.got, expect);
    }

    #[test]
    fn bytes_after_a_file_wait_behind_it() {
        let dir = std::env::temp_dir().join(format!("p2pshare-outq-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"FILEBYTES").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut q = OutQueue::default();
        q.push_bytes(b"head:");
        q.push_file(File::open(&path).unwrap(), 4, 5);
        q.push_bytes(b":tail");
        assert_eq!((q.files(), q.buffered()), (1, 10));
        let p = q.write_to(&mut server).unwrap();
        assert_eq!(p.files_done, 1);
        assert_eq!(p.written, 15);
        assert!(q.is_empty());
        drop(server);
        let mut got = Vec::new();
        io::Read::read_to_end(&mut &client, &mut got).unwrap();
        assert_eq!(got, b"head:BYTES:tail");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
