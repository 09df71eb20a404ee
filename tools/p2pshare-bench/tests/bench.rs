//! The bench binary end to end, small: it starts its own indexd, runs, and writes every
//! output, its ratios all against each run's own floor, and judges the targets; `--peers N`
//! sweeps 1..=N; the saturation mode runs; the transfer mode downloads between real peers and
//! cleans up after itself, with or without nginx installed; files can be pre-populated with
//! several holders each; an indexd that refuses the bench's sessions is reported as such.

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
    let r = bench(&out, &["--ops", "20,5,20", "--peers", "2"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
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
    ] {
        let meta = std::fs::metadata(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(meta.len() > 0, "{f} is empty");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(json["prerun_floor_us"]["p50"].as_f64().unwrap() > 0.0);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["peers"], 1);
    assert_eq!(runs[1]["peers"], 2);
    assert_eq!(runs[1]["ops"]["search"]["count"], 40);
    assert_eq!(runs[1]["ops"]["register"]["count"], 10);
    assert_eq!(runs[1]["ops"]["lookup"]["errors"], 0);
    assert!(runs[1]["ops_per_s"].as_f64().unwrap() > 0.0);
    // One floor: the ratios divide by the run's own floor, the pings interleaved with its ops.
    for run in runs {
        let floor = run["floor_p50_us"].as_f64().unwrap();
        assert!(floor > 0.0);
        assert_eq!(run["floor"]["p50_us"].as_f64().unwrap(), floor);
        // One ping after each op of each peer.
        let ops: u64 = ["search", "register", "lookup"]
            .iter()
            .map(|op| run["ops"][*op]["count"].as_u64().unwrap())
            .sum();
        assert_eq!(run["floor"]["count"].as_u64().unwrap(), ops);
        let p50 = run["ops"]["lookup"]["p50_us"].as_f64().unwrap();
        let ratio = run["p50_over_floor"]["lookup"].as_f64().unwrap();
        assert!(
            (ratio - p50 / floor).abs() < 0.006,
            "{ratio} vs {p50} / {floor}"
        );
    }
    // The targets are judged at 1 peer.
    let targets = json["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for t in targets {
        assert_eq!(t["peers"], 1);
        assert_eq!(t["max_p50_over_floor"], 1.15);
        assert!(t["met"].is_boolean(), "{t}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Targets"), "{md}");
    assert!(md.contains("lookup p50 ≤ 1.15 × floor at 1 peer"), "{md}");
    assert!(md.contains("| 2 | *floor* | 90 |"), "{md}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn saturation_mode_counts_answers() {
    let out = temp_dir("sat");
    // With two holders per pre-populated file: 2 fake peers registering 2,000 files each.
    let r = bench(
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
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert!(json["saturation"]["ops"].as_u64().unwrap() > 0);
    assert_eq!(json["saturation"]["errors"], 0);
    assert_eq!(json["holders_per_prepopulated_file"], 2);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn transfer_times_real_downloads_and_cleans_up() {
    let out = temp_dir("transfer");
    let r = bench(&out, &["--transfer", "8M", "--repeats", "1"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
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
