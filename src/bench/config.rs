//! The bench's validated configuration and the parsers for its list-valued flags. The
//! binary's clap struct uses these parsers, so a bad flag is reported by clap with the
//! reason given here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Operations per simulated peer (`--ops S,R,L`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpCounts {
    /// Searches.
    pub search: usize,
    /// Register operations (each announces [`super::workload::FILES_PER_REGISTER`] files).
    pub register: usize,
    /// Lookups.
    pub lookup: usize,
}

impl OpCounts {
    /// The counts in [`super::workload::OpKind::ALL`] order.
    pub fn as_array(&self) -> [usize; 3] {
        [self.search, self.register, self.lookup]
    }

    /// All operations of one peer.
    pub fn total(&self) -> usize {
        self.search + self.register + self.lookup
    }
}

impl std::fmt::Display for OpCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{}", self.search, self.register, self.lookup)
    }
}

/// Parses `S,R,L`: three non-negative counts, not all zero.
pub fn parse_ops(s: &str) -> Result<OpCounts, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 3 {
        return Err(format!(
            "expected three counts SEARCH,REGISTER,LOOKUP (e.g. 1000,200,800), got {s:?}"
        ));
    }
    let mut n = [0usize; 3];
    for (slot, p) in n.iter_mut().zip(&parts) {
        *slot = p
            .parse()
            .map_err(|_| format!("{p:?} is not a non-negative whole number"))?;
    }
    if n.iter().all(|&x| x == 0) {
        return Err("at least one operation count must be above zero".into());
    }
    Ok(OpCounts {
        search: n[0],
        register: n[1],
        lookup: n[2],
    })
}

/// Most simulated peers in one run (each is a thread and a connection).
pub const MAX_PEERS: usize = 1000;

/// Parses `N` or a list `1,2,3`: one run per count, each 1..=[`MAX_PEERS`], in the order
/// given.
pub fn parse_peers(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim) {
        let n: usize = p
            .parse()
            .map_err(|_| format!("{p:?} is not a peer count"))?;
        if n == 0 || n > MAX_PEERS {
            return Err(format!("peer count {n} is outside 1..={MAX_PEERS}"));
        }
        out.push(n);
    }
    Ok(out)
}

/// Parses a byte size: a number with an optional `K`, `M` or `G` suffix (powers of 1024,
/// an optional trailing `B` or `iB`), e.g. `100M`, `1GiB`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 100M, 1G, 4096)"))?;
    n.checked_mul(mult)
        .filter(|&b| b > 0)
        .ok_or_else(|| format!("size {s:?} must be above zero and fit in 64 bits"))
}

/// What the bench measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Closed loop: per run, N simulated peers each doing their ops one at a time.
    Latency {
        /// Ops per peer.
        ops: OpCounts,
        /// One run per entry.
        peers: Vec<usize>,
    },
    /// Open throughput: lookups with `pipeline` in flight on each of `connections`.
    Saturation {
        /// Connections.
        connections: usize,
        /// Requests in flight per connection.
        pipeline: usize,
        /// Measured time (after a warm-up).
        duration: Duration,
    },
}

/// Everything a bench run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// What to measure.
    pub mode: Mode,
    /// An index already running; `None`: start one.
    pub index: Option<SocketAddr>,
    /// The `indexd` binary to start when `index` is `None`.
    pub indexd: PathBuf,
    /// Files pre-populated before measuring.
    pub files: usize,
    /// Where the outputs go.
    pub out: PathBuf,
    /// Seed of every random choice.
    pub seed: u64,
    /// Round trips timed for the floor.
    pub floor_round_trips: usize,
    /// The bench binary itself, started with `--echo-server` for the floor.
    pub self_exe: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_parse() {
        assert_eq!(
            parse_ops("1000,200,800"),
            Ok(OpCounts {
                search: 1000,
                register: 200,
                lookup: 800
            })
        );
        assert_eq!(parse_ops(" 5, 0 ,1").unwrap().as_array(), [5, 0, 1]);
        assert_eq!(parse_ops("50,10,50").unwrap().total(), 110);
        assert!(parse_ops("1,2").is_err());
        assert!(parse_ops("1,2,3,4").is_err());
        assert!(parse_ops("1,-2,3").is_err());
        assert!(parse_ops("a,b,c").is_err());
        assert!(parse_ops("0,0,0").is_err());
        assert_eq!(parse_ops("1,2,3").unwrap().to_string(), "1,2,3");
    }

    #[test]
    fn peers_parse() {
        assert_eq!(parse_peers("3"), Ok(vec![3]));
        assert_eq!(parse_peers("1,2,3"), Ok(vec![1, 2, 3]));
        assert_eq!(parse_peers("4, 1"), Ok(vec![4, 1]));
        assert!(parse_peers("0").is_err());
        assert!(parse_peers("1,,2").is_err());
        assert!(parse_peers("x").is_err());
        assert!(parse_peers("100000").is_err());
    }

    #[test]
    fn size_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("100M"), Ok(100 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64kB"), Ok(64 << 10));
        assert!(parse_size("0").is_err());
        assert!(parse_size("big").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
