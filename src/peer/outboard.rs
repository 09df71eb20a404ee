//! Verified ranges (issue 14, part 1): the BLAKE3 tree ("outboard") of a shared file at 16 KiB
//! chunk groups, its cache on disk, the proof for a byte range, and the downloader's
//! incremental verifier.
//!
//! The tree geometry, the outboard layout (post-order hash pairs) and the proof order (the
//! pre-order walk of the tree restricted to a range) are those of the `bao-tree` crate; the
//! hashing of subtrees and parents is BLAKE3's own `hazmat` API. The root of the tree is the
//! plain BLAKE3 hash of the file, i.e. [`FileHash::of`], so the index's name for a file is the
//! root every range is checked against: nothing else has to be trusted or exchanged.
//!
//! # What goes on the wire (protocol 4, `wire::TransferRequest::Range`)
//! A range is a run of whole 16 KiB groups `[first, end)` of a file of `size` bytes. The holder
//! answers with the **proof** ([`encode_proof`], [`proof_len`] bytes: 64-byte hash pairs in
//! the order the verifier needs them) and then the **raw data bytes** of the range
//! ([`group_bytes`]), which leave the holder with `sendfile`, untouched. Both lengths follow
//! from `(size, first, end)` alone, so no framing is needed between them.
//!
//! # Invariants
//! - [`check_proof`] (and [`RangeVerifier`]) checks every parent pair of the proof against
//!   the root before one data byte is accepted; [`check_groups`] vouches only for the leading
//!   groups whose hash matched, and [`RangeVerifier`] hands out a group's bytes only after its
//!   hash matched: nothing unverified ever reaches the sink. The first mismatch is reported with the
//!   group (or proof pair) it belongs to, and the verifier accepts nothing after it.
//! - Outboard cache files ([`OutboardStore`]) carry a trailer (magic, root, size, group size)
//!   and a BLAKE3 checksum of everything before it; a truncated, corrupt, foreign or stale
//!   file is detected on load, deleted and reported as missing, never used. Files are written
//!   to a temporary name, fsynced and renamed, so a crash leaves the old file or none.
//! - The store holds the outboards of shared files only: one whose file left the share
//!   (deleted, changed, withdrawn) is deleted ([`OutboardStore::remove`]), and after a full
//!   scan every outboard of a hash no longer shared, and any temporary file left by a crash,
//!   is swept ([`OutboardStore::prune`]), so the directory does not grow forever.
//! - Computing an outboard streams the file through a fixed buffer and writes the hash pairs
//!   sequentially to disk: memory does not grow with file size. A file that changes while it
//!   is read is refused (the caller hashes it again when it settles), as in `share::hash_file`.
//!
//! # How the peer uses it
//! The share scan (`share::hash_all`, on the hasher thread) calls
//! [`OutboardStore::compute_file`] for a file of more than one group (one pass gives the hash
//! and the outboard; a file of one group needs none: its proof is empty). The file server
//! (`upload::Outboards`) answers a range request with [`OutboardStore::load`] (once per file,
//! kept open; a missing or damaged outboard is computed again on the hasher thread, never
//! trusted) and [`answer_range`]: the proof, then `sendfile` of its `data` range. The
//! downloader (`download::Download`) checks each answer's proof with [`check_proof`] on the
//! loop, then hands whole groups with their expected hashes to its verifying thread
//! (`verify`), which checks them with [`check_groups`] and writes the verified ones at their
//! offsets into the partial file; the downloader then reports the piece to `swarm::Swarm`.
//! [`RangeVerifier`] does both steps incrementally, in one place (tests, tools).

use crate::peer::share;
use crate::wire::FileHash;
use bao_tree::io::outboard::PostOrderOutboard;
use bao_tree::io::sync::{Outboard, ReadAt};
use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// log2 of the BLAKE3 chunks (1 KiB) in a group: 16 chunks, 16 KiB.
pub const GROUP_CHUNK_LOG: u8 = 4;
/// The unit of verification: every 16 KiB of a download is checked on its own.
pub const GROUP_BYTES: u64 = 1024 << GROUP_CHUNK_LOG;
/// One node of the proof: the hashes of its two children.
pub const PAIR_BYTES: usize = 64;
/// The outboard cache's directory inside the shared directory. Its files are named
/// `.p2pshare-cache.<hash>` so the share scan (`share::is_own_file`) never shares them.
pub const OUTBOARD_DIR: &str = ".p2pshare-cache.outboards";
const TRAILER_MAGIC: &[u8; 8] = b"P2POB\x00\x01\n";
/// magic, root, size, group log, then a checksum of everything before the checksum.
const TRAILER_BYTES: u64 = 8 + 32 + 8 + 1 + 32;
const READ_BUF_BYTES: usize = 256 * 1024;
const COMPUTE_TRIES: usize = 3;

