//! RFC 2136 dynamic updates signed with TSIG (RFC 8945): the messages the
//! DNS manager sends, and the check of the server's signed answer. Pure:
//! bytes in, bytes out; the manager does the I/O.
//!
//! An update names the zone (its SOA), carries no prerequisites, and
//! replaces a hostname's A and AAAA sets in one message (delete both
//! sets, add the new records), or deletes them. The server applies a
//! message wholly or not at all.

use std::net::IpAddr;

use ring::hmac;

/// DNS record types and classes used here.
const TYPE_A: u16 = 1;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const TYPE_TSIG: u16 = 250;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;
/// Opcode UPDATE (5) in the header's flags.
const OPCODE_UPDATE: u16 = 5 << 11;
/// Seconds of clock difference the server may accept (RFC 8945 suggests 300).
const FUDGE: u16 = 300;

/// A TSIG algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `hmac-sha256`.
    HmacSha256,
    /// `hmac-sha512`.
    HmacSha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacSha512 => "hmac-sha512",
        }
    }

    fn ring(self) -> hmac::Algorithm {
        match self {
            Algorithm::HmacSha256 => hmac::HMAC_SHA256,
            Algorithm::HmacSha512 => hmac::HMAC_SHA512,
        }
    }
}

/// A TSIG key: its name, algorithm and secret.
#[derive(Clone)]
pub struct TsigKey {
    /// The key's name, as the server knows it.
    pub name: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TsigKey {
    /// A key from nsupdate's / knsupdate's `-y` form,
    /// `[hmac-sha256:|hmac-sha512:]name:base64secret` (surrounding space
    /// ignored), or why not.
    pub fn parse(text: &str) -> Result<TsigKey, String> {
        use base64::Engine as _;
        let parts: Vec<&str> = text.trim().split(':').collect();
        let (alg, name, secret) = match parts.as_slice() {
            [name, secret] => ("hmac-sha256", *name, *secret),
            [alg, name, secret] => (*alg, *name, *secret),
            _ => return Err("expected [algorithm:]name:base64-secret".into()),
        };
        let algorithm = match alg.to_ascii_lowercase().as_str() {
            "hmac-sha256" => Algorithm::HmacSha256,
            "hmac-sha512" => Algorithm::HmacSha512,
            other => {
                return Err(format!(
                    "algorithm {other:?} is not supported (hmac-sha256, hmac-sha512)"
                ))
            }
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || encode_name(&mut Vec::new(), &name).is_err() {
            return Err(format!("key name {name:?} is not a domain name"));
        }
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|e| format!("the secret is not base64: {e}"))?;
        if secret.len() < 16 {
            return Err("the secret is shorter than 16 bytes".into());
        }
        Ok(TsigKey {
            name,
            algorithm,
            secret,
        })
    }
}

/// What an update does to one hostname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Its A and AAAA sets become exactly these addresses, with this TTL.
    Set {
        /// The hostname.
        name: String,
        /// Its addresses (IPv4 go to A, IPv6 to AAAA).
        addresses: Vec<IpAddr>,
        /// Seconds.
        ttl: u32,
    },
    /// Its A and AAAA sets are deleted.
    Delete {
        /// The hostname.
        name: String,
    },
}

/// A signed update ready to send, and what checking the answer needs.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The message.
    pub bytes: Vec<u8>,
    /// Its id.
    pub id: u16,
    /// Its MAC (the answer's MAC covers it).
    mac: Vec<u8>,
}

/// A name in wire form, uncompressed and lowercase.
fn encode_name(out: &mut Vec<u8>, name: &str) -> Result<(), String> {
    let name = name.trim_end_matches('.');
    let start = out.len();
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!("{name:?} has an empty or over-long label"));
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    if out.len() - start > 255 {
        return Err(format!("{name:?} is longer than 255 bytes on the wire"));
    }
    Ok(())
}

fn rr_head(out: &mut Vec<u8>, name: &str, rtype: u16, class: u16, ttl: u32) -> Result<(), String> {
    encode_name(out, name)?;
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    Ok(())
}

