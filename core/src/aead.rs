//! AES-256-GCM sealing with a purpose-bound AAD: `nonce (12) || ciphertext || tag (16)`.
//!
//! Used wherever Keystead stores or ships material under a domain-derived key (wrapped keys
//! in the state, single-key backup blobs, full backups, the sealed domain).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

/// Sealing or opening failed. Deliberately carries no detail (no oracle).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "integrity check failed: the data was altered, is truncated, or was sealed under another key or for another purpose"
)]
pub struct AeadError;

fn key(key: &[u8; 32]) -> LessSafeKey {
    // 32 bytes is always a valid AES-256 key.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256 key"))
}

/// Encrypt `plaintext` under `key`, binding `aad`. A fresh random nonce every call.
pub fn seal(key_bytes: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, AeadError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| AeadError)?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key(key_bytes)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| AeadError)?;
    out.extend_from_slice(&body);
    zeroize::Zeroize::zeroize(&mut body);
    Ok(out)
}

/// Decrypt what [`seal`] produced with the same key and `aad`.
pub fn open(
    key_bytes: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, AeadError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(AeadError);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| AeadError)?;
    let mut buf = zeroize::Zeroizing::new(body.to_vec());
    let len = key(key_bytes)
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| AeadError)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let k = [7u8; 32];
        let sealed = seal(&k, b"purpose|a", b"secret").unwrap();
        assert_eq!(&open(&k, b"purpose|a", &sealed).unwrap()[..], b"secret");
        assert_eq!(open(&k, b"purpose|b", &sealed), Err(AeadError));
        assert_eq!(open(&[8u8; 32], b"purpose|a", &sealed), Err(AeadError));
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(open(&k, b"purpose|a", &t), Err(AeadError), "byte {i}");
        }
        assert_eq!(open(&k, b"purpose|a", &sealed[..10]), Err(AeadError));
    }
}
