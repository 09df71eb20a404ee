//! Holders that follow the protocol and still try to hand out what they should not: each case
//! re-enacted against the real binaries.

use crate::common::{self, Indexd, TempDir};
use p2pshare::wire::{FileHash, LookupKey, RequestBody, ResponseBody};

/// A file of the share swapped for a link to a file outside it, after it was registered: the
/// link's target is never served, re-hashed or registered, by name or by hash.
#[test]
fn a_link_swapped_in_after_registering_is_never_served() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("link-swap");
    let (share, downloads, outside) = (tmp.sub("a"), tmp.sub("b"), tmp.sub("outside"));
    let song = common::pseudo_random(40_000, 31);
    // The same size, so that size alone cannot give the swap away.
    let secret = common::pseudo_random(40_000, 32);
    std::fs::write(share.join("song.flac"), &song).unwrap();
    std::fs::write(outside.join("secret.key"), &secret).unwrap();
    let (song_hash, secret_hash) = (FileHash::of(&song), FileHash::of(&secret));

    let mut holder = common::ServingPeer::start(&share, indexd.addr);
    holder.wait_registered(1);

    std::fs::remove_file(share.join("song.flac")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.key"), share.join("song.flac")).unwrap();
    let run = common::get(&downloads, indexd.addr, song_hash);
    assert!(!run.stdout.contains("saved "), "{run:?}");
    // Refused, not served: the secret's bytes never left the holder (with the same size and,
    // often, the same coarse mtime, a size-and-mtime check would have sent them, and only the
    // downloader's hash check would have caught it).
    assert!(run.stderr.contains("a symbolic link"), "{run:?}");
    // The refusal made the holder withdraw the file and hash the path again. Until it says
    // why it does not share it, watch the index too: a holder that follows the link registers
    // the secret under the old name (two sources of events, hence a bounded poll).
    let (mut client, _) = common::Client::hello(indexd.addr, 0);
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    loop {
        if holder.has_said("symbolic link") {
            break;
        }
        let by_name = client.call(RequestBody::Lookup {
            key: LookupKey::Name("song.flac".into()),
            after: None,
        });
        if let ResponseBody::Holders { files, .. } = &by_name {
            assert!(
                files.iter().all(|f| f.hash != secret_hash),
                "the link's target was registered: {by_name:?}"
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never refused the link"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Neither the link's target nor the old name is offered, and a get by name fails.
    for key in [
        LookupKey::Hash(secret_hash),
        LookupKey::Name("song.flac".into()),
    ] {
        let answer = client.call(RequestBody::Lookup {
            key: key.clone(),
            after: None,
        });
        assert!(
            matches!(answer, ResponseBody::Error { .. }),
            "{key:?}: {answer:?}"
        );
    }
    let run = common::get(&downloads, indexd.addr, "song.flac");
    assert!(!run.stdout.contains("saved "), "{run:?}");
    let landed = common::visible_names(&downloads);
    assert!(landed.is_empty(), "{landed:?}");
}
