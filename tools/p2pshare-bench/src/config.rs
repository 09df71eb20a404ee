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

/// Most runs one `--peers` value asks for (each run takes seconds to a minute).
pub const MAX_RUNS: usize = 100;

/// Parses the peer counts of the runs, each 1..=[`MAX_PEERS`], in the order given:
/// - `N`: a sweep, one run per count 1, 2, ..., N (the original experiment ran "from 1 to
///   3 peers", and its chart plots time per op against the number of peers);
/// - `A..B`: one run per count A, A+1, ..., B (`3..3`: a single run of 3 peers);
/// - a list `A,B,C` of two or more counts or ranges: exactly those runs (`1,4,16`).
///
/// A lone count always means a sweep, so a list needs two elements: `3,` is refused with a
/// pointer to `3..3` rather than read as "3".
pub fn parse_peers(s: &str) -> Result<Vec<usize>, String> {
    let t = s.trim();
    let out = if t.contains(',') {
        let mut out = Vec::new();
        for p in t.split(',').map(str::trim) {
            if p.is_empty() {
                return Err(format!(
                    "empty element in the peer list {s:?} (for a single run of N peers write N..N)"
                ));
            }
            match parse_peer_range(p)? {
                Some(range) => out.extend(range),
                None => out.push(parse_peer_count(p)?),
            }
        }
        out
    } else {
        match parse_peer_range(t)? {
            Some(range) => range.collect(),
            None => (1..=parse_peer_count(t)?).collect(),
        }
    };
    if out.len() > MAX_RUNS {
        return Err(format!(
            "--peers {s:?} asks for {} runs, more than {MAX_RUNS}; a lone N means the sweep \
             1..=N (for a single run of N peers write N..N)",
            out.len()
        ));
    }
    Ok(out)
}

/// One peer count, 1..=[`MAX_PEERS`].
fn parse_peer_count(p: &str) -> Result<usize, String> {
    let n: usize = p
        .trim()
        .parse()
        .map_err(|_| format!("{p:?} is not a peer count"))?;
    if n == 0 || n > MAX_PEERS {
        return Err(format!("peer count {n} is outside 1..={MAX_PEERS}"));
    }
    Ok(n)
}

/// `A..B` (inclusive, A <= B) as a range, `None` if `p` is not a range.
fn parse_peer_range(p: &str) -> Result<Option<std::ops::RangeInclusive<usize>>, String> {
    let Some((a, b)) = p.split_once("..") else {
        return Ok(None);
    };
    let b = b.strip_prefix('=').unwrap_or(b);
    let (a, b) = (parse_peer_count(a)?, parse_peer_count(b)?);
    if a > b {
        return Err(format!(
            "peer range {p:?} is empty (write the smaller count first)"
        ));
    }
    Ok(Some(a..=b))
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
    /// An honest client's searches and lookups on the idle index, then under an abuser that
    /// pipelines the most expensive requests ([`super::abuse`]).
    Abuse {
        /// The honest client's ops per phase (its registers are not run).
        ops: OpCounts,
        /// Requests the abuser keeps in flight.
        in_flight: usize,
        /// Longest each phase runs.
        duration: Duration,
    },
    /// Downloads of one file between real peers, next to a bare copy and curl + nginx
    /// ([`super::transfer`]).
    Transfer {
        /// The file's size, bytes.
        size: u64,
        /// Timed downloads per contender.
        repeats: usize,
        /// Also time a swarm download from holders limited to this rate against one of them.
        swarm_rate: Option<u64>,
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
    /// A file of real names (one a line) to pre-populate with and draw searches from,
    /// instead of the synthetic vocabulary.
    pub names: Option<PathBuf>,
    /// Where the outputs go.
    pub out: PathBuf,
    /// Fake peers holding each pre-populated file (`--holders`).
    pub holders: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Round trips timed for the floor.
    pub floor_round_trips: usize,
    /// The `peer` binary the transfer mode starts.
    pub peer: PathBuf,
    /// The bench binary itself, started with `--echo-server` for the floor and with
    /// `--sendfile-server` for the transfer mode's bare copy.
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
        // A lone count is the sweep 1..=N.
        assert_eq!(parse_peers("3"), Ok(vec![1, 2, 3]));
        assert_eq!(parse_peers("1"), Ok(vec![1]));
        assert_eq!(parse_peers(" 4 "), Ok(vec![1, 2, 3, 4]));
        // Lists are exactly the runs named, in that order.
        assert_eq!(parse_peers("1,2,3"), Ok(vec![1, 2, 3]));
        assert_eq!(parse_peers("4, 1"), Ok(vec![4, 1]));
        assert_eq!(parse_peers("1,4,16"), Ok(vec![1, 4, 16]));
        // Ranges, alone or in a list.
        assert_eq!(parse_peers("3..3"), Ok(vec![3]));
        assert_eq!(parse_peers("2..4"), Ok(vec![2, 3, 4]));
        assert_eq!(parse_peers("2..=4"), Ok(vec![2, 3, 4]));
        assert_eq!(parse_peers("1..2,8"), Ok(vec![1, 2, 8]));
        assert_eq!(parse_peers("1000..1000"), Ok(vec![1000]));
        // A one-element list cannot be written: it would read like N.
        let e = parse_peers("3,").unwrap_err();
        assert!(e.contains("3..3") || e.contains("N..N"), "{e}");
        assert!(parse_peers(",3").is_err());
        assert!(parse_peers("1,,2").is_err());
        assert!(parse_peers("0").is_err());
        assert!(parse_peers("0..2").is_err());
        assert!(parse_peers("3..2").is_err());
        assert!(parse_peers("..3").is_err());
        assert!(parse_peers("3..").is_err());
        assert!(parse_peers("x").is_err());
        assert!(parse_peers("").is_err());
        assert!(parse_peers("100000").is_err());
        // A sweep of more runs than MAX_RUNS is refused, pointing at N..N.
        assert!(parse_peers("1000").unwrap_err().contains("N..N"));
        assert!(parse_peers("1..1000").is_err());
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
