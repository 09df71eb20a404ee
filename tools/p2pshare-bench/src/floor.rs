//! The floor: the bare loopback round trip on this machine, measured in the same run as the
//! index operations so every op can be reported as a multiple of it.
//!
//! The echo side is the bench binary itself in its hidden `--echo-server` mode, a separate
//! process like `indexd`, so the floor pays the same process-to-process costs (scheduler
//! wake-ups, two socket stacks) an index request pays, and nothing else.

use super::stats;
use hdrhistogram::Histogram;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// Bytes of each ping: about the size of a small request frame.
pub const PING_BYTES: usize = 32;
/// Round trips run before timing, to warm caches and the scheduler.
const WARMUP_ROUND_TRIPS: usize = 500;

/// Runs the echo server: binds loopback port 0, prints `echo listening on ADDR`, echoes
/// every connection's bytes back. Exits when its stdin closes, so it never outlives the
/// bench that started it.
pub fn run_echo_server() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("echo listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
    }
    Ok(())
}

/// A child process killed and reaped when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args...` with piped stdin/stdout and reads the address at the end of its
/// first stdout line (`... listening on ADDR`).
pub fn spawn_listening(program: &Path, args: &[&str]) -> io::Result<(ChildGuard, SocketAddr)> {
    spawn_listening_logged(program, args, Stdio::inherit())
}

/// [`spawn_listening`] with the child's stderr going to `stderr` (a log file).
pub fn spawn_listening_logged(
    program: &Path,
    args: &[&str],
    stderr: Stdio,
) -> io::Result<(ChildGuard, SocketAddr)> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e}", program.display()))
        })?;
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| {
            io::Error::other(format!(
                "{} did not print its address (first line {line:?})",
                program.display()
            ))
        })?;
    Ok((guard, addr))
}

/// One connection to the echo server, for floor samples taken between a peer's operations.
pub struct Pinger {
    stream: TcpStream,
}

impl Pinger {
    /// Connects to the echo server at `addr`.
    pub fn connect(addr: SocketAddr) -> io::Result<Pinger> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(super::client::REPLY_TIMEOUT))?;
        Ok(Pinger { stream })
    }

    /// Times one ping-pong of [`PING_BYTES`].
    pub fn round_trip(&mut self) -> io::Result<std::time::Duration> {
        let ping = [0x5au8; PING_BYTES];
        let mut pong = [0u8; PING_BYTES];
        let start = Instant::now();
        self.stream.write_all(&ping)?;
        self.stream.read_exact(&mut pong)?;
        Ok(start.elapsed())
    }
}

/// Times `round_trips` pings of [`PING_BYTES`] against the echo server at `addr`, one in
/// flight, into a histogram (ns).
pub fn measure(addr: SocketAddr, round_trips: usize) -> io::Result<Histogram<u64>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(super::client::REPLY_TIMEOUT))?;
    let ping = [0x5au8; PING_BYTES];
    let mut pong = [0u8; PING_BYTES];
    let mut hist = stats::new_histogram();
    for i in 0..WARMUP_ROUND_TRIPS + round_trips {
        let start = Instant::now();
        stream.write_all(&ping)?;
        stream.read_exact(&mut pong)?;
        if i >= WARMUP_ROUND_TRIPS {
            stats::record(&mut hist, start.elapsed());
        }
    }
    Ok(hist)
}
