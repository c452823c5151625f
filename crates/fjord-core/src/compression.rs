//! The record section codecs of RecordBatch v2 (attributes bits 0–2):
//! batches are stored as their producer compressed them; readers that need
//! records one by one (MQTT, HTTP, compaction, SQL) inflate them here.
//!
//! Output is bounded: a small batch that inflates past
//! [`MAX_DECOMPRESSED`] is refused rather than allowed to exhaust memory.

use std::io::Read;

use bytes::Bytes;

use crate::error::CoreError;

pub const NONE: u8 = 0;
pub const GZIP: u8 = 1;
pub const SNAPPY: u8 = 2;
pub const LZ4: u8 = 3;
pub const ZSTD: u8 = 4;

/// Largest inflated record section accepted (a batch is bounded by the
/// largest message, 1 MiB by default; this leaves room for big ones).
pub const MAX_DECOMPRESSED: usize = 256 << 20;

/// The Kafka name of a codec, as in `compression.type`.
pub fn name(codec: u8) -> &'static str {
    match codec {
        NONE => "none",
        GZIP => "gzip",
        SNAPPY => "snappy",
        LZ4 => "lz4",
        ZSTD => "zstd",
        _ => "unknown",
    }
}

/// Inflates a record section compressed with `codec`.
pub fn decompress(codec: u8, data: &[u8]) -> Result<Bytes, CoreError> {
    let fail = |e: std::io::Error| CoreError::Decompress {
        codec: name(codec),
        reason: e.to_string(),
    };
    let out = match codec {
        NONE => return Ok(Bytes::copy_from_slice(data)),
        GZIP => read_bounded(flate2::read::GzDecoder::new(data), codec).map_err(fail)?,
        SNAPPY => snappy(data)?,
        LZ4 => read_bounded(lz4_flex::frame::FrameDecoder::new(data), codec).map_err(fail)?,
        ZSTD => read_bounded(
            ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| CoreError::Decompress {
                codec: "zstd",
                reason: e.to_string(),
            })?,
            codec,
        )
        .map_err(fail)?,
        other => return Err(CoreError::UnsupportedCompression(other)),
    };
    Ok(Bytes::from(out))
}

fn read_bounded(r: impl Read, codec: u8) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(MAX_DECOMPRESSED as u64 + 1).read_to_end(&mut out)?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(std::io::Error::other(format!(
            "{} section inflates past {MAX_DECOMPRESSED} bytes",
            name(codec)
        )));
    }
    Ok(out)
}

/// The Java client writes snappy in xerial's framing (a 16-byte header,
/// then length-prefixed blocks); librdkafka writes one raw block. Both are
/// read.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

fn snappy(data: &[u8]) -> Result<Vec<u8>, CoreError> {
    let fail = |reason: String| CoreError::Decompress {
        codec: "snappy",
        reason,
    };
    let block = |b: &[u8], out: &mut Vec<u8>| -> Result<(), CoreError> {
        let n = snap::raw::decompress_len(b).map_err(|e| fail(e.to_string()))?;
        if out.len() + n > MAX_DECOMPRESSED {
            return Err(fail(format!("inflates past {MAX_DECOMPRESSED} bytes")));
        }
        let at = out.len();
        out.resize(at + n, 0);
        snap::raw::Decoder::new()
            .decompress(b, &mut out[at..])
            .map_err(|e| fail(e.to_string()))?;
        Ok(())
    };
    let mut out = Vec::new();
    if !data.starts_with(XERIAL_MAGIC) {
        block(data, &mut out)?;
        return Ok(out);
    }
    let mut rest = data
        .get(16..)
        .ok_or_else(|| fail("short xerial header".into()))?;
    while !rest.is_empty() {
        let len = rest
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| fail("short xerial block length".into()))?;
        let b = rest
            .get(4..4 + len)
            .ok_or_else(|| fail("xerial block runs past the end".into()))?;
        block(b, &mut out)?;
        rest = &rest[4 + len..];
    }
    Ok(out)
}

/// Compresses a record section as producers do (gzip, snappy as one raw
/// block, lz4 frame): test input for the decoders. Fjord itself stores
/// batches as sent and never compresses.
#[cfg(test)]
pub(crate) fn compress(codec: u8, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match codec {
        NONE => data.to_vec(),
        GZIP => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            w.write_all(data).unwrap();
            w.finish().unwrap()
        }
        SNAPPY => snap::raw::Encoder::new().compress_vec(data).unwrap(),
        LZ4 => {
            let mut w = lz4_flex::frame::FrameEncoder::new(Vec::new());
            w.write_all(data).unwrap();
            w.finish().unwrap()
        }
        other => panic!("no test encoder for codec {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_trip() {
        let data: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in [NONE, GZIP, SNAPPY, LZ4] {
            let c = compress(codec, &data);
            assert_eq!(decompress(codec, &c).unwrap(), data, "{}", name(codec));
        }
    }

    #[test]
    fn xerial_snappy_is_read() {
        let data = b"hello hello hello hello".repeat(100);
        let block = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let mut framed = XERIAL_MAGIC.to_vec();
        framed.extend_from_slice(&1i32.to_be_bytes());
        framed.extend_from_slice(&1i32.to_be_bytes());
        for half in [&block[..], &block[..]] {
            framed.extend_from_slice(&(half.len() as u32).to_be_bytes());
            framed.extend_from_slice(half);
        }
        let out = decompress(SNAPPY, &framed).unwrap();
        assert_eq!(out.len(), data.len() * 2);
        assert_eq!(&out[..data.len()], &data[..]);
    }

    #[test]
    fn zstd_frames_are_read() {
        // A zstd frame holding "fjord" in one raw block (RFC 8878 §3.1.1):
        // magic, frame header (single segment, content size 5), block
        // header (last, raw, size 5), then the bytes.
        let frame = [
            0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x05, 0x29, 0x00, 0x00, b'f', b'j', b'o', b'r', b'd',
        ];
        assert_eq!(&decompress(ZSTD, &frame).unwrap()[..], b"fjord");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in [GZIP, SNAPPY, LZ4, ZSTD] {
            assert!(decompress(codec, b"\x00\x01garbage").is_err());
        }
        assert!(decompress(7, b"x").is_err());
    }

    #[test]
    fn bombs_are_refused() {
        let zeros = vec![0u8; MAX_DECOMPRESSED + 1];
        let c = compress(GZIP, &zeros);
        assert!(c.len() < MAX_DECOMPRESSED / 100);
        assert!(decompress(GZIP, &c).is_err());
    }
}
