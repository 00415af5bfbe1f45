//! A blocking client for etcd's v3 HTTP/JSON gateway (served on the client
//! port since etcd 3.4): authenticate, range a prefix, watch a prefix.
//!
//! Keys and values travel base64-encoded and int64 fields as JSON strings,
//! as grpc-gateway writes them. A watch is one long POST whose response is
//! newline-delimited JSON; [`Watch::next`] reads it with a short socket
//! read timeout so that the caller can notice a stop request while the
//! stream is idle.

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer};

use super::EtcdConfig;

/// Limit on a unary request (authenticate, one range page), once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a watch read blocks before the stop flag is looked at again.
/// It also bounds the wait for the watch's response headers, which etcd
/// sends at once; a slower answer fails the attempt and is retried.
const WATCH_POLL: Duration = Duration::from_secs(1);
/// A watch silent for this long is presumed dead (etcd sends a progress
/// notification every 10 minutes by default to a watch that asks for them).
const WATCH_SILENCE: Duration = Duration::from_secs(11 * 60);
/// Keys per range page.
const PAGE: u64 = 1000;
/// Longest watch message accepted (a batch of full tenant records).
const MAX_MESSAGE: usize = 64 << 20;

/// Why talking to etcd failed. `Display` is what health and logs show.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No connection, a timeout, or a broken stream.
    #[error("{endpoint}: {reason}")]
    Transport {
        /// Endpoint base URL.
        endpoint: String,
        /// What the transport said.
        reason: String,
    },
    /// etcd answered with an error status.
    #[error("{endpoint}: etcd refused {what} (HTTP {status}): {message}")]
    Refused {
        /// Endpoint base URL.
        endpoint: String,
        /// Which request.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// etcd's message.
        message: String,
    },
    /// etcd answered something this client cannot read.
    #[error("{endpoint}: unreadable answer to {what}: {reason}")]
    Malformed {
        /// Endpoint base URL.
        endpoint: String,
        /// Which request.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The watch's start revision was compacted away; range again.
    #[error("{endpoint}: watch start revision compacted (oldest kept: {compact_revision})")]
    Compacted {
        /// Endpoint base URL.
        endpoint: String,
        /// Oldest revision etcd still has.
        compact_revision: i64,
    },
    /// etcd ended the watch or the stream.
    #[error("{endpoint}: watch ended: {reason}")]
    WatchEnded {
        /// Endpoint base URL.
        endpoint: String,
        /// Why, as far as known.
        reason: String,
    },
}

/// One key and its value, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key.
    pub key: Vec<u8>,
    /// The value (empty for deletions).
    pub value: Vec<u8>,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The key was written.
    Put(KeyValue),
    /// The key was deleted.
    Delete(Vec<u8>),
}

/// One message of a watch: the changes of one or more revisions, or a
/// progress notification (no changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchBatch {
    /// Revision of the store after these changes.
    pub revision: i64,
    /// The changes, in order.
    pub changes: Vec<Change>,
}

/// A connection to one endpoint, authenticated if configured.
pub struct Gateway {
    endpoint: String,
    unary: ureq::Agent,
    streaming: ureq::Agent,
    token: Option<String>,
}

/// The end of the key range that holds exactly the keys starting with
/// `prefix` (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte is 0xff (or the prefix is empty): "\0" means "to the end
    // of the keyspace".
    vec![0]
}

