//! The bench binary end to end, small: it starts its own indexd, runs, and writes every
//! output, its ratios all against each run's own floor, and judges the targets; `--peers N`
//! sweeps 1..=N; the saturation mode runs; the transfer mode downloads between real peers and
//! cleans up after itself, with or without nginx installed; files can be pre-populated with
//! several holders each; an indexd that refuses the bench's sessions is reported as such;
//! a names file populates the index and its searches are reported per query class; the abuse
//! mode times an honest client with and without an abuser; the cluster mode runs its phases
//! on 3 nats-servers and 4 indexd nodes (skipped without `nats-server`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `indexd` and `peer` binaries, built from the current sources.
///
/// They belong to the `p2pshare` package, so cargo gives this package's tests no
/// `CARGO_BIN_EXE_*` path for them, and looking beside this test's executable would find them
/// missing or stale when only this package is tested (`cargo test -p p2pshare-bench`). So the
/// test asks cargo to build them, with the profile and into the target directory this test
/// was built with (a no-op after `cargo test` at the root, which built them already), and
/// takes their paths from cargo's own JSON messages: right whatever `CARGO_TARGET_DIR`,
/// `--target-dir` or profile is in use.
fn servers() -> &'static (PathBuf, PathBuf) {
    static SERVERS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    SERVERS.get_or_init(|| {
        // CARGO_TARGET_TMPDIR is <target dir>/tmp; this executable is <target dir>/[<triple>/]
        // <profile dir>/deps/<name>, and the dev profile's directory is named `debug`.
        let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
        let exe = std::env::current_exe().unwrap();
        let profile = match exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
        {
            Some(dir) if dir == "debug" => "dev".to_string(),
            Some(dir) => dir.to_string_lossy().into_owned(),
            None => "dev".to_string(),
        };
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "--package",
                "p2pshare",
                "--bins",
                "--profile",
                &profile,
            ])
            .args(["--message-format", "json-render-diagnostics"])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(target_dir)
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build of indexd and peer failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut bins = [None, None];
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let msg: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let Some(path) = msg["executable"].as_str() else {
                continue;
            };
            match msg["target"]["name"].as_str() {
                Some("indexd") => bins[0] = Some(PathBuf::from(path)),
                Some("peer") => bins[1] = Some(PathBuf::from(path)),
                _ => {}
            }
        }
        let [Some(indexd), Some(peer)] = bins else {
            panic!("cargo build named no indexd or peer executable");
        };
        (indexd, peer)
    })
}

fn bench(out: &Path, args: &[&str]) -> std::process::Output {
    let (indexd, peer) = servers();
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--indexd")
        .arg(indexd)
        .arg("--peer")
        .arg(peer)
        .arg("--out")
        .arg(out)
        .args(["--floor-round-trips", "200", "--files", "2000"])
        .args(args)
        .output()
        .expect("run bench")
}

