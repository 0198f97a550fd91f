//! `X-Request-Id`: one per request, sent back to the client and on to the upstream, and the
//! access event's `request_id` (SPEC §5).

use http::header::HeaderValue;
use rand::Rng;

use crate::response;

/// The incoming `X-Request-Id` when a trusted proxy sent a well-formed one, else a new one.
pub fn request_id(headers: &http::HeaderMap, peer_trusted: bool) -> HeaderValue {
    if peer_trusted {
        let incoming = headers
            .get(response::REQUEST_ID)
            .filter(|v| well_formed_id(v.as_bytes()));
        if let Some(id) = incoming {
            return id.clone();
        }
    }
    let id: u128 = rand::thread_rng().gen();
    // Hex into a stack buffer: this runs on every request.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 32];
    for (i, byte) in text.iter_mut().enumerate() {
        *byte = HEX[((id >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).expect("hex is a valid header value")
}

fn well_formed_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_request_ids_are_32_hex_digits() {
        let id = request_id(&http::HeaderMap::new(), false);
        assert_eq!(id.len(), 32);
        assert!(id
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(id, request_id(&http::HeaderMap::new(), false));
    }

    #[test]
    fn request_ids_are_validated() {
        assert!(well_formed_id(b"abc-123_x.y:z"));
        assert!(!well_formed_id(b""));
        assert!(!well_formed_id(b"a b"));
        assert!(!well_formed_id(&[b'a'; 129]));
    }
}
