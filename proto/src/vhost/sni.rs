//! The server name a TLS client asks for, read from the first bytes of the
//! connection without terminating TLS: what an `https` proxy is routed by.
//!
//! Layout read (RFC 8446 §4.1.2, RFC 6066 §3): TLS records of type 22
//! (handshake) carry a ClientHello (handshake type 1, 24-bit length) with
//! legacy_version, 32 random bytes, session id, cipher suites, compression
//! methods and extensions; extension 0 (server_name) holds a list whose
//! `host_name` (type 0) entry is the name. A ClientHello split over several
//! records is put together (up to [`MAX_HELLO`] bytes); one in a single
//! record, the common case, is read in place.

use std::borrow::Cow;

/// The longest ClientHello read, bytes.
pub const MAX_HELLO: usize = 64 * 1024;

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// The ClientHello is not complete yet: read more.
    NeedMore,
    /// The name the client asked for, as sent (ASCII; see
    /// [`canonical_host`](super::canonical_host) for the routing key).
    Name(String),
    /// A well-formed ClientHello without a server name.
    NoName,
    /// Not a TLS ClientHello; why.
    NotHello(&'static str),
}

const HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const SERVER_NAME: u16 = 0;
const HOST_NAME: u8 = 0;

/// Reads the ClientHello at the start of `buf`.
pub fn server_name(buf: &[u8]) -> Sni {
    // The handshake message's bytes: the first record's fragment in place,
    // copied only when the message goes on in another record.
    let mut msg: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut at = 0;
    loop {
        let Some(hdr) = buf.get(at..at + 5) else {
            return Sni::NeedMore;
        };
        if hdr[0] != HANDSHAKE {
            return Sni::NotHello("not a TLS handshake record");
        }
        if hdr[1] != 3 {
            return Sni::NotHello("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if len == 0 || len > 16384 + 2048 {
            return Sni::NotHello("bad TLS record length");
        }
        let Some(fragment) = buf.get(at + 5..at + 5 + len) else {
            return Sni::NeedMore;
        };
        at += 5 + len;
        if msg.is_empty() {
            msg = Cow::Borrowed(fragment);
        } else {
            msg.to_mut().extend_from_slice(fragment);
        }
        // The handshake header may itself be split over records.
        if msg.len() < 4 {
            continue;
        }
        if msg[0] != CLIENT_HELLO {
            return Sni::NotHello("first handshake message is not a ClientHello");
        }
        let need = 4 + (usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3]));
        if need > MAX_HELLO {
            return Sni::NotHello("ClientHello too long");
        }
        if msg.len() >= need {
            return hello(&msg[4..need]);
        }
    }
}

/// A cursor over the ClientHello body; every read is bounds-checked.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn hello(body: &[u8]) -> Sni {
    const SHORT: Sni = Sni::NotHello("truncated ClientHello");
    let mut c = Cursor(body);
    let Some(_version) = c.u16() else {
        return SHORT;
    };
    if c.take(32).is_none() {
        return SHORT;
    }
    let Some(session_id) = c.vec8() else {
        return SHORT;
    };
    if session_id.len() > 32 {
        return Sni::NotHello("session id too long");
    }
    let Some(suites) = c.vec16() else {
        return SHORT;
    };
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Sni::NotHello("bad cipher suite list");
    }
    if c.vec8().is_none() {
        return SHORT;
    }
    if c.0.is_empty() {
        // No extensions at all (TLS 1.0-era clients).
        return Sni::NoName;
    }
    let Some(exts) = c.vec16() else { return SHORT };
    let mut e = Cursor(exts);
    while !e.0.is_empty() {
        let (Some(ty), Some(data)) = (e.u16(), e.vec16()) else {
            return Sni::NotHello("truncated extension");
        };
        if ty == SERVER_NAME {
            return names(data);
        }
    }
    Sni::NoName
}

fn names(data: &[u8]) -> Sni {
    let mut c = Cursor(data);
    let Some(list) = c.vec16() else {
        return Sni::NotHello("truncated server_name");
    };
    let mut l = Cursor(list);
    while !l.0.is_empty() {
        let (Some(ty), Some(name)) = (l.u8(), l.vec16()) else {
            return Sni::NotHello("truncated server_name");
        };
        if ty != HOST_NAME {
            continue;
        }
        if name.is_empty() || name.len() > 255 {
            return Sni::NotHello("bad server name length");
        }
        if !name.iter().all(|&b| b.is_ascii_graphic()) {
            return Sni::NotHello("server name is not printable ASCII");
        }
        return Sni::Name(String::from_utf8_lossy(name).into_owned());
    }
    Sni::NoName
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ClientHello record with `name` (or none), and extensions
    /// around it.
    fn client_hello(name: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        // supported_versions (43): TLS 1.3
        exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        if let Some(n) = name {
            let mut list = vec![HOST_NAME];
            list.extend_from_slice(&(n.len() as u16).to_be_bytes());
            list.extend_from_slice(n.as_bytes());
            let mut ext = (list.len() as u16).to_be_bytes().to_vec();
            ext.extend_from_slice(&list);
            exts.extend_from_slice(&SERVER_NAME.to_be_bytes());
            exts.extend_from_slice(&(ext.len() as u16).to_be_bytes());
            exts.extend_from_slice(&ext);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(32);
        body.extend_from_slice(&[9; 32]);
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![CLIENT_HELLO];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn finds_the_name_and_asks_for_more_until_complete() {
        let rec = client_hello(Some("App.Example.com"));
        for cut in 0..rec.len() {
            assert_eq!(server_name(&rec[..cut]), Sni::NeedMore, "cut at {cut}");
        }
        assert_eq!(server_name(&rec), Sni::Name("App.Example.com".into()));
        // Application data after the hello changes nothing.
        let mut more = rec.clone();
        more.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        assert_eq!(server_name(&more), Sni::Name("App.Example.com".into()));
    }

    #[test]
    fn no_server_name_is_told_apart_from_garbage() {
        assert_eq!(server_name(&client_hello(None)), Sni::NoName);
        assert_eq!(
            server_name(b"GET / HTTP/1.1\r\n\r\n"),
            Sni::NotHello("not a TLS handshake record")
        );
        let mut rec = client_hello(Some("a.example.com"));
        rec[5] = 2; // ServerHello
        assert_eq!(
            server_name(&rec),
            Sni::NotHello("first handshake message is not a ClientHello")
        );
    }

    #[test]
    fn a_hello_split_over_records_is_put_together() {
        let rec = client_hello(Some("split.example.com"));
        let hs = &rec[5..];
        for at in [1, 3, 4, 40, hs.len() - 1] {
            let mut two = Vec::new();
            for part in [&hs[..at], &hs[at..]] {
                two.extend_from_slice(&[HANDSHAKE, 3, 3]);
                two.extend_from_slice(&(part.len() as u16).to_be_bytes());
                two.extend_from_slice(part);
            }
            assert_eq!(
                server_name(&two[..two.len() - 1]),
                Sni::NeedMore,
                "split at {at}"
            );
            assert_eq!(
                server_name(&two),
                Sni::Name("split.example.com".into()),
                "split at {at}"
            );
        }
    }

    #[test]
    fn a_name_that_is_not_printable_ascii_is_refused() {
        assert_eq!(
            server_name(&client_hello(Some("a b"))),
            Sni::NotHello("server name is not printable ASCII")
        );
    }
}
