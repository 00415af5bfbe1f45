//! The head of an HTTP/1.x request, read as a vhost listener needs it: where
//! it goes (Host, path, the Basic-auth user), how its body is framed (so
//! that the next request on a keep-alive connection can be found and routed
//! again), whether it upgrades the connection, and whether the connection
//! stays open after it. Parsed with `httparse`, borrowed from the caller's
//! buffer; nothing is allocated.
//!
//! What is refused, and with which status:
//! - a head over [`MAX_HEAD`] bytes or with more than [`MAX_HEADERS`]
//!   fields: 431;
//! - a malformed request line or header, HTTP/1.1 without Host, more than
//!   one Host, a Content-Length that is not a number or two that differ, a
//!   Transfer-Encoding whose last coding is not `chunked`, and both
//!   Transfer-Encoding and Content-Length: 400. The last one is refused
//!   rather than resolved (RFC 9112 lets TE win): the head goes on to the
//!   origin unchanged, and an origin that framed the body by Content-Length
//!   would read the rest as another request, one that was never routed.

use std::fmt;

/// The longest request head read, bytes (request line and headers with
/// their final empty line).
pub const MAX_HEAD: usize = 64 * 1024;

/// The most header fields one request may carry.
pub const MAX_HEADERS: usize = 128;

/// Why a request head was refused; [`HeadError::status`] is the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] fields.
    TooLarge,
    /// Not a request this proxy can route or frame; what was wrong.
    Malformed(&'static str),
}

impl HeadError {
    /// The HTTP status to answer with.
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Malformed(_) => 400,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::TooLarge => write!(
                f,
                "request head over {MAX_HEAD} bytes or {MAX_HEADERS} header fields"
            ),
            HeadError::Malformed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for HeadError {}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding: see [`BodyFraming`].
    Chunked,
}

/// A parsed request head, borrowed from the buffer it was read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'b> {
    /// Bytes of the head, final CRLF CRLF included: the body (or the next
    /// request) starts here.
    pub head_len: usize,
    /// As sent (`GET`, `CONNECT`, ...).
    pub method: &'b str,
    /// The request-target as sent.
    pub target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The authority the request names: an absolute-form target's, else
    /// the Host header's, else (HTTP/1.0 without Host) empty. Raw: see
    /// [`canonical_host`](super::canonical_host) for the routing key.
    pub host: &'b str,
    /// The target's path, without query: `/a/b` of `/a/b?c` or of
    /// `http://h/a/b?c`; empty for `http://h` and for CONNECT's
    /// `host:port`; `*` for `OPTIONS *`.
    pub path: &'b str,
    /// How the body is framed.
    pub body: Body,
    /// The protocol asked for (`websocket`, `h2c`, ...) when the request
    /// asks to upgrade the connection (Connection: upgrade and Upgrade).
    pub upgrade: Option<&'b str>,
    /// Whether the client keeps the connection open after the response
    /// (HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The Authorization header, if any.
    pub authorization: Option<&'b str>,
    /// The Proxy-Authorization header, if any.
    pub proxy_authorization: Option<&'b str>,
    /// `Expect: 100-continue`: the client waits for a 100 before it sends
    /// the body.
    pub expect_continue: bool,
}

