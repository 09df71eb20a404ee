//! Holders that follow the protocol and still try to hand out what they should not: each case
//! re-enacted against the real binaries.

use crate::common::{self, Indexd, ServingPeer, TempDir, REGISTER_LIMIT};
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

    // Not watching: this is the file server's own check, for a swap the watcher has not
    // caught up with (the watcher would withdraw the file first: see `watch::`).
    let mut holder = common::ServingPeer::start_with(&share, indexd.addr, &["--no-watch"]);
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

/// Registers `entries` from a session of its own (announcing a download port nothing listens
/// on), and keeps the session open.
fn register_from_session(
    index: std::net::SocketAddr,
    entries: Vec<p2pshare::wire::FileEntry>,
) -> common::Client {
    let (mut session, _) = common::Client::hello(index, 9);
    let answer = session.call(RequestBody::Register { files: entries });
    assert!(
        matches!(answer, ResponseBody::Registered { .. }),
        "{answer:?}"
    );
    session
}

/// Case 1 of issue 13: a session registers a holder's hash first, with a wrong size. The
/// holder is not refused, a `get` by hash still saves the real file (the squatter's claim,
/// the smaller size, is tried first and fails), and the file stays indexed when the squatter
/// leaves.
#[test]
fn a_hash_squatted_with_a_wrong_size_still_reaches_its_real_holder() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("squat");
    let (share, downloads) = (tmp.sub("a"), tmp.sub("b"));
    let song = common::pseudo_random(30_000, 41);
    let hash = FileHash::of(&song);
    std::fs::write(share.join("song.flac"), &song).unwrap();
    let squatter = register_from_session(
        indexd.addr,
        vec![p2pshare::wire::FileEntry {
            hash,
            size: song.len() as u64 - 1,
            name: "song.flac".into(),
        }],
    );
    let mut holder = common::ServingPeer::start(&share, indexd.addr);
    holder.wait_registered(1);
    assert!(!holder.has_said("refused"), "the holder was refused");

    let run = common::get(&downloads, indexd.addr, hash);
    assert!(run.stdout.contains("saved "), "{run:?}");
    assert!(
        run.stderr
            .contains("trying the holders that claim 30000 bytes"),
        "{run:?}"
    );
    assert_eq!(std::fs::read(downloads.join("song.flac")).unwrap(), song);

    squatter.leave();
    let (mut client, _) = common::Client::hello(indexd.addr, 0);
    let answer = client.call(RequestBody::Lookup {
        key: LookupKey::Hash(hash),
        after: None,
    });
    let ResponseBody::Holders { files, .. } = answer else {
        panic!("the file left the index with the squatter: {answer:?}");
    };
    let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
    assert_eq!(sizes, [30_000]);
}

/// Case 2 of issue 13 (the index's half): two sessions of one host register a holder's hash
/// with its right size under `!! setup.exe` and thousands of other names. The hash keeps its
/// holder's name in lookups and downloads, and each session keeps at most 16 names of it.
#[test]
fn other_sessions_cannot_rename_a_holders_file() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("hijack");
    let (share, downloads) = (tmp.sub("a"), tmp.sub("b"));
    let song = common::pseudo_random(20_000, 42);
    let hash = FileHash::of(&song);
    std::fs::write(share.join("song.flac"), &song).unwrap();
    let mut holder = common::ServingPeer::start(&share, indexd.addr);
    holder.wait_registered(1);
    let names = |n: usize| -> Vec<p2pshare::wire::FileEntry> {
        std::iter::once("!! setup.exe".to_string())
            .chain((0..n).map(|i| format!("song {i}.flac")))
            .map(|name| p2pshare::wire::FileEntry {
                hash,
                size: song.len() as u64,
                name,
            })
            .collect()
    };
    let mut attackers = Vec::new();
    for _ in 0..2 {
        let (mut session, _) = common::Client::hello(indexd.addr, 9);
        let answer = session.call(RequestBody::Register {
            files: names(5_000),
        });
        let ResponseBody::Registered {
            added, rejected, ..
        } = answer
        else {
            panic!("{answer:?}");
        };
        assert_eq!((added, rejected), (16, 4_985));
        attackers.push(session);
    }
    let (mut client, _) = common::Client::hello(indexd.addr, 0);
    let answer = client.call(RequestBody::Lookup {
        key: LookupKey::Hash(hash),
        after: None,
    });
    let ResponseBody::Holders { files, .. } = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(files[0].name, "song.flac");
    let run = common::get(&downloads, indexd.addr, hash);
    assert!(run.stdout.contains("saved "), "{run:?}");
    assert_eq!(common::visible_names(&downloads), ["song.flac"]);
    // A search for the song finds the holder's name among the attackers' at most 32.
    let answer = client.call(RequestBody::Search {
        query: "song".into(),
        limit: 100,
        filter: Default::default(),
        after: None,
    });
    let ResponseBody::SearchResults { hits, .. } = answer else {
        panic!("{answer:?}");
    };
    assert!(hits.len() <= 33, "{}", hits.len());
    assert!(hits.iter().any(|h| h.name == "song.flac"), "{hits:?}");
    for a in attackers {
        a.leave();
    }
}