impl Gateway {
    /// Connects to `endpoint` (a base URL from the config) and, when the
    /// config names a user, authenticates.
    pub fn connect(cfg: &EtcdConfig, endpoint: &str) -> Result<Gateway, GatewayError> {
        let tls = cfg
            .tls_client_config()
            .map_err(|reason| GatewayError::Transport {
                endpoint: endpoint.to_owned(),
                reason,
            })?;
        let agent = |read: Option<Duration>, whole: Option<Duration>| {
            let mut b = ureq::AgentBuilder::new()
                .timeout_connect(cfg.dial_timeout)
                .timeout_write(REQUEST_TIMEOUT)
                .max_idle_connections(2);
            if let Some(r) = read {
                b = b.timeout_read(r);
            }
            if let Some(w) = whole {
                b = b.timeout(w);
            }
            if let Some(tls) = &tls {
                b = b.tls_config(tls.clone());
            }
            b.build()
        };
        let mut gw = Gateway {
            endpoint: endpoint.to_owned(),
            unary: agent(None, Some(cfg.dial_timeout + REQUEST_TIMEOUT)),
            streaming: agent(Some(WATCH_POLL), None),
            token: None,
        };
        if let Some(user) = &cfg.username {
            #[derive(Deserialize)]
            struct AuthResponse {
                #[serde(default)]
                token: String,
            }
            let body = serde_json::json!({
                "name": user,
                "password": cfg.password.clone().unwrap_or_default(),
            });
            let resp: AuthResponse = gw.call("authenticate", "/v3/auth/authenticate", &body)?;
            if resp.token.is_empty() {
                return Err(gw.malformed("authenticate", "no token in the answer".into()));
            }
            gw.token = Some(resp.token);
        }
        Ok(gw)
    }

