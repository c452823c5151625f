//! The few MQTT 3.1.1 frames a load generator needs, written by hand from
//! the OASIS specification so the bench client shares no code with the
//! broker it measures. 3.1.1 is the one version all three brokers speak
//! (nats-server's MQTT listener has no 5.0).

/// Bytes that identify a bench message: publisher id and sequence number,
/// then the send time (nanoseconds since the run's epoch) for latency runs.
pub const STAMP_LEN: usize = 4 + 8 + 8;

pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const CONNACK: u8 = 2;
pub const SUBACK: u8 = 9;

fn put_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT, clean session, protocol level 4.
pub fn connect(client_id: &str, keep_alive_s: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    put_str(&mut body, "MQTT");
    body.push(4);
    body.push(0x02);
    body.extend_from_slice(&keep_alive_s.to_be_bytes());
    put_str(&mut body, client_id);
    frame(0x10, &body)
}

pub fn subscribe(packet_id: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + filter.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    put_str(&mut body, filter);
    body.push(qos);
    frame(0x82, &body)
}

pub fn puback(packet_id: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&[0x40, 2]);
    out.extend_from_slice(&packet_id.to_be_bytes());
}

pub fn disconnect() -> Vec<u8> {
    vec![0xE0, 0]
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A PUBLISH whose payload starts with a stamp; the stamp's place in the
/// frame is remembered so a publisher rewrites only those bytes per message.
#[derive(Clone)]
pub struct PublishTemplate {
    pub bytes: Vec<u8>,
    stamp_at: usize,
    packet_id_at: Option<usize>,
}

impl PublishTemplate {
    pub fn new(topic: &str, qos: u8, payload_len: usize) -> PublishTemplate {
        let payload_len = payload_len.max(STAMP_LEN);
        let mut body = Vec::with_capacity(topic.len() + 4 + payload_len);
        put_str(&mut body, topic);
        let packet_id_at = (qos > 0).then(|| {
            let at = body.len();
            body.extend_from_slice(&[0, 1]);
            at
        });
        let stamp_body_at = body.len();
        body.resize(body.len() + payload_len, b'x');
        let bytes = frame(0x30 | (qos << 1), &body);
        let header = bytes.len() - body.len();
        PublishTemplate {
            stamp_at: header + stamp_body_at,
            packet_id_at: packet_id_at.map(|p| header + p),
            bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends one message to `out`.
    pub fn write(&self, out: &mut Vec<u8>, publisher: u32, seq: u64, sent_ns: u64, pid: u16) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let s = start + self.stamp_at;
        out[s..s + 4].copy_from_slice(&publisher.to_be_bytes());
        out[s + 4..s + 12].copy_from_slice(&seq.to_be_bytes());
        out[s + 12..s + 20].copy_from_slice(&sent_ns.to_be_bytes());
        if let Some(p) = self.packet_id_at {
            out[start + p..start + p + 2].copy_from_slice(&pid.to_be_bytes());
        }
    }
}

/// One frame read off the wire, borrowed from the receive buffer.
pub struct Frame<'a> {
    pub kind: u8,
    pub flags: u8,
    pub body: &'a [u8],
}

/// Splits the next whole frame off `buf`: `Ok(None)` until it has arrived.
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, &'static str> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut mult = 1usize;
    let mut i = 1;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        len += (b & 0x7f) as usize * mult;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        mult *= 128;
        if i > 4 {
            return Err("remaining length longer than 4 bytes");
        }
    }
    let end = i + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            kind: buf[0] >> 4,
            flags: buf[0] & 0x0f,
            body: &buf[i..end],
        },
        end,
    )))
}

/// What a bench subscriber reads out of a PUBLISH.
pub struct Received {
    pub packet_id: Option<u16>,
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

pub fn parse_publish(f: &Frame<'_>) -> Result<Received, &'static str> {
    let b = f.body;
    if b.len() < 2 {
        return Err("short PUBLISH");
    }
    let tlen = u16::from_be_bytes([b[0], b[1]]) as usize;
    let mut at = 2 + tlen;
    let qos = (f.flags >> 1) & 3;
    let packet_id = if qos > 0 {
        let p = b.get(at..at + 2).ok_or("short PUBLISH")?;
        at += 2;
        Some(u16::from_be_bytes([p[0], p[1]]))
    } else {
        None
    };
    let s = b
        .get(at..at + STAMP_LEN)
        .ok_or("payload without a bench stamp")?;
    let mut publisher = [0u8; 4];
    publisher.copy_from_slice(&s[..4]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&s[4..12]);
    let mut sent = [0u8; 8];
    sent.copy_from_slice(&s[12..20]);
    Ok(Received {
        packet_id,
        publisher: u32::from_be_bytes(publisher),
        seq: u64::from_be_bytes(seq),
        sent_ns: u64::from_be_bytes(sent),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_template_round_trips_through_the_frame_parser() {
        for qos in [0u8, 1] {
            let t = PublishTemplate::new("bench/t", qos, 64);
            let mut out = Vec::new();
            t.write(&mut out, 3, 77, 12345, 9);
            t.write(&mut out, 3, 78, 12346, 10);
            let (f, used) = next_frame(&out).unwrap().unwrap();
            assert_eq!(f.kind, PUBLISH);
            let r = parse_publish(&f).unwrap();
            assert_eq!((r.publisher, r.seq, r.sent_ns), (3, 77, 12345));
            assert_eq!(r.packet_id, (qos > 0).then_some(9));
            let (f, _) = next_frame(&out[used..]).unwrap().unwrap();
            assert_eq!(parse_publish(&f).unwrap().seq, 78);
        }
    }

    #[test]
    fn frames_wait_for_their_last_byte() {
        let c = connect("x", 0);
        assert!(next_frame(&c[..c.len() - 1]).unwrap().is_none());
        assert!(next_frame(&c).unwrap().is_some());
    }
}
