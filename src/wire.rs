//! Wire messages: every message of the p2pshare protocol as a serde type, encoded with postcard
//! inside one `\r\r\n` frame (see [`crate::codec`]).
//!
//! Two conversations use them:
//! - **peer ↔ index** ([`Request`] / [`Response`]): a long-lived session. The first request must
//!   be [`RequestBody::Hello`]; every request carries a client-chosen id that its response
//!   echoes, so a client may pipeline many requests and match answers by id.
//! - **peer ↔ peer** ([`TransferRequest`] / [`TransferResponse`]): a downloader asks a holder
//!   for a run of 16 KiB groups of a file by (hash, size); the holder answers with a header
//!   frame followed by exactly the range's proof and then its data bytes, raw (no framing;
//!   both lengths follow from the request, see [`crate::peer::outboard`]). Requests may be
//!   pipelined: the holder answers them in order on the same connection.
//! - **push** (protocol 5): a holder whose file server cannot be reached (behind a NAT or a
//!   firewall) serves by connecting out. The downloader asks the index
//!   ([`RequestBody::Push`]); the index relays it over the holder's session
//!   ([`ResponseBody::PushRequest`], a notice with id 0) with the downloader's *observed*
//!   address; the holder connects there, names the push in its first frame
//!   ([`TransferRequest::Pushed`]), and from then on the connection is an ordinary transfer
//!   connection with the roles as usual (the downloader asks ranges, the holder answers).
//!   Whether a peer's file server can be reached is tested by the index with a connect-back
//!   ([`RequestBody::Reachability`], [`TransferRequest::Probe`]).
//!
//! # Compatibility
//! [`RequestBody::Hello`] and [`TransferRequest::Range`] are variant 0 and start with the protocol
//! version, so a server of any version can read a client's version with [`peek_version`] even
//! when the rest of the message no longer decodes, and answer a mismatch with a clear error.
//!
//! # Invariants
//! Decoding untrusted bytes returns an error, never panics; postcard bounds every length by
//! the bytes actually present, so a hostile length prefix cannot make it allocate more than
//! the frame holds.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 5;

/// A file's identity: the BLAKE3 hash of its bytes. Shown to people as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct FileHash(pub [u8; 32]);

impl FileHash {
    /// The BLAKE3 hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        FileHash(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// Whether this hash's hex form starts with `prefix` (lowercase hex digits).
    pub fn has_hex_prefix(&self, prefix: &str) -> bool {
        blake3::Hash::from_bytes(self.0)
            .to_hex()
            .as_bytes()
            .starts_with(prefix.as_bytes())
    }
}

impl fmt::Display for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&blake3::Hash::from_bytes(self.0).to_hex())
    }
}

impl fmt::Debug for FileHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileHash({self})")
    }
}

/// Why a string is not a 64-digit hex hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadHash;

impl fmt::Display for BadHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a hash: expected 64 hex digits")
    }
}

impl std::error::Error for BadHash {}

impl FromStr for FileHash {
    type Err = BadHash;

    fn from_str(s: &str) -> Result<Self, BadHash> {
        // blake3 takes either case, as people type hashes in both.
        blake3::Hash::from_hex(s)
            .map(|h| FileHash(*h.as_bytes()))
            .map_err(|_| BadHash)
    }
}

/// Whether `s` could be a hash prefix a person typed: 8 to 64 hex digits.
pub fn is_hex_prefix(s: &str) -> bool {
    (8..=64).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// One shared file as a peer announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// BLAKE3 of the contents.
    pub hash: FileHash,
    /// Size in bytes.
    pub size: u64,
    /// The file's name (no directories), as the peer shares it.
    pub name: String,
}

/// A [`FileEntry`] decoded with its name borrowed from the frame: what a small register is
/// decoded into (see [`decode_small_register`]), so that announcing a few files costs indexd
/// no allocation per name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntryRef<'a> {
    /// BLAKE3 of the contents.
    pub hash: FileHash,
    /// Size in bytes.
    pub size: u64,
    /// The file's name, in the frame's bytes.
    #[serde(borrow)]
    pub name: &'a str,
}

impl FileEntryRef<'_> {
    /// The entry with its own copy of the name.
    pub fn to_owned_entry(&self) -> FileEntry {
        FileEntry {
            hash: self.hash,
            size: self.size,
            name: self.name.to_owned(),
        }
    }
}

/// What the index reads of an announced file, whether its name is owned ([`FileEntry`]) or
/// borrowed from the frame ([`FileEntryRef`]).
pub trait AnnouncedFile {
    /// BLAKE3 of the contents.
    fn hash(&self) -> &FileHash;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// The file's name.
    fn name(&self) -> &str;
}

impl AnnouncedFile for FileEntry {
    #[inline]
    fn hash(&self) -> &FileHash {
        &self.hash
    }
    #[inline]
    fn size(&self) -> u64 {
        self.size
    }
    #[inline]
    fn name(&self) -> &str {
        &self.name
    }
}

impl AnnouncedFile for FileEntryRef<'_> {
    #[inline]
    fn hash(&self) -> &FileHash {
        &self.hash
    }
    #[inline]
    fn size(&self) -> u64 {
        self.size
    }
    #[inline]
    fn name(&self) -> &str {
        self.name
    }
}

