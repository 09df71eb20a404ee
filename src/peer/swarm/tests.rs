//! The scheduler against simulated holders in virtual time, and the resume record's damage
//! handling.

use super::*;
use proptest::prelude::*;

const KIB: u64 = 1024;
const STEP: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct SimHolder {
    /// Bytes per second it sends.
    rate: f64,
    /// Requests in order, with bytes still to send.
    queue: VecDeque<(usize, f64)>,
    /// From this piece on, it sends wrong bytes.
    lies_from: Option<usize>,
}

/// A world of holders serving their queues at their rates, 10 ms per step.
struct Sim {
    swarm: Swarm,
    now: Instant,
    world: BTreeMap<HolderId, SimHolder>,
    /// Who delivered each verified piece (the model's own count).
    verified_by: Vec<Vec<HolderId>>,
    requests: Vec<(HolderId, usize)>,
    /// The pieces of each request, in order.
    runs: Vec<usize>,
    cancels: Vec<(HolderId, usize)>,
    drops: Vec<(HolderId, DropReason)>,
    dropped_for_lies: HashSet<HolderId>,
    outcome: Option<Action>,
}

impl Sim {
    fn new(size: u64, cfg: Config, verified: Option<PieceSet>) -> Sim {
        let now = Instant::now();
        let n = piece_count(size, cfg.piece_bytes);
        Sim {
            swarm: Swarm::new(size, cfg, verified, now),
            now,
            world: BTreeMap::new(),
            verified_by: vec![Vec::new(); n],
            requests: Vec::new(),
            runs: Vec::new(),
            cancels: Vec::new(),
            drops: Vec::new(),
            dropped_for_lies: HashSet::new(),
            outcome: None,
        }
    }

    fn add(&mut self, id: u64, rate: f64, lies_from: Option<usize>) {
        let id = HolderId(id);
        // Added twice, it keeps its queue (the swarm ignores the second add).
        self.world.entry(id).or_insert(SimHolder {
            rate,
            queue: VecDeque::new(),
            lies_from,
        });
        self.swarm.handle_holder_added(id, self.now);
        self.drain();
    }

    fn vanish(&mut self, id: u64) {
        self.world.remove(&HolderId(id));
        self.swarm.handle_holder_removed(HolderId(id), self.now);
        self.drain();
    }

