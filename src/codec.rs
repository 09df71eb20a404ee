//! The `\r\r\n` frame codec: sans-IO, incremental, binary-safe.
//!
//! # Byte layout
//!
//! ```text
//! +-------------------------+---------------------+-------------+
//! | length: LEB128 varint   | payload: length     | terminator  |
//! | 1..=5 bytes, canonical  | bytes, any values   | \r \r \n    |
//! +-------------------------+---------------------+-------------+
//! ```
//!
//! The original protocol ended every message with `\r\r\n`. A payload may itself contain
//! `\r\r\n` (a file named `a\r\r\nb` is legal on Linux), so the terminator alone cannot delimit
//! frames. A length header in front of the payload makes the layout unambiguous: the decoder
//! knows where the payload ends without looking inside it, and the terminator is then *checked*,
//! which catches a desynchronised or garbage stream at the first frame.
//!
//! The length is an unsigned LEB128 varint (7 bits a byte, low group first, high bit set on every
//! byte but the last), at most 5 bytes, value at most `u32::MAX`, and canonical (no redundant
//! trailing `0x80 .. 0x00` groups), so every frame has exactly one encoding.
//!
//! # Invariants
//! - `decode` never panics, whatever the bytes; `Ok(None)` only means "need more bytes".
//! - A frame whose declared length exceeds the configured maximum is rejected as soon as its
//!   header has been read: the payload is never buffered.
//! - Decoding is O(1) per call (no scan of the payload), so byte-at-a-time input costs nothing
//!   quadratic.
//! - Encoding appends to a caller-owned buffer: a reused buffer means no allocation per frame.

use std::fmt;
use std::ops::Range;

/// The bytes that end every frame.
pub const TERMINATOR: &[u8; 3] = b"\r\r\n";
/// The longest length header: a LEB128 `u32` takes at most 5 bytes.
pub const MAX_HEADER_BYTES: usize = 5;
/// Default largest payload a peer may send: 1 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Why a byte stream is not a valid sequence of frames. Every variant means "close this
/// connection": the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length header is longer than 5 bytes, overflows `u32`, or is not canonical.
    BadHeader,
    /// The declared payload length is larger than the configured maximum.
    TooLarge {
        /// Length the header declared.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The three bytes after the payload are not `\r\r\n`.
    BadTerminator,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadHeader => f.write_str("malformed frame length header"),
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
            FrameError::BadTerminator => f.write_str("frame not terminated by \\r\\r\\n"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A complete frame found at the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Where the payload sits in the buffer passed to [`Decoder::decode`].
    pub payload: Range<usize>,
    /// How many bytes of the buffer the whole frame (header, payload, terminator) used.
    pub consumed: usize,
}

/// Incremental frame decoder.
///
/// The caller keeps the bytes (typically a connection's read buffer) and calls
/// [`decode`](Decoder::decode) with whatever is unconsumed; after a frame it drops
/// `consumed` bytes from the front and calls again.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_payload: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl Decoder {
    /// A decoder that rejects payloads longer than `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Decoder { max_payload }
    }

    /// The largest payload this decoder accepts.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Looks for one complete frame at the start of `buf`.
    ///
    /// `Ok(None)`: not enough bytes yet. `Ok(Some(d))`: a frame whose payload is
    /// `buf[d.payload]`. `Err(_)`: the stream is broken and the connection should close.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<Decoded>, FrameError> {
        let (len, header) = match read_varint(buf)? {
            Some(v) => v,
            None => return Ok(None),
        };
        if len > self.max_payload as u64 {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        let end = header + len as usize;
        let Some(term) = buf.get(end..end + TERMINATOR.len()) else {
            // Check the part of the terminator that already arrived, so garbage is caught early.
            let seen = buf.len().saturating_sub(end);
            if seen > 0 && buf[end..] != TERMINATOR[..seen] {
                return Err(FrameError::BadTerminator);
            }
            return Ok(None);
        };
        if term != TERMINATOR {
            return Err(FrameError::BadTerminator);
        }
        Ok(Some(Decoded {
            payload: header..end,
            consumed: end + TERMINATOR.len(),
        }))
    }
}

