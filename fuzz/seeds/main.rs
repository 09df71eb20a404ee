//! Writes the committed seed corpora, `fuzz/corpus/TARGET/seed-*`, from real encoded messages.
//! Run by `tools/fuzz --seeds` (plain `cargo run`, no sanitizer); the output is deterministic.

use p2pshare::codec;
use p2pshare::wire::{
    self, ErrorCode, FileEntry, FileHash, FileKind, HeldFile, LookupKey, LookupToken, Request,
    RequestBody, Response, ResponseBody, SearchCursor, SearchFilter, SearchHit, ServerStats,
    TransferRequest, TransferResponse, PROTOCOL_VERSION,
};
use std::path::Path;

fn requests() -> Vec<RequestBody> {
    let h = |n: u8| FileHash([n; 32]);
    vec![
        RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port: 4242,
            agent: "p2pshare/0.1".into(),
        },
        RequestBody::Hello {
            version: 7,
            listen_port: 0,
            agent: String::new(),
        },
        RequestBody::Register {
            files: vec![
                FileEntry {
                    hash: h(1),
                    size: 9,
                    name: "Zebra_Crossing-Live 1999.flac".into(),
                },
                FileEntry {
                    hash: h(2),
                    size: 0,
                    name: "a\r\r\nb".into(),
                },
                FileEntry {
                    hash: h(3),
                    size: u64::MAX,
                    name: "ünïcødé 名前.txt".into(),
                },
            ],
        },
        RequestBody::Unregister {
            hashes: vec![h(1), h(9)],
        },
        RequestBody::Search {
            query: "zeb cross".into(),
            limit: 0,
            filter: SearchFilter::default(),
            after: None,
        },
        RequestBody::Search {
            query: "zeb".into(),
            limit: 3,
            filter: SearchFilter {
                min_size: 1,
                max_size: Some(1 << 20),
                exts: vec!["flac".into()],
                kind: Some(FileKind::Audio),
                min_holders: 2,
            },
            after: Some(SearchCursor {
                whole: 1,
                key: 12,
                check: 0x1234_5678,
            }),
        },
        RequestBody::Lookup {
            key: LookupKey::Hash(h(1)),
            after: None,
        },
        RequestBody::Lookup {
            key: LookupKey::HashPrefix("01010101".into()),
            after: None,
        },
        RequestBody::Lookup {
            key: LookupKey::Name("Zebra_Crossing-Live 1999.flac".into()),
            after: None,
        },
        RequestBody::Ping,
        RequestBody::Stats,
        RequestBody::Bye,
    ]
}

fn responses() -> Vec<ResponseBody> {
    let h = FileHash::of(b"music");
    vec![
        ResponseBody::Welcome {
            version: PROTOCOL_VERSION,
            session: 3,
            observed: "127.0.0.1:4242".parse().unwrap(),
        },
        ResponseBody::Registered {
            added: 3,
            rejected: 1,
            total: 2,
        },
        ResponseBody::Unregistered {
            removed: 1,
            total: 1,
        },
        ResponseBody::SearchResults {
            hits: vec![SearchHit {
                name: "Zebra_Crossing-Live 1999.flac".into(),
                size: 5,
                hash: h,
                holders: 2,
            }],
            total: 40,
            total_exact: false,
            next: Some(SearchCursor {
                whole: 1,
                key: 3,
                check: 7,
            }),
            partial: true,
            server_us: 87,
        },
        ResponseBody::Holders {
            files: vec![HeldFile {
                hash: h,
                size: 5,
                name: "x".into(),
                holders: vec!["10.0.0.1:9000".parse().unwrap(), "[::1]:7".parse().unwrap()],
                holder_count: 2,
            }],
            total: 3,
            next: Some(LookupToken(7)),
        },
        ResponseBody::Pong,
        ResponseBody::Stats(ServerStats {
            connections: 3,
            peers: 2,
            files: 100,
            ..ServerStats::default()
        }),
        ResponseBody::Bye,
        ResponseBody::Error {
            code: ErrorCode::Busy,
            message: "server full (10000 connections)".into(),
        },
    ]
}

fn transfers() -> (Vec<TransferRequest>, Vec<TransferResponse>) {
    (
        vec![
            TransferRequest::Range {
                version: PROTOCOL_VERSION,
                hash: FileHash::of(b"x"),
                size: 1,
                first: 0,
                end: 1,
            },
            TransferRequest::Range {
                version: PROTOCOL_VERSION,
                hash: FileHash::of(b"y"),
                size: 3 << 20,
                first: 16,
                end: 32,
            },
        ],
        vec![
            TransferResponse::Sending {
                size: 3 << 20,
                first: 16,
                end: 32,
            },
            TransferResponse::Error {
                code: ErrorCode::NotFound,
                message: "not shared here".into(),
            },
        ],
    )
}

