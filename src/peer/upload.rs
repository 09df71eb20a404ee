//! The upload machine: another peer's downloader asks for a range of 16 KiB groups of a file
//! by (hash, size); the answer is a header frame, the range's proof (read from the file's
//! outboard, [`Outboards`]) and the data bytes (sent with `sendfile` by the reactor), or an
//! error frame. A connection may carry many requests, pipelined: the reactor reads the next
//! one only once the previous answer's file range is sent, so they are answered in order.
//!
//! Each upload connection's state ([`Upload`]) lives in its reactor slot. The decision
//! ([`answer`]) is pure apart from opening the file: it looks the hash up in the share's
//! hash → path table (never a path named by the remote) and checks that the file on disk is
//! still the one that was hashed (size and mtime).
//!
//! When every upload slot is busy, a valid request waits in the core's [`UploadQueue`] (a few
//! per address) and the downloader is told its position; a slot that frees is given to the
//! head of the line. The line is fair per address (IPv4 address, IPv6 /64), not first come
//! first served: the head is the request whose address holds the fewest slots, counting the
//! requests of that address ahead of it in line (arrival order breaks ties). One address with
//! many connections or pipelined ranges therefore gets a slot only after every address
//! holding fewer got one, and as its ranges finish its slots go to the others: a downloader
//! from an address holding nothing waits for the next slot that frees, not for every range
//! queued before it. The positions told are those of this order.
//!
//! # Invariants
//! - Only registered hashes are served, and only while the file is unchanged; a changed or
//!   unreadable file is reported ([`Answer::Refuse::changed`]) so the peer withdraws it and
//!   hashes it again.
//! - Serving a range re-hashes nothing: the outboard (computed with the file's hash, kept in
//!   the share's `OutboardStore`) is checked once when loaded and kept open. A missing or
//!   damaged one is never trusted: the request is refused `Busy` and the outboard computed
//!   on the hasher thread ([`Answer::Refuse::outboard`]). A file of one group has no outboard.

use super::outboard::{self, FileOutboard, OutboardStore};
use super::share::{self, Share, SharedFile};
use crate::reactor::ConnId;
use crate::wire::{self, ErrorCode, FileHash, TransferRequest, TransferResponse, PROTOCOL_VERSION};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::net::IpAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

/// An upload connection's state, kept in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Waiting for a Get.
    AwaitingGet {
        /// The downloader's address.
        from: IpAddr,
    },
    /// In the upload queue, waiting for a slot.
    Queued {
        /// The downloader's address.
        from: IpAddr,
    },
    /// A file range is queued: (hash, bytes) until the output drains.
    Sending {
        /// What is sent.
        hash: FileHash,
        /// How many bytes of it.
        bytes: u64,
        /// The downloader's address.
        from: IpAddr,
        /// When the current rate window began, and the bytes still unsent then.
        window: (Instant, u64),
    },
}

/// The key per-address limits group by: an IPv4 address, or an IPv6 /64.
pub fn address_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u32::from(v4) as u128,
            None => (u128::from(v6) & !((1u128 << 64) - 1)) | 1,
        },
    }
}

/// One request waiting for a slot.
#[derive(Debug, Clone)]
struct Waiting {
    conn: ConnId,
    from: IpAddr,
    key: u128,
    /// Its arrival number (ties in the fair order go to the earliest).
    seq: u64,
    /// The request's payload, answered again when a slot frees (the file may have changed).
    request: Vec<u8>,
    /// Requests pipelined behind it on the same connection, in order.
    extra: VecDeque<Vec<u8>>,
}

/// The head of the upload queue: its connection, address, request and the requests
/// pipelined behind it.
pub type Popped = (ConnId, IpAddr, Vec<u8>, VecDeque<Vec<u8>>);

/// Requests one connection may pipeline behind the one it waits with.
pub const MAX_PIPELINED: usize = 64;

/// The upload queue: requests waiting for one of `slots` transfers, served fairly per
/// address (see the module docs).
#[derive(Debug, Clone)]
pub struct UploadQueue {
    /// Transfers at once.
    pub slots: usize,
    /// Requests waiting at once from one address (IPv4, or IPv6 /64).
    pub per_address: usize,
    /// In arrival order.
    waiting: VecDeque<Waiting>,
    next_seq: u64,
    /// Slots held now, by address key (addresses holding none are absent).
    held: HashMap<u128, usize>,
}

/// What [`UploadQueue::join`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// In line at this 1-based position.
    At(u32),
    /// This address has `per_address` requests waiting already.
    AddressFull,
}

