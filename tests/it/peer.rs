//! End-to-end tests: the real `indexd` and several real `peer` processes on loopback.

use crate::common::{
    self, run_console, run_console_at, Fake, FakeHolder, Indexd, Input, ServingPeer, TempDir,
};
use p2pshare::wire::{FileEntry, FileHash};
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn write(dir: &Path, name: &str, bytes: &[u8]) -> FileHash {
    std::fs::write(dir.join(name), bytes).unwrap();
    FileHash::of(bytes)
}

#[test]
fn downloads_every_size_and_awkward_name_by_name_and_by_hash() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("sizes");
    let a = tmp.sub("a");
    let b = tmp.sub("b");
    let files: Vec<(String, Vec<u8>)> = vec![
        ("empty.bin".into(), vec![]),
        ("one byte".into(), vec![42]),
        ("page-1.bin".into(), common::pseudo_random(4095, 1)),
        ("page.bin".into(), common::pseudo_random(4096, 2)),
        ("page+1.bin".into(), common::pseudo_random(4097, 3)),
        ("big file.bin".into(), common::pseudo_random(24 << 20, 4)),
        ("ünïcødé 名前.txt".into(), b"unicode".to_vec()),
        ("cr\r\r\nlf.txt".into(), b"terminator in the name".to_vec()),
    ];
    let hashes: Vec<FileHash> = files.iter().map(|(n, c)| write(&a, n, c)).collect();
    let mut holder = ServingPeer::start(&a, indexd.addr);
    holder.wait_registered(hashes.len());
    // By name for most, by hash for the one whose name cannot be typed on a line, and by a
    // hash prefix for one more.
    let mut script = String::new();
    for (i, (name, _)) in files.iter().enumerate() {
        match i {
            7 => script.push_str(&format!("get {}\n", hashes[i])),
            2 => script.push_str(&format!("get {}\n", &hashes[i].to_hex()[..12])),
            _ => script.push_str(&format!("get {name}\n")),
        }
    }
    script.push_str("files\n");
    let run = run_console(&b, indexd.addr, &[], Input::Pipe(&script), LIMIT);
    assert!(run.success, "{run:?}");
    for (i, (name, bytes)) in files.iter().enumerate() {
        // Control characters are stripped from names before they touch the disk.
        let saved = name.replace(['\r', '\n'], "");
        let got = std::fs::read(b.join(&saved))
            .unwrap_or_else(|e| panic!("{saved:?} not downloaded ({e}): {run:?}"));
        assert!(got == *bytes, "{saved:?} differs");
        assert!(
            run.stdout.contains(&hashes[i].to_hex()),
            "files lists {saved:?}"
        );
    }
    assert_eq!(run.stdout.matches("saved ").count(), files.len(), "{run:?}");
    // No partial files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&b)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".p2pshare-part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn search_lookup_and_console_output_from_a_pipe_and_a_file() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("console");
    let a = tmp.sub("a");
    let b = tmp.sub("b");
    let h = write(&a, "Zebra_Crossing-Live 1999.flac", b"music");
    let mut holder = ServingPeer::start(&a, indexd.addr);
    holder.wait_registered(1);
    let script = "help\nsearch zeb cross\nlookup Zebra_Crossing-Live 1999.flac\nbogus command\nstatus\nquit\nsearch never runs\n";
    let run = run_console(&b, indexd.addr, &[], Input::Pipe(script), LIMIT);
    // The bogus command failed: a script can tell from the exit status.
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stdout.contains("commands:"), "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("{h} 5 1 Zebra_Crossing-Live 1999.flac\n1 result")),
        "{run:?}"
    );
    assert!(run.stdout.contains(&format!(
        "{h} 5 Zebra_Crossing-Live 1999.flac\n  1 127.0.0.1:"
    )));
    assert!(run.stderr.contains("unknown command"), "{run:?}");
    assert!(run.stdout.contains("index: connected"), "{run:?}");
    assert_eq!(
        run.stdout.matches("result").count(),
        1,
        "quit stops the script: {run:?}"
    );

    // The same from a regular file as stdin (epoll cannot watch one).
    let cmds = tmp.path().join("commands.txt");
    std::fs::write(&cmds, "search zebra\nget Zebra_Crossing-Live 1999.flac\n").unwrap();
    let run = run_console(&b, indexd.addr, &[], Input::File(&cmds), LIMIT);
    assert!(run.success, "{run:?}");
    assert!(run.stdout.contains("1 result"), "{run:?}");
    assert_eq!(
        std::fs::read(b.join("Zebra_Crossing-Live 1999.flac")).unwrap(),
        b"music"
    );
    // Getting it again: the identical file is already there.
    let run = run_console(
        &tmp.sub("c"),
        indexd.addr,
        &["--downloads", b.to_str().unwrap()],
        Input::Pipe("get Zebra_Crossing-Live 1999.flac\n"),
        LIMIT,
    );
    assert!(run.stdout.contains("already have"), "{run:?}");
}