    /// The endpoint this gateway talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every key under `prefix` at one revision; returns that revision.
    pub fn range_prefix(&self, prefix: &[u8]) -> Result<(i64, Vec<KeyValue>), GatewayError> {
        let end = B64.encode(prefix_end(prefix));
        let mut from = prefix.to_vec();
        let mut revision = 0i64;
        let mut all = Vec::new();
        loop {
            let mut body = serde_json::json!({
                "key": B64.encode(&from),
                "range_end": end,
                "limit": PAGE.to_string(),
            });
            // Later pages read at the first page's revision, so the whole
            // listing is one consistent snapshot.
            if revision > 0 {
                body["revision"] = revision.to_string().into();
            }
            let page: RangeResponse = self.call("range", "/v3/kv/range", &body)?;
            if revision == 0 {
                revision = page.header.revision;
            }
            let n = page.kvs.len();
            for kv in page.kvs {
                all.push(self.decode_kv("range", kv)?);
            }
            match all.last() {
                Some(last) if page.more && n > 0 => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        if revision <= 0 {
            return Err(self.malformed("range", "no revision in the answer".into()));
        }
        Ok((revision, all))
    }

    /// Watches every key under `prefix` from `start_revision` on. `stop`
    /// ends the wait for etcd's confirmation (as an error).
    pub fn watch(
        &self,
        prefix: &[u8],
        start_revision: i64,
        stop: &AtomicBool,
    ) -> Result<Watch, GatewayError> {
        let body = serde_json::json!({
            "create_request": {
                "key": B64.encode(prefix),
                "range_end": B64.encode(prefix_end(prefix)),
                "start_revision": start_revision.to_string(),
                "progress_notify": true,
            }
        });
        let resp = self
            .request(&self.streaming, "/v3/watch")
            .send_json(body)
            .map_err(|e| self.refused("watch", e))?;
        let mut watch = Watch {
            endpoint: self.endpoint.clone(),
            reader: BufReader::new(resp.into_reader()),
            line: Vec::new(),
            last_message: Instant::now(),
        };
        watch.created(stop)?;
        Ok(watch)
    }

    fn request(&self, agent: &ureq::Agent, path: &str) -> ureq::Request {
        let req = agent.post(&format!("{}{path}", self.endpoint));
        match &self.token {
            // etcd takes the bare token, not "Bearer <token>".
            Some(t) => req.set("Authorization", t),
            None => req,
        }
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, GatewayError> {
        let resp = self
            .request(&self.unary, path)
            .send_json(body)
            .map_err(|e| self.refused(what, e))?;
        let mut text = Vec::new();
        resp.into_reader()
            .take(MAX_MESSAGE as u64)
            .read_to_end(&mut text)
            .map_err(|e| GatewayError::Transport {
                endpoint: self.endpoint.clone(),
                reason: e.to_string(),
            })?;
        serde_json::from_slice(&text).map_err(|e| self.malformed(what, e.to_string()))
    }

    fn refused(&self, what: &'static str, e: ureq::Error) -> GatewayError {
        match e {
            ureq::Error::Status(status, resp) => {
                let text = resp.into_string().unwrap_or_default();
                let message = serde_json::from_str::<GatewayStatus>(&text)
                    .map(|s| s.message())
                    .unwrap_or(text);
                GatewayError::Refused {
                    endpoint: self.endpoint.clone(),
                    what,
                    status,
                    message,
                }
            }
            ureq::Error::Transport(t) => GatewayError::Transport {
                endpoint: self.endpoint.clone(),
                reason: t.to_string(),
            },
        }
    }

    fn malformed(&self, what: &'static str, reason: String) -> GatewayError {
        GatewayError::Malformed {
            endpoint: self.endpoint.clone(),
            what,
            reason,
        }
    }

    fn decode_kv(&self, what: &'static str, kv: RawKeyValue) -> Result<KeyValue, GatewayError> {
        decode_kv(kv).map_err(|reason| self.malformed(what, reason))
    }
}

/// An open watch stream.
pub struct Watch {
    endpoint: String,
    reader: BufReader<Box<dyn Read + Send + Sync>>,
    /// The message read so far: a read that times out mid-line leaves its
    /// bytes here and the next call goes on from them.
    line: Vec<u8>,
    last_message: Instant,
}

impl Watch {
    /// Waits for the next batch. `Ok(None)` when `stop` was set.
    pub fn next(&mut self, stop: &AtomicBool) -> Result<Option<WatchBatch>, GatewayError> {
        loop {
            let Some(msg) = self.message(stop, WATCH_SILENCE)? else {
                return Ok(None);
            };
            let result = self.result(msg)?;
            // A "created" confirmation carries no changes; skip it.
            if result.created && result.events.is_empty() {
                continue;
            }
            let mut changes = Vec::with_capacity(result.events.len());
            for ev in result.events {
                let delete = ev.is_delete();
                let kv = decode_kv(ev.kv).map_err(|reason| self.malformed(reason))?;
                changes.push(if delete {
                    Change::Delete(kv.key)
                } else {
                    Change::Put(kv)
                });
            }
            return Ok(Some(WatchBatch {
                revision: result.header.revision,
                changes,
            }));
        }
    }

    /// Reads the creation confirmation.
    fn created(&mut self, stop: &AtomicBool) -> Result<(), GatewayError> {
        let msg = self
            .message(stop, REQUEST_TIMEOUT)?
            .ok_or_else(|| self.ended("stopped"))?;
        let result = self.result(msg)?;
        if result.created {
            Ok(())
        } else {
            Err(self.malformed("the first message does not confirm the watch".into()))
        }
    }

    /// The next message, with compaction and cancellation turned into errors.
    fn result(&self, msg: WatchMessage) -> Result<WatchResult, GatewayError> {
        if let Some(err) = msg.error {
            return Err(self.ended(&err.message()));
        }
        let result = msg
            .result
            .ok_or_else(|| self.malformed("a message with neither result nor error".into()))?;
        if result.compact_revision > 0 {
            return Err(GatewayError::Compacted {
                endpoint: self.endpoint.clone(),
                compact_revision: result.compact_revision,
            });
        }
        if result.canceled {
            let why = if result.cancel_reason.is_empty() {
                "canceled by etcd"
            } else {
                &result.cancel_reason
            };
            return Err(self.ended(why));
        }
        Ok(result)
    }

    /// One newline-delimited message, or `None` when `stop` was set; an
    /// error after `silence` without a message.
    fn message(
        &mut self,
        stop: &AtomicBool,
        silence: Duration,
    ) -> Result<Option<WatchMessage>, GatewayError> {
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return Err(self.ended("the stream closed")),
                Ok(_) if self.line.last() == Some(&b'\n') => {
                    self.last_message = Instant::now();
                    let line = std::mem::take(&mut self.line);
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return serde_json::from_slice(&line)
                        .map(Some)
                        .map_err(|e| self.malformed(e.to_string()));
                }
                // End of stream in the middle of a message.
                Ok(_) => return Err(self.ended("the stream closed mid-message")),
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                    if self.last_message.elapsed() > silence {
                        return Err(self.ended("silent for too long"));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(GatewayError::Transport {
                        endpoint: self.endpoint.clone(),
                        reason: e.to_string(),
                    })
                }
            }
            if self.line.len() > MAX_MESSAGE {
                return Err(self.malformed("a watch message over 64 MiB".into()));
            }
        }
    }

    fn ended(&self, reason: &str) -> GatewayError {
        GatewayError::WatchEnded {
            endpoint: self.endpoint.clone(),
            reason: reason.to_owned(),
        }
    }

    fn malformed(&self, reason: String) -> GatewayError {
        GatewayError::Malformed {
            endpoint: self.endpoint.clone(),
            what: "watch",
            reason,
        }
    }
}

fn decode_kv(kv: RawKeyValue) -> Result<KeyValue, String> {
    let key = B64
        .decode(kv.key.as_bytes())
        .map_err(|e| format!("key is not base64: {e}"))?;
    let value = B64
        .decode(kv.value.as_bytes())
        .map_err(|e| format!("value is not base64: {e}"))?;
    Ok(KeyValue { key, value })
}

/// int64 fields arrive as JSON strings ("42"); accept numbers too.
fn int64<'de, D: Deserializer<'de>>(de: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(de)? {
        Int::Number(n) => Ok(n),
        Int::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct RawKeyValue {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKeyValue>,
    #[serde(default)]
    more: bool,
}

#[derive(Debug, Deserialize)]
struct Event {
    /// "PUT" is the enum's zero value, so grpc-gateway leaves it out; a
    /// deletion says "DELETE" (or 1 from a gateway that writes numbers).
    #[serde(rename = "type", default)]
    kind: serde_json::Value,
    kv: RawKeyValue,
}

impl Event {
    fn is_delete(&self) -> bool {
        self.kind == "DELETE" || self.kind == 1
    }
}

#[derive(Debug, Deserialize)]
struct WatchResult {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct WatchMessage {
    result: Option<WatchResult>,
    error: Option<GatewayStatus>,
}

/// grpc-gateway's error body: `{"error": "...", "message": "...", "code": 9}`.
#[derive(Debug, Deserialize)]
struct GatewayStatus {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
}

impl GatewayStatus {
    fn message(&self) -> String {
        if self.message.is_empty() {
            self.error.clone()
        } else {
            self.message.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/frp/tokens/"), b"/frp/tokens0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn watch_messages_decode() {
        let put = r#"{"result":{"header":{"revision":"2"},"events":[{"kv":{"key":"L2ZycC90b2tlbnMvYQ==","mod_revision":"2","value":"eyJyZWdpb24iOiJ4In0="}}]}}"#;
        let m: WatchMessage = serde_json::from_str(put).unwrap();
        let r = m.result.unwrap();
        assert_eq!(r.header.revision, 2);
        assert!(!r.events[0].is_delete());
        assert_eq!(
            decode_kv(r.events.into_iter().next().unwrap().kv)
                .unwrap()
                .key,
            b"/frp/tokens/a"
        );
        let del = r#"{"result":{"header":{"revision":"3"},"events":[{"type":"DELETE","kv":{"key":"L2ZycC90b2tlbnMvYQ==","mod_revision":"3"}}]}}"#;
        let m: WatchMessage = serde_json::from_str(del).unwrap();
        assert!(m.result.unwrap().events[0].is_delete());
        let compacted =
            r#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"3"}}"#;
        let m: WatchMessage = serde_json::from_str(compacted).unwrap();
        let r = m.result.unwrap();
        assert!(r.canceled && r.compact_revision == 3);
    }
}
