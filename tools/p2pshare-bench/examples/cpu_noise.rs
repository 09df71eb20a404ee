//! The machine's own noise in a thread's CPU time: is a 2–5 ms outlier of thread CPU time in
//! indexd's work trace (`P2PSHARE_WORK_TRACE`) indexd's work, or the machine's accounting?
//!
//! Pinned to one CPU, this repeats two fixed pieces of work of PIECE_US each, alternately,
//! for SECS seconds: one of pure CPU (integer mixing in registers) and one memory-bound (random
//! dependent reads over a MEM_MB array, touched in full beforehand, as the index's tables
//! are read at 10M entries). Around each piece it reads the thread's CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`, what the work trace reads) and the wall clock. A piece does the
//! same work every time, so any piece far above the others is time the kernel counted to the
//! thread that was not its work: interrupts (this kernel is built without
//! `CONFIG_IRQ_TIME_ACCOUNTING`, so hard and soft interrupt time is charged to whatever task
//! it interrupted), or the host taking the virtual CPU away if its steal is not subtracted.
//!
//! Prints, for each kind of piece: the distribution of its CPU and wall time, how many took
//! 0.5, 1 and 2 ms or more and at what rate per second of CPU, and the twelve longest by CPU
//! with their page faults, context switches and run-queue wait; and, for the pinned CPU, its
//! `/proc/stat` times (steal included), `/proc/softirqs` and `/proc/interrupts` counts over the
//! run.
//!
//! `cargo run --release -p p2pshare-bench --example cpu_noise -- [SECS] [CPU] [MEM_MB] [PIECE_US]`
//! (defaults: 70 s, CPU 1, 1024 MB, 30 µs).

