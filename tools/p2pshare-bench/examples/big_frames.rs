//! How fast a peer's reactor takes in big frames: a client thread writes `COUNT` frames of
//! `MIB` MiB each, back to back, over loopback to a reactor with the peer's configuration
//! (frames of up to 16 MiB, the reactor's defaults otherwise), whose handler only counts
//! them. A frame that does not arrive whole in one read is stored in the connection's own
//! input buffer, within the reactor's budget of fresh memory per turn (see
//! `src/reactor/inbuf.rs`), so this shows what that budget costs a big frame.
//!
//! Prints each frame's time from the previous one's end (the first from the connect), the
//! rate, the loop's turns and its longest pause.
//!
//! `cargo build --release --examples && target/release/examples/big_frames [MIB] [COUNT]`
//! (defaults 16 and 8).

use p2pshare::codec;
use p2pshare::reactor::{CloseReason, Config, ConnId, Ctx, Handler, Reactor, Verdict};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The peer's frame limit (`peer --max-frame-bytes`' default).
const PEER_MAX_FRAME_BYTES: usize = 16 << 20;

/// Counts frames and the time each one completed at.
struct Sink {
    want: usize,
    done: Vec<(Instant, usize)>,
}

impl Handler for Sink {
    type Conn = ();

    fn handle_accept(&mut self, _: &mut Ctx<()>, _: ConnId, _: SocketAddr) {}

    fn handle_frame(&mut self, ctx: &mut Ctx<()>, _: ConnId, _: &mut (), p: &[u8]) -> Verdict {
        self.done.push((Instant::now(), p.len()));
        if self.done.len() == self.want {
            ctx.stop();
        }
        Verdict::Continue
    }

    fn handle_close(&mut self, ctx: &mut Ctx<()>, _: ConnId, _: (), reason: &CloseReason) {
        if self.done.len() < self.want {
            eprintln!("closed after {} frames: {reason:?}", self.done.len());
            ctx.stop();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().map_or(Ok(16), |a| a.parse())?;
    let count: usize = args.get(1).map_or(Ok(8), |a| a.parse())?;
    let payload = (mib << 20).min(PEER_MAX_FRAME_BYTES);
    let mut reactor = Reactor::new(Config {
        max_frame_bytes: PEER_MAX_FRAME_BYTES,
        ..Config::default()
    })?;
    let addr = reactor.ctx().listen("127.0.0.1:0".parse()?)?;
    let mut wire = Vec::new();
    codec::encode(&vec![7u8; payload], &mut wire);
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        for _ in 0..count {
            s.write_all(&wire)?;
        }
        // Held open until the reactor has them all (it stops then, and this process ends).
        std::thread::sleep(Duration::from_secs(3600));
        Ok(())
    });
    let mut sink = Sink {
        want: count,
        done: Vec::new(),
    };
    reactor.run(&mut sink)?;
    let total = start.elapsed();
    let mut last = start;
    for (i, (at, len)) in sink.done.iter().enumerate() {
        let took = at.saturating_duration_since(last);
        println!(
            "frame {i}: {len} bytes in {:.2} ms ({:.0} MiB/s)",
            took.as_secs_f64() * 1e3,
            *len as f64 / (1 << 20) as f64 / took.as_secs_f64()
        );
        last = *at;
    }
    let pauses = reactor.ctx().loop_pauses().summary();
    let bytes = (payload * sink.done.len()) as f64;
    println!(
        "{} frames of {payload} bytes: {:.1} ms, {:.0} MiB/s, {} turns, longest pause {} us, p99 {} us",
        sink.done.len(),
        total.as_secs_f64() * 1e3,
        bytes / (1 << 20) as f64 / total.as_secs_f64(),
        pauses.turns,
        pauses.max_us,
        pauses.p99_us
    );
    drop(writer);
    Ok(())
}
