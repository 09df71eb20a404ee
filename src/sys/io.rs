//! System calls that move bytes: `sendfile` (the reactor's file ranges) and
//! `sync_file_range` (a download's early writeback).

use std::fs::File;
use std::io;

/// Copies up to `count` bytes of `file` starting at `*offset` to the socket `sock`, advancing
/// `*offset` by what was sent. Returns the bytes sent (0 only at end of file), or
/// `WouldBlock` when the socket buffer is full.
#[cfg(target_os = "linux")]
pub fn sendfile<S: io::Write + std::os::fd::AsRawFd>(
    sock: &mut S,
    file: &File,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut off = libc::off_t::try_from(*offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
    // SAFETY: both descriptors are open for the duration of the call (borrowed), and `off` is a
    // valid, exclusively borrowed off_t the kernel writes the new offset into.
    let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    *offset = off as u64;
    Ok(n as usize)
}

/// Portable fallback: a positioned read into a small buffer and a write of what was read.
/// Bytes read but not accepted by the socket are simply read again next time.
#[cfg(not(target_os = "linux"))]
pub fn sendfile<S: io::Write + std::os::fd::AsRawFd>(
    sock: &mut S,
    file: &File,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 64 * 1024];
    let want = count.min(buf.len());
    let n = file.read_at(&mut buf[..want], *offset)?;
    if n == 0 {
        return Ok(0);
    }
    let sent = sock.write(&buf[..n])?;
    *offset += sent as u64;
    Ok(sent)
}

/// Asks the kernel to start writing `len` bytes of `file` at `offset` back to disk, without
/// waiting. A download calls it as data arrives so the final `fsync` has little left to do and
/// the disk works while the network does. Best effort: errors are ignored (`fsync` remains the
/// durability point).
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(n)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return;
        };
        // SAFETY: the descriptor is open (borrowed) and sync_file_range reads only its integer
        // arguments.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn sendfile_copies_from_offset() {
        let dir = std::env::temp_dir().join(format!("p2pshare-sendfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"0123456789")
            .unwrap();
        let file = File::open(&path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut off = 3;
        let n = sendfile(&mut server, &file, &mut off, 100).unwrap();
        assert_eq!((n, off), (7, 10));
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"3456789");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