/// Reads the request head at the start of `buf`: `Ok(None)` until it is
/// complete (read more and call again with the longer buffer), then the
/// request, or why it is refused.
pub fn parse(buf: &[u8]) -> Result<Option<Request<'_>>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let Some(head_len) = head_length(buf, req.parse(buf))? else {
        return Ok(None);
    };
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    let minor_version = req.version.unwrap_or_default();

    let mut host_header: Option<&str> = None;
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut upgrade_token = false;
    let mut upgrade: Option<&str> = None;
    let mut authorization = None;
    let mut proxy_authorization = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        let value = text(h.value);
        if name.eq_ignore_ascii_case("host") {
            if host_header.is_some() {
                return Err(HeadError::Malformed("more than one Host header"));
            }
            host_header = Some(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            for v in framing_text(h.value)?.split(',') {
                let n = content_length(v.trim())?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Malformed("Content-Length values differ"));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if minor_version == 0 {
                // HTTP/1.0 has no transfer codings (RFC 9112 6.1), and
                // origins ignore the field there: framed as chunked here,
                // the body would be another request to them.
                return Err(HeadError::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            // Codings accumulate over repeated fields; the last one counts.
            let value = framing_text(h.value)?;
            if let Some(last) = value.rsplit(',').map(str::trim).find(|c| !c.is_empty()) {
                chunked = Some(last.eq_ignore_ascii_case("chunked"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive_token = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    upgrade_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(value.trim());
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value);
        } else if name.eq_ignore_ascii_case("proxy-authorization") {
            proxy_authorization = Some(value);
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.trim().eq_ignore_ascii_case("100-continue");
        }
    }

    let body = match (chunked, length) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (Some(true), None) => Body::Chunked,
        (Some(false), None) => {
            return Err(HeadError::Malformed(
                "Transfer-Encoding does not end in chunked",
            ))
        }
        (None, Some(n)) => Body::Length(n),
        (None, None) => Body::None,
    };

    let (authority, path) = split_target(method, target)?;
    let host = match (authority, host_header) {
        (Some(a), _) => a,
        (None, Some(h)) => h.trim(),
        (None, None) if minor_version == 0 => "",
        (None, None) => return Err(HeadError::Malformed("HTTP/1.1 request without Host")),
    };
    let keep_alive = if minor_version == 0 {
        keep_alive_token && !close
    } else {
        !close
    };
    Ok(Some(Request {
        head_len,
        method,
        target,
        minor_version,
        host,
        path,
        body,
        upgrade: if upgrade_token { upgrade } else { None },
        keep_alive,
        authorization,
        proxy_authorization,
        expect_continue,
    }))
}

/// How a response's body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    /// Framed as a request body would be: none, a length, or chunked.
    Framed(Body),
    /// Until the connection closes (neither Content-Length nor chunked).
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// Bytes of the head, final CRLF CRLF included.
    pub head_len: usize,
    /// The status code.
    pub status: u16,
    /// How the body is delimited.
    pub body: ResponseBody,
    /// Whether the connection stays open after this response.
    pub keep_alive: bool,
}

impl Response {
    /// An interim response (1xx other than 101): another head follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Reads the response head at the start of `buf`, sent for a request whose
/// method is `HEAD` when `to_head` (such a response has no body, whatever
/// its Content-Length says): `Ok(None)` until it is complete.
pub fn parse_response(buf: &[u8], to_head: bool) -> Result<Option<Response>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut fields);
    let Some(head_len) = head_length(buf, res.parse(buf))? else {
        return Ok(None);
    };
    let status = res.code.unwrap_or_default();
    let minor_version = res.version.unwrap_or_default();
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let (mut close, mut keep_alive_token) = (false, false);
    for h in res.headers.iter() {
        let (name, value) = (h.name, text(h.value));
        if name.eq_ignore_ascii_case("content-length") {
            for v in value.split(',') {
                let n = content_length(v.trim())?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Malformed("Content-Length values differ"));
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if let Some(last) = value.rsplit(',').map(str::trim).find(|c| !c.is_empty()) {
                chunked = Some(last.eq_ignore_ascii_case("chunked"));
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    let no_body = to_head || (100..200).contains(&status) || status == 204 || status == 304;
    let body = if no_body {
        ResponseBody::Framed(Body::None)
    } else {
        match (chunked, length) {
            // Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
            (Some(true), _) => ResponseBody::Framed(Body::Chunked),
            (Some(false), _) => ResponseBody::UntilClose,
            (None, Some(n)) => ResponseBody::Framed(Body::Length(n)),
            (None, None) => ResponseBody::UntilClose,
        }
    };
    let keep_alive = body != ResponseBody::UntilClose
        && if minor_version == 0 {
            keep_alive_token && !close
        } else {
            !close
        };
    Ok(Some(Response {
        head_len,
        status,
        body,
        keep_alive,
    }))
}

/// The length of a complete head from what httparse said of `buf`; None
/// while it is incomplete and under [`MAX_HEAD`].
fn head_length(buf: &[u8], parsed: httparse::Result<usize>) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(malformed(e))),
    }
}