fn write(dir: &Path, n: &mut usize, bytes: &[u8]) {
    std::fs::write(dir.join(format!("seed-{:03}", *n)), bytes).unwrap();
    *n += 1;
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let dir = |t: &str| {
        let d = root.join(t);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        d
    };
    let reqs: Vec<Request> = requests()
        .into_iter()
        .enumerate()
        .map(|(i, body)| Request {
            id: i as u32 + 1,
            body,
        })
        .collect();
    let resps: Vec<Response> = responses()
        .into_iter()
        .enumerate()
        .map(|(i, body)| Response {
            id: i as u32 + 1,
            body,
        })
        .collect();
    let (gets, sendings) = transfers();

    // wire: every message payload.
    let d = dir("wire");
    let mut n = 0;
    for r in &reqs {
        write(&d, &mut n, &wire::to_payload(r));
        write(&d, &mut n, &wire::to_payload(&r.body));
    }
    for r in &resps {
        write(&d, &mut n, &wire::to_payload(r));
    }
    for g in &gets {
        write(&d, &mut n, &wire::to_payload(g));
    }
    for s in &sendings {
        write(&d, &mut n, &wire::to_payload(s));
    }

    // codec: [limit, chunk seed] + a stream of real frames, plus broken streams.
    let d = dir("codec");
    let mut n = 0;
    let mut all = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let mut s = vec![6, i as u8];
        wire::encode_frame(r, &mut s);
        all.extend_from_slice(&s[2..]);
        write(&d, &mut n, &s);
    }
    for (limit, seed) in [(6u8, 1u8), (4, 2), (3, 3), (1, 4)] {
        let mut s = vec![limit, seed];
        s.extend_from_slice(&all);
        write(&d, &mut n, &s);
    }
    let mut s = vec![6, 9];
    codec::encode(b"\r\r\n\r\r\n", &mut s);
    codec::encode(b"", &mut s);
    write(&d, &mut n, &s);
    write(&d, &mut n, b"\x06\x05GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    write(&d, &mut n, b"\x06\x05\r\r\n\r\r\n\r\r\n");
    write(&d, &mut n, b"\x06\x05\xff\xff\xff\xff\x0f");
    write(&d, &mut n, b"\x06\x05\x80\x00\r\r\n");

    // index_server: scripts. An op byte is (connection << 3) | kind: 0 accept, 1 close,
    // 2 raw payload (length byte + bytes), 3 framing error, 4..=7 a request built from the
    // following bytes (first byte % 9: 0 hello, 1-2 register, 3 unregister, 4 search,
    // 5 lookup, 6 ping, 7 stats, 8 bye).
    let d = dir("index_server");
    let mut n = 0;
    let hello = |c: u8| vec![c << 3, (c << 3) | 4, 0, 1, 0];
    let register = |c: u8| vec![(c << 3) | 4, 1, 3, 1, 2, 0, 2, 2, 1, 3, 3, 7];
    let search = |c: u8| vec![(c << 3) | 4, 4, 1, 0];
    let lookup = |c: u8| vec![(c << 3) | 4, 5, 0, 1, (c << 3) | 4, 5, 1, 1, 12];
    write(
        &d,
        &mut n,
        &[hello(0), register(0), search(0), vec![1]].concat(),
    );
    write(
        &d,
        &mut n,
        &[
            hello(0),
            hello(1),
            register(0),
            register(1),
            lookup(0),
            vec![1],
            lookup(1),
        ]
        .concat(),
    );
    write(
        &d,
        &mut n,
        &[hello(2), register(2), vec![(2 << 3) | 4, 3, 2, 1, 3]].concat(),
    );
    write(&d, &mut n, &[vec![0, 4, 6], hello(1)].concat());
    write(&d, &mut n, &[hello(3), vec![(3 << 3) | 3]].concat());
    write(&d, &mut n, &[hello(0), vec![4, 8]].concat());
    for r in &reqs {
        let p = wire::to_payload(r);
        if p.len() < 256 {
            let mut s = vec![0, 2, p.len() as u8];
            s.extend_from_slice(&p);
            s.extend_from_slice(&[2, 3, 1, 2, 3]);
            write(&d, &mut n, &s);
        }
    }

    // console: real command lines.
    let d = dir("console");
    let mut n = 0;
    let h = FileHash::of(b"music").to_hex();
    for line in [
        "help".to_string(),
        "search zeb cross".into(),
        "lookup Zebra_Crossing-Live 1999.flac".into(),
        format!("lookup {h}"),
        format!("get {} 2", &h[..12]),
        format!("get {h}"),
        "get 42".into(),
        "get a name 0".into(),
        "get x 99999999999999999999999".into(),
        "files".into(),
        "register".into(),
        "register a b/c".into(),
        format!("unregister {}", h.to_uppercase()),
        "status".into(),
        "quit".into(),
        "# comment".into(),
        "   ".into(),
        "bogus \u{1b}[31m".into(),
        "search\tzebra\u{0}".into(),
        "help me\nsearch a\nget b 1".into(),
    ] {
        write(&d, &mut n, line.as_bytes());
    }

    // sanitize: hostile names.
    let d = dir("sanitize");
    let mut n = 0;
    for name in [
        "../../x".to_string(),
        "/etc/passwd".into(),
        ".bashrc".into(),
        "..".into(),
        ".".into(),
        "".into(),
        "a\r\r\nb".into(),
        "..\\..\\win".into(),
        "  . hidden".into(),
        "ünïcødé song.flac".into(),
        format!("{}.mp3", "é".repeat(300)),
        format!("a.{}", "x".repeat(253)),
        format!("{}{}", "x".repeat(250), " ".repeat(10)),
        "nul\0byte".into(),
        "Zebra_Crossing-Live 1999.flac".into(),
        "song (1).mp3".into(),
    ] {
        write(&d, &mut n, name.as_bytes());
    }
}
