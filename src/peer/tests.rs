//! The peer's role machines together, through the in-memory harness (virtual time, the real
//! sans-IO index, scripted holders).

use super::harness::{Harness, Holder};
use super::session::{BACKOFF_MAX, BACKOFF_MIN, DEFAULT_REPLY_TIMEOUT, PING_INTERVAL};
use crate::wire::FileHash;
use std::time::Duration;

fn has(h: &Harness, text: &str) -> usize {
    h.said().iter().filter(|l| l.contains(text)).count()
}

/// The peer said `text` once.
fn said_once(h: &Harness, text: &str) {
    assert_eq!(has(h, text), 1, "{text}: {:?}", h.said());
}

#[test]
fn reconnects_with_bounded_fully_jittered_backoff_and_re_registers_after_an_index_restart() {
    let mut h = Harness::new("restart");
    h.scanned(&[("a.txt", b"alpha"), ("b.txt", b"beta")]);
    assert_eq!(h.index_holders(FileHash::of(b"alpha")), 1);
    h.restart_index(false);
    let down_at = h.now;
    h.advance(Duration::from_secs(300));
    let tries: Vec<Duration> = h
        .index_connects
        .iter()
        .filter(|t| **t > down_at)
        .scan(down_at, |prev, t| {
            let gap = *t - *prev;
            *prev = *t;
            Some(gap)
        })
        .collect();
    assert!(tries.len() >= 10, "{tries:?}");
    for (i, gap) in tries.iter().enumerate() {
        let step = BACKOFF_MIN.saturating_mul(1 << i.min(16)).min(BACKOFF_MAX);
        // Full jitter: anywhere within the step.
        assert!(*gap <= step, "try {i}: {gap:?} (step {step:?})");
    }
    assert_eq!(has(&h, "unreachable"), 1, "{:?}", h.said());
    h.index_up = true;
    h.advance(BACKOFF_MAX);
    assert_eq!(
        h.index_holders(FileHash::of(b"alpha")),
        1,
        "registered again"
    );
    assert_eq!(h.index_holders(FileHash::of(b"beta")), 1);
    assert_eq!(has(&h, "connected to 127.0.0.1:9000 again"), 1);
}

#[test]
fn a_hung_index_fails_the_command_and_the_session_moves_on_and_registers_again() {
    let mut h = Harness::new("hung");
    h.scanned(&[("a.txt", b"alpha")]);
    assert_eq!(h.index_holders(FileHash::of(b"alpha")), 1);
    // Stopped: the search is never answered; the person hears so once the timeout passes.
    h.index_hung = true;
    h.type_lines(&["search alpha"]);
    h.advance(DEFAULT_REPLY_TIMEOUT - Duration::from_millis(1));
    assert_eq!(has(&h, "lost during the command"), 0, "{:?}", h.said());
    h.advance(Duration::from_millis(1));
    said_once(
        &h,
        "the index connection was lost during the command (no answer from the index in 10.0 s)",
    );
    said_once(&h, "unreachable (no answer from the index in 10.0 s)");
    // The next node (here the same address, come back empty) gets everything registered.
    h.index_hung = false;
    h.restart_index(true);
    h.advance(BACKOFF_MIN);
    assert_eq!(h.index_holders(FileHash::of(b"alpha")), 1);
    // Idle and hung again: the keep-alive ping finds it out.
    h.index_hung = true;
    let connects = h.index_connects.len();
    // Pings go every interval from the Welcome (the harness welcomes at the connect).
    let up = h.index_connects[connects - 1];
    let found_out = up + PING_INTERVAL + DEFAULT_REPLY_TIMEOUT;
    h.advance(found_out - Duration::from_millis(1) - h.now);
    assert_eq!(
        h.index_connects.len(),
        connects,
        "still waiting for the ping's answer"
    );
    h.index_hung = false;
    h.advance(Duration::from_millis(1) + BACKOFF_MIN);
    assert_eq!(h.index_connects.len(), connects + 1);
    assert_eq!(h.index_holders(FileHash::of(b"alpha")), 1);
}

#[test]
fn a_version_mismatch_stays_down_and_says_so_in_status() {
    let mut h = Harness::new("version");
    h.index_other_version = true;
    h.restart_index(true);
    h.scanned(&[]);
    // The retry after the restart meets the other version.
    h.advance(BACKOFF_MIN);
    let tries = h.index_connects.len();
    h.advance(Duration::from_secs(600));
    assert_eq!(h.index_connects.len(), tries, "no retry");
    h.type_lines(&["status"]);
    let said = h.said();
    assert_eq!(has(&h, "error: index: version mismatch"), 1, "{said:?}");
    assert!(said.iter().any(|l| l.contains("not retrying")), "{said:?}");
}