/// A request from a peer to the index. `id` is echoed in the [`Response`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Client-chosen id, echoed in the response.
    pub id: u32,
    /// What is asked.
    pub body: RequestBody,
}

/// What a peer can ask the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    /// First request of a session: the protocol version and the TCP port this peer serves
    /// downloads on (0: it serves none). Must stay variant 0 with `version` first.
    Hello {
        /// [`PROTOCOL_VERSION`] of the client.
        version: u16,
        /// Port of the peer's file server.
        listen_port: u16,
        /// Free-form client name and version, for logs.
        agent: String,
    },
    /// Announce files, in bulk.
    Register {
        /// The files.
        files: Vec<FileEntry>,
    },
    /// Withdraw files this peer registered, by hash.
    Unregister {
        /// The hashes.
        hashes: Vec<FileHash>,
    },
    /// Keyword search over file names.
    Search {
        /// Words separated by anything not a letter or digit.
        query: String,
        /// Most results wanted (the server caps it further).
        limit: u32,
        /// Conditions every hit meets.
        filter: SearchFilter,
        /// The next page: the `next` of the previous answer to the same query and filter.
        after: Option<SearchCursor>,
    },
    /// Who holds a file. A name may be borne by many files: they come in pages, best first
    /// (see [`ResponseBody::Holders`]).
    Lookup {
        /// By hash, hash prefix or exact name.
        key: LookupKey,
        /// With a [`LookupKey::Name`]: the `next` token of the previous page, to get the page
        /// after it; `None` for the first page. Refused with any other key.
        after: Option<LookupToken>,
    },
    /// Liveness check; also keeps an idle session from timing out.
    Ping,
    /// Server counters.
    Stats,
    /// End the session; the server answers and closes.
    Bye,
    /// Test whether this peer's file server can be reached: the index connects back to the
    /// observed IP at the announced port and sends [`TransferRequest::Probe`]. Answered with
    /// [`ResponseBody::Reachability`] once the test is over (other answers may come first).
    /// Also says that this session takes push requests ([`ResponseBody::PushRequest`]) from
    /// now on: a session that never asked is not pushed to. (Protocol 5.)
    Reachability,
    /// Ask the holder at `holder` (an address a lookup gave, which the index found
    /// unreachable or we could not connect to) to connect to *our* file server and serve
    /// `hash` there. The index relays it to that holder's session with our observed address
    /// and announced port; we name no address. Answered [`ResponseBody::PushRelayed`], or an
    /// error, or `RateLimited`. (Protocol 5.)
    Push {
        /// The file wanted.
        hash: FileHash,
        /// The holder, as a lookup listed it.
        holder: SocketAddr,
        /// Chosen by us; the holder names it in its first frame
        /// ([`TransferRequest::Pushed`]), so we know which push it answers.
        nonce: u64,
    },
}

/// How a lookup names a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LookupKey {
    /// The full hash.
    Hash(FileHash),
    /// A unique prefix of the lowercase hex form, 8 to 64 digits.
    HashPrefix(String),
    /// An exact file name.
    Name(String),
}

/// Where a page of a name lookup ended: echo it back in [`RequestBody::Lookup`] to get the
/// next page. Opaque to clients. The index reads it as a position in the name's order (most
/// holders first) and answers the files after that position as the order is *then*: a file
/// whose holder count changed between two pages may be shown twice or not at all, and any
/// value is a valid position (a forged token only skips files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LookupToken(pub u128);

/// An answer from the index, to the request with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id (0 for an error about a frame that could not be decoded).
    pub id: u32,
    /// The answer.
    pub body: ResponseBody,
}