fn block_size() -> BlockSize {
    BlockSize::from_chunk_log(GROUP_CHUNK_LOG)
}

/// The tree of a file of `size` bytes at 16 KiB groups.
pub fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, block_size())
}

/// Number of 16 KiB groups of a file of `size` bytes; an empty file has one (empty) group.
pub fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_BYTES).max(1)
}

/// The bytes of the file covered by groups `groups` (the last group may be short).
pub fn group_bytes(size: u64, groups: Range<u64>) -> Range<u64> {
    let start = (groups.start * GROUP_BYTES).min(size);
    let end = (groups.end.saturating_mul(GROUP_BYTES)).min(size);
    start..end.max(start)
}

/// Size of the outboard (hash pairs only) of a file of `size` bytes.
pub fn outboard_len(size: u64) -> u64 {
    tree(size).outboard_size()
}

/// Why a range cannot be encoded or verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// The range is empty or reaches past the last group of the file.
    BadRange,
    /// The proof is not exactly [`proof_len`] bytes.
    ProofLength,
    /// A hash pair of the proof does not hash to its parent: `pair` is its index in the proof,
    /// `group` the first requested group under it.
    BadProof {
        /// Index of the wrong pair in the proof.
        pair: usize,
        /// The first requested group it covers.
        group: u64,
    },
    /// The data of group `group` does not match its hash.
    BadGroup {
        /// The group (16 KiB from byte `group * GROUP_BYTES`).
        group: u64,
    },
    /// More data bytes arrived than the range holds.
    TooMuchData,
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeError::BadRange => write!(f, "range outside the file"),
            RangeError::ProofLength => write!(f, "proof of the wrong length"),
            RangeError::BadProof { pair, group } => {
                write!(f, "proof hash pair {pair} is wrong (group {group})")
            }
            RangeError::BadGroup { group } => write!(
                f,
                "bytes {}..{} fail verification (group {group})",
                group * GROUP_BYTES,
                (group + 1) * GROUP_BYTES
            ),
            RangeError::TooMuchData => write!(f, "more bytes than the range holds"),
        }
    }
}

impl std::error::Error for RangeError {}

fn check_range(size: u64, groups: &Range<u64>) -> Result<(), RangeError> {
    if groups.start >= groups.end || groups.end > group_count(size) {
        return Err(RangeError::BadRange);
    }
    Ok(())
}

fn chunk_ranges(groups: &Range<u64>) -> ChunkRanges {
    let shift = GROUP_CHUNK_LOG;
    ChunkRanges::from(ChunkNum(groups.start << shift)..ChunkNum(groups.end << shift))
}

/// The walk the proof follows: parents and leaves of `groups`, in the order they are checked.
fn walk(
    size: u64,
    groups: &Range<u64>,
    mut visit: impl FnMut(BaoChunk<&bao_tree::ChunkRangesRef>) -> bool,
) {
    let ranges = chunk_ranges(groups);
    for item in tree(size).ranges_pre_order_chunks_iter_ref(&ranges, 0) {
        if !visit(item) {
            return;
        }
    }
}

/// Length in bytes of the proof for `groups` of a file of `size` bytes.
pub fn proof_len(size: u64, groups: Range<u64>) -> Result<usize, RangeError> {
    check_range(size, &groups)?;
    let mut n = 0;
    walk(size, &groups, |item| {
        if matches!(item, BaoChunk::Parent { .. }) {
            n += PAIR_BYTES;
        }
        true
    });
    Ok(n)
}