/// The TSIG variables' first part (RFC 8945 §4.3.3): key name, class,
/// TTL, algorithm; time signed, fudge, error and other data follow.
fn tsig_key_variables(out: &mut Vec<u8>, key: &TsigKey) {
    let _ = encode_name(out, &key.name);
    out.extend_from_slice(&CLASS_ANY.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    let _ = encode_name(out, key.algorithm.name());
}

/// The TSIG variables of a message this side signs, after the message.
fn tsig_variables(out: &mut Vec<u8>, key: &TsigKey, time: u64, error: u16, other: &[u8]) {
    tsig_key_variables(out, key);
    out.extend_from_slice(&time.to_be_bytes()[2..]);
    out.extend_from_slice(&FUDGE.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(other.len() as u16).to_be_bytes());
    out.extend_from_slice(other);
}

/// Build the update of `zone` with `changes`, signed with `key` at unix
/// time `time` (seconds), with message id `id`.
pub fn build(
    zone: &str,
    changes: &[Change],
    key: Option<&TsigKey>,
    id: u16,
    time: u64,
) -> Result<Signed, String> {
    let mut m = Vec::with_capacity(512);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&OPCODE_UPDATE.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // ZOCOUNT
    m.extend_from_slice(&0u16.to_be_bytes()); // PRCOUNT
    let up_count = m.len();
    m.extend_from_slice(&0u16.to_be_bytes()); // UPCOUNT, set below
    m.extend_from_slice(&0u16.to_be_bytes()); // ADCOUNT
    encode_name(&mut m, zone)?;
    m.extend_from_slice(&TYPE_SOA.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    let mut updates: u16 = 0;
    for c in changes {
        let name = match c {
            Change::Set { name, .. } | Change::Delete { name } => name,
        };
        // Delete the A and AAAA sets (class ANY, TTL 0, no data).
        for t in [TYPE_A, TYPE_AAAA] {
            rr_head(&mut m, name, t, CLASS_ANY, 0)?;
            m.extend_from_slice(&0u16.to_be_bytes());
            updates += 1;
        }
        if let Change::Set { addresses, ttl, .. } = c {
            for a in addresses {
                match a {
                    IpAddr::V4(v4) => {
                        rr_head(&mut m, name, TYPE_A, CLASS_IN, *ttl)?;
                        m.extend_from_slice(&4u16.to_be_bytes());
                        m.extend_from_slice(&v4.octets());
                    }
                    IpAddr::V6(v6) => {
                        rr_head(&mut m, name, TYPE_AAAA, CLASS_IN, *ttl)?;
                        m.extend_from_slice(&16u16.to_be_bytes());
                        m.extend_from_slice(&v6.octets());
                    }
                }
                updates += 1;
            }
        }
    }
    m[up_count..up_count + 2].copy_from_slice(&updates.to_be_bytes());
    let Some(key) = key else {
        return Ok(Signed {
            bytes: m,
            id,
            mac: Vec::new(),
        });
    };
    // MAC over the message as it is now and the TSIG variables.
    let mut signed_data = m.clone();
    tsig_variables(&mut signed_data, key, time, 0, &[]);
    let mac = hmac::sign(
        &hmac::Key::new(key.algorithm.ring(), &key.secret),
        &signed_data,
    )
    .as_ref()
    .to_vec();
    append_tsig(&mut m, key, time, &mac, id);
    m[10..12].copy_from_slice(&1u16.to_be_bytes()); // ADCOUNT: the TSIG
    Ok(Signed { bytes: m, id, mac })
}

fn append_tsig(m: &mut Vec<u8>, key: &TsigKey, time: u64, mac: &[u8], id: u16) {
    let _ = rr_head(m, &key.name, TYPE_TSIG, CLASS_ANY, 0);
    let mut rdata = Vec::with_capacity(64 + mac.len());
    let _ = encode_name(&mut rdata, key.algorithm.name());
    rdata.extend_from_slice(&time.to_be_bytes()[2..]);
    rdata.extend_from_slice(&FUDGE.to_be_bytes());
    rdata.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    rdata.extend_from_slice(mac);
    rdata.extend_from_slice(&id.to_be_bytes());
    rdata.extend_from_slice(&0u16.to_be_bytes()); // error
    rdata.extend_from_slice(&0u16.to_be_bytes()); // other len
    m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    m.extend_from_slice(&rdata);
}

/// A response code's name.
fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        16 => "BADSIG".into(),
        17 => "BADKEY".into(),
        18 => "BADTIME".into(),
        22 => "BADTRUNC".into(),
        n => format!("RCODE{n}"),
    }
}