impl UploadQueue {
    /// An empty queue for `slots` transfers, `per_address` waiting per address.
    pub fn new(slots: usize, per_address: usize) -> UploadQueue {
        UploadQueue {
            slots,
            per_address,
            waiting: VecDeque::new(),
            next_seq: 0,
            held: HashMap::new(),
        }
    }

    /// A transfer to `from` took a slot.
    pub fn handle_slot_taken(&mut self, from: IpAddr) {
        *self.held.entry(address_key(from)).or_insert(0) += 1;
    }

    /// A transfer to `from` gave its slot back.
    pub fn handle_slot_freed(&mut self, from: IpAddr) {
        let key = address_key(from);
        if let Some(n) = self.held.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&key);
            }
        }
    }

    /// While requests wait: each address's share of the slots (the slots divided equally
    /// among the addresses holding or waiting for one, at least 1), and how many slots the
    /// waiting addresses holding less than that share would take to reach it (each at most
    /// as many as it has waiting). `(share, 0)` when nobody is short.
    pub fn shortfall(&self) -> (usize, usize) {
        let mut waiting: HashMap<u128, usize> = HashMap::new();
        for w in &self.waiting {
            *waiting.entry(w.key).or_insert(0) += 1;
        }
        let addresses = self.held.len()
            + waiting
                .keys()
                .filter(|k| !self.held.contains_key(k))
                .count();
        let share = (self.slots / addresses.max(1)).max(1);
        let short = waiting
            .iter()
            .map(|(k, n)| {
                let held = self.held.get(k).copied().unwrap_or(0);
                share.saturating_sub(held).min(*n)
            })
            .sum();
        (share, short)
    }

    /// Slots held by `from`'s address now.
    pub fn slots_held(&self, from: IpAddr) -> usize {
        self.held.get(&address_key(from)).copied().unwrap_or(0)
    }

    /// The waiting requests (indices into `waiting`) in the order they will be served: by
    /// the slots their address would hold when served (those it holds plus its requests
    /// ahead in line), then by arrival. Greedily giving each free slot to the address holding
    /// the fewest serves exactly this order, so the positions told are honest as long as no
    /// slot is given back out of turn (then they are told again).
    fn order(&self) -> Vec<usize> {
        let mut ahead: HashMap<u128, usize> = HashMap::new();
        let mut ranked: Vec<(usize, u64, usize)> = self
            .waiting
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let k = ahead.entry(w.key).or_insert(0);
                let level = self.held.get(&w.key).copied().unwrap_or(0) + *k;
                *k += 1;
                (level, w.seq, i)
            })
            .collect();
        ranked.sort_unstable();
        ranked.into_iter().map(|(_, _, i)| i).collect()
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Puts `conn`'s request from `from` at the end of the line, with the requests pipelined
    /// behind it.
    pub fn join(
        &mut self,
        conn: ConnId,
        from: IpAddr,
        request: &[u8],
        extra: VecDeque<Vec<u8>>,
    ) -> Joined {
        let key = address_key(from);
        if self.waiting.iter().filter(|w| w.key == key).count() >= self.per_address {
            return Joined::AddressFull;
        }
        self.next_seq += 1;
        self.waiting.push_back(Waiting {
            conn,
            from,
            key,
            seq: self.next_seq,
            request: request.to_vec(),
            extra,
        });
        let last = self.waiting.len() - 1;
        let place = self.order().iter().position(|&i| i == last).unwrap_or(last);
        Joined::At(place as u32 + 1)
    }

    /// Another request pipelined by `conn` while it waits; false if it is not waiting or has
    /// [`MAX_PIPELINED`] behind it already.
    pub fn push_extra(&mut self, conn: ConnId, request: &[u8]) -> bool {
        match self.waiting.iter_mut().find(|w| w.conn == conn) {
            Some(w) if w.extra.len() < MAX_PIPELINED => {
                w.extra.push_back(request.to_vec());
                true
            }
            _ => false,
        }
    }

    /// `conn` left the line (it closed); whether it was in it.
    pub fn leave(&mut self, conn: ConnId) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| w.conn != conn);
        self.waiting.len() != before
    }

    /// The head of the line (the fair order's first), to serve now: its connection,
    /// address, request and the requests pipelined behind it.
    pub fn pop(&mut self) -> Option<Popped> {
        let head = *self.order().first()?;
        self.waiting
            .remove(head)
            .map(|w| (w.conn, w.from, w.request, w.extra))
    }

    /// Every waiting connection with its 1-based position, in the order they will be served.
    pub fn positions(&self) -> Vec<(ConnId, u32)> {
        self.order()
            .into_iter()
            .enumerate()
            .map(|(place, i)| (self.waiting[i].conn, place as u32 + 1))
            .collect()
    }
}