/// Every answer the index gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseBody {
    /// Answer to Hello.
    Welcome {
        /// The server's [`PROTOCOL_VERSION`].
        version: u16,
        /// This session's id.
        session: u64,
        /// The address the server sees this peer at, with the announced port: what it gives
        /// other peers.
        observed: SocketAddr,
    },
    /// Answer to Register.
    Registered {
        /// Entries new to this peer.
        added: u32,
        /// Entries refused (bad name, size that contradicts the hash's known size).
        rejected: u32,
        /// Files this peer now holds in the index.
        total: u32,
    },
    /// Answer to Unregister.
    Unregistered {
        /// Entries removed (hashes this peer did not register count 0).
        removed: u32,
        /// Files this peer still holds in the index.
        total: u32,
    },
    /// Answer to Search, best first.
    SearchResults {
        /// The hits.
        hits: Vec<SearchHit>,
        /// Matches ranked after the cursor (all of them on a first page), these hits included:
        /// exact if `total_exact`, else a lower bound.
        total: u64,
        /// `total` is exact.
        total_exact: bool,
        /// Where the next page starts, if more may match.
        next: Option<SearchCursor>,
        /// The search stopped at its work budget before it knew the best hits for sure: the
        /// hits are the best among the candidates it examined.
        partial: bool,
        /// The server time the search took, from the decoded request to the answer built, in
        /// µs (what benchmarks and operators compare across query classes).
        server_us: u32,
    },
    /// Answer to Lookup. By name: one entry per file of that name; a name may be borne by
    /// many files: at most the server's page size of them come at once, most holders first
    /// (ties by hash), each with at most the server's cap of holders. By hash or hash prefix:
    /// one entry per size claimed for that hash (peers choose what they claim, and a wrong
    /// size never hides the right one), the claim held from the most distinct addresses
    /// first; the content hash tells which claim is true once the bytes arrive.
    Holders {
        /// The files and who holds them.
        files: Vec<HeldFile>,
        /// How many files match in all (this page included).
        total: u64,
        /// More files follow this page: ask again with this token.
        next: Option<LookupToken>,
        /// The holders of this answer the index found unreachable (the connect-back failed,
        /// or they serve no port): a downloader asks them for a push at once instead of
        /// connecting. (Protocol 5.)
        firewalled: Vec<SocketAddr>,
    },
    /// Answer to Ping.
    Pong,
    /// Answer to Stats.
    Stats(ServerStats),
    /// Answer to Bye; the server closes after sending it.
    Bye,
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A sentence for a person.
        message: String,
    },
    /// The request was refused over a rate limit, unanswered: send it again after
    /// `retry_after_ms`. With `banned`, the client's address kept exceeding its limits and
    /// is refused altogether for that long: the server closes the connection after this
    /// answer (and a connection refused at accept for a ban reads it as request 0's answer).
    RateLimited {
        /// Milliseconds to wait before trying again.
        retry_after_ms: u64,
        /// The address is banned for that long.
        banned: bool,
    },
    /// Answer to [`RequestBody::Reachability`]: whether the index reached this peer's file
    /// server (false also for a peer announcing port 0).
    Reachability {
        /// The connect-back reached our file server and it answered the probe.
        reachable: bool,
    },
    /// Answer to [`RequestBody::Push`]: the push was relayed to the holder's session.
    PushRelayed,
    /// A notice (id 0, it answers nothing): a downloader asks this peer to connect to `to`
    /// and serve `hash` there, naming `nonce` in its first frame. `to` is the downloader's
    /// address as the index sees it, with its announced port. Sent only to sessions that
    /// asked [`RequestBody::Reachability`].
    PushRequest {
        /// The file wanted.
        hash: FileHash,
        /// Where to connect.
        to: SocketAddr,
        /// To name in [`TransferRequest::Pushed`].
        nonce: u64,
    },
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The matching name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// The file's hash.
    pub hash: FileHash,
    /// How many live peers hold this hash.
    pub holders: u32,
}

/// Conditions a search's hits must all meet; the default meets every file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SearchFilter {
    /// Smallest size in bytes.
    pub min_size: u64,
    /// Largest size in bytes, if bounded.
    pub max_size: Option<u64>,
    /// Extensions (lowercase, no dot): the name's text after its last `.` is one of them.
    /// Empty: any.
    pub exts: Vec<String>,
    /// A type class: the name's extension is one of its [`FileKind::extensions`].
    pub kind: Option<FileKind>,
    /// Fewest holders (0 and 1 mean any).
    pub min_holders: u32,
}

impl SearchFilter {
    /// Most extensions one filter may list.
    pub const MAX_EXTS: usize = 32;
    /// Longest extension, in bytes.
    pub const MAX_EXT_BYTES: usize = 16;

    /// Whether the filter meets every file.
    pub fn is_empty(&self) -> bool {
        *self == SearchFilter::default()
    }

    /// Whether the filter is within the limits a server accepts: at most [`Self::MAX_EXTS`]
    /// extensions of at most [`Self::MAX_EXT_BYTES`] each, and a size range that is not empty.
    pub fn is_valid(&self) -> bool {
        self.exts.len() <= Self::MAX_EXTS
            && self
                .exts
                .iter()
                .all(|e| !e.is_empty() && e.len() <= Self::MAX_EXT_BYTES)
            && self.max_size.map_or(true, |m| m >= self.min_size)
    }
}

/// A class of file types, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    /// Sound and music.
    Audio,
    /// Films and clips.
    Video,
    /// Pictures.
    Image,
    /// Text, office documents, books.
    Document,
    /// Compressed archives and disk images.
    Archive,
    /// Programs and installers.
    Program,
}

impl FileKind {
    /// Every kind, in the order `help` lists them.
    pub const ALL: [FileKind; 6] = [
        FileKind::Audio,
        FileKind::Video,
        FileKind::Image,
        FileKind::Document,
        FileKind::Archive,
        FileKind::Program,
    ];

    /// The kind's name as typed (`type:audio`).
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Audio => "audio",
            FileKind::Video => "video",
            FileKind::Image => "image",
            FileKind::Document => "document",
            FileKind::Archive => "archive",
            FileKind::Program => "program",
        }
    }

    /// The extensions (lowercase, no dot) of this kind.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            FileKind::Audio => &[
                "mp3", "flac", "ogg", "opus", "wav", "m4a", "aac", "wma", "aiff", "ape", "alac",
                "mid", "midi",
            ],
            FileKind::Video => &[
                "mp4", "mkv", "avi", "mov", "wmv", "webm", "flv", "mpg", "mpeg", "m4v", "ts",
                "3gp", "ogv",
            ],
            FileKind::Image => &[
                "jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff", "svg", "heic", "ico",
                "raw",
            ],
            FileKind::Document => &[
                "pdf", "doc", "docx", "odt", "txt", "rtf", "md", "epub", "mobi", "xls", "xlsx",
                "ods", "ppt", "pptx", "odp", "tex", "html", "htm", "csv",
            ],
            FileKind::Archive => &[
                "zip", "rar", "7z", "tar", "gz", "tgz", "bz2", "xz", "zst", "iso", "lz", "cab",
            ],
            FileKind::Program => &[
                "exe", "msi", "deb", "rpm", "apk", "dmg", "appimage", "bin", "sh", "bat", "jar",
                "com",
            ],
        }
    }
}