/// Skip a (possibly compressed) name at `at`; the offset after it.
fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *b.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => {
                b.get(at + 1)?;
                return Some(at + 2);
            }
            l if l & 0xC0 == 0 => at += 1 + l as usize,
            _ => return None,
        }
    }
    None
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Check the server's answer to `sent`: the same id, a signature by the
/// same key over it (when the update was signed), and NOERROR. The error
/// says what the server said (`NOTAUTH (BADKEY)`, `REFUSED`, …).
pub fn check_answer(sent: &Signed, key: Option<&TsigKey>, answer: &[u8]) -> Result<(), String> {
    if answer.len() < 12 {
        return Err(format!(
            "a {}-byte answer is shorter than a header",
            answer.len()
        ));
    }
    let id = u16_at(answer, 0).unwrap_or(0);
    let flags = u16_at(answer, 2).unwrap_or(0);
    if id != sent.id || flags & 0x8000 == 0 {
        return Err("the answer is not a response to this update".into());
    }
    let rcode = flags & 0x000F;
    let counts: Vec<u16> = (0..4)
        .map(|i| u16_at(answer, 4 + 2 * i).unwrap_or(0))
        .collect();
    // Find the last additional record: the TSIG, if any.
    let mut at = 12;
    for _ in 0..counts[0] {
        at = skip_name(answer, at).ok_or("a truncated zone section")? + 4;
    }
    let records = usize::from(counts[1]) + usize::from(counts[2]) + usize::from(counts[3]);
    let mut tsig = None;
    for i in 0..records {
        let start = at;
        let after_name = skip_name(answer, at).ok_or("a truncated record")?;
        let rtype = u16_at(answer, after_name).ok_or("a truncated record")?;
        let rdlen = u16_at(answer, after_name + 8).ok_or("a truncated record")?;
        let rdata = after_name + 10;
        at = rdata + usize::from(rdlen);
        if at > answer.len() {
            return Err("a record runs past the answer".into());
        }
        if i + 1 == records && rtype == TYPE_TSIG {
            tsig = Some((start, rdata, at));
        }
    }
    // The TSIG's own error, where it has one.
    let tsig_fields = tsig.and_then(|(start, rdata, end)| {
        let alg_end = skip_name(answer, rdata)?;
        let time_at = alg_end;
        let mac_len = usize::from(u16_at(answer, time_at + 8)?);
        let mac_at = time_at + 10;
        let orig_id_at = mac_at + mac_len;
        let error = u16_at(answer, orig_id_at + 2)?;
        let other_len = usize::from(u16_at(answer, orig_id_at + 4)?);
        (orig_id_at + 6 + other_len == end).then_some((start, time_at, mac_at, mac_len, error))
    });
    if rcode != 0 {
        return Err(match tsig_fields {
            Some((_, _, _, _, e)) if e != 0 => {
                format!(
                    "the server answered {} ({})",
                    rcode_name(rcode),
                    rcode_name(e)
                )
            }
            _ => format!("the server answered {}", rcode_name(rcode)),
        });
    }
    let Some(key) = key else {
        return Ok(());
    };
    let Some((start, time_at, mac_at, mac_len, error)) = tsig_fields else {
        return Err("the answer is not signed: the server may not know the key".into());
    };
    if error != 0 {
        return Err(format!("the server's signature says {}", rcode_name(error)));
    }
    // RFC 8945 §4.3.3: request MAC, then the answer without its TSIG
    // (ADCOUNT one less), then the TSIG variables of the answer.
    let mut data = Vec::with_capacity(answer.len() + sent.mac.len() + 2);
    data.extend_from_slice(&(sent.mac.len() as u16).to_be_bytes());
    data.extend_from_slice(&sent.mac);
    let body_start = data.len();
    data.extend_from_slice(&answer[..start]);
    let ad = counts[3].saturating_sub(1);
    data[body_start + 10..body_start + 12].copy_from_slice(&ad.to_be_bytes());
    tsig_key_variables(&mut data, key);
    data.extend_from_slice(&answer[time_at..time_at + 8]); // time signed, fudge
    let orig_id_at = mac_at + mac_len;
    data.extend_from_slice(&answer[orig_id_at + 2..]); // error, other len, other
    hmac::verify(
        &hmac::Key::new(key.algorithm.ring(), &key.secret),
        &data,
        &answer[mac_at..mac_at + mac_len],
    )
    .map_err(|_| "the answer's signature does not verify".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TsigKey {
        TsigKey::parse("hmac-sha256:totoro-key:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
            .unwrap()
    }

    #[test]
    fn keys_are_read_in_nsupdate_form_and_refused_with_a_reason() {
        let k = key();
        assert_eq!(
            (k.name.as_str(), k.algorithm),
            ("totoro-key", Algorithm::HmacSha256)
        );
        let k = TsigKey::parse("Key.Name.:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        assert_eq!(k.name, "key.name");
        for (bad, why) in [
            ("nocolon", "expected"),
            (
                "hmac-md5:k:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                "not supported",
            ),
            ("k:!!!", "not base64"),
            ("k:AAEC", "shorter"),
        ] {
            let e = TsigKey::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn an_update_is_laid_out_as_rfc_2136_says() {
        let s = build(
            "hoge.test",
            &[Change::Set {
                name: "app.hoge.test".into(),
                addresses: vec!["192.0.2.7".parse().unwrap()],
                ttl: 60,
            }],
            None,
            0x1234,
            0,
        )
        .unwrap();
        let b = &s.bytes;
        assert_eq!(&b[..12], &[0x12, 0x34, 0x28, 0, 0, 1, 0, 0, 0, 3, 0, 0]);
        let zone = b"\x04hoge\x04test\x00\x00\x06\x00\x01";
        assert_eq!(&b[12..12 + zone.len()], zone);
        let name = b"\x03app\x04hoge\x04test\x00";
        let mut want = Vec::new();
        for t in [1u16, 28] {
            want.extend_from_slice(name);
            want.extend_from_slice(&t.to_be_bytes());
            want.extend_from_slice(&[0, 255, 0, 0, 0, 0, 0, 0]);
        }
        want.extend_from_slice(name);
        want.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 7]);
        assert_eq!(&b[12 + zone.len()..], &want[..]);
    }

    /// A server's answer, signed as RFC 8945 says, made here the way a
    /// server makes it; its MAC must verify and a changed byte must not.
    #[test]
    fn a_signed_answer_verifies_and_a_tampered_one_does_not() {
        let k = key();
        let sent = build(
            "hoge.test",
            &[Change::Delete {
                name: "app.hoge.test".into(),
            }],
            Some(&k),
            7,
            1_700_000_000,
        )
        .unwrap();
        // The request's own MAC checks out against the variables.
        assert_eq!(u16_at(&sent.bytes, 10), Some(1));
        let answer = |rcode: u8, tamper: bool| {
            let mut m = vec![0, 7, 0xA8, rcode, 0, 1, 0, 0, 0, 0, 0, 0];
            m.extend_from_slice(b"\x04hoge\x04test\x00\x00\x06\x00\x01");
            let mut data = Vec::new();
            data.extend_from_slice(&(sent.mac.len() as u16).to_be_bytes());
            data.extend_from_slice(&sent.mac);
            data.extend_from_slice(&m);
            tsig_variables(&mut data, &k, 1_700_000_001, 0, &[]);
            let mac = hmac::sign(&hmac::Key::new(k.algorithm.ring(), &k.secret), &data);
            append_tsig(&mut m, &k, 1_700_000_001, mac.as_ref(), 7);
            m[11] = 1;
            if tamper {
                m[13] ^= 0x20;
            }
            m
        };
        check_answer(&sent, Some(&k), &answer(0, false)).unwrap();
        let e = check_answer(&sent, Some(&k), &answer(0, true)).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        let e = check_answer(&sent, Some(&k), &answer(5, false)).unwrap_err();
        assert!(e.contains("REFUSED"), "{e}");
        let e = check_answer(&sent, Some(&k), &answer(0, false)[..20]).unwrap_err();
        assert!(!e.is_empty());
        for cut in 0..40 {
            let _ = check_answer(&sent, Some(&k), &answer(0, false)[..cut]);
        }
    }
}