fn malformed(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "malformed header name",
        httparse::Error::HeaderValue => "malformed header value",
        httparse::Error::NewLine => "malformed line ending",
        httparse::Error::Status => "malformed status",
        httparse::Error::Token => "malformed method",
        httparse::Error::Version => "malformed HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

/// A header value as text. httparse lets obs-text (bytes >= 0x80) through;
/// a value that is not UTF-8 reads as empty (a Host that routes nowhere, a
/// Content-Length that is not a number), and fields this module does not
/// read go on as they came.
fn text(v: &[u8]) -> &str {
    std::str::from_utf8(v).unwrap_or_default()
}

/// A framing field's value (Content-Length, Transfer-Encoding) as text:
/// one that is not UTF-8 is refused, not read as empty, since the origin
/// would read it otherwise.
fn framing_text(v: &[u8]) -> Result<&str, HeadError> {
    std::str::from_utf8(v).map_err(|_| HeadError::Malformed("framing field is not text"))
}

fn content_length(v: &str) -> Result<u64, HeadError> {
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeadError::Malformed("Content-Length is not a number"));
    }
    v.parse()
        .map_err(|_| HeadError::Malformed("Content-Length is not a number"))
}

/// The authority an absolute-form or authority-form target names, and the
/// target's path.
fn split_target<'b>(
    method: &str,
    target: &'b str,
) -> Result<(Option<&'b str>, &'b str), HeadError> {
    if method == "CONNECT" {
        // authority-form: host:port and nothing else.
        if target.is_empty() || target.contains('/') {
            return Err(HeadError::Malformed("CONNECT target is not host:port"));
        }
        return Ok((Some(target), ""));
    }
    let without_query = |p: &'b str| p.split_once(['?', '#']).map_or(p, |(a, _)| a);
    if target.starts_with('/') || target == "*" {
        return Ok((None, without_query(target)));
    }
    // absolute-form: scheme "://" authority path-abempty [ "?" query ]
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(HeadError::Malformed("malformed request target"));
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(HeadError::Malformed("malformed request target"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    // userinfo is not allowed in http(s) URIs a client sends (RFC 9110 4.2.4)
    if authority.contains('@') {
        return Err(HeadError::Malformed("request target carries userinfo"));
    }
    let path = without_query(&rest[end..]);
    // `http://h` has an empty path, as Go's URL.Path reads it (frps
    // matches locations against that).
    Ok((Some(authority), path))
}

/// A request path as routes match it: percent-decoded, as Go's
/// `URL.Path` (what frps matches `locations` against) holds it, so that
/// `/%61dmin` is `/admin` here as it is to the origin. A `%` not followed
/// by two hex digits is refused, as Go refuses the request. Decoded bytes
/// that are not UTF-8 are replaced (a location is UTF-8, so a prefix
/// that matched them could not match the original either).
pub fn decoded_path(path: &str) -> Result<std::borrow::Cow<'_, str>, HeadError> {
    if !path.contains('%') {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err(HeadError::Malformed("malformed percent-escape in path")),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(std::borrow::Cow::Owned(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// Basic credentials of an Authorization or Proxy-Authorization value,
/// `(user, password)`, as frps reads them (scheme case-insensitive,
/// standard base64, the user up to the first colon).
pub fn basic_credentials(value: &str) -> Option<(String, String)> {
    use base64::Engine;
    const PREFIX: &str = "Basic ";
    // Compared as bytes: the value may hold multi-byte characters, and a
    // str cut inside one panics. Once the ASCII prefix matched, the rest
    // starts on a character boundary.
    let head = value.as_bytes().get(..PREFIX.len())?;
    if !head.eq_ignore_ascii_case(PREFIX.as_bytes()) {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&value.as_bytes()[PREFIX.len()..])
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (user, password) = s.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Follows a request body through the bytes that arrive after its head, so
/// that the start of the next request is known without buffering the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFraming {
    state: Chunk,
    /// Bytes of the current chunk's extension, or of the trailer fields
    /// so far (each bounded by [`MAX_HEAD`]).
    trailer: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A fixed-length body (or the data of a chunk) with this much left.
    Data {
        left: u64,
        chunked: bool,
    },
    /// Reading a chunk-size line: the size so far and digits seen.
    Size {
        size: u64,
        digits: u8,
    },
    /// In a chunk extension, until CRLF.
    Extension {
        size: u64,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// After a chunk's data: CR then LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line; `cr` when its CR was seen.
    TrailerLine {
        cr: bool,
    },
    /// The final empty line's CR seen.
    FinalLf,
    Done,
}

impl BodyFraming {
    /// Framing for a body as its head declared it.
    pub fn new(body: Body) -> BodyFraming {
        let state = match body {
            Body::None | Body::Length(0) => Chunk::Done,
            Body::Length(n) => Chunk::Data {
                left: n,
                chunked: false,
            },
            Body::Chunked => Chunk::Size { size: 0, digits: 0 },
        };
        BodyFraming { state, trailer: 0 }
    }

    /// Whether the whole body has gone by.
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Takes what of `data` belongs to the body: returns how many bytes
    /// that is (all of `data` unless the body ends inside it; what follows
    /// is the next request's), or why the chunked coding is broken.
    pub fn advance(&mut self, data: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < data.len() {
            match self.state {
                Chunk::Done => break,
                Chunk::Data { left, chunked } => {
                    let take = left.min((data.len() - i) as u64);
                    i += take as usize;
                    let left = left - take;
                    self.state = match (left, chunked) {
                        (0, false) => Chunk::Done,
                        (0, true) => Chunk::DataCr,
                        _ => Chunk::Data { left, chunked },
                    };
                }
                state => {
                    self.state = self.step(state, data[i])?;
                    i += 1;
                }
            }
        }
        Ok(i)
    }

    fn step(&mut self, state: Chunk, b: u8) -> Result<Chunk, &'static str> {
        Ok(match state {
            Chunk::Size { size, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                    if digits >= 16 {
                        return Err("chunk size too large");
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Chunk::Size {
                        size: size << 4 | d,
                        digits: digits + 1,
                    }
                }
                _ if digits == 0 => return Err("chunk size missing"),
                b';' | b' ' | b'\t' => Chunk::Extension { size },
                b'\r' => Chunk::SizeLf { size },
                _ => return Err("malformed chunk size"),
            },
            Chunk::Extension { size } => match b {
                b'\r' => Chunk::SizeLf { size },
                b'\n' => return Err("bare LF in chunk extension"),
                _ => {
                    self.trailer += 1;
                    if self.trailer > MAX_HEAD {
                        return Err("chunk extension too long");
                    }
                    Chunk::Extension { size }
                }
            },
            Chunk::SizeLf { size } => match b {
                b'\n' if size == 0 => Chunk::TrailerStart,
                b'\n' => Chunk::Data {
                    left: size,
                    chunked: true,
                },
                _ => return Err("chunk size line not ended by CRLF"),
            },
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                _ => return Err("chunk data not followed by CRLF"),
            },
            Chunk::DataLf => match b {
                b'\n' => {
                    // Extensions are bounded per chunk, not per body.
                    self.trailer = 0;
                    Chunk::Size { size: 0, digits: 0 }
                }
                _ => return Err("chunk data not followed by CRLF"),
            },
            // A bare LF anywhere in the coding is refused: origins that
            // take it as a line end would see the body end where this
            // does not, and read what follows as a request never routed.
            Chunk::TrailerStart => match b {
                b'\r' => Chunk::FinalLf,
                b'\n' => return Err("bare LF in trailer"),
                _ => self.trailer_byte(false)?,
            },
            Chunk::TrailerLine { cr } => match (cr, b) {
                (true, b'\n') => Chunk::TrailerStart,
                (false, b'\n') => return Err("bare LF in trailer"),
                (_, b'\r') => self.trailer_byte(true)?,
                (true, _) => return Err("trailer line not ended by CRLF"),
                (false, _) => self.trailer_byte(false)?,
            },
            Chunk::FinalLf => match b {
                b'\n' => Chunk::Done,
                _ => return Err("chunked body not ended by CRLF"),
            },
            Chunk::Data { .. } | Chunk::Done => state,
        })
    }

    fn trailer_byte(&mut self, cr: bool) -> Result<Chunk, &'static str> {
        self.trailer += 1;
        if self.trailer > MAX_HEAD {
            return Err("trailer fields too long");
        }
        Ok(Chunk::TrailerLine { cr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(buf: &[u8]) -> Request<'_> {
        parse(buf).expect("parses").expect("complete")
    }

    #[test]
    fn a_plain_get_routes_by_host_and_path() {
        let buf =
            b"GET /api/v1?x=1 HTTP/1.1\r\nHost: Example.com:8080\r\nUser-Agent: t\r\n\r\nNEXT";
        let r = ok(buf);
        assert_eq!(r.method, "GET");
        assert_eq!(r.host, "Example.com:8080");
        assert_eq!(r.path, "/api/v1");
        assert_eq!(r.body, Body::None);
        assert!(r.keep_alive);
        assert_eq!(r.upgrade, None);
        assert_eq!(&buf[r.head_len..], b"NEXT");
    }

    #[test]
    fn an_incomplete_head_asks_for_more_until_the_limit() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        assert_eq!(parse(&big), Err(HeadError::TooLarge));
        assert_eq!(HeadError::TooLarge.status(), 431);
    }

    #[test]
    fn too_many_fields_is_431() {
        let mut h = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            h.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        assert_eq!(parse(&h), Err(HeadError::TooLarge));
    }

    #[test]
    fn bad_heads_are_400_with_a_reason() {
        for (head, why) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "HTTP/1.1 request without Host"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host header"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", "Content-Length is not a number"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Content-Length values differ"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "both Transfer-Encoding and Content-Length"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "Transfer-Encoding does not end in chunked"),
            (b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", "malformed line ending"),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "malformed HTTP version"),
            (b"GET / HTTP/1.1\r\nBad Header: a\r\n\r\n", "malformed header name"),
            (b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", "CONNECT target is not host:port"),
            (b"GET http://u@h/ HTTP/1.1\r\nHost: a\r\n\r\n", "request target carries userinfo"),
            (b"GET nope HTTP/1.1\r\nHost: a\r\n\r\n", "malformed request target"),
            (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding in an HTTP/1.0 request"),
            (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\xff\r\nContent-Length: 3\r\n\r\n", "framing field is not text"),
        ] {
            let e = parse(head).expect_err(why);
            assert_eq!(e, HeadError::Malformed(why), "{}", String::from_utf8_lossy(head));
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn absolute_form_names_the_host_and_http_1_0_may_omit_it() {
        let r = ok(b"GET http://b.example.com/x/y?z HTTP/1.1\r\nHost: a.example.com\r\n\r\n");
        assert_eq!((r.host, r.path), ("b.example.com", "/x/y"));
        let r = ok(b"GET http://b.example.com HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.path, "");
        let r = ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!((r.host, r.keep_alive), ("", false));
        let r = ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(r.keep_alive);
        let r = ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
    }

    #[test]
    fn connect_carries_the_target_authority_and_proxy_credentials() {
        let r = ok(b"CONNECT db.example.com:5432 HTTP/1.1\r\nHost: db.example.com:5432\r\nProxy-Authorization: Basic dTpw\r\n\r\n");
        assert_eq!(
            (r.method, r.host, r.path),
            ("CONNECT", "db.example.com:5432", "")
        );
        let auth = r.proxy_authorization.and_then(basic_credentials);
        assert_eq!(auth, Some(("u".into(), "p".into())));
    }

    #[test]
    fn upgrade_needs_both_fields() {
        let r = ok(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(r.upgrade, Some("websocket"));
        let r = ok(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(r.upgrade, None);
    }

    #[test]
    fn basic_credentials_as_frps_reads_them() {
        // "user:pa:ss"
        assert_eq!(
            basic_credentials("basic dXNlcjpwYTpzcw=="),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(basic_credentials("Bearer x"), None);
        // A multi-byte character across the end of the scheme (found by
        // the http_head fuzz target: a str cut there panicked).
        assert_eq!(basic_credentials("Basic\u{75b}Tpw"), None);
        assert_eq!(basic_credentials("Bas\u{e9}"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        // "nocolon"
        assert_eq!(basic_credentials("Basic bm9jb2xvbg=="), None);
    }

    #[test]
    fn responses_are_framed_as_rfc_9112_says() {
        let r = |b: &'static [u8], head| parse_response(b, head).unwrap().unwrap();
        let ok = r(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert_eq!((ok.status, ok.head_len), (200, 38));
        assert_eq!(ok.body, ResponseBody::Framed(Body::Length(5)));
        assert!(ok.keep_alive);
        // HEAD, 204 and 304 have no body whatever the head says.
        let head = r(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(head.body, ResponseBody::Framed(Body::None));
        let nc = r(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        );
        assert_eq!(nc.body, ResponseBody::Framed(Body::None));
        let chunked = r(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(chunked.body, ResponseBody::Framed(Body::Chunked));
        // Neither: until close, and the connection is not kept.
        let eof = r(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(eof.body, ResponseBody::UntilClose);
        assert!(!eof.keep_alive);
        let close = r(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        assert!(!close.keep_alive);
        let old = r(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert!(!old.keep_alive);
        let cont = r(b"HTTP/1.1 100 Continue\r\n\r\n", false);
        assert!(cont.is_interim());
        assert!(!r(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false).is_interim());
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n", false), Ok(None));
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n", false).is_err());
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false),
            Err(HeadError::Malformed("Content-Length is not a number"))
        );
    }

    #[test]
    fn a_fixed_length_body_ends_where_the_next_request_starts() {
        let r = ok(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.body, Body::Length(5));
        let mut f = BodyFraming::new(r.body);
        assert_eq!(f.advance(b"abc"), Ok(3));
        assert!(!f.is_done());
        assert_eq!(f.advance(b"deGET"), Ok(2));
        assert!(f.is_done());
        assert!(BodyFraming::new(Body::None).is_done());
        assert!(BodyFraming::new(Body::Length(0)).is_done());
    }

    #[test]
    fn a_chunked_body_is_followed_byte_by_byte_or_at_once() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: t\r\n\r\n";
        let mut whole = body.to_vec();
        whole.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut f = BodyFraming::new(Body::Chunked);
        assert_eq!(f.advance(&whole), Ok(body.len()));
        assert!(f.is_done());
        let mut f = BodyFraming::new(Body::Chunked);
        let mut taken = 0;
        for b in whole.chunks(1) {
            taken += f.advance(b).unwrap();
        }
        assert_eq!(taken, body.len());
        assert!(f.is_done());
    }

    #[test]
    fn chunk_extensions_are_bounded_per_chunk() {
        let ext = "x".repeat(1000);
        let mut body = String::new();
        for _ in 0..100 {
            body.push_str(&format!("1;{ext}\r\na\r\n"));
        }
        body.push_str("0\r\n\r\n");
        let mut f = BodyFraming::new(Body::Chunked);
        assert_eq!(f.advance(body.as_bytes()), Ok(body.len()));
        assert!(f.is_done());
        let long = format!("1;{}\r\n", "x".repeat(MAX_HEAD + 1));
        let mut f = BodyFraming::new(Body::Chunked);
        assert_eq!(f.advance(long.as_bytes()), Err("chunk extension too long"));
    }

    #[test]
    fn paths_are_matched_decoded_as_go_reads_them() {
        assert_eq!(decoded_path("/admin").unwrap(), "/admin");
        assert_eq!(decoded_path("/%61dmin/%2Fx").unwrap(), "/admin//x");
        assert_eq!(decoded_path("/a+b%20c").unwrap(), "/a+b c");
        for bad in ["/%", "/%4", "/%zz", "/a%g1"] {
            assert_eq!(
                decoded_path(bad),
                Err(HeadError::Malformed("malformed percent-escape in path")),
                "{bad}"
            );
        }
        // Not UTF-8 once decoded: replaced, never a panic.
        assert_eq!(decoded_path("/%ff").unwrap(), "/\u{fffd}");
    }

    #[test]
    fn broken_chunked_coding_is_an_error() {
        let broken = [
            "\r\n => chunk size missing",
            "zz\r\n => chunk size missing",
            "4x\r\n => malformed chunk size",
            "4\rx => chunk size line not ended by CRLF",
            "1\r\naXY => chunk data not followed by CRLF",
            "11111111111111111\r\n => chunk size too large",
            "0\r\n\rX => chunked body not ended by CRLF",
            "0\r\n\nGET / => bare LF in trailer",
            "0\r\nX: 1\nGET / => bare LF in trailer",
        ];
        for case in broken {
            let (bad, why) = case.split_once(" => ").unwrap();
            let mut f = BodyFraming::new(Body::Chunked);
            assert_eq!(f.advance(bad.as_bytes()), Err(why), "{bad:?}");
        }
    }
}
