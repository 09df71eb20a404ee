//! Hostile input, overload and faults against the real `indexd` and `peer` binaries: garbage,
//! floods, never-ending frames, thousands of idle and slowloris connections, the connection
//! cap, absurd but well-formed requests, malicious holders, indexd killed under 100 peers, a
//! downloader killed mid-transfer, a full disk. Each offender is closed, memory stays bounded
//! and honest clients keep being served.
//!
//! The `measure_*` tests (ignored) are measurements: README's "Figures" quotes their newest
//! figures and docs/MEASUREMENTS.md the earlier ones:
//! `cargo test --release --test it -- --ignored --nocapture hostile::measure_...`.

use crate::common::{self, Client, Fake, FakeHolder, Indexd, KillOnDrop, ServingPeer, TempDir};
use p2pshare::codec::Decoder;
use p2pshare::wire::{
    self, ErrorCode, FileEntry, FileHash, LookupKey, RequestBody, ResponseBody, TransferRequest,
    TransferResponse, PROTOCOL_VERSION,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// A size in KiB from a process's `/proc/PID/status` (`field`: `VmRSS`, `VmHWM`, ...).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
}

/// Resident memory of a process, in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// indexd's peak resident size since [`reset_peak_rss`] (`VmHWM`).
fn vm_hwm_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM")
}

/// Resets a process's peak resident size (`VmHWM`) to its current one (`5` to
/// `/proc/PID/clear_refs`); false where that is not allowed.
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok()
}

/// What indexd says its buffers and the process hold (its metrics), in KiB.
fn buffer_report(metrics: SocketAddr) -> String {
    let text = crate::ops::scrape(metrics);
    let kib = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or("?".to_string(), |v| format!("{:.0}", v / 1024.0))
    };
    format!(
        "input buffers {} KiB (retiring {}), output queued {} KiB in buffers of {} KiB; \
         VmRSS {} KiB",
        kib("p2pshare_index_input_buffer_bytes"),
        kib("p2pshare_index_input_retiring_bytes"),
        kib("p2pshare_index_output_queued_bytes"),
        kib("p2pshare_index_output_buffer_bytes"),
        kib("process_resident_memory_bytes"),
    )
}

/// Raises this test process's open-files limit so it can hold thousands of sockets.
fn raise_fds() -> u64 {
    p2pshare::sys::process::raise_fd_limit().unwrap()
}

/// An honest peer: registered one file, and answers searches for it.
struct Honest {
    client: Client,
    hash: FileHash,
}

impl Honest {
    fn join(index: SocketAddr) -> Honest {
        let (mut client, _) = Client::hello(index, 7777);
        let hash = FileHash::of(b"honest bytes");
        let files = vec![FileEntry {
            hash,
            size: 12,
            name: "Honest_Abe-Live 1861.flac".into(),
        }];
        match client.call(RequestBody::Register { files }) {
            ResponseBody::Registered { added: 1, .. } => {}
            other => panic!("{other:?}"),
        }
        Honest { client, hash }
    }

    /// Searches for its own file; returns how long the answer took.
    fn search(&mut self) -> Duration {
        let t = Instant::now();
        match self.client.call(RequestBody::Search {
            query: "honest abe".into(),
            limit: 0,
            filter: Default::default(),
            after: None,
        }) {
            ResponseBody::SearchResults { hits, .. } => {
                assert_eq!(hits.len(), 1);
                assert_eq!(hits[0].hash, self.hash);
            }
            other => panic!("{other:?}"),
        }
        t.elapsed()
    }

    fn stats(&mut self) -> wire::ServerStats {
        match self.client.call(RequestBody::Stats) {
            ResponseBody::Stats(s) => s,
            other => panic!("{other:?}"),
        }
    }