impl FromStr for FileKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        FileKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or(())
    }
}

/// Where a search's next page starts: after the hit of this rank. Opaque to clients, who send
/// back what the server gave; the server checks it belongs to the same query and filter, and
/// any position is a valid place to continue from (see the index's ranking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SearchCursor {
    /// Query words the last hit matched whole.
    pub whole: u8,
    /// The last hit's tier and entry (a posting key).
    pub key: u32,
    /// A fingerprint of the query and filter it continues.
    pub check: u32,
}

/// One file and the peers that hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldFile {
    /// The file's hash.
    pub hash: FileHash,
    /// Size in bytes.
    pub size: u64,
    /// A name it is shared under.
    pub name: String,
    /// File-server addresses of the holders: for a lookup by hash all of them; for a lookup
    /// by name those sharing the file under that name, at most the server's cap, in no
    /// particular order.
    pub holders: Vec<SocketAddr>,
    /// How many holders there are in all (`holders` may list fewer).
    pub holder_count: u32,
}

/// Server counters, for `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Open connections.
    pub connections: u64,
    /// Peers that completed the handshake.
    pub peers: u64,
    /// Distinct hashes indexed.
    pub files: u64,
    /// Distinct (hash, name) entries indexed.
    pub names: u64,
    /// Requests served, by kind.
    pub registers: u64,
    /// Unregister requests served.
    pub unregisters: u64,
    /// Search requests served.
    pub searches: u64,
    /// Lookup requests served.
    pub lookups: u64,
    /// Ping requests served.
    pub pings: u64,
    /// Error responses sent.
    pub errors: u64,
    /// Reactor turns measured (each a wait's return to the next wait).
    pub loop_turns: u64,
    /// The longest time the reactor loop worked between two waits since it started, in µs:
    /// the most any answer was delayed by other connections' work.
    pub loop_max_pause_us: u64,
    /// The 99th percentile of those pauses, in µs.
    pub loop_p99_pause_us: u64,
    /// The 99.9th percentile of those pauses, in µs.
    pub loop_p999_pause_us: u64,
    /// Server time of a search (from the decoded request to its encoded answer), 99th
    /// percentile since start, in ns (2 significant digits).
    pub search_p99_ns: u64,
    /// The longest server time of a search, in ns.
    pub search_max_ns: u64,
    /// Server time of a lookup, 99th percentile since start, in ns.
    pub lookup_p99_ns: u64,
    /// The longest server time of a lookup, in ns.
    pub lookup_max_ns: u64,
    /// Requests refused over a rate limit (with `RateLimited`), bans included.
    pub rate_limited: u64,
    /// Temporary bans imposed on addresses.
    pub bans: u64,
    /// Connections refused at accept because their address was banned.
    pub banned_connections: u64,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The client speaks another protocol version.
    VersionMismatch,
    /// A request other than Hello came before the handshake, or Hello came twice.
    NotReady,
    /// The frame did not decode as a request.
    Malformed,
    /// A frame broke the framing rules or exceeded the size limit.
    BadFrame,
    /// No file with that hash, prefix or name.
    NotFound,
    /// A hash prefix matches several files.
    Ambiguous,
    /// The request is well-formed but not acceptable (too many files, bad name, ...).
    Invalid,
    /// The server is at its connection limit.
    Busy,
    /// A peer's file server could not read the file.
    Io,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            ErrorCode::VersionMismatch => "version mismatch",
            ErrorCode::NotReady => "not ready",
            ErrorCode::Malformed => "malformed request",
            ErrorCode::BadFrame => "bad frame",
            ErrorCode::NotFound => "not found",
            ErrorCode::Ambiguous => "ambiguous",
            ErrorCode::Invalid => "invalid request",
            ErrorCode::Busy => "busy",
            ErrorCode::Io => "i/o error",
        };
        f.write_str(s)
    }
}

/// A downloader's request to a holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferRequest {
    /// Send the 16 KiB groups `first..end` of the file with this hash and size, with their
    /// proof (protocol 4). Must stay variant 0 with `version` first.
    Range {
        /// [`PROTOCOL_VERSION`] of the downloader.
        version: u16,
        /// The file wanted.
        hash: FileHash,
        /// Its size as the downloader was told (a holder of another size refuses).
        size: u64,
        /// First group wanted.
        first: u64,
        /// One past the last group wanted.
        end: u64,
    },
    /// From the index's connect-back: answer [`TransferResponse::Probed`] with the same
    /// nonce, then the index closes. (Protocol 5.)
    Probe {
        /// [`PROTOCOL_VERSION`] of the index.
        version: u16,
        /// To echo.
        nonce: u64,
    },
    /// The first frame of a holder that connected to us because we asked for a push: it
    /// serves `hash` on this connection, and we send range requests as on any transfer
    /// connection. (Protocol 5.)
    Pushed {
        /// [`PROTOCOL_VERSION`] of the holder.
        version: u16,
        /// The file it serves.
        hash: FileHash,
        /// The nonce of our [`RequestBody::Push`].
        nonce: u64,
    },
}