/// The frame telling a downloader its place in line.
pub fn queued_frame(position: u32) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_frame(&TransferResponse::Queued { position }, &mut frame);
    frame
}

/// The frame refusing a request whose address already has its share of the queue.
pub fn address_full_frame(per_address: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_frame(
        &TransferResponse::Error {
            code: ErrorCode::Busy,
            message: format!(
                "holder busy, and {per_address} requests from your address already wait in its queue"
            ),
        },
        &mut frame,
    );
    frame
}

/// Groups one range request may ask for (16 MiB): the proof of a range is held in memory
/// while it is sent, about 64 bytes per group, so this bounds it to about 70 KiB.
pub const MAX_RANGE_GROUPS: u64 = 1024;

/// The outboards the file server has loaded (and checked) from the share's
/// [`OutboardStore`], kept open so that serving a range costs a few `pread`s of hash pairs,
/// never a re-hash or a re-check. Bounded: past [`Outboards::MAX_OPEN`] files the oldest
/// half is let go (loaded again, and checked again, when asked for).
#[derive(Debug)]
pub struct Outboards {
    store: OutboardStore,
    open: HashMap<FileHash, (Rc<FileOutboard>, u64)>,
    tick: u64,
    /// Hashes whose outboard is being computed on the hasher thread.
    pending: HashSet<FileHash>,
}

impl Outboards {
    /// Outboards open at once at most.
    pub const MAX_OPEN: usize = 256;

    /// The outboards of the share rooted at `share_root`.
    pub fn new(share_root: &Path) -> Outboards {
        Outboards {
            store: OutboardStore::new(share_root),
            open: HashMap::new(),
            tick: 0,
            pending: HashSet::new(),
        }
    }

    /// The store the outboards live in.
    pub fn store(&self) -> &OutboardStore {
        &self.store
    }

    /// The outboard of `file`, loaded once; `Ok(None)` when it is missing or failed its
    /// check (it must be computed again, off the loop).
    fn get(&mut self, file: &SharedFile) -> std::io::Result<Option<Rc<FileOutboard>>> {
        self.tick += 1;
        if let Some((ob, used)) = self.open.get_mut(&file.hash) {
            *used = self.tick;
            return Ok(Some(ob.clone()));
        }
        let Some(ob) = self.store.load(&file.hash, file.size)? else {
            return Ok(None);
        };
        if self.open.len() >= Self::MAX_OPEN {
            let mut ages: Vec<u64> = self.open.values().map(|(_, t)| *t).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            self.open.retain(|_, (_, t)| *t > cut);
        }
        let ob = Rc::new(ob);
        self.open.insert(file.hash, (ob.clone(), self.tick));
        Ok(Some(ob))
    }

    /// Whether the outboard of `hash` should be computed now (not already under way).
    pub fn start_compute(&mut self, hash: FileHash) -> bool {
        self.pending.insert(hash)
    }

    /// The file of `hash` left the share: its outboard is let go (the caller has the stored
    /// file deleted).
    pub fn forget(&mut self, hash: &FileHash) {
        self.open.remove(hash);
    }

    /// The hasher thread finished the outboard of `hash` (or failed to).
    pub fn handle_computed(&mut self, hash: &FileHash) {
        self.pending.remove(hash);
    }
}

/// How a range request is answered.
#[derive(Debug)]
pub enum Answer {
    /// Send `header` (the header frame, then the proof), then `len` bytes of `file` from
    /// `offset`.
    Serve {
        /// The encoded header frame with the proof appended.
        header: Vec<u8>,
        /// The open file.
        file: File,
        /// First byte sent.
        offset: u64,
        /// Bytes sent.
        len: u64,
        /// The file's hash and display name (for logs and stats).
        hash: FileHash,
        /// The shared name.
        name: String,
    },
    /// Send `frame` (an error), then close.
    Refuse {
        /// The encoded error frame.
        frame: Vec<u8>,
        /// Why, for the close reason.
        message: String,
        /// A shared file that no longer matches its hash.
        changed: Option<SharedFile>,
        /// A shared file whose outboard must be computed (on the hasher thread).
        outboard: Option<Box<SharedFile>>,
    },
}

fn refuse(code: ErrorCode, message: String, changed: Option<SharedFile>) -> Answer {
    let mut frame = Vec::new();
    wire::encode_frame(
        &TransferResponse::Error {
            code,
            message: message.clone(),
        },
        &mut frame,
    );
    Answer::Refuse {
        frame,
        message,
        changed,
        outboard: None,
    }
}