    /// The server's counters once it holds no connection but this one, for connections the
    /// server closed itself after an error frame. It shuts its side, lingers until our side
    /// closes too, and only then frees the connection; our side closes when the socket is
    /// dropped, and also only once every copy of it is closed (a child process another test
    /// spawns at that moment holds one until it execs). Nothing on our side tells us when the
    /// server is done (its FIN came before), so ask again until then, bounded by `IO_TIMEOUT`.
    /// (Connections we close first are waited for exactly: see [`common::leave`].)
    fn stats_once_alone(&mut self) -> wire::ServerStats {
        let deadline = Instant::now() + common::IO_TIMEOUT;
        loop {
            let stats = self.stats();
            if stats.connections == 1 {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "others still connected: {stats:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Sends `bytes` (ignoring errors: the server may hang up first) and, with `then_eof`, closes
/// the sending side; then reads until the server closes. Returns the frames it sent first.
fn send_and_expect_close(addr: SocketAddr, bytes: &[u8], then_eof: bool) -> Vec<Vec<u8>> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(common::IO_TIMEOUT)).unwrap();
    let _ = s.write_all(bytes);
    if then_eof {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut got = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("server did not close the connection: {e} after {got:?}"),
        }
    }
    let mut dec = Decoder::new(usize::MAX >> 1);
    let mut frames = Vec::new();
    let mut at = 0;
    while let Ok(Some(d)) = dec.decode(&got[at..]) {
        frames.push(got[at + d.payload.start..at + d.payload.end].to_vec());
        at += d.consumed;
    }
    frames
}

fn error_code(frame: &[u8]) -> ErrorCode {
    match wire::decode::<wire::Response>(frame).unwrap().body {
        ResponseBody::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn garbage_http_random_bytes_and_terminator_floods_close_only_the_offender() {
    let indexd = Indexd::start(&[]);
    let mut honest = Honest::join(indexd.addr);
    // (what, bytes, whether the sender then closes its side). Each is closed by the server:
    // complete garbage at once with an error frame saying why; a short incomplete "frame"
    // (its first byte read as a length) when the sender gives up, or else by the idle
    // timeout (see the slowloris test).
    let http = b"GET /index.html HTTP/1.1\r\nHost: example.org\r\n\
                 User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept: */*\r\n\r\n";
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("http", http.to_vec(), false),
        ("short http", b"GET / HTTP/1.0\r\n\r\n".to_vec(), true),
        (
            "text",
            b"hello server, please share your files\n".to_vec(),
            true,
        ),
        ("random", common::pseudo_random(256 << 10, 1), false),
        ("terminators", b"\r\r\n".repeat(200_000), false),
        ("zeros", vec![0u8; 1 << 20], false),
        // A valid frame holding garbage: the request does not decode.
        (
            "junk frame",
            common::frame(&common::pseudo_random(1000, 2)),
            false,
        ),
        // A request frame with a broken terminator.
        (
            "bad terminator",
            {
                let mut v = Vec::new();
                wire::encode_frame(
                    &wire::Request {
                        id: 1,
                        body: RequestBody::Ping,
                    },
                    &mut v,
                );
                let n = v.len();
                v[n - 1] = b'X';
                v
            },
            false,
        ),
    ];
    for (what, bytes, then_eof) in cases {
        let frames = send_and_expect_close(indexd.addr, &bytes, then_eof);
        if !then_eof {
            // The server said why (one error frame) before closing.
            assert!(
                !frames.is_empty(),
                "{what}: no error frame before the close"
            );
            let code = error_code(&frames[frames.len() - 1]);
            assert!(
                matches!(
                    code,
                    ErrorCode::BadFrame | ErrorCode::Malformed | ErrorCode::NotReady
                ),
                "{what}: {code:?}"
            );
        }
        assert!(honest.search() < Duration::from_secs(1), "{what}");
    }
    let stats = honest.stats_once_alone();
    assert_eq!((stats.peers, stats.files), (1, 1));
}

#[test]
fn never_ending_frames_are_cut_off_and_memory_stays_bounded() {
    let indexd = Indexd::start(&[]);
    let mut honest = Honest::join(indexd.addr);
    let pid = indexd.child.id();
    let before = vm_rss_kib(pid);
    const TOTAL: usize = 32 << 20;
    // Three shapes of endless frame, four connections each, at once: a header declaring the
    // largest allowed payload followed by more than that; plain letters (a small length, then
    // no terminator); an endless length header.
    let mut writers = Vec::new();
    for shape in 0..3u8 {
        for _ in 0..4 {
            let addr = indexd.addr;
            writers.push(std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut first = match shape {
                    // LEB128 of 1 MiB (the default limit): 0x80 0x80 0x40.
                    0 => vec![0x80, 0x80, 0x40],
                    1 => Vec::new(),
                    _ => vec![0x80; 4],
                };
                let fill = if shape == 2 { 0x80 } else { b'A' };
                first.resize(64 << 10, fill);
                let chunk = vec![fill; 64 << 10];
                let mut sent = 0;
                let mut buf = &first[..];
                while sent < TOTAL {
                    match s.write(buf) {
                        Ok(n) => sent += n,
                        Err(e) => return Err((sent, e)),
                    }
                    buf = &chunk[..];
                }
                Ok(sent)
            }));
        }
    }
    for w in writers {
        match w.join().unwrap() {
            Ok(sent) => panic!("a never-ending frame was read to its end ({sent} bytes)"),
            // A reset or a broken pipe: the server closed the connection, and a connection is
            // freed before its socket is closed (see `common::leave`), so the counters below
            // no longer count it.
            Err((_, e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) => {}
            Err((sent, e)) => panic!("a never-ending frame stalled after {sent} bytes: {e}"),
        }
    }
    let after = vm_rss_kib(pid);
    eprintln!("never-ending frames: indexd VmRSS {before} KiB -> {after} KiB");
    assert!(
        after < before + (64 << 10),
        "memory grew from {before} KiB to {after} KiB"
    );
    assert!(honest.search() < Duration::from_secs(1));
    assert_eq!(honest.stats().connections, 1);
}

#[test]
fn frames_that_never_finish_hold_buffers_in_proportion_to_what_was_sent() {
    use crate::ops::{indexd_with_metrics_and, sample, scrape};
    raise_fds();
    let (indexd, addr, metrics) =
        indexd_with_metrics_and(&["--max-connections-per-ip", "0"], common::IO_TIMEOUT);
    let mut honest = Honest::join(addr);
    let pid = indexd.0.id();
    // Every scrape's request is read (and counted in the received bytes) before its answer.
    const SCRAPE_BYTES: f64 = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".len() as f64;
    let received = |text: &str| sample(text, "p2pshare_index_received_bytes_total");
    let buffers = |text: &str| sample(text, "p2pshare_index_input_buffer_bytes");
    let first = scrape(metrics);
    let (bytes_before, buffers_before, rss_before) =
        (received(&first), buffers(&first), vm_rss_kib(pid));
    let mut scrapes = 0.0;
    // A thousand connections each send a header that claims the largest payload (1 MiB, the
    // default limit: LEB128 0x80 0x80 0x40) and 1,000 bytes of it, then nothing more.
    const N: usize = 1000;
    let mut frame = vec![0x80, 0x80, 0x40];
    frame.resize(3 + 1000, b'A');
    let mut stalled = Vec::with_capacity(N);
    for i in 0..N {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&frame).unwrap();
        stalled.push(s);
        if i % 100 == 99 {
            // A round trip through the loop, which also lets it drain its accept queue.
            scrape(metrics);
            scrapes += 1.0;
        }
    }
    // Until indexd has read every byte they sent (its counter of received bytes), bounded.
    let sent = (N * frame.len()) as f64;
    let deadline = Instant::now() + LIMIT;
    let text = loop {
        let text = scrape(metrics);
        scrapes += 1.0;
        if received(&text) >= bytes_before + sent + scrapes * SCRAPE_BYTES {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "indexd did not read what was sent"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let held = buffers(&text) - buffers_before;
    let rss_after = vm_rss_kib(pid);
    eprintln!(
        "{N} connections each stalled 1,003 bytes into a 1 MiB frame: input buffers \
         {buffers_before} -> {} bytes, indexd VmRSS {rss_before} -> {rss_after} KiB",
        buffers(&text)
    );
    // Each holds room for what it sent and 64 KiB more, not for the 1 MiB it claims.
    let per_conn = frame.len() + (64 << 10);
    assert!(
        held <= (N * per_conn) as f64,
        "{held} bytes of input buffers for {N} stalled frames"
    );
    assert!(
        rss_after < rss_before + (N * per_conn / 1024) as u64,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(honest.search() < Duration::from_secs(1));
    drop(stalled);
}

#[test]
fn idle_connections_and_slowloris_writers_are_reclaimed_while_honest_peers_are_served() {
    raise_fds();
    // Every attacker connects from 127.0.0.1: lift the per-address limit to reach the
    // timeouts (the limit alone would refuse all but 256 of them).
    let indexd = Indexd::start(&["--idle-timeout", "1", "--max-connections-per-ip", "0"]);
    let mut honest = Honest::join(indexd.addr);
    const IDLE: usize = 3000;
    const SLOW: usize = 50;
    let start = Instant::now();
    // The attackers connect on a thread of their own; the honest peer searches after every
    // 100 of them (the connector waits for that round trip, which also lets the index drain its
    // accept queue) and at least every 100 ms, so it stays under the idle timeout even while a
    // connect stalls (on a loaded machine a full accept queue delays one by a SYN
    // retransmission, a whole second). The peak is sampled with each search: opening them all
    // may take longer than the idle timeout, and the first are then reclaimed before the last
    // arrive.
    let addr = indexd.addr;
    let (progress_tx, progress) = std::sync::mpsc::channel();
    let (searched, searched_rx) = std::sync::mpsc::channel::<()>();
    let connector = std::thread::spawn(move || {
        let idle: Vec<TcpStream> = (0..IDLE)
            .map(|i| {
                if i % 100 == 0 {
                    let _ = progress_tx.send(false);
                    let _ = searched_rx.recv();
                }
                TcpStream::connect(addr).unwrap()
            })
            .collect();
        // Slowloris: a frame header announcing 100 bytes, then one byte now and then. Partial
        // frames are not activity, so the idle timeout reclaims these too.
        let slow: Vec<TcpStream> = (0..SLOW)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&[100]).unwrap();
                s
            })
            .collect();
        let _ = progress_tx.send(true);
        (idle, slow)
    });
    let mut worst = Duration::ZERO;
    let mut peak = 0;
    loop {
        // The connector's word ends the wait at once: `false` after each 100 (it waits for
        // this search), `true` once all are connected (or its end: the join reports a panic).
        // Else the honest peer searches after 100 ms anyway.
        let hundred_more = match progress.recv_timeout(Duration::from_millis(100)) {
            Ok(false) => true,
            Err(RecvTimeoutError::Timeout) => false,
            Ok(true) | Err(RecvTimeoutError::Disconnected) => break,
        };
        worst = worst.max(honest.search());
        peak = peak.max(honest.stats().connections);
        if hundred_more {
            let _ = searched.send(());
        }
        assert!(start.elapsed() < LIMIT, "connecting took over {LIMIT:?}");
    }
    let (mut idle, mut slow) = connector.join().expect("the attackers connect");
    let opened = start.elapsed();
    // While they are all there (and the slow ones keep dribbling), the honest peer is answered
    // promptly; it searches every 100 ms. The 100 ms is the pace of the attack and of the
    // honest peer; the loop ends when the stats show every attacker reclaimed, which is
    // polled: the index has no way to tell a client that it reclaimed other connections (each
    // attacker's own EOF is checked below). Bounded by 20 s.
    let mut slow_cut;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        worst = worst.max(honest.search());
        let stats = honest.stats();
        peak = peak.max(stats.connections);
        slow_cut = 0;
        for s in &mut slow {
            if s.write_all(b"x").is_err() {
                slow_cut += 1;
            }
        }
        if stats.connections == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections not reclaimed: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let reclaimed = start.elapsed();
    eprintln!(
        "{IDLE} idle + {SLOW} slowloris connections: opened in {opened:?}, peak {peak} \
         connections, all reclaimed after {reclaimed:?}; worst honest search {worst:?}"
    );
    assert!(peak >= (IDLE + SLOW) as u64 / 2, "peak {peak}");
    assert!(
        worst < Duration::from_millis(500),
        "honest search took {worst:?}"
    );
    // The server closed them: reads see EOF or a reset, without a word (no busy refusal).
    eprintln!("{slow_cut} of {SLOW} slowloris writes already failed");
    for s in idle.iter_mut().step_by(100).chain(slow.iter_mut()) {
        s.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
        let mut b = [0u8; 16];
        let r = s.read(&mut b);
        assert!(
            matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut),
            "still open: {r:?}"
        );
    }
    assert!(honest.search() < Duration::from_millis(500));
}

