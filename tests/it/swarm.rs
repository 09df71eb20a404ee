//! Swarm downloads (issue 14) against the real binaries: one file from every holder of its
//! (hash, size) claim at once, every 16 KiB group verified against the hash as it arrives.

use crate::common::{self, run_console, Fake, FakeHolder, Indexd, Input, ServingPeer, TempDir};
use p2pshare::peer::outboard::GROUP_BYTES;
use p2pshare::wire::{FileEntry, FileHash};
use std::sync::atomic::Ordering;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// The number in "N bytes fetched from H holders" for `name`, from a run's stderr.
fn fetched_from(stderr: &str, name: &str) -> Option<usize> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("get: {name}: ")) && l.contains(" bytes fetched from "))?;
    line.split(" bytes fetched from ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn every_size_arrives_verified_from_three_holders_at_once() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("swarm-sizes");
    let g = GROUP_BYTES as usize;
    let files: Vec<(String, Vec<u8>)> = vec![
        ("empty.bin".into(), vec![]),
        ("one.bin".into(), vec![7]),
        ("group.bin".into(), common::pseudo_random(g, 1)),
        ("group+1.bin".into(), common::pseudo_random(g + 1, 2)),
        ("mib.bin".into(), common::pseudo_random((3 << 20) + 123, 3)),
    ];
    let mut holders = Vec::new();
    for i in 0..3 {
        let dir = tmp.sub(&format!("h{i}"));
        for (name, bytes) in &files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        // Limited (4 MB/s each), so that no holder can serve the 3 MiB file alone before the
        // others answer, even on a loaded machine.
        let mut peer = ServingPeer::start_with(&dir, indexd.addr, &["--max-upload-rate", "4M"]);
        peer.wait_registered(files.len());
        holders.push(peer);
    }
    let b = tmp.sub("b");
    let script: String = files
        .iter()
        .map(|(_, bytes)| format!("get {}\n", FileHash::of(bytes)))
        .collect();
    let run = run_console(&b, indexd.addr, &[], Input::Pipe(&script), LIMIT);
    assert!(run.success, "{run:?}");
    for (name, bytes) in &files {
        let got = std::fs::read(b.join(name)).unwrap_or_else(|e| panic!("{name}: {e} {run:?}"));
        assert!(got == *bytes, "{name} differs");
    }
    assert_eq!(run.stdout.matches("saved ").count(), files.len(), "{run:?}");
    // Each holder was given pieces of the 3 MiB file from the start, and delivered.
    assert_eq!(fetched_from(&run.stderr, "mib.bin"), Some(3), "{run:?}");
    assert!(!run.stderr.contains("dropped"), "{run:?}");
    assert_eq!(common::visible_names(&b).len(), files.len());
}

#[test]
fn a_holder_lying_from_the_middle_is_named_and_dropped_and_the_file_completes() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("swarm-liar");
    let bytes = common::pseudo_random(4 << 20, 61);
    let h = FileHash::of(&bytes);
    let mut honest = Vec::new();
    for i in 0..3 {
        let dir = tmp.sub(&format!("h{i}"));
        std::fs::write(dir.join("big.bin"), &bytes).unwrap();
        // Limited (2 MB/s each: the 4 MiB take the three of them about 0.7 s), so that the
        // unlimited liar's wrong bytes arrive before the others could have sent the whole
        // file: unlimited, on a loaded machine, they sometimes finished it before the liar's
        // second piece came, and nobody had lied.
        let mut peer = ServingPeer::start_with(&dir, indexd.addr, &["--max-upload-rate", "2M"]);
        peer.wait_registered(1);
        honest.push(peer);
    }
    // The liar serves the true proof and right bytes up to the middle of its second piece,
    // wrong bytes after: it is the first holder asked, so its first two pieces are 0 and 1.
    let piece = p2pshare::peer::swarm::Config::default().piece_bytes;
    let lie_at = piece + piece / 2 + 5;
    let entry = FileEntry {
        hash: h,
        size: bytes.len() as u64,
        name: "big.bin".into(),
    };
    let liar = FakeHolder::start(indexd.addr, entry, bytes.clone(), Fake::LiesFrom(lie_at));
    let n = common::holder_number(indexd.addr, h, liar.addr);
    let b = tmp.sub("b");
    let run = run_console(
        &b,
        indexd.addr,
        &[],
        Input::Pipe(&format!("get {h} {n}\n")),
        LIMIT,
    );
    assert!(run.success, "{run:?}");
    assert!(
        std::fs::read(b.join("big.bin")).unwrap() == bytes,
        "{run:?}"
    );
    // Named, with the very group of its first bad byte.
    let group = lie_at / GROUP_BYTES;
    assert!(
        run.stderr.contains(&format!(
            "dropped the lying holder {}: bytes {}..{} fail verification (group {group})",
            liar.addr,
            group * GROUP_BYTES,
            (group + 1) * GROUP_BYTES
        )),
        "{run:?}"
    );
    // Asked for at most what it had in flight when it lied: its first two requests, and the
    // requests pipelined once its first piece verified (at most `max_in_flight`); never again
    // after it was dropped.
    let asked = liar.served.load(Ordering::SeqCst);
    let most = 2 + p2pshare::peer::swarm::Config::default().max_in_flight;
    assert!(asked <= most, "the liar was asked {asked} times: {run:?}");
    assert_eq!(common::visible_names(&b), vec!["big.bin".to_string()]);
}