    /// Carries out the swarm's actions, checking the invariants on each.
    fn drain(&mut self) {
        while let Some(a) = self.swarm.poll_action() {
            assert!(self.outcome.is_none(), "an action after the end: {a:?}");
            match a {
                Action::Request {
                    holder,
                    pieces,
                    groups,
                    bytes,
                } => {
                    assert!(!pieces.is_empty() && pieces.len() <= self.swarm.cfg.max_run);
                    assert!(
                        !self.dropped_for_lies.contains(&holder),
                        "a liar asked again"
                    );
                    let (first, last) = (
                        self.swarm.piece_range(pieces.start),
                        self.swarm.piece_range(pieces.end - 1),
                    );
                    assert_eq!(groups, first.0.start..last.0.end);
                    assert_eq!(bytes, first.1.start..last.1.end);
                    self.runs.push(pieces.len());
                    for piece in pieces {
                        assert!(
                            self.verified_by[piece].is_empty(),
                            "verified piece {piece} requested again"
                        );
                        let (_, b) = self.swarm.piece_range(piece);
                        let h = self
                            .world
                            .get_mut(&holder)
                            .expect("asked a holder that exists");
                        assert!(
                            h.queue.iter().all(|&(p, _)| p != piece),
                            "asked twice at once"
                        );
                        // A run is sent in order, each piece verified as it completes.
                        h.queue.push_back((piece, (b.end - b.start) as f64));
                        self.requests.push((holder, piece));
                    }
                }
                Action::Cancel { holder, piece } => {
                    if let Some(h) = self.world.get_mut(&holder) {
                        h.queue.retain(|&(p, _)| p != piece);
                    }
                    self.cancels.push((holder, piece));
                }
                Action::DropHolder { holder, reason } => {
                    self.world.remove(&holder);
                    if matches!(reason, DropReason::BadBytes { .. }) {
                        self.dropped_for_lies.insert(holder);
                    }
                    self.drops.push((holder, reason));
                }
                a @ (Action::Done | Action::Failed(_)) => self.outcome = Some(a),
            }
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        let ids: Vec<HolderId> = self.world.keys().copied().collect();
        for id in ids {
            let Some(h) = self.world.get_mut(&id) else {
                continue;
            };
            let mut budget = h.rate * STEP.as_secs_f64();
            let mut done = Vec::new();
            let mut sent = Vec::new();
            while budget > 0.0 {
                let Some((piece, left)) = h.queue.front_mut() else {
                    break;
                };
                let n = budget.min(*left);
                *left -= n;
                budget -= n;
                sent.push((*piece, n as u64));
                if *left <= 0.0 {
                    let lie = h.lies_from.is_some_and(|k| *piece >= k);
                    done.push((*piece, lie));
                    h.queue.pop_front();
                }
            }
            for (piece, n) in sent {
                self.swarm.handle_bytes(id, piece, n.max(1), self.now);
            }
            for (piece, lie) in done {
                if lie {
                    self.swarm.handle_piece_failed(id, piece, self.now);
                } else {
                    let was = self.swarm.verified().contains(piece);
                    self.swarm.handle_piece_verified(id, piece, self.now);
                    if !was && self.swarm.verified().contains(piece) {
                        self.verified_by[piece].push(id);
                    }
                }
                self.drain();
            }
        }
        self.swarm.handle_tick(self.now);
        self.drain();
    }

    fn run(&mut self, max_steps: usize) -> &Action {
        for _ in 0..max_steps {
            if self.outcome.is_some() {
                break;
            }
            self.step();
        }
        self.outcome.as_ref().expect("the download ended")
    }

    fn pieces_by(&self, id: u64) -> usize {
        self.verified_by
            .iter()
            .filter(|v| v.contains(&HolderId(id)))
            .count()
    }

    fn assert_all_verified_once(&self) {
        for (i, v) in self.verified_by.iter().enumerate() {
            assert_eq!(v.len(), 1, "piece {i} verified {} times", v.len());
        }
        assert!(self.swarm.verified().is_full());
    }
}

fn cfg(piece_kib: u64) -> Config {
    Config {
        piece_bytes: piece_kib * KIB,
        stall_timeout: Duration::from_secs(2),
        holderless_grace: Duration::from_secs(1),
        ..Config::default()
    }
}

const MB: f64 = 1_000_000.0;

#[test]
fn holders_joining_and_leaving() {
    let mut s = Sim::new(8 << 20, cfg(256), None);
    s.add(1, 4.0 * MB, None);
    for _ in 0..50 {
        s.step();
    }
    s.add(2, 4.0 * MB, None);
    for _ in 0..50 {
        s.step();
    }
    let before = s.requests.len();
    s.vanish(1);
    assert_eq!(s.run(10_000), &Action::Done);
    s.assert_all_verified_once();
    assert!(s.pieces_by(1) > 0 && s.pieces_by(2) > 0);
    assert!(s.requests[before..].iter().all(|&(h, _)| h == HolderId(2)));
    assert_eq!(s.swarm.progress().verified_bytes, 8 << 20);
}

#[test]
fn a_slow_holder_gets_fewer_pieces() {
    let mut s = Sim::new(32 << 20, cfg(256), None);
    s.add(1, 10.0 * MB, None);
    s.add(2, 1.0 * MB, None);
    assert_eq!(s.run(100_000), &Action::Done);
    s.assert_all_verified_once();
    let (fast, slow) = (s.pieces_by(1), s.pieces_by(2));
    assert!(slow * 5 < fast, "fast {fast} slow {slow}");
    assert!(slow > 0, "the slow holder still helps");
    assert!(s.swarm.depth(HolderId(1), s.now) > s.swarm.depth(HolderId(2), s.now));
}

#[test]
fn a_lying_holder_is_dropped_at_once_and_its_pieces_refetched() {
    let mut s = Sim::new(8 << 20, cfg(256), None);
    s.add(1, 4.0 * MB, None);
    s.add(2, 4.0 * MB, Some(10));
    s.add(3, 4.0 * MB, None);
    assert_eq!(s.run(100_000), &Action::Done);
    s.assert_all_verified_once();
    let lies: Vec<_> = s.drops.iter().filter(|(h, _)| *h == HolderId(2)).collect();
    assert_eq!(lies.len(), 1);
    let DropReason::BadBytes { piece } = lies[0].1 else {
        panic!("{lies:?}")
    };
    assert!(piece >= 10);
    // Its bad piece came from someone else (`drain` checks it was asked nothing after).
    assert!(!s.verified_by[piece].contains(&HolderId(2)));
    assert!(s.dropped_for_lies.contains(&HolderId(2)));
    // Added again by a later lookup, it is ignored.
    s.swarm.handle_holder_added(HolderId(2), s.now);
    assert!(s.swarm.poll_action().is_none());
}

#[test]
fn the_endgame_races_the_last_piece_and_cancels_the_loser() {
    let mut s = Sim::new(2 << 20, cfg(256), None);
    s.add(1, 20.0 * MB, None);
    s.add(2, 0.2 * MB, None);
    assert_eq!(s.run(100_000), &Action::Done);
    s.assert_all_verified_once();
    // The slow holder's pieces were raced by the fast one, which won; the slow one was told.
    assert!(!s.cancels.is_empty(), "no race: {:?}", s.requests);
    for &(loser, piece) in &s.cancels {
        assert_eq!(loser, HolderId(2));
        assert_eq!(s.verified_by[piece], vec![HolderId(1)]);
        assert!(s.requests.contains(&(HolderId(2), piece)));
    }
    // Nothing is raced while unasked pieces remain: each piece is asked at most twice.
    for p in 0..s.verified_by.len() {
        assert!(s.requests.iter().filter(|r| r.1 == p).count() <= 2);
    }
}

#[test]
fn a_fast_holder_is_asked_for_runs_of_pieces_a_slow_one_for_single_pieces() {
    // Alone and fast (1 GB/s): single pieces until its rate is known, then runs of the
    // longest length, each piece still verified once.
    let mut s = Sim::new(64 << 20, cfg(256), None);
    s.add(1, 1000.0 * MB, None);
    assert_eq!(s.runs[..2], [1, 1]);
    assert_eq!(s.run(100_000), &Action::Done);
    s.assert_all_verified_once();
    let max_run = Config::default().max_run;
    assert_eq!(s.swarm.run_len(HolderId(1), s.now), max_run);
    assert!(s.runs.iter().filter(|&&r| r == max_run).count() * 2 > s.runs.len());
    assert!(
        s.runs.len() * 3 < piece_count(64 << 20, 256 * KIB),
        "{} requests",
        s.runs.len()
    );
    // Holders that fill their pipeline with single pieces are asked for single pieces.
    let mut s = Sim::new(16 << 20, cfg(256), None);
    s.add(1, 4.0 * MB, None);
    s.add(2, 2.0 * MB, None);
    assert_eq!(s.run(100_000), &Action::Done);
    s.assert_all_verified_once();
    assert!(s.runs.iter().all(|&r| r == 1), "{:?}", s.runs);
    // Four at 50 MB/s: runs, and every holder still does its share.
    let mut s = Sim::new(64 << 20, cfg(256), None);
    for h in 1..=4 {
        s.add(h, 50.0 * MB, None);
    }
    assert_eq!(s.run(100_000), &Action::Done);
    s.assert_all_verified_once();
    assert!(s.runs.iter().any(|&r| r > 1), "{:?}", s.runs);
    for h in 1..=4 {
        assert!(s.pieces_by(h) * 5 > 256, "holder {h}: {}", s.pieces_by(h));
    }
}

#[test]
fn a_stalled_holder_is_dropped_and_others_take_its_pieces() {
    let mut s = Sim::new(4 << 20, cfg(256), None);
    s.add(1, 0.0, None);
    s.add(2, 2.0 * MB, None);
    assert_eq!(s.run(100_000), &Action::Done);
    s.assert_all_verified_once();
    assert_eq!(s.drops, vec![(HolderId(1), DropReason::Stalled)]);
    assert_eq!(s.pieces_by(1), 0);
}

#[test]
fn resume_fetches_only_the_missing_pieces() {
    let size = 4 << 20;
    let n = piece_count(size, 256 * KIB);
    let mut have = PieceSet::new(n);
    for i in (0..n).step_by(2) {
        have.insert(i);
    }
    let mut s = Sim::new(size, cfg(256), Some(have.clone()));
    for i in 0..n {
        if have.contains(i) {
            s.verified_by[i].push(HolderId(0));
        }
    }
    s.add(1, 4.0 * MB, None);
    s.add(2, 4.0 * MB, None);
    assert_eq!(s.run(100_000), &Action::Done);
    s.assert_all_verified_once();
    assert!(s.requests.iter().all(|&(_, p)| p % 2 == 1));
    // Everything verified already: done at once, nothing asked.
    let mut full = PieceSet::new(n);
    (0..n).for_each(|i| {
        full.insert(i);
    });
    let mut s = Sim::new(size, cfg(256), Some(full));
    s.drain();
    assert_eq!(s.outcome, Some(Action::Done));
    // A set of the wrong size (another piece size) is not trusted.
    let mut s = Sim::new(size, cfg(512), Some(have));
    s.add(1, 4.0 * MB, None);
    assert_eq!(s.run(100_000), &Action::Done);
    assert_eq!(s.requests.len(), piece_count(size, 512 * KIB));
}

#[test]
fn all_holders_gone_fails_with_a_clear_reason() {
    let mut s = Sim::new(4 << 20, cfg(256), None);
    s.add(1, 1.0 * MB, None);
    s.add(2, 1.0 * MB, Some(0));
    for _ in 0..100 {
        s.step();
    }
    s.vanish(1);
    let Action::Failed(reason) = s.run(1000).clone() else {
        panic!("{:?}", s.outcome)
    };
    let FailReason::NoHolders {
        missing,
        pieces,
        liars,
        stalled,
    } = reason.clone();
    assert_eq!(pieces, 16);
    assert_eq!(missing, 16 - s.swarm.verified().count());
    assert!(missing > 0);
    assert_eq!((liars, stalled), (1, 0));
    assert!(reason.to_string().contains("no holder left"), "{reason}");
    // Nothing after the end.
    s.swarm.handle_holder_added(HolderId(9), s.now);
    assert!(s.swarm.poll_action().is_none());
    assert_eq!(s.swarm.poll_deadline(), None);
}

#[test]
fn never_any_holder_fails_after_the_grace() {
    let mut s = Sim::new(1, cfg(16), None);
    assert!(s.swarm.poll_deadline().is_some());
    assert!(matches!(s.run(1000), Action::Failed(_)));
}

#[test]
fn tiny_files_are_one_piece() {
    for size in [0u64, 1, GROUP_BYTES - 1, GROUP_BYTES, GROUP_BYTES + 1] {
        let mut s = Sim::new(size, cfg(16), None);
        s.add(1, 1.0 * MB, None);
        let n = piece_count(size, GROUP_BYTES);
        assert_eq!(s.requests.len(), n);
        let (groups, bytes) = s.swarm.piece_range(0);
        assert_eq!(groups, 0..1);
        assert_eq!(bytes, 0..size.min(GROUP_BYTES));
        if n == 2 {
            assert_eq!(s.swarm.piece_range(1), (1..2, GROUP_BYTES..size));
        }
        assert_eq!(s.run(1000), &Action::Done, "size {size}");
        s.assert_all_verified_once();
        assert_eq!(s.swarm.progress().verified_bytes, size);
    }
}

/// Inputs a property test throws at the machine.
#[derive(Debug, Clone)]
enum Op {
    Add(u64),
    Remove(u64),
    /// Holder answers its oldest request: verified or not.
    Answer(u64, bool),
    /// A late or unsolicited answer.
    Stray(u64, usize),
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..5u64).prop_map(Op::Add),
        (0..5u64).prop_map(Op::Remove),
        (0..5u64, prop::bool::weighted(0.9)).prop_map(|(h, ok)| Op::Answer(h, ok)),
        (0..5u64, 0..12usize).prop_map(|(h, p)| Op::Stray(h, p)),
        (0..3000u64).prop_map(Op::Tick),
    ]
}