#[test]
fn at_max_connections_new_ones_are_refused_with_busy_and_the_loop_keeps_serving() {
    let indexd = Indexd::start(&["--max-connections", "20"]);
    let mut honest = Honest::join(indexd.addr);
    let holders: Vec<Client> = (0..19).map(|i| Client::hello(indexd.addr, i).0).collect();
    let t = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..300 {
        let mut c = Client::connect(indexd.addr);
        match c.recv() {
            Some(r) => match r.body {
                ResponseBody::Error {
                    code: ErrorCode::Busy,
                    ..
                } => {}
                other => panic!("{other:?}"),
            },
            None => panic!("refused connection {i} closed without a busy frame"),
        }
        assert!(c.is_closed_by_server());
        if i % 30 == 0 {
            worst = worst.max(honest.search());
        }
    }
    eprintln!(
        "300 connections refused at the cap in {:?}; worst honest search {worst:?}",
        t.elapsed()
    );
    assert!(worst < Duration::from_millis(500));
    assert_eq!(honest.stats().connections, 20);
    // Room again once someone leaves.
    for h in holders {
        h.leave();
    }
    assert_eq!(honest.stats().connections, 1);
    let (mut c, _) = Client::hello(indexd.addr, 1);
    assert_eq!(c.call(RequestBody::Ping), ResponseBody::Pong);
}

#[test]
fn absurd_but_well_formed_requests_are_answered_and_harm_no_one() {
    let indexd = Indexd::start(&[]);
    let mut honest = Honest::join(indexd.addr);

    // A register batch as big as the 1 MiB frame limit allows.
    let (mut bulk, _) = Client::hello(indexd.addr, 9001);
    let n = 20_000u32;
    let files: Vec<FileEntry> = (0..n)
        .map(|i| {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_le_bytes());
            h[31] = 0xb1;
            FileEntry {
                hash: FileHash(h),
                size: u64::from(i),
                name: format!("bulk {i:05}.dat"),
            }
        })
        .collect();
    let payload = wire::to_payload(&wire::Request {
        id: 1,
        body: RequestBody::Register {
            files: files.clone(),
        },
    });
    assert!(payload.len() < 1 << 20 && payload.len() > 900 << 10);
    let t = Instant::now();
    match bulk.call(RequestBody::Register { files }) {
        ResponseBody::Registered {
            added, rejected, ..
        } => assert_eq!((added, rejected), (n, 0)),
        other => panic!("{other:?}"),
    }
    eprintln!(
        "register of {n} files in one {} KiB frame: {:?}",
        payload.len() >> 10,
        t.elapsed()
    );
    match bulk.call(RequestBody::Search {
        query: "bulk".into(),
        limit: u32::MAX,
        filter: Default::default(),
        after: None,
    }) {
        // The server caps the result count whatever the client asks.
        ResponseBody::SearchResults { hits, next, .. } => {
            assert_eq!(hits.len(), 100);
            assert!(next.is_some());
        }
        other => panic!("{other:?}"),
    }

    // Empty, enormous and control-character names: the first two are refused, the last is a
    // legal Linux name and is indexed (and found by exact name).
    let odd = "bell\u{7}\u{1b}[31mred\r\r\nline".to_string();
    let files = vec![
        FileEntry {
            hash: FileHash::of(b"empty name"),
            size: 1,
            name: String::new(),
        },
        FileEntry {
            hash: FileHash::of(b"enormous name"),
            size: 1,
            name: "n".repeat(64 << 10),
        },
        FileEntry {
            hash: FileHash::of(b"odd name"),
            size: 1,
            name: odd.clone(),
        },
    ];
    match bulk.call(RequestBody::Register { files }) {
        ResponseBody::Registered {
            added, rejected, ..
        } => assert_eq!((added, rejected), (1, 2)),
        other => panic!("{other:?}"),
    }
    match bulk.call(RequestBody::Lookup {
        key: LookupKey::Name(odd),
        after: None,
    }) {
        ResponseBody::Holders { files, .. } => assert_eq!(files.len(), 1),
        other => panic!("{other:?}"),
    }

    // A huge query of 100,000 words, within the frame limit: answered, and quickly.
    let query = "bulk ".repeat(100_000);
    let t = Instant::now();
    match bulk.call(RequestBody::Search {
        query,
        limit: 10,
        filter: Default::default(),
        after: None,
    }) {
        ResponseBody::SearchResults { .. } | ResponseBody::Error { .. } => {}
        other => panic!("{other:?}"),
    }
    let slow_query = t.elapsed();
    eprintln!("search of 100,000 words: {slow_query:?}");
    assert!(slow_query < Duration::from_secs(2), "{slow_query:?}");

    // Unregister of hashes this peer never registered: someone else's and unknown ones.
    let (mut thief, _) = Client::hello(indexd.addr, 9002);
    let mut hashes = vec![honest.hash];
    hashes.extend((0..1000u32).map(|i| FileHash::of(&i.to_le_bytes())));
    match thief.call(RequestBody::Unregister { hashes }) {
        ResponseBody::Unregistered { removed, total } => assert_eq!((removed, total), (0, 0)),
        other => panic!("{other:?}"),
    }
    assert!(honest.search() < Duration::from_secs(1));

    // Lookups of unknown hashes, prefixes and names: NotFound (or Invalid), connection kept.
    for key in [
        LookupKey::Hash(FileHash([0x42; 32])),
        LookupKey::HashPrefix("deadbeefdeadbeef".into()),
        LookupKey::HashPrefix("xyz".into()),
        LookupKey::Name("no such file".into()),
        LookupKey::Name(String::new()),
    ] {
        match thief.call(RequestBody::Lookup {
            key: key.clone(),
            after: None,
        }) {
            ResponseBody::Error {
                code: ErrorCode::NotFound | ErrorCode::Invalid,
                ..
            } => {}
            other => panic!("{key:?}: {other:?}"),
        }
    }
    assert_eq!(thief.call(RequestBody::Ping), ResponseBody::Pong);

    // A peer announcing port 0 serves nothing: it may search but not register.
    let (mut portless, observed) = Client::hello(indexd.addr, 0);
    assert_eq!(observed.port(), 0);
    let files = vec![FileEntry {
        hash: FileHash::of(b"portless"),
        size: 8,
        name: "portless.txt".into(),
    }];
    match portless.call(RequestBody::Register { files }) {
        ResponseBody::Error {
            code: ErrorCode::Invalid,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        portless.call(RequestBody::Search {
            query: "honest".into(),
            limit: 0,
            filter: Default::default(),
            after: None,
        }),
        ResponseBody::SearchResults { .. }
    ));

    // A second hello on a ready session is refused and closes only that session.
    let (mut twice, _) = Client::hello(indexd.addr, 9003);
    match twice.call(RequestBody::Hello {
        version: PROTOCOL_VERSION,
        listen_port: 1,
        agent: String::new(),
    }) {
        ResponseBody::Error {
            code: ErrorCode::NotReady,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(twice.is_closed_by_server());

    // Everyone's entries are still there; the bulk peer's go when it leaves.
    let stats = honest.stats();
    assert_eq!(stats.files, 1 + u64::from(n) + 1, "{stats:?}");
    bulk.leave();
    // It leaves every answer at once (peers), and its entries in slices over the next turns.
    assert_eq!(honest.stats().peers, stats.peers - 1);
    let deadline = std::time::Instant::now() + common::IO_TIMEOUT;
    while honest.stats().files != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bulk entries stayed"
        );
    }
    assert!(honest.search() < Duration::from_secs(1));
}

