//! The console as scripts and programs drive it: `peer --json`, exit statuses, start-up
//! mistakes, with the real binaries on loopback.

use crate::common::{run_console, Indexd, Input, ServingPeer, TempDir};
use p2pshare::wire::FileHash;
use serde_json::Value;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// Every stdout line of a `--json` run, parsed (the test fails on a line that is not one JSON
/// object with a `type`).
fn objects(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}"));
            assert!(v["type"].is_string(), "no type: {l}");
            v
        })
        .collect()
}

fn of_type<'a>(all: &'a [Value], kind: &str) -> Vec<&'a Value> {
    all.iter().filter(|v| v["type"] == kind).collect()
}

#[test]
fn json_gives_every_result_event_and_error_as_one_object_per_line() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("json");
    let a = tmp.sub("a");
    let b = tmp.sub("b");
    let bytes = b"zebra music".to_vec();
    std::fs::write(a.join("Zebra Crossing.flac"), &bytes).unwrap();
    let hash = FileHash::of(&bytes).to_hex();
    let mut holder = ServingPeer::start(&a, indexd.addr);
    holder.wait_registered(1);
    let script = "search zebra\nlookup Zebra Crossing.flac\nget Zebra Crossing.flac\nfiles\n\
                  status\nbogus\nunregister Zebra Crossing.flac\nhelp\n";
    let run = run_console(&b, indexd.addr, &["--json"], Input::Pipe(script), LIMIT);
    let all = objects(&run.stdout);
    assert_eq!(run.code, Some(1), "the bogus command failed: {run:?}");
    // Nothing for people on stderr: notes and errors are objects on stdout too.
    assert_eq!(run.stderr, "", "{run:?}");

    let serving = of_type(&all, "serving");
    assert_eq!(serving.len(), 1, "{all:?}");
    assert!(serving[0]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let sharing = of_type(&all, "sharing");
    assert_eq!(sharing[0]["files"], 0, "{all:?}");

    let search = of_type(&all, "search");
    assert_eq!(search.len(), 1, "{all:?}");
    assert_eq!(search[0]["query"], "zebra");
    assert_eq!(search[0]["hits"][0]["hash"], hash.as_str());
    assert_eq!(search[0]["hits"][0]["size"], bytes.len());
    assert_eq!(search[0]["hits"][0]["holders"], 1);
    assert_eq!(search[0]["hits"][0]["name"], "Zebra Crossing.flac");
    assert_eq!(search[0]["more"], false);

    let lookup = of_type(&all, "lookup");
    assert_eq!(lookup[0]["files"][0]["hash"], hash.as_str());
    assert_eq!(
        lookup[0]["files"][0]["holders"][0],
        holder.addr.to_string().as_str()
    );

    let trying = of_type(&all, "trying");
    assert_eq!(
        trying[0]["holder"],
        holder.addr.to_string().as_str(),
        "{all:?}"
    );
    let saved = of_type(&all, "saved");
    assert_eq!(saved.len(), 1, "{all:?}");
    assert_eq!(saved[0]["hash"], hash.as_str());
    assert_eq!(saved[0]["size"], bytes.len());
    assert!(saved[0]["path"]
        .as_str()
        .unwrap()
        .ends_with("/Zebra Crossing.flac"));
    assert!(saved[0]["seconds"].is_number());

    let files = of_type(&all, "files");
    assert_eq!(files[0]["count"], 1);
    assert_eq!(files[0]["bytes"], bytes.len());
    assert_eq!(files[0]["files"][0]["hash"], hash.as_str());

    let status = of_type(&all, "status");
    assert_eq!(status[0]["index"]["state"], "connected", "{all:?}");
    assert_eq!(
        status[0]["index"]["address"],
        indexd.addr.to_string().as_str()
    );
    assert_eq!(status[0]["share"]["files"], 1);
    assert_eq!(status[0]["uploads"]["slots"], 64);
    // Whether the index reached our file server: true, false, or null while not known.
    let reachable = &status[0]["reachable"];
    assert!(
        status[0].as_object().unwrap().contains_key("reachable")
            && (reachable.is_boolean() || reachable.is_null()),
        "{all:?}"
    );

    let errors = of_type(&all, "error");
    assert_eq!(errors.len(), 1, "{all:?}");
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("unknown command"));
    let unregistered = of_type(&all, "unregistered");
    assert_eq!(unregistered[0]["hash"], hash.as_str());
    assert_eq!(unregistered[0]["names"][0], "Zebra Crossing.flac");
    assert!(of_type(&all, "help")[0]["text"]
        .as_str()
        .unwrap()
        .contains("commands:"));

    // The results come in the order of the commands.
    let kinds: Vec<&str> = all
        .iter()
        .map(|v| v["type"].as_str().unwrap())
        .filter(|k| {
            [
                "search",
                "lookup",
                "saved",
                "files",
                "status",
                "error",
                "unregistered",
                "help",
            ]
            .contains(k)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "search",
            "lookup",
            "saved",
            "files",
            "status",
            "error",
            "unregistered",
            "help"
        ]
    );
}

