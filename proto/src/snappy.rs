//! The snappy framing format, as frp's `useCompression` puts it on the wire.
//!
//! frp (golib `io.WithCompression`) wraps a connection in golang/snappy's
//! *unbuffered* `Writer` and its `Reader`. The stream is a sequence of
//! chunks, each `type u8 ‖ length u24 LE ‖ body`:
//!
//! | type        | body                                                      |
//! |-------------|-----------------------------------------------------------|
//! | `0xFF`      | stream identifier, always `sNaPpY`; must come first        |
//! | `0x00`      | masked CRC-32C (LE u32) of the data ‖ snappy block         |
//! | `0x01`      | masked CRC-32C (LE u32) of the data ‖ the data itself      |
//! | `0x02–0x7F` | reserved, unskippable: the reader fails                    |
//! | `0x80–0xFE` | skippable (`0xFE` is padding): the reader ignores the body |
//!
//! Every chunk carries at most 64 KiB of uncompressed data. The Go writer
//! emits each `Write` at once as one or more chunks (nothing is held back
//! across writes), starts the stream with the identifier on its first
//! non-empty write, and keeps a compressed chunk only when it saves at least
//! an eighth of the input. [`SnappyEncoder`] does the same.
//!
//! The block codec is `snap::raw`; only the framing is implemented here.

use snap::raw::{max_compress_len, Decoder, Encoder};

/// The stream identifier chunk that opens every stream.
pub const STREAM_IDENTIFIER: [u8; 10] = *b"\xff\x06\x00\x00sNaPpY";

/// Most uncompressed bytes one data chunk may carry.
pub const MAX_CHUNK_DATA_LEN: usize = 65536;

/// Longest chunk body (after the 4-byte header) the decoder accepts:
/// golang/snappy's limit, the worst-case compressed size of a full chunk
/// plus its checksum. Anything longer is rejected from its header alone.
pub const MAX_CHUNK_BODY_LEN: usize = 32 + MAX_CHUNK_DATA_LEN + MAX_CHUNK_DATA_LEN / 6 + CRC_LEN;

/// Longest complete chunk, header included: how many undecoded bytes a
/// driver must be able to hold for [`SnappyDecoder::decode`] to progress.
pub const MAX_CHUNK_LEN: usize = HEADER_LEN + MAX_CHUNK_BODY_LEN;

const HEADER_LEN: usize = 4;
const CRC_LEN: usize = 4;

const CHUNK_COMPRESSED: u8 = 0x00;
const CHUNK_UNCOMPRESSED: u8 = 0x01;
const CHUNK_STREAM_IDENTIFIER: u8 = 0xff;
const MAGIC_BODY: &[u8; 6] = b"sNaPpY";

/// Why a snappy stream was rejected. The stream cannot continue after any
/// of these: the decoder keeps returning the same error.
#[derive(thiserror::Error, Debug, Clone)]
pub enum SnappyError {
    /// The first chunk was not the stream identifier.
    #[error("snappy stream does not start with the stream identifier (first chunk type {0:#04x})")]
    MissingStreamIdentifier(u8),
    /// A stream identifier chunk had the wrong length or body.
    #[error("snappy stream identifier chunk is malformed")]
    BadStreamIdentifier,
    /// A chunk type reserved as unskippable (0x02–0x7F).
    #[error("snappy chunk type {0:#04x} is reserved and cannot be skipped")]
    ReservedChunk(u8),
    /// A chunk header announced a body longer than any valid chunk.
    #[error(
        "snappy chunk type {chunk_type:#04x} announces {len} bytes, over the {max}-byte limit"
    )]
    ChunkTooLong {
        /// The chunk's type byte.
        chunk_type: u8,
        /// The body length from the header.
        len: usize,
        /// The largest body accepted for this chunk type.
        max: usize,
    },
    /// A data chunk too short to hold its checksum.
    #[error("snappy data chunk of {0} bytes is shorter than its 4-byte checksum")]
    ChunkTooShort(usize),
    /// A compressed chunk claims to expand past the per-chunk limit.
    #[error("snappy chunk decompresses to {0} bytes, over the 65536-byte limit")]
    DecodedTooLong(usize),
    /// A compressed chunk's block did not decode.
    #[error("snappy compressed chunk is corrupt: {0}")]
    Corrupt(#[source] snap::Error),
    /// A data chunk's contents did not match its checksum.
    #[error(
        "snappy chunk checksum mismatch: header says {expected:#010x}, data gives {actual:#010x}"
    )]
    ChecksumMismatch {
        /// The masked CRC-32C from the chunk.
        expected: u32,
        /// The masked CRC-32C of the decoded data.
        actual: u32,
    },
}