/// A holder's answer to one [`TransferRequest::Range`], in the order the requests came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferResponse {
    /// The groups `first..end` of the file of `size` bytes follow this frame, raw: first
    /// their proof (`outboard::proof_len(size, first..end)` bytes), then their data bytes
    /// (`outboard::group_bytes(size, first..end)`).
    Sending {
        /// The whole file's size.
        size: u64,
        /// First group sent.
        first: u64,
        /// One past the last group sent.
        end: u64,
    },
    /// The holder will not send it.
    Error {
        /// Why.
        code: ErrorCode,
        /// A sentence for a person.
        message: String,
    },
    /// Every upload slot is busy: the request waits in the holder's upload queue, at this
    /// 1-based position; the holder sends `Queued` again as the line moves, then `Sending`
    /// (or `Error`) on the same connection once a slot frees. (Protocol 3.)
    Queued {
        /// Requests ahead of this one, plus one.
        position: u32,
    },
    /// The answer to [`TransferRequest::Probe`]: this is a p2pshare file server. (Protocol 5.)
    Probed {
        /// The probe's nonce.
        nonce: u64,
    },
}

/// Why a payload is not a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable message: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one message from a whole frame payload; trailing bytes are an error.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(DecodeError(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(DecodeError(e.to_string())),
    }
}

/// [`RequestBody::Register`]'s variant index on the wire (a postcard varint of one byte; a
/// test keeps them in step).
pub const REGISTER_VARIANT: u32 = 1;

/// If `payload` is a whole, well-formed `Register` request of at most `max` entries: its
/// request id, with its entries appended to `entries` (cleared first) with their names
/// borrowed from `payload`. Exactly the request [`decode`] would give (the same id and
/// entries, in order); `None` for anything else (another request, more entries, any
/// malformed byte or trailing bytes, with `entries` then left empty), which the caller then
/// decodes with [`decode`] for the usual answer or error.
pub fn decode_small_register<'a>(
    payload: &'a [u8],
    max: usize,
    entries: &mut Vec<FileEntryRef<'a>>,
) -> Option<u32> {
    entries.clear();
    let id = take_small_register(payload, max, entries);
    if id.is_none() {
        // No half of a declined frame may pass for its entries.
        entries.clear();
    }
    id
}

fn take_small_register<'a>(
    payload: &'a [u8],
    max: usize,
    entries: &mut Vec<FileEntryRef<'a>>,
) -> Option<u32> {
    let (id, rest) = postcard::take_from_bytes::<u32>(payload).ok()?;
    let (variant, rest) = postcard::take_from_bytes::<u32>(rest).ok()?;
    if variant != REGISTER_VARIANT {
        return None;
    }
    // A sequence's length is a `usize` varint, as `Vec<FileEntry>` reads it.
    let (count, mut rest) = postcard::take_from_bytes::<usize>(rest).ok()?;
    if count > max {
        return None;
    }
    for _ in 0..count {
        let (entry, after) = postcard::take_from_bytes::<FileEntryRef<'a>>(rest).ok()?;
        entries.push(entry);
        rest = after;
    }
    rest.is_empty().then_some(id)
}

/// Appends `msg` as one frame to `out` (postcard, written in place).
pub fn encode_frame<T: Serialize>(msg: &T, out: &mut Vec<u8>) {
    crate::codec::encode_with(out, |buf| {
        postcard::serialize_with_flavor(msg, AppendVec(buf)).map(|_| ())
    })
    // Our messages contain nothing postcard cannot serialise (no maps with non-string keys,
    // no unsized sequences), and the flavor never refuses bytes, so this cannot fail.
    .expect("postcard serialisation of a wire message failed")
}

/// The frame a connection to indexd refused at a connection limit reads before the close: a
/// `Busy` error answering request 0 (its first request, the Hello, is never read).
pub fn index_busy_frame(message: String) -> Vec<u8> {
    let mut frame = Vec::new();
    let body = ResponseBody::Error {
        code: ErrorCode::Busy,
        message,
    };
    encode_frame(&Response { id: 0, body }, &mut frame);
    frame
}

/// The frame a connection to indexd refused at accept for a ban reads before the close: a
/// `RateLimited` answer to request 0 with `banned` set.
pub fn index_banned_frame(retry_after_ms: u64) -> Vec<u8> {
    let mut frame = Vec::new();
    let body = ResponseBody::RateLimited {
        retry_after_ms,
        banned: true,
    };
    encode_frame(&Response { id: 0, body }, &mut frame);
    frame
}

/// The frame a downloader refused at a file server's upload limit reads before the close.
pub fn transfer_busy_frame(message: String) -> Vec<u8> {
    let mut frame = Vec::new();
    let refusal = TransferResponse::Error {
        code: ErrorCode::Busy,
        message,
    };
    encode_frame(&refusal, &mut frame);
    frame
}

/// `msg` as an encoder for [`crate::reactor::Ctx::send`]: appends it as one frame.
pub fn framed<T: Serialize>(msg: &T) -> impl FnOnce(&mut Vec<u8>) + '_ {
    move |out| encode_frame(msg, out)
}

/// The postcard payload of `msg` alone, without framing.
pub fn to_payload<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("postcard serialisation of a wire message failed")
}

