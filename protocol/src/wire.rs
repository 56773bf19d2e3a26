//! The Confluent Schema Registry wire format: magic byte `0`, the schema id as a 4-byte
//! big-endian integer, then the payload (here: UTF-8 JSON).
//!
//! Invariant: `unframe(frame(id, p)) == (id, p)` for every id and payload.

/// Magic byte that opens every framed value.
pub const MAGIC: u8 = 0;
/// Bytes before the payload: magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// Why bytes are not a framed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("value has {0} bytes, fewer than the 5-byte header")]
    TooShort(usize),
    /// The first byte is not [`MAGIC`].
    #[error("unknown magic byte {0:#04x}, expected 0x00")]
    BadMagic(u8),
}

/// Prepends the wire header to a payload.
pub fn frame(schema_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a framed value into its schema id and payload.
pub fn unframe(bytes: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if bytes.len() < HEADER_LEN {
        return Err(WireError::TooShort(bytes.len()));
    }
    if bytes[0] != MAGIC {
        return Err(WireError::BadMagic(bytes[0]));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_magic_then_big_endian_id() {
        let framed = frame(0x0102_0304, b"{}");
        assert_eq!(framed, [0, 1, 2, 3, 4, b'{', b'}']);
    }

    #[test]
    fn round_trips_every_id_edge() {
        for id in [0, 1, 255, 256, u32::MAX] {
            let framed = frame(id, b"payload");
            assert_eq!(unframe(&framed), Ok((id, &b"payload"[..])));
        }
    }

    #[test]
    fn rejects_short_and_foreign_values() {
        assert_eq!(unframe(&[0, 0, 0]), Err(WireError::TooShort(3)));
        assert_eq!(unframe(b"{\"a\":1}"), Err(WireError::BadMagic(b'{')));
    }
}