fn version_refusal(v: u16) -> Answer {
    refuse(
        ErrorCode::VersionMismatch,
        format!("protocol version {v} is not supported; this peer speaks {PROTOCOL_VERSION}"),
        None,
    )
}

/// Answers one request frame from a downloader: a range of a shared file with its proof.
pub fn answer(payload: &[u8], share: &Share, outboards: &mut Outboards) -> Answer {
    let req = match wire::decode::<TransferRequest>(payload) {
        Ok(r) => r,
        Err(e) => {
            return match wire::peek_version(payload, false) {
                Some(v) if v != PROTOCOL_VERSION => version_refusal(v),
                _ => refuse(ErrorCode::Malformed, e.to_string(), None),
            }
        }
    };
    let TransferRequest::Range {
        version,
        hash,
        size,
        first,
        end,
    } = req
    else {
        // A probe or a push answer is a first frame only (see `peer::push`).
        return refuse(ErrorCode::Invalid, "expected a range request".into(), None);
    };
    if version != PROTOCOL_VERSION {
        return version_refusal(version);
    }
    let Some(file) = share.by_hash(&hash) else {
        return refuse(ErrorCode::NotFound, format!("not sharing {hash}"), None);
    };
    if size != file.size {
        return refuse(
            ErrorCode::NotFound,
            format!(
                "not sharing {hash} at {size} bytes (this file has {})",
                file.size
            ),
            None,
        );
    }
    let groups = first..end;
    if first >= end || end > outboard::group_count(size) {
        return refuse(
            ErrorCode::Invalid,
            format!(
                "groups {first}..{end} are not a range of this file ({} groups)",
                outboard::group_count(size)
            ),
            None,
        );
    }
    if end - first > MAX_RANGE_GROUPS {
        return refuse(
            ErrorCode::Invalid,
            format!("at most {MAX_RANGE_GROUPS} groups per request"),
            None,
        );
    }
    let (handle, meta) = match share::open_regular(&file.path) {
        Ok(x) => x,
        Err(e) => {
            return refuse(
                ErrorCode::Io,
                format!("cannot read the file: {e}"),
                Some(file.clone()),
            )
        }
    };
    if !file.is_unchanged(&meta) {
        return refuse(
            ErrorCode::NotFound,
            "the file changed since it was shared; it is being re-hashed".into(),
            Some(file.clone()),
        );
    }
    let range = if size <= outboard::GROUP_BYTES {
        // One group: its proof is empty, and no outboard file exists for it.
        Ok(outboard::RangeAnswer {
            proof: Vec::new(),
            data: outboard::group_bytes(size, groups),
        })
    } else {
        match outboards.get(&file) {
            Ok(Some(ob)) => outboard::answer_range(&*ob, groups),
            Ok(None) => {
                let message =
                    "preparing this file's verification data; ask again shortly".to_string();
                let mut answer = refuse(ErrorCode::Busy, message, None);
                if outboards.start_compute(hash) {
                    if let Answer::Refuse { outboard, .. } = &mut answer {
                        *outboard = Some(Box::new(file.clone()));
                    }
                }
                return answer;
            }
            Err(e) => Err(e),
        }
    };
    let range = match range {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                ErrorCode::Io,
                format!("cannot read the verification data: {e}"),
                None,
            )
        }
    };
    let mut header = Vec::new();
    wire::encode_frame(&TransferResponse::Sending { size, first, end }, &mut header);
    header.extend_from_slice(&range.proof);
    Answer::Serve {
        header,
        file: handle,
        offset: range.data.start,
        len: range.data.end - range.data.start,
        hash,
        name: file.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_order_and_caps_each_address() {
        let mut q = UploadQueue::new(1, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let none = VecDeque::new;
        assert_eq!(q.join(ConnId(1), a, b"r1", none()), Joined::At(1));
        assert_eq!(q.join(ConnId(2), b, b"r2", none()), Joined::At(2));
        assert_eq!(q.join(ConnId(3), a, b"r3", none()), Joined::At(3));
        assert_eq!(q.join(ConnId(4), a, b"r4", none()), Joined::AddressFull);
        // Pipelined requests wait behind their connection's first, bounded.
        for _ in 0..MAX_PIPELINED {
            assert!(q.push_extra(ConnId(1), b"more"));
        }
        assert!(!q.push_extra(ConnId(1), b"more"));
        assert!(!q.push_extra(ConnId(9), b"more"));
        // Leaving moves everyone behind up.
        assert!(q.leave(ConnId(2)));
        assert!(!q.leave(ConnId(2)));
        let places = q.positions();
        assert_eq!(places, vec![(ConnId(1), 1), (ConnId(3), 2)]);
        let (conn, from, request, extra) = q.pop().unwrap();
        assert_eq!((conn, from, request), (ConnId(1), a, b"r1".to_vec()));
        assert_eq!(extra.len(), MAX_PIPELINED);
        assert_eq!(q.join(ConnId(5), a, b"r5", none()), Joined::At(2));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn a_slot_that_frees_goes_to_the_address_holding_the_fewest() {
        let mut q = UploadQueue::new(4, 4);
        let hog: IpAddr = "10.0.0.2".parse().unwrap();
        let hog6: IpAddr = "2001:db8::2".parse().unwrap();
        let other6: IpAddr = "2001:db8::99".parse().unwrap();
        let honest: IpAddr = "10.0.0.3".parse().unwrap();
        let none = VecDeque::new;
        // The hog holds every slot and has 4 requests in line.
        for _ in 0..4 {
            q.handle_slot_taken(hog);
        }
        for c in 1..=4 {
            assert_eq!(q.join(ConnId(c), hog, b"h", none()), Joined::At(c as u32));
        }
        // A downloader from an address holding nothing goes to the head of the line.
        assert_eq!(q.join(ConnId(10), honest, b"o", none()), Joined::At(1));
        let places = q.positions();
        assert_eq!(places[0], (ConnId(10), 1));
        assert_eq!(
            places[1..].to_vec(),
            vec![
                (ConnId(1), 2),
                (ConnId(2), 3),
                (ConnId(3), 4),
                (ConnId(4), 5)
            ]
        );
        // One of the hog's ranges finishes: its slot goes to the honest one, not to the
        // hog's next request that waited longer.
        q.handle_slot_freed(hog);
        let (conn, from, ..) = q.pop().unwrap();
        assert_eq!((conn, from), (ConnId(10), honest));
        q.handle_slot_taken(honest);
        // Between two addresses that each hold slots, round robin by slots held: an IPv6
        // /64 is one address.
        q.handle_slot_freed(hog);
        q.handle_slot_freed(hog);
        q.handle_slot_freed(hog);
        assert_eq!(q.join(ConnId(20), hog6, b"x", none()), Joined::At(2));
        assert_eq!(q.join(ConnId(21), other6, b"y", none()), Joined::At(4));
        let order: Vec<ConnId> = q.positions().into_iter().map(|(c, _)| c).collect();
        // hog holds 0 (its 4 waiting are levels 0..3), the /64 holds 0 (levels 0, 1).
        assert_eq!(
            order,
            vec![
                ConnId(1),
                ConnId(20),
                ConnId(2),
                ConnId(21),
                ConnId(3),
                ConnId(4)
            ]
        );
        assert_eq!(q.slots_held(honest), 1);
        assert_eq!(q.slots_held(hog), 0);
    }

    #[test]
    fn the_shortfall_counts_the_slots_waiting_addresses_lack_of_their_share() {
        let mut q = UploadQueue::new(8, 4);
        let ip = |i: u8| -> IpAddr { format!("10.0.0.{i}").parse().unwrap() };
        // Nobody waits: nobody is short.
        for _ in 0..8 {
            q.handle_slot_taken(ip(1));
        }
        assert_eq!(q.shortfall(), (8, 0));
        // Two addresses waiting with 1 and 3 requests: a share of 8 / 3 = 2 each, so they
        // lack 1 and 2 slots; the one holding all 8 is 6 over.
        q.join(ConnId(1), ip(2), b"r", VecDeque::new());
        for c in 2..5 {
            q.join(ConnId(c), ip(3), b"r", VecDeque::new());
        }
        assert_eq!(q.shortfall(), (2, 3));
        // The hog waiting too changes nothing: it is over its share.
        q.join(ConnId(9), ip(1), b"r", VecDeque::new());
        assert_eq!(q.shortfall(), (2, 3));
        // More addresses than slots: a share of at least 1.
        let mut q = UploadQueue::new(2, 4);
        q.handle_slot_taken(ip(1));
        q.handle_slot_taken(ip(1));
        for i in 2..6 {
            q.join(ConnId(i as usize), ip(i), b"r", VecDeque::new());
        }
        assert_eq!(q.shortfall(), (1, 4));
    }

    #[test]
    fn addresses_are_grouped_by_ipv4_address_and_ipv6_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }
}
