//! Unicode end to end (issue 13, case 9): what people type finds names written otherwise, and
//! invisible format characters never reach a saved name or the screen unescaped.

use crate::common::{self, run_console, Indexd, Input, ServingPeer, TempDir};
use p2pshare::wire::FileHash;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn searches_fold_like_names_and_bidi_overrides_never_land() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("unicode");
    let (a, b) = (tmp.sub("a"), tmp.sub("b"));
    let spoof = "\u{202E}gpj.exe";
    let files = [
        ("straße.txt", b"strasse".to_vec()),
        ("İstanbul.jpg", b"istanbul".to_vec()),
        ("cafe\u{301}.mp3", b"cafe".to_vec()),
        ("café.flac", b"cafe precomposed".to_vec()),
        ("\u{FB01}le.txt", b"file".to_vec()),
        (spoof, b"spoof".to_vec()),
    ];
    for (name, bytes) in &files {
        std::fs::write(a.join(name), bytes).unwrap();
    }
    let mut holder = ServingPeer::start(&a, indexd.addr);
    holder.wait_registered(files.len());
    let spoof_hash = FileHash::of(b"spoof");
    let script =
        format!("search strasse\nsearch ISTANBUL\nsearch cafe\nsearch file\nget {spoof_hash}\n");
    let run = run_console(&b, indexd.addr, &[], Input::Pipe(&script), LIMIT);
    assert!(run.success, "{run:?}");
    for (name, _) in &files[..5] {
        assert!(run.stdout.contains(name), "search missed {name:?}: {run:?}");
    }
    // Saved without the override, and printed with it escaped: nothing on screen reads
    // `exe.jpg`.
    assert_eq!(std::fs::read(b.join("gpj.exe")).unwrap(), b"spoof");
    assert_eq!(common::visible_names(&b), vec!["gpj.exe".to_string()]);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(!all.contains('\u{202E}'), "{run:?}");
}
