//! Session-level tests: exact bytes against what Go sends and expects, error
//! paths, and a client and server session wired back to back.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::*;

const MIB: u32 = 1024 * 1024;

fn frame(frame_type: FrameType, flags: Flags, id: u32, length: u32) -> Vec<u8> {
    Header::new(frame_type, flags, id, length)
        .to_bytes()
        .to_vec()
}

fn data_frame(flags: Flags, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = frame(FrameType::Data, flags, id, payload.len() as u32);
    out.extend_from_slice(payload);
    out
}

/// Splits a buffer of whole frames (as `take_outbound` returns) into headers
/// and payloads.
fn parse_frames(mut bytes: &[u8]) -> Vec<(Header, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let raw: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        let header = Header::decode(&raw).unwrap();
        bytes = &bytes[HEADER_LEN..];
        let body_len = if header.frame_type == FrameType::Data {
            header.length as usize
        } else {
            0
        };
        out.push((header, bytes[..body_len].to_vec()));
        bytes = &bytes[body_len..];
    }
    out
}

fn feed(session: &mut Session, bytes: &[u8], now: Instant) -> Result<(), SessionError> {
    let mut input = BytesMut::from(bytes);
    let result = session.receive(&mut input, now);
    if result.is_ok() {
        assert!(input.is_empty(), "whole frames must be consumed");
    }
    result
}

