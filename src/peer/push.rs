//! Pushes, the peer's side (issue 15 part 2): how a firewalled holder still serves, and how
//! a downloader gets files from one. Sans-IO, like the other role machines.
//!
//! ```text
//! downloader                        index                          holder (firewalled)
//!   Push{hash, holder, nonce} ---->  relays to the holder's session:
//!                                    PushRequest{hash, to: downloader's observed address,
//!                                                nonce} ------------------------------>
//!   file server accepts  <------------------------------------------ connect to `to`
//!   first frame Pushed{hash, nonce}  <------------------------------- (the holder)
//!   the connection joins the download waiting for that nonce; from here on it is an
//!   ordinary transfer connection: Range requests -->, <-- Sending + proof + data
//! ```
//!
//! - **Downloader** ([`PushState::expect`], [`PushState::identify`]): each push asked gets a
//!   random nonce, remembered with its download and attempt for [`PUSH_WAIT`] (at most
//!   [`WAITING_MAX`] at once). An incoming connection whose first frame is `Pushed` with a
//!   remembered nonce and the same hash becomes that attempt's connection; any other
//!   `Pushed` is refused and closed. A downloader that cannot be reached either (it serves no
//!   port, or the index's connect-back failed) does not ask: it says at once that it cannot
//!   download from that holder.
//! - **Holder** ([`PushState::admit`]): a push request is served only for a file it shares,
//!   within [`PUSH_UPLOADS_MAX`] outgoing push connections at once and
//!   [`PUSH_UPLOADS_PER_ADDRESS`] to one address (IPv4, IPv6 /64); it connects only to the
//!   address the index gives, which is the requester's own. The connection is then an
//!   upload like any other: slots, queue, rate limits and floors apply to each range. Until
//!   it asks for its first range it is *idle*: it is closed after [`PUSH_FIRST_RANGE_WAIT`]
//!   (an honest downloader asks at once), and when all the push connections are taken, a
//!   push from an address holding at least two fewer than the address holding the most
//!   takes the place of one of that address's idle ones (as the file server's eviction at
//!   its connection limit does), so a few requesters cannot keep the others out.
//! - **The index's probe** ([`probe_answer`]): `Probe{nonce}` on the file server is answered
//!   `Probed{nonce}`, proving the port is a p2pshare file server.

use super::download::DownloadId;
use super::upload::address_key;
use crate::reactor::ConnId;
use crate::wire::{self, FileHash, TransferRequest, TransferResponse, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a push asked is waited for (the download's stall timer drops the holder sooner
/// unless it is longer).
pub const PUSH_WAIT: Duration = Duration::from_secs(60);
/// Most pushes a downloader waits for at once.
pub const WAITING_MAX: usize = 256;
/// Most outgoing push connections a holder has at once (connecting or serving).
pub const PUSH_UPLOADS_MAX: usize = 16;
/// Most outgoing push connections a holder has at once to one address.
pub const PUSH_UPLOADS_PER_ADDRESS: usize = 4;
/// A push connection that has not asked for a range this long after it was opened is
/// closed.
pub const PUSH_FIRST_RANGE_WAIT: Duration = Duration::from_secs(5);

/// An outgoing push connection while it connects, kept in its slot ([`super::Role::Push`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushOut {
    /// The file to serve.
    pub hash: FileHash,
    /// The downloader's file server.
    pub to: SocketAddr,
    /// To name in the first frame.
    pub nonce: u64,
}

impl PushOut {
    /// The first frame on the connection.
    pub fn hello_frame(&self) -> Vec<u8> {
        let mut frame = Vec::new();
        wire::encode_frame(
            &TransferRequest::Pushed {
                version: PROTOCOL_VERSION,
                hash: self.hash,
                nonce: self.nonce,
            },
            &mut frame,
        );
        frame
    }
}

/// A push a download waits for.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    download: DownloadId,
    attempt: u32,
    hash: FileHash,
    until: Instant,
}

/// Why a relayed push request is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotServed {
    /// We do not share that file.
    NotShared,
    /// At [`PUSH_UPLOADS_MAX`] or [`PUSH_UPLOADS_PER_ADDRESS`].
    Full,
}

