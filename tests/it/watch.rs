//! Issue 15 part 1, the share is watched: files copied in, deleted, renamed and linked while
//! a real peer serves, against a real index. Every wait is for an event: the peer's debug
//! line when the index answers its register or unregister (`index holds N of our files`),
//! or its line about a moved file.

use crate::common::{self, run_console, Indexd, Input, ServingPeer, TempDir};
use p2pshare::wire::{FileHash, LookupKey, RequestBody, ResponseBody};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// What the index answers to a lookup of `key` from a client of its own.
fn lookup(index: std::net::SocketAddr, key: LookupKey) -> ResponseBody {
    let (mut client, _) = common::Client::hello(index, 0);
    client.call(RequestBody::Lookup { key, after: None })
}

fn holds(answer: &ResponseBody, hash: FileHash) -> bool {
    matches!(answer, ResponseBody::Holders { files, .. } if files.iter().any(|f| f.hash == hash))
}

/// Starts a serving peer on an empty share and waits until its start-up scan is done (so
/// what the test writes next is found by watching, not by that scan).
fn serving_empty(share: &std::path::Path, index: std::net::SocketAddr) -> ServingPeer {
    let mut peer = ServingPeer::start(share, index);
    peer.wait_line("its start-up scan", common::REGISTER_LIMIT, |l| {
        l.contains("sharing 0 files")
    });
    peer
}

#[test]
fn a_file_copied_in_is_found_by_another_peer_and_a_deleted_one_disappears() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("watch-copy");
    let (share, other) = (tmp.sub("a"), tmp.sub("b"));
    let mut holder = serving_empty(&share, indexd.addr);

    // Written in several pieces (one file, debounced into one hash) into a new directory.
    let bytes = common::pseudo_random(1 << 20, 51);
    let hash = FileHash::of(&bytes);
    std::fs::create_dir_all(share.join("new dir")).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(share.join("new dir/Watched Song.flac")).unwrap();
        for piece in bytes.chunks(64 * 1024) {
            f.write_all(piece).unwrap();
        }
    }
    let hashed = format!(
        "hashed {}",
        share.join("new dir/Watched Song.flac").display()
    );
    holder.wait_line("the hash of the new file", LIMIT, |l| l.contains(&hashed));
    holder.wait_registered(1);
    let run = run_console(
        &other,
        indexd.addr,
        &[],
        Input::Pipe("search watched song\nget Watched Song.flac\n"),
        LIMIT,
    );
    assert!(
        run.stdout
            .contains(&format!("{hash} 1048576 1 Watched Song.flac")),
        "{run:?}"
    );
    assert!(run.stdout.contains("saved "), "{run:?}");
    assert!(std::fs::read(other.join("Watched Song.flac")).unwrap() == bytes);

    std::fs::remove_file(share.join("new dir/Watched Song.flac")).unwrap();
    holder.wait_registered(0);
    let answer = lookup(indexd.addr, LookupKey::Hash(hash));
    assert!(matches!(answer, ResponseBody::Error { .. }), "{answer:?}");
    // Hashed once: the writes of one file were one change.
    let said = holder.lines_containing(&hashed);
    assert_eq!(said, 1, "hashed {said} times");
}

#[test]
fn a_renamed_file_keeps_its_hash_and_is_not_read_again() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("watch-rename");
    let share = tmp.sub("a");
    let bytes = common::pseudo_random(300_000, 52);
    let hash = FileHash::of(&bytes);
    std::fs::write(share.join("draft.txt"), &bytes).unwrap();
    let mut holder = ServingPeer::start(&share, indexd.addr);
    holder.wait_registered(1);

    std::fs::create_dir_all(share.join("final")).unwrap();
    std::fs::rename(share.join("draft.txt"), share.join("final/report.txt")).unwrap();
    let moved = share.join("final/report.txt");
    holder.wait_line("the move", LIMIT, |l| l.contains("not read again"));
    // Withdrawn under its old name, then registered under the new one.
    holder.wait_registered(1);
    assert!(
        !holder.has_said(&format!("hashed {}", moved.display())),
        "the moved file was read again"
    );
    let by_new = lookup(indexd.addr, LookupKey::Name("report.txt".into()));
    assert!(holds(&by_new, hash), "{by_new:?}");
    let by_old = lookup(indexd.addr, LookupKey::Name("draft.txt".into()));
    assert!(matches!(by_old, ResponseBody::Error { .. }), "{by_old:?}");
}

