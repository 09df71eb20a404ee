//! The push relay between nodes: what one node sends another over core NATS (request and
//! reply, not the stream) when a peer asks a push to a holder whose session lives there.
//!
//! Node A (the requester's) sends a [`RelayedPush`] on `<prefix>-push.<node>` ([`subject`])
//! to the holder's node B, as the NATS thread's request (the reactor never waits on it). B
//! runs the same checks and budgets as for a push of its own peer (the holder's session takes
//! pushes; its index-wide budget; the requester's address's push budget at B) and answers
//! [`RelayAnswer`]. The subject carries B's incarnation, so a request to a node that died or
//! was fenced (it rejoined as a new incarnation) finds no subscriber: NATS answers "no
//! responders" at once, and A refuses the push. Every relay is bounded: A has at most
//! [`RELAYS_IN_FLIGHT_MAX`] in flight, each answered within [`RELAY_TIMEOUT`]; B's NATS
//! thread holds at most [`RELAYS_IN_MAX`] waiting for its reactor and answers any beyond at
//! once ([`RelayAnswer::Refused`], `Busy`).
//!
//! # Deadlines
//! A relay is worth delivering only while its requester's node still waits for the answer:
//! a notice delivered after A answered its requester `Busy` is a duplicate (the requester
//! asks again) that a holder would act on. So a relay carries its deadline on either side.
//! A's reactor hands its NATS thread the moment it gives the relay up; the NATS thread drops
//! a relay that reaches it past that moment unsent ([`remaining`]: one queued while the
//! thread stalled), and sends the others with the time left, at most [`RELAY_TIMEOUT`] (its
//! own wait), in a header ([`WITHIN_HEADER`], milliseconds; a header, not a field, so nodes
//! of the previous version still read the payload and theirs is still read). B's NATS
//! thread turns it into a deadline of its own clock from the moment the request came (a
//! task of its own reads the subscription and stamps each, so relays piled up while the
//! thread's loop awaited something else get no fresh wait; [`deadline_from`]: never later
//! than [`RELAY_TIMEOUT`] from then, whatever the header
//! claims; missing, as from an older node, it is that), and B's reactor refuses a relay it
//! reaches past it, undelivered. Both count as refused relays. What neither side sees is
//! the time the request spent in NATS between the two threads (the clocks of two machines
//! are not compared): B's deadline starts when its NATS client hands the request over.
//!
//! What A sends is what it checked: `to` is the requester's address as A sees it (the IP on
//! its socket, the port it announced), never a peer's claim; `holder` and `hash` are the
//! requester's, as in a local push. So a requester can make B's holders connect only to
//! itself, and no faster than B's budgets allow pushes from its address, however many nodes
//! it asks through.
//!
//! The subject's `-` never appears in a prefix (letters, digits, `_`), so no cluster's
//! stream (`<prefix>.>`) stores these requests.

use crate::wire::{ErrorCode, FileHash};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The first byte of every relay message's payload: its format.
pub const RELAY_FORMAT: u8 = 1;

/// How long node A waits for the holder's node to answer a relayed push.
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(2);

/// Most pushes a node has relayed to other nodes and not had answered yet; beyond, a push to
/// another node's holder is answered `RateLimited`.
pub const RELAYS_IN_FLIGHT_MAX: usize = 64;

/// Most of those to one node, or for one requester's address (IPv4, IPv6 /64): a slow node
/// or a few busy hosts take a quarter of the room at most, and pushes to the other nodes'
/// holders go on.
pub const RELAYS_IN_FLIGHT_PER_KEY: usize = RELAYS_IN_FLIGHT_MAX / 4;

/// Most pushes from other nodes a node's NATS thread holds for its reactor; beyond, it
/// answers `Busy` at once.
pub const RELAYS_IN_MAX: usize = 256;

/// The header a relay's time left travels in, in milliseconds (see the module docs).
pub const WITHIN_HEADER: &str = "P2p-Relay-Within-Ms";

/// How long a relay given up at `deadline` may still wait for its answer at `now`, at most
/// [`RELAY_TIMEOUT`]; `None` once the deadline has passed (the relay is dropped unsent).
pub fn remaining(deadline: Instant, now: Instant) -> Option<Duration> {
    let left = deadline.checked_duration_since(now)?;
    (!left.is_zero()).then(|| left.min(RELAY_TIMEOUT))
}