/// The framing format's checksum: CRC-32C, rotated and offset so that a CRC
/// of data that itself contains CRCs does not degenerate.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Writes the snappy framing format the way golang/snappy's unbuffered
/// `Writer` does.
#[derive(Debug)]
pub struct SnappyEncoder {
    block: Encoder,
    wrote_identifier: bool,
}

impl Default for SnappyEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SnappyEncoder {
    /// An encoder for a new stream (the identifier is still to be written).
    pub fn new() -> Self {
        Self {
            block: Encoder::new(),
            wrote_identifier: false,
        }
    }

    /// Appends to `out` the stream identifier (on the first non-empty call)
    /// and the chunks carrying all of `input`.
    ///
    /// Compresses straight into `out`, so nothing is allocated beyond what
    /// `out` itself needs to grow.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            // Go's writer loops over the input and so emits nothing, not
            // even the identifier, for an empty write.
            return;
        }
        if !self.wrote_identifier {
            self.wrote_identifier = true;
            out.extend_from_slice(&STREAM_IDENTIFIER);
        }
        for data in input.chunks(MAX_CHUNK_DATA_LEN) {
            self.encode_chunk(data, out);
        }
    }

    fn encode_chunk(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let header_at = out.len();
        let body_at = header_at + HEADER_LEN + CRC_LEN;
        out.resize(body_at + max_compress_len(data.len()), 0);
        // Keep the compressed form only if it saves at least 1/8 of the
        // input, golang/snappy's rule. A compressor error (impossible for a
        // chunk this small) falls back to storing the data as is.
        let compressed = match self.block.compress(data, &mut out[body_at..]) {
            Ok(n) if n < data.len() - data.len() / 8 => Some(n),
            _ => None,
        };
        let chunk_type = match compressed {
            Some(n) => {
                out.truncate(body_at + n);
                CHUNK_COMPRESSED
            }
            None => {
                out.truncate(body_at);
                out.extend_from_slice(data);
                CHUNK_UNCOMPRESSED
            }
        };
        // Body length ≤ MAX_CHUNK_BODY_LEN < 2^24, so three bytes hold it.
        let body_len = (out.len() - header_at - HEADER_LEN) as u32;
        let len = body_len.to_le_bytes();
        let crc = masked_crc(data).to_le_bytes();
        out[header_at..body_at].copy_from_slice(&[
            chunk_type, len[0], len[1], len[2], crc[0], crc[1], crc[2], crc[3],
        ]);
    }
}

/// Reads the snappy framing format, sans-IO: feed it the bytes received so
/// far and it decodes every complete chunk at their front.
#[derive(Debug, Default)]
pub struct SnappyDecoder {
    block: Decoder,
    seen_identifier: bool,
    /// Body bytes of a skippable chunk still to be discarded. Skippable
    /// chunks are dropped as they arrive rather than buffered whole.
    skip: usize,
    /// Set once the stream is rejected; every later call returns it.
    failed: Option<SnappyError>,
}