fn drain(session: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

fn outbound(session: &mut Session) -> Vec<u8> {
    session.take_outbound().to_vec()
}

/// A server session with Go's fixed windows (every stream granted the full
/// window at once), which most byte-exact tests below compare against.
fn server() -> (Session, Instant) {
    let now = Instant::now();
    (Session::new(go_server(), now), now)
}

fn go_server() -> Config {
    Config {
        window_autotune: false,
        ..Config::server()
    }
}

/// The exact frame frpc sends to open stream `id` with its 6 MiB window.
fn go_syn(id: u32) -> Vec<u8> {
    frame(FrameType::WindowUpdate, Flags::SYN, id, 0x005C_0000)
}

const GO_AWAY_PROTO: [u8; 12] = [0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

#[test]
fn ack_on_accept_is_queued_immediately() {
    let (mut s, now) = server();
    let syn = [0x00, 0x01, 0x00, 0x01, 0, 0, 0, 1, 0x00, 0x5C, 0x00, 0x00];
    assert_eq!(go_syn(1), syn);
    feed(&mut s, &syn, now).unwrap();
    assert_eq!(
        outbound(&mut s),
        [0x00, 0x01, 0x00, 0x02, 0, 0, 0, 1, 0x00, 0x5C, 0x00, 0x00]
    );
    assert_eq!(drain(&mut s), [Event::StreamOpened(1)]);
    // frpc's SYN delta lifts our send credit to its 6 MiB.
    assert_eq!(s.send_window(1), 6 * MIB);
    assert_eq!(s.recv_window(1), 6 * MIB);
    assert!(s.is_stream_open(1));
}

#[test]
fn ack_is_sent_even_with_zero_delta() {
    let now = Instant::now();
    let config = Config {
        max_stream_window: INITIAL_WINDOW,
        ..Config::server()
    };
    let mut s = Session::new(config, now);
    feed(
        &mut s,
        &frame(FrameType::WindowUpdate, Flags::SYN, 1, 0),
        now,
    )
    .unwrap();
    assert_eq!(
        outbound(&mut s),
        frame(FrameType::WindowUpdate, Flags::ACK, 1, 0)
    );
    assert_eq!(s.send_window(1), INITIAL_WINDOW);
}

#[test]
fn small_max_window_is_raised_to_initial() {
    let now = Instant::now();
    let config = Config {
        max_stream_window: 1,
        ..Config::client()
    };
    let mut c = Session::new(config, now);
    assert_eq!(c.open_stream(), Ok(1));
    assert_eq!(
        outbound(&mut c),
        frame(FrameType::WindowUpdate, Flags::SYN, 1, 0)
    );
}

#[test]
fn open_stream_matches_go_bytes_and_ids() {
    let now = Instant::now();
    let mut c = Session::new(Config::client(), now);
    assert_eq!(c.open_stream(), Ok(1));
    assert_eq!(
        outbound(&mut c),
        [0x00, 0x01, 0x00, 0x01, 0, 0, 0, 1, 0x00, 0x5C, 0x00, 0x00]
    );
    assert_eq!(c.open_stream(), Ok(3));
    let mut s = Session::new(Config::server(), now);
    assert_eq!(s.open_stream(), Ok(2));
    assert_eq!(s.open_stream(), Ok(4));

    // The peer's ACK (with its own delta) establishes the stream.
    feed(
        &mut c,
        &frame(FrameType::WindowUpdate, Flags::ACK, 1, 1000),
        now,
    )
    .unwrap();
    assert_eq!(
        drain(&mut c),
        [Event::StreamAcked(1), Event::WindowUpdate(1)]
    );
    assert_eq!(c.send_window(1), INITIAL_WINDOW + 1000);
    // A second ACK is not reported again.
    feed(
        &mut c,
        &frame(FrameType::WindowUpdate, Flags::ACK, 1, 0),
        now,
    )
    .unwrap();
    assert_eq!(drain(&mut c), []);
}

#[test]
fn ping_is_answered_with_same_opaque() {
    let (mut s, now) = server();
    feed(&mut s, &[0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 42], now).unwrap();
    assert_eq!(outbound(&mut s), [0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 42]);
    assert_eq!(drain(&mut s), []);
}

#[test]
fn keepalive_pings_and_times_out() {
    let (mut s, start) = server();
    let sec = Duration::from_secs(1);
    assert_eq!(s.next_timeout(), Some(start + 30 * sec));
    s.tick(start + 10 * sec).unwrap();
    assert!(!s.has_outbound());

    s.tick(start + 30 * sec).unwrap();
    assert_eq!(outbound(&mut s), frame(FrameType::Ping, Flags::SYN, 0, 0));
    assert_eq!(s.next_timeout(), Some(start + 40 * sec));

    // Answered: the next ping is due an interval after the answer.
    feed(
        &mut s,
        &frame(FrameType::Ping, Flags::ACK, 0, 0),
        start + 31 * sec,
    )
    .unwrap();
    assert_eq!(s.next_timeout(), Some(start + 61 * sec));
    s.tick(start + 61 * sec).unwrap();
    assert_eq!(outbound(&mut s), frame(FrameType::Ping, Flags::SYN, 0, 1));

    // Unanswered: the session fails, without a GoAway (Go sends none).
    s.tick(start + 70 * sec).unwrap();
    assert_eq!(
        s.tick(start + 71 * sec),
        Err(SessionError::KeepaliveTimeout)
    );
    assert!(!s.has_outbound());
    assert!(s.is_failed());
    assert_eq!(s.next_timeout(), None);
    assert_eq!(s.tick(start + 72 * sec), Err(SessionError::Closed));
}

#[test]
fn keepalive_off() {
    let now = Instant::now();
    let config = Config {
        keepalive_interval: None,
        stream_close_timeout: None,
        ..Config::server()
    };
    let mut s = Session::new(config, now);
    assert_eq!(s.next_timeout(), None);
    s.tick(now + Duration::from_secs(86_400)).unwrap();
    assert!(!s.has_outbound());
}

#[test]
fn backlog_overflow_resets_new_stream_only() {
    let now = Instant::now();
    let config = Config {
        accept_backlog: 2,
        ..Config::server()
    };
    let mut s = Session::new(config, now);
    let mut input = go_syn(1);
    input.extend(go_syn(3));
    input.extend(go_syn(5));
    // Data right behind the refused SYN is dropped quietly.
    input.extend(data_frame(Flags::NONE, 5, b"dropped"));
    feed(&mut s, &input, now).unwrap();
    let frames = parse_frames(&outbound(&mut s));
    let kinds: Vec<_> = frames.iter().map(|(h, _)| (h.flags, h.stream_id)).collect();
    assert_eq!(kinds, [(Flags::ACK, 1), (Flags::ACK, 3), (Flags::RST, 5)]);
    assert_eq!(frames[2].0.length, 0);
    assert_eq!(s.stream_count(), 2);
    assert_eq!(
        drain(&mut s),
        [Event::StreamOpened(1), Event::StreamOpened(3)]
    );
    // Accepting drains the backlog; new streams are welcome again.
    feed(&mut s, &go_syn(7), now).unwrap();
    assert_eq!(drain(&mut s), [Event::StreamOpened(7)]);
    assert!(!s.is_failed());
}

#[test]
fn stream_limit_resets_new_stream_only() {
    let now = Instant::now();
    let config = Config {
        max_streams: 1,
        ..Config::server()
    };
    let mut s = Session::new(config, now);
    feed(&mut s, &go_syn(1), now).unwrap();
    drain(&mut s);
    outbound(&mut s);
    feed(&mut s, &go_syn(3), now).unwrap();
    assert_eq!(
        outbound(&mut s),
        frame(FrameType::WindowUpdate, Flags::RST, 3, 0)
    );
    assert_eq!(drain(&mut s), []);
    assert!(!s.is_failed());
}

fn assert_protocol_error(input: &[u8], expected: SessionError) {
    let (mut s, now) = server();
    let err = feed(&mut s, input, now).unwrap_err();
    assert_eq!(err, expected);
    let out = outbound(&mut s);
    assert!(out.ends_with(&GO_AWAY_PROTO), "GoAway(1) queued: {out:?}");
    assert!(s.is_failed());
    assert_eq!(feed(&mut s, &go_syn(99), now), Err(SessionError::Closed));
    assert_eq!(s.open_stream(), Err(StreamError::SessionFailed));
}

#[test]
fn bad_version_is_protocol_error() {
    assert_protocol_error(
        &[7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
        SessionError::Header(HeaderError::InvalidVersion(7)),
    );
    assert_eq!(
        SessionError::Header(HeaderError::InvalidVersion(7)).to_string(),
        "invalid yamux version 7"
    );
}

#[test]
fn bad_type_is_protocol_error() {
    assert_protocol_error(
        &[0, 9, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
        SessionError::Header(HeaderError::InvalidType(9)),
    );
}

#[test]
fn window_violation_is_protocol_error() {
    let mut input = go_syn(1);
    // The header alone is enough; the payload need not arrive.
    input.extend(frame(FrameType::Data, Flags::NONE, 1, 6 * MIB + 1));
    assert_protocol_error(
        &input,
        SessionError::RecvWindowExceeded {
            stream: 1,
            len: 6 * MIB + 1,
            window: 6 * MIB,
        },
    );
    assert_eq!(
        SessionError::RecvWindowExceeded {
            stream: 3,
            len: 10,
            window: 5
        }
        .to_string(),
        "data exceeds receive window on stream 3 (10 bytes sent, 5 allowed)"
    );
}

#[test]
fn window_violation_after_partial_use() {
    let (mut s, now) = server();
    feed(&mut s, &go_syn(1), now).unwrap();
    let chunk = vec![0u8; 4 * MIB as usize];
    feed(&mut s, &data_frame(Flags::NONE, 1, &chunk), now).unwrap();
    assert_eq!(s.recv_window(1), 2 * MIB);
    let err = feed(
        &mut s,
        &frame(FrameType::Data, Flags::NONE, 1, 2 * MIB + 1),
        now,
    );
    assert!(matches!(
        err,
        Err(SessionError::RecvWindowExceeded { stream: 1, .. })
    ));
}

#[test]
fn duplicate_syn_is_protocol_error() {
    let mut input = go_syn(1);
    input.extend(go_syn(1));
    assert_protocol_error(&input, SessionError::DuplicateStream(1));
}

#[test]
fn syn_with_our_parity_is_protocol_error() {
    assert_protocol_error(&go_syn(2), SessionError::InvalidStreamId(2));
    assert_protocol_error(&go_syn(0), SessionError::InvalidStreamId(0));
}

#[test]
fn second_fin_is_protocol_error() {
    let mut input = go_syn(1);
    input.extend(frame(FrameType::WindowUpdate, Flags::FIN, 1, 0));
    input.extend(data_frame(Flags::FIN, 1, b""));
    assert_protocol_error(&input, SessionError::UnexpectedFin(1));
}

#[test]
fn peer_go_away() {
    let (mut s, now) = server();
    let mut c = Session::new(Config::client(), now);
    feed(&mut c, &frame(FrameType::GoAway, Flags::NONE, 0, 0), now).unwrap();
    assert_eq!(drain(&mut c), [Event::GoAway(0)]);
    assert_eq!(c.open_stream(), Err(StreamError::RemoteGoAway));
    assert!(!c.is_failed());

    let err = feed(&mut s, &frame(FrameType::GoAway, Flags::NONE, 0, 2), now).unwrap_err();
    assert_eq!(err, SessionError::PeerGoAway { code: 2 });
    assert_eq!(
        err.to_string(),
        "peer ended the session: GoAway code 2 (internal error)"
    );
    assert_eq!(drain(&mut s), [Event::GoAway(2)]);
    // Not our protocol error: nothing to answer.
    assert!(!s.has_outbound());
}

#[test]
fn local_go_away_refuses_new_streams() {
    let (mut s, now) = server();
    feed(&mut s, &go_syn(1), now).unwrap();
    outbound(&mut s);
    s.go_away(GO_AWAY_NORMAL);
    assert_eq!(
        outbound(&mut s),
        frame(FrameType::GoAway, Flags::NONE, 0, 0)
    );
    feed(&mut s, &go_syn(3), now).unwrap();
    assert_eq!(
        outbound(&mut s),
        frame(FrameType::WindowUpdate, Flags::RST, 3, 0)
    );
    // The existing stream carries on.
    assert_eq!(s.write_data(1, b"hi"), Ok(2));
}

#[test]
fn unknown_stream_frames_are_ignored() {
    let (mut s, now) = server();
    let mut input = data_frame(Flags::NONE, 99, &[0xAB; 100]);
    input.extend(frame(FrameType::WindowUpdate, Flags::NONE, 99, 5000));
    input.extend(data_frame(Flags::FIN, 101, b"x"));
    input.extend(frame(FrameType::WindowUpdate, Flags::RST, 103, 0));
    input.extend(frame(FrameType::Ping, Flags::SYN, 0, 7));
    // Byte by byte, so the dropped payload is skipped across calls too.
    let mut buf = BytesMut::new();
    for byte in input {
        buf.extend_from_slice(&[byte]);
        s.receive(&mut buf, now).unwrap();
    }
    assert!(buf.is_empty());
    assert_eq!(drain(&mut s), []);
    assert_eq!(outbound(&mut s), frame(FrameType::Ping, Flags::ACK, 0, 7));
    assert_eq!(s.stream_count(), 0);
}

#[test]
fn fin_both_ways_removes_stream() {
    // Peer first, then us.
    let (mut s, now) = server();
    feed(&mut s, &go_syn(1), now).unwrap();
    outbound(&mut s);
    feed(
        &mut s,
        &frame(FrameType::WindowUpdate, Flags::FIN, 1, 0),
        now,
    )
    .unwrap();
    assert_eq!(drain(&mut s), [Event::StreamOpened(1), Event::Fin(1)]);
    assert!(s.is_stream_open(1));
    // Half-closed by the peer: we can still write.
    assert_eq!(s.write_data(1, b"reply"), Ok(5));
    outbound(&mut s);
    s.close_stream(1);
    assert_eq!(
        outbound(&mut s),
        frame(FrameType::WindowUpdate, Flags::FIN, 1, 0)
    );
    assert!(!s.is_stream_open(1));
    assert_eq!(s.stream_count(), 0);

    // Us first, then the peer.
    feed(&mut s, &go_syn(3), now).unwrap();
    outbound(&mut s);
    s.close_stream(3);
    s.close_stream(3); // idempotent
    assert_eq!(
        outbound(&mut s),
        frame(FrameType::WindowUpdate, Flags::FIN, 3, 0)
    );
    assert_eq!(s.send_window(3), 0);
    assert_eq!(
        s.write_data(3, b"late"),
        Err(StreamError::ClosedForWriting(3))
    );
    assert!(s.is_stream_open(3));
    feed(&mut s, &data_frame(Flags::FIN, 3, b"last"), now).unwrap();
    assert_eq!(
        drain(&mut s),
        [
            Event::StreamOpened(3),
            Event::Data(3, bytes::Bytes::from_static(b"last")),
            Event::Fin(3)
        ]
    );
    assert!(!s.is_stream_open(3));
    // The close timer of the closed stream does nothing when it fires.
    s.tick(now + Duration::from_secs(301)).unwrap();
    assert_eq!(drain(&mut s), []);
}

#[test]
fn syn_data_fin_in_one_frame() {
    let (mut s, now) = server();
    feed(
        &mut s,
        &data_frame(Flags::SYN | Flags::FIN, 1, b"hello"),
        now,
    )
    .unwrap();
    assert_eq!(
        drain(&mut s),
        [
            Event::StreamOpened(1),
            Event::Data(1, bytes::Bytes::from_static(b"hello")),
            Event::Fin(1)
        ]
    );
    assert_eq!(
        outbound(&mut s),
        frame(FrameType::WindowUpdate, Flags::ACK, 1, 0x005C_0000)
    );
}

#[test]
fn data_after_fin_is_dropped() {
    let (mut s, now) = server();
    let mut input = go_syn(1);
    input.extend(frame(FrameType::WindowUpdate, Flags::FIN, 1, 0));
    input.extend(data_frame(Flags::NONE, 1, b"stray"));
    feed(&mut s, &input, now).unwrap();
    assert_eq!(drain(&mut s), [Event::StreamOpened(1), Event::Fin(1)]);
}

#[test]
fn peer_reset_removes_stream() {
    let (mut s, now) = server();
    let mut input = go_syn(1);
    input.extend(data_frame(Flags::NONE, 1, b"abc"));
    input.extend(data_frame(Flags::RST | Flags::FIN, 1, b"gone"));
    input.extend(data_frame(Flags::NONE, 1, b"after"));
    feed(&mut s, &input, now).unwrap();
    assert_eq!(
        drain(&mut s),
        [
            Event::StreamOpened(1),
            Event::Data(1, bytes::Bytes::from_static(b"abc")),
            Event::Reset(1)
        ]
    );
    assert!(!s.is_stream_open(1));
    assert_eq!(s.write_data(1, b"x"), Err(StreamError::UnknownStream(1)));
    assert_eq!(s.send_window(1), 0);
}

#[test]
fn local_reset_drops_rest_of_frame() {
    let (mut s, now) = server();
    feed(&mut s, &go_syn(1), now).unwrap();
    outbound(&mut s);
    let full = data_frame(Flags::NONE, 1, &[7u8; 100]);
    let mut input = BytesMut::from(&full[..62]);
    s.receive(&mut input, now).unwrap();
    assert!(input.is_empty());
    s.reset_stream(1);
    assert_eq!(
        outbound(&mut s),
        frame(FrameType::WindowUpdate, Flags::RST, 1, 0)
    );
    input.extend_from_slice(&full[62..]);
    input.extend_from_slice(&frame(FrameType::Ping, Flags::SYN, 0, 1));
    s.receive(&mut input, now).unwrap();
    let events = drain(&mut s);
    assert_eq!(events.len(), 2, "{events:?}"); // StreamOpened + the first 50 bytes
    assert_eq!(events[1], Event::Data(1, bytes::Bytes::from(vec![7u8; 50])));
    assert_eq!(outbound(&mut s), frame(FrameType::Ping, Flags::ACK, 0, 1));
    // Resetting an unknown stream queues nothing.
    s.reset_stream(1);
    assert!(!s.has_outbound());
}

#[test]
fn close_timeout_resets_stream() {
    let (mut s, now) = server();
    feed(&mut s, &go_syn(1), now).unwrap();
    drain(&mut s);
    outbound(&mut s);
    s.close_stream(1);
    outbound(&mut s);
    let deadline = now + Duration::from_secs(300);
    assert_eq!(s.next_timeout(), Some(now + Duration::from_secs(30)));
    // Answer keepalives so only the close timer matters.
    let mut t = now;
    while t < deadline - Duration::from_secs(30) {
        t += Duration::from_secs(30);
        s.tick(t).unwrap();
        let pings = parse_frames(&outbound(&mut s));
        for (h, _) in pings {
            feed(&mut s, &frame(FrameType::Ping, Flags::ACK, 0, h.length), t).unwrap();
        }
    }
    assert!(s.is_stream_open(1));
    s.tick(deadline).unwrap();
    let frames = parse_frames(&outbound(&mut s));
    assert!(frames
        .iter()
        .any(|(h, _)| h.flags == Flags::RST && h.stream_id == 1));
    assert_eq!(drain(&mut s), [Event::Reset(1)]);
    assert!(!s.is_stream_open(1));
}

#[test]
fn close_timers_of_finished_streams_do_not_pile_up() {
    let (mut s, now) = server();
    for i in 0..10_000u32 {
        let id = 2 * i + 1;
        feed(&mut s, &go_syn(id), now).unwrap();
        s.close_stream(id);
        feed(
            &mut s,
            &frame(FrameType::WindowUpdate, Flags::FIN, id, 0),
            now,
        )
        .unwrap();
        drain(&mut s);
        s.take_outbound();
    }
    assert_eq!(s.stream_count(), 0);
    assert!(s.close_timer_count() <= 65, "{}", s.close_timer_count());
}

#[test]
fn write_data_respects_window_and_frame_cap() {
    let (mut s, now) = server();
    feed(&mut s, &go_syn(1), now).unwrap();
    outbound(&mut s);
    let big = vec![1u8; 7 * MIB as usize];
    // frpc granted 6 MiB in total.
    assert_eq!(s.write_data(1, &big), Ok(6 * MIB as usize));
    assert_eq!(s.send_window(1), 0);
    assert_eq!(s.write_data(1, &big), Ok(0));
    let frames = parse_frames(&outbound(&mut s));
    assert_eq!(frames.len(), 6 * MIB as usize / MAX_DATA_FRAME);
    assert!(frames
        .iter()
        .all(|(h, body)| h.length as usize == MAX_DATA_FRAME && body.len() == MAX_DATA_FRAME));
    feed(
        &mut s,
        &frame(FrameType::WindowUpdate, Flags::NONE, 1, 10),
        now,
    )
    .unwrap();
    assert_eq!(
        drain(&mut s),
        [Event::StreamOpened(1), Event::WindowUpdate(1)]
    );
    assert_eq!(s.write_data(1, &big), Ok(10));
    assert_eq!(s.write_data(1, b""), Ok(0));
    assert_eq!(s.write_data(9, b"x"), Err(StreamError::UnknownStream(9)));
}

#[test]
fn consumed_sends_update_at_half_window() {
    let (mut s, now) = server();
    feed(&mut s, &go_syn(1), now).unwrap();
    outbound(&mut s);
    let chunk = vec![0u8; MIB as usize];
    for _ in 0..4 {
        feed(&mut s, &data_frame(Flags::NONE, 1, &chunk), now).unwrap();
    }
    s.consumed(1, 2 * MIB as usize);
    assert!(!s.has_outbound(), "2 MiB back is below 3 MiB");
    s.consumed(1, MIB as usize);
    assert_eq!(
        outbound(&mut s),
        frame(FrameType::WindowUpdate, Flags::NONE, 1, 3 * MIB)
    );
    assert_eq!(s.recv_window(1), 5 * MIB);
    s.consumed(1, MIB as usize);
    assert!(!s.has_outbound());
    // Consuming on an unknown stream is harmless.
    s.consumed(77, 10);
}

#[test]
fn frames_split_at_every_byte_give_same_events() {
    let mut input = go_syn(1);
    input.extend(data_frame(Flags::NONE, 1, b"first"));
    input.extend(frame(FrameType::Ping, Flags::SYN, 0, 3));
    input.extend(data_frame(Flags::FIN, 1, b"second"));
    let now = Instant::now();

    let mut whole = Session::new(Config::server(), now);
    feed(&mut whole, &input, now).unwrap();
    let expected_out = outbound(&mut whole);
    let expected_data: Vec<u8> = drain(&mut whole)
        .into_iter()
        .filter_map(|e| match e {
            Event::Data(_, b) => Some(b.to_vec()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(expected_data, b"firstsecond");

    for split in 1..input.len() {
        let mut s = Session::new(Config::server(), now);
        let mut buf = BytesMut::from(&input[..split]);
        s.receive(&mut buf, now).unwrap();
        buf.extend_from_slice(&input[split..]);
        s.receive(&mut buf, now).unwrap();
        assert!(buf.is_empty());
        assert_eq!(outbound(&mut s), expected_out);
        let mut data = Vec::new();
        let mut tail = Vec::new();
        for event in drain(&mut s) {
            match event {
                Event::Data(1, b) => data.extend_from_slice(&b),
                other => tail.push(other),
            }
        }
        assert_eq!(data, b"firstsecond");
        assert_eq!(tail, [Event::StreamOpened(1), Event::Fin(1)]);
    }
}

#[test]
fn config_defaults() {
    let server = Config::server();
    assert_eq!(server.role, Role::Server);
    assert_eq!(server.max_stream_window, 6_291_456);
    assert_eq!(server.keepalive_interval, Some(Duration::from_secs(30)));
    assert_eq!(server.ping_timeout, Duration::from_secs(10));
    assert_eq!(server.accept_backlog, 4096);
    assert_eq!(server.max_streams, 65536);
    let client = Config::client();
    assert_eq!(client.role, Role::Client);
    assert_eq!(client.accept_backlog, 256);
}

// ----- back to back -----

/// Independent model of the credit each side has on the wire, checked
/// against every frame the sessions emit.
#[derive(Default)]
struct WireModel {
    /// (sender is client, stream) -> credit left.
    credit: HashMap<(bool, u32), u64>,
    updates: usize,
}

impl WireModel {
    fn check(&mut self, from_client: bool, bytes: &[u8], sender_max: u32) {
        for (header, body) in parse_frames(bytes) {
            let id = header.stream_id;
            match header.frame_type {
                FrameType::Data => {
                    assert!(body.len() <= MAX_DATA_FRAME);
                    let credit = self
                        .credit
                        .entry((from_client, id))
                        .or_insert(u64::from(INITIAL_WINDOW));
                    assert!(
                        u64::from(header.length) <= *credit,
                        "stream {id}: sent {} with {} credit",
                        header.length,
                        credit
                    );
                    *credit -= u64::from(header.length);
                }
                FrameType::WindowUpdate => {
                    *self
                        .credit
                        .entry((!from_client, id))
                        .or_insert(u64::from(INITIAL_WINDOW)) += u64::from(header.length);
                    if header.flags.is_empty() {
                        self.updates += 1;
                        assert!(
                            header.length >= sender_max / 2,
                            "update of {} below half of {}",
                            header.length,
                            sender_max
                        );
                    }
                }
                FrameType::Ping | FrameType::GoAway => {}
            }
        }
    }
}

/// One side's application: what it still has to send, what it received.
struct App {
    session: Session,
    max: u32,
    /// stream -> (data to send, bytes sent so far)
    sending: BTreeMap<u32, (usize, usize, usize)>,
    received: BTreeMap<u32, Vec<u8>>,
    unconsumed: BTreeMap<u32, usize>,
    fins: HashSet<u32>,
    /// Writes cut short by the send window.
    stalls: usize,
}

impl App {
    fn new(config: Config, now: Instant) -> Self {
        App {
            max: config.max_stream_window,
            session: Session::new(config, now),
            sending: BTreeMap::new(),
            received: BTreeMap::new(),
            unconsumed: BTreeMap::new(),
            fins: HashSet::new(),
            stalls: 0,
        }
    }

    /// Writes what the windows allow; closes streams that are done.
    fn write(&mut self, source: &[u8]) {
        let mut done = Vec::new();
        for (&id, (start, len, sent)) in self.sending.iter_mut() {
            let rest = &source[*start + *sent..*start + *len];
            let n = self.session.write_data(id, rest).unwrap();
            *sent += n;
            if n < rest.len() {
                self.stalls += 1;
            }
            if *sent == *len {
                done.push(id);
            }
        }
        for id in done {
            self.sending.remove(&id);
            self.session.close_stream(id);
        }
    }

    /// Handles events; consumes a random part of what is buffered.
    fn react(&mut self, rng: &mut StdRng, reply_len: usize) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::StreamOpened(id) => {
                    let start = (id as usize * 4099) % 1024;
                    self.sending.insert(id, (start, reply_len, 0));
                }
                Event::Data(id, bytes) => {
                    self.received
                        .entry(id)
                        .or_default()
                        .extend_from_slice(&bytes);
                    *self.unconsumed.entry(id).or_default() += bytes.len();
                }
                Event::Fin(id) => {
                    assert!(self.fins.insert(id));
                }
                Event::StreamAcked(_) | Event::WindowUpdate(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        for (&id, pending) in self.unconsumed.iter_mut() {
            let n = if rng.gen_bool(0.3) {
                *pending
            } else {
                rng.gen_range(0..=*pending)
            };
            *pending -= n;
            self.session.consumed(id, n);
        }
    }
}

/// Moves `from`'s outbound bytes into `to`, in random pieces.
fn pump(
    from: &mut App,
    to: &mut App,
    from_client: bool,
    model: &mut WireModel,
    rng: &mut StdRng,
    now: Instant,
) {
    let bytes = from.session.take_outbound();
    // An auto-tuned window starts at the initial one and may stay there,
    // and returns credit in eighths of it.
    let window = if from.session.config().window_autotune {
        INITIAL_WINDOW / 4
    } else {
        from.max
    };
    model.check(from_client, &bytes, window);
    let mut input = BytesMut::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let n = rng.gen_range(1..=rest.len().min(96 * 1024));
        input.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        to.session.receive(&mut input, now).unwrap();
    }
    assert!(input.is_empty());
}

fn back_to_back(client_max: u32, server_max: u32, streams: u32, len: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut source = vec![0u8; len + 8192];
    rng.fill_bytes(&mut source);
    let start = Instant::now();
    let mut now = start;
    let keepalive = Some(Duration::from_millis(700));
    let mut client = App::new(
        Config {
            max_stream_window: client_max,
            keepalive_interval: keepalive,
            ..Config::client()
        },
        now,
    );
    let mut server = App::new(
        Config {
            max_stream_window: server_max,
            keepalive_interval: keepalive,
            ..Config::server()
        },
        now,
    );
    let mut model = WireModel::default();
    for _ in 0..streams {
        let id = client.session.open_stream().unwrap();
        let start = (id as usize * 4099) % 1024;
        client.sending.insert(id, (start, len, 0));
    }

    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 100_000, "transfer stalled");
        now += Duration::from_millis(100);
        client.session.tick(now).unwrap();
        server.session.tick(now).unwrap();
        client.write(&source);
        pump(&mut client, &mut server, true, &mut model, &mut rng, now);
        server.react(&mut rng, len);
        server.write(&source);
        pump(&mut server, &mut client, false, &mut model, &mut rng, now);
        client.react(&mut rng, len);
        let done = client.session.stream_count() == 0
            && server.session.stream_count() == 0
            && !client.session.has_outbound()
            && !server.session.has_outbound();
        if done {
            break;
        }
    }

    for app in [&client, &server] {
        assert_eq!(app.received.len(), streams as usize);
        assert_eq!(app.fins.len(), streams as usize);
        for (&id, data) in &app.received {
            let start = (id as usize * 4099) % 1024;
            assert!(
                data[..] == source[start..start + len],
                "stream {id} corrupted"
            );
        }
    }
    assert!(model.updates > 0, "windows were never refilled");
    assert!(
        client.stalls > 0 && server.stalls > 0,
        "the windows never limited a write"
    );
}

#[test]
fn back_to_back_small_windows() {
    back_to_back(INITIAL_WINDOW, INITIAL_WINDOW, 4, 3 * MIB as usize, 1);
}

#[test]
fn back_to_back_large_asymmetric_windows() {
    back_to_back(6 * MIB, 16 * MIB, 3, 40 * MIB as usize, 2);
}

// ----- random input -----

#[test]
fn random_bytes_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let start = Instant::now();
    for round in 0..3000 {
        let mut s = Session::new(Config::server(), start);
        let len = rng.gen_range(0..600);
        let mut bytes = vec![0u8; len];
        rng.fill_bytes(&mut bytes);
        // Mostly valid versions and types, so parsing gets past the header.
        for i in (0..len).step_by(12) {
            if rng.gen_bool(0.9) {
                bytes[i] = 0;
            }
            if i + 1 < len && rng.gen_bool(0.9) {
                bytes[i + 1] %= 4;
            }
        }
        let mut input = BytesMut::new();
        let mut rest = &bytes[..];
        let mut now = start;
        while !rest.is_empty() {
            let n = rng.gen_range(1..=rest.len());
            input.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            now += Duration::from_secs(rng.gen_range(0..20));
            if s.receive(&mut input, now).is_err() {
                break;
            }
            while let Some(event) = s.poll_event() {
                if let Event::Data(id, data) = event {
                    s.consumed(id, data.len());
                }
            }
            if s.tick(now).is_err() {
                break;
            }
            s.take_outbound();
        }
        let _ = round;
    }
}

#[test]
fn random_frames_never_panic() {
    let mut rng = StdRng::seed_from_u64(42);
    let start = Instant::now();
    let ids = [0u32, 1, 2, 3, 5, 7];
    let mut failures = 0;
    for _ in 0..2000 {
        let mut s = Session::new(
            Config {
                accept_backlog: 2,
                max_streams: 3,
                max_stream_window: INITIAL_WINDOW,
                ..Config::server()
            },
            start,
        );
        let mut now = start;
        let mut input = BytesMut::new();
        for _ in 0..rng.gen_range(1..40) {
            let frame_type = FrameType::from_u8(rng.gen_range(0..4)).unwrap();
            let flags = Flags(rng.gen_range(0..16));
            let id = ids[rng.gen_range(0..ids.len())];
            let length = match rng.gen_range(0..4) {
                0 => 0,
                1 => rng.gen_range(0..100),
                2 => rng.gen_range(0..INITIAL_WINDOW),
                _ => rng.gen(),
            };
            Header::new(frame_type, flags, id, length).encode(&mut input);
            if frame_type == FrameType::Data {
                let body = (length as usize).min(rng.gen_range(0..300));
                input.extend_from_slice(&vec![0x55; body]);
            }
            // Random API calls between frames.
            match rng.gen_range(0..6) {
                0 => s.close_stream(ids[rng.gen_range(0..ids.len())]),
                1 => s.reset_stream(ids[rng.gen_range(0..ids.len())]),
                2 => {
                    let _ = s.write_data(ids[rng.gen_range(0..ids.len())], &[1; 1000]);
                }
                3 => {
                    let _ = s.open_stream();
                }
                _ => {}
            }
            now += Duration::from_secs(rng.gen_range(0..100));
            if s.receive(&mut input, now).is_err() || s.tick(now).is_err() {
                failures += 1;
                break;
            }
            while let Some(event) = s.poll_event() {
                if let Event::Data(id, data) = event {
                    s.consumed(id, data.len());
                }
            }
            s.take_outbound();
            assert!(s.stream_count() <= 3 + 40);
        }
    }
    // Some runs must get past the first error for this to explore anything.
    assert!(failures < 2000);
}

#[test]
fn before_admission_streams_are_few_and_get_the_initial_window() {
    let now = Instant::now();
    let mut s = Session::new(
        Config {
            pre_auth_streams: 2,
            max_stream_window: 16 * MIB,
            ..go_server()
        },
        now,
    );
    assert!(!s.is_admitted());
    // Two streams are taken, with no window beyond the initial 256 KiB
    // (the ACK carries delta 0); the third is refused with RST.
    feed(&mut s, &[go_syn(1), go_syn(3), go_syn(5)].concat(), now).unwrap();
    let frames = parse_frames(&outbound(&mut s));
    let got: Vec<(u32, Flags, u32)> = frames
        .iter()
        .map(|(h, _)| (h.stream_id, h.flags, h.length))
        .collect();
    assert_eq!(
        got,
        vec![(1, Flags::ACK, 0), (3, Flags::ACK, 0), (5, Flags::RST, 0)]
    );
    assert_eq!(s.refused_streams(), 1);
    // Data within the initial window is taken as usual.
    feed(&mut s, &data_frame(Flags::NONE, 1, &[0; 1024]), now).unwrap();
    // Admitted: the cap is max_streams and new streams get the full window.
    s.admit(Instant::now());
    assert!(s.is_admitted());
    feed(&mut s, &go_syn(7), now).unwrap();
    let frames = parse_frames(&outbound(&mut s));
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0].0.stream_id, frames[0].0.flags, frames[0].0.length),
        (7, Flags::ACK, 16 * MIB - 256 * 1024)
    );
    assert_eq!(s.refused_streams(), 1);
}