/// The deadline of a relay read at `received` whose [`WITHIN_HEADER`] says `within` (if it
/// has one): never later than [`RELAY_TIMEOUT`] from `received`, the longest any node waits.
pub fn deadline_from(received: Instant, within: Option<&str>) -> Instant {
    let claimed = within
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(RELAY_TIMEOUT, Duration::from_millis);
    received + claimed.min(RELAY_TIMEOUT)
}

/// The subject node `node` takes relayed pushes on.
pub fn subject(prefix: &str, node: &str) -> String {
    format!("{prefix}-push.{node}")
}

/// A push relayed to the holder's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedPush {
    /// The file.
    pub hash: FileHash,
    /// The holder's address, as the requester named it (from a lookup).
    pub holder: SocketAddr,
    /// The requester's address as its node sees it: where the holder is to connect.
    pub to: SocketAddr,
    /// The requester's nonce.
    pub nonce: u64,
}

/// The holder's node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayAnswer {
    /// The push went to the holder's session.
    Relayed,
    /// Over a budget at the holder's node: ask again after this long.
    RateLimited {
        /// How long, in ms.
        retry_after_ms: u64,
    },
    /// Refused for good (or not answered); the sentence says why.
    Refused {
        /// The error the requester gets.
        code: ErrorCode,
        /// Why.
        message: String,
    },
}

impl RelayAnswer {
    /// A refusal with `code`, saying `message`.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> RelayAnswer {
        RelayAnswer::Refused {
            code,
            message: message.into(),
        }
    }
}

/// `value` as a relay message's payload.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RELAY_FORMAT];
    postcard::to_io(value, &mut out).expect("a relay message always encodes");
    out
}

/// A relay message's payload decoded; `None` for another format or a malformed payload.
pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Option<T> {
    match payload.split_first() {
        Some((&RELAY_FORMAT, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_messages_round_trip_and_other_formats_are_refused() {
        let push = RelayedPush {
            hash: FileHash::of(b"x"),
            holder: "10.0.0.1:0".parse().unwrap(),
            to: "[::1]:7000".parse().unwrap(),
            nonce: 42,
        };
        let bytes = encode(&push);
        assert_eq!(decode::<RelayedPush>(&bytes), Some(push));
        assert_eq!(decode::<RelayedPush>(&bytes[..bytes.len() - 1]), None);
        let mut other = bytes.clone();
        other[0] = RELAY_FORMAT + 1;
        assert_eq!(decode::<RelayedPush>(&other), None);
        for answer in [
            RelayAnswer::Relayed,
            RelayAnswer::RateLimited { retry_after_ms: 5 },
            RelayAnswer::refused(ErrorCode::NotFound, "gone"),
        ] {
            assert_eq!(decode::<RelayAnswer>(&encode(&answer)), Some(answer));
        }
        assert_eq!(subject("p2p", "b-1f"), "p2p-push.b-1f");
    }

    #[test]
    fn a_relay_past_its_deadline_is_not_sent_and_the_time_left_is_bounded_on_both_sides() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        // A's side: the time left, at most the NATS thread's own wait; none once past.
        assert_eq!(remaining(now + ms(700), now), Some(ms(700)));
        assert_eq!(remaining(now + ms(2900), now), Some(RELAY_TIMEOUT));
        assert_eq!(remaining(now, now), None);
        assert_eq!(remaining(now, now + ms(1)), None);
        // B's side: the header's time from the moment it is read, never more than the
        // longest wait, whatever it claims; an older node's relay (no header) gets that.
        assert_eq!(deadline_from(now, Some("700")), now + ms(700));
        assert_eq!(deadline_from(now, Some("0")), now);
        assert_eq!(deadline_from(now, Some("99999999")), now + RELAY_TIMEOUT);
        assert_eq!(deadline_from(now, Some("soon")), now + RELAY_TIMEOUT);
        assert_eq!(deadline_from(now, None), now + RELAY_TIMEOUT);
        // What A sends is what B reads back.
        let left = remaining(now + ms(1234), now).unwrap();
        let sent = left.as_millis().to_string();
        assert_eq!(deadline_from(now, Some(&sent)), now + ms(1234));
    }
}
