//! A blocking index client for the closed-loop load: one connection, one request in flight.
//! Closed-loop latency wants exactly this shape (send, wait, time), and a thread per
//! simulated peer keeps every peer's clock honest on its own.

use p2pshare::codec::Decoder;
use p2pshare::wire::{
    self, ErrorCode, Request, RequestBody, Response, ResponseBody, PROTOCOL_VERSION,
};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Longest the bench waits for one answer before calling the index stuck.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response frame accepted (a search answer is bounded by the server's result cap).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Bytes one read asks for.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// One session with the index.
pub struct Client {
    stream: TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    decoder: Decoder,
    next_id: u32,
    /// What each read fills, kept from call to call: a fresh 16 KiB buffer a read was
    /// zeroed on every call, a cost the timed round trip paid and the floor's ping did not.
    chunk: Box<[u8]>,
}

impl Client {
    /// Connects to `addr` and completes the handshake announcing `listen_port`. An index at
    /// a connection limit answers `Busy` and closes: that error names the indexd flag that
    /// lifts the limit, as every session of the bench comes from one address.
    pub fn hello(addr: SocketAddr, listen_port: u16, agent: &str) -> io::Result<Client> {
        Client::hello_on(TcpStream::connect(addr)?, addr, listen_port, agent)
    }

    /// [`Client::hello`] on a stream already connected to `addr`.
    pub fn hello_on(
        stream: TcpStream,
        addr: SocketAddr,
        listen_port: u16,
        agent: &str,
    ) -> io::Result<Client> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut c = Client {
            stream,
            inbuf: Vec::with_capacity(64 * 1024),
            outbuf: Vec::with_capacity(4096),
            decoder: Decoder::new(MAX_RESPONSE_BYTES),
            next_id: 1,
            chunk: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
        };
        let answer = c.call(RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port,
            agent: agent.into(),
        });
        match answer {
            Ok(ResponseBody::Welcome { .. }) => Ok(c),
            Ok(other) => Err(io::Error::other(format!("handshake refused: {other:?}"))),
            Err(e) => match refusal(&e) {
                Some(message) => Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!(
                        "indexd at {addr} refused a session: busy, \"{message}\". {}",
                        busy_remedy(message)
                    ),
                )),
                None => Err(e),
            },
        }
    }

    /// The connection itself, for a caller that writes and reads its own frames after the
    /// handshake. Fails if an unexpected frame has already arrived.
    pub fn into_stream(self) -> io::Result<TcpStream> {
        if !self.inbuf.is_empty() {
            return Err(io::Error::other(
                "the index sent more than its answer to the handshake",
            ));
        }
        Ok(self.stream)
    }

    /// Sends `body` and waits for its answer.
    pub fn call(&mut self, body: RequestBody) -> io::Result<ResponseBody> {
        let id = self.prepare(body);
        self.exchange()?;
        self.answer(id)
    }

    /// Encodes `body` as the next request, ready for [`Client::exchange`]; returns its id.
    /// Together with [`Client::answer`] this keeps the client's own encoding and decoding
    /// out of a timed round trip, as the bare ping-pong has none.
    pub fn prepare(&mut self, body: RequestBody) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.outbuf.clear();
        wire::encode_frame(&Request { id, body }, &mut self.outbuf);
        id
    }

    /// Writes the prepared request and reads until its whole answer frame has arrived.
    pub fn exchange(&mut self) -> io::Result<()> {
        if let Err(e) = self.stream.write_all(&self.outbuf) {
            // An index at a connection limit writes its refusal and closes at once, which
            // can fail the write; the refusal may still be there to read, and says more.
            return self.fill_frame().map_err(|_| e);
        }
        self.fill_frame()
    }

    /// Decodes the answer [`Client::exchange`] received, which must be to request `id`.
    pub fn answer(&mut self, id: u32) -> io::Result<ResponseBody> {
        self.fill_frame()?;
        let d = self
            .decoder
            .decode(&self.inbuf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
            .expect("fill_frame leaves a whole frame");
        let resp = wire::decode::<Response>(&self.inbuf[d.payload.clone()])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
        self.inbuf.drain(..d.consumed);
        let resp = resp?;
        if let (
            0,
            ResponseBody::Error {
                code: ErrorCode::Busy,
                message,
            },
        ) = (resp.id, &resp.body)
        {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                Refused(message.clone()),
            ));
        }
        if resp.id != id {
            return Err(io::Error::other(format!(
                "answer to request {} arrived for request {id}",
                resp.id
            )));
        }
        Ok(resp.body)
    }

    /// Reads until `inbuf` starts with a whole frame.
    fn fill_frame(&mut self) -> io::Result<()> {
        loop {
            let decoded = self
                .decoder
                .decode(&self.inbuf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if decoded.is_some() {
                return Ok(());
            }
            match self.stream.read(&mut self.chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the index closed the connection",
                    ))
                }
                Ok(n) => self.inbuf.extend_from_slice(&self.chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The index turned the connection away (`Busy`, request id 0, then a close): its message.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the index refused the connection: busy, \"{}\"", self.0)
    }
}

impl std::error::Error for Refused {}

/// The index's message if `e` is its refusal of the connection.
fn refusal(e: &io::Error) -> Option<&str> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Refused>())
        .map(|r| r.0.as_str())
}

/// What lifts the limit an index's busy `message` names. indexd words its two limits
/// "server full (N connections)" and "too many connections from your address (N)".
fn busy_remedy(message: &str) -> &'static str {
    if message.contains("your address") {
        "Every session of the bench comes from one address: start that indexd with \
         --max-connections-per-ip 0 (no per-address limit), or measure without --index."
    } else {
        "Start that indexd with a higher --max-connections (the bench opens one session per \
         1,000 pre-populated files plus one per simulated peer), or measure without --index."
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A listener that answers every connection as indexd does at a connection limit
    /// (after reading the request, so the close is clean and the test deterministic).
    fn refusing_index(message: &str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Exactly what indexd sends.
        let frame = wire::index_busy_frame(message.into());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let _ = stream.read(&mut [0u8; 1024]);
                let _ = stream.write_all(&frame);
            }
        });
        addr
    }

    #[test]
    fn a_busy_index_is_reported_with_the_flag_that_lifts_the_limit() {
        let addr = refusing_index("too many connections from your address (2)");
        let e = Client::hello(addr, 1, "test").err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let text = e.to_string();
        assert!(
            text.contains("too many connections from your address (2)"),
            "{text}"
        );
        assert!(text.contains("--max-connections-per-ip 0"), "{text}");
        assert!(!text.contains("request 0"), "{text}");

        let addr = refusing_index("server full (10 connections)");
        let text = Client::hello(addr, 1, "test")
            .err()
            .expect("refused")
            .to_string();
        assert!(text.contains("server full"), "{text}");
        assert!(text.contains("--max-connections "), "{text}");
    }
}