#[test]
fn sessions_need_no_admission_unless_configured() {
    let (s, _) = server();
    assert!(s.is_admitted());
    assert_eq!(Config::server().pre_auth_streams, 0);
}

// ----- window auto-tuning -----

/// Feeds `len` bytes of Data on stream `id` and consumes them at `now`.
fn deliver_and_consume(s: &mut Session, id: u32, len: usize, now: Instant) {
    feed(s, &data_frame(Flags::NONE, id, &vec![7; len]), now).unwrap();
    drain(s);
    s.consumed_at(id, len, now);
}

/// The WindowUpdate deltas (no flags) queued for `id`.
fn updates_for(s: &mut Session, id: u32) -> Vec<u32> {
    parse_frames(&outbound(s))
        .iter()
        .filter(|(h, _)| h.stream_id == id && h.flags.is_empty())
        .map(|(h, _)| h.length)
        .collect()
}

#[test]
fn autotuned_streams_open_small_and_grow_while_the_window_limits_them() {
    let t0 = Instant::now();
    let mut s = Session::new(Config::server(), t0);
    feed(&mut s, &go_syn(1), t0).unwrap();
    // The ACK grants nothing above the initial window.
    let ack = parse_frames(&outbound(&mut s));
    assert_eq!((ack[0].0.flags, ack[0].0.length), (Flags::ACK, 0));
    assert_eq!(s.stream_window(1), INITIAL_WINDOW);
    assert_eq!(s.extra_window(), 0);
    // A reader that keeps up: each half window comes due well within the
    // growth interval, so the window doubles with each return.
    let half = INITIAL_WINDOW as usize / 2;
    let now = t0 + Duration::from_micros(100);
    deliver_and_consume(&mut s, 1, half, now);
    assert_eq!(
        updates_for(&mut s, 1),
        [INITIAL_WINDOW / 2 + INITIAL_WINDOW]
    );
    assert_eq!(s.stream_window(1), 2 * INITIAL_WINDOW);
    assert_eq!(s.extra_window(), u64::from(INITIAL_WINDOW));
    deliver_and_consume(&mut s, 1, 2 * half, now + Duration::from_micros(100));
    assert_eq!(s.stream_window(1), 4 * INITIAL_WINDOW);
    outbound(&mut s);
    // A slow reader: the next return comes due a second later, no growth.
    let w = s.stream_window(1);
    deliver_and_consume(&mut s, 1, w as usize / 2, now + Duration::from_secs(1));
    assert_eq!(updates_for(&mut s, 1), [w / 2]);
    assert_eq!(s.stream_window(1), w);
    // Growth stops at max_stream_window.
    let mut t = now + Duration::from_secs(1);
    for _ in 0..20 {
        t += Duration::from_micros(100);
        let w = s.stream_window(1) as usize;
        deliver_and_consume(&mut s, 1, w / 2 + 1, t);
        outbound(&mut s);
    }
    assert_eq!(s.stream_window(1), Config::server().max_stream_window);
    // Closing the stream gives its window back to the budget.
    feed(&mut s, &frame(FrameType::WindowUpdate, Flags::RST, 1, 0), t).unwrap();
    assert_eq!(s.extra_window(), 0);
}

