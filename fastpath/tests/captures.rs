//! Replays bytes captured from a real frpc v0.70.1 (token `test-token`,
//! proxy `web` on remote port 16000/26000) against the real fastpath, and
//! checks the answers. The captures carry their own timestamps and IVs; the
//! server accepts them because frp's token auth has no freshness window.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use proto::cfb::{derive_key, CfbStreamReader};
use proto::frame;
use proto::msg::Message;
use proto::wire_v2::{self, FrameType};

/// Both v1 captures register remote port 16000: run them one at a time.
static PORT_16000: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn vector(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../proto/tests/vectors/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    hex::decode(text.trim()).expect("hex")
}

fn connect(fp: &Fastpath) -> TcpStream {
    let s = TcpStream::connect(fp.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Read until `done` says the collected bytes are enough.
fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, mut done: impl FnMut(&[u8]) -> bool) {
    let mut tmp = [0u8; 4096];
    while !done(buf) {
        let n = s.read(&mut tmp).expect("server answered");
        assert!(n > 0, "server closed early; got {} bytes", buf.len());
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Decode all complete v1 messages in `buf`.
fn messages(buf: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Ok(Some((m, used))) = frame::decode(&buf[at..]) {
        out.push(m);
        at += used;
    }
    out
}

fn login_len(c2s: &[u8]) -> usize {
    frame::HEADER_LEN + i64::from_be_bytes(c2s[1..9].try_into().unwrap()) as usize
}

/// The plaintext LoginResp, then the decrypted control stream.
fn split_control(s2c: &[u8]) -> (Message, Vec<u8>) {
    let (resp, used) = frame::decode(s2c).unwrap().expect("a LoginResp");
    let mut rest = s2c[used..].to_vec();
    let mut r = CfbStreamReader::new(derive_key(TOKEN.as_bytes()));
    let plain = r.decrypt_in_place(&mut rest).to_vec();
    (resp, plain)
}

/// Write `data` in pieces of `chunk` bytes with a pause between them, so
/// that frames straddle the server's reads (0: all at once).
fn write_in_pieces(s: &mut TcpStream, data: &[u8], chunk: usize) {
    if chunk == 0 {
        return s.write_all(data).unwrap();
    }
    s.set_nodelay(true).unwrap();
    for piece in data.chunks(chunk) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
}

#[test]
fn nomux_capture_replays() {
    nomux_replay(0);
}

#[test]
fn nomux_capture_replays_in_small_pieces() {
    nomux_replay(7);
}

fn nomux_replay(chunk: usize) {
    let _port = PORT_16000.lock().unwrap_or_else(|e| e.into_inner());
    let fp = Fastpath::start("", 2);
    let c2s = vector("nomux.tcp0.c2s.hex");
    let split = login_len(&c2s);
    let mut s = connect(&fp);
    // frpc waits for LoginResp before anything else; do the same.
    write_in_pieces(&mut s, &c2s[..split], chunk);
    let mut got = Vec::new();
    read_until(&mut s, &mut got, |b| {
        matches!(frame::decode(b), Ok(Some(_)))
    });
    write_in_pieces(&mut s, &c2s[split..], chunk);
    read_until(&mut s, &mut got, |b| {
        let (_, plain) = split_control(b);
        messages(&plain)
            .iter()
            .any(|m| matches!(m, Message::Pong(_)))
    });
    let (resp, plain) = split_control(&got);
    match resp {
        Message::LoginResp(r) => {
            assert!(r.error.is_empty(), "login refused: {}", r.error);
            assert_eq!(r.run_id.len(), 16);
        }
        other => panic!("expected LoginResp, got {}", other.name()),
    }
    let msgs = messages(&plain);
    assert!(matches!(msgs[0], Message::ReqWorkConn(_)), "{msgs:?}");
    let np = msgs.iter().find_map(|m| match m {
        Message::NewProxyResp(r) => Some(r.clone()),
        _ => None,
    });
    let np = np.expect("a NewProxyResp");
    assert_eq!(np.proxy_name, "web");
    assert_eq!(np.remote_addr, ":16000", "error: {}", np.error);
}

/// Parse yamux frames from the server into per-stream data.
fn yamux_streams(buf: &[u8]) -> std::collections::HashMap<u32, Vec<u8>> {
    let mut out: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    let mut at = 0;
    while buf.len() >= at + 12 {
        let h = &buf[at..at + 12];
        let ty = h[1];
        let id = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let len = u32::from_be_bytes(h[8..12].try_into().unwrap()) as usize;
        if ty == 0 {
            if buf.len() < at + 12 + len {
                break;
            }
            out.entry(id)
                .or_default()
                .extend_from_slice(&buf[at + 12..at + 12 + len]);
            at += 12 + len;
        } else {
            out.entry(id).or_default();
            at += 12;
        }
    }
    out
}

#[test]
fn mux_capture_replays() {
    let _port = PORT_16000.lock().unwrap_or_else(|e| e.into_inner());
    let fp = Fastpath::start("", 1);
    let c2s = vector("mux.tcp0.c2s.hex");
    // WindowUpdate|SYN (12) + Data header (12) + Login.
    let split = 24 + login_len(&c2s[24..]);
    assert_eq!(
        &c2s[..12],
        &hex::decode("0001000100000001005c0000").unwrap()[..]
    );
    let mut s = connect(&fp);
    s.write_all(&c2s[..split]).unwrap();
    let mut got = Vec::new();
    read_until(&mut s, &mut got, |b| {
        yamux_streams(b)
            .get(&1)
            .is_some_and(|d| matches!(frame::decode(d), Ok(Some(_))))
    });
    // The server ACKs stream 1 at once, granting its (larger) window.
    assert_eq!(
        &got[..8],
        &hex::decode("0001000200000001").unwrap()[..],
        "ACK on accept"
    );
    s.write_all(&c2s[split..]).unwrap();
    read_until(&mut s, &mut got, |b| {
        let st = yamux_streams(b);
        let Some(ctl) = st.get(&1) else { return false };
        let (_, plain) = split_control(ctl);
        messages(&plain)
            .iter()
            .any(|m| matches!(m, Message::NewProxyResp(_)))
    });
    let st = yamux_streams(&got);
    let (resp, plain) = split_control(&st[&1]);
    assert!(
        matches!(resp, Message::LoginResp(ref r) if r.error.is_empty()),
        "{resp:?}"
    );
    let np = messages(&plain).into_iter().find_map(|m| match m {
        Message::NewProxyResp(r) => Some(r),
        _ => None,
    });
    assert_eq!(np.expect("NewProxyResp").remote_addr, ":16000");
    // Work streams carried the captured (stale) run_id: refused, not served.
    let refused = st.get(&3).map(|d| messages(d)).unwrap_or_default();
    assert!(
        refused.iter().any(
            |m| matches!(m, Message::StartWorkConn(w) if w.error.contains("no client control"))
        ),
        "{refused:?}"
    );
}

#[test]
fn v2_capture_handshake_replays() {
    let fp = Fastpath::start("", 1);
    let c2s = vector("v2-notls-mux-port27000.tcp0.c2s.hex");
    // yamux SYN + Data header, then on stream 1: magic, ClientHello frame, Login frame.
    let data_len = u32::from_be_bytes(c2s[20..24].try_into().unwrap()) as usize;
    let mut stream1 = c2s[24..24 + data_len].to_vec();
    let mut at = 24 + data_len;
    // frpc writes magic, hello and login as separate yamux Data frames: gather them.
    while stream1.len() < 7
        || wire_v2::decode_frame(&stream1[7..])
            .ok()
            .flatten()
            .is_none_or(|(_, _, used)| {
                wire_v2::decode_frame(&stream1[7 + used..])
                    .ok()
                    .flatten()
                    .is_none()
            })
    {
        let len = u32::from_be_bytes(c2s[at + 8..at + 12].try_into().unwrap()) as usize;
        stream1.extend_from_slice(&c2s[at + 12..at + 12 + len]);
        at += 12 + len;
    }
    assert_eq!(&stream1[..7], &wire_v2::MAGIC);
    let mut s = connect(&fp);
    s.write_all(&c2s[..at]).unwrap();
    let mut got = Vec::new();
    let two_frames = |d: &[u8]| -> Option<Vec<(FrameType, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut at = 0;
        while out.len() < 2 {
            let (ty, range, used) = wire_v2::decode_frame(&d[at..]).ok().flatten()?;
            out.push((ty, d[at + range.start..at + range.end].to_vec()));
            at += used;
        }
        Some(out)
    };
    read_until(&mut s, &mut got, |b| {
        yamux_streams(b)
            .get(&1)
            .is_some_and(|d| two_frames(d).is_some())
    });
    let frames = two_frames(&yamux_streams(&got)[&1]).unwrap();
    assert_eq!(frames[0].0, FrameType::ServerHello);
    let hello = wire_v2::ServerHello::parse(&frames[0].1).unwrap();
    assert!(hello.error.is_empty(), "{}", hello.error);
    assert_eq!(hello.selected.crypto.algorithm, "aes-256-gcm");
    match wire_v2::decode_message(&frames[1].1).unwrap() {
        Message::LoginResp(r) => assert!(r.error.is_empty(), "{}", r.error),
        other => panic!("expected LoginResp, got {}", other.name()),
    }
}