#[test]
fn concurrent_downloads_from_one_holder() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("concurrent");
    let a = tmp.sub("a");
    let bytes = common::pseudo_random(16 << 20, 9);
    let h = write(&a, "shared.bin", &bytes);
    let mut holder = ServingPeer::start(&a, indexd.addr);
    holder.wait_registered(1);
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let dir = tmp.sub(&format!("d{i}"));
            let addr = indexd.addr;
            std::thread::spawn(move || {
                let run = run_console(&dir, addr, &[], Input::Pipe(&format!("get {h}\n")), LIMIT);
                (dir, run)
            })
        })
        .collect();
    for t in runs {
        let (dir, run) = t.join().unwrap();
        assert!(run.success, "{run:?}");
        assert!(std::fs::read(dir.join("shared.bin")).unwrap() == bytes);
    }
}

fn fallback_case(how: Fake, tag: &str, limit: Duration) {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new(tag);
    let a = tmp.sub("a");
    let b = tmp.sub("b");
    let bytes = common::pseudo_random(3 << 20, 11);
    let h = write(&a, "real.bin", &bytes);
    let entry = FileEntry {
        hash: h,
        size: bytes.len() as u64,
        name: "real.bin".into(),
    };
    let fake = FakeHolder::start(indexd.addr, entry, bytes.clone(), how);
    let mut real = ServingPeer::start(&a, indexd.addr);
    real.wait_registered(1);
    let n = common::holder_number(indexd.addr, h, fake.addr);
    let what = format!("{how:?}");
    common::get_from_holder_saves_only(&b, indexd.addr, h, n, limit, "real.bin", &bytes, &what);
}

#[test]
fn a_holder_dying_mid_transfer_is_replaced_by_the_next() {
    fallback_case(Fake::DiesHalfway, "dies", LIMIT);
}

#[test]
fn wrong_bytes_are_rejected_and_never_kept() {
    fallback_case(Fake::WrongBytes, "wrong", LIMIT);
}

#[test]
fn extra_bytes_after_the_file_are_ignored() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("toomany");
    let b = tmp.sub("b");
    let bytes = common::pseudo_random(100_000, 5);
    let h = FileHash::of(&bytes);
    let entry = FileEntry {
        hash: h,
        size: bytes.len() as u64,
        name: "x.bin".into(),
    };
    let _fake = FakeHolder::start(indexd.addr, entry, bytes.clone(), Fake::TooMany);
    let run = common::get(&b, indexd.addr, h);
    assert!(run.stdout.contains("saved "), "{run:?}");
    assert!(std::fs::read(b.join("x.bin")).unwrap() == bytes);
}

#[test]
fn a_hanging_holder_times_out_and_the_next_one_serves() {
    fallback_case(Fake::Hangs, "hangs", Duration::from_secs(90));
}