/// Appends the proof for `groups` to `out`, read from `outboard` (of the file being served).
pub fn encode_proof(
    outboard: &impl Outboard,
    groups: Range<u64>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let size = outboard.tree().size();
    check_range(size, &groups)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let mut result = Ok(());
    walk(size, &groups, |item| {
        if let BaoChunk::Parent { node, .. } = item {
            match outboard.load(node) {
                Ok(Some((l, r))) => {
                    out.extend_from_slice(l.as_bytes());
                    out.extend_from_slice(r.as_bytes());
                }
                Ok(None) => {
                    result = Err(io::Error::other("outboard lacks a node"));
                    return false;
                }
                Err(e) => {
                    result = Err(e);
                    return false;
                }
            }
        }
        true
    });
    result
}

/// What a holder sends for a range: the proof, then the file's bytes `data`, which leave
/// untouched (by `sendfile`) right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeAnswer {
    /// The hash pairs, [`proof_len`] bytes.
    pub proof: Vec<u8>,
    /// The bytes of the file to send after the proof.
    pub data: Range<u64>,
}

/// The holder's answer to a request for `groups` of the file whose outboard is `outboard`.
pub fn answer_range(outboard: &impl Outboard, groups: Range<u64>) -> io::Result<RangeAnswer> {
    let mut proof = Vec::new();
    encode_proof(outboard, groups.clone(), &mut proof)?;
    Ok(RangeAnswer {
        proof,
        data: group_bytes(outboard.tree().size(), groups),
    })
}

fn parent_cv(l: &blake3::Hash, r: &blake3::Hash, is_root: bool) -> blake3::Hash {
    if is_root {
        merge_subtrees_root(l.as_bytes(), r.as_bytes(), Mode::Hash)
    } else {
        blake3::Hash::from(merge_subtrees_non_root(
            l.as_bytes(),
            r.as_bytes(),
            Mode::Hash,
        ))
    }
}

fn leaf_cv(start_chunk: u64, data: &[u8], is_root: bool) -> blake3::Hash {
    if is_root {
        blake3::hash(data)
    } else {
        let mut h = blake3::Hasher::new();
        h.set_input_offset(start_chunk * 1024);
        h.update(data);
        blake3::Hash::from(h.finalize_non_root())
    }
}

/// One group of a range, with the hash its bytes must have: what a checked proof promises
/// ([`check_proof`]), and what [`check_groups`] holds received bytes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedGroup {
    group: u64,
    len: usize,
    is_root: bool,
    hash: blake3::Hash,
}

impl ExpectedGroup {
    /// The group's number (its bytes start at `group * GROUP_BYTES`).
    pub fn group(&self) -> u64 {
        self.group
    }

    /// Its length in bytes (16 KiB, or less for the last group of the file).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (only the one group of the 0-byte file).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `bytes` are this group's bytes.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() == self.len
            && leaf_cv(self.group << GROUP_CHUNK_LOG, bytes, self.is_root) == self.hash
    }
}