#[test]
fn every_holder_is_asked_at_once_and_the_failing_ones_are_dropped_and_named() {
    let mut h = Harness::new("fallback");
    h.scanned(&[]);
    // 9 pieces of 256 KiB, so that every holder gets some.
    let content: Vec<u8> = (0..2_300_000u32).map(|i| (i % 251) as u8).collect();
    let mut wrong = content.clone();
    wrong[1_000_000] ^= 1;
    let refuses = h.holder("10.0.0.1:1", "f.bin", &content, Holder::Refuses);
    let liar = h.holder("10.0.0.2:1", "f.bin", &content, Holder::Wrong(wrong));
    let silent = h.holder("10.0.0.3:1", "f.bin", &content, Holder::Silent);
    let good = h.holder(
        "10.0.0.4:1",
        "f.bin",
        &content,
        Holder::Good(content.clone()),
    );
    h.type_lines(&[&format!("get {}", FileHash::of(&content))]);
    let asked = |h: &Harness, a| h.gets.iter().filter(|(x, _)| *x == a).count();
    for holder in [refuses, liar, silent, good] {
        assert!(asked(&h, holder) > 0, "{holder} asked: {:?}", h.gets);
    }
    // The liar's bad group is caught in the range that holds it, and it is named.
    said_once(&h, &format!("dropped the lying holder {liar}"));
    said_once(&h, &format!("dropped holder {refuses}"));
    // The silent holder's pieces are raced by the good one (endgame): no wait for its stall.
    assert_eq!(std::fs::read(h.landed("f.bin")).unwrap(), content);
    assert_eq!(has(&h, "saved "), 1, "{:?}", h.said());
    // Once per request slot (2), plus at most one more: its bytes are verified off the loop,
    // so a good piece of it verified before its bad one was answered may bring it one more
    // request, in flight when it is dropped and handed to the others.
    let liar_pieces = asked(&h, liar);
    assert!(
        liar_pieces <= 3,
        "the liar was asked once per slot, and once more: {:?}",
        h.gets
    );
    assert!(!h.part_path(&content).exists());
}

#[test]
fn a_download_resumes_from_its_verified_pieces() {
    let mut h = Harness::new("resume");
    h.scanned(&[]);
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 13) as u8).collect();
    // The first 256 KiB piece was verified by an earlier run, and recorded.
    let piece = super::swarm::Config::default().piece_bytes;
    std::fs::write(h.part_path(&content), &content[..piece as usize]).unwrap();
    let mut verified = super::swarm::PieceSet::new(2);
    verified.insert(0);
    super::swarm::ResumeRecord {
        hash: FileHash::of(&content),
        size: content.len() as u64,
        piece_bytes: piece,
        verified,
    }
    .save(&super::swarm::record_path(&h.dir, &FileHash::of(&content)))
    .unwrap();
    let holder = h.holder(
        "10.0.0.5:1",
        "r.bin",
        &content,
        Holder::Good(content.clone()),
    );
    h.type_lines(&["get r.bin"]);
    assert_eq!(h.gets, vec![(holder, 16..19)], "{:?}", h.said());
    assert_eq!(has(&h, "resuming r.bin at 262144 of 300000 bytes"), 1);
    assert_eq!(
        has(&h, "37856 bytes fetched from 1 holder"),
        1,
        "{:?}",
        h.said()
    );
    assert_eq!(std::fs::read(h.landed("r.bin")).unwrap(), content);
}

#[test]
fn console_commands_run_in_order_each_waiting_for_the_one_before() {
    let mut h = Harness::new("order");
    let content = b"zebra crossing".to_vec();
    h.holder(
        "10.0.0.6:1",
        "zebra.txt",
        &content,
        Holder::Good(content.clone()),
    );
    h.type_lines(&["search zebra", "get zebra.txt", "files"]);
    assert!(
        h.said().is_empty(),
        "nothing runs before startup: {:?}",
        h.said()
    );
    h.scanned(&[("mine.txt", b"mine")]);
    let said = h.said();
    let at = |text: &str| {
        said.iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("{text}: {said:?}"))
    };
    assert!(
        at("1 result") < at("saved ") && at("saved ") < at("1 file,"),
        "{said:?}"
    );
    assert!(h.stopped.eq(&false));
    h.core.handle_event(h.now, super::Event::StdinEof);
    h.drive();
    assert!(h.stopped, "end of input quits");
}

