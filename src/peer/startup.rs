//! Start-up checks of the peer's flags. A mistake the person can fix (an index address
//! without a port, a name that does not resolve, a directory the peer cannot write) stops the
//! peer at once with a message naming the flag and the value, and `peer` exits with status 2;
//! it is never retried in the background. An index that resolves but does not answer yet is
//! no mistake: the session keeps trying (see `session`).
//!
//! [`parse_index`] is pure; [`check_index`] also looks the host up (blocking: it runs in
//! `main`, before the reactor and anything it serves).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

/// An index address as given: an IP address with its port, or a host name and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexAddr {
    /// `IP:PORT` or `[IPv6]:PORT`.
    Addr(SocketAddr),
    /// `HOST:PORT`, looked up when connecting.
    Name {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

/// Reads `--index` (`HOST:PORT`, an IPv6 address in brackets), or says what is wrong.
pub fn parse_index(index: &str) -> Result<IndexAddr, String> {
    let bad = |why: String| Err(format!("--index {index:?}: {why}"));
    if let Ok(addr) = index.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return bad("port 0 is no index's port".into());
        }
        return Ok(IndexAddr::Addr(addr));
    }
    let example = "HOST:PORT, e.g. localhost:9000 or [::1]:9000";
    let Some((host, port)) = index.rsplit_once(':') else {
        return bad(format!("no port: give {example}"));
    };
    if host.starts_with('[') || host.contains(':') {
        // `[::1]`, `::1`, `[::1:9000`...: an IPv6 address, not written as one with a port.
        return bad(format!("not an IPv6 address with a port: give {example}"));
    }
    if host.is_empty() {
        return bad(format!("no host: give {example}"));
    }
    if port.is_empty() {
        return bad(format!("no port: give {example}"));
    }
    match port.parse::<u16>() {
        Ok(0) => bad("port 0 is no index's port".into()),
        Ok(port) => Ok(IndexAddr::Name {
            host: host.to_string(),
            port,
        }),
        Err(_) => bad(format!("{port:?} is not a port (1 to 65535)")),
    }
}

/// Each address of `--index` (one, or the comma-separated nodes of a cluster) checked by
/// [`check_one_index`].
pub fn check_index(index: &str) -> Result<(), String> {
    let mut addresses = index.split(',').map(str::trim).filter(|a| !a.is_empty());
    let first = addresses
        .next()
        .ok_or_else(|| format!("--index {index:?}: no address"))?;
    std::iter::once(first)
        .chain(addresses)
        .try_for_each(check_one_index)
}

/// [`parse_index`], then a host name is looked up once: a name that does not resolve is a
/// mistake, not an index that is down.
fn check_one_index(index: &str) -> Result<(), String> {
    let IndexAddr::Name { host, port } = parse_index(index)? else {
        return Ok(());
    };
    match (host.as_str(), port).to_socket_addrs() {
        Ok(addrs) if addrs.len() > 0 => Ok(()),
        Ok(_) => Err(format!("--index {index:?}: {host} has no address")),
        Err(e) => Err(format!("--index {index:?}: cannot resolve {host}: {e}")),
    }
}

/// Whether files can be created in `dir`: creates and removes a probe file. `what` names the
/// flag (or default) the directory came from, for the message.
pub fn check_writable(dir: &Path, what: &str) -> Result<(), String> {
    let probe = dir.join(format!(".p2pshare-write-test.{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "{what} {}: cannot create files there: {e}",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_of_a_cluster_list_is_checked() {
        assert_eq!(check_index("127.0.0.1:9000, [::1]:9001,"), Ok(()));
        let err = check_index("127.0.0.1:9000,localhost").unwrap_err();
        assert!(err.contains("\"localhost\""), "{err}");
        assert!(check_index(" , ").unwrap_err().contains("no address"));
    }

    #[test]
    fn an_index_needs_a_host_and_a_port() {
        assert_eq!(
            parse_index("127.0.0.1:9000"),
            Ok(IndexAddr::Addr("127.0.0.1:9000".parse().unwrap()))
        );
        assert_eq!(
            parse_index("[::1]:9000"),
            Ok(IndexAddr::Addr("[::1]:9000".parse().unwrap()))
        );
        assert_eq!(
            parse_index("index.example:9000"),
            Ok(IndexAddr::Name {
                host: "index.example".into(),
                port: 9000
            })
        );
        for (bad, why) in [
            ("localhost", "no port"),
            ("localhost:", "no port"),
            (":9000", "no host"),
            ("localhost:http", "\"http\" is not a port"),
            ("localhost:70000", "is not a port"),
            ("localhost:0", "port 0"),
            ("127.0.0.1:0", "port 0"),
            ("::1", "IPv6"),
            ("[::1]", "IPv6"),
            ("::1:9000", "IPv6"),
            ("", "no port"),
        ] {
            let e = parse_index(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.starts_with(&format!("--index {bad:?}: ")), "{e}");
        }
    }

    #[test]
    fn a_name_that_does_not_resolve_is_a_mistake() {
        // `.invalid` never resolves (RFC 6761).
        let e = check_index("no-such-index.invalid:9000").unwrap_err();
        assert!(e.contains("cannot resolve no-such-index.invalid"), "{e}");
        assert_eq!(check_index("127.0.0.1:9000"), Ok(()));
    }

    #[test]
    fn a_directory_that_is_no_directory_is_not_writable() {
        let file = std::env::temp_dir().join(format!("p2pshare-startup-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let e = check_writable(&file, "--downloads").unwrap_err();
        assert!(
            e.starts_with(&format!("--downloads {}: ", file.display())),
            "{e}"
        );
        std::fs::remove_file(&file).unwrap();
        assert_eq!(check_writable(&std::env::temp_dir(), "--downloads"), Ok(()));
    }
}