impl Decoder {
    /// The whole length (header, payload and terminator) of the frame at the start of `buf`,
    /// once its header has arrived, if its payload is within the maximum: a reader that
    /// buffers a partial frame makes room for all of it at once, so that its arrival over
    /// many reads never grows (reallocates and copies) the buffer.
    pub fn frame_len(&self, buf: &[u8]) -> Option<usize> {
        let (len, header) = read_varint(buf).ok()??;
        (len <= self.max_payload as u64).then(|| header + len as usize + TERMINATOR.len())
    }
}

/// Reads a canonical LEB128 `u32` from the front of `buf`: `(value, bytes used)`.
fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, FrameError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().take(MAX_HEADER_BYTES).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // Canonical: a multi-byte varint may not end in a zero group.
            if i > 0 && byte == 0 {
                return Err(FrameError::BadHeader);
            }
            if value > u64::from(u32::MAX) {
                return Err(FrameError::BadHeader);
            }
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_HEADER_BYTES {
        return Err(FrameError::BadHeader);
    }
    Ok(None)
}

/// How many bytes the varint header of a `len`-byte payload takes.
pub fn header_len(len: usize) -> usize {
    let mut n = 1;
    let mut v = len >> 7;
    while v != 0 {
        n += 1;
        v >>= 7;
    }
    n
}

fn write_varint(mut value: u32, out: &mut [u8]) -> usize {
    let mut i = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// Appends one frame carrying `payload` to `out`.
///
/// Panics if `payload` is longer than `u32::MAX` bytes; callers limit frames far below that.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("frame payload over 4 GiB");
    let mut header = [0u8; MAX_HEADER_BYTES];
    let n = write_varint(len, &mut header);
    out.reserve(n + payload.len() + TERMINATOR.len());
    out.extend_from_slice(&header[..n]);
    out.extend_from_slice(payload);
    out.extend_from_slice(TERMINATOR);
}

/// Appends one frame to `out` whose payload is whatever `write` appends to the vector it is
/// given. The payload is written in place (no intermediate buffer); the header is fixed up
/// afterwards. If `write` fails, `out` is truncated back to what it held before.
pub fn encode_with<E>(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&[0u8; MAX_HEADER_BYTES]);
    if let Err(e) = write(out) {
        out.truncate(start);
        return Err(e);
    }
    if out.len() - start - MAX_HEADER_BYTES > u32::MAX as usize {
        out.truncate(start);
        panic!("frame payload over 4 GiB");
    }
    finish_in_place(out, start);
    Ok(())
}

/// Fixes up a frame whose payload was appended after `MAX_HEADER_BYTES` placeholder bytes at
/// `start`: writes the real header, closes the gap and appends the terminator.
fn finish_in_place(out: &mut Vec<u8>, start: usize) {
    let payload_len = out.len() - start - MAX_HEADER_BYTES;
    let len = u32::try_from(payload_len).expect("frame payload over 4 GiB");
    let n = header_len(payload_len);
    let header_at = start + MAX_HEADER_BYTES - n;
    write_varint(len, &mut out[header_at..start + MAX_HEADER_BYTES]);
    if n < MAX_HEADER_BYTES {
        out.copy_within(header_at.., start);
        out.truncate(out.len() - (MAX_HEADER_BYTES - n));
    }
    out.extend_from_slice(TERMINATOR);
}

/// Decodes every complete frame in `buf`, returning the payloads and how many bytes they used.
/// A convenience for tests and fuzzing; the reactor drives [`Decoder`] directly.
pub fn decode_all(decoder: &mut Decoder, buf: &[u8]) -> Result<(Vec<Vec<u8>>, usize), FrameError> {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(d) = decoder.decode(&buf[at..])? {
        frames.push(buf[at + d.payload.start..at + d.payload.end].to_vec());
        at += d.consumed;
    }
    Ok((frames, at))
}