#[test]
fn growth_stays_within_the_session_budget_and_the_allowance() {
    let t0 = Instant::now();
    let budget = 3 * u64::from(INITIAL_WINDOW);
    let mut s = Session::new(
        Config {
            session_window_budget: budget,
            ..Config::server()
        },
        t0,
    );
    feed(&mut s, &[go_syn(1), go_syn(3), go_syn(5)].concat(), t0).unwrap();
    outbound(&mut s);
    let mut t = t0;
    for _ in 0..10 {
        for id in [1, 3, 5] {
            t += Duration::from_micros(50);
            let w = s.stream_window(id) as usize;
            deliver_and_consume(&mut s, id, w / 2 + 1, t);
        }
        assert!(s.extra_window() <= budget);
    }
    assert_eq!(s.extra_window(), budget);
    // The driver lowers the allowance (the worker is short): no more
    // growth even after streams close and free budget.
    feed(&mut s, &frame(FrameType::WindowUpdate, Flags::RST, 1, 0), t).unwrap();
    let left = s.extra_window();
    s.set_window_allowance(left);
    for _ in 0..5 {
        t += Duration::from_micros(50);
        let w = s.stream_window(3) as usize;
        deliver_and_consume(&mut s, 3, w / 2 + 1, t);
    }
    assert_eq!(s.extra_window(), left);
}