#[test]
fn more_pages_through_a_search() {
    let mut h = Harness::new("more");
    let files: Vec<(String, Vec<u8>)> = (0..150)
        .map(|i| (format!("zebra {i}.txt"), format!("z{i}").into_bytes()))
        .collect();
    let shared: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    h.scanned(&shared);
    h.type_lines(&[
        "more",
        "search zebra",
        "more",
        "more",
        "search zebra type:document",
    ]);
    let said = h.said();
    let at = |text: &str| {
        said.iter()
            .position(|l| l.contains(text))
            .unwrap_or_else(|| panic!("{text}: {said:?}"))
    };
    // Nothing to continue at first; then a page of the server's cap, with the count (exact:
    // one word, no filter), the rest, and nothing more.
    assert!(at("more: nothing more to show") < at("100 results (of 150 matches"));
    assert!(at("100 results (of 150 matches; type more for the next page)") < at("50 results"));
    assert_eq!(
        said.iter()
            .filter(|l| l.contains("more: nothing more to show"))
            .count(),
        2,
        "{said:?}"
    );
    // With a filter the count is a lower bound.
    assert!(
        at("100 results (at least 101 matches; type more for the next page)") > at("50 results")
    );
}

#[test]
fn a_lookup_of_a_crowded_name_shows_a_page_and_more_shows_the_rest() {
    let mut h = Harness::new("pages");
    h.scanned(&[]);
    // 105 different files called "copyright", the first one held twice.
    for i in 0..105u32 {
        let bytes = format!("licence text {i}");
        h.holder(
            &format!("10.1.{}.{}:1", i / 200, i % 200 + 1),
            "copyright",
            bytes.as_bytes(),
            Holder::Refuses,
        );
    }
    h.holder(
        "10.2.0.1:1",
        "copyright",
        b"licence text 0",
        Holder::Refuses,
    );
    h.type_lines(&["lookup copyright"]);
    let said = h.said();
    let best = FileHash::of(b"licence text 0").to_string();
    let answer = said
        .iter()
        .find(|l| l.contains("copyright"))
        .expect("an answer");
    assert!(answer.starts_with(&best), "most holders first: {said:?}");
    assert!(answer.contains("\n  2 10.2.0.1:1\n"), "{answer}");
    said_once(
        &h,
        "files 1-100 of 105, most holders first; `more` shows the next",
    );
    let listed = |h: &Harness| {
        h.said()
            .iter()
            .flat_map(|l| l.lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|l| l.ends_with(" copyright"))
            .count()
    };
    assert_eq!(listed(&h), 100);
    h.type_lines(&["more"]);
    said_once(&h, "files 101-105 of 105, most holders first");
    assert_eq!(listed(&h), 105);
    h.type_lines(&["more"]);
    said_once(&h, "error: more: nothing more to show");
    // `get` by that name names the files and how to see them all.
    h.type_lines(&["get copyright"]);
    said_once(&h, "105 different files are called copyright");
    said_once(&h, "`lookup copyright` then `more`");
    assert!(h.gets.is_empty(), "nothing downloaded");
}

#[test]
fn a_download_is_saved_under_the_name_the_downloader_chose() {
    // Issue 13, case 2: an attacker registers the holder's hash under `!! setup.exe`, and the
    // holder's header names the file "x"; `get song.flac` saves `song.flac`.
    let mut h = Harness::new("chosen-name");
    h.scanned(&[]);
    let content = b"a song, honestly".to_vec();
    h.holder(
        "10.0.0.1:1",
        "song.flac",
        &content,
        Holder::Good(content.clone()),
    );
    h.holder(
        "10.0.0.2:1",
        "!! setup.exe",
        &content,
        Holder::Good(content.clone()),
    );
    h.type_lines(&["get song.flac"]);
    assert_eq!(std::fs::read(h.landed("song.flac")).unwrap(), content);
    assert!(!h.landed("!! setup.exe").exists());
    assert!(!h.landed("x").exists());
    assert_eq!(has(&h, "saved "), 1, "{:?}", h.said());
}

