//! Throughput of the frame codec and of message encoding: encode and decode, 64 B and 64 KiB
//! payloads. `cargo bench --bench codec`.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use p2pshare::codec::{self, Decoder};
use p2pshare::wire::{self, FileEntry, FileHash, LookupKey, Request, RequestBody};
use std::time::Duration;

fn codec_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    for size in [64usize, 64 * 1024] {
        // Payloads full of the terminator's bytes: the worst case for a scanning codec.
        let payload: Vec<u8> = (0..size).map(|i| b"\r\r\nx"[i % 4]).collect();
        let frames_per_batch = (1 << 20) / size.max(1);
        let mut wire_bytes = Vec::new();
        for _ in 0..frames_per_batch {
            codec::encode(&payload, &mut wire_bytes);
        }
        group.throughput(Throughput::Bytes((payload.len() * frames_per_batch) as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, p| {
            let mut out = Vec::with_capacity(wire_bytes.len());
            b.iter(|| {
                out.clear();
                for _ in 0..frames_per_batch {
                    codec::encode(black_box(p), &mut out);
                }
                black_box(out.len())
            })
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &wire_bytes, |b, w| {
            let mut dec = Decoder::new(1 << 20);
            b.iter(|| {
                let mut at = 0;
                let mut n = 0;
                while let Some(d) = dec.decode(&w[at..]).unwrap() {
                    n += d.payload.len();
                    at += d.consumed;
                }
                black_box(n)
            })
        });
    }
    group.finish();
}

fn message_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("message");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    let lookup = Request {
        id: 12345,
        body: RequestBody::Lookup {
            key: LookupKey::Hash(FileHash([7; 32])),
            after: None,
        },
    };
    let register = Request {
        id: 1,
        body: RequestBody::Register {
            files: (0..1000)
                .map(|i| FileEntry {
                    hash: FileHash([(i % 251) as u8; 32]),
                    size: i * 1000,
                    name: format!("Some Artist - Some Album - Track {i:04}.flac"),
                })
                .collect(),
        },
    };
    for (name, msg) in [("lookup", &lookup), ("register_1000", &register)] {
        let mut out = Vec::new();
        wire::encode_frame(msg, &mut out);
        let payload = wire::to_payload(msg);
        group.throughput(Throughput::Bytes(out.len() as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| {
                out.clear();
                wire::encode_frame(black_box(msg), &mut out);
                black_box(out.len())
            })
        });
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| black_box(wire::decode::<Request>(black_box(&payload)).unwrap()))
        });
    }
    group.finish();
}

criterion_group!(benches, codec_throughput, message_codec);
criterion_main!(benches);
