//! A blocking index client for the closed-loop load: one connection, one request in flight.
//! Closed-loop latency wants exactly this shape (send, wait, time), and a thread per
//! simulated peer keeps every peer's clock honest on its own.

use p2pshare::codec::Decoder;
use p2pshare::wire::{self, Request, RequestBody, Response, ResponseBody, PROTOCOL_VERSION};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Longest the bench waits for one answer before calling the index stuck.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response frame accepted (a search answer is bounded by the server's result cap).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// One session with the index.
pub struct Client {
    stream: TcpStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    decoder: Decoder,
    next_id: u32,
}

impl Client {
    /// Connects to `addr` and completes the handshake announcing `listen_port`.
    pub fn hello(addr: SocketAddr, listen_port: u16, agent: &str) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut c = Client {
            stream,
            inbuf: Vec::with_capacity(64 * 1024),
            outbuf: Vec::with_capacity(4096),
            decoder: Decoder::new(MAX_RESPONSE_BYTES),
            next_id: 1,
        };
        match c.call(RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port,
            agent: agent.into(),
        })? {
            ResponseBody::Welcome { .. } => Ok(c),
            other => Err(io::Error::other(format!("handshake refused: {other:?}"))),
        }
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
        self.stream.write_all(&self.outbuf)?;
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
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the index closed the connection",
                    ))
                }
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