#[test]
fn a_download_waits_in_a_holders_queue_and_a_later_lookup_brings_another_holder() {
    let mut h = Harness::new("queued");
    h.scanned(&[]);
    let content = b"wait for it".to_vec();
    let busy = h.holder("10.0.0.1:1", "f.bin", &content, Holder::Queues);
    h.type_lines(&[&format!("get {}", FileHash::of(&content))]);
    said_once(&h, "position 3 in its upload queue");
    // Well past the stall timer: a queued download is not stalled.
    h.advance(Duration::from_secs(60));
    assert!(h.gets.iter().all(|(a, _)| *a == busy), "{:?}", h.gets);
    assert_eq!(has(&h, "dropped"), 0, "{:?}", h.said());
    // A new holder appears: the download's periodic lookup finds it, and it serves.
    let good = h.holder(
        "10.0.0.2:1",
        "f.bin",
        &content,
        Holder::Good(content.clone()),
    );
    h.advance(super::download::RELOOKUP_EVERY);
    assert_eq!(h.gets.last().map(|g| g.0), Some(good), "{:?}", h.said());
    assert_eq!(std::fs::read(h.landed("f.bin")).unwrap(), content);
}

#[test]
fn downloads_run_side_by_side_in_the_background_and_are_listed() {
    let mut h = Harness::new("background");
    h.scanned(&[]);
    let one: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
    let two: Vec<u8> = (0..200_000u32).map(|i| (i % 11) as u8).collect();
    // Holders that queue the downloads: both stay running.
    h.holder("10.0.0.1:1", "one.bin", &one, Holder::Queues);
    h.holder("10.0.0.2:1", "two.bin", &two, Holder::Queues);
    h.type_lines(&["get -b one.bin", "get -b two.bin", "downloads", "files"]);
    said_once(&h, "downloading one.bin (100000 bytes) in the background");
    said_once(&h, "downloading two.bin (200000 bytes) in the background");
    said_once(&h, "one.bin 100000 bytes 0.0% 0.0 MiB/s 1 source");
    said_once(&h, "two.bin 200000 bytes 0.0% 0.0 MiB/s 1 source");
    said_once(&h, "2 downloads running");
    // The console went on: `files` ran.
    said_once(&h, "0 files, 0 bytes");
    // A holder that serves appears; the periodic lookups find it for both downloads.
    h.holder("10.0.0.3:1", "one.bin", &one, Holder::Good(one.clone()));
    h.holder("10.0.0.4:1", "two.bin", &two, Holder::Good(two.clone()));
    h.advance(super::download::RELOOKUP_EVERY);
    assert_eq!(std::fs::read(h.landed("one.bin")).unwrap(), one);
    assert_eq!(std::fs::read(h.landed("two.bin")).unwrap(), two);
    assert_eq!(has(&h, "saved "), 2, "{:?}", h.said());
    h.type_lines(&["downloads"]);
    said_once(&h, "0 downloads running");
}

#[test]
fn outboards_of_files_that_left_the_share_are_deleted_and_a_rescan_sweeps_the_rest() {
    use super::threads::{Event, Job};
    let mut h = Harness::new("outboard-gc");
    let (a, b, c) = (b"alpha".as_slice(), b"beta".as_slice(), b"gamma".as_slice());
    h.scanned(&[("a.bin", a), ("b.bin", b), ("b-copy.bin", b), ("c.bin", c)]);
    // The first scan asks for a sweep keeping exactly what is shared.
    let mut keep = match h.jobs.last() {
        Some(Job::PruneOutboards { keep }) => keep.clone(),
        other => panic!("{other:?}"),
    };
    keep.sort();
    keep.dedup();
    let mut want = vec![FileHash::of(a), FileHash::of(b), FileHash::of(c)];
    want.sort();
    assert_eq!(keep, want);
    h.jobs.clear();
    let share = h.dir.join("share");
    let watched = |h: &mut Harness, paths: &[&str]| {
        let event = Event::Scanned {
            job: Job::Watched {
                paths: paths.iter().map(|p| share.join(p)).collect(),
            },
            files: Vec::new(),
            warnings: Vec::new(),
        };
        h.core.handle_event(h.now, event);
        h.drive();
    };
    // a.bin deleted: its outboard goes; b.bin deleted while b-copy.bin holds the same bytes:
    // its outboard stays.
    watched(&mut h, &["a.bin", "b.bin"]);
    let forgotten: Vec<FileHash> = h
        .jobs
        .iter()
        .flat_map(|j| match j {
            Job::ForgetOutboards { hashes } => hashes.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(forgotten, vec![FileHash::of(a)]);
    h.jobs.clear();
    // Withdrawn by the person: its outboard goes too.
    h.type_lines(&["unregister c.bin"]);
    let forgotten: Vec<FileHash> = h
        .jobs
        .iter()
        .flat_map(|j| match j {
            Job::ForgetOutboards { hashes } => hashes.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(forgotten, vec![FileHash::of(c)]);
}
