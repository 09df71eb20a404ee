//! Firewalled holders (issue 15 part 2) with the real binaries: indexd's connect-back tells a
//! peer whether its file server can be reached, lookups flag the holders that cannot, and a
//! downloader gets their files through pushes relayed by indexd (the holder connects out).

use crate::common::{self, output_within, Client, Indexd, ServingPeer, TempDir, IO_TIMEOUT};
use p2pshare::wire::{ErrorCode, FileEntry, FileHash, LookupKey, RequestBody, ResponseBody};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A serving holder of `bytes` as `name`, its file server on `listen` (`none`, or an
/// address), registered with the index.
fn holder(dir: &Path, indexd: &Indexd, name: &str, bytes: &[u8], listen: &str) -> ServingPeer {
    std::fs::write(dir.join(name), bytes).unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "--share".into(),
        dir.as_os_str().to_owned(),
        "--index".into(),
        indexd.addr.to_string().into(),
        "--listen".into(),
        listen.into(),
    ];
    let mut peer = ServingPeer::start_args(args);
    peer.wait_registered(1);
    peer
}

/// Runs a console peer (file server on `listen`) whose only command is `get HASH`.
fn get(dir: &Path, indexd: &Indexd, listen: &str, hash: FileHash) -> (String, String, i32) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(["--share".as_ref(), dir.as_os_str()])
        .args(["--index", &indexd.addr.to_string(), "--listen", listen])
        .args(["--log", "warn,peer=info"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn peer");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("get {hash}\n").as_bytes()).unwrap();
    drop(stdin);
    let out = output_within(child, LIMIT).unwrap_or_else(|out| {
        panic!(
            "the downloader did not finish: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// The lookup of `hash` as a fresh client sees it: the holders and those flagged firewalled.
fn lookup(indexd: &Indexd, hash: FileHash) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let (mut c, _) = Client::hello(indexd.addr, 0);
    match c.call(RequestBody::Lookup {
        key: LookupKey::Hash(hash),
        after: None,
    }) {
        ResponseBody::Holders {
            files, firewalled, ..
        } => (files[0].holders.clone(), firewalled),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_holder_without_a_file_server_serves_through_a_push() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("push-none");
    // Several groups, so that ranges are asked and verified over the pushed connection.
    let bytes = common::pseudo_random(300_000, 15);
    let hash = FileHash::of(&bytes);
    let mut h = holder(&tmp.sub("h"), &indexd, "firewalled.bin", &bytes, "none");
    let (holders, firewalled) = lookup(&indexd, hash);
    assert_eq!(holders.len(), 1);
    assert_eq!(holders[0].port(), 0, "it serves no port");
    assert_eq!(firewalled, holders, "flagged firewalled");
    let b = tmp.sub("b");
    let (stdout, stderr, code) = get(&b, &indexd, "127.0.0.1:0", hash);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("is firewalled: asking it to connect to us"),
        "{stderr}"
    );
    let got = std::fs::read(b.join("firewalled.bin")).unwrap();
    assert_eq!(FileHash::of(&got), hash);
    assert!(stdout.contains("saved "), "{stdout}");
    h.wait_line("the push", IO_TIMEOUT, |l| l.contains("pushing "));
}

#[test]
fn a_holder_whose_announced_port_nothing_listens_on_is_flagged_and_pushes() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("push-closed-port");
    let bytes = common::pseudo_random(70_000, 16);
    let hash = FileHash::of(&bytes);
    // Its file server listens on 127.0.0.2 while the index sees it at 127.0.0.1: the
    // connect-back to 127.0.0.1:PORT finds nothing listening (as behind a NAT).
    let mut h = holder(&tmp.sub("h"), &indexd, "natted.bin", &bytes, "127.0.0.2:0");
    let outcome = "could not reach our file server";
    if !h.has_said(outcome) {
        h.wait_line("the probe's outcome", IO_TIMEOUT, |l| l.contains(outcome));
    }
    let (holders, firewalled) = lookup(&indexd, hash);
    assert_eq!(holders[0].port(), h.addr.port());
    assert_eq!(firewalled, holders);
    let b = tmp.sub("b");
    let (stdout, stderr, code) = get(&b, &indexd, "127.0.0.1:0", hash);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // Pushed at once, never tried directly.
    assert!(stderr.contains("asking it to connect to us"), "{stderr}");
    assert!(!stderr.contains("connection refused"), "{stderr}");
    assert_eq!(std::fs::read(b.join("natted.bin")).unwrap(), bytes);
}

#[test]
fn when_both_sides_are_firewalled_the_downloader_says_so_at_once() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("push-both");
    let bytes = b"nobody can connect to anybody".to_vec();
    let hash = FileHash::of(&bytes);
    let h = holder(&tmp.sub("h"), &indexd, "stuck.txt", &bytes, "none");
    let b = tmp.sub("b");
    let (stdout, stderr, code) = get(&b, &indexd, "none", hash);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let want = format!("{} is firewalled and so are we: cannot download from it", {
        let (holders, _) = lookup(&indexd, hash);
        holders[0]
    });
    assert!(stderr.contains(&want), "{stderr}");
    // Said, not timed out: no holder was waited for.
    assert!(!stderr.contains("nothing received"), "{stderr}");
    assert!(!b.join("stuck.txt").exists());
    drop(h);
}

/// A raw session that serves no port and takes pushes, holding one file.
fn push_taker(indexd: &Indexd, hash: FileHash) -> (Client, SocketAddr) {
    let (mut c, observed) = Client::hello(indexd.addr, 0);
    assert_eq!(
        c.call(RequestBody::Reachability),
        ResponseBody::Reachability { reachable: false }
    );
    let files = vec![FileEntry {
        hash,
        size: 1,
        name: "x".into(),
    }];
    assert!(matches!(
        c.call(RequestBody::Register { files }),
        ResponseBody::Registered { added: 1, .. }
    ));
    (c, observed)
}

#[test]
fn a_push_flood_is_rate_limited_and_a_push_goes_only_to_the_requesters_own_address() {
    let indexd = Indexd::start(&[]);
    let hash = FileHash::of(b"y");
    let (mut taker, taker_addr) = push_taker(&indexd, hash);
    // The requester comes from 127.0.0.3 announcing port 4321 (it never asks to be probed).
    let (mut asker, observed) = Client::hello_from(indexd.addr, "127.0.0.3".parse().unwrap(), 4321);
    assert_eq!(observed, "127.0.0.3:4321".parse().unwrap());
    let mut relayed = 0;
    let mut limited = 0;
    for nonce in 0..60 {
        match asker.call(RequestBody::Push {
            hash,
            holder: taker_addr,
            nonce,
        }) {
            ResponseBody::PushRelayed => relayed += 1,
            ResponseBody::RateLimited { banned: false, .. } => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        relayed > 0 && limited > 0,
        "{relayed} relayed, {limited} refused"
    );
    assert!(relayed < 60);
    // Every relayed push tells the holder to connect to the requester's own address, with
    // the nonce it gave: nothing in a push names another target.
    for _ in 0..relayed {
        let notice = taker.recv().expect("a push notice");
        assert_eq!(notice.id, 0);
        let ResponseBody::PushRequest { hash: h, to, .. } = notice.body else {
            panic!("{notice:?}")
        };
        assert_eq!((h, to), (hash, observed));
    }
    // A push to an address where no peer takes pushes goes nowhere.
    let (mut other, _) = Client::hello(indexd.addr, 5555);
    match other.call(RequestBody::Push {
        hash,
        holder: "127.0.0.1:9".parse().unwrap(),
        nonce: 1,
    }) {
        ResponseBody::Error { code, message } => {
            assert_eq!(code, ErrorCode::NotFound, "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A requester serving no port is told a holder has nowhere to connect to.
    let (mut portless, _) = Client::hello(indexd.addr, 0);
    match portless.call(RequestBody::Push {
        hash,
        holder: taker_addr,
        nonce: 1,
    }) {
        ResponseBody::Error { code, message } => {
            assert_eq!(code, ErrorCode::Invalid);
            assert!(message.contains("--listen none"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_probe_needs_a_p2pshare_file_server_not_just_an_open_port() {
    let indexd = Indexd::start(&[]);
    // A port that accepts connections but speaks no p2pshare.
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = open.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Accept and say something else, then hang up.
        if let Ok((mut s, _)) = open.accept() {
            let _ = s.write_all(b"SSH-2.0-OpenSSH\r\n");
        }
    });
    let (mut c, _) = Client::hello(indexd.addr, port);
    assert_eq!(
        c.call(RequestBody::Reachability),
        ResponseBody::Reachability { reachable: false }
    );
}

#[test]
fn a_download_refused_over_the_push_budget_asks_again_after_the_wait() {
    // One push a second per address: another session of the downloader's address keeps it
    // spent, so the downloader's push is refused `RateLimited` and must be asked again.
    let indexd = Indexd::start(&["--rate-push-address", "1"]);
    let tmp = TempDir::new("push-budget");
    let bytes = common::pseudo_random(40_000, 17);
    let hash = FileHash::of(&bytes);
    let _h = holder(&tmp.sub("h"), &indexd, "budget.bin", &bytes, "none");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let drainer = {
        let (stop, index) = (stop.clone(), indexd.addr);
        std::thread::spawn(move || {
            let (mut c, _) = Client::hello(index, 4321);
            let mut refused = 0;
            // Pushes to nobody cost the budget all the same.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let push = RequestBody::Push {
                    hash,
                    holder: "127.0.0.1:9".parse().unwrap(),
                    nonce: 1,
                };
                if let ResponseBody::RateLimited { .. } = c.call(push) {
                    refused += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            refused
        })
    };
    // The drainer has met the limit before the download starts.
    let (mut probe, _) = Client::hello(indexd.addr, 4322);
    while !matches!(
        probe.call(RequestBody::Push {
            hash,
            holder: "127.0.0.1:9".parse().unwrap(),
            nonce: 2,
        }),
        ResponseBody::RateLimited { .. }
    ) {}
    let b = tmp.sub("b");
    let (stdout, stderr, code) = get(&b, &indexd, "127.0.0.1:0", hash);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(drainer.join().unwrap() > 0);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the index's push budget is spent for now: asking again in"),
        "{stderr}"
    );
    assert!(!stderr.contains("push refused"), "{stderr}");
    assert_eq!(std::fs::read(b.join("budget.bin")).unwrap(), bytes);
}

#[test]
fn requesters_that_hold_every_push_connection_idle_give_way_to_an_honest_one() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("push-hog");
    let bytes = common::pseudo_random(60_000, 18);
    let hash = FileHash::of(&bytes);
    let mut h = holder(&tmp.sub("h"), &indexd, "hogged.bin", &bytes, "none");
    let (holders, _) = lookup(&indexd, hash);
    // Four requesters each take their four push connections and never ask for a range.
    let mut hogs = Vec::new();
    for k in 0..4u8 {
        let ip = std::net::IpAddr::from([127, 0, 0, 20 + k]);
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut c, _) = Client::hello_from(indexd.addr, ip, port);
        for nonce in 0..4 {
            let push = RequestBody::Push {
                hash,
                holder: holders[0],
                nonce,
            };
            assert_eq!(c.call(push), ResponseBody::PushRelayed);
        }
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        let mut accepted = 0;
        while accepted < 4 {
            match listener.accept() {
                Ok((conn, _)) => {
                    hogs.push(conn);
                    accepted += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "the holder's pushes");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        hogs.push(c.stream);
    }
    // Every push connection is taken and idle: the honest push takes an idle one's place,
    // and the download completes.
    let b = tmp.sub("b");
    let (stdout, stderr, code) = get(&b, &indexd, "127.0.0.1:0", hash);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(std::fs::read(b.join("hogged.bin")).unwrap(), bytes);
    let gave_way = "an idle push connection gives way";
    if !h.has_said(gave_way) {
        h.wait_line("the eviction", IO_TIMEOUT, |l| l.contains(gave_way));
    }
    drop(hogs);
}
