//! The plaintext security domain: the master key and its metadata.

use std::fmt;

use zeroize::Zeroizing;

use super::SdError;
use super::util::{Canon, aead_open, aead_seal, random, sha256};

/// Version of the domain plaintext encoding (inside every encryption of the domain).
pub const DOMAIN_VERSION: u32 = 1;

/// Label of the fingerprint hash (see [`DomainSecret::fingerprint`]).
pub const FINGERPRINT_LABEL: &str = "keystead/v1/domain-fingerprint";

/// Default purpose label of [`DomainSecret::to_sealed_bytes`].
pub const SEAL_PURPOSE_DEFAULT: &str = "keystead/v1/sealed-domain";

const PLAINTEXT_MAGIC: &[u8; 4] = b"KSD1";
const SEALED_MAGIC: &[u8; 4] = b"KSS1";

/// Non-secret description of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainMetadata {
    /// UUID of the domain, chosen when it is generated; it never changes.
    pub domain_id: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// The pool that generated the domain.
    pub origin_pool: String,
    /// Version of the domain contents ([`DOMAIN_VERSION`]).
    pub version: u32,
}

/// The plaintext security domain: a 32-byte master key plus metadata. The key is zeroized on
/// drop and never shown by `Debug`.
#[derive(Clone)]
pub struct DomainSecret {
    master_key: Zeroizing<[u8; 32]>,
    metadata: DomainMetadata,
}