impl SnappyDecoder {
    /// A decoder for a new stream, expecting the stream identifier first.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes the complete chunks at the front of `input`, appending their
    /// data to `out`, and returns how many bytes of `input` were consumed.
    ///
    /// The unconsumed rest is an incomplete chunk: keep it and call again
    /// with it followed by more bytes. A chunk is at most [`MAX_CHUNK_LEN`]
    /// bytes, so a buffer that size always suffices. On error `out` keeps
    /// the data of the chunks decoded before the bad one, and the stream is
    /// dead.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, SnappyError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.decode_chunks(input, out) {
            Ok(consumed) => Ok(consumed),
            Err(err) => {
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    fn decode_chunks(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, SnappyError> {
        let mut pos = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(input.len() - pos);
                pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(pos);
                }
            }

            let rest = &input[pos..];
            let Some(header) = rest.first_chunk::<HEADER_LEN>() else {
                return Ok(pos);
            };
            let chunk_type = header[0];
            let len = u32::from_le_bytes([header[1], header[2], header[3], 0]) as usize;
            self.check_header(chunk_type, len)?;

            if chunk_type >= 0x80 && chunk_type != CHUNK_STREAM_IDENTIFIER {
                // Skippable or padding: drop the body, however it arrives.
                pos += HEADER_LEN;
                self.skip = len;
                continue;
            }

            let Some(body) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
                return Ok(pos);
            };
            match chunk_type {
                CHUNK_STREAM_IDENTIFIER => {
                    if body != MAGIC_BODY {
                        return Err(SnappyError::BadStreamIdentifier);
                    }
                    self.seen_identifier = true;
                }
                CHUNK_COMPRESSED => self.decode_compressed(body, out)?,
                // check_header lets through only data chunks, identifiers
                // and skippables, so this is the uncompressed chunk.
                _ => {
                    let (expected, data) = split_crc(body);
                    check_crc(expected, data)?;
                    out.extend_from_slice(data);
                }
            }
            pos += HEADER_LEN + len;
        }
    }

    /// Rejects a chunk from its header alone, before its body arrives, so a
    /// hostile length is never buffered for.
    fn check_header(&self, chunk_type: u8, len: usize) -> Result<(), SnappyError> {
        if !self.seen_identifier && chunk_type != CHUNK_STREAM_IDENTIFIER {
            return Err(SnappyError::MissingStreamIdentifier(chunk_type));
        }
        let max = match chunk_type {
            CHUNK_STREAM_IDENTIFIER => {
                if len != MAGIC_BODY.len() {
                    return Err(SnappyError::BadStreamIdentifier);
                }
                return Ok(());
            }
            CHUNK_COMPRESSED => MAX_CHUNK_BODY_LEN,
            CHUNK_UNCOMPRESSED => CRC_LEN + MAX_CHUNK_DATA_LEN,
            0x02..=0x7f => return Err(SnappyError::ReservedChunk(chunk_type)),
            _ => MAX_CHUNK_BODY_LEN,
        };
        if len > max {
            return Err(SnappyError::ChunkTooLong {
                chunk_type,
                len,
                max,
            });
        }
        if chunk_type <= CHUNK_UNCOMPRESSED && len < CRC_LEN {
            return Err(SnappyError::ChunkTooShort(len));
        }
        Ok(())
    }

    /// Decompresses a type 0x00 body straight onto the end of `out`.
    fn decode_compressed(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), SnappyError> {
        let (expected, block) = split_crc(body);
        let n = snap::raw::decompress_len(block).map_err(SnappyError::Corrupt)?;
        if n > MAX_CHUNK_DATA_LEN {
            return Err(SnappyError::DecodedTooLong(n));
        }
        let start = out.len();
        out.resize(start + n, 0);
        let result = match self.block.decompress(block, &mut out[start..]) {
            Ok(_) => check_crc(expected, &out[start..]),
            Err(err) => Err(SnappyError::Corrupt(err)),
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

/// Splits a data chunk body into its checksum and the rest. The caller has
/// checked the body is at least `CRC_LEN` long.
fn split_crc(body: &[u8]) -> (u32, &[u8]) {
    let (crc, rest) = body.split_at(CRC_LEN.min(body.len()));
    let mut le = [0u8; CRC_LEN];
    le[..crc.len()].copy_from_slice(crc);
    (u32::from_le_bytes(le), rest)
}

fn check_crc(expected: u32, data: &[u8]) -> Result<(), SnappyError> {
    let actual = masked_crc(data);
    if actual == expected {
        Ok(())
    } else {
        Err(SnappyError::ChecksumMismatch { expected, actual })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::io::{Read, Write};

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(0x5a4e_5059)
    }

    /// Text-like data that compresses well.
    fn compressible(rng: &mut impl Rng, len: usize) -> Vec<u8> {
        const WORDS: [&[u8]; 6] = [b"frp ", b"proxy ", b"tcp ", b"work_conn ", b"{}", b"\n"];
        let mut v = Vec::with_capacity(len + 16);
        while v.len() < len {
            v.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())]);
        }
        v.truncate(len);
        v
    }

    fn random_bytes(rng: &mut impl Rng, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rng.fill_bytes(&mut v);
        v
    }

    /// Decodes `wire` delivered in random pieces, keeping unconsumed bytes
    /// as a driver would.
    fn decode_in_pieces(rng: &mut impl Rng, wire: &[u8]) -> Result<Vec<u8>, SnappyError> {
        let mut dec = SnappyDecoder::new();
        let mut pending = Vec::new();
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let n = rng.gen_range(1..=(wire.len() - at).min(20_000));
            pending.extend_from_slice(&wire[at..at + n]);
            at += n;
            let used = dec.decode(&pending, &mut out)?;
            pending.drain(..used);
        }
        assert!(pending.is_empty(), "{} bytes left undecoded", pending.len());
        Ok(out)
    }

    fn chunk(chunk_type: u8, body: &[u8]) -> Vec<u8> {
        let len = (body.len() as u32).to_le_bytes();
        let mut v = vec![chunk_type, len[0], len[1], len[2]];
        v.extend_from_slice(body);
        v
    }

    fn data_chunk(chunk_type: u8, crc_of: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut body = masked_crc(crc_of).to_le_bytes().to_vec();
        body.extend_from_slice(payload);
        chunk(chunk_type, &body)
    }

    fn decode_all(wire: &[u8]) -> Result<(usize, Vec<u8>), SnappyError> {
        let mut out = Vec::new();
        let used = SnappyDecoder::new().decode(wire, &mut out)?;
        Ok((used, out))
    }

    #[test]
    fn masked_crc_vectors() {
        // Computed independently (bitwise CRC-32C, then the mask).
        assert_eq!(masked_crc(b""), 0xa282_ead8);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc(b"hello"), 0x191c_1fbb);
    }

    #[test]
    fn small_write_is_identifier_plus_uncompressed_chunk() {
        let mut enc = SnappyEncoder::new();
        let mut out = Vec::new();
        enc.encode(b"", &mut out);
        assert!(out.is_empty(), "an empty write emits nothing");
        enc.encode(b"hello", &mut out);
        let mut expected = b"\xff\x06\x00\x00sNaPpY".to_vec();
        expected.extend_from_slice(&[0x01, 0x09, 0x00, 0x00, 0xbb, 0x1f, 0x1c, 0x19]);
        expected.extend_from_slice(b"hello");
        assert_eq!(out, expected);

        // The identifier is written once per stream.
        out.clear();
        enc.encode(b"hello", &mut out);
        assert_eq!(out, expected[STREAM_IDENTIFIER.len()..]);
    }

    #[test]
    fn compressible_input_uses_compressed_chunks_and_splits_at_64k() {
        let mut rng = rng();
        let input = compressible(&mut rng, 3 * MAX_CHUNK_DATA_LEN + 5);
        let mut out = Vec::new();
        SnappyEncoder::new().encode(&input, &mut out);
        let mut types = Vec::new();
        let mut at = STREAM_IDENTIFIER.len();
        while at < out.len() {
            let len = u32::from_le_bytes([out[at + 1], out[at + 2], out[at + 3], 0]) as usize;
            types.push(out[at]);
            at += HEADER_LEN + len;
        }
        assert_eq!(at, out.len());
        // 3 full chunks + 5 bytes; 5 bytes cannot shrink so go uncompressed.
        assert_eq!(types, vec![0x00, 0x00, 0x00, 0x01]);
        assert!(out.len() < input.len() / 2);
        assert_eq!(decode_all(&out).unwrap(), (out.len(), input));
    }

    #[test]
    fn incompressible_input_uses_uncompressed_chunks() {
        let mut rng = rng();
        let input = random_bytes(&mut rng, 100_000);
        let mut out = Vec::new();
        SnappyEncoder::new().encode(&input, &mut out);
        let first = STREAM_IDENTIFIER.len();
        assert_eq!(out[first], CHUNK_UNCOMPRESSED);
        assert_eq!(out.len(), first + 2 * (HEADER_LEN + CRC_LEN) + input.len());
    }

    /// snap's FrameEncoder makes the same chunking and compression choice
    /// as golang/snappy, so one write plus a flush must match byte for byte.
    #[test]
    fn encoder_matches_snap_frame_encoder_per_write() {
        let mut rng = rng();
        for len in [
            1,
            17,
            100,
            4096,
            MAX_CHUNK_DATA_LEN,
            MAX_CHUNK_DATA_LEN + 1,
            200_000,
        ] {
            for input in [compressible(&mut rng, len), random_bytes(&mut rng, len)] {
                let mut ours = Vec::new();
                SnappyEncoder::new().encode(&input, &mut ours);
                let mut theirs = snap::write::FrameEncoder::new(Vec::new());
                theirs.write_all(&input).unwrap();
                let theirs = theirs.into_inner().unwrap();
                assert_eq!(ours, theirs, "len {len}");
            }
        }
    }

    #[test]
    fn snap_frame_decoder_reads_our_stream() {
        let mut rng = rng();
        let mut enc = SnappyEncoder::new();
        let mut wire = Vec::new();
        let mut plain = Vec::new();
        for _ in 0..50 {
            let len = rng.gen_range(0..150_000);
            let piece = if rng.gen() {
                compressible(&mut rng, len)
            } else {
                random_bytes(&mut rng, len)
            };
            enc.encode(&piece, &mut wire);
            plain.extend_from_slice(&piece);
        }
        let mut decoded = Vec::new();
        snap::read::FrameDecoder::new(&wire[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, plain);
    }

    #[test]
    fn we_read_snap_frame_encoder_stream_in_pieces() {
        let mut rng = rng();
        let mut plain = compressible(&mut rng, 300_000);
        plain.extend(random_bytes(&mut rng, 100_000));
        let mut theirs = snap::write::FrameEncoder::new(Vec::new());
        for piece in plain.chunks(7777) {
            theirs.write_all(piece).unwrap();
            theirs.flush().unwrap();
        }
        let wire = theirs.into_inner().unwrap();
        assert_eq!(decode_in_pieces(&mut rng, &wire).unwrap(), plain);
    }

    #[test]
    fn round_trip_many_writes_random_splits() {
        let mut rng = rng();
        for _ in 0..20 {
            let mut enc = SnappyEncoder::new();
            let mut wire = Vec::new();
            let mut plain = Vec::new();
            for _ in 0..rng.gen_range(1..30) {
                let len = rng.gen_range(0..20_000);
                let piece = if rng.gen_bool(0.7) {
                    compressible(&mut rng, len)
                } else {
                    random_bytes(&mut rng, len)
                };
                enc.encode(&piece, &mut wire);
                plain.extend_from_slice(&piece);
            }
            assert_eq!(decode_in_pieces(&mut rng, &wire).unwrap(), plain);
        }
    }

    #[test]
    fn each_encode_is_decodable_at_once() {
        // Go's unbuffered writer: nothing is held back between writes.
        let mut enc = SnappyEncoder::new();
        let mut dec = SnappyDecoder::new();
        for msg in [
            &b"ping"[..],
            b"a longer message, a longer message, a longer message",
        ] {
            let mut wire = Vec::new();
            enc.encode(msg, &mut wire);
            let mut out = Vec::new();
            assert_eq!(dec.decode(&wire, &mut out).unwrap(), wire.len());
            assert_eq!(out, msg);
        }
    }

    #[test]
    fn partial_chunks_are_left_unconsumed() {
        let mut wire = Vec::new();
        SnappyEncoder::new().encode(b"hello world", &mut wire);
        let mut dec = SnappyDecoder::new();
        let mut out = Vec::new();
        assert_eq!(dec.decode(&wire[..3], &mut out).unwrap(), 0);
        let ident = STREAM_IDENTIFIER.len();
        assert_eq!(dec.decode(&wire[..ident + 6], &mut out).unwrap(), ident);
        assert!(out.is_empty());
        assert_eq!(
            dec.decode(&wire[ident..wire.len() - 1], &mut out).unwrap(),
            0
        );
        assert_eq!(
            dec.decode(&wire[ident..], &mut out).unwrap(),
            wire.len() - ident
        );
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn skippable_and_padding_chunks_are_ignored_even_in_pieces() {
        let mut rng = rng();
        let mut wire = STREAM_IDENTIFIER.to_vec();
        wire.extend(chunk(0xfe, &[0; 100])); // padding
        wire.extend(data_chunk(0x01, b"abc", b"abc"));
        wire.extend(chunk(0x80, &random_bytes(&mut rng, 50_000)));
        wire.extend(chunk(0xfd, b""));
        wire.extend(STREAM_IDENTIFIER); // a repeated identifier is allowed
        wire.extend(data_chunk(0x01, b"def", b"def"));
        assert_eq!(decode_all(&wire).unwrap(), (wire.len(), b"abcdef".to_vec()));
        for _ in 0..20 {
            assert_eq!(decode_in_pieces(&mut rng, &wire).unwrap(), b"abcdef");
        }
    }

    #[test]
    fn empty_data_chunks_are_valid() {
        let mut wire = STREAM_IDENTIFIER.to_vec();
        wire.extend(data_chunk(0x01, b"", b""));
        wire.extend(data_chunk(0x00, b"", &[0x00])); // block: varint 0
        assert_eq!(decode_all(&wire).unwrap(), (wire.len(), Vec::new()));
    }

    #[test]
    fn rejects_stream_without_identifier() {
        let wire = data_chunk(0x01, b"abc", b"abc");
        assert!(matches!(
            decode_all(&wire),
            Err(SnappyError::MissingStreamIdentifier(0x01))
        ));
        // Even a skippable chunk may not come first.
        assert!(matches!(
            decode_all(&chunk(0xfe, b"")),
            Err(SnappyError::MissingStreamIdentifier(0xfe))
        ));
    }

    #[test]
    fn rejects_bad_identifier() {
        assert!(matches!(
            decode_all(&chunk(0xff, b"sNaPpX")),
            Err(SnappyError::BadStreamIdentifier)
        ));
        // Wrong length is caught from the header alone.
        assert!(matches!(
            decode_all(&[0xff, 0x07, 0x00, 0x00]),
            Err(SnappyError::BadStreamIdentifier)
        ));
    }

    #[test]
    fn rejects_reserved_unskippable_chunks() {
        for ty in [0x02, 0x40, 0x7f] {
            let mut wire = STREAM_IDENTIFIER.to_vec();
            wire.extend(chunk(ty, b"x"));
            assert!(matches!(
                decode_all(&wire),
                Err(SnappyError::ReservedChunk(t)) if t == ty
            ));
        }
    }

    #[test]
    fn rejects_oversize_chunks_from_header_alone() {
        for (ty, len) in [
            (0x00, MAX_CHUNK_BODY_LEN + 1),
            (0x01, CRC_LEN + MAX_CHUNK_DATA_LEN + 1),
            (0x80, MAX_CHUNK_BODY_LEN + 1),
            (0xfe, 0xff_ffff),
        ] {
            let mut wire = STREAM_IDENTIFIER.to_vec();
            let l = (len as u32).to_le_bytes();
            wire.extend([ty, l[0], l[1], l[2]]);
            assert!(
                matches!(
                    decode_all(&wire),
                    Err(SnappyError::ChunkTooLong { chunk_type, len: got, .. })
                        if chunk_type == ty && got == len
                ),
                "type {ty:#x}"
            );
        }
        // The largest legal uncompressed chunk is accepted.
        let data = vec![7u8; MAX_CHUNK_DATA_LEN];
        let mut wire = STREAM_IDENTIFIER.to_vec();
        wire.extend(data_chunk(0x01, &data, &data));
        assert_eq!(decode_all(&wire).unwrap().1.len(), MAX_CHUNK_DATA_LEN);
    }

    #[test]
    fn rejects_data_chunk_shorter_than_checksum() {
        for ty in [0x00, 0x01] {
            let mut wire = STREAM_IDENTIFIER.to_vec();
            wire.extend(chunk(ty, b"abc"));
            assert!(matches!(
                decode_all(&wire),
                Err(SnappyError::ChunkTooShort(3))
            ));
        }
    }

    #[test]
    fn rejects_bad_checksums() {
        let mut wire = STREAM_IDENTIFIER.to_vec();
        wire.extend(data_chunk(0x01, b"abc", b"abd"));
        assert!(matches!(
            decode_all(&wire),
            Err(SnappyError::ChecksumMismatch { .. })
        ));

        let mut enc = Vec::new();
        SnappyEncoder::new().encode(&[b'a'; 1000], &mut enc);
        assert_eq!(enc[STREAM_IDENTIFIER.len()], CHUNK_COMPRESSED);
        enc[STREAM_IDENTIFIER.len() + HEADER_LEN] ^= 1; // the CRC's low byte
        assert!(matches!(
            decode_all(&enc),
            Err(SnappyError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn rejects_corrupt_compressed_blocks() {
        let mut wire = STREAM_IDENTIFIER.to_vec();
        // Block claims 10 bytes, then a copy with offset 0 and nothing before.
        wire.extend(data_chunk(0x00, b"", &[0x0a, 0x01, 0x00]));
        assert!(matches!(decode_all(&wire), Err(SnappyError::Corrupt(_))));
        // An empty block lacks even the length varint.
        let mut wire = STREAM_IDENTIFIER.to_vec();
        wire.extend(data_chunk(0x00, b"", &[]));
        assert!(matches!(decode_all(&wire), Err(SnappyError::Corrupt(_))));
    }

    #[test]
    fn rejects_compressed_chunk_expanding_past_limit() {
        // A valid block of 65537 zero bytes: varint length then literals
        // and copies. Build it with snap and frame it by hand.
        let data = vec![0u8; MAX_CHUNK_DATA_LEN + 1];
        let block = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let mut wire = STREAM_IDENTIFIER.to_vec();
        wire.extend(data_chunk(0x00, &data, &block));
        let mut out = Vec::new();
        assert!(matches!(
            SnappyDecoder::new().decode(&wire, &mut out),
            Err(SnappyError::DecodedTooLong(65537))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn errors_are_sticky_and_keep_earlier_data() {
        let mut wire = STREAM_IDENTIFIER.to_vec();
        wire.extend(data_chunk(0x01, b"good", b"good"));
        wire.extend(chunk(0x02, b""));
        let mut dec = SnappyDecoder::new();
        let mut out = Vec::new();
        assert!(dec.decode(&wire, &mut out).is_err());
        assert_eq!(out, b"good");
        let mut fresh = STREAM_IDENTIFIER.to_vec();
        fresh.extend(data_chunk(0x01, b"x", b"x"));
        assert!(matches!(
            dec.decode(&fresh, &mut out),
            Err(SnappyError::ReservedChunk(0x02))
        ));
    }

    #[test]
    fn error_messages_read_well() {
        let err = SnappyError::ChunkTooLong {
            chunk_type: 0,
            len: 100_000,
            max: MAX_CHUNK_BODY_LEN,
        };
        assert_eq!(
            err.to_string(),
            "snappy chunk type 0x00 announces 100000 bytes, over the 76494-byte limit"
        );
    }
}
