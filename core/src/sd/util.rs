//! Small shared helpers of the security-domain format: hashing, AEAD, canonical AAD.

use aws_lc_rs::aead::NONCE_LEN;
use aws_lc_rs::digest::{SHA256, digest};
use zeroize::Zeroizing;

use super::SdError;

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Base64url (no padding) of SHA-256 of `data`: the thumbprint form used everywhere here.
pub(crate) fn thumbprint(data: &[u8]) -> String {
    crate::b64::encode_url(sha256(data))
}

/// Fill a buffer from the system CSPRNG. Failure of the OS random source is fatal.
pub(crate) fn random<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    aws_lc_rs::rand::fill(&mut out[..]).expect("the system random number generator failed");
    out
}

/// Canonical, unambiguous byte encoding of a list of fields (each prefixed by its 4-byte
/// big-endian length). Used as AEAD associated data and as RSA-OAEP labels.
pub(crate) struct Canon(Vec<u8>);

impl Drop for Canon {
    fn drop(&mut self) {
        // A canonical buffer may hold key material (the fingerprint input): always wipe it.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Canon {
    pub(crate) fn new(tag: &str) -> Self {
        let mut c = Self(Vec::new());
        c.push(tag.as_bytes());
        c
    }

    pub(crate) fn push(&mut self, field: &[u8]) -> &mut Self {
        // Field lengths are bounded by the parsed JSON size; u32 is ample.
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(field);
        self
    }

    pub(crate) fn push_str(&mut self, field: &str) -> &mut Self {
        self.push(field.as_bytes())
    }

    pub(crate) fn push_u64(&mut self, v: u64) -> &mut Self {
        self.push(&v.to_be_bytes())
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// AES-256-GCM seal ([`crate::aead::seal`]), split as `(nonce, ciphertext || tag)` for the
/// document fields.
pub(crate) fn aead_seal(
    key: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; NONCE_LEN], Vec<u8>), SdError> {
    let sealed = crate::aead::seal(key, aad, plaintext)
        .map_err(|_| SdError::Crypto("AES-256-GCM encryption"))?;
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    Ok((n, body.to_vec()))
}

/// AES-256-GCM open ([`crate::aead::open`]). Any failure (wrong key, altered ciphertext or
/// associated data) is an integrity error described by `what`.
pub(crate) fn aead_open(
    key: &[u8; 32],
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, SdError> {
    if nonce.len() != NONCE_LEN {
        return Err(SdError::Integrity(what.to_owned()));
    }
    let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    sealed.extend_from_slice(nonce);
    sealed.extend_from_slice(ciphertext);
    crate::aead::open(key, aad, &sealed).map_err(|_| SdError::Integrity(what.to_owned()))
}

/// Decode a base64url field of a parsed document, naming the field on error.
pub(crate) fn b64_field(value: &str, field: &str) -> Result<Vec<u8>, SdError> {
    use base64::Engine;
    // Strict: our own documents never carry padding, so any deviation is an alteration.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| SdError::Integrity(format!("field `{field}` is not valid base64url")))
}