/// What a first frame on the file server is, besides a range request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstFrame {
    /// The index's probe: answer this frame, then close.
    Probe(Vec<u8>),
    /// A holder answering our push: the download and attempt it serves.
    Pushed {
        /// The download.
        download: DownloadId,
        /// Its attempt (the source waiting for the connection).
        attempt: u32,
    },
    /// A `Pushed` that answers no push of ours (unknown or expired nonce, other hash).
    Unexpected(String),
}

/// The peer's push bookkeeping; see the module docs.
pub struct PushState {
    /// What the index found of our file server (`None`: not known yet).
    pub reachable: Option<bool>,
    waiting: HashMap<u64, Waiting>,
    /// Outgoing push connections: those connecting, and those connected (by connection,
    /// with whether they asked for a range yet).
    connecting: Vec<IpAddr>,
    connected: HashMap<ConnId, (IpAddr, bool)>,
    rng: fastrand::Rng,
}

impl PushState {
    /// Nothing pending; `seed` seeds the nonces (mixed with the clock: they must not be
    /// guessable by another peer).
    pub fn new(seed: u64) -> PushState {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        PushState {
            reachable: None,
            waiting: HashMap::new(),
            connecting: Vec::new(),
            connected: HashMap::new(),
            rng: fastrand::Rng::with_seed(seed ^ clock.rotate_left(17)),
        }
    }

    /// A push is about to be asked for `download`'s `attempt` of `hash`: its nonce. The
    /// oldest waits are forgotten beyond [`WAITING_MAX`].
    pub fn expect(
        &mut self,
        download: DownloadId,
        attempt: u32,
        hash: FileHash,
        now: Instant,
    ) -> u64 {
        self.waiting.retain(|_, w| w.until > now);
        if self.waiting.len() >= WAITING_MAX {
            if let Some(oldest) = self.waiting.iter().min_by_key(|(_, w)| w.until) {
                let oldest = *oldest.0;
                self.waiting.remove(&oldest);
            }
        }
        let nonce = self.rng.u64(..);
        self.waiting.insert(
            nonce,
            Waiting {
                download,
                attempt,
                hash,
                until: now + PUSH_WAIT,
            },
        );
        nonce
    }

    /// Reads the first frame of a connection to our file server: `None` if it is an
    /// ordinary range request (or not a request at all: the upload machine answers that).
    pub fn identify(&mut self, payload: &[u8], now: Instant) -> Option<FirstFrame> {
        if !is_not_range(payload) {
            return None;
        }
        match wire::decode::<TransferRequest>(payload).ok()? {
            TransferRequest::Range { .. } => None,
            TransferRequest::Probe { nonce, .. } => Some(FirstFrame::Probe(probe_answer(nonce))),
            TransferRequest::Pushed { hash, nonce, .. } => {
                let Some(w) = self.waiting.remove(&nonce) else {
                    return Some(FirstFrame::Unexpected(
                        "a push answer we did not ask for (or too late)".into(),
                    ));
                };
                if w.hash != hash || w.until <= now {
                    return Some(FirstFrame::Unexpected(format!(
                        "a push answer for {hash}, not the file we asked for"
                    )));
                }
                Some(FirstFrame::Pushed {
                    download: w.download,
                    attempt: w.attempt,
                })
            }
        }
    }

    /// A push request came for `hash`, to connect to `to`: whether to serve it (`shared`:
    /// we share that file). On `Ok` the caller connects (after closing the idle connection
    /// it names, which gives way; see the module docs), and the connection counts until
    /// [`PushState::handle_connected`] and [`PushState::handle_closed`] (or
    /// [`PushState::handle_connect_failed`]).
    pub fn admit(&mut self, shared: bool, to: SocketAddr) -> Result<Option<ConnId>, NotServed> {
        if !shared {
            return Err(NotServed::NotShared);
        }
        let mut held: HashMap<u128, usize> = HashMap::new();
        let ips = self
            .connecting
            .iter()
            .chain(self.connected.values().map(|(ip, _)| ip));
        for ip in ips {
            *held.entry(address_key(*ip)).or_insert(0) += 1;
        }
        let address = address_key(to.ip());
        let ours = held.get(&address).copied().unwrap_or(0);
        if ours >= PUSH_UPLOADS_PER_ADDRESS {
            return Err(NotServed::Full);
        }
        let mut evicted = None;
        if self.outgoing() >= PUSH_UPLOADS_MAX {
            // The idle connection of the address holding the most, if it holds two more.
            evicted = self
                .connected
                .iter()
                .filter(|(_, (_, asked))| !asked)
                .map(|(c, (ip, _))| (held[&address_key(*ip)], *c))
                .max()
                .filter(|(most, _)| *most >= ours + 2)
                .map(|(_, c)| c);
            let Some(c) = evicted else {
                return Err(NotServed::Full);
            };
            self.connected.remove(&c);
        }
        self.connecting.push(to.ip());
        Ok(evicted)
    }