impl fmt::Debug for DomainSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainSecret")
            .field("master_key", &"<redacted>")
            .field("metadata", &self.metadata)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl DomainSecret {
    /// Generate a new domain with a fresh random master key and a new UUID.
    ///
    /// # Panics
    /// Only if the operating system's random number generator fails.
    pub fn generate(origin_pool: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self {
            master_key: random::<32>(),
            metadata: DomainMetadata {
                domain_id: uuid::Uuid::new_v4().to_string(),
                created,
                origin_pool: origin_pool.to_owned(),
                version: DOMAIN_VERSION,
            },
        }
    }

    /// Build a domain from its parts (restoring it from storage, tests).
    pub fn from_parts(master_key: Zeroizing<[u8; 32]>, metadata: DomainMetadata) -> Self {
        Self {
            master_key,
            metadata,
        }
    }

    /// The master key. Derive keys from it with [`crate::kdf::derive_key`]; never log it.
    pub fn master_key(&self) -> &[u8; 32] {
        &self.master_key
    }

    /// Derive a 32-byte key with [`crate::kdf::derive_key`].
    pub fn derive_key(&self, label: &str, context: &[u8]) -> Zeroizing<[u8; 32]> {
        crate::kdf::derive_key(&self.master_key, label, context)
    }

    pub fn metadata(&self) -> &DomainMetadata {
        &self.metadata
    }

    pub fn domain_id(&self) -> &str {
        &self.metadata.domain_id
    }

    /// Stable, public fingerprint of the domain: lowercase hex of
    /// `SHA-256(len-prefixed("keystead/v1/domain-fingerprint") || len-prefixed(domain_id) ||
    /// len-prefixed(master_key))` (each field prefixed by its 4-byte big-endian length).
    /// It identifies the domain (same fingerprint = same master key and id) and reveals
    /// nothing about the key (SHA-256 preimage resistance over a 256-bit random key).
    pub fn fingerprint(&self) -> String {
        let mut c = Canon::new(FINGERPRINT_LABEL);
        c.push_str(&self.metadata.domain_id);
        c.push(&self.master_key[..]);
        // `Canon` wipes its buffer (which holds the key) on drop.
        hex::encode(sha256(c.bytes()))
    }

    /// Binary encoding of the domain (secret!): `KSD1 || u32 version || 32-byte key ||
    /// i64 created || u32 len || domain_id || u32 len || origin_pool`, big-endian.
    pub(crate) fn encode(&self) -> Zeroizing<Vec<u8>> {
        let m = &self.metadata;
        let mut out = Zeroizing::new(Vec::with_capacity(
            64 + m.domain_id.len() + m.origin_pool.len(),
        ));
        out.extend_from_slice(PLAINTEXT_MAGIC);
        out.extend_from_slice(&m.version.to_be_bytes());
        out.extend_from_slice(&self.master_key[..]);
        out.extend_from_slice(&m.created.to_be_bytes());
        for s in [&m.domain_id, &m.origin_pool] {
            // Strings longer than 4 GiB cannot exist in a parsed document; the length is exact.
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out
    }

    /// Inverse of [`Self::encode`]; the input was authenticated before, so a decoding error
    /// means a format mismatch.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, SdError> {
        let bad =
            || SdError::Integrity("the decrypted domain is not a valid Keystead domain".to_owned());
        let mut r = Reader(bytes);
        if r.take(4).ok_or_else(bad)? != PLAINTEXT_MAGIC {
            return Err(bad());
        }
        let version = u32::from_be_bytes(r.array().ok_or_else(bad)?);
        if version != DOMAIN_VERSION {
            return Err(SdError::UnsupportedVersion {
                what: "security-domain contents version",
                found: version.to_string(),
                supported: "1",
            });
        }
        let mut master_key = Zeroizing::new([0u8; 32]);
        master_key.copy_from_slice(r.take(32).ok_or_else(bad)?);
        let created = i64::from_be_bytes(r.array().ok_or_else(bad)?);
        let mut strings = Vec::with_capacity(2);
        for _ in 0..2 {
            let len = u32::from_be_bytes(r.array().ok_or_else(bad)?);
            let s = r
                .take(usize::try_from(len).map_err(|_| bad())?)
                .ok_or_else(bad)?;
            strings.push(String::from_utf8(s.to_vec()).map_err(|_| bad())?);
        }
        if !r.0.is_empty() {
            return Err(bad());
        }
        let origin_pool = strings.pop().ok_or_else(bad)?;
        let domain_id = strings.pop().ok_or_else(bad)?;
        Ok(Self {
            master_key,
            metadata: DomainMetadata {
                domain_id,
                created,
                origin_pool,
                version,
            },
        })
    }

    /// Seal the domain under a 32-byte key (AES-256-GCM, fresh random nonce) for storage on
    /// disk, with the default purpose label [`SEAL_PURPOSE_DEFAULT`] as associated data.
    /// Output: `KSS1 || 12-byte nonce || ciphertext || 16-byte tag`.
    ///
    /// # Panics
    /// Only if the operating system's random number generator fails.
    pub fn to_sealed_bytes(&self, sealing_key: &[u8; 32]) -> Vec<u8> {
        self.to_sealed_bytes_for(sealing_key, SEAL_PURPOSE_DEFAULT)
    }

    /// Like [`Self::to_sealed_bytes`] with an explicit purpose label (for example
    /// `kdf::LABEL_PEER_TRANSFER` plus a peer name): the bytes open only with the same label.
    ///
    /// # Panics
    /// Only if the operating system's random number generator fails.
    pub fn to_sealed_bytes_for(&self, sealing_key: &[u8; 32], purpose: &str) -> Vec<u8> {
        let plain = self.encode();
        let aad = Canon::new(SEAL_PURPOSE_DEFAULT)
            .push_str(purpose)
            .bytes()
            .to_vec();
        let (nonce, ct) = aead_seal(sealing_key, &aad, &plain)
            .expect("AES-256-GCM sealing with a valid 32-byte key does not fail");
        let mut out = Vec::with_capacity(4 + nonce.len() + ct.len());
        out.extend_from_slice(SEALED_MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Open bytes made by [`Self::to_sealed_bytes`].
    pub fn from_sealed_bytes(bytes: &[u8], sealing_key: &[u8; 32]) -> Result<Self, SdError> {
        Self::from_sealed_bytes_for(bytes, sealing_key, SEAL_PURPOSE_DEFAULT)
    }

    /// Open bytes made by [`Self::to_sealed_bytes_for`] with the same purpose label.
    pub fn from_sealed_bytes_for(
        bytes: &[u8],
        sealing_key: &[u8; 32],
        purpose: &str,
    ) -> Result<Self, SdError> {
        if bytes.len() < 4 + 12 + 16 || &bytes[..4] != SEALED_MAGIC {
            return Err(SdError::Integrity(
                "the sealed domain is truncated or not a sealed domain".to_owned(),
            ));
        }
        let aad = Canon::new(SEAL_PURPOSE_DEFAULT)
            .push_str(purpose)
            .bytes()
            .to_vec();
        let plain = aead_open(
            sealing_key,
            &bytes[4..16],
            &aad,
            &bytes[16..],
            "the sealed domain does not open with this key and purpose",
        )?;
        Self::decode(&plain)
    }
}

impl PartialEq for DomainSecret {
    /// Constant-time comparison of the key; metadata compared normally.
    fn eq(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(
            &self.master_key[..],
            &other.master_key[..],
        )
        .is_ok()
            && self.metadata == other.metadata
    }
}

impl Eq for DomainSecret {}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|s| s.try_into().ok())
    }
}
