//! Kafka framing: each request and response is a 4-byte big-endian length
//! and that many bytes; a request starts with its API key and version,
//! which decide the header's version and the body's layout. Pure: bytes in,
//! typed messages out, and back.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use thiserror::Error;

/// Why a frame is not a request this server can answer.
#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("negative frame length")]
    NegativeLength,
    #[error("request shorter than its header")]
    Short,
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    /// The API exists but not in this version; the caller answers with
    /// UNSUPPORTED_VERSION where the protocol defines how.
    #[error("API {api:?} version {version} is not supported")]
    UnsupportedVersion {
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    },
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    pub header: RequestHeader,
    pub api: ApiKey,
    pub body: RequestKind,
    /// The version is one the server answers; otherwise the request was
    /// still decodable (the protocol defines it) and gets an
    /// UNSUPPORTED_VERSION answer rather than a dropped connection.
    pub supported: bool,
}

/// Splits one whole frame off `buf`: `Ok(None)` until all of it is there.
pub fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 0 {
        return Err(DecodeError::NegativeLength);
    }
    let len = len as usize;
    if len > max {
        return Err(DecodeError::TooLarge { size: len, max });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Decodes a request frame. `supported` gives the versions this server
/// answers for an API (`None`: not served at all).
pub fn decode_request(
    mut frame: Bytes,
    supported: impl Fn(ApiKey) -> Option<(i16, i16)>,
) -> Result<Request, DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::Short);
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| DecodeError::UnknownApi(key))?;
    let Some((min, max)) = supported(api) else {
        return Err(DecodeError::UnknownApi(key));
    };
    let ours = version >= min && version <= max;
    let known = api.valid_versions();
    if !ours && (version < known.min || version > known.max) {
        // Not even the protocol knows this version: the body cannot be read.
        return Err(DecodeError::UnsupportedVersion {
            api,
            version,
            correlation_id,
        });
    }
    let malformed = |e: anyhow::Error| DecodeError::Malformed {
        api,
        version,
        reason: format!("{e:#}"),
    };
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(malformed)?;
    let body = RequestKind::decode(api, &mut frame, version).map_err(malformed)?;
    Ok(Request {
        header,
        api,
        body,
        supported: ours,
    })
}

/// Encodes a response frame (length, header, body) for a request of `api`
/// at `version`.
pub fn encode_response(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    let start = out.len();
    out.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header.encode(out, api.response_header_version(version))?;
    body.encode(out, version)?;
    let len = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ApiVersionsRequest;
    use kafka_protocol::protocol::StrBytes;

    fn request_frame(api: ApiKey, version: i16, body: &impl Encodable) -> BytesMut {
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = 7;
        header.client_id = Some(StrBytes::from_static_str("t"));
        let mut b = BytesMut::new();
        header
            .encode(&mut b, api.request_header_version(version))
            .unwrap();
        body.encode(&mut b, version).unwrap();
        let mut framed = BytesMut::new();
        framed.put_i32(b.len() as i32);
        framed.extend_from_slice(&b);
        framed
    }

    #[test]
    fn frames_wait_for_all_their_bytes_and_decode() {
        let mut buf = request_frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        let whole = buf.clone();
        let mut part = BytesMut::from(&whole[..whole.len() - 1]);
        assert!(next_frame(&mut part, 1 << 20).unwrap().is_none());
        let frame = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        let r = decode_request(frame, |_| Some((0, 3))).unwrap();
        assert_eq!(r.api, ApiKey::ApiVersions);
        assert_eq!(r.header.correlation_id, 7);
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let mut big = BytesMut::from(&(2_000_000i32).to_be_bytes()[..]);
        assert!(matches!(
            next_frame(&mut big, 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut neg = BytesMut::from(&(-1i32).to_be_bytes()[..]);
        assert!(matches!(
            next_frame(&mut neg, 1 << 20),
            Err(DecodeError::NegativeLength)
        ));
        let mut buf = request_frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        let frame = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        let r = decode_request(frame, |_| Some((0, 2))).unwrap();
        assert!(
            !r.supported,
            "decoded, marked for an UNSUPPORTED_VERSION answer"
        );
        let mut buf = request_frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        buf[6..8].copy_from_slice(&99i16.to_be_bytes());
        let frame = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert!(matches!(
            decode_request(frame, |_| Some((0, 3))),
            Err(DecodeError::UnsupportedVersion {
                correlation_id: 7,
                ..
            })
        ));
        // A body cut short is malformed, not a panic.
        let mut buf = request_frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        let frame = next_frame(&mut buf, 1 << 20).unwrap().unwrap();
        let cut = frame.slice(..frame.len() - 2);
        assert!(decode_request(cut, |_| Some((0, 3))).is_err());
    }
}