/// A postcard flavor that appends to a borrowed vector.
struct AppendVec<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendVec<'_> {
    type Output = ();

    // Inlined: a search's answer pushes its hashes byte by byte (a hash is a tuple of 32
    // `u8`s to serde), 3,200 calls for a page of 100 hits.
    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Reads the protocol version from a Hello request or Range transfer request without decoding
/// the rest, so a version mismatch can be reported even when the layout changed. `None` when
/// the payload does not start like either.
pub fn peek_version(payload: &[u8], is_request: bool) -> Option<u16> {
    let mut rest = payload;
    if is_request {
        let (_id, r) = postcard::take_from_bytes::<u32>(rest).ok()?;
        rest = r;
    }
    let (variant, r) = postcard::take_from_bytes::<u32>(rest).ok()?;
    if variant != 0 {
        return None;
    }
    let (version, _) = postcard::take_from_bytes::<u16>(r).ok()?;
    Some(version)
}

/// The id of a request, read without decoding the body, so an error about an undecodable
/// body can still be matched to its request.
pub fn peek_request_id(payload: &[u8]) -> Option<u32> {
    postcard::take_from_bytes::<u32>(payload)
        .ok()
        .map(|(id, _)| id)
}

/// Whether `payload` is a [`RequestBody::Stats`] request, without decoding it (a server uses
/// this to gather figures that are too costly to keep current for every request).
pub fn is_stats_request(payload: &[u8]) -> bool {
    // A request is its id, then the body's variant index, both varints.
    let Ok((_, rest)) = postcard::take_from_bytes::<u32>(payload) else {
        return false;
    };
    rest == [STATS_VARIANT]
}

/// [`RequestBody::Stats`]'s variant index, its whole encoding (a test keeps them in step).
const STATS_VARIANT: u8 = 6;

