//! The index server's cost per request, in process: a lookup and a 10-file register (the
//! bench's register op) handled by the sans-IO core against an index of 10,000 files, as
//! `tools/bench` populates it; a register both until its answer is ready and in all (with the
//! word postings the server does after answering). `cargo bench --bench server`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use p2pshare::index::server::{IndexServer, ServerLimits, Session};
use p2pshare::wire::{self, LookupKey, Request, RequestBody, PROTOCOL_VERSION};
use p2pshare_bench::workload;
use std::time::{Duration, Instant};

fn payload(id: u32, body: RequestBody) -> Vec<u8> {
    wire::to_payload(&Request { id, body })
}

/// A server holding `files` bench files from fake peers of 1,000 files each, and one more
/// session ready to send requests. (The fake peers' sessions are dropped without a close, so
/// their files stay.)
fn populated(files: usize) -> (IndexServer, Session) {
    let mut server = IndexServer::new(ServerLimits::default());
    let mut out = Vec::new();
    for p in 0..files.div_ceil(1000) {
        let mut session = server.accept("127.0.0.1:1".parse().unwrap());
        let hello = RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port: 20_000 + p as u16,
            agent: String::new(),
        };
        server.handle_payload(&mut session, &payload(1, hello), &mut out);
        let batch = (p * 1000..((p + 1) * 1000).min(files))
            .map(|i| workload::populated_file(1, i))
            .collect();
        let register = RequestBody::Register { files: batch };
        server.handle_payload(&mut session, &payload(2, register), &mut out);
    }
    let mut session = server.accept("127.0.0.1:2".parse().unwrap());
    let hello = RequestBody::Hello {
        version: PROTOCOL_VERSION,
        listen_port: 7,
        agent: String::new(),
    };
    server.handle_payload(&mut session, &payload(1, hello), &mut out);
    (server, session)
}

fn requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_10k_files");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    let (mut server, mut session) = populated(10_000);
    let mut out = Vec::new();
    let keys: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let hash = workload::populated_file(1, i * 7).hash;
            payload(
                3,
                RequestBody::Lookup {
                    key: LookupKey::Hash(hash),
                    after: None,
                },
            )
        })
        .collect();
    let mut i = 0;
    group.bench_function("lookup", |b| {
        b.iter(|| {
            out.clear();
            i = (i + 1) % keys.len();
            black_box(server.handle_payload(&mut session, &keys[i], &mut out))
        })
    });
    // Each register announces 10 files never seen before, as a bench register op does; they
    // are withdrawn again outside the timed part, so the index stays at 10,000 files.
    let batches: Vec<(Vec<u8>, Vec<u8>)> = (1..=1000)
        .map(|op| {
            let files = workload::register_batch(1, 0, 0, op);
            let hashes = files.iter().map(|f| f.hash).collect();
            (
                payload(4, RequestBody::Register { files }),
                payload(5, RequestBody::Unregister { hashes }),
            )
        })
        .collect();
    // "answered": until the answer is encoded (what the client waits for); "in all": with the
    // word postings the server finishes right after sending it.
    for (label, all) in [
        ("register_10_new_files_answered", false),
        ("register_10_new_files_in_all", true),
    ] {
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for n in 0..iters as usize {
                    let (register, unregister) = &batches[n % batches.len()];
                    out.clear();
                    let began = Instant::now();
                    black_box(server.handle_payload(&mut session, register, &mut out));
                    if all {
                        server.settle();
                    }
                    timed += began.elapsed();
                    server.settle();
                    server.handle_payload(&mut session, unregister, &mut out);
                }
                timed
            })
        });
    }
    // The decoding share of a register: the request parsed, names and all, and dropped.
    group.bench_function("decode_register_10", |b| {
        let mut n = 0;
        b.iter(|| {
            n = (n + 1) % batches.len();
            black_box(wire::decode::<Request>(&batches[n].0).is_ok())
        })
    });
    group.finish();
}

criterion_group!(benches, requests);
criterion_main!(benches);