#[test]
fn hostile_names_never_escape_the_downloads_dir() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("hostile");
    let b = tmp.sub("b");
    // (name in the index, a name a holder might wish for). The index refuses names with '/';
    // a holder's answer carries no name at all (protocol 4), so the index's name is the one
    // to make safe.
    let cases = [
        ("escape1.txt", "../../escape.txt"),
        ("passwd", "/etc/passwd"),
        (".bashrc", ".bashrc"),
        ("..", ".."),
    ];
    for (i, (index_name, _)) in cases.iter().enumerate() {
        let bytes = format!("payload {i}").into_bytes();
        let h = FileHash::of(&bytes);
        let entry = FileEntry {
            hash: h,
            size: bytes.len() as u64,
            name: index_name.to_string(),
        };
        let _fake = FakeHolder::start(indexd.addr, entry, bytes.clone(), Fake::Honest);
        let run = common::get(&b, indexd.addr, h);
        assert!(run.stdout.contains("saved "), "{index_name}: {run:?}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&b)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".p2pshare-cache")
        .collect();
    names.sort();
    assert_eq!(names, vec!["bashrc", "download", "escape1.txt", "passwd"]);
    assert!(!tmp.path().join("escape.txt").exists());
}

#[test]
fn a_partial_file_without_its_resume_record_is_never_trusted() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("resume");
    let a = tmp.sub("a");
    let b = tmp.sub("b");
    let bytes = common::pseudo_random(2 << 20, 13);
    let h = write(&a, "resume.bin", &bytes);
    // Half a file of wrong bytes from somewhere, with no record proving any of it.
    std::fs::write(
        b.join(format!(".{h}.p2pshare-part")),
        common::pseudo_random(1 << 20, 14),
    )
    .unwrap();
    let mut holder = ServingPeer::start(&a, indexd.addr);
    holder.wait_registered(1);
    let run = common::get(&b, indexd.addr, h);
    assert!(!run.stderr.contains("resuming"), "{run:?}");
    assert!(
        run.stderr.contains("2097152 bytes fetched from 1 holder"),
        "{run:?}"
    );
    assert!(std::fs::read(b.join("resume.bin")).unwrap() == bytes);
}

#[test]
fn a_file_modified_after_registering_is_not_served_as_the_old_one() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("modified");
    let a = tmp.sub("a");
    let b = tmp.sub("b");
    let old = common::pseudo_random(50_000, 21);
    let h = write(&a, "doc.txt", &old);
    // Not watching: this is the file server's own check, for a change the watcher has not
    // caught up with.
    let mut holder = ServingPeer::start_with(&a, indexd.addr, &["--no-watch"]);
    holder.wait_registered(1);
    // Change it on disk behind the peer's back.
    let new = common::pseudo_random(50_001, 22);
    std::fs::write(a.join("doc.txt"), &new).unwrap();
    let run = common::get(&b, indexd.addr, h);
    assert!(!run.stdout.contains("saved "), "{run:?}");
    assert!(run.stderr.contains("changed"), "{run:?}");
    assert!(!b.join("doc.txt").exists());
    // The holder re-hashed it and now offers the new bytes under the new hash: its next
    // register answer (the old hash withdrawn before it) has the index holding one file again.
    holder.wait_registered(1);
    let run = run_console(&b, indexd.addr, &[], Input::Pipe("get doc.txt\n"), LIMIT);
    assert!(run.stdout.contains("saved "), "{run:?}");
    assert!(std::fs::read(b.join("doc.txt")).unwrap() == new);
}

#[test]
fn peers_re_register_after_indexd_restarts() {
    // indexd must come back on the same port; find a free one.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut indexd = Indexd::start_on(&listen, &[]);
    let tmp = TempDir::new("restart");
    let a = tmp.sub("a");
    write(&a, "survivor.txt", b"still here");
    let mut holder = ServingPeer::start(&a, indexd.addr);
    holder.wait_registered(1);
    indexd.child.kill().unwrap();
    indexd.child.wait().unwrap();
    let indexd = Indexd::start_on(&listen, &[]);
    // The peer notices, backs off, reconnects and registers again by itself.
    holder.wait_registered(1);
    let run = run_console(
        &tmp.sub("b"),
        indexd.addr,
        &[],
        Input::Pipe("search survivor\n"),
        LIMIT,
    );
    assert!(run.stdout.contains("survivor.txt\n1 result"), "{run:?}");
}