/// Runs the bench with `args`, which must succeed, and returns its stdout and the
/// summary.json it wrote into `out`.
fn bench_summary(out: &Path, args: &[&str]) -> (String, serde_json::Value) {
    let r = bench(out, args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    (
        String::from_utf8_lossy(&r.stdout).into_owned(),
        read_json(out, "summary.json"),
    )
}

/// The JSON file `name` the bench wrote into `out`.
fn read_json(out: &Path, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("p2pshare-bench-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn closed_loop_writes_every_output() {
    let out = temp_dir("closed");
    // A lone count is the sweep 1..=N: runs of 1 and 2 peers.
    let (stdout, json) = bench_summary(&out, &["--ops", "20,5,20", "--peers", "2"]);
    for f in [
        "summary.json",
        "report.md",
        "means.svg",
        "means.png",
        "percentiles.svg",
        "percentiles.png",
        "peers1-search.hgrm",
        "peers2-register.hgrm",
        "peers2-lookup.hgrm",
        "peers1-ping.hgrm",
        "peers2-floor.hgrm",
    ] {
        let meta = std::fs::metadata(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(meta.len() > 0, "{f} is empty");
    }
    assert!(json["prerun_floor_us"]["p50"].as_f64().unwrap() > 0.0);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["peers"], 1);
    assert_eq!(runs[1]["peers"], 2);
    assert_eq!(runs[1]["ops"]["search"]["count"], 40);
    assert_eq!(runs[1]["ops"]["register"]["count"], 10);
    assert_eq!(runs[1]["ops"]["lookup"]["errors"], 0);
    assert!(runs[1]["ops_per_s"].as_f64().unwrap() > 0.0);
    // Within 0.006 of `a / b`: a reported ratio is rounded to 2 decimals.
    let close = |ratio: f64, a: f64, b: f64| {
        assert!(
            b > 0.0 && (ratio - a / b).abs() < 0.006,
            "{ratio} vs {a} / {b}"
        );
    };
    // One floor: the ratios divide by the run's own floor, the pings interleaved with its
    // ops; and indexd's Ping, timed beside it, divides the p50_over_ping ratios.
    for run in runs {
        let floor = run["floor_p50_us"].as_f64().unwrap();
        assert!(floor > 0.0);
        assert_eq!(run["floor"]["p50_us"].as_f64().unwrap(), floor);
        let ping = run["ping_p50_us"].as_f64().unwrap();
        assert!(ping > 0.0);
        assert_eq!(run["ping"]["p50_us"].as_f64().unwrap(), ping);
        assert_eq!(run["ping"]["errors"], 0);
        close(run["ping_over_floor"].as_f64().unwrap(), ping, floor);
        // After each op of each peer: a floor ping, a Ping, a floor ping.
        let ops: u64 = ["search", "register", "lookup"]
            .iter()
            .map(|op| run["ops"][*op]["count"].as_u64().unwrap())
            .sum();
        assert_eq!(run["ping"]["count"].as_u64().unwrap(), ops);
        assert_eq!(run["floor"]["count"].as_u64().unwrap(), 2 * ops);
        for op in ["search", "register", "lookup"] {
            let p50 = run["ops"][op]["p50_us"].as_f64().unwrap();
            close(run["p50_over_floor"][op].as_f64().unwrap(), p50, floor);
            close(run["p50_over_ping"][op].as_f64().unwrap(), p50, ping);
        }
    }
    // The targets are judged at 1 peer: the two on the floor, the proposed two on
    // the Ping, each on the ratio of the run of 1 peer.
    let targets = json["targets"].as_array().unwrap();
    let kinds: Vec<(&str, &str, f64, &str)> = targets
        .iter()
        .map(|t| {
            (
                t["op"].as_str().unwrap(),
                t["over"].as_str().unwrap(),
                t["bound"].as_f64().unwrap(),
                t["origin"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("lookup", "floor", 1.15, "issue 12"),
            ("register", "floor", 1.15, "issue 12"),
            ("lookup", "ping", 1.15, "proposed"),
            ("register", "ping", 1.25, "proposed"),
        ]
    );
    for t in targets {
        assert_eq!(t["peers"], 1);
        let (op, over) = (t["op"].as_str().unwrap(), t["over"].as_str().unwrap());
        let run = &runs[0];
        assert_eq!(t["p50_us"], run["ops"][op]["p50_us"], "{t}");
        assert_eq!(t["over_p50_us"], run[format!("{over}_p50_us")], "{t}");
        let ratio = t["p50_over"].as_f64().unwrap();
        assert_eq!(ratio, run[format!("p50_over_{over}")][op].as_f64().unwrap());
        assert_eq!(t["met"], ratio <= t["bound"].as_f64().unwrap(), "{t}");
        let line = format!(
            "target {op} p50 ≤ {:.2} × {} at 1 peer ({}): {}",
            t["bound"].as_f64().unwrap(),
            if over == "ping" {
                "indexd Ping"
            } else {
                "floor"
            },
            t["origin"].as_str().unwrap(),
            if t["met"] == true { "met" } else { "NOT MET" }
        );
        assert!(stdout.contains(&line), "{line}\n{stdout}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Targets"), "{md}");
    assert!(
        md.contains("| lookup p50 ≤ 1.15 × floor at 1 peer | issue 12 |"),
        "{md}"
    );
    assert!(
        md.contains("| register p50 ≤ 1.25 × indexd Ping at 1 peer | proposed |"),
        "{md}"
    );
    assert!(md.contains("| 2 | *floor* | 180 |"), "{md}");
    assert!(md.contains("| 2 | *Ping* | 90 | 0 |"), "{md}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn saturation_mode_counts_answers() {
    let out = temp_dir("sat");
    // With two holders per pre-populated file: 2 fake peers registering 2,000 files each.
    let (_, json) = bench_summary(
        &out,
        &[
            "--connections",
            "4",
            "--pipeline",
            "4",
            "--duration",
            "0.3",
            "--holders",
            "2",
        ],
    );
    assert!(json["saturation"]["ops"].as_u64().unwrap() > 0);
    assert_eq!(json["saturation"]["errors"], 0);
    assert_eq!(json["holders_per_prepopulated_file"], 2);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn transfer_times_real_downloads_and_cleans_up() {
    let out = temp_dir("transfer");
    let (_, json) = bench_summary(&out, &["--transfer", "8M", "--repeats", "1"]);
    // The stable schema stays valid: the pre-run floor is measured, runs is empty.
    assert!(json["prerun_floor_us"]["p50"].as_f64().unwrap() > 0.0);
    assert_eq!(json["runs"], serde_json::json!([]));
    assert_eq!(json["targets"], serde_json::json!([]));
    let t = &json["transfer"];
    assert_eq!(t["size_bytes"], 8 << 20);
    assert_eq!(t["repeats"], 1);
    assert_eq!(t["file_hash"].as_str().unwrap().len(), 64);
    for series in ["p2pshare", "bare_copy", "bare_copy_without_fsync"] {
        assert_eq!(
            t[series]["mib_per_s"].as_array().unwrap().len(),
            1,
            "{series}"
        );
        assert!(
            t[series]["median_mib_per_s"].as_f64().unwrap() > 0.0,
            "{series}"
        );
    }
    assert!(t["p2pshare_over_bare_copy"].as_f64().unwrap() > 0.0);
    // CI machines may lack nginx or curl: then the comparison is null with a reason.
    if t["curl_nginx"].is_null() {
        assert!(t["curl_nginx_skipped"]
            .as_str()
            .is_some_and(|s| !s.is_empty()));
        assert!(t["p2pshare_over_curl"].is_null());
    } else {
        assert!(t["curl_nginx"]["median_mib_per_s"].as_f64().unwrap() > 0.0);
        assert!(t["p2pshare_over_curl"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(t["concurrent_downloads"], 64);
    assert_eq!(t["bytes_per_concurrent_download"], 8 << 20);
    assert!(t["holder_rss_max_kib_64_downloads"].as_u64().unwrap() > 0);
    assert!(t["holder_vmhwm_kib"].as_u64().unwrap() > 0);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Transfer"));
    assert!(md.contains("--transfer 8M"));
    // The source file, the downloads and nginx's files are gone.
    assert!(!out.join("transfer-work").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn transfer_refuses_a_mixed_mode_and_tiny_files() {
    let out = temp_dir("transfer-bad");
    let r = bench(&out, &["--transfer", "8M", "--connections", "4"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("pick one"));
    let r = bench(&out, &["--transfer", "4K"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("below 1M"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_one_element_peer_list_is_refused() {
    let out = temp_dir("peers-bad");
    let r = bench(&out, &["--peers", "3,"]);
    assert!(!r.status.success());
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("N..N"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn more_holders_than_fake_peers_is_refused() {
    let out = temp_dir("holders-bad");
    // 2,000 files make 2 fake peers: a file cannot have 3 different holders.
    let r = bench(&out, &["--holders", "3"]);
    assert_eq!(r.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("--holders 3"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

/// An `indexd` started by the test with `extra` flags, killed when dropped.
struct Indexd {
    child: std::process::Child,
    addr: String,
}

impl Indexd {
    fn start(extra: &[&str]) -> Indexd {
        use std::io::BufRead;
        let mut child = Command::new(&servers().0)
            .args(["--listen", "127.0.0.1:0", "--log", "warn"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn indexd");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read indexd's address line");
        let addr = line.trim().rsplit(' ').next().unwrap().to_string();
        Indexd { child, addr }
    }
}

impl Drop for Indexd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_index_refusing_sessions_is_named_with_the_flag_that_fixes_it() {
    let out = temp_dir("busy");
    // 2,000 files are pre-populated from 2 sessions and a run adds one: the third session
    // from 127.0.0.1 is over this indexd's per-address limit.
    let indexd = Indexd::start(&["--max-connections-per-ip", "2"]);
    let r = bench(
        &out,
        &["--index", &indexd.addr, "--ops", "5,1,5", "--peers", "1"],
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("too many connections from your address (2)"),
        "{stderr}"
    );
    assert!(stderr.contains("--max-connections-per-ip 0"), "{stderr}");
    assert!(!stderr.contains("arrived for request"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A small names file: real-looking names, a repeated one, one not UTF-8, and two lines the
/// index would refuse (empty, NUL).
fn names_file(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = Vec::new();
    for i in 0..150 {
        text.extend_from_slice(
            format!(
                "{} track {i:02} - live at the {}.flac\nREADME.md\nlib{}_{}.so.{}\n",
                ["Abbey Road", "Blue Train", "Kind of Blue"][i % 3],
                ["Fillmore", "Apollo", "BBC"][i % 3],
                ["foo", "bar", "gtk"][i % 3],
                i,
                i % 7
            )
            .as_bytes(),
        );
    }
    text.extend_from_slice(b"caf\xe9 menu.pdf\n\nbad\0name.txt\n");
    let path = dir.join("names.txt");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn names_file_populates_and_reports_query_classes() {
    let out = temp_dir("names");
    let names = names_file(&out.join("in"));
    // 453 lines, 451 names, grown to the 2,000 files the helper asks for.
    let (stdout, json) = bench_summary(
        &out,
        &[
            "--names",
            names.to_str().unwrap(),
            "--ops",
            "100,2,10",
            "--peers",
            "1",
        ],
    );
    let c = &json["corpus"];
    assert_eq!(c["lines_read"], 453);
    assert_eq!(c["names_read"], 451);
    assert_eq!(c["skipped"], 2);
    assert_eq!(c["not_utf8_decoded"], 1);
    assert_eq!(c["grown_files"], 2000 - 451);
    assert_eq!(c["stats"]["names_counted"], 2000);
    let top = c["stats"]["top_words"].as_array().unwrap();
    assert_eq!(top.len(), 10);
    assert!(top[0]["fraction"].as_f64().unwrap() > 0.2, "{top:?}");
    let run = &json["runs"][0];
    assert_eq!(run["ops"]["search"]["errors"], 0);
    let classes = &run["search_classes"];
    let mut n = 0;
    for class in [
        "one_word",
        "two_words",
        "prefix_1",
        "prefix_3",
        "common_word",
    ] {
        for key in ["count", "p50_us", "p99_us", "max_us"] {
            assert!(classes[class][key].is_number(), "{class}.{key}");
        }
        n += classes[class]["count"].as_u64().unwrap();
    }
    assert_eq!(n, 100, "every search is in one class");
    for label in ["s:1word", "s:2words", "s:pre1", "s:pre3", "s:top10"] {
        assert!(stdout.contains(label), "{stdout}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Corpus"), "{md}");
    assert!(md.contains("### Search by query class"), "{md}");
    assert!(out.join("peers1-search-prefix_1.hgrm").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn abuse_mode_times_the_honest_client_with_and_without_the_abuser() {
    let out = temp_dir("abuse");
    let names = names_file(&out.join("in"));
    let (stdout, json) = bench_summary(
        &out,
        &[
            "--names",
            names.to_str().unwrap(),
            "--abuse",
            "8",
            "--ops",
            "30,5,30",
            "--duration",
            "5",
        ],
    );
    let a = &json["abuse"];
    assert_eq!(a["in_flight"], 8);
    assert_eq!(a["idle"]["search"]["count"], 30);
    assert_eq!(a["idle"]["lookup"]["count"], 30);
    assert_eq!(a["idle"]["search"]["errors"], 0);
    assert!(a["abused"]["search"]["count"].as_u64().unwrap() > 0);
    assert!(a["abuser_answered"].as_u64().unwrap() > 0);
    // Its answers by kind add up, and it came from its own loopback address.
    let k = &a["abuser_answers"];
    let kinds: u64 = ["searched", "looked_up", "rate_limited", "banned", "errors"]
        .iter()
        .map(|f| k[f].as_u64().unwrap())
        .sum();
    assert_eq!(kinds, a["abuser_answered"].as_u64().unwrap());
    assert_eq!(a["abuser_from"], "127.0.0.2");
    assert!(stdout.contains("abuser (from 127.0.0.2)"), "{stdout}");
    // The expensive requests come from the names: one-letter prefixes, words, names.
    let searches = a["abuser_requests"]["searches"].as_array().unwrap();
    assert!(searches
        .iter()
        .any(|s| s.as_str().unwrap().chars().count() == 1));
    assert!(a["abuser_requests"]["lookups"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("README.md")));
    assert!(a["p99_ratio"]["search"].as_f64().unwrap() > 0.0);
    assert!(a["met"].is_boolean());
    assert!(a["banned_before_phase"].is_boolean());
    // The abused phase starts after the abuser's 3 s warm-up.
    assert!(a["abused_phase_s"][0].as_f64().unwrap() >= 3.0, "{a}");
    assert!(a["idle"]["search_classes"]["prefix_1"]["count"].is_number());
    assert!(stdout.contains("abuse: honest lookup"), "{stdout}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Under abuse"), "{md}");
    assert!(
        md.contains("The abuser's answers (it connected from 127.0.0.2)"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// An abuser banned in the warm-up leaves the abused phase without abuse: the run says when
/// the ban came, against the phase, and flags itself, in summary.json, report.md and stdout.
/// indexd runs here with a small budget per address and a quick ban, so the abuser (from
/// 127.0.0.2, its lookups of `README.md` worth about 900 units each) spends the burst in a
/// few hundred requests and is banned at its 50th refusal, long before the phase starts
/// after the 3 s warm-up; the honest client (127.0.0.1: lookups by hash, within the free
/// units, and searches of a 2,000-name index) stays far within its own address's budget.
#[test]
fn abuse_mode_flags_an_abuser_banned_before_the_phase() {
    let out = temp_dir("abuse-banned");
    let names = names_file(&out.join("in"));
    let (indexd, _) = servers();
    let (_indexd, addr) = p2pshare_bench::floor::spawn_listening(
        indexd,
        &[
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--rate-address",
            "100000",
            "--ban-after",
            "50",
        ],
    )
    .expect("start indexd");
    let (stdout, json) = bench_summary(
        &out,
        &[
            "--index",
            &addr.to_string(),
            "--names",
            names.to_str().unwrap(),
            "--abuse",
            "8",
            "--ops",
            "10,0,10",
            "--duration",
            "5",
        ],
    );
    let a = &json["abuse"];
    assert_eq!(a["banned_before_phase"], true, "{a}");
    let banned = a["abuser_banned_s"].as_f64().expect("a ban time");
    let phase_start = a["abused_phase_s"][0].as_f64().unwrap();
    assert!(banned < phase_start, "{a}");
    assert!(
        a["abuser_first_refusal_s"].as_f64().unwrap() <= banned,
        "{a}"
    );
    assert!(a["abuser_answers"]["banned"].as_u64().unwrap() >= 1, "{a}");
    assert!(
        a["abuser_answers"]["rate_limited"].as_u64().unwrap() >= 1,
        "{a}"
    );
    // Nothing of the abuser's during the phase it was meant to load.
    let k = &a["abuser_answers_in_phase"];
    for kind in ["searched", "looked_up", "rate_limited", "banned"] {
        assert_eq!(k[kind], 0, "{a}");
    }
    // The warning says what happened before the phase, as measured: refused, then banned,
    // and closed by indexd if that close was seen before the phase too.
    let at = |key: &str| a[key].as_f64().unwrap();
    let mut words = format!(
        "WARNING: the abuser was refused (first at {:.3} s), banned (at {banned:.3} s)",
        at("abuser_first_refusal_s")
    );
    let mut gone = banned;
    if let Some(closed) = a["abuser_closed_s"].as_f64().filter(|c| *c < phase_start) {
        words.push_str(&format!(" and closed by indexd (at {closed:.3} s)"));
        gone = gone.min(closed);
    }
    words.push_str(&format!(
        ", {:.3} s before the abused phase started",
        phase_start - gone
    ));
    assert!(stdout.contains(&words), "{words}\n{stdout}");
    assert!(!stdout.contains("without a ban"), "{stdout}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains(&words), "{words}\n{md}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn abuse_refuses_other_modes_and_names_must_exist() {
    let out = temp_dir("abuse-bad");
    let r = bench(&out, &["--abuse", "--transfer", "8M"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("pick one"));
    let r = bench(&out, &["--names", "/nonexistent/names.txt"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no such file"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn storm_mode_measures_the_refill_after_a_sigkill() {
    let out = temp_dir("storm");
    let (indexd, _) = servers();
    let r = Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--indexd")
        .arg(indexd)
        .arg("--out")
        .arg(&out)
        .args(["--storm", "40", "--storm-outage", "0"])
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(stdout.contains("whole again"), "{stdout}");
    let json = read_json(&out, "storm.json");
    assert_eq!(json["peers"], 40);
    assert_eq!(json["files"], 4000);
    assert_eq!(json["files_back"], 4000);
    assert!(json["whole_after_s"].as_f64().unwrap() > 0.0);
    assert!(json["lookup"]["count"].as_u64().unwrap() > 0);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn cluster_mode_reports_lag_reads_rebuild_memory_and_both_faults() {
    let present = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
        return;
    }
    let out = temp_dir("cluster");
    let r = bench(
        &out,
        &["--cluster", "--cluster-peers", "10", "--ops", "20,10,20"],
    );
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    for line in [
        "rebuild:",
        "lag:",
        "reads at b:",
        "engine fault",
        "node death",
    ] {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
    let json = read_json(&out, "cluster.json");
    assert_eq!(json["files"], 2000);
    assert!(json["bulk"]["replicated_after_s"].is_number(), "{json}");
    assert_eq!(json["rebuild"]["entries_served"], 2000);
    assert_eq!(json["lag"]["samples"], 10);
    assert_eq!(json["lag"]["not_seen"], 0);
    assert_eq!(json["reads"].as_array().unwrap().len(), 3);
    assert_eq!(json["reads"][1]["lookup"]["count"], 20);
    assert_eq!(json["single_reads"]["search"]["count"], 20);
    assert_eq!(json["memory"].as_array().unwrap().len(), 4);
    assert!(json["memory"][3]["vm_hwm_kb"].as_u64().unwrap() > 0);
    assert!(json["disk"][1]["stream_bytes"].as_u64().unwrap() > 0);
    assert_eq!(json["engine_fault"]["lost"], 0, "{json}");
    let caught_up = json["engine_fault"]["caught_up_s"].as_array().unwrap();
    assert_eq!(caught_up.len(), 4, "{json}");
    assert!(caught_up.iter().all(|n| n[1].is_number()), "{json}");
    assert!(json["engine_fault"]["written"].as_u64().unwrap() > 0);
    assert!(
        json["engine_fault"]["rejoined_after_s"].is_number(),
        "{json}"
    );
    assert_eq!(json["node_death"]["peers"], 10);
    assert!(json["node_death"]["listed_right_s"].is_number(), "{json}");
    assert!(json["node_death"]["whole_s"].is_number(), "{json}");
    assert!(out.join("cluster-logs").join("s0.log").exists());
    let _ = std::fs::remove_dir_all(&out);
}
