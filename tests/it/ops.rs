//! Operations (issue 13, cases 10 and 11): IPv6 end to end over `::1` (an index on IPv6 with
//! an IPv6 holder; a dual-stack index with an IPv4 and an IPv6 peer downloading from each
//! other), the `--metrics` endpoints of both binaries (values move, `promtool check metrics`
//! accepts the text when it is installed, a real Prometheus server scrapes indexd), and the
//! timestamps of log lines.

use crate::common::*;
use p2pshare::wire::{FileHash, LookupKey, RequestBody, ResponseBody};
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Whether this host has IPv6 on loopback; if not, says why the test is skipped.
fn has_ipv6_loopback(test: &str) -> bool {
    match TcpListener::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            eprintln!("{test}: skipped: no IPv6 on loopback ([::1]:0: {e})");
            false
        }
    }
}

/// A `peer --serve` on `share` with the index given as `index` and the file server left at
/// its default listen address.
fn serving_peer_default_listen(share: &std::path::Path, index: &str) -> ServingPeer {
    ServingPeer::start_args(vec![
        "--share".into(),
        share.as_os_str().to_owned(),
        "--index".into(),
        index.into(),
    ])
}

/// The holders the index at `index` lists for `hash`.
fn holders(index: SocketAddr, hash: FileHash) -> Vec<SocketAddr> {
    let (mut c, _) = Client::hello(index, 0);
    match c.call(RequestBody::Lookup {
        key: LookupKey::Hash(hash),
        after: None,
    }) {
        ResponseBody::Holders { files, .. } => files[0].holders.clone(),
        other => panic!("{other:?}"),
    }
}