/// Fuzzing entry point (`fuzz/fuzz_targets/wire.rs`): decodes `data` as every wire message
/// type. Decoding must never panic, and whatever decodes must survive an encode/decode round
/// trip unchanged (also through a frame).
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    fn round_trip<T>(data: &[u8])
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug,
    {
        let Ok(msg) = decode::<T>(data) else { return };
        let again: T = decode(&to_payload(&msg)).expect("a re-encoded message decodes");
        assert_eq!(again, msg);
        let mut framed = Vec::new();
        encode_frame(&msg, &mut framed);
        let mut decoder = crate::codec::Decoder::new(usize::MAX);
        let d = decoder.decode(&framed).unwrap().expect("a whole frame");
        assert_eq!(d.consumed, framed.len());
        let again: T = decode(&framed[d.payload]).expect("a framed message decodes");
        assert_eq!(again, msg);
    }
    round_trip::<Request>(data);
    round_trip::<RequestBody>(data);
    round_trip::<LookupKey>(data);
    round_trip::<Response>(data);
    round_trip::<ResponseBody>(data);
    round_trip::<ServerStats>(data);
    round_trip::<ErrorCode>(data);
    round_trip::<TransferRequest>(data);
    round_trip::<TransferResponse>(data);
    let _ = peek_version(data, true);
    let _ = peek_version(data, false);
    let _ = peek_request_id(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(h) = s.parse::<FileHash>() {
            assert!(h.to_hex().eq_ignore_ascii_case(s));
            assert!(h.has_hex_prefix(&s[..8.min(s.len())].to_ascii_lowercase()));
        }
        let _ = is_hex_prefix(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_all, Decoder};
    use proptest::prelude::*;

    fn h(n: u8) -> FileHash {
        FileHash([n; 32])
    }

    fn all_requests() -> Vec<Request> {
        let bodies = vec![
            RequestBody::Hello {
                version: PROTOCOL_VERSION,
                listen_port: 4242,
                agent: "test/1".into(),
            },
            RequestBody::Register {
                files: vec![
                    FileEntry {
                        hash: h(1),
                        size: 0,
                        name: "a\r\r\nb".into(),
                    },
                    FileEntry {
                        hash: h(2),
                        size: u64::MAX,
                        name: "Zebra_Crossing-Live 1999.flac".into(),
                    },
                ],
            },
            RequestBody::Unregister {
                hashes: vec![h(1), h(3)],
            },
            RequestBody::Search {
                query: "zeb cross".into(),
                limit: 100,
                filter: SearchFilter::default(),
                after: None,
            },
            RequestBody::Search {
                query: "zeb".into(),
                limit: 10,
                filter: SearchFilter {
                    min_size: 10,
                    max_size: Some(1 << 30),
                    exts: vec!["flac".into()],
                    kind: Some(FileKind::Audio),
                    min_holders: 2,
                },
                after: Some(SearchCursor {
                    whole: 1,
                    key: u32::MAX,
                    check: 7,
                }),
            },
            RequestBody::Lookup {
                key: LookupKey::Hash(h(9)),
                after: None,
            },
            RequestBody::Lookup {
                key: LookupKey::HashPrefix("0909090909".into()),
                after: None,
            },
            RequestBody::Lookup {
                key: LookupKey::Name("ünïcode name.txt".into()),
                after: Some(LookupToken(u128::MAX - 7)),
            },
            RequestBody::Ping,
            RequestBody::Stats,
            RequestBody::Bye,
            RequestBody::Reachability,
            RequestBody::Push {
                hash: h(6),
                holder: "[::1]:7".parse().unwrap(),
                nonce: u64::MAX,
            },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Request {
                id: i as u32 * 1000,
                body,
            })
            .collect()
    }

    fn all_responses() -> Vec<Response> {
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        let bodies = vec![
            ResponseBody::Welcome {
                version: 1,
                session: 77,
                observed: addr,
            },
            ResponseBody::Registered {
                added: 2,
                rejected: 1,
                total: 5,
            },
            ResponseBody::Unregistered {
                removed: 1,
                total: 4,
            },
            ResponseBody::SearchResults {
                hits: vec![SearchHit {
                    name: "x".into(),
                    size: 5,
                    hash: h(4),
                    holders: 2,
                }],
                total: 101,
                total_exact: false,
                next: Some(SearchCursor {
                    whole: 0,
                    key: 5,
                    check: 9,
                }),
                partial: true,
                server_us: 412,
            },
            ResponseBody::Holders {
                files: vec![HeldFile {
                    hash: h(5),
                    size: 6,
                    name: "y".into(),
                    holders: vec![addr, v6],
                    holder_count: 70,
                }],
                total: 12,
                next: Some(LookupToken(1 << 100)),
                firewalled: vec![v6],
            },
            ResponseBody::Pong,
            ResponseBody::Stats(ServerStats {
                connections: 3,
                files: 9,
                ..ServerStats::default()
            }),
            ResponseBody::Bye,
            ResponseBody::Error {
                code: ErrorCode::VersionMismatch,
                message: "speak 1".into(),
            },
            ResponseBody::Reachability { reachable: true },
            ResponseBody::PushRelayed,
            ResponseBody::PushRequest {
                hash: h(3),
                to: addr,
                nonce: 9,
            },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Response { id: i as u32, body })
            .collect()
    }

    #[test]
    fn stats_requests_are_told_apart_without_decoding() {
        for req in all_requests() {
            let stats = req.body == RequestBody::Stats;
            assert_eq!(is_stats_request(&to_payload(&req)), stats, "{req:?}");
        }
        assert!(!is_stats_request(b""));
    }

    /// What [`decode_small_register`] must agree with: the owned decode, as entries.
    fn owned_register(payload: &[u8]) -> Option<(u32, Vec<FileEntry>)> {
        match decode::<Request>(payload) {
            Ok(Request {
                id,
                body: RequestBody::Register { files },
            }) => Some((id, files)),
            _ => None,
        }
    }

    /// [`decode_small_register`] (with room for 64 entries) as owned entries.
    fn borrowed_register(payload: &[u8]) -> Option<(u32, Vec<FileEntry>)> {
        let mut entries = Vec::new();
        let id = decode_small_register(payload, 64, &mut entries)?;
        Some((
            id,
            entries.iter().map(FileEntryRef::to_owned_entry).collect(),
        ))
    }

    fn register_payload(id: u32, names: &[&str]) -> Vec<u8> {
        let files = names
            .iter()
            .enumerate()
            .map(|(i, n)| FileEntry {
                hash: h(i as u8),
                size: 1 << (i * 7),
                name: (*n).into(),
            })
            .collect();
        to_payload(&Request {
            id,
            body: RequestBody::Register { files },
        })
    }

    #[test]
    fn the_register_variant_constant_is_the_enums() {
        let p = register_payload(0, &[]);
        assert_eq!(p, [0, REGISTER_VARIANT as u8, 0]);
    }

    #[test]
    fn a_small_register_decodes_borrowed_to_the_owned_entries() {
        // Names the index rejects (empty, a slash, a NUL, over the name limit) decode alike:
        // judging them is the index's work.
        let long = "x".repeat(2_000);
        let names = ["a.flac", "", "dir/x", "nul\0", "\r\r\n", "ünïcødé ☃", &long];
        for id in [0, 1, 300, u32::MAX] {
            let p = register_payload(id, &names);
            let got = borrowed_register(&p).expect("a small register");
            assert_eq!(Some(got), owned_register(&p));
        }
        let empty = register_payload(9, &[]);
        assert_eq!(borrowed_register(&empty), Some((9, Vec::new())));
        assert_eq!(borrowed_register(&empty), owned_register(&empty));
    }

    #[test]
    fn anything_but_a_whole_small_register_is_left_to_the_owned_decode() {
        // Every other request, even when it decodes.
        for req in all_requests() {
            if !matches!(req.body, RequestBody::Register { .. }) {
                assert_eq!(borrowed_register(&to_payload(&req)), None, "{req:?}");
            }
        }
        let p = register_payload(5, &["a", "b", "c"]);
        // Every truncation, and trailing bytes.
        for end in 0..p.len() {
            assert_eq!(borrowed_register(&p[..end]), None, "cut at {end}");
            assert_eq!(owned_register(&p[..end]), None);
        }
        let mut longer = p.clone();
        longer.push(0);
        assert_eq!(borrowed_register(&longer), None);
        // A decline leaves no entries behind, even after whole entries were read.
        let mut entries = Vec::new();
        for bad in (0..p.len()).map(|end| &p[..end]).chain([&longer[..]]) {
            assert_eq!(decode_small_register(bad, 64, &mut entries), None);
            assert!(entries.is_empty(), "{} left from {bad:?}", entries.len());
        }
        // A name that is not UTF-8 (its first byte, after its length).
        let at = p.len() - 1;
        let mut bad = p.clone();
        bad[at] = 0xff;
        assert_eq!(borrowed_register(&bad), None);
        assert_eq!(owned_register(&bad), None);
        // More entries than the caller has room for decode only the owned way.
        let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let p = register_payload(1, &many);
        assert_eq!(borrowed_register(&p), None);
        assert_eq!(owned_register(&p).unwrap().1.len(), 65);
        // A count far over what follows.
        assert_eq!(
            borrowed_register(&[1, REGISTER_VARIANT as u8, 0xff, 0xff, 0x03]),
            None
        );
    }

    fn round_trip<T>(msgs: &[T])
    where
        T: Serialize + for<'a> Deserialize<'a> + PartialEq + fmt::Debug,
    {
        let mut wire = Vec::new();
        for m in msgs {
            encode_frame(m, &mut wire);
        }
        let (frames, used) = decode_all(&mut Decoder::default(), &wire).unwrap();
        assert_eq!(used, wire.len());
        let back: Vec<T> = frames.iter().map(|f| decode(f).unwrap()).collect();
        assert_eq!(&back, msgs);
    }

    #[test]
    fn every_variant_round_trips() {
        round_trip(&all_requests());
        round_trip(&all_responses());
        round_trip(&[
            TransferRequest::Range {
                version: 1,
                hash: h(7),
                size: 12345,
                first: 0,
                end: 1,
            },
            TransferRequest::Range {
                version: 1,
                hash: h(8),
                size: u64::MAX,
                first: 7,
                end: u64::MAX,
            },
            TransferRequest::Probe {
                version: 5,
                nonce: 1 << 60,
            },
            TransferRequest::Pushed {
                version: 5,
                hash: h(2),
                nonce: 3,
            },
        ]);
        round_trip(&[
            TransferResponse::Sending {
                size: 10,
                first: 0,
                end: 1,
            },
            TransferResponse::Error {
                code: ErrorCode::NotFound,
                message: "no such file".into(),
            },
            TransferResponse::Queued { position: 7 },
            TransferResponse::Probed { nonce: 77 },
        ]);
    }

    #[test]
    fn version_is_peekable() {
        let req = Request {
            id: 300,
            body: RequestBody::Hello {
                version: 999,
                listen_port: 1,
                agent: String::new(),
            },
        };
        let payload = to_payload(&req);
        assert_eq!(peek_version(&payload, true), Some(999));
        assert_eq!(peek_request_id(&payload), Some(300));
        // A future Hello with a different tail still yields its version.
        assert_eq!(peek_version(&[5, 0, 2, 0xff, 0xff, 0xff], true), Some(2));
        let get = to_payload(&TransferRequest::Range {
            version: 7,
            hash: h(1),
            size: 0,
            first: 0,
            end: 1,
        });
        assert_eq!(peek_version(&get, false), Some(7));
        let ping = to_payload(&Request {
            id: 1,
            body: RequestBody::Ping,
        });
        assert_eq!(peek_version(&ping, true), None);
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut payload = to_payload(&Request {
            id: 1,
            body: RequestBody::Ping,
        });
        payload.push(0);
        assert!(decode::<Request>(&payload).is_err());
    }

    #[test]
    fn hash_hex() {
        let hash = FileHash::of(b"hello");
        let hex = hash.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, hex.to_lowercase());
        assert_eq!(hex.parse::<FileHash>().unwrap(), hash);
        assert_eq!(hex.to_uppercase().parse::<FileHash>().unwrap(), hash);
        assert!(hash.has_hex_prefix(&hex[..8]));
        assert!(hash.has_hex_prefix(&hex));
        assert!(!hash.has_hex_prefix("zz"));
        assert!("xyz".parse::<FileHash>().is_err());
        assert!(hex[..63].parse::<FileHash>().is_err());
        assert!(is_hex_prefix("deadbeef"));
        assert!(!is_hex_prefix("deadbee"));
        assert!(!is_hex_prefix("deadbeeg"));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
            let _ = decode::<TransferRequest>(&bytes);
            let _ = decode::<TransferResponse>(&bytes);
            let _ = peek_version(&bytes, true);
            let _ = peek_version(&bytes, false);
        }

        #[test]
        fn a_mutated_register_decodes_borrowed_only_as_the_owned_decode_does(
            flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut payload = register_payload(77, &["one.mp3", "two words.flac", "", "drei"]);
            for (at, byte) in flips {
                let at = at % payload.len();
                payload[at] = byte;
            }
            payload.truncate(payload.len() - cut % 3);
            // When the borrowed decode succeeds it agrees with the owned one; when it
            // declines, the owned decode is what answers (whatever it says).
            let owned = owned_register(&payload);
            match borrowed_register(&payload) {
                Some(got) => prop_assert_eq!(Some(got), owned),
                // Declined: only what the owned decode rejects too, or too many entries.
                None => prop_assert!(!matches!(&owned, Some((_, files)) if files.len() <= 64)),
            }
        }

        #[test]
        fn mutated_messages_never_panic(idx in 0usize..10, flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let reqs = all_requests();
            let mut payload = to_payload(&reqs[idx % reqs.len()]);
            for (at, byte) in flips {
                let at = at % payload.len();
                payload[at] = byte;
            }
            let _ = decode::<Request>(&payload);
        }
    }
}