/// Case 3 of issue 13: one host's sessions share one allowance of holdings
/// (`--max-holdings-per-ip`), so many sessions of one address cannot fill the index, while
/// another host registers as before.
#[test]
fn one_hosts_sessions_share_one_allowance_of_holdings() {
    let indexd = Indexd::start(&["--max-holdings-per-ip", "50"]);
    let files = |tag: &str, n: usize| -> Vec<p2pshare::wire::FileEntry> {
        (0..n)
            .map(|i| p2pshare::wire::FileEntry {
                hash: FileHash::of(format!("{tag} {i}").as_bytes()),
                size: 1,
                name: format!("{tag} {i}.txt"),
            })
            .collect()
    };
    let register = |session: &mut common::Client, entries| match session
        .call(RequestBody::Register { files: entries })
    {
        ResponseBody::Registered {
            added, rejected, ..
        } => (added, rejected),
        other => panic!("{other:?}"),
    };
    let here: std::net::IpAddr = [127, 0, 0, 1].into();
    let other: std::net::IpAddr = [127, 0, 0, 2].into();
    let mut sessions: Vec<common::Client> = Vec::new();
    for (n, tag) in ["a", "b", "c"].into_iter().enumerate() {
        let (mut s, _) = common::Client::hello_from(indexd.addr, here, 9);
        let want = if n == 0 {
            (40, 0)
        } else if n == 1 {
            (10, 30)
        } else {
            (0, 40)
        };
        assert_eq!(register(&mut s, files(tag, 40)), want, "session {tag}");
        sessions.push(s);
    }
    let (mut elsewhere, _) = common::Client::hello_from(indexd.addr, other, 9);
    assert_eq!(register(&mut elsewhere, files("d", 40)), (40, 0));
    // A session that leaves gives its room back to its host.
    sessions.remove(0).leave();
    let (mut again, _) = common::Client::hello_from(indexd.addr, here, 9);
    // (The room comes back when indexd has read the close: a bounded retry waits for it.)
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    loop {
        let (added, _) = register(&mut again, files("e", 40));
        if added == 40 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the room never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for s in sessions.into_iter().chain([elsewhere, again]) {
        s.leave();
    }
}

/// Issue 13, case 8: when the index goes away, its peers must not all come back at the same
/// instant. Twenty real peers hold sessions with a stand-in index (a bare listener: the peers
/// only need to connect); all twenty connections are closed at once, as a crashing index
/// does, and the times of their next connects are taken. With the old fixed backoff (250 ms,
/// no jitter) they came back within a few milliseconds of each other; with full jitter each
/// first retry is drawn from the whole first step, so they spread over it.
#[test]
fn peers_losing_the_index_together_come_back_spread_by_full_jitter() {
    use p2pshare::peer::session::BACKOFF_MIN;
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    const PEERS: usize = 20;
    let index = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = index.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in index.incoming() {
            let Ok(stream) = stream else { return };
            if tx.send((Instant::now(), stream)).is_err() {
                return;
            }
        }
    });
    let tmp = TempDir::new("storm");
    let _peers: Vec<ServingPeer> = (0..PEERS)
        .map(|i| ServingPeer::start(&tmp.sub(&format!("p{i}")), addr))
        .collect();
    let accept = || {
        rx.recv_timeout(REGISTER_LIMIT)
            .expect("a peer's connect to the index")
    };
    let first: Vec<_> = (0..PEERS).map(|_| accept()).collect();
    drop(first);
    let lost_at = Instant::now();
    // Kept open, so that each peer comes back exactly once.
    let again: Vec<_> = (0..PEERS).map(|_| accept()).collect();
    let mut back: Vec<Duration> = again
        .iter()
        .map(|(at, _)| at.saturating_duration_since(lost_at))
        .collect();
    back.sort();
    let spread = back[PEERS - 1] - back[0];
    // Twenty draws from a uniform 250 ms all fall within 62.5 ms of each other with a
    // chance of 20 * (1/4)^19, about 7e-11.
    assert!(
        spread >= BACKOFF_MIN / 4,
        "the peers came back within {spread:?} of each other: {back:?}"
    );
}
