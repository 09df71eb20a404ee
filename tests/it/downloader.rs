//! The downloader against holders that follow the protocol and still try to keep it, or to
//! name what it saves: each case re-enacted against the real binaries (issue 13, cases 1, 2
//! and 4, the downloader's half).

use crate::common::{self, run_console, Fake, FakeHolder, Indexd, Input, ServingPeer, TempDir};
use p2pshare::wire::{FileEntry, FileHash};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A holder that sends a valid header and then one byte every 20 ms, listed first, cannot hold
/// the download: both holders are asked at once, the honest one serves the file (the
/// trickler's piece is raced in the endgame), and the rate floor (here 1000 B/s over 300 ms)
/// would drop the trickler anyway. Before swarm downloads and the floor, such a holder kept
/// the downloader until the whole file had trickled in.
#[test]
fn a_trickling_holder_cannot_hold_the_download() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("trickle");
    let (a, b) = (tmp.sub("a"), tmp.sub("b"));
    let bytes = common::pseudo_random(1 << 20, 41);
    std::fs::write(a.join("real.bin"), &bytes).unwrap();
    let h = FileHash::of(&bytes);
    let entry = FileEntry {
        hash: h,
        size: bytes.len() as u64,
        name: "real.bin".into(),
    };
    let fake = FakeHolder::start(indexd.addr, entry, bytes.clone(), Fake::Trickles);
    let mut real = ServingPeer::start(&a, indexd.addr);
    real.wait_registered(1);
    let n = common::holder_number(indexd.addr, h, fake.addr);
    let run = run_console(
        &b,
        indexd.addr,
        &["--min-rate", "1000", "--rate-window-ms", "300"],
        Input::Pipe(&format!("get {h} {n}\n")),
        LIMIT,
    );
    assert!(run.success, "{run:?}");
    assert!(run.stdout.contains("saved "), "{run:?}");
    // The fake was tried first, then the honest holder.
    let tried: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("get: downloading"))
        .collect();
    assert_eq!(tried.len(), 2, "{run:?}");
    assert!(tried[0].ends_with(&fake.addr.to_string()), "{run:?}");
    assert!(std::fs::read(b.join("real.bin")).unwrap() == bytes);
    assert_eq!(common::visible_names(&b), vec!["real.bin".to_string()]);
}

/// With no rate floor, a trickling only holder still cannot keep the console: the whole `get`
/// ends at `--get-timeout`, the partial file is kept, and the next command runs.
#[test]
fn a_get_always_ends_and_the_console_moves_on() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("get-timeout");
    let b = tmp.sub("b");
    let bytes = common::pseudo_random(1 << 20, 42);
    let h = FileHash::of(&bytes);
    let entry = FileEntry {
        hash: h,
        size: bytes.len() as u64,
        name: "slow.bin".into(),
    };
    let _fake = FakeHolder::start(indexd.addr, entry, bytes, Fake::Trickles);
    let run = run_console(
        &b,
        indexd.addr,
        &["--min-rate", "0", "--get-timeout", "1"],
        Input::Pipe(&format!("get {h}\nstatus\n")),
        LIMIT,
    );
    // The get failed: a script can tell (the peer itself exited normally).
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(!run.stdout.contains("saved "), "{run:?}");
    assert!(run.stderr.contains("gave up after 1 s"), "{run:?}");
    // The console went on to the next command.
    assert!(
        run.stdout.contains("downloads: none in progress"),
        "{run:?}"
    );
    assert!(common::visible_names(&b).is_empty());
}