    /// Connection `conn` asked for a range (any connection: only push ones count): it is
    /// no longer idle.
    pub fn handle_asked(&mut self, conn: ConnId) {
        if let Some((_, asked)) = self.connected.get_mut(&conn) {
            *asked = true;
        }
    }

    fn stop_connecting(&mut self, ip: IpAddr) {
        if let Some(i) = self.connecting.iter().position(|c| *c == ip) {
            self.connecting.swap_remove(i);
        }
    }

    /// An outgoing push connection to `to` is up, as `conn`.
    pub fn handle_connected(&mut self, conn: ConnId, to: SocketAddr) {
        self.stop_connecting(to.ip());
        self.connected.insert(conn, (to.ip(), false));
    }

    /// An outgoing push connection to `to` failed before it was up.
    pub fn handle_connect_failed(&mut self, to: SocketAddr) {
        self.stop_connecting(to.ip());
    }

    /// Connection `conn` closed (any connection: only push ones count).
    pub fn handle_closed(&mut self, conn: ConnId) {
        self.connected.remove(&conn);
    }

    /// Outgoing push connections now (connecting or up).
    pub fn outgoing(&self) -> usize {
        self.connecting.len() + self.connected.len()
    }
}

/// Whether a first frame on the file server may be something else than a range request (a
/// probe or a push answer): only then is [`PushState::identify`] worth calling.
pub fn is_not_range(payload: &[u8]) -> bool {
    // A transfer request starts with its variant's index; a range request is variant 0.
    payload.first().is_some_and(|b| *b != 0)
}

/// The answer to the index's probe with `nonce`.
pub fn probe_answer(nonce: u64) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_frame(&TransferResponse::Probed { nonce }, &mut frame);
    frame
}

