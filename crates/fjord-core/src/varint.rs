//! Zig-zag varints as Kafka's record format uses them (protobuf style).

use crate::CoreError;

pub fn put_varint(buf: &mut Vec<u8>, v: i32) {
    put_varlong(buf, v as i64)
}

pub fn put_varlong(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

pub fn varlong_len(v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

/// Reads a zig-zag varlong at `*pos`, advancing it. At most 10 bytes.
#[inline]
pub fn get_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, CoreError> {
    // Lengths and small deltas, most of a record's varints, are one byte.
    if let Some(&b) = buf.get(*pos) {
        if b & 0x80 == 0 {
            *pos += 1;
            return Ok(unzigzag(u64::from(b)));
        }
    }
    get_varlong_long(buf, pos)
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn get_varlong_long(buf: &[u8], pos: &mut usize) -> Result<i64, CoreError> {
    let mut z: u64 = 0;
    for i in 0..10 {
        let b = *buf
            .get(*pos)
            .ok_or(CoreError::MalformedRecord("varint runs past the end"))?;
        *pos += 1;
        z |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(unzigzag(z));
        }
    }
    Err(CoreError::MalformedRecord("varint longer than 10 bytes"))
}

#[inline]
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<i32, CoreError> {
    let v = get_varlong(buf, pos)?;
    i32::try_from(v).map_err(|_| CoreError::MalformedRecord("varint out of i32 range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let mut pos = 0;
            prop_assert_eq!(get_varlong(&buf, &mut pos).unwrap(), v);
            prop_assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn known_encodings() {
        let mut b = Vec::new();
        put_varint(&mut b, -1);
        assert_eq!(b, [1]);
        b.clear();
        put_varint(&mut b, 300);
        assert_eq!(b, [0xd8, 0x04]);
    }
}