/// Checks `proof` for `groups` of the file `root` of `size` bytes against the root, and
/// returns the groups of the range with the hash each must have. An error names the first
/// wrong pair; nothing of the range can be trusted then. Pure: parent hashes only (a few
/// dozen per range), no data.
pub fn check_proof(
    root: FileHash,
    size: u64,
    groups: Range<u64>,
    proof: &[u8],
) -> Result<Vec<ExpectedGroup>, RangeError> {
    if proof.len() != proof_len(size, groups.clone())? {
        return Err(RangeError::ProofLength);
    }
    let mut stack = vec![blake3::Hash::from(root.0)];
    let mut expected = Vec::new();
    let mut pairs = proof.chunks_exact(PAIR_BYTES).enumerate();
    let mut err = None;
    walk(size, &groups, |item| match item {
        BaoChunk::Parent {
            node,
            is_root,
            left,
            right,
            ..
        } => {
            let (i, pair) = pairs.next().expect("proof length checked");
            let l = blake3::Hash::from(<[u8; 32]>::try_from(&pair[..32]).unwrap());
            let r = blake3::Hash::from(<[u8; 32]>::try_from(&pair[32..]).unwrap());
            let want = stack.pop().expect("the walk pushes before it pops");
            if parent_cv(&l, &r, is_root) != want {
                let first_chunk = node.chunk_range().start.0;
                let group = (first_chunk >> GROUP_CHUNK_LOG).max(groups.start);
                err = Some(RangeError::BadProof { pair: i, group });
                return false;
            }
            if right {
                stack.push(r);
            }
            if left {
                stack.push(l);
            }
            true
        }
        BaoChunk::Leaf {
            start_chunk,
            size,
            is_root,
            ..
        } => {
            let hash = stack.pop().expect("the walk pushes before it pops");
            expected.push(ExpectedGroup {
                group: start_chunk.0 >> GROUP_CHUNK_LOG,
                len: size,
                is_root,
                hash,
            });
            true
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(expected),
    }
}

/// What [`check_groups`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The leading bytes that verified (whole groups), safe to write.
    pub ok_bytes: usize,
    /// The first group that failed (or too much or too little data), if any.
    pub error: Option<RangeError>,
}

/// Checks `data`, the bytes of the consecutive groups `expected` (each group's bytes after
/// the one before), group by group, stopping at the first that fails. Pure: the downloader's
/// verifying thread calls it and writes only the `ok_bytes` it vouches for.
pub fn check_groups(expected: &[ExpectedGroup], data: &[u8]) -> Checked {
    let mut at = 0;
    for exp in expected {
        let Some(bytes) = data.get(at..at + exp.len) else {
            // Short data cannot happen from the downloader (it hands over whole groups);
            // reported as a failed group, never as verified.
            let error = Some(RangeError::BadGroup { group: exp.group });
            return Checked {
                ok_bytes: at,
                error,
            };
        };
        if !exp.matches(bytes) {
            let error = Some(RangeError::BadGroup { group: exp.group });
            return Checked {
                ok_bytes: at,
                error,
            };
        }
        at += exp.len;
    }
    let error = (at != data.len()).then_some(RangeError::TooMuchData);
    Checked {
        ok_bytes: at,
        error,
    }
}

/// The downloader's side of a range: built from the root and the proof (checked at once),
/// then fed the data bytes as they arrive, in any slicing; each 16 KiB group is hashed when
/// complete and handed to the sink at its byte offset only if it matches. (The downloader
/// itself hands whole groups to [`check_groups`] on its verifying thread; this incremental
/// form serves tests and tools.)
#[derive(Debug)]
pub struct RangeVerifier {
    expected: Vec<ExpectedGroup>,
    next: usize,
    buf: Vec<u8>,
    failed: Option<RangeError>,
}

impl RangeVerifier {
    /// Checks `proof` for `groups` of the file `root` of `size` bytes. An error names the
    /// first wrong pair; nothing of the range can be trusted then.
    pub fn new(
        root: FileHash,
        size: u64,
        groups: Range<u64>,
        proof: &[u8],
    ) -> Result<RangeVerifier, RangeError> {
        let expected = check_proof(root, size, groups, proof)?;
        Ok(RangeVerifier {
            expected,
            next: 0,
            buf: Vec::with_capacity(GROUP_BYTES as usize),
            failed: None,
        })
    }

    /// Feeds data bytes. Every group completed and verified goes to `sink(offset, bytes)`;
    /// the first bad group is returned as an error (and every later call returns it again).
    /// A sink error is returned as is (the bytes of that group count as not delivered).
    pub fn handle_data(
        &mut self,
        mut data: &[u8],
        sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<(), VerifyError> {
        if let Some(e) = self.failed {
            return Err(VerifyError::Range(e));
        }
        // An empty group (the 0-byte file) is complete before any byte arrives.
        self.flush_complete(sink)?;
        while !data.is_empty() {
            let Some(exp) = self.expected.get(self.next).copied() else {
                self.failed = Some(RangeError::TooMuchData);
                return Err(VerifyError::Range(RangeError::TooMuchData));
            };
            let take = (exp.len - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.flush_complete(sink)?;
        }
        Ok(())
    }

    fn flush_complete(
        &mut self,
        sink: &mut dyn FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> Result<(), VerifyError> {
        while let Some(exp) = self.expected.get(self.next).copied() {
            if self.buf.len() < exp.len {
                break;
            }
            if !exp.matches(&self.buf) {
                let e = RangeError::BadGroup { group: exp.group };
                self.failed = Some(e);
                return Err(VerifyError::Range(e));
            }
            sink(exp.group * GROUP_BYTES, &self.buf).map_err(VerifyError::Sink)?;
            self.buf.clear();
            self.next += 1;
        }
        Ok(())
    }

    /// Groups verified and delivered so far.
    pub fn verified_groups(&self) -> usize {
        self.next
    }

    /// Whether every group of the range was verified and delivered.
    pub fn is_complete(&self) -> bool {
        self.failed.is_none() && self.next == self.expected.len()
    }
}

/// What went wrong while feeding a [`RangeVerifier`].
#[derive(Debug)]
pub enum VerifyError {
    /// The holder's bytes are wrong (drop the holder).
    Range(RangeError),
    /// Writing verified bytes failed (a local problem, not the holder's).
    Sink(io::Error),
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Range(e) => e.fmt(f),
            VerifyError::Sink(e) => write!(f, "cannot write verified bytes: {e}"),
        }
    }
}

/// A sink for [`RangeVerifier::handle_data`] that writes each verified group at its offset.
pub fn write_at(file: &File) -> impl FnMut(u64, &[u8]) -> io::Result<()> + '_ {
    use std::os::unix::fs::FileExt;
    move |offset, bytes| file.write_all_at(bytes, offset)
}

/// Computes the root hash and the post-order outboard of `size` bytes read from `data`,
/// writing the hash pairs to `outboard` in one sequential pass.
pub fn compute(data: impl Read, size: u64, outboard: impl Write) -> io::Result<FileHash> {
    let root = bao_tree::io::sync::outboard_post_order(data, tree(size), outboard)?;
    Ok(FileHash(*root.as_bytes()))
}

/// An outboard held in memory (tests, small files).
pub fn compute_in_memory(data: &[u8]) -> (FileHash, PostOrderOutboard<Vec<u8>>) {
    let size = data.len() as u64;
    let mut pairs = Vec::with_capacity(outboard_len(size) as usize);
    let root = compute(data, size, &mut pairs).expect("reading memory cannot fail");
    let ob = PostOrderOutboard {
        root: blake3::Hash::from(root.0),
        tree: tree(size),
        data: pairs,
    };
    (root, ob)
}

/// Reads through a counter, so the caller can report progress.
struct Counting<'a, R> {
    inner: R,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}