/// Sends one range request to a holder; returns its answer and the raw bytes (proof, then
/// data) that followed.
fn get(
    holder: SocketAddr,
    version: u16,
    hash: FileHash,
    size: u64,
    groups: std::ops::Range<u64>,
) -> (TransferResponse, Vec<u8>) {
    let mut s = TcpStream::connect(holder).unwrap();
    s.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
    let mut out = Vec::new();
    wire::encode_frame(
        &TransferRequest::Range {
            version,
            hash,
            size,
            first: groups.start,
            end: groups.end,
        },
        &mut out,
    );
    s.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let mut dec = Decoder::default();
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(d) = dec.decode(&buf).unwrap() {
            let resp: TransferResponse = wire::decode(&buf[d.payload.clone()]).unwrap();
            let mut rest = buf[d.consumed..].to_vec();
            if let TransferResponse::Sending { size, first, end } = resp {
                let data = p2pshare::peer::outboard::group_bytes(size, first..end);
                let proof = p2pshare::peer::outboard::proof_len(size, first..end).unwrap();
                while (rest.len() as u64) < proof as u64 + data.end - data.start {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => rest.extend_from_slice(&chunk[..n]),
                    }
                }
            } else {
                // An error answer is followed by the holder closing the connection.
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => {}
                    Ok(n) => panic!("{n} bytes after an error answer"),
                }
            }
            return (resp, rest);
        }
        match s.read(&mut chunk) {
            Ok(0) => panic!("holder closed without answering"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("holder did not answer: {e}"),
        }
    }
}

#[test]
fn a_holder_refuses_unknown_hashes_bad_offsets_and_garbage_and_still_serves() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("holder");
    let a = tmp.sub("a");
    let bytes = common::pseudo_random(100_000, 3);
    let h = FileHash::of(&bytes);
    std::fs::write(a.join("served.bin"), &bytes).unwrap();
    let mut holder = ServingPeer::start(&a, indexd.addr);
    holder.wait_registered(1);
    let addr = common::holder_of(indexd.addr, h);

    let refused = |resp: TransferResponse, want: ErrorCode| match resp {
        TransferResponse::Error { code, .. } => assert_eq!(code, want),
        other => panic!("{other:?}"),
    };
    // A hash it never registered (a path-like guess cannot be expressed at all).
    refused(
        get(addr, PROTOCOL_VERSION, FileHash([7; 32]), 100_000, 0..1).0,
        ErrorCode::NotFound,
    );
    // Another size than it shares (a claim of another file with the same hash).
    refused(
        get(addr, PROTOCOL_VERSION, h, 100_001, 0..1).0,
        ErrorCode::NotFound,
    );
    // Past the end, empty, reversed, and absurd ranges.
    #[allow(clippy::reversed_empty_ranges)]
    let ranges = [7..8, 3..3, 5..2, 0..u64::MAX, u64::MAX - 1..u64::MAX];
    for groups in ranges {
        refused(
            get(addr, PROTOCOL_VERSION, h, 100_000, groups).0,
            ErrorCode::Invalid,
        );
    }
    // Another protocol version.
    refused(
        get(addr, 999, h, 100_000, 0..1).0,
        ErrorCode::VersionMismatch,
    );
    // Garbage and HTTP are closed.
    for bytes in [
        common::pseudo_random(10_000, 4),
        b"GET /etc/passwd HTTP/1.0\r\n\r\n".to_vec(),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        }
    }
    // The last group (short), with its proof, verifies against the hash.
    let (resp, rest) = get(addr, PROTOCOL_VERSION, h, 100_000, 6..7);
    assert_eq!(
        resp,
        TransferResponse::Sending {
            size: 100_000,
            first: 6,
            end: 7,
        }
    );
    let proof = p2pshare::peer::outboard::proof_len(100_000, 6..7).unwrap();
    let mut v =
        p2pshare::peer::outboard::RangeVerifier::new(h, 100_000, 6..7, &rest[..proof]).unwrap();
    v.handle_data(&rest[proof..], &mut |_, _| Ok(())).unwrap();
    assert!(v.is_complete());
    assert!(rest[proof..] == bytes[6 * 16384..]);
    // And the whole file in one request.
    let (resp, rest) = get(addr, PROTOCOL_VERSION, h, 100_000, 0..7);
    assert!(matches!(
        resp,
        TransferResponse::Sending {
            size: 100_000,
            first: 0,
            end: 7,
        }
    ));
    let proof = p2pshare::peer::outboard::proof_len(100_000, 0..7).unwrap();
    assert!(rest[proof..] == bytes);
}

/// Connects to a holder without asking anything; returns what it sends before closing.
fn refused_by(holder: SocketAddr) -> TransferResponse {
    let mut s = TcpStream::connect(holder).unwrap();
    s.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .expect("a busy answer, then the close");
    let d = Decoder::default()
        .decode(&buf)
        .unwrap()
        .expect("one whole frame");
    assert_eq!(d.consumed, buf.len(), "nothing after the answer");
    wire::decode(&buf[d.payload]).unwrap()
}

#[test]
fn a_holder_at_its_upload_limits_answers_busy_and_serves_again_when_one_leaves() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("busy-holder");
    let bytes = common::pseudo_random(50_000, 6);
    let h = FileHash::of(&bytes);
    // One holder limits uploads per address, another in all; both take two.
    for (dir, flags, says) in [
        ("per-ip", ["--max-uploads-per-ip", "2"], "your address"),
        ("all", ["--max-uploads", "2"], "holder busy"),
    ] {
        let d = tmp.sub(dir);
        std::fs::write(d.join("served.bin"), &bytes).unwrap();
        let mut holder = ServingPeer::start_with(&d, indexd.addr, &flags);
        holder.wait_registered(1);
        // Its own address, not the index's first holder: the previous holder may still be
        // listed (the index learns of its death from its socket's close, when it may).
        let addr = holder.addr;
        let mut idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
        match refused_by(addr) {
            TransferResponse::Error {
                code: ErrorCode::Busy,
                message,
            } => assert!(message.contains(says), "{message}"),
            other => panic!("{other:?}"),
        }
        // One slot freed (the holder has closed it once we see its close): an honest
        // download gets the whole file.
        common::leave(&mut idle.pop().unwrap());
        let (resp, rest) = get(addr, PROTOCOL_VERSION, h, 50_000, 0..4);
        assert!(
            matches!(resp, TransferResponse::Sending { .. }),
            "the slot did not come back: {resp:?}"
        );
        let proof = p2pshare::peer::outboard::proof_len(50_000, 0..4).unwrap();
        assert!(rest[proof..] == bytes);
    }
}

#[test]
fn malicious_holders_are_dropped_for_the_next_one() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("malicious");
    let a = tmp.sub("a");
    let bytes = common::pseudo_random(1 << 20, 11);
    let h = FileHash::of(&bytes);
    std::fs::write(a.join("real.bin"), &bytes).unwrap();
    let entry = FileEntry {
        hash: h,
        size: bytes.len() as u64,
        name: "real.bin".into(),
    };
    let mut real = ServingPeer::start(&a, indexd.addr);
    real.wait_registered(1);
    for how in [
        Fake::WrongSize,
        Fake::WrongOffset,
        Fake::Garbage,
        Fake::Refuses,
        Fake::NotAResponse,
    ] {
        // Registered once `start` returns (the index answered its register).
        let fake = FakeHolder::start(indexd.addr, entry.clone(), bytes.clone(), how);
        let n = common::holder_number(indexd.addr, h, fake.addr);
        let b = tmp.sub(&format!("{how:?}"));
        let t = Instant::now();
        let what = format!("{how:?}");
        common::get_from_holder_saves_only(&b, indexd.addr, h, n, LIMIT, "real.bin", &bytes, &what);
        // Dropped at once, not after the 15 s stall timeout.
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{how:?}: {:?}",
            t.elapsed()
        );
        // Gone before the next fake's number is taken.
        fake.leave();
    }
}

/// The partial file a download of `hash` writes into `dir`.
fn part_path(dir: &Path, hash: FileHash) -> std::path::PathBuf {
    dir.join(format!(".{hash}.p2pshare-part"))
}

