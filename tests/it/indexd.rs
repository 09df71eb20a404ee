//! Integration tests against the real `indexd` binary over loopback sockets.

use crate::common::{self, frame, Client, Indexd, KillOnDrop};
use p2pshare::wire::{
    self, ErrorCode, FileEntry, FileHash, LookupKey, Request, RequestBody, Response, ResponseBody,
};
use std::net::SocketAddr;

fn entry(name: &str, content: &str) -> FileEntry {
    FileEntry {
        hash: FileHash::of(content.as_bytes()),
        size: content.len() as u64,
        name: name.into(),
    }
}

fn register(c: &mut Client, files: Vec<FileEntry>) -> (u32, u32, u32) {
    match c.call(RequestBody::Register { files }) {
        ResponseBody::Registered {
            added,
            rejected,
            total,
        } => (added, rejected, total),
        other => panic!("expected registered, got {other:?}"),
    }
}

fn holders(c: &mut Client, key: LookupKey) -> Vec<(FileHash, Vec<SocketAddr>)> {
    match c.call(RequestBody::Lookup { key, after: None }) {
        ResponseBody::Holders { files, .. } => {
            files.into_iter().map(|f| (f.hash, f.holders)).collect()
        }
        ResponseBody::Error {
            code: ErrorCode::NotFound,
            ..
        } => Vec::new(),
        other => panic!("expected holders, got {other:?}"),
    }
}

fn search(c: &mut Client, query: &str) -> Vec<(String, u32)> {
    match c.call(RequestBody::Search {
        query: query.into(),
        limit: 100,
        filter: Default::default(),
        after: None,
    }) {
        ResponseBody::SearchResults { hits, .. } => {
            hits.into_iter().map(|h| (h.name, h.holders)).collect()
        }
        other => panic!("expected search results, got {other:?}"),
    }
}

fn expect_error(body: ResponseBody, want: ErrorCode) -> String {
    match body {
        ResponseBody::Error { code, message } if code == want => message,
        other => panic!("expected {want:?} error, got {other:?}"),
    }
}