#[test]
fn admission_probes_the_round_trip_and_growth_follows_it() {
    let t0 = Instant::now();
    let mut s = Session::new(
        Config {
            pre_auth_streams: 4,
            ..Config::server()
        },
        t0,
    );
    assert_eq!(s.rtt(), None);
    s.admit(t0);
    let ping = parse_frames(&outbound(&mut s));
    assert_eq!(ping.len(), 1);
    let (h, _) = &ping[0];
    assert_eq!((h.frame_type, h.flags), (FrameType::Ping, Flags::SYN));
    assert!(
        h.length & (1 << 31) != 0,
        "probe ids are apart from keepalive ids"
    );
    // The answer comes 80 ms later: that is the round trip.
    let t1 = t0 + Duration::from_millis(80);
    feed(&mut s, &frame(FrameType::Ping, Flags::ACK, 0, h.length), t1).unwrap();
    assert_eq!(s.rtt(), Some(Duration::from_millis(80)));
    // A probe's answer is not taken for a keepalive answer (and vice versa).
    feed(&mut s, &go_syn(1), t1).unwrap();
    outbound(&mut s);
    // 100 ms between returns is within 2 RTT (160 ms): grows on a long path
    // where it would not with the 1 ms floor.
    deliver_and_consume(
        &mut s,
        1,
        INITIAL_WINDOW as usize / 2,
        t1 + Duration::from_millis(100),
    );
    assert_eq!(s.stream_window(1), 2 * INITIAL_WINDOW);
    deliver_and_consume(
        &mut s,
        1,
        INITIAL_WINDOW as usize,
        t1 + Duration::from_millis(400),
    );
    assert_eq!(s.stream_window(1), 2 * INITIAL_WINDOW);
}

