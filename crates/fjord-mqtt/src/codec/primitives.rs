//! The MQTT data representations (MQTT 5.0 §1.5, 3.1.1 §1.5): two-byte
//! integers, four-byte integers, variable byte integers, UTF-8 strings and
//! binary data, read from a [`Reader`] over one packet's bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::DecodeError;

/// The largest value a variable byte integer holds (4 bytes).
pub const VARINT_MAX: u32 = 268_435_455;

/// Reads the fields of one packet. Every read is bounds-checked: running
/// past the end is a malformed packet, never a panic.
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Malformed(what));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn varint(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let (v, n) = read_varint(&self.buf[self.pos..])?.ok_or(DecodeError::Malformed(what))?;
        self.pos += n;
        Ok(v)
    }

    pub fn binary(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u16(what)? as usize;
        self.take(n, what)
    }

    /// A UTF-8 encoded string: valid UTF-8 and no U+0000 (MQTT-1.5.4-1/2).
    pub fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let b = self.binary(what)?;
        let s = std::str::from_utf8(&b).map_err(|_| DecodeError::InvalidUtf8(what))?;
        if s.contains('\0') {
            return Err(DecodeError::InvalidUtf8(what));
        }
        Ok(s.to_string())
    }

    /// Everything left (a PUBLISH payload), without copying.
    pub fn rest(&mut self) -> Bytes {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        b
    }
}

/// Decodes a variable byte integer at the start of `buf`: `Ok(None)` if more
/// bytes are needed, an error if it is longer than four bytes.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut value: u32 = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= ((b & 0x7f) as u32) << (7 * i);
        if b & 0x80 == 0 {
            // MQTT-1.5.5-1: the minimal number of bytes. A trailing zero
            // continuation (e.g. 0x80 0x00) is not minimal.
            if i > 0 && b == 0 {
                return Err(DecodeError::Malformed(
                    "variable byte integer is not minimally encoded",
                ));
            }
            return Ok(Some((value, i + 1)));
        }
    }
    Err(DecodeError::Malformed(
        "variable byte integer longer than 4 bytes",
    ))
}

pub fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub fn put_varint(buf: &mut BytesMut, mut v: u32) {
    debug_assert!(v <= VARINT_MAX);
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if v == 0 {
            return;
        }
    }
}

pub fn put_binary(buf: &mut BytesMut, b: &[u8]) {
    debug_assert!(b.len() <= u16::MAX as usize);
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
}

pub fn put_string(buf: &mut BytesMut, s: &str) {
    put_binary(buf, s.as_bytes());
}

pub fn binary_len(b: &[u8]) -> usize {
    2 + b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varints_round_trip(v in 0u32..=VARINT_MAX) {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            prop_assert_eq!(b.len(), varint_len(v));
            prop_assert_eq!(read_varint(&b).unwrap(), Some((v, b.len())));
        }
    }

    #[test]
    fn varint_edges() {
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0x7f]).unwrap(),
            Some((VARINT_MAX, 4))
        );
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert_eq!(read_varint(&[0x80]).unwrap(), None);
        assert!(read_varint(&[0x80, 0x00]).is_err());
    }

    #[test]
    fn strings_reject_nul_and_bad_utf8() {
        let mut r = Reader::new(Bytes::from_static(&[0, 2, b'a', 0]));
        assert!(matches!(r.string("s"), Err(DecodeError::InvalidUtf8(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xc3, 0x28]));
        assert!(matches!(r.string("s"), Err(DecodeError::InvalidUtf8(_))));
        let mut r = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert!(matches!(r.string("s"), Err(DecodeError::Malformed(_))));
    }
}