/// Fuzzing entry point (`fuzz/fuzz_targets/codec.rs`): decodes `data` in arbitrary chunks and
/// checks that the chunking changes nothing and that every frame re-encodes to its own bytes.
///
/// The first byte picks the payload limit (small ones make `TooLarge` reachable), the second
/// seeds the chunk sizes; the rest is the stream.
#[doc(hidden)]
pub fn fuzz_chunks(data: &[u8]) {
    let [limit, seed, stream @ ..] = data else {
        return;
    };
    let max = [0, 1, 3, 16, 200, 4096, DEFAULT_MAX_FRAME_BYTES][*limit as usize % 7];
    // The whole stream at once is the reference.
    let mut whole = Decoder::new(max);
    let expected = decode_all(&mut whole, stream);
    if let Ok((frames, used)) = &expected {
        // Canonical layout: the frames decoded are exactly the bytes consumed, re-encoded.
        let mut again = Vec::new();
        for f in frames {
            assert!(f.len() <= max);
            encode(f, &mut again);
        }
        assert_eq!(&again[..], &stream[..*used]);
    }
    // The same stream arriving in chunks, kept like the reactor keeps a partial frame.
    let mut decoder = Decoder::new(max);
    let mut pending: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    let mut used_total = 0;
    let mut error = None;
    let mut at = 0;
    let mut x = u32::from(*seed) | 1;
    'feed: while at < stream.len() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (1 + x as usize % 9).min(stream.len() - at);
        pending.extend_from_slice(&stream[at..at + n]);
        at += n;
        loop {
            match decoder.decode(&pending) {
                Ok(Some(d)) => {
                    assert!(d.payload.end + TERMINATOR.len() == d.consumed);
                    assert!(d.consumed <= pending.len());
                    frames.push(pending[d.payload].to_vec());
                    pending.drain(..d.consumed);
                    used_total += d.consumed;
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    match (expected, error) {
        (Ok((want, used)), None) => {
            assert_eq!(frames, want);
            assert_eq!(used_total, used);
        }
        (Err(want), Some(got)) => {
            assert_eq!(want, got);
            assert_eq!(frames.len(), whole_frames_before_error(max, stream));
        }
        (want, got) => panic!("whole: {want:?}, chunked: {got:?}"),
    }
}

/// How many frames precede the first error in `stream`.
fn whole_frames_before_error(max: usize, stream: &[u8]) -> usize {
    let mut decoder = Decoder::new(max);
    let mut at = 0;
    let mut n = 0;
    while let Ok(Some(d)) = decoder.decode(&stream[at..]) {
        at += d.consumed;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(payload, &mut out);
        out
    }

    /// Feeds `wire` split at `cuts` and collects every frame, as the reactor would.
    fn feed_split(max: usize, wire: &[u8], cuts: &[usize]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut dec = Decoder::new(max);
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        let mut last = 0;
        let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(wire.len())).collect();
        points.push(wire.len());
        points.sort_unstable();
        for p in points {
            buf.extend_from_slice(&wire[last..p]);
            last = p;
            let (mut got, used) = decode_all(&mut dec, &buf)?;
            frames.append(&mut got);
            buf.drain(..used);
        }
        assert!(buf.is_empty(), "bytes left over: {buf:?}");
        Ok(frames)
    }

    #[test]
    fn layout_is_documented_one() {
        assert_eq!(frame(b"hi"), b"\x02hi\r\r\n");
        assert_eq!(frame(b""), b"\x00\r\r\n");
        let big = vec![7u8; 300];
        let f = frame(&big);
        assert_eq!(&f[..2], &[0xac, 0x02]); // 300 = 0b10_0101100
        assert_eq!(&f[f.len() - 3..], TERMINATOR);
    }

    #[test]
    fn special_payloads_round_trip() {
        let payloads: Vec<Vec<u8>> = vec![
            b"\r\r\n".to_vec(),
            Vec::new(),
            vec![b'\r'; 1000],
            b"\r\r\n\r\r\n\r\r".to_vec(),
            b"a\r\r\nb".to_vec(),
        ];
        let mut wire = Vec::new();
        for p in &payloads {
            encode(p, &mut wire);
        }
        for cut in 0..=wire.len() {
            assert_eq!(feed_split(1 << 20, &wire, &[cut]).unwrap(), payloads);
        }
        // One byte at a time.
        let all: Vec<usize> = (0..wire.len()).collect();
        assert_eq!(feed_split(1 << 20, &wire, &all).unwrap(), payloads);
    }

    #[test]
    fn oversize_rejected_from_header_alone() {
        let mut dec = Decoder::new(100);
        assert_eq!(
            dec.decode(&frame(&[1u8; 100])).unwrap().unwrap().consumed,
            104
        );
        // Only the header of a 101-byte frame: rejected before any payload arrives.
        let f = frame(&[1u8; 101]);
        assert_eq!(
            dec.decode(&f[..1]),
            Err(FrameError::TooLarge { len: 101, max: 100 })
        );
        // A header claiming 4 GiB - 1.
        assert!(matches!(
            dec.decode(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn bad_headers() {
        let mut dec = Decoder::new(usize::MAX);
        assert_eq!(
            dec.decode(&[0x80, 0x80, 0x80, 0x80, 0x80]),
            Err(FrameError::BadHeader)
        );
        assert_eq!(
            dec.decode(&[0xff, 0xff, 0xff, 0xff, 0x10]),
            Err(FrameError::BadHeader)
        );
        assert_eq!(dec.decode(&[0x81, 0x00]), Err(FrameError::BadHeader));
        assert_eq!(dec.decode(&[0x80, 0x80]), Ok(None));
    }

    #[test]
    fn truncated_and_garbage() {
        let mut dec = Decoder::default();
        let f = frame(b"hello");
        for n in 0..f.len() {
            assert_eq!(dec.decode(&f[..n]), Ok(None), "prefix {n}");
        }
        // Wrong terminator is caught on its first wrong byte.
        assert_eq!(dec.decode(b"\x02hiX"), Err(FrameError::BadTerminator));
        assert_eq!(dec.decode(b"\x02hi\r\rX"), Err(FrameError::BadTerminator));
        // An HTTP request is not a frame: 'G' = 71-byte payload, then the terminator is wrong.
        let http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4);
        assert!(decode_all(&mut dec, &http).is_err());
        // A flood of bare terminators: '\r' = 13-byte length, then no terminator.
        let flood = TERMINATOR.repeat(10);
        assert!(decode_all(&mut dec, &flood).is_err());
    }

    #[test]
    fn frame_len_is_the_whole_frame_once_its_header_is_in() {
        let dec = Decoder::new(100_000);
        for len in [0usize, 1, 127, 128, 16383, 16384, 70000] {
            let f = frame(&vec![7u8; len]);
            let header = header_len(len);
            for n in 0..header {
                assert_eq!(dec.frame_len(&f[..n]), None, "len {len}, prefix {n}");
            }
            for n in [header, header + 1, f.len() - 1, f.len()] {
                assert_eq!(
                    dec.frame_len(&f[..n]),
                    Some(f.len()),
                    "len {len}, prefix {n}"
                );
            }
        }
        // Over the maximum, or a broken header: no room asked for.
        assert_eq!(dec.frame_len(&frame(&vec![0u8; 100_001])), None);
        assert_eq!(dec.frame_len(&[0x81, 0x00]), None);
    }

    #[test]
    fn encode_with_matches_encode() {
        for len in [0usize, 1, 127, 128, 16383, 16384, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut a = b"prefix".to_vec();
            encode_with::<()>(&mut a, |v| {
                v.extend_from_slice(&payload);
                Ok(())
            })
            .unwrap();
            let mut b = b"prefix".to_vec();
            encode(&payload, &mut b);
            assert_eq!(a, b, "len {len}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn round_trip_any_split(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..12),
            cuts in prop::collection::vec(any::<usize>(), 0..20),
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                encode(p, &mut wire);
            }
            let cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
            prop_assert_eq!(feed_split(1 << 16, &wire, &cuts).unwrap(), payloads);
        }

        #[test]
        fn round_trip_terminator_heavy(
            payloads in prop::collection::vec(
                prop::collection::vec(prop::sample::select(vec![b'\r', b'\n', 0u8, 0x80]), 0..200),
                1..8),
            cut in any::<usize>(),
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                encode(p, &mut wire);
            }
            let cut = cut % (wire.len() + 1);
            prop_assert_eq!(feed_split(1 << 16, &wire, &[cut]).unwrap(), payloads);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000), max in 0usize..4096) {
            let mut dec = Decoder::new(max);
            let mut at = 0;
            // Every frame found is within bounds and within the limit.
            while let Ok(Some(d)) = dec.decode(&bytes[at..]) {
                prop_assert!(d.payload.len() <= max);
                prop_assert!(at + d.consumed <= bytes.len());
                at += d.consumed;
            }
        }
    }
}