#[test]
fn a_deferred_keepalive_does_not_time_out_while_the_driver_holds_reading() {
    let t0 = Instant::now();
    let sec = Duration::from_secs(1);
    let mut s = Session::new(
        Config {
            keepalive_interval: Some(30 * sec),
            ping_timeout: 10 * sec,
            ..Config::server()
        },
        t0,
    );
    s.tick(t0 + 30 * sec).unwrap();
    let ping = parse_frames(&outbound(&mut s));
    assert_eq!(ping[0].0.frame_type, FrameType::Ping);
    // Not reading on purpose from 35 s to 60 s: the deadline moves along.
    for t in 35..=60 {
        s.defer_keepalive(t0 + t * sec);
        s.tick(t0 + t * sec).unwrap();
    }
    // Reading again: the ping times out 10 s after the last deferral.
    assert!(s.tick(t0 + 69 * sec).is_ok());
    assert!(s.tick(t0 + 70 * sec).is_err());
}

/// A 1 Gbit/s path with 100 ms of round trip, simulated in 1 ms steps:
/// frpc (Go's fixed 6 MiB windows) uploads to us as fast as the path and
/// our credit allow, and our reader takes data as soon as it arrives.
/// Auto-tuned windows must grow to the path's bandwidth-delay product
/// (12.5 MB) and carry it at full rate; the session's budget and the
/// 16 MiB cap leave room for that.
#[test]
fn autotuned_windows_fill_a_long_fat_path() {
    const RATE: usize = 125_000; // bytes per 1 ms step: 1 Gbit/s
    const ONE_WAY: u32 = 50; // ms
    let start = Instant::now();
    let ms = Duration::from_millis(1);
    let mut client = Session::new(Config::client(), start);
    let mut server = Session::new(
        Config {
            max_stream_window: 16 * MIB,
            pre_auth_streams: 8,
            ..Config::server()
        },
        start,
    );
    // Bytes in flight each way, with the step they arrive at.
    let mut up: VecDeque<(u32, Vec<u8>)> = VecDeque::new();
    let mut down: VecDeque<(u32, Vec<u8>)> = VecDeque::new();
    let id = client.open_stream().unwrap();
    let chunk = vec![0x5a; RATE];
    let mut received = vec![0usize; 6001];
    for step in 0..6000u32 {
        let now = start + ms * step;
        if step == 1 {
            // Logged in: the server admits the session (and probes the RTT).
            server.admit(now);
        }
        // The sender puts at most one step's worth on the wire.
        let n = client.write_data(id, &chunk).unwrap_or(0);
        debug_assert!(n <= RATE);
        let out = client.take_outbound();
        if !out.is_empty() {
            up.push_back((step + ONE_WAY, out.to_vec()));
        }
        while up.front().is_some_and(|(t, _)| *t <= step) {
            let (_, bytes) = up.pop_front().unwrap();
            let mut input = BytesMut::from(&bytes[..]);
            server.receive(&mut input, now).unwrap();
        }
        while let Some(ev) = server.poll_event() {
            if let Event::Data(sid, data) = ev {
                received[step as usize] += data.len();
                server.consumed_at(sid, data.len(), now);
            }
        }
        let back = server.take_outbound();
        if !back.is_empty() {
            down.push_back((step + ONE_WAY, back.to_vec()));
        }
        while down.front().is_some_and(|(t, _)| *t <= step) {
            let (_, bytes) = down.pop_front().unwrap();
            let mut input = BytesMut::from(&bytes[..]);
            client.receive(&mut input, now).unwrap();
        }
        drain(&mut client);
        let answers = client.take_outbound();
        if !answers.is_empty() {
            up.push_back((step + ONE_WAY, answers.to_vec()));
        }
    }
    let rtt = server.rtt().expect("the probe was answered");
    assert!(
        rtt >= Duration::from_millis(99) && rtt <= Duration::from_millis(103),
        "{rtt:?}"
    );
    // The last 3 s: at least 95% of the path's rate.
    let tail: usize = received[3000..6000].iter().sum();
    let rate = tail as f64 / 3.0 / 1e6;
    let window = server.stream_window(id);
    eprintln!(
        "100 ms, 1 Gbit/s: {rate:.1} MB/s over the last 3 s, window {window} bytes, rtt {rtt:?}"
    );
    assert!(rate >= 0.95 * 125.0, "{rate:.1} MB/s of 125");
    assert!(window as usize >= 12_500_000, "window {window}");
    assert!(server.extra_window() <= Config::server().session_window_budget);
}
