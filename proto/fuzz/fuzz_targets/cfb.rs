//! Round trip through the CFB stream with arbitrary key, IV, data and
//! split points: decrypting must give back the plaintext, and how a stream
//! is split must not change its ciphertext.
#![no_main]

use proto::cfb::{CfbDecryptor, CfbEncryptor, CfbStreamReader, CfbStreamWriter};

/// Cuts `len` bytes into pieces whose sizes come from `sizes`, cycled. A
/// zero size becomes an empty call followed by a one-byte piece, so empty
/// calls get exercised and the cut always makes progress.
fn pieces(len: usize, sizes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = len;
    let mut i = 0;
    while left > 0 {
        let size = match sizes.get(i % sizes.len().max(1)) {
            None => left,
            Some(0) => {
                out.push(0);
                1
            }
            Some(&s) => usize::from(s),
        };
        let n = size.min(left);
        out.push(n);
        left -= n;
        i += 1;
    }
    out
}

libfuzzer_sys::fuzz_target!(|input: &[u8]| {
    if input.len() < 34 {
        return;
    }
    let (key, rest) = input.split_at(16);
    let (iv, rest) = rest.split_at(16);
    let key: [u8; 16] = key.try_into().unwrap();
    let iv: [u8; 16] = iv.try_into().unwrap();
    // Two bytes say how much of the tail is split-size material.
    let n_sizes = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % (rest.len() - 1);
    let (sizes, plain) = rest[2..].split_at(n_sizes.min(rest.len() - 2));
    let (enc_sizes, dec_sizes) = sizes.split_at(sizes.len() / 2);

    let mut whole = plain.to_vec();
    CfbEncryptor::new(&key, &iv).encrypt(&mut whole);

    let mut split = plain.to_vec();
    let mut enc = CfbEncryptor::new(&key, &iv);
    let mut at = 0;
    for n in pieces(split.len(), enc_sizes) {
        enc.encrypt(&mut split[at..at + n]);
        at += n;
    }
    assert_eq!(split, whole);

    let mut dec = CfbDecryptor::new(&key, &iv);
    let mut at = 0;
    for n in pieces(split.len(), dec_sizes) {
        dec.decrypt(&mut split[at..at + n]);
        at += n;
    }
    assert_eq!(split, plain);

    // The IV-prefixed stream layer, with the IV split across reads too.
    let mut writer = CfbStreamWriter::with_iv(key, iv);
    let mut wire = Vec::new();
    let mut at = 0;
    for n in pieces(plain.len(), enc_sizes) {
        writer.encrypt_into(&plain[at..at + n], &mut wire);
        at += n;
    }
    let mut reader = CfbStreamReader::new(key);
    let mut got = Vec::new();
    let mut at = 0;
    for n in pieces(wire.len(), dec_sizes) {
        got.extend_from_slice(reader.decrypt_in_place(&mut wire[at..at + n]));
        at += n;
    }
    assert_eq!(got, plain);
});