#[test]
fn a_piped_console_exits_1_when_a_command_failed_and_0_when_none_did() {
    let indexd = Indexd::start(&[]);
    let tmp = TempDir::new("exit");
    let a = tmp.sub("a");
    std::fs::write(a.join("here.txt"), b"present").unwrap();
    let mut holder = ServingPeer::start(&a, indexd.addr);
    holder.wait_registered(1);
    let b = tmp.sub("b");
    let ok = run_console(
        &b,
        indexd.addr,
        &[],
        Input::Pipe("search here\nget here.txt\nstatus\n"),
        LIMIT,
    );
    assert_eq!(ok.code, Some(0), "{ok:?}");
    assert!(ok.stdout.contains("saved "), "{ok:?}");
    // The example: nobody shares it; later commands still run.
    let failed = run_console(
        &tmp.sub("c"),
        indexd.addr,
        &[],
        Input::Pipe("get nobody-has-this.txt\nsearch here\n"),
        LIMIT,
    );
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(
        failed
            .stderr
            .contains("error: no peer shares nobody-has-this.txt"),
        "{failed:?}"
    );
    assert!(failed.stdout.contains("1 result"), "{failed:?}");
    // From a file as stdin too.
    let cmds = tmp.path().join("cmds.txt");
    std::fs::write(&cmds, "unregister not-mine.txt\n").unwrap();
    let failed = run_console(&tmp.sub("d"), indexd.addr, &[], Input::File(&cmds), LIMIT);
    assert_eq!(failed.code, Some(1), "{failed:?}");
}

/// Runs `peer ARGS` with `input` on stdin until it exits; its exit code, stdout and stderr.
fn run_peer(args: &[&str], input: &str) -> (Option<i32>, String, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn peer");
    // A peer that stops at start-up may be gone before it reads: a broken pipe is expected.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = crate::common::output_within(child, LIMIT)
        .unwrap_or_else(|out| panic!("the peer did not exit: {out:?}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn start_up_mistakes_stop_the_peer_with_status_2_and_say_what_is_wrong() {
    let tmp = TempDir::new("mistakes");
    let share = tmp.sub("s");
    let share = share.to_str().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let not_a_dir = tmp.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let under_a_file = not_a_dir.join("downloads");
    let under_a_file = under_a_file.to_str().unwrap();
    for (args, said) in [
        (
            vec!["--index", "localhost"],
            "--index \"localhost\": no port".to_string(),
        ),
        (
            vec!["--index", "localhost:nine"],
            "\"nine\" is not a port".into(),
        ),
        (
            vec!["--index", "no-such-index.invalid:9000"],
            "cannot resolve no-such-index.invalid".into(),
        ),
        (
            vec!["--index", "127.0.0.1:1", "--listen", &taken],
            format!("--listen {taken}: Address already in use"),
        ),
        (
            vec!["--index", "127.0.0.1:1", "--metrics", &taken],
            format!("--metrics {taken}: Address already in use"),
        ),
        (
            // Exists, and no file can be created in it (not even by root).
            vec!["--index", "127.0.0.1:1", "--downloads", "/proc"],
            "--downloads /proc: cannot create files there".into(),
        ),
        (
            vec!["--index", "127.0.0.1:1", "--downloads", under_a_file],
            format!("--downloads {under_a_file}: Not a directory"),
        ),
    ] {
        let mut all = vec!["--share", share];
        all.extend(&args);
        let (code, stdout, stderr) = run_peer(&all, "status\n");
        assert_eq!(code, Some(2), "{args:?}: {stdout} {stderr}");
        assert!(stderr.starts_with("peer: "), "{args:?}: {stderr}");
        assert!(stderr.contains(&said), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "only the mistake: {stderr}");
        assert_eq!(stdout, "", "{args:?}: nothing ran");
        // With --json the mistake is an error object on stdout.
        all.push("--json");
        let (code, stdout, _) = run_peer(&all, "status\n");
        assert_eq!(code, Some(2), "{args:?}");
        let all = objects(&stdout);
        assert_eq!(all.len(), 1, "{stdout}");
        assert_eq!(all[0]["type"], "error");
        assert!(
            all[0]["message"].as_str().unwrap().contains(&said),
            "{stdout}"
        );
    }
}

#[test]
fn an_index_not_up_yet_is_not_a_mistake_and_is_not_connected_yet() {
    let tmp = TempDir::new("not-yet");
    // A port nothing listens on.
    let index = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let run = run_console(&tmp.sub("s"), index, &[], Input::Pipe("status\n"), LIMIT);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "index: not connected yet: {index} unreachable (connect failed: connection refused); \
             retrying in the background"
        )),
        "{run:?}"
    );
    assert!(
        run.stdout.starts_with(&format!(
            "index: not connected yet: {index} unreachable (connect failed: connection refused), \
             retrying\n"
        )),
        "{run:?}"
    );
    assert!(!run.stdout.contains("disconnected"), "{run:?}");
}