#[test]
fn a_downloader_killed_mid_transfer_fetches_only_the_missing_pieces_after_a_restart() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("killed");
    let a = tmp.sub("a");
    let b = tmp.sub("b");
    let bytes = common::pseudo_random(2 << 20, 12);
    let h = FileHash::of(&bytes);
    let size = bytes.len() as u64;
    let entry = FileEntry {
        hash: h,
        size,
        name: "resumed.bin".into(),
    };
    // The only holder at first serves 4 pieces of 256 KiB (64 groups), then stalls: the
    // transfer is reliably "mid".
    let fake = FakeHolder::start(indexd.addr, entry, bytes.clone(), Fake::ServesThenHangs(64));
    let mut downloader = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_peer"))
            .args(common::peer_args(&b, indexd.addr))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Stdin stays open: the peer waits on the stalled holder until it is killed.
    downloader
        .0
        .stdin
        .as_mut()
        .unwrap()
        .write_all(format!("get {h}\n").as_bytes())
        .unwrap();
    let record = p2pshare::peer::swarm::record_path(&b, &h);
    let piece = p2pshare::peer::swarm::Config::default().piece_bytes;
    // Polled: nothing announces that the record was written (the downloader prints no
    // progress without a terminal). Bounded by LIMIT.
    let deadline = Instant::now() + LIMIT;
    loop {
        use p2pshare::peer::swarm::{Loaded, ResumeRecord};
        if let Ok(Loaded::Intact(set)) = ResumeRecord::load(&record, &h, size, piece) {
            if set.count() == 4 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no resume record of 4 pieces appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    downloader.0.kill().unwrap();
    downloader.0.wait().unwrap();
    assert!(!b.join("resumed.bin").exists());
    // The fake leaves (for sure: the index answered its unregister); a real holder appears;
    // the restarted downloader fetches the 4 missing pieces only.
    fake.leave();
    std::fs::write(a.join("resumed.bin"), &bytes).unwrap();
    let mut real = ServingPeer::start(&a, indexd.addr);
    real.wait_registered(1);
    let run = common::get(&b, indexd.addr, h);
    assert!(
        run.stderr
            .contains("resuming resumed.bin at 1048576 of 2097152 bytes"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("resumed.bin: 1048576 bytes fetched from 1 holder"),
        "{run:?}"
    );
    assert!(std::fs::read(b.join("resumed.bin")).unwrap() == bytes);
    assert!(!part_path(&b, h).exists() && !record.exists());
}

#[test]
fn a_full_disk_fails_the_download_clearly_and_keeps_the_partial_for_resume() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("diskfull");
    let a = tmp.sub("a");
    let b = tmp.sub("b");
    let bytes = common::pseudo_random(3 << 20, 13);
    let h = FileHash::of(&bytes);
    std::fs::write(a.join("big.bin"), &bytes).unwrap();
    let mut holder = ServingPeer::start(&a, indexd.addr);
    holder.wait_registered(1);
    // The downloader may write files of at most 1 MiB: its write fails with EFBIG (it ignores
    // SIGXFSZ, which would otherwise kill it) as on a full disk.
    let limit = 1u64 << 20;
    let mut child = Command::new("prlimit")
        .arg(format!("--fsize={limit}"))
        .arg(env!("CARGO_BIN_EXE_peer"))
        .args(common::peer_args(&b, indexd.addr))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs the peer with a file-size limit");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("get {h}\nstatus\n").as_bytes())
        .unwrap();
    let out = common::output_within(child, LIMIT).expect("the peer finishes");
    // The get failed (exit status 1), the peer did not die of SIGXFSZ.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("cannot write the download") && stderr.contains("kept for resume"),
        "stderr: {stderr}"
    );
    eprintln!(
        "file-size limit: {}",
        stderr
            .lines()
            .find(|l| l.contains("cannot write"))
            .unwrap_or("")
    );
    // The status after the failure still runs: the peer survived.
    assert!(stdout.contains("index: connected"), "stdout: {stdout}");
    assert!(!stdout.contains("saved "), "stdout: {stdout}");
    assert!(
        !b.join("big.bin").exists(),
        "a truncated file under the final name"
    );
    assert_eq!(std::fs::metadata(part_path(&b, h)).unwrap().len(), limit);
    // Room again: the next run resumes where the disk filled up.
    let run = common::get(&b, indexd.addr, h);
    assert!(
        run.stderr.contains("resuming big.bin at 1048576"),
        "{run:?}"
    );
    assert!(std::fs::read(b.join("big.bin")).unwrap() == bytes);
}

#[test]
fn indexd_killed_under_100_peers_gets_everything_back_after_restart() {
    const PEERS: usize = 100;
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut indexd = Indexd::start_on(&listen, &[]);
    let tmp = TempDir::new("restart100");
    let mut peers: Vec<ServingPeer> = (0..PEERS)
        .map(|i| {
            let dir = tmp.sub(&format!("p{i}"));
            std::fs::write(dir.join(format!("fault {i:03}.txt")), format!("peer {i}")).unwrap();
            ServingPeer::start(&dir, indexd.addr)
        })
        .collect();
    // Every peer says when the index answered its register; once all have, one look at the
    // index must find every file.
    let all_seen = |peers: &mut [ServingPeer], index: SocketAddr| -> Duration {
        let t = Instant::now();
        for p in peers.iter_mut() {
            p.wait_registered(1);
        }
        let took = t.elapsed();
        let (mut c, _) = Client::hello(index, 0);
        match c.call(RequestBody::Stats) {
            ResponseBody::Stats(s) => assert_eq!(s.files, PEERS as u64, "{s:?}"),
            other => panic!("{other:?}"),
        }
        match c.call(RequestBody::Search {
            query: "fault".into(),
            limit: 0,
            filter: Default::default(),
            after: None,
        }) {
            ResponseBody::SearchResults { hits, .. } => assert_eq!(hits.len(), PEERS),
            other => panic!("{other:?}"),
        }
        took
    };
    let first = all_seen(&mut peers, indexd.addr);
    indexd.child.kill().unwrap();
    indexd.child.wait().unwrap();
    let t = Instant::now();
    let indexd = Indexd::start_on(&listen, &[]);
    let again = all_seen(&mut peers, indexd.addr);
    let total = t.elapsed();
    eprintln!(
        "{PEERS} peers: all registered {first:?} after start; after SIGKILL and restart, \
         all re-registered and searchable in {total:?} ({again:?} after indexd was up)"
    );
    assert!(total < LIMIT);
    drop(peers);
}

#[test]
fn fuzz_seed_corpora_replay_cleanly() {
    // The committed seeds (fuzz/corpus/TARGET/seed-*) through the same helpers the fuzz
    // targets call, so the helpers themselves stay correct without cargo-fuzz.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    type Helper = fn(&[u8]);
    let targets: [(&str, Helper); 5] = [
        ("codec", p2pshare::codec::fuzz_chunks),
        ("wire", p2pshare::wire::fuzz_decode),
        ("index_server", p2pshare::index::server::fuzz_sessions),
        ("console", p2pshare::peer::console::fuzz_parse),
        ("sanitize", p2pshare::peer::names::fuzz_sanitize),
    ];
    for (target, run) in targets {
        let mut n = 0;
        for e in std::fs::read_dir(root.join(target)).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("seed-") {
                run(&std::fs::read(e.path()).unwrap());
                n += 1;
            }
        }
        assert!(n >= 10, "{target}: only {n} seeds");
    }
}

/// Measures how many idle connections one indexd holds while an honest client's lookups stay
/// fast: opens hello'd connections in steps and times 2,000 lookups at each step. Quoted in
/// README ("Figures"; earlier runs in docs/MEASUREMENTS.md). Run with
/// `cargo test --release --test it -- --ignored --nocapture hostile::measure`.
#[test]
#[ignore]
fn measure_connection_capacity() {
    let fds = raise_fds();
    let steps = [1_000usize, 5_000, 10_000, 15_000, 19_000];
    let indexd = Indexd::start(&[
        "--max-connections",
        "19500",
        "--idle-timeout",
        "0",
        "--max-connections-per-ip",
        "0",
    ]);
    let pid = indexd.child.id();
    let mut honest = Honest::join(indexd.addr);
    let hash = honest.hash;
    let mut held: Vec<Client> = Vec::new();
    println!(
        "fd limit {fds}; indexd VmRSS at start {} KiB",
        vm_rss_kib(pid)
    );
    println!("| connections | lookup p50 | p99 | max | indexd VmRSS |");
    println!("|---|---|---|---|---|");
    for &n in &steps {
        if n + 64 > fds as usize {
            println!("(stopping: {n} connections need more than {fds} fds)");
            break;
        }
        while held.len() + 1 < n {
            held.push(Client::hello(indexd.addr, 1000).0);
        }
        let mut us: Vec<u64> = (0..2000)
            .map(|_| {
                let t = Instant::now();
                match honest.client.call(RequestBody::Lookup {
                    key: LookupKey::Hash(hash),
                    after: None,
                }) {
                    ResponseBody::Holders { .. } => {}
                    other => panic!("{other:?}"),
                }
                t.elapsed().as_micros() as u64
            })
            .collect();
        us.sort_unstable();
        let stats = honest.stats();
        assert_eq!(stats.connections as usize, held.len() + 1);
        println!(
            "| {} | {} µs | {} µs | {} µs | {} MiB |",
            stats.connections,
            us[us.len() / 2],
            us[us.len() * 99 / 100],
            us[us.len() - 1],
            vm_rss_kib(pid) / 1024
        );
    }
}

