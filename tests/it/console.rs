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
