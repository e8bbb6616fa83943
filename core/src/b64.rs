//! Base64 helpers. Key Vault JSON uses base64url without padding for every binary field;
//! `x5c` certificates use standard base64.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Encode as base64url without padding.
pub fn encode_url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode base64url, tolerating padding (the Azure SDKs strip it, other clients may not).
pub fn decode_url(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('='))
}

/// Encode as standard base64 (used by `x5c`).
pub fn encode_std(bytes: impl AsRef<[u8]>) -> String {
    STANDARD.encode(bytes)
}

/// Decode standard base64.
pub fn decode_std(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_round_trip_without_padding() {
        let s = encode_url([0xfb, 0xff]);
        assert_eq!(s, "-_8");
        assert_eq!(decode_url(&s).unwrap(), vec![0xfb, 0xff]);
        assert_eq!(decode_url("-_8=").unwrap(), vec![0xfb, 0xff]);
    }
}