#[test]
fn a_link_dropped_into_the_share_is_never_registered() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("watch-link");
    let (share, outside) = (tmp.sub("a"), tmp.sub("outside"));
    let secret = common::pseudo_random(10_000, 53);
    std::fs::write(outside.join("secret.key"), &secret).unwrap();
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("dir/inner.key"), b"inner secret").unwrap();
    let mut holder = serving_empty(&share, indexd.addr);

    std::os::unix::fs::symlink(outside.join("secret.key"), share.join("song.flac")).unwrap();
    std::os::unix::fs::symlink(outside.join("dir"), share.join("linked dir")).unwrap();
    // A real file after the links: once the index holds it, the links were looked at.
    std::fs::write(share.join("marker.txt"), b"marker").unwrap();
    holder.wait_registered(1);
    for hash in [FileHash::of(&secret), FileHash::of(b"inner secret")] {
        let answer = lookup(indexd.addr, LookupKey::Hash(hash));
        assert!(matches!(answer, ResponseBody::Error { .. }), "{answer:?}");
    }
    let marker = lookup(indexd.addr, LookupKey::Hash(FileHash::of(b"marker")));
    assert!(holds(&marker, FileHash::of(b"marker")), "{marker:?}");
}

#[test]
fn an_unregistered_file_stays_withdrawn_across_changes_and_restarts_until_registered() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("watch-withdrawn");
    let share = tmp.sub("a");
    std::fs::write(share.join("private.txt"), b"not for sharing").unwrap();
    std::fs::write(share.join("public.txt"), b"for everyone").unwrap();
    let private = FileHash::of(b"not for sharing");

    let run = run_console(
        &share,
        indexd.addr,
        &[],
        Input::Pipe("unregister private.txt\n"),
        LIMIT,
    );
    assert!(run.stdout.contains("unregistered "), "{run:?}");

    // A restart: only the public file is registered.
    let mut holder = ServingPeer::start(&share, indexd.addr);
    holder.wait_registered(1);
    assert!(!holds(
        &lookup(indexd.addr, LookupKey::Hash(private)),
        private
    ));
    // A change to the withdrawn file (and a copy of it under another name) is not shared.
    std::fs::write(share.join("copy of private.txt"), b"not for sharing").unwrap();
    std::fs::write(share.join("private.txt"), b"not for sharing, edited").unwrap();
    std::fs::write(share.join("later.txt"), b"a later file").unwrap();
    holder.wait_registered(2);
    for key in [
        LookupKey::Hash(private),
        LookupKey::Hash(FileHash::of(b"not for sharing, edited")),
    ] {
        let answer = lookup(indexd.addr, key.clone());
        assert!(matches!(answer, ResponseBody::Error { .. }), "{answer:?}");
    }
    holder.kill();

    // `register PATH` shares it again, and that too is remembered.
    let path = share.join("private.txt");
    let run = run_console(
        &share,
        indexd.addr,
        &[],
        Input::Pipe(&format!("register {}\n", path.display())),
        LIMIT,
    );
    assert!(run.stdout.contains("sharing "), "{run:?}");
    let mut holder = ServingPeer::start(&share, indexd.addr);
    holder.wait_registered(3);
    let edited = FileHash::of(b"not for sharing, edited");
    assert!(holds(&lookup(indexd.addr, LookupKey::Hash(edited)), edited));
}