proptest! {
    #[test]
    fn any_event_sequence_ends_verified_once_or_failed(
        size in 0u64..(12 * 16 * KIB),
        ops in prop::collection::vec(op(), 0..200),
    ) {
        let mut s = Sim::new(size, cfg(16), None);
        for o in ops {
            match o {
                Op::Add(h) => s.add(h, 1.0 * MB, None),
                Op::Remove(h) => if s.world.contains_key(&HolderId(h)) { s.vanish(h) },
                Op::Answer(h, ok) => {
                    let id = HolderId(h);
                    let Some(piece) = s.world.get_mut(&id).and_then(|x| x.queue.pop_front()).map(|x| x.0) else { continue };
                    s.swarm.handle_bytes(id, piece, 1, s.now);
                    if ok {
                        let was = s.swarm.verified().contains(piece);
                        s.swarm.handle_piece_verified(id, piece, s.now);
                        if !was && s.swarm.verified().contains(piece) {
                            s.verified_by[piece].push(id);
                        }
                    } else {
                        s.swarm.handle_piece_failed(id, piece, s.now);
                    }
                    s.drain();
                }
                Op::Stray(h, p) => {
                    let was = s.swarm.verified().count();
                    s.swarm.handle_piece_verified(HolderId(h), p, s.now);
                    // An answer nobody asked for changes nothing.
                    let asked = s.world.get(&HolderId(h)).is_some_and(|x| x.queue.iter().any(|q| q.0 == p));
                    if !asked {
                        prop_assert_eq!(s.swarm.verified().count(), was);
                    } else if s.swarm.verified().count() > was {
                        s.verified_by[p].push(HolderId(h));
                        s.world.get_mut(&HolderId(h)).unwrap().queue.retain(|q| q.0 != p);
                    }
                    s.drain();
                }
                Op::Tick(ms) => {
                    s.now += Duration::from_millis(ms);
                    s.swarm.handle_tick(s.now);
                    s.drain();
                }
            }
        }
        // Then honest holders that answer everything: it must end either way.
        if s.outcome.is_none() {
            s.add(100, 10.0 * MB, None);
            s.add(101, 10.0 * MB, None);
        }
        let end = s.run(100_000).clone();
        match end {
            Action::Done => {
                for (i, v) in s.verified_by.iter().enumerate() {
                    prop_assert_eq!(v.len(), 1, "piece {} verified {} times", i, v.len());
                }
            }
            Action::Failed(_) => {
                for v in &s.verified_by {
                    prop_assert!(v.len() <= 1);
                }
            }
            a => prop_assert!(false, "ended with {:?}", a),
        }
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("p2ps-swarm-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn record(pieces: usize) -> ResumeRecord {
    let mut verified = PieceSet::new(pieces);
    for i in (0..pieces).filter(|i| i % 3 != 1) {
        verified.insert(i);
    }
    ResumeRecord {
        hash: FileHash::of(b"the file"),
        size: pieces as u64 * 256 * KIB - 5,
        piece_bytes: 256 * KIB,
        verified,
    }
}

#[test]
fn the_resume_record_round_trips_and_is_written_atomically() {
    let dir = tmpdir("record");
    let r = record(77);
    let path = record_path(&dir, &r.hash);
    assert!(crate::peer::share::is_own_file(path.file_name().unwrap()));
    assert_eq!(
        ResumeRecord::load(&path, &r.hash, r.size, r.piece_bytes).unwrap(),
        Loaded::Missing
    );
    r.save(&path).unwrap();
    let loaded = ResumeRecord::load(&path, &r.hash, r.size, r.piece_bytes).unwrap();
    assert_eq!(loaded, Loaded::Intact(r.verified.clone()));
    assert_eq!(loaded.into_verified(77), r.verified);
    // Overwritten in place: no temporary file stays behind.
    r.save(&path).unwrap();
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_or_foreign_record_is_never_trusted() {
    for pieces in [1usize, 8, 9, 77] {
        let r = record(pieces);
        let bytes = r.encode();
        let load = |b: &[u8]| ResumeRecord::decode(b, &r.hash, r.size, r.piece_bytes);
        assert_eq!(load(&bytes), Loaded::Intact(r.verified.clone()));
        // A crash mid-write (were the write not atomic): every truncation.
        for cut in 0..bytes.len() {
            assert!(
                matches!(load(&bytes[..cut]), Loaded::Untrusted(_)),
                "cut {cut}"
            );
        }
        // Every flipped bit of every byte.
        for pos in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[pos] ^= 1 << bit;
                let l = load(&bad);
                assert!(matches!(l, Loaded::Untrusted(_)), "flip {pos}.{bit}");
                assert_eq!(l.into_verified(pieces).count(), 0);
            }
        }
        // Another download's intact record.
        assert!(matches!(
            ResumeRecord::decode(&bytes, &FileHash::of(b"other"), r.size, r.piece_bytes),
            Loaded::Untrusted(_)
        ));
        assert!(matches!(
            ResumeRecord::decode(&bytes, &r.hash, r.size + 1 + 256 * KIB, r.piece_bytes),
            Loaded::Untrusted(_)
        ));
        assert!(matches!(
            ResumeRecord::decode(&bytes, &r.hash, r.size, 512 * KIB),
            Loaded::Untrusted(_)
        ));
    }
    // A well-formed record naming a piece past the end.
    let mut r = record(3);
    r.verified = PieceSet::new(8);
    r.verified.insert(7);
    assert!(matches!(
        ResumeRecord::decode(&r.encode(), &r.hash, r.size, r.piece_bytes),
        Loaded::Untrusted(_)
    ));
}

/// The scheduler and the verifier together, in memory: four holders answer with real proofs
/// and bytes, one of them with a wrong byte in every piece from the middle of the file on.
#[test]
fn swarm_and_verifier_fetch_a_file_past_a_liar() {
    use crate::peer::outboard::{self, RangeVerifier, VerifyError};
    let size = 40 * GROUP_BYTES + 3;
    let mut rng = fastrand::Rng::with_seed(42);
    let file: Vec<u8> = (0..size).map(|_| rng.u8(..)).collect();
    let (root, ob) = outboard::compute_in_memory(&file);
    let now = Instant::now();
    let config = Config {
        piece_bytes: 4 * GROUP_BYTES,
        ..Config::default()
    };
    let pieces = piece_count(size, config.piece_bytes);
    let mut swarm = Swarm::new(size, config, None, now);
    let liar = HolderId(3);
    let lie_from = pieces / 2;
    let mut queues: BTreeMap<HolderId, VecDeque<(usize, Range<u64>)>> = BTreeMap::new();
    for h in 0..4 {
        queues.insert(HolderId(h), VecDeque::new());
        swarm.handle_holder_added(HolderId(h), now);
    }
    let mut out = vec![0u8; size as usize];
    let mut written = vec![0u32; outboard::group_count(size) as usize];
    let mut dropped = Vec::new();
    let mut end = None;
    let (mut requests, mut cancels, mut liar_in_flight) = (0, 0, 0);
    for round in 0..10_000 {
        while let Some(a) = swarm.poll_action() {
            match a {
                Action::Request { holder, pieces, .. } => {
                    // A run is answered piece by piece, each verified on its own.
                    for piece in pieces {
                        requests += 1;
                        let groups = swarm.piece_range(piece).0;
                        queues.get_mut(&holder).unwrap().push_back((piece, groups))
                    }
                }
                Action::Cancel { holder, piece } => {
                    cancels += 1;
                    queues.get_mut(&holder).unwrap().retain(|q| q.0 != piece)
                }
                Action::DropHolder { holder, reason } => {
                    // Its queue plus the piece it just failed: all it had in flight.
                    liar_in_flight = queues.remove(&holder).unwrap().len() + 1;
                    dropped.push((holder, reason));
                }
                a => end = Some(a),
            }
        }
        if end.is_some() {
            break;
        }
        let t = now + Duration::from_millis(round);
        // Each holder answers its oldest request, the liar with one byte flipped.
        let ids: Vec<HolderId> = queues.keys().copied().collect();
        for id in ids {
            let Some((piece, groups)) = queues.get_mut(&id).and_then(|q| q.pop_front()) else {
                continue;
            };
            let mut proof = Vec::new();
            outboard::encode_proof(&ob, groups.clone(), &mut proof).unwrap();
            let bytes = outboard::group_bytes(size, groups.clone());
            let mut body = file[bytes.start as usize..bytes.end as usize].to_vec();
            let bad_at = (id == liar && piece >= lie_from).then(|| {
                let at = GROUP_BYTES as usize + 100;
                body[at] ^= 0xff;
                bytes.start + at as u64
            });
            let mut v = RangeVerifier::new(root, size, groups, &proof).unwrap();
            let mut failed = false;
            for part in body.chunks(4096) {
                let r = v.handle_data(part, &mut |off, b| {
                    out[off as usize..off as usize + b.len()].copy_from_slice(b);
                    written[(off / GROUP_BYTES) as usize] += 1;
                    Ok(())
                });
                swarm.handle_bytes(id, piece, part.len() as u64, t);
                if let Err(e) = r {
                    let VerifyError::Range(outboard::RangeError::BadGroup { group }) = e else {
                        panic!("{e}")
                    };
                    // Caught in the very group of the first bad byte.
                    assert_eq!(Some(group), bad_at.map(|b| b / GROUP_BYTES));
                    failed = true;
                    break;
                }
            }
            if failed {
                swarm.handle_piece_failed(id, piece, t);
            } else {
                assert!(v.is_complete());
                swarm.handle_piece_verified(id, piece, t);
            }
        }
    }
    assert_eq!(end, Some(Action::Done));
    assert_eq!(out, file);
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].0, liar);
    assert!(matches!(dropped[0].1, DropReason::BadBytes { piece } if piece >= lie_from));
    // Refetched: only what the liar had in flight (plus endgame races, each one cancelled).
    assert!(
        requests <= pieces + liar_in_flight + cancels,
        "{requests} requests for {pieces} pieces"
    );
    // Racing copies may write a group twice, never an unverified one; every group was written.
    assert!(written.iter().all(|&w| w >= 1));
}