#[test]
fn register_search_lookup_across_peers() {
    let indexd = Indexd::start(&[]);
    let (mut a, observed_a) = Client::hello(indexd.addr, 4001);
    let (mut b, observed_b) = Client::hello(indexd.addr, 4002);
    // The address given out is the IP on the socket with the announced port.
    assert_eq!(observed_a, "127.0.0.1:4001".parse().unwrap());
    assert_eq!(observed_b.port(), 4002);

    let song = entry("Zebra_Crossing-Live 1999.flac", "zebra bytes");
    let weird = entry("a\r\r\nb.txt", "weird bytes");
    assert_eq!(
        register(&mut a, vec![song.clone(), weird.clone()]),
        (2, 0, 2)
    );
    // Same bytes under another name at b: one file, two names, two holders.
    let mut renamed = song.clone();
    renamed.name = "zebra copy.flac".into();
    assert_eq!(register(&mut b, vec![renamed]).0, 1);

    let hits = search(&mut b, "zeb cross");
    assert_eq!(hits, vec![("Zebra_Crossing-Live 1999.flac".to_string(), 2)]);
    assert_eq!(search(&mut a, "ZEBRA").len(), 2);
    assert!(search(&mut a, "nothing here").is_empty());

    let h = holders(&mut b, LookupKey::Hash(song.hash));
    assert_eq!(h.len(), 1);
    let mut addrs = h[0].1.clone();
    addrs.sort();
    assert_eq!(addrs, vec![observed_a, observed_b]);
    // By hex prefix and by exact name (the name with \r\r\n in it).
    let prefix = song.hash.to_hex()[..10].to_string();
    assert_eq!(
        holders(&mut b, LookupKey::HashPrefix(prefix))[0].0,
        song.hash
    );
    assert_eq!(
        holders(&mut b, LookupKey::Name("a\r\r\nb.txt".into())),
        vec![(weird.hash, vec![observed_a])]
    );

    // Unregister: only a's own entries go.
    match a.call(RequestBody::Unregister {
        hashes: vec![song.hash, FileHash([9; 32])],
    }) {
        ResponseBody::Unregistered { removed, total } => assert_eq!((removed, total), (1, 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        holders(&mut b, LookupKey::Hash(song.hash)),
        vec![(song.hash, vec![observed_b])]
    );
    match a.call(RequestBody::Stats) {
        ResponseBody::Stats(s) => {
            assert_eq!((s.connections, s.peers, s.files), (2, 2, 2));
            assert!(s.searches >= 3 && s.lookups >= 4 && s.registers == 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.call(RequestBody::Ping), ResponseBody::Pong);
    assert_eq!(a.call(RequestBody::Bye), ResponseBody::Bye);
    assert!(a.is_closed_by_server());
}

#[test]
fn lookup_by_name_with_several_hashes() {
    let indexd = Indexd::start(&[]);
    let (mut a, _) = Client::hello(indexd.addr, 1);
    let (mut b, _) = Client::hello(indexd.addr, 2);
    register(&mut a, vec![entry("same.txt", "one")]);
    register(&mut b, vec![entry("same.txt", "two")]);
    let mut got: Vec<FileHash> = holders(&mut a, LookupKey::Name("same.txt".into()))
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    got.sort();
    let mut want = vec![FileHash::of(b"one"), FileHash::of(b"two")];
    want.sort();
    assert_eq!(got, want);
    let body = a.call(RequestBody::Lookup {
        key: LookupKey::Hash(FileHash([0xee; 32])),
        after: None,
    });
    expect_error(body, ErrorCode::NotFound);
}

/// A client that pipelines thousands of costly searches with empty answers (which never
/// fill its output and park it) cannot make another client wait for all of them: the reactor
/// serves each connection a bounded share of a turn. Asserted by order, not by time: the
/// other client's `Stats` answer counts the searches handled before it.
#[test]
fn a_pipelining_client_does_not_starve_another() {
    const PIPELINED: u32 = 4000;
    // The reactor's fairness alone: with the rate limits on, most of the burst would be
    // refused (tests/it/limits.rs has that case).
    let indexd = Indexd::start(&["--rate-search", "0", "--rate-address", "0"]);
    let (mut holder, _) = Client::hello(indexd.addr, 7);
    // Words starting with `s` in half the names, with `q` in the other half: "s q" ranges
    // over a thousand words each and matches nothing.
    let files: Vec<FileEntry> = (0..2000)
        .map(|i| {
            let word = if i % 2 == 0 { 's' } else { 'q' };
            entry(&format!("{word}{i} track.mp3"), &format!("c{i}"))
        })
        .collect();
    register(&mut holder, files);
    let (mut greedy, _) = Client::hello(indexd.addr, 0);
    let (mut honest, _) = Client::hello(indexd.addr, 0);
    let mut burst = Vec::new();
    for i in 0..PIPELINED {
        let body = RequestBody::Search {
            query: "s q".into(),
            limit: 100,
            filter: Default::default(),
            after: None,
        };
        wire::encode_frame(&Request { id: 1000 + i, body }, &mut burst);
    }
    greedy.send_raw(&burst).unwrap();
    // Its first answer proves the burst is being handled (before the fix, the first one left
    // only once every search of the read had run).
    let first = greedy.recv().expect("an answer");
    assert_eq!(first.id, 1000);
    let handled = match honest.call(RequestBody::Stats) {
        ResponseBody::Stats(s) => s.searches,
        other => panic!("expected stats, got {other:?}"),
    };
    assert!(
        handled < u64::from(PIPELINED) / 2,
        "{handled} of {PIPELINED} pipelined searches ran before another client's request"
    );
    // Nothing of the burst is lost or reordered.
    for i in 1..PIPELINED {
        let r = greedy.recv().expect("an answer");
        assert_eq!(r.id, 1000 + i);
        assert!(matches!(r.body, ResponseBody::SearchResults { ref hits, .. } if hits.is_empty()));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_by_id() {
    let indexd = Indexd::start(&[]);
    let (mut c, _) = Client::hello(indexd.addr, 7);
    let files: Vec<FileEntry> = (0..50)
        .map(|i| entry(&format!("file {i}.dat"), &i.to_string()))
        .collect();
    register(&mut c, files.clone());
    // Write 300 requests in one go, then read 300 answers.
    let mut wire_bytes = Vec::new();
    for i in 0..300u32 {
        let body = match i % 3 {
            0 => RequestBody::Lookup {
                key: LookupKey::Hash(files[(i % 50) as usize].hash),
                after: None,
            },
            1 => RequestBody::Search {
                query: format!("file {}", i % 50),
                limit: 10,
                filter: Default::default(),
                after: None,
            },
            _ => RequestBody::Ping,
        };
        wire::encode_frame(&Request { id: 1000 + i, body }, &mut wire_bytes);
    }
    c.send_raw(&wire_bytes).unwrap();
    for i in 0..300u32 {
        let r = c.recv().expect("response");
        assert_eq!(r.id, 1000 + i);
        match (i % 3, r.body) {
            (0, ResponseBody::Holders { files: f, .. }) => {
                assert_eq!(f[0].hash, files[(i % 50) as usize].hash)
            }
            (1, ResponseBody::SearchResults { hits, .. }) => assert!(!hits.is_empty()),
            (2, ResponseBody::Pong) => {}
            (k, other) => panic!("request kind {k} got {other:?}"),
        }
    }
}

#[test]
fn entries_vanish_when_a_peer_disconnects_for_any_reason() {
    let indexd = Indexd::start(&[]);
    let (mut watcher, _) = Client::hello(indexd.addr, 1);
    let f1 = entry("by bye.txt", "1");
    let f2 = entry("by eof.txt", "2");
    let f3 = entry("by reset.txt", "3");
    let (mut p1, _) = Client::hello(indexd.addr, 11);
    let (mut p2, _) = Client::hello(indexd.addr, 12);
    let (mut p3, _) = Client::hello(indexd.addr, 13);
    register(&mut p1, vec![f1.clone()]);
    register(&mut p2, vec![f2.clone()]);
    register(&mut p3, vec![f3.clone()]);
    assert_eq!(search(&mut watcher, "by").len(), 3);

    // FIN, as when a process is killed: the server closes in answer, and has withdrawn the
    // entries before (see `common::leave`).
    p2.leave();
    assert!(search(&mut watcher, "eof").is_empty());
    assert_eq!(p1.call(RequestBody::Bye), ResponseBody::Bye);
    drop(p1);
    // RST: linger 0 then close.
    let sock = socket_with_zero_linger(p3.stream.try_clone().unwrap());
    drop(p3);
    drop(sock);

    // Polled: after a bye the server shuts its side and lingers until ours closes, and a reset
    // leaves us no socket at all, so nothing on our side says when the server has let go of
    // either (and it sees our close only once every copy of the socket is closed: see
    // `common::leave`). Bounded by IO_TIMEOUT.
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    loop {
        let left = search(&mut watcher, "by");
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "entries left: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    match watcher.call(RequestBody::Stats) {
        ResponseBody::Stats(s) => assert_eq!((s.peers, s.files, s.names), (1, 0, 0)),
        other => panic!("{other:?}"),
    }
}

fn socket_with_zero_linger(s: std::net::TcpStream) -> std::net::TcpStream {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd and a valid linger struct of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    s
}

#[test]
fn entries_vanish_when_a_client_process_is_killed() {
    let indexd = Indexd::start(&[]);
    let (mut watcher, _) = Client::hello(indexd.addr, 1);
    // A real separate process holding a registered session: python3 speaking the protocol
    // from bytes we prepare here (hello + register + ping), then sleeping until killed. The
    // index answers a connection's requests in order: once the pong is back, the register is
    // in, and the script says so.
    let mut hello = Vec::new();
    wire::encode_frame(
        &Request {
            id: 1,
            body: RequestBody::Hello {
                version: wire::PROTOCOL_VERSION,
                listen_port: 5,
                agent: "python".into(),
            },
        },
        &mut hello,
    );
    wire::encode_frame(
        &Request {
            id: 2,
            body: RequestBody::Register {
                files: vec![entry("killed peer file.bin", "k")],
            },
        },
        &mut hello,
    );
    wire::encode_frame(
        &Request {
            id: 3,
            body: RequestBody::Ping,
        },
        &mut hello,
    );
    let mut pong = Vec::new();
    wire::encode_frame(
        &Response {
            id: 3,
            body: ResponseBody::Pong,
        },
        &mut pong,
    );
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    let script = format!(
        "import socket,sys,time\n\
         s=socket.create_connection(('127.0.0.1',{}))\n\
         s.sendall(bytes.fromhex('{}'))\n\
         pong=bytes.fromhex('{}')\n\
         got=b''\n\
         while not got.endswith(pong):\n\
         \x20   d=s.recv(65536)\n\
         \x20   if not d: sys.exit('closed before the pong')\n\
         \x20   got+=d\n\
         print('registered',flush=True)\n\
         time.sleep(60)\n",
        indexd.addr.port(),
        hex(&hello),
        hex(&pong)
    );
    let mut child = KillOnDrop(
        std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "registered\n");
    assert!(!search(&mut watcher, "killed").is_empty());
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // Polled: the kernel closes the killed process's socket and the index learns of it from
    // the FIN; nothing tells a third party when it has. Bounded by IO_TIMEOUT.
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    while !search(&mut watcher, "killed").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "entries of a killed peer stayed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn version_mismatch_gets_a_clear_error_then_close() {
    let indexd = Indexd::start(&[]);
    let mut c = Client::connect(indexd.addr);
    let body = c.call(RequestBody::Hello {
        version: 999,
        listen_port: 1,
        agent: "future".into(),
    });
    let msg = expect_error(body, ErrorCode::VersionMismatch);
    assert!(
        msg.contains("999") && msg.contains(&format!("version {}", wire::PROTOCOL_VERSION)),
        "{msg}"
    );
    assert!(c.is_closed_by_server());
    // A future hello whose layout no longer decodes at all: the version is still read.
    let mut c = Client::connect(indexd.addr);
    let future = wire::PROTOCOL_VERSION as u8 + 1;
    c.send_raw(&frame(&[7, 0, future, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]))
        .unwrap();
    let r = c.recv().unwrap();
    assert_eq!(r.id, 7);
    expect_error(r.body, ErrorCode::VersionMismatch);
    assert!(c.is_closed_by_server());
}

#[test]
fn requests_before_hello_and_garbage_are_refused() {
    let indexd = Indexd::start(&[]);
    let mut c = Client::connect(indexd.addr);
    expect_error(c.call(RequestBody::Ping), ErrorCode::NotReady);
    assert!(c.is_closed_by_server());

    let mut c = Client::connect(indexd.addr);
    c.send_raw(&frame(b"\x01\xff\xff\xff garbage")).unwrap();
    let r = c.recv().unwrap();
    expect_error(r.body, ErrorCode::Malformed);
    assert!(c.is_closed_by_server());

    let (mut c, _) = Client::hello(indexd.addr, 3);
    expect_error(
        c.call(RequestBody::Hello {
            version: wire::PROTOCOL_VERSION,
            listen_port: 3,
            agent: String::new(),
        }),
        ErrorCode::NotReady,
    );
    assert!(c.is_closed_by_server());
}

#[test]
fn oversized_frame_closes_only_its_connection() {
    let indexd = Indexd::start(&["--max-frame-bytes", "4096"]);
    let (mut honest, _) = Client::hello(indexd.addr, 1);
    register(&mut honest, vec![entry("honest.txt", "h")]);
    let (mut big, _) = Client::hello(indexd.addr, 2);
    let files: Vec<FileEntry> = (0..200)
        .map(|i| entry(&format!("f{i}"), &i.to_string()))
        .collect();
    let mut bytes = Vec::new();
    wire::encode_frame(
        &Request {
            id: 9,
            body: RequestBody::Register { files },
        },
        &mut bytes,
    );
    assert!(bytes.len() > 4096);
    // The server may close while we are still writing: that is fine.
    let _ = big.send_raw(&bytes);
    let r = big.recv().expect("an error frame before the close");
    expect_error(r.body, ErrorCode::BadFrame);
    assert!(big.is_closed_by_server());
    assert_eq!(search(&mut honest, "honest").len(), 1);
}

#[test]
fn a_thousand_concurrent_connections() {
    p2pshare::sys::process::raise_fd_limit().unwrap();
    // All from 127.0.0.1: lift the per-address limit.
    let indexd = Indexd::start(&["--max-connections-per-ip", "0"]);
    let f = entry("shared by all.bin", "x");
    let mut clients: Vec<Client> = (0..1000)
        .map(|i| Client::hello(indexd.addr, 10_000 + i as u16).0)
        .collect();
    for c in clients.iter_mut().step_by(100) {
        register(c, vec![f.clone()]);
    }
    // Every connection asks at once, then every answer is read.
    let ids: Vec<u32> = clients
        .iter_mut()
        .map(|c| {
            c.send(RequestBody::Lookup {
                key: LookupKey::Hash(f.hash),
                after: None,
            })
        })
        .collect();
    for (c, id) in clients.iter_mut().zip(ids) {
        let r = c.recv().unwrap();
        assert_eq!(r.id, id);
        match r.body {
            ResponseBody::Holders { files, .. } => assert_eq!(files[0].holders.len(), 10),
            other => panic!("{other:?}"),
        }
    }
    match clients[0].call(RequestBody::Stats) {
        ResponseBody::Stats(s) => assert_eq!((s.connections, s.peers), (1000, 1000)),
        other => panic!("{other:?}"),
    }
}

/// Holds `n` sessions on `addr`, then connects once more: returns the held sessions and the
/// `Busy` message the extra connection got before the server closed it.
fn hold_then_refused(addr: SocketAddr, n: u16) -> (Vec<Client>, String) {
    let held: Vec<Client> = (0..n).map(|i| Client::hello(addr, i + 1).0).collect();
    let mut extra = Client::connect(addr);
    let message = expect_error(extra.recv().expect("busy reply").body, ErrorCode::Busy);
    assert!(extra.is_closed_by_server());
    (held, message)
}

#[test]
fn one_address_is_limited_and_its_sessions_keep_serving() {
    let indexd = Indexd::start(&["--max-connections-per-ip", "2"]);
    let (mut held, message) = hold_then_refused(indexd.addr, 2);
    assert!(message.contains("your address"), "{message}");
    assert_eq!(held[0].call(RequestBody::Ping), ResponseBody::Pong);
    assert_eq!(held[1].call(RequestBody::Ping), ResponseBody::Pong);
}

#[test]
fn connection_limit_answers_busy_and_keeps_serving() {
    let indexd = Indexd::start(&["--max-connections", "3"]);
    let (mut held, _) = hold_then_refused(indexd.addr, 3);
    assert_eq!(held[0].call(RequestBody::Ping), ResponseBody::Pong);
    // Free a slot (closing first: the server frees it before its close reaches us, see
    // `common::leave`): a new client gets in.
    held.pop().unwrap().leave();
    let (mut c, _) = Client::hello(indexd.addr, 9);
    assert_eq!(c.call(RequestBody::Ping), ResponseBody::Pong);
}

#[test]
fn peer_without_listening_port_cannot_register() {
    let indexd = Indexd::start(&[]);
    let (mut c, _) = Client::hello(indexd.addr, 0);
    expect_error(
        c.call(RequestBody::Register {
            files: vec![entry("x", "y")],
        }),
        ErrorCode::Invalid,
    );
    // It can still search.
    assert!(search(&mut c, "x").is_empty());
}

/// `n` distinct files named `f<i>.bin` (about 45 bytes each on the wire).
fn many_files(tag: &str, n: usize) -> Vec<FileEntry> {
    (0..n)
        .map(|i| FileEntry {
            hash: FileHash::of(format!("{tag} {i}").as_bytes()),
            size: i as u64 + 1,
            name: format!("{tag}{i}.bin"),
        })
        .collect()
}

fn stats(c: &mut Client) -> p2pshare::wire::ServerStats {
    match c.call(RequestBody::Stats) {
        ResponseBody::Stats(s) => s,
        other => panic!("expected stats, got {other:?}"),
    }
}

#[test]
fn a_huge_register_is_applied_in_slices_while_others_are_answered() {
    const FILES: usize = 20_000;
    let indexd = Indexd::start(&[]);
    let (mut watcher, _) = Client::hello(indexd.addr, 1);
    let (mut big, big_addr) = Client::hello(indexd.addr, 2);
    let files = many_files("huge", FILES);
    let last = files[FILES - 1].hash;
    // The register and, right behind it, a lookup of its last file: the session is held until
    // its register is done, so the lookup sees all of it.
    let reg = big.send(RequestBody::Register { files });
    let look = big.send(RequestBody::Lookup {
        key: LookupKey::Hash(last),
        after: None,
    });
    let registering = std::thread::spawn(move || {
        let r = big.recv().expect("register answer");
        let l = big.recv().expect("lookup answer");
        (r, l, big)
    });
    // Meanwhile another client is answered, and sees the register part done (the index as if
    // the peer had registered part of its list so far).
    let mut partial = 0;
    let mut answered = 0;
    loop {
        let s = stats(&mut watcher);
        answered += 1;
        if s.files > 0 && (s.files as usize) < FILES {
            partial += 1;
        }
        if s.files as usize == FILES {
            break;
        }
        assert!(answered < 1_000_000, "the register never completed");
    }
    let (r, l, big) = registering.join().expect("registering thread");
    assert_eq!(r.id, reg);
    assert_eq!(
        r.body,
        ResponseBody::Registered {
            added: FILES as u32,
            rejected: 0,
            total: FILES as u32
        }
    );
    assert_eq!(l.id, look);
    let ResponseBody::Holders { files, .. } = l.body else {
        panic!("{:?}", l.body)
    };
    assert_eq!(files[0].holders, vec![SocketAddr::new(big_addr.ip(), 2)]);
    assert!(
        partial > 0,
        "{answered} stats answers, none saw the register half done"
    );
    drop(big);
}

#[test]
fn a_departing_peer_of_many_files_is_never_listed_after_its_close() {
    const FILES: usize = 20_000;
    let indexd = Indexd::start(&[]);
    let (mut watcher, _) = Client::hello(indexd.addr, 1);
    let (mut big, _) = Client::hello(indexd.addr, 2);
    let files = many_files("gone", FILES);
    assert_eq!(
        register(&mut big, files.clone()),
        (FILES as u32, 0, FILES as u32)
    );
    // One file the watcher shares too: after the close it has one holder, the watcher.
    let shared = files[FILES / 2].clone();
    register(&mut watcher, vec![shared.clone()]);
    // Once `leave` returns the server has closed the session (see `common::leave`).
    big.leave();
    assert_eq!(stats(&mut watcher).peers, 1);
    for f in [&files[0], &files[1], &files[FILES - 1]] {
        assert!(holders(&mut watcher, LookupKey::Hash(f.hash)).is_empty());
    }
    let held = holders(&mut watcher, LookupKey::Hash(shared.hash));
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].1.len(), 1, "only the watcher holds it: {held:?}");
    assert_eq!(search(&mut watcher, "gone"), vec![(shared.name.clone(), 1)]);
    // Its entries go in slices; all of them, soon.
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    while stats(&mut watcher).files != 1 {
        assert!(std::time::Instant::now() < deadline, "entries left behind");
    }
}

/// A measurement, not a test: the reactor loop's longest pause while peers of `CHURN_FILES`
/// files (default 100,000) join and leave over an index pre-populated with `CHURN_BASE` entries
/// (default 1,000,000), registered as every peer here registers, in frames of up to 1 MiB
/// (the server's frame limit), while a client searches back to back from the first register
/// to the last departure's end (one-letter and three-letter prefixes, the commonest words,
/// two words of real names) and another looks up the churning peer's first file after each
/// of its registers. Each round's peer shares the same files, so the next peer's register
/// meets the last one's departure (files of two holders, then one again). The names are the first
/// `CHURN_BASE` lines of `P2PSHARE_NAMES` (default /work/corpus/names.txt, real names); each
/// churning peer shares `CHURN_FILES` of them spread over the whole list, under its own
/// hashes; `SYNTHETIC=1` uses the names of sessions 12-16 instead (`base{i}.bin`,
/// `churn{i}.bin`, searched for `base1`). Prints the `Stats` loop pauses before and after
/// the churn and the searcher's count. `CHURN_INDEXD_CPU=N` moves indexd to CPU N
/// (`taskset -pc`) as soon as it runs. With `P2PSHARE_WORK_TRACE=FILE` indexd also writes its
/// work trace there (see `src/index/worktrace.rs`).
/// `CHURN_BASE=10000000 cargo test --release --test it -- --ignored --nocapture indexd::measure_churn`
#[test]
#[ignore]
fn measure_churn_loop_pause() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (base, files, rounds) = (
        env("CHURN_BASE", 1_000_000),
        env("CHURN_FILES", 100_000),
        env("CHURN_ROUNDS", 4),
    );
    let synthetic = std::env::var_os("SYNTHETIC").is_some_and(|v| v == "1");
    // One host registers everything: its per-address and rate limits are off. The holders
    // of the base entries stay silent for minutes at 10M (populating takes that long), so the
    // idle timeout is off too: with it, the first holders were closed during the run and their
    // entries withdrawn, and the count the end waits for was never reached.
    let indexd = Indexd::start(&[
        "--idle-timeout",
        "0",
        "--max-files-per-peer",
        "100000000",
        "--max-holdings-per-ip",
        "0",
        "--rate-register",
        "0",
        "--rate-register-address",
        "0",
        "--rate-search",
        "0",
        "--rate-lookup",
        "0",
        "--rate-address",
        "0",
    ]);
    if let Ok(cpu) = std::env::var("CHURN_INDEXD_CPU") {
        let pid = indexd.child.id().to_string();
        let moved = std::process::Command::new("taskset")
            .args(["-pc", &cpu, &pid])
            .output()
            .expect("run taskset");
        assert!(moved.status.success(), "taskset: {moved:?}");
        eprintln!("indexd {pid} moved to CPU {cpu}");
    }
    let (base_files, peer_files, queries) = if synthetic {
        (
            many_files("base", base),
            many_files("churn", files),
            vec!["base1".to_string()],
        )
    } else {
        let path = std::env::var("P2PSHARE_NAMES").unwrap_or("/work/corpus/names.txt".into());
        let names = crate::hostile::corpus_names(std::path::Path::new(&path), base);
        assert_eq!(names.len(), base, "{path} has fewer than {base} names");
        let entry = |tag: &str, i: usize, name: &str| FileEntry {
            hash: FileHash::of(format!("{tag} {i}").as_bytes()),
            size: 1_000 + (i as u64 * 7_919) % 50_000_000,
            name: name.to_string(),
        };
        let step = (base / files.max(1)).max(1);
        let peer_files = (0..files)
            .map(|i| entry("churn", i, &names[(i * step) % base]))
            .collect();
        let queries = churn_queries(&names);
        let base_files = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| FileEntry {
                name,
                ..entry("base", i, "")
            })
            .collect();
        (base_files, peer_files, queries)
    };
    let query_count = queries.len();
    // The searcher: back to back from the first register until the last departure is
    // withdrawn.
    let stop = Arc::new(AtomicBool::new(false));
    let searcher = {
        let (addr, stop) = (indexd.addr, stop.clone());
        std::thread::spawn(move || {
            let (mut c, _) = Client::hello(addr, 3);
            let (mut n, mut hits, mut longest) = (0usize, 0usize, std::time::Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = std::time::Instant::now();
                hits += search(&mut c, &queries[n % queries.len()]).len();
                longest = longest.max(t.elapsed());
                n += 1;
            }
            (n, hits, longest)
        })
    };
    let mut holders = Vec::new();
    for (i, chunk) in base_files.chunks(100_000).enumerate() {
        let (mut c, _) = Client::hello(indexd.addr, 1000 + i as u16);
        for part in frames_of_1mib(chunk) {
            register(&mut c, part.to_vec());
        }
        holders.push(c);
    }
    drop(base_files);
    let (mut watcher, _) = Client::hello(indexd.addr, 1);
    let before = stats(&mut watcher);
    eprintln!(
        "populated {} entries ({}): loop max pause {} us, p99 {} us, p99.9 {} us over {} turns",
        before.names,
        if synthetic { "synthetic" } else { "real names" },
        before.loop_max_pause_us,
        before.loop_p99_pause_us,
        before.loop_p999_pause_us,
        before.loop_turns
    );
    assert_eq!(before.names as usize, base, "every base entry is indexed");
    let frames = frames_of_1mib(&peer_files);
    let t = std::time::Instant::now();
    for round in 0..rounds {
        let (mut p, _) = Client::hello(indexd.addr, 2);
        for part in &frames {
            // The register and a lookup from another client, pipelined.
            let id = p.send(RequestBody::Register {
                files: part.to_vec(),
            });
            holders_of_first(&mut watcher, &peer_files);
            assert_eq!(p.recv().expect("register answer").id, id);
        }
        p.leave();
        assert!(holders_of_first(&mut watcher, &peer_files).is_empty());
        eprintln!(
            "round {round} ({} frames) done at {:?}",
            frames.len(),
            t.elapsed()
        );
    }
    // Until the last departure is withdrawn (a departure of `files` entries takes some
    // seconds at most).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while stats(&mut watcher).names as usize != base {
        assert!(
            std::time::Instant::now() < deadline,
            "departures never ended"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (searches, hits, longest) = searcher.join().expect("searcher");
    assert!(searches > 0 && hits > 0, "{searches} searches, {hits} hits");
    let after = stats(&mut watcher);
    eprintln!(
        "after {rounds} peers of {files} files joined and left: loop max pause {} us, p99 {} us, \
         p99.9 {} us over {} turns; {searches} searches of {} queries since the first \
         register ({hits} hits, longest round trip {longest:?})",
        after.loop_max_pause_us,
        after.loop_p99_pause_us,
        after.loop_p999_pause_us,
        after.loop_turns,
        query_count
    );
    if std::env::var_os("P2PSHARE_WORK_TRACE").is_some() {
        // indexd writes its work trace at most once a second: one more turn after that.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        stats(&mut watcher);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `files` cut into the register frames a peer sends: as many entries as fit in 1 MiB (the
/// server's frame limit), counting each entry's encoding at 40 bytes and its name.
fn frames_of_1mib(files: &[FileEntry]) -> Vec<&[FileEntry]> {
    const FRAME: usize = (1 << 20) - 4_096;
    let mut frames = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, f) in files.iter().enumerate() {
        let b = 40 + f.name.len();
        if bytes + b > FRAME {
            frames.push(&files[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += b;
    }
    if start < files.len() {
        frames.push(&files[start..]);
    }
    frames
}

/// The searches of [`measure_churn_loop_pause`] on real names: every one-letter prefix, the
/// 30 commonest words (of 2+ characters), 100 three-letter prefixes and 100 first-two-words of
/// names spread over the list, interleaved.
fn churn_queries(names: &[String]) -> Vec<String> {
    let words = |n: &str| {
        n.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect::<Vec<_>>()
    };
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for n in names.iter().step_by(97) {
        for w in words(n) {
            if w.chars().count() >= 2 {
                *counts.entry(w).or_default() += 1;
            }
        }
    }
    let mut common: Vec<(String, usize)> = counts.into_iter().collect();
    common.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut classes: Vec<Vec<String>> = vec![
        "abcdefghijklmnopqrstuvwxyz0123456789"
            .chars()
            .map(String::from)
            .collect(),
        common.into_iter().take(30).map(|(w, _)| w).collect(),
        Vec::new(),
        Vec::new(),
    ];
    let step = (names.len() / 100).max(1);
    for n in names.iter().step_by(step) {
        let w = words(n);
        if let Some(first) = w.first().filter(|f| f.chars().count() >= 3) {
            classes[2].push(first.chars().take(3).collect());
        }
        if w.len() >= 2 {
            classes[3].push(format!("{} {}", w[0], w[1]));
        }
    }
    let longest = classes.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| classes.iter().filter_map(move |c| c.get(i).cloned()))
        .collect()
}

fn holders_of_first(c: &mut Client, files: &[FileEntry]) -> Vec<(FileHash, Vec<SocketAddr>)> {
    holders(c, LookupKey::Hash(files[0].hash))
}