use p2pshare::sys::process::{pin_current_thread, thread_counts, thread_cpu_time, ThreadCounts};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn cpu() -> Duration {
    thread_cpu_time().expect("a thread CPU clock")
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// `n` rounds of integer mixing: registers only, no memory.
fn cpu_work(seed: u64, n: u32) -> u64 {
    let mut x = seed;
    for _ in 0..n {
        x = mix(x);
    }
    x
}

/// `n` random reads of `table`, each address depending on the value read before (so they
/// wait on memory one after the other, as a hash lookup's probe chain does).
fn memory_work(table: &[u64], seed: u64, n: u32) -> u64 {
    let len = table.len() as u64;
    let mut x = seed;
    let mut acc = 0u64;
    for _ in 0..n {
        x = mix(x ^ acc);
        acc = acc.wrapping_add(table[(x % len) as usize]);
    }
    acc
}

/// One piece's record.
#[derive(Clone, Copy)]
struct Piece {
    /// Since the run's start.
    at: Duration,
    cpu: Duration,
    wall: Duration,
    before: ThreadCounts,
    after: ThreadCounts,
}

#[derive(Default)]
struct Kind {
    pieces: Vec<Piece>,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl Kind {
    fn report(&mut self, what: &str) {
        let n = self.pieces.len();
        if n == 0 {
            return;
        }
        let total_cpu: Duration = self.pieces.iter().map(|p| p.cpu).sum();
        let secs = total_cpu.as_secs_f64();
        for (label, get) in [
            ("CPU ", (|p: &Piece| p.cpu) as fn(&Piece) -> Duration),
            ("wall", |p: &Piece| p.wall),
        ] {
            let mut v: Vec<Duration> = self.pieces.iter().map(get).collect();
            v.sort_unstable();
            let q = |f: f64| v[((n as f64 * f) as usize).min(n - 1)];
            let over = |ms: f64| v.iter().filter(|d| d.as_secs_f64() * 1e3 >= ms).count();
            let (o05, o1, o2) = (over(0.5), over(1.0), over(2.0));
            println!(
                "{what} {label}: {n} pieces, p50 {:.1} p99 {:.1} p99.9 {:.1} p99.99 {:.1} max {:.1} µs; \
                 >=0.5 ms {o05}, >=1 ms {o1} ({:.3}/s of CPU), >=2 ms {o2} ({:.3}/s of CPU)",
                us(q(0.5)),
                us(q(0.99)),
                us(q(0.999)),
                us(q(0.9999)),
                us(v[n - 1]),
                o1 as f64 / secs,
                o2 as f64 / secs,
            );
        }
        println!("{what}: {secs:.1} s of CPU in the pieces");
        self.pieces
            .sort_unstable_by_key(|p| std::cmp::Reverse(p.cpu));
        println!(
            "{what}: the longest by CPU: at (s), CPU, wall, run-queue wait (µs), minor faults, \
             voluntary, involuntary switches"
        );
        for p in self.pieces.iter().take(12) {
            println!(
                "  {:8.3} {:8.1} {:8.1} {:8.1} {:4} {:3} {:3}",
                p.at.as_secs_f64(),
                us(p.cpu),
                us(p.wall),
                us(p.after.run_delay.saturating_sub(p.before.run_delay)),
                p.after.minor_faults - p.before.minor_faults,
                p.after.voluntary_switches - p.before.voluntary_switches,
                p.after.preemptions - p.before.preemptions,
            );
        }
    }
}

/// Calibrates `n` so that `work(seed, n)` takes about `target` of CPU (its median of 31
/// tries, each with a new seed, so that the memory piece reads addresses not read before).
fn calibrate(target: Duration, mut work: impl FnMut(u64, u32) -> u64) -> u32 {
    let mut n = 64u32;
    let mut seed = 1u64 << 40;
    for _ in 0..20 {
        let mut times: Vec<Duration> = (0..31)
            .map(|_| {
                seed += 1;
                let t = cpu();
                black_box(work(seed, n));
                cpu() - t
            })
            .collect();
        times.sort_unstable();
        let median = times[15].max(Duration::from_nanos(1));
        let ratio = target.as_secs_f64() / median.as_secs_f64();
        if (0.95..1.05).contains(&ratio) {
            break;
        }
        n = ((n as f64 * ratio) as u32).max(1);
    }
    n
}

/// The line of `file` for `cpu` (`/proc/stat`'s `cpuN ...`), or the column of `cpu` in each
/// line of a per-CPU table (`/proc/softirqs`, `/proc/interrupts`), as (name, count).
fn per_cpu_counts(file: &str, cpu: usize) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    if file == "/proc/stat" {
        let prefix = format!("cpu{cpu} ");
        let names = [
            "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
        ];
        return text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .map(|l| {
                l.split_ascii_whitespace()
                    .skip(1)
                    .zip(names)
                    .map(|(v, name)| (name.to_string(), v.parse().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
    }
    let mut lines = text.lines();
    let cpus = lines
        .next()
        .map_or(0, |l| l.split_ascii_whitespace().count());
    lines
        .filter_map(|l| {
            let mut fields = l.split_ascii_whitespace();
            let name = fields.next()?.trim_end_matches(':').to_string();
            let counts: Vec<u64> = fields.take(cpus).map_while(|f| f.parse().ok()).collect();
            Some((name, *counts.get(cpu)?))
        })
        .collect()
}

fn print_delta(file: &str, before: &[(String, u64)], after: &[(String, u64)], unit: &str) {
    let deltas: Vec<String> = before
        .iter()
        .zip(after)
        .filter(|(b, a)| b.0 == a.0 && a.1 > b.1)
        .map(|(b, a)| format!("{} {}", b.0, a.1 - b.1))
        .collect();
    println!("{file} ({unit}): {}", deltas.join(", "));
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().map_or(70, |a| a.parse().expect("SECS"));
    let cpu_index: usize = args.next().map_or(1, |a| a.parse().expect("CPU"));
    let mem_mb: usize = args.next().map_or(1024, |a| a.parse().expect("MEM_MB"));
    let piece = Duration::from_micros(args.next().map_or(30, |a| a.parse().expect("PIECE_US")));
    pin_current_thread(cpu_index).expect("pinning to the CPU");

    // Touched in full (every page faulted in) before any piece is timed.
    let table: Vec<u64> = (0..(mem_mb << 20) / 8).map(|i| mix(i as u64)).collect();
    let cpu_n = calibrate(piece, cpu_work);
    let mem_n = calibrate(piece, |seed, n| memory_work(&table, seed, n));
    println!(
        "pinned to CPU {cpu_index}; {secs} s; pieces of about {} µs: CPU piece {cpu_n} rounds, \
         memory piece {mem_n} reads of a {mem_mb} MB array",
        piece.as_micros()
    );

    let files = ["/proc/stat", "/proc/softirqs", "/proc/interrupts"];
    let before: Vec<_> = files.iter().map(|f| per_cpu_counts(f, cpu_index)).collect();
    let (mut cpu_kind, mut mem_kind) = (Kind::default(), Kind::default());
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut seed = 1u64;
    let mut sink = 0u64;
    let mut now = start;
    while now < end {
        for memory in [false, true] {
            seed += 1;
            let counts_before = thread_counts().unwrap_or_default();
            let (w, c) = (Instant::now(), cpu());
            sink ^= if memory {
                memory_work(&table, seed, mem_n)
            } else {
                cpu_work(seed, cpu_n)
            };
            let (c1, w1) = (cpu(), Instant::now());
            let piece = Piece {
                at: w - start,
                cpu: c1 - c,
                wall: w1 - w,
                before: counts_before,
                after: thread_counts().unwrap_or_default(),
            };
            if memory {
                mem_kind.pieces.push(piece);
            } else {
                cpu_kind.pieces.push(piece);
            }
            now = w1;
        }
    }
    let after: Vec<_> = files.iter().map(|f| per_cpu_counts(f, cpu_index)).collect();
    black_box(sink);
    let elapsed = start.elapsed();
    println!("ran {:.1} s", elapsed.as_secs_f64());
    cpu_kind.report("cpu piece");
    mem_kind.report("memory piece");
    print_delta(
        "/proc/stat",
        &before[0],
        &after[0],
        "ticks of 10 ms, this CPU",
    );
    print_delta("/proc/softirqs", &before[1], &after[1], "this CPU");
    print_delta("/proc/interrupts", &before[2], &after[2], "this CPU");
}