#[test]
fn an_index_given_by_host_name_is_looked_up_and_used() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("by-name");
    let a = tmp.sub("a");
    write(
        &a,
        "reached by name.txt",
        b"the index was found through localhost",
    );
    // A host name is looked up on a thread of its own (the reactor never waits on DNS), and
    // each of its addresses is tried in turn (localhost may give ::1 first).
    let index = format!("localhost:{}", indexd.addr.port());
    let run = run_console_at(
        &a,
        &index,
        &[],
        Input::Pipe("search reached\nstatus\n"),
        LIMIT,
    );
    assert!(run.success, "{run:?}");
    assert!(run.stdout.contains("1 result"), "{run:?}");
    assert!(
        run.stdout.contains(&format!("index: connected to {index}")),
        "{run:?}"
    );
}

/// An index stopped with SIGSTOP (it accepts connections, reads nothing, never closes), and
/// continued when dropped, before the `Indexd` guard kills it.
struct Stopped<'a>(&'a Indexd);

impl<'a> Stopped<'a> {
    fn stop(indexd: &'a Indexd) -> Stopped<'a> {
        // SAFETY: kill(2) on our own child's pid, which is not reaped while `indexd` lives.
        assert_eq!(
            unsafe { libc::kill(indexd.child.id() as i32, libc::SIGSTOP) },
            0
        );
        Stopped(indexd)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        // SAFETY: as in `stop`.
        unsafe { libc::kill(self.0.child.id() as i32, libc::SIGCONT) };
    }
}

#[test]
fn a_stopped_index_is_left_for_the_next_one_which_gets_the_share() {
    let (a, b) = (Indexd::start(&[]), Indexd::start(&[]));
    let tmp = TempDir::new("stopped-index");
    let share = tmp.sub("share");
    std::fs::create_dir_all(&share).unwrap();
    let hash = write(&share, "song.bin", b"la la la");
    let both = format!("{},{}", a.addr, b.addr);
    let mut args = common::peer_args_to(&share, &both);
    args.extend(["--index-timeout-ms", "500", "--web", "127.0.0.1:0"].map(Into::into));
    let mut peer = ServingPeer::start_args(args);
    let line = peer.wait_line("its web page", LIMIT, |l| l.contains("web page on"));
    let url = line
        .rsplit(' ')
        .next()
        .unwrap()
        .strip_prefix("http://")
        .unwrap();
    let (web, token) = url.split_once("/#token=").unwrap();
    peer.wait_registered(1);
    assert_eq!(common::holder_of(a.addr, hash), peer.addr);

    // A stopped: the page's search is never answered, and the session moves on to B.
    let stopped = Stopped::stop(&a);
    let body = r#"{"query":"song"}"#;
    let mut page = std::net::TcpStream::connect(web).unwrap();
    write!(
        page,
        "POST /api/search HTTP/1.1\r\nHost: {web}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    peer.wait_line("the session given up", LIMIT, |l| {
        l.contains("no answer from the index in 0.5 s")
    });
    peer.wait_registered(1);
    assert_eq!(common::holder_of(b.addr, hash), peer.addr);

    // A peer that starts while A is stopped: its Hello is never answered; B gets it too.
    let other = tmp.sub("other");
    std::fs::create_dir_all(&other).unwrap();
    write(&other, "song.bin", b"la la la");
    let mut args = common::peer_args_to(&other, &both);
    args.extend(["--index-timeout-ms", "500"].map(Into::into));
    let mut late = ServingPeer::start_args(args);
    late.wait_registered(1);
    assert!(late.has_said("no answer from the index in 0.5 s"));
    drop(stopped);
}