/// Four holders each limited to 1 MB/s (`--max-upload-rate`, so that the download is
/// reliably in the middle when two of them die); two are SIGKILLed once the downloader has
/// recorded verified pieces: their pieces go to the other two and the file completes.
#[test]
fn two_of_four_holders_killed_mid_download_it_completes_from_the_other_two() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("swarm-killed");
    let bytes = common::pseudo_random(8 << 20, 62);
    let h = FileHash::of(&bytes);
    let size = bytes.len() as u64;
    let mut holders: Vec<ServingPeer> = (0..4)
        .map(|i| {
            let dir = tmp.sub(&format!("h{i}"));
            std::fs::write(dir.join("big.bin"), &bytes).unwrap();
            let mut peer = ServingPeer::start_with(&dir, indexd.addr, &["--max-upload-rate", "1M"]);
            peer.wait_registered(1);
            peer
        })
        .collect();
    let b = tmp.sub("b");
    let dir = b.clone();
    let index = indexd.addr;
    let download = std::thread::spawn(move || {
        run_console(&dir, index, &[], Input::Pipe(&format!("get {h}\n")), LIMIT)
    });
    // Mid-download for sure: the record (saved a second after the first verified piece at
    // the latest) names some pieces, and 4 MB/s cannot have fetched 8 MiB by then... unless
    // the record is written at the end; it is removed when the file lands, so wait for it.
    let record = p2pshare::peer::swarm::record_path(&b, &h);
    let piece = p2pshare::peer::swarm::Config::default().piece_bytes;
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        use p2pshare::peer::swarm::{Loaded, ResumeRecord};
        if let Ok(Loaded::Intact(set)) = ResumeRecord::load(&record, &h, size, piece) {
            if set.count() > 0 && !set.is_full() {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline && !download.is_finished(),
            "no partial record seen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed: Vec<_> = holders[..2].iter().map(|p| p.addr).collect();
    for p in &mut holders[..2] {
        p.child.kill().unwrap();
        p.child.wait().unwrap();
    }
    let run = download.join().unwrap();
    assert!(run.success, "{run:?}");
    assert!(
        std::fs::read(b.join("big.bin")).unwrap() == bytes,
        "{run:?}"
    );
    for addr in killed {
        assert!(
            run.stderr.contains(&format!("dropped holder {addr}")),
            "{addr}: {run:?}"
        );
    }
    assert!(!run.stderr.contains("lying"), "{run:?}");
}

/// `get -b` starts downloads in the background and the console goes on (`downloads` lists
/// them while they run); at the end of input the peer waits for them, then quits.
#[test]
fn background_downloads_run_at_once_and_the_end_of_input_waits_for_them() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("swarm-background");
    let a = tmp.sub("a");
    let one = common::pseudo_random(3 << 20, 71);
    let two = common::pseudo_random(2 << 20, 72);
    std::fs::write(a.join("one.bin"), &one).unwrap();
    std::fs::write(a.join("two.bin"), &two).unwrap();
    // Slow enough that both are still running when `downloads` runs.
    let mut holder = ServingPeer::start_with(&a, indexd.addr, &["--max-upload-rate", "2M"]);
    holder.wait_registered(2);
    let b = tmp.sub("b");
    let run = run_console(
        &b,
        indexd.addr,
        &[],
        Input::Pipe("get -b one.bin\nget -b two.bin\ndownloads\n"),
        LIMIT,
    );
    assert!(run.success, "{run:?}");
    assert!(
        run.stdout
            .contains("downloading one.bin (3145728 bytes) in the background"),
        "{run:?}"
    );
    assert!(run.stdout.contains("2 downloads running"), "{run:?}");
    assert!(run.stdout.contains("one.bin 3145728 bytes "), "{run:?}");
    assert!(run.stdout.contains("two.bin 2097152 bytes "), "{run:?}");
    assert!(
        run.stderr
            .contains("end of input: waiting for 2 downloads before quitting"),
        "{run:?}"
    );
    assert_eq!(run.stdout.matches("saved ").count(), 2, "{run:?}");
    assert!(std::fs::read(b.join("one.bin")).unwrap() == one);
    assert!(std::fs::read(b.join("two.bin")).unwrap() == two);
}
