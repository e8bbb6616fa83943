//! Errors of the crypto layer. Messages say what is wrong and what to do; they never contain
//! key bytes, plaintexts or anything that distinguishes why a decryption failed.

/// A crypto failure, mapped to a Key Vault error code by [`CryptoError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// A request field is malformed or out of range (400 `BadParameter`).
    #[error("{0}")]
    BadParameter(String),
    /// The key type is unknown or cannot be used here (400 `KeyTypeNotSupported`).
    #[error("{0}")]
    KeyTypeNotSupported(String),
    /// The algorithm does not fit this key's type or size (400 `AlgorithmNotSupported`).
    #[error("{0}")]
    AlgorithmNotSupported(String),
    /// A JWK to import is incomplete or its components do not form a valid key
    /// (400 `BadParameter`).
    #[error("{0}")]
    InvalidKey(String),
    /// Decryption or unwrap failed. One fixed message for every cause (padding, tag,
    /// integrity check, wrong key) so that it cannot serve as an oracle (400 `DecryptionFailed`).
    #[error(
        "decryption failed: the ciphertext, iv, tag or aad does not match this key and algorithm; check that you use the same key version, algorithm and parameters as for encryption"
    )]
    DecryptionFailed,
    /// A documented Key Vault feature that Keystead does not implement (400 `NotSupported`).
    #[error("{0}")]
    NotSupported(String),
    /// An internal failure (random generator, corrupt storage); 500 `InternalError`.
    #[error("{0}")]
    Internal(String),
}

impl CryptoError {
    /// The Key Vault `error.code`.
    pub fn code(&self) -> &'static str {
        match self {
            CryptoError::BadParameter(_) | CryptoError::InvalidKey(_) => "BadParameter",
            CryptoError::KeyTypeNotSupported(_) => "KeyTypeNotSupported",
            CryptoError::AlgorithmNotSupported(_) => "AlgorithmNotSupported",
            CryptoError::DecryptionFailed => "DecryptionFailed",
            CryptoError::NotSupported(_) => "NotSupported",
            CryptoError::Internal(_) => "InternalError",
        }
    }

    /// The HTTP status the server should answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            CryptoError::Internal(_) => 500,
            _ => 400,
        }
    }
}

impl From<keystead_core::keys::UnknownValue> for CryptoError {
    fn from(e: keystead_core::keys::UnknownValue) -> Self {
        CryptoError::BadParameter(e.to_string())
    }
}