/// A console peer sharing `dir`, the index given as `index` (text), file server at its
/// default, whose one command is `get TARGET`.
fn console_get(dir: &std::path::Path, index: &str, target: impl std::fmt::Display) -> ConsoleRun {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args::<[OsString; 4], OsString>([
            "--share".into(),
            dir.as_os_str().to_owned(),
            "--index".into(),
            index.into(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn peer");
    let mut w = child.stdin.take().unwrap();
    w.write_all(format!("get {target}\n").as_bytes()).unwrap();
    drop(w);
    match output_within(child, Duration::from_secs(60)) {
        Ok(out) => ConsoleRun {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
            code: out.status.code(),
        },
        Err(out) => panic!("console peer did not finish: {out:?}"),
    }
}

fn share_one(dir: &TempDir, sub: &str, name: &str, seed: u64) -> (std::path::PathBuf, Vec<u8>) {
    let share = dir.sub(sub);
    let bytes = pseudo_random(100_000, seed);
    std::fs::write(share.join(name), &bytes).unwrap();
    (share, bytes)
}

#[test]
fn an_index_on_ipv6_hands_out_an_ipv6_holder_that_serves() {
    if !has_ipv6_loopback("an_index_on_ipv6_hands_out_an_ipv6_holder_that_serves") {
        return;
    }
    let index = Indexd::start_on("[::1]:0", &[]);
    assert!(index.addr.is_ipv6(), "{}", index.addr);
    let dir = TempDir::new("ops-v6");
    let (share, bytes) = share_one(&dir, "holder", "six.bin", 6);
    // The holder's file server at its default: on main it listened on 0.0.0.0 only, and every
    // download from the IPv6 address the index handed out was refused.
    let mut holder = serving_peer_default_listen(&share, &index.addr.to_string());
    holder.wait_registered(1);
    let hash = FileHash(*blake3::hash(&bytes).as_bytes());
    let listed = holders(index.addr, hash);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].ip(), "::1".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(listed[0].port(), holder.addr.port());
    let getter = dir.sub("getter");
    let run = console_get(&getter, &index.addr.to_string(), hash);
    assert!(run.success && run.stdout.contains("saved "), "{run:?}");
    assert_eq!(std::fs::read(getter.join("six.bin")).unwrap(), bytes);
}

#[test]
fn a_dual_stack_index_lets_ipv4_and_ipv6_peers_download_from_each_other() {
    if !has_ipv6_loopback("a_dual_stack_index_lets_ipv4_and_ipv6_peers_download_from_each_other") {
        return;
    }
    let index = Indexd::start_on("[::]:0", &[]);
    let port = index.addr.port();
    let (via4, via6) = (format!("127.0.0.1:{port}"), format!("[::1]:{port}"));
    let dir = TempDir::new("ops-dual");
    let (share4, bytes4) = share_one(&dir, "four", "four.bin", 4);
    let (share6, bytes6) = share_one(&dir, "six", "six.bin", 6);
    let mut peer4 = serving_peer_default_listen(&share4, &via4);
    let mut peer6 = serving_peer_default_listen(&share6, &via6);
    peer4.wait_registered(1);
    peer6.wait_registered(1);
    let (hash4, hash6) = (
        FileHash(*blake3::hash(&bytes4).as_bytes()),
        FileHash(*blake3::hash(&bytes6).as_bytes()),
    );
    // The IPv4 peer is handed out as plain IPv4, not as [::ffff:127.0.0.1].
    let index4: SocketAddr = via4.parse().unwrap();
    assert_eq!(
        holders(index4, hash4),
        vec![SocketAddr::from(([127, 0, 0, 1], peer4.addr.port()))]
    );
    assert_eq!(
        holders(index4, hash6),
        vec![SocketAddr::from((
            std::net::Ipv6Addr::LOCALHOST,
            peer6.addr.port()
        ))]
    );
    // An IPv4 peer gets the IPv6 peer's file, and an IPv6 peer the IPv4 peer's.
    let getter4 = dir.sub("getter4");
    let run = console_get(&getter4, &via4, hash6);
    assert!(run.success && run.stdout.contains("saved "), "{run:?}");
    assert_eq!(std::fs::read(getter4.join("six.bin")).unwrap(), bytes6);
    let getter6 = dir.sub("getter6");
    let run = console_get(&getter6, &via6, hash4);
    assert!(run.success && run.stdout.contains("saved "), "{run:?}");
    assert_eq!(std::fs::read(getter6.join("four.bin")).unwrap(), bytes4);
}

/// An `indexd --metrics 127.0.0.1:0` child, and its metrics address (its second stdout line).
fn indexd_with_metrics() -> (KillOnDrop, SocketAddr, SocketAddr) {
    indexd_with_metrics_and(&[], IO_TIMEOUT)
}

/// indexd with `--metrics` and `extra` flags, its first line awaited for up to `limit`:
/// the guard, the peers' address, the metrics address.
pub(crate) fn indexd_with_metrics_and(
    extra: &[&str],
    limit: Duration,
) -> (KillOnDrop, SocketAddr, SocketAddr) {
    indexd_with_metrics_from(env!("CARGO_BIN_EXE_indexd").as_ref(), extra, limit)
}

/// [`indexd_with_metrics_and`] with the indexd binary at `bin` (a measurement may run
/// another build's, to compare).
pub(crate) fn indexd_with_metrics_from(
    bin: &std::ffi::OsStr,
    extra: &[&str],
    limit: Duration,
) -> (KillOnDrop, SocketAddr, SocketAddr) {
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"])
        .args(["--log", "warn"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn indexd");
    let stdout = child.stdout.take().unwrap();
    let guard = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        for _ in 0..2 {
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
        }
    });
    let addr = |prefix: &str| -> SocketAddr {
        let line = rx.recv_timeout(limit).expect("indexd's lines in time");
        line.trim()
            .strip_prefix(prefix)
            .map(|a| a.trim_end_matches("/metrics"))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line from indexd: {line:?}"))
    };
    let index = addr("indexd listening on ");
    let metrics = addr("indexd metrics on http://");
    (guard, index, metrics)
}

/// Sends `request` to `addr` and reads the whole answer (the server closes after it).
fn http_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub(crate) fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `series` (name with labels, exactly as printed) in `text`.
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Pipes `text` to `promtool check metrics` when promtool is installed.
pub(crate) fn promtool_accepts(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not installed: metrics text not validated by it");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = output_within(child, Duration::from_secs(30)).expect("promtool in time");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn indexd_metrics_move_with_requests_and_pass_promtool() {
    let (_indexd, index, metrics) = indexd_with_metrics();
    let before = scrape(metrics);
    promtool_accepts(&before);
    let lookups = "p2pshare_index_requests_total{kind=\"lookup\"}";
    assert_eq!(sample(&before, lookups), 0.0);
    assert_eq!(sample(&before, "p2pshare_index_rate_limited_total"), 0.0);
    assert!(sample(&before, "process_resident_memory_bytes") > 0.0);
    let (mut c, _) = Client::hello(index, 0);
    let answer = c.call(RequestBody::Lookup {
        key: LookupKey::Hash(FileHash([7; 32])),
        after: None,
    });
    assert!(matches!(answer, ResponseBody::Error { .. }), "{answer:?}");
    let after = scrape(metrics);
    promtool_accepts(&after);
    assert_eq!(sample(&after, lookups), 1.0);
    assert_eq!(
        sample(&after, "p2pshare_index_errors_total{kind=\"not_found\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "p2pshare_index_request_duration_seconds_count{kind=\"lookup\"}"
        ),
        1.0
    );
    assert_eq!(sample(&after, "p2pshare_index_sessions"), 1.0);
    assert!(sample(&after, "p2pshare_index_received_bytes_total") > 0.0);
    assert!(sample(&after, "p2pshare_index_loop_pause_seconds_count") > 0.0);
    // Other paths are 404, garbage 400, other methods 405; the server keeps serving.
    assert_eq!(http_exchange(metrics, b"GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http_exchange(metrics, b"\x01\x02 junk\r\n\r\n").0, 400);
    assert_eq!(
        http_exchange(metrics, b"DELETE /metrics HTTP/1.1\r\n\r\n").0,
        405
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    assert_eq!(http_exchange(metrics, &huge).0, 431);
    assert_eq!(c.call(RequestBody::Ping), ResponseBody::Pong);
    scrape(metrics);
}

#[test]
fn peer_metrics_count_shares_and_uploads_and_pass_promtool() {
    let index = Indexd::start(&[]);
    let dir = TempDir::new("ops-peer-metrics");
    let (share, bytes) = share_one(&dir, "holder", "m.bin", 11);
    let mut holder = ServingPeer::start_with(&share, index.addr, &["--metrics", "127.0.0.1:0"]);
    let line = holder.wait_line("its metrics address", IO_TIMEOUT, |l| {
        l.starts_with("peer: metrics on http://")
    });
    let metrics: SocketAddr = line
        .trim_start_matches("peer: metrics on http://")
        .trim_end_matches("/metrics")
        .parse()
        .unwrap();
    holder.wait_registered(1);
    let before = scrape(metrics);
    promtool_accepts(&before);
    assert_eq!(sample(&before, "p2pshare_peer_shared_files"), 1.0);
    assert_eq!(
        sample(&before, "p2pshare_peer_index_session{state=\"ready\"}"),
        1.0
    );
    assert_eq!(sample(&before, "p2pshare_peer_uploads_total"), 0.0);
    let hash = FileHash(*blake3::hash(&bytes).as_bytes());
    let getter = dir.sub("getter");
    let run = get(&getter, index.addr, hash);
    assert!(run.success && run.stdout.contains("saved "), "{run:?}");
    let after = scrape(metrics);
    promtool_accepts(&after);
    assert_eq!(sample(&after, "p2pshare_peer_uploads_total"), 1.0);
    assert_eq!(
        sample(&after, "p2pshare_peer_upload_file_bytes_total"),
        bytes.len() as f64
    );
    assert!(sample(&after, "p2pshare_peer_sent_bytes_total") >= bytes.len() as f64);
}

#[test]
fn a_real_prometheus_scrapes_indexd() {
    if Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("a_real_prometheus_scrapes_indexd: skipped: prometheus is not installed");
        return;
    }
    let (_indexd, _, metrics) = indexd_with_metrics();
    let dir = TempDir::new("ops-prometheus");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: indexd\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.sub("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus"),
    );
    // Poll its query API a bounded number of times until the target is up.
    let query = b"GET /api/v1/query?query=up%7Bjob%3D%22indexd%22%7D HTTP/1.0\r\n\r\n";
    let mut last = String::new();
    for _ in 0..120 {
        if let Ok(mut s) = TcpStream::connect(web) {
            s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            let _ = s.write_all(query);
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.contains("\"result\":[{") && answer.contains(",\"1\"]") {
                return;
            }
            last = answer;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("prometheus never saw indexd up; its last answer:\n{last}");
}

#[test]
fn log_lines_carry_timestamps() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_indexd"))
        .args(["--listen", "127.0.0.1:0", "--log", "info"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn indexd");
    let stderr = child.stderr.take().unwrap();
    let _guard = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stderr).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(IO_TIMEOUT).expect("a log line in time");
    // `[2026-11-30T19:06:32.940Z INFO  indexd] listening on ...`
    let stamp = line.get(1..25).unwrap_or_default();
    let b = stamp.as_bytes();
    assert!(
        stamp.len() == 24
            && b[4] == b'-'
            && b[10] == b'T'
            && b[19] == b'.'
            && b[23] == b'Z'
            && stamp[..4].chars().all(|c| c.is_ascii_digit()),
        "{line:?}"
    );
}