/// What the person is told when a holder is firewalled and we are too.
pub fn both_firewalled(holder: SocketAddr) -> String {
    format!("{holder} is firewalled and so are we: cannot download from it")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn payload(req: &TransferRequest) -> Vec<u8> {
        wire::to_payload(req)
    }

    #[test]
    fn a_push_answer_joins_the_download_that_asked_and_only_once() {
        let mut p = PushState::new(1);
        let now = Instant::now();
        let h = FileHash::of(b"x");
        let nonce = p.expect(7, 3, h, now);
        let range = payload(&TransferRequest::Range {
            version: PROTOCOL_VERSION,
            hash: h,
            size: 1,
            first: 0,
            end: 1,
        });
        assert_eq!(p.identify(&range, now), None);
        let wrong_hash = payload(&TransferRequest::Pushed {
            version: PROTOCOL_VERSION,
            hash: FileHash::of(b"y"),
            nonce,
        });
        assert!(matches!(
            p.identify(&wrong_hash, now),
            Some(FirstFrame::Unexpected(_))
        ));
        // That nonce is spent; a new one for the right hash works.
        let nonce = p.expect(7, 4, h, now);
        let right = payload(&TransferRequest::Pushed {
            version: PROTOCOL_VERSION,
            hash: h,
            nonce,
        });
        assert_eq!(
            p.identify(&right, now),
            Some(FirstFrame::Pushed {
                download: 7,
                attempt: 4
            })
        );
        assert!(matches!(
            p.identify(&right, now),
            Some(FirstFrame::Unexpected(_))
        ));
        // Too late.
        let nonce = p.expect(7, 5, h, now);
        let late = payload(&TransferRequest::Pushed {
            version: PROTOCOL_VERSION,
            hash: h,
            nonce,
        });
        assert!(matches!(
            p.identify(&late, now + PUSH_WAIT),
            Some(FirstFrame::Unexpected(_))
        ));
        // The index's probe is echoed.
        let probe = payload(&TransferRequest::Probe {
            version: PROTOCOL_VERSION,
            nonce: 99,
        });
        assert_eq!(
            p.identify(&probe, now),
            Some(FirstFrame::Probe(probe_answer(99)))
        );
    }

    #[test]
    fn nonces_differ_and_waits_are_bounded() {
        let mut p = PushState::new(1);
        let now = Instant::now();
        let h = FileHash::of(b"x");
        let mut nonces: Vec<u64> = (0..WAITING_MAX as u32 + 10)
            .map(|i| p.expect(1, i, h, now + Duration::from_millis(u64::from(i))))
            .collect();
        assert_eq!(p.waiting.len(), WAITING_MAX);
        nonces.sort_unstable();
        nonces.dedup();
        assert_eq!(nonces.len(), WAITING_MAX + 10);
    }

    /// A download of a 4 MiB file (16 pieces) from `holders`, in a fresh directory.
    fn download(
        tag: &str,
        holders: &[SocketAddr],
    ) -> (super::super::download::Download, std::path::PathBuf) {
        use super::super::download::{Download, DownloadLimits};
        let dir = std::env::temp_dir().join(format!("p2pshare-push-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = wire::HeldFile {
            hash: FileHash::of(tag.as_bytes()),
            size: 4 << 20,
            name: "f".into(),
            holders: holders.to_vec(),
            holder_count: holders.len() as u32,
        };
        let dl = Download::new(
            1,
            Instant::now(),
            &dir,
            &file,
            holders.to_vec(),
            None,
            DownloadLimits::default(),
            super::super::swarm::Config::default(),
        )
        .unwrap();
        (dl, dir)
    }

    fn events(
        dl: &mut super::super::download::Download,
    ) -> Vec<super::super::download::DownloadEvent> {
        std::iter::from_fn(|| dl.poll_event()).collect()
    }

    #[test]
    fn a_download_asks_firewalled_holders_for_pushes_and_others_after_a_failed_connect() {
        use super::super::core::{Action, Role};
        use super::super::download::{Attempt, DownloadEvent};
        use crate::reactor::CloseReason;
        use std::collections::VecDeque;
        let (walled, open) = (addr("10.0.0.1:0"), addr("10.0.0.2:7000"));
        let (mut dl, dir) = download("asks", &[walled, open]);
        dl.note_firewalled([walled]);
        let now = Instant::now();
        let mut out = VecDeque::new();
        dl.start(now, &mut out);
        // The firewalled one is asked for a push, never connected to; the other is.
        let connects: Vec<(SocketAddr, u32)> = out
            .iter()
            .filter_map(|a| match a {
                Action::Connect {
                    addr,
                    role: Role::Download(at),
                } => Some((*addr, at.n)),
                _ => None,
            })
            .collect();
        assert_eq!(connects.len(), 1);
        assert_eq!(connects[0].0, open);
        let pushes: Vec<(SocketAddr, u32)> = events(&mut dl)
            .into_iter()
            .filter_map(|e| match e {
                DownloadEvent::Push { holder, attempt } => Some((holder, attempt)),
                _ => None,
            })
            .collect();
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].0, walled);
        // The other one's connect fails: it is asked for a push too, once.
        let failed = CloseReason::ConnectFailed(std::io::ErrorKind::ConnectionRefused);
        let attempt = Attempt {
            download: 1,
            n: connects[0].1,
        };
        out.clear();
        dl.handle_close(now, attempt, &failed, &mut out);
        let again: Vec<DownloadEvent> = events(&mut dl);
        let Some(&DownloadEvent::Push { holder, attempt: n }) = again
            .iter()
            .find(|e| matches!(e, DownloadEvent::Push { .. }))
        else {
            panic!("{again:?}")
        };
        assert_eq!(holder, open);
        // Its push is refused: dropped, with both reasons.
        dl.handle_push_failed(now, n, "no peer there".into(), false, &mut out);
        let dropped = events(&mut dl);
        assert!(
            dropped.iter().any(|e| matches!(e, DownloadEvent::Dropped { holder, why, .. }
                if *holder == open && why.contains("connection refused") && why.contains("no peer there"))),
            "{dropped:?}"
        );
        // We are firewalled too: the other holder is dropped for good, said plainly.
        dl.handle_push_failed(now, pushes[0].1, String::new(), true, &mut out);
        let last = events(&mut dl);
        assert!(
            last.iter()
                .any(|e| matches!(e, DownloadEvent::Dropped { holder, why, .. }
                if *holder == walled && why.contains("so are we"))),
            "{last:?}"
        );
        // A lookup brings both back: only the one that may still answer is asked again (by
        // a push: it could not be connected to).
        dl.handle_holders(now, Some(vec![walled, open]), &mut out);
        let asked: Vec<SocketAddr> = events(&mut dl)
            .into_iter()
            .filter_map(|e| match e {
                DownloadEvent::Push { holder, .. } => Some(holder),
                DownloadEvent::Failed(text) => panic!("{text}"),
                _ => None,
            })
            .collect();
        assert_eq!(asked, vec![open]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outgoing_push_connections_are_capped_in_all_and_per_address() {
        let mut p = PushState::new(1);
        let a = addr("10.0.0.1:7000");
        assert_eq!(p.admit(false, a), Err(NotServed::NotShared));
        for _ in 0..PUSH_UPLOADS_PER_ADDRESS {
            assert_eq!(p.admit(true, a), Ok(None));
        }
        assert_eq!(p.admit(true, addr("10.0.0.1:7001")), Err(NotServed::Full));
        p.handle_connected(ConnId(1), a);
        // Serving a range: it does not give way.
        p.handle_asked(ConnId(1));
        p.handle_connect_failed(a);
        assert_eq!(p.admit(true, a), Ok(None));
        let mut n = p.outgoing();
        let mut i = 2u8;
        while n < PUSH_UPLOADS_MAX {
            assert_eq!(
                p.admit(true, SocketAddr::from(([10, 0, 1, i], 1))),
                Ok(None)
            );
            i += 1;
            n += 1;
        }
        assert_eq!(
            p.admit(true, addr("10.0.9.9:1")),
            Err(NotServed::Full),
            "{PUSH_UPLOADS_MAX} at once in all"
        );
        p.handle_closed(ConnId(1));
        assert_eq!(p.admit(true, addr("10.0.9.9:1")), Ok(None));
    }

    #[test]
    fn when_full_an_idle_push_connection_of_the_address_holding_most_gives_way() {
        let mut p = PushState::new(1);
        // Four addresses hold four connections each, all up and idle but one address's.
        let mut conn = 0;
        for a in 1..=4u8 {
            for _ in 0..PUSH_UPLOADS_PER_ADDRESS {
                let to = SocketAddr::from(([10, 0, 0, a], 7000));
                assert_eq!(p.admit(true, to), Ok(None));
                conn += 1;
                p.handle_connected(ConnId(conn), to);
                if a == 1 {
                    p.handle_asked(ConnId(conn));
                }
            }
        }
        assert_eq!(p.outgoing(), PUSH_UPLOADS_MAX);
        // A fifth address takes an idle one's place (never one that asked for a range).
        let Ok(Some(ConnId(gone))) = p.admit(true, addr("10.0.0.5:7000")) else {
            panic!()
        };
        assert!(gone > PUSH_UPLOADS_PER_ADDRESS);
        assert_eq!(p.outgoing(), PUSH_UPLOADS_MAX);
        p.handle_connected(ConnId(99), addr("10.0.0.5:7000"));
        // It may take a second place (it holds 1, they 4 or 3); not a third from one that
        // holds only one more.
        assert!(matches!(p.admit(true, addr("10.0.0.5:7000")), Ok(Some(_))));
        p.handle_connected(ConnId(100), addr("10.0.0.5:7000"));
        p.handle_asked(ConnId(99));
        p.handle_asked(ConnId(100));
        let mut taken = 0;
        while let Ok(Some(_)) = p.admit(true, addr("10.0.0.6:7000")) {
            taken += 1;
            p.handle_connected(ConnId(200 + taken), addr("10.0.0.6:7000"));
            p.handle_asked(ConnId(200 + taken));
        }
        // 10.0.0.6 took places until every address holding two more than it had no idle
        // connection left or held no more than one more.
        assert!(taken >= 2, "{taken}");
        assert_eq!(p.outgoing(), PUSH_UPLOADS_MAX);
    }
}