/// The measurement of README's crowded-name figure (in "Figures"): 400,000 files called
/// `copyright`, the first page of its lookup timed from another client, every page walked,
/// then 20 connections that pipeline lookups of it and never read.
/// `cargo test --release --test it -- --ignored --nocapture hostile::measure_crowded`.
#[test]
#[ignore]
fn measure_crowded_name_lookup() {
    const FILES: u32 = 400_000;
    let indexd = Indexd::start(&["--max-connections-per-ip", "0"]);
    let pid = indexd.child.id();
    let (mut owner, _) = Client::hello(indexd.addr, 1000);
    let started = Instant::now();
    for chunk in (0..FILES).collect::<Vec<_>>().chunks(8_000) {
        let files = chunk
            .iter()
            .map(|i| FileEntry {
                hash: FileHash::of(&i.to_le_bytes()),
                size: u64::from(*i),
                name: "copyright".into(),
            })
            .collect();
        match owner.call(RequestBody::Register { files }) {
            ResponseBody::Registered { rejected: 0, .. } => {}
            other => panic!("register: {other:?}"),
        }
    }
    // A second holder for the first 1,000: they rank first.
    let (mut second, _) = Client::hello(indexd.addr, 1001);
    let files = (0..1_000u32)
        .map(|i| FileEntry {
            hash: FileHash::of(&i.to_le_bytes()),
            size: u64::from(i),
            name: "copyright".into(),
        })
        .collect();
    second.call(RequestBody::Register { files });
    println!(
        "{FILES} files registered in {:.1} s; indexd VmRSS {} KiB",
        started.elapsed().as_secs_f64(),
        vm_rss_kib(pid)
    );
    let (mut c, _) = Client::hello(indexd.addr, 0);
    let lookup = |after| RequestBody::Lookup {
        key: LookupKey::Name("copyright".into()),
        after,
    };
    let mut us = Vec::new();
    let mut bytes = 0;
    for _ in 0..200 {
        let t = Instant::now();
        let id = c.send(lookup(None));
        let payload = c.recv_payload().expect("answer");
        us.push(t.elapsed().as_micros() as u64);
        bytes = payload.len();
        let r: p2pshare::wire::Response = p2pshare::wire::decode(&payload).unwrap();
        assert_eq!(r.id, id);
        assert!(
            matches!(r.body, ResponseBody::Holders { ref files, total, .. }
            if files.len() == 100 && total == u64::from(FILES) && files[0].holder_count == 2)
        );
    }
    us.sort_unstable();
    println!(
        "first page: {bytes} bytes; round trip p50 {} µs, p99 {} µs, max {} µs",
        us[us.len() / 2],
        us[us.len() * 99 / 100],
        us[us.len() - 1]
    );
    let t = Instant::now();
    let (mut pages, mut seen, mut after) = (0, 0, None);
    loop {
        match c.call(lookup(after)) {
            ResponseBody::Holders { files, next, .. } => {
                pages += 1;
                seen += files.len();
                match next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, FILES as usize);
    println!(
        "all {pages} pages in {:.2} s ({:.0} µs a page)",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_micros() as f64 / f64::from(pages)
    );
    let rss = vm_rss_kib(pid);
    let mut lazy: Vec<Client> = (0..20).map(|_| Client::hello(indexd.addr, 0).0).collect();
    let mut burst = Vec::new();
    for i in 0..2_000u32 {
        let req = p2pshare::wire::Request {
            id: i,
            body: lookup(None),
        };
        p2pshare::wire::encode_frame(&req, &mut burst);
    }
    for l in &mut lazy {
        l.send_raw(&burst).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "20 connections × 2,000 pipelined lookups, unread: indexd VmRSS {rss} → {} KiB",
        vm_rss_kib(pid)
    );
    let t = Instant::now();
    for l in &mut lazy {
        l.stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
    }
    let stats = match c.call(RequestBody::Stats) {
        ResponseBody::Stats(s) => s,
        other => panic!("{other:?}"),
    };
    println!(
        "loop pauses: max {} µs, p99 {} µs, p99.9 {} µs over {} turns",
        stats.loop_max_pause_us,
        stats.loop_p99_pause_us,
        stats.loop_p999_pause_us,
        stats.loop_turns
    );
    loop {
        let open = match c.call(RequestBody::Stats) {
            ResponseBody::Stats(s) => s.connections,
            other => panic!("{other:?}"),
        };
        if open <= 3 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{open} still open");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "the 20 closed {:.1} s later; indexd VmRSS {} KiB",
        t.elapsed().as_secs_f64(),
        vm_rss_kib(pid)
    );
}

/// Names of a corpus file (one a line), as the bench reads them: decoded as the peer decodes
/// its own (lossy UTF-8), and the lines the index would refuse (empty, over 1,024 bytes, with
/// `/` or NUL) skipped; at most `n`.
pub(crate) fn corpus_names(path: &Path, n: usize) -> Vec<String> {
    use std::io::BufRead;
    let file = std::io::BufReader::new(std::fs::File::open(path).expect("the names file"));
    let mut names = Vec::with_capacity(n);
    for line in file.split(b'\n') {
        if names.len() == n {
            break;
        }
        let line = line.expect("read the names file");
        let name = String::from_utf8_lossy(&line);
        if name.is_empty() || name.len() > 1_024 || name.contains(['/', '\0']) {
            continue;
        }
        names.push(name.into_owned());
    }
    names
}

/// p50, p99 and max of `us`, in µs, as text (`-` for none).
fn spread(us: &mut [u64]) -> String {
    if us.is_empty() {
        return "-".into();
    }
    us.sort_unstable();
    format!(
        "n {} p50 {} µs, p99 {} µs, max {} µs",
        us.len(),
        us[us.len() / 2],
        us[(us.len() * 99 / 100).min(us.len() - 1)],
        us[us.len() - 1]
    )
}

/// The loop's pauses and refusals from `Stats`, as text.
fn pauses(s: &wire::ServerStats) -> String {
    format!(
        "loop max {} µs, p99 {} µs, p99.9 {} µs over {} turns; rate_limited {}, bans {}, \
         banned_connections {}",
        s.loop_max_pause_us,
        s.loop_p99_pause_us,
        s.loop_p999_pause_us,
        s.loop_turns,
        s.rate_limited,
        s.bans,
        s.banned_connections
    )
}

fn stats_of(c: &mut Client) -> wire::ServerStats {
    match c.call(RequestBody::Stats) {
        ResponseBody::Stats(s) => s,
        other => panic!("{other:?}"),
    }
}

/// Copies indexd's work trace (when `P2PSHARE_WORK_TRACE` is set) to `TRACE.STEP`, once it
/// has been written after `since` (it is written at most once a second, at a turn's end:
/// the Stats calls make turns).
fn keep_trace(c: &mut Client, step: &str) {
    let Some(path) = std::env::var_os("P2PSHARE_WORK_TRACE") else {
        return;
    };
    // Past the trace's once-a-second write, then a turn that writes it.
    std::thread::sleep(Duration::from_millis(1_100));
    stats_of(c);
    std::thread::sleep(Duration::from_millis(100));
    let mut to = path.clone();
    to.push(format!(".{step}"));
    if std::fs::copy(&path, &to).is_ok() {
        println!("work trace after {step}: {}", to.to_string_lossy());
    }
}

/// How often [`honest_loop`] searches.
const HONEST_SEARCH_EVERY: Duration = Duration::from_millis(20);

/// An honest client's closed loop (one request at a time) until `stop`: lookups by hash of
/// `hashes` back to back (free under indexd's limits), and a search of `queries` every
/// [`HONEST_SEARCH_EVERY`] (a closed loop of searches of real names would spend its session's
/// search budget: this one stays well within it). Told to wait (`RateLimited`), it waits as
/// told. Returns each op's start (since `t0`), kind and round trip in µs, and how many were
/// refused.
fn honest_loop(
    addr: SocketAddr,
    hashes: Vec<FileHash>,
    queries: Vec<String>,
    t0: Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (Vec<(u64, bool, u64)>, u64) {
    let (mut c, _) = Client::hello(addr, 0);
    let (mut ops, mut refused) = (Vec::new(), 0);
    let (mut k, mut next_search) = (0usize, Duration::ZERO);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let search = t0.elapsed() >= next_search;
        if search {
            next_search = t0.elapsed() + HONEST_SEARCH_EVERY;
        }
        let body = if search {
            RequestBody::Search {
                query: queries[k % queries.len()].clone(),
                limit: 0,
                filter: Default::default(),
                after: None,
            }
        } else {
            RequestBody::Lookup {
                key: LookupKey::Hash(hashes[k % hashes.len()]),
                after: None,
            }
        };
        let at = t0.elapsed();
        let answer = c.call(body);
        let took = t0.elapsed() - at;
        match answer {
            ResponseBody::SearchResults { .. } | ResponseBody::Holders { .. } => {}
            ResponseBody::RateLimited { retry_after_ms, .. } => {
                refused += 1;
                std::thread::sleep(Duration::from_millis(retry_after_ms.min(1_000)));
            }
            other => panic!("honest: {other:?}"),
        }
        ops.push((at.as_micros() as u64, search, took.as_micros() as u64));
        k += 1;
    }
    c.leave();
    (ops, refused)
}

/// Issue 12's "tried as an attacker would", re-run as the issue wrote them, against an
/// indexd holding `ATTACK_NAMES` (default 1,050,000) real names of `P2PSHARE_NAMES` (default
/// /work/corpus/names.txt), registered over the wire by 105 sessions from 127.0.0.1. indexd
/// runs with its defaults (flags from `ATTACK_INDEXD_FLAGS`, space-separated, added; the
/// binary from `ATTACK_INDEXD`, to compare another build's, else this build's); with
/// `P2PSHARE_WORK_TRACE=FILE` it writes its work trace, copied after each attack.
/// (i) from 127.0.0.2, one write of 550 pipelined zero-hit searches (14 one-letter prefixes,
///     each with a second word nothing matches) while an honest client on 127.0.0.1 looks up
///     and searches back to back: its latencies before and during, the abuser's answers by
///     kind, the loop's pauses;
/// (ii) from 127.0.0.3, one session registers 100,000 entries under one 1,000-byte name; 1 KB
///     lookups of it (answer size, round trip); then 20 connections from 127.0.0.3 that each
///     pipeline 1,000 such lookups and never read: indexd's RSS, and when they are closed;
/// (iii) from 127.0.0.4, 400,000 entries named `copyright`; a real `peer` sharing one file
///     types `lookup copyright`, `get copyright`, then searches its own file: its session
///     survives (asserted: its own file found after both, no lost session).
///
/// `cargo test --release --test it -- --ignored --nocapture hostile::measure_issue12_attacks`
#[test]
#[ignore]
fn measure_issue12_attacks() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let path = std::env::var("P2PSHARE_NAMES").unwrap_or("/work/corpus/names.txt".into());
    let count: usize = std::env::var("ATTACK_NAMES").map_or(1_050_000, |n| n.parse().unwrap());
    let flags = std::env::var("ATTACK_INDEXD_FLAGS").unwrap_or_default();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let bin = std::env::var_os("ATTACK_INDEXD").unwrap_or(env!("CARGO_BIN_EXE_indexd").into());
    let (indexd, index_addr, metrics) =
        crate::ops::indexd_with_metrics_from(&bin, &flags, common::IO_TIMEOUT);
    let pid = indexd.0.id();
    println!(
        "indexd {}, flags: defaults {flags:?}",
        bin.to_string_lossy()
    );
    let hosts: Vec<std::net::IpAddr> = (1..=4).map(|i| [127, 0, 0, i].into()).collect();

    // The index: `count` real names, 10,000 a session (105 sessions at 1.05M), in frames of
    // 1,000, ten frames in flight.
    let names = corpus_names(Path::new(&path), count);
    let hash_of = |i: usize| FileHash::of(format!("corpus file {i}").as_bytes());
    let started = Instant::now();
    let mut owners = Vec::new();
    for (s, session) in names.chunks(10_000).enumerate() {
        let (mut owner, _) = Client::hello(index_addr, 1_000 + s as u16);
        let mut ids = Vec::new();
        for (f, frame) in session.chunks(1_000).enumerate() {
            let files = frame
                .iter()
                .enumerate()
                .map(|(j, name)| {
                    let i = s * 10_000 + f * 1_000 + j;
                    FileEntry {
                        hash: hash_of(i),
                        size: 1_000 + (i as u64 * 7_919) % 50_000_000,
                        name: name.clone(),
                    }
                })
                .collect();
            ids.push(owner.send(RequestBody::Register { files }));
        }
        for id in ids {
            let r = owner.recv().expect("register answer");
            assert_eq!(r.id, id);
            assert!(
                matches!(r.body, ResponseBody::Registered { .. }),
                "{:?}",
                r.body
            );
        }
        owners.push(owner);
    }
    let mut watch = Client::hello(index_addr, 0).0;
    let before = stats_of(&mut watch);
    println!(
        "{} names of {path} registered in {:.1} s by {} sessions: {} files; indexd VmRSS {} KiB",
        names.len(),
        started.elapsed().as_secs_f64(),
        owners.len(),
        before.files,
        vm_rss_kib(pid)
    );
    println!("after loading: {}", pauses(&before));
    keep_trace(&mut watch, "loaded");

    // (i) The honest client's queries: the first two words (of 3+ letters) of real names.
    let mut queries = Vec::new();
    for name in names.iter().step_by(997) {
        let words: Vec<&str> = name
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| w.chars().count() >= 3)
            .take(2)
            .collect();
        if words.len() == 2 {
            queries.push(words.join(" "));
        }
    }
    let hashes: Vec<FileHash> = (0..names.len()).step_by(1_009).map(hash_of).collect();
    let mut burst = Vec::new();
    let letters = [
        "s", "m", "p", "r", "c", "t", "h", "a", "d", "1", "e", "b", "g", "i",
    ];
    for k in 0..550u32 {
        let req = wire::Request {
            id: k + 1,
            body: RequestBody::Search {
                query: format!("{} zqxvjwkqpfzv{k:04}", letters[k as usize % letters.len()]),
                limit: 0,
                filter: Default::default(),
                after: None,
            },
        };
        wire::encode_frame(&req, &mut burst);
    }
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let honest = {
        let (addr, stop) = (index_addr, stop.clone());
        std::thread::spawn(move || honest_loop(addr, hashes, queries, t0, stop))
    };
    std::thread::sleep(Duration::from_secs(2));
    let (mut abuser, _) = Client::hello_from(index_addr, hosts[1], 0);
    let wrote_at = t0.elapsed();
    abuser.send_raw(&burst).unwrap();
    let mut answers = [0u32; 4]; // searched (with hits), searched (none), rate limited, banned
    for _ in 0..550 {
        match abuser.recv().map(|r| r.body) {
            Some(ResponseBody::SearchResults { hits, .. }) => {
                answers[usize::from(hits.is_empty())] += 1;
            }
            Some(ResponseBody::RateLimited { banned: false, .. }) => answers[2] += 1,
            Some(ResponseBody::RateLimited { banned: true, .. }) => {
                answers[3] += 1;
                break;
            }
            Some(other) => panic!("abuser: {other:?}"),
            None => break,
        }
    }
    let done_at = t0.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (ops, refused) = honest.join().unwrap();
    let after = stats_of(&mut watch);
    println!(
        "(i) one write of {} bytes, 550 zero-hit searches, from {}: answered {} (with hits {}), \
         rate limited {}, banned {}; all answered {:.1} ms after the write",
        burst.len(),
        hosts[1],
        answers[0] + answers[1],
        answers[0],
        answers[2],
        answers[3],
        (done_at - wrote_at).as_secs_f64() * 1e3
    );
    let (w, d) = (wrote_at.as_micros() as u64, done_at.as_micros() as u64);
    for (phase, during) in [("before the write", false), ("while it was served", true)] {
        for (kind, search) in [("lookup", false), ("search", true)] {
            let mut us: Vec<u64> = ops
                .iter()
                .filter(|(at, s, took)| {
                    *s == search
                        && if during {
                            at + took >= w && *at <= d
                        } else {
                            at + took < w
                        }
                })
                .map(|o| o.2)
                .collect();
            println!("    honest {kind} {phase}: {}", spread(&mut us));
        }
    }
    println!("    honest requests refused: {refused}");
    println!("    indexd after (i): {}", pauses(&after));
    drop(abuser);
    keep_trace(&mut watch, "attack-i");

    // (ii) 100,000 entries under one 1,000-byte name, from one session.
    let long_name = format!("{}.bin", "w".repeat(996));
    let (mut squatter, _) = Client::hello_from(index_addr, hosts[2], 2_000);
    let started = Instant::now();
    let (mut added, mut rejected, mut refused) = (0u64, 0u64, 0u64);
    let mut ids = Vec::new();
    let numbers: Vec<u32> = (0..100_000).collect();
    let chunks: Vec<&[u32]> = numbers.chunks(900).collect();
    for (k, chunk) in chunks.iter().enumerate() {
        let files = chunk
            .iter()
            .map(|i| FileEntry {
                hash: FileHash::of(format!("long name {i}").as_bytes()),
                size: u64::from(*i) + 1,
                name: long_name.clone(),
            })
            .collect();
        ids.push(squatter.send(RequestBody::Register { files }));
        // Eight frames in flight, then their answers (and the last ones' after the last).
        if ids.len() == 8 || k + 1 == chunks.len() {
            for id in ids.drain(..) {
                let r = squatter.recv().expect("register answer");
                assert_eq!(r.id, id);
                match r.body {
                    ResponseBody::Registered {
                        added: a,
                        rejected: r,
                        ..
                    } => (added, rejected) = (added + u64::from(a), rejected + u64::from(r)),
                    ResponseBody::RateLimited { .. } => refused += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
    }
    let s = stats_of(&mut watch);
    println!(
        "(ii) 100,000 entries named {} bytes, one session from {}: added {added}, rejected \
         {rejected}, register frames refused {refused}, in {:.2} s; index {} files; indexd \
         VmRSS {} KiB",
        long_name.len(),
        hosts[2],
        started.elapsed().as_secs_f64(),
        s.files,
        vm_rss_kib(pid)
    );
    println!("    indexd after the register: {}", pauses(&s));
    keep_trace(&mut watch, "attack-ii-register");
    let lookup = |after| RequestBody::Lookup {
        key: LookupKey::Name(long_name.clone()),
        after,
    };
    let mut one = Vec::new();
    wire::encode_frame(
        &wire::Request {
            id: 1,
            body: lookup(None),
        },
        &mut one,
    );
    let (mut looker, _) = Client::hello(index_addr, 0);
    let (mut us, mut bytes, mut total) = (Vec::new(), 0, 0);
    for _ in 0..50 {
        let t = Instant::now();
        looker.send(lookup(None));
        let payload = looker.recv_payload().expect("answer");
        us.push(t.elapsed().as_micros() as u64);
        bytes = payload.len();
        if let ResponseBody::Holders {
            files, total: t, ..
        } = wire::decode::<wire::Response>(&payload).unwrap().body
        {
            total = t;
            assert!(files.len() <= 100);
        }
    }
    println!(
        "    a lookup of that name ({} bytes a request): answer {bytes} bytes (total {total}); \
         round trip {}",
        one.len(),
        spread(&mut us)
    );
    println!(
        "    indexd after the lookups: {}",
        pauses(&stats_of(&mut watch))
    );
    keep_trace(&mut watch, "attack-ii-lookups");
    let rss = vm_rss_kib(pid);
    let hwm_reset = reset_peak_rss(pid);
    println!("    before the 20: {}", buffer_report(metrics));
    let mut burst = Vec::new();
    for i in 0..1_000u32 {
        let req = wire::Request {
            id: i + 1,
            body: lookup(None),
        };
        wire::encode_frame(&req, &mut burst);
    }
    let mut lazy: Vec<Client> = (0..20)
        .map(|_| Client::hello_from(index_addr, hosts[2], 0).0)
        .collect();
    let mut written = 0usize;
    for l in &mut lazy {
        // indexd stops reading a parked connection: write what the socket takes in 1 s.
        l.stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut at = 0;
        while at < burst.len() {
            match l.stream.write(&burst[at..]) {
                Ok(n) => at += n,
                Err(_) => break,
            }
        }
        written += at;
    }
    std::thread::sleep(Duration::from_secs(2));
    let peak = vm_rss_kib(pid);
    println!(
        "    2 s after the writes: {}; VmHWM since before the 20 {}",
        buffer_report(metrics),
        if hwm_reset {
            format!("{} KiB", vm_hwm_kib(pid))
        } else {
            "unknown (clear_refs refused)".into()
        }
    );
    let s = stats_of(&mut watch);
    println!(
        "    20 connections pipelining 1,000 such lookups each, never reading ({} KB written \
         in all): indexd VmRSS {rss} → {peak} KiB (+{} KiB, {} KiB a connection); {}",
        written / 1_000,
        peak.saturating_sub(rss),
        peak.saturating_sub(rss) / 20,
        pauses(&s)
    );
    let t = Instant::now();
    loop {
        let open = stats_of(&mut watch).connections;
        if open <= owners.len() as u64 + 3 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(150), "{open} still open");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "    the 20 closed by indexd {:.1} s later (measured from 2 s after the writes); \
         indexd VmRSS {} KiB, VmHWM {}; {}",
        t.elapsed().as_secs_f64(),
        vm_rss_kib(pid),
        if hwm_reset {
            format!("{} KiB", vm_hwm_kib(pid))
        } else {
            "unknown".into()
        },
        buffer_report(metrics)
    );
    drop(lazy);
    keep_trace(&mut watch, "attack-ii");

    // (iii) 400,000 entries named `copyright`; a real peer looks the name up and gets it.
    let (mut crowd, _) = Client::hello_from(index_addr, hosts[3], 3_000);
    let started = Instant::now();
    let mut ids = Vec::new();
    for chunk in (0..400_000u32).collect::<Vec<_>>().chunks(8_000) {
        let files = chunk
            .iter()
            .map(|i| FileEntry {
                hash: FileHash::of(format!("copyright {i}").as_bytes()),
                size: u64::from(*i) + 1,
                name: "copyright".into(),
            })
            .collect();
        ids.push(crowd.send(RequestBody::Register { files }));
    }
    for id in ids {
        let r = crowd.recv().expect("register answer");
        assert_eq!(r.id, id);
        assert!(
            matches!(r.body, ResponseBody::Registered { rejected: 0, .. }),
            "{:?}",
            r.body
        );
    }
    println!(
        "(iii) 400,000 entries named copyright from {} in {:.1} s; indexd VmRSS {} KiB",
        hosts[3],
        started.elapsed().as_secs_f64(),
        vm_rss_kib(pid)
    );
    let dir = TempDir::new("attack-copyright");
    std::fs::write(
        dir.path().join("honest_zebrafinch_song.txt"),
        b"an honest file",
    )
    .unwrap();
    let started = Instant::now();
    let run = common::run_console(
        dir.path(),
        index_addr,
        &[],
        common::Input::Pipe("lookup copyright\nget copyright\nsearch zebrafinch\n"),
        Duration::from_secs(60),
    );
    println!(
        "    a real peer typed `lookup copyright`, `get copyright`, `search zebrafinch` \
         ({:.2} s in all, exit {:?}); it printed {} lines, {} bytes",
        started.elapsed().as_secs_f64(),
        run.code,
        run.stdout.lines().count(),
        run.stdout.len()
    );
    for l in run
        .stdout
        .lines()
        .chain(run.stderr.lines())
        .filter(|l| !l.ends_with(" copyright") && !l.starts_with("  "))
    {
        println!("      | {l}");
    }
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(!all.contains("exceeds the limit"), "{all}");
    assert!(!all.contains("connection was lost"), "{all}");
    assert!(!all.contains("unreachable"), "{all}");
    assert!(
        run.stdout.contains("honest_zebrafinch_song.txt"),
        "its own file, found after the lookups: {all}"
    );
    println!("    indexd at the end: {}", pauses(&stats_of(&mut watch)));
    keep_trace(&mut watch, "attack-iii");
}