/// Writes through a BLAKE3 hasher: the cache file's checksum, taken as it is written.
struct Checksummed<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The outboard cache of one shared directory: one file per hash in [`OUTBOARD_DIR`].
#[derive(Debug, Clone)]
pub struct OutboardStore {
    dir: PathBuf,
}

/// An outboard loaded from the cache, read on demand from its file.
pub type FileOutboard = PostOrderOutboard<File>;

impl OutboardStore {
    /// The store of the share rooted at `share_root` (the directory is made on first write).
    pub fn new(share_root: &Path) -> OutboardStore {
        OutboardStore {
            dir: share_root.join(OUTBOARD_DIR),
        }
    }

    /// Where the outboard of `hash` lives.
    pub fn path_of(&self, hash: &FileHash) -> PathBuf {
        self.dir.join(format!("{}.{hash}", share::CACHE_FILE))
    }

    /// Hashes the regular file at `path` (never through a link) and stores its outboard, in
    /// one pass. Returns the hash and the metadata of the file as hashed; a file that changed
    /// while it was read is read again, up to a few times, then refused.
    pub fn compute_file(
        &self,
        path: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<(FileHash, fs::Metadata)> {
        fs::create_dir_all(&self.dir)?;
        for _ in 0..COMPUTE_TRIES {
            let tmp = self
                .dir
                .join(format!(".tmp{}.{}", std::process::id(), fastrand::u64(..)));
            let result = self.compute_once(path, &tmp, progress);
            match result {
                Ok(Some((hash, meta))) => {
                    fs::rename(&tmp, self.path_of(&hash))?;
                    return Ok((hash, meta));
                }
                Ok(None) => {
                    let _ = fs::remove_file(&tmp);
                }
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        Err(io::Error::other(format!(
            "it kept changing while it was hashed ({COMPUTE_TRIES} tries); it will be hashed when it settles"
        )))
    }

    /// One try of [`Self::compute_file`]: `None` if the file changed while it was read.
    fn compute_once(
        &self,
        path: &Path,
        tmp: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<Option<(FileHash, fs::Metadata)>> {
        let (file, before) = share::open_regular(path)?;
        let size = before.len();
        let mut out = Checksummed {
            inner: BufWriter::new(File::create(tmp)?),
            hasher: blake3::Hasher::new(),
        };
        let mut reader = Counting {
            inner: BufReader::with_capacity(READ_BUF_BYTES, file),
            progress,
        };
        let hash = match compute(&mut reader, size, &mut out) {
            Ok(h) => h,
            // The file shrank while it was read.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        };
        let grew = reader.inner.read(&mut [0u8; 1])? != 0;
        let after = reader.inner.get_ref().metadata()?;
        let steady =
            !grew && after.len() == size && share::mtime_ns(&after) == share::mtime_ns(&before);
        if !steady {
            return Ok(None);
        }
        out.write_all(&trailer(hash, size))?;
        let checksum = out.hasher.finalize();
        let mut w = out.inner;
        w.write_all(checksum.as_bytes())?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(Some((hash, after)))
    }

    /// Loads the outboard of `hash` for a file of `size` bytes, checking the whole file
    /// (length, trailer, checksum). Missing gives `Ok(None)`; a file that fails any check is
    /// deleted and also gives `Ok(None)`, so the caller recomputes it. The check reads the
    /// whole outboard (64 bytes per 16 KiB of file): load once per file and keep the handle
    /// for the ranges that follow, rather than once per range.
    pub fn load(&self, hash: &FileHash, size: u64) -> io::Result<Option<FileOutboard>> {
        let path = self.path_of(hash);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if check_file(&file, hash, size)? {
            Ok(Some(PostOrderOutboard {
                root: blake3::Hash::from(hash.0),
                tree: tree(size),
                data: file,
            }))
        } else {
            let _ = fs::remove_file(&path);
            Ok(None)
        }
    }

    /// Forgets the outboard of `hash` (its file left the share).
    pub fn remove(&self, hash: &FileHash) {
        let _ = fs::remove_file(self.path_of(hash));
    }

    /// Deletes every stored outboard whose hash `keep` rejects, and every temporary file
    /// left by a computation that did not finish (call it where no computation runs: the
    /// hasher thread, between jobs). Files it does not recognise are left alone. Returns how
    /// many files were deleted.
    pub fn prune(&self, keep: &dyn Fn(&FileHash) -> bool) -> io::Result<usize> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let prefix = format!("{}.", share::CACHE_FILE);
        let mut removed = 0;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let stale = if name.starts_with(".tmp") {
                true
            } else if let Some(hex) = name.strip_prefix(&prefix) {
                hex.parse::<FileHash>().is_ok_and(|h| !keep(&h))
            } else {
                false
            };
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn trailer(hash: FileHash, size: u64) -> Vec<u8> {
    let mut t = Vec::with_capacity(TRAILER_BYTES as usize);
    t.extend_from_slice(TRAILER_MAGIC);
    t.extend_from_slice(&hash.0);
    t.extend_from_slice(&size.to_le_bytes());
    t.push(GROUP_CHUNK_LOG);
    t
}

/// Whether `file` is a complete, intact outboard of `hash` at `size` bytes. The checksum
/// covers the hash pairs and the trailer fields; the file is streamed, not held in memory.
fn check_file(file: &File, hash: &FileHash, size: u64) -> io::Result<bool> {
    let pairs = outboard_len(size);
    if file.metadata()?.len() != pairs + TRAILER_BYTES {
        return Ok(false);
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let mut offset = 0u64;
    let body = pairs + TRAILER_BYTES - 32;
    while offset < body {
        let n = ((body - offset) as usize).min(buf.len());
        file.read_exact_at(offset, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    let mut stored = [0u8; 32];
    file.read_exact_at(body, &mut stored)?;
    let mut fields = vec![0u8; (TRAILER_BYTES - 32) as usize];
    file.read_exact_at(pairs, &mut fields)?;
    // The top pair must hash to the root too (a checksum alone would accept a stale file
    // rewritten whole under the wrong name).
    let top_ok = if pairs == 0 {
        true
    } else {
        let mut top = [0u8; PAIR_BYTES];
        file.read_exact_at(pairs - PAIR_BYTES as u64, &mut top)?;
        let l = blake3::Hash::from(<[u8; 32]>::try_from(&top[..32]).unwrap());
        let r = blake3::Hash::from(<[u8; 32]>::try_from(&top[32..]).unwrap());
        parent_cv(&l, &r, true).as_bytes() == &hash.0
    };
    Ok(fields == trailer(*hash, size) && hasher.finalize().as_bytes() == &stored && top_ok)
}

#[cfg(test)]
mod tests;
