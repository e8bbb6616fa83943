//! Errors of the security-domain library. Messages say what is wrong and what to do; they
//! never contain key material.

/// Everything that can go wrong while creating, opening or transferring a security domain.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SdError {
    /// A download needs 3 to 10 custodian keys.
    #[error(
        "a security domain needs 3 to 10 custodian public keys, {given} given: provide between 3 and 10 distinct RSA certificates"
    )]
    CustodianCount { given: usize },

    /// Quorum outside 2..=n.
    #[error(
        "quorum {quorum} is invalid for {n} custodian keys: the quorum must be at least 2 and at most the number of keys ({n})"
    )]
    InvalidQuorum { quorum: u32, n: usize },

    /// Fewer private keys than the quorum.
    #[error(
        "not enough custodian keys: {given} given, {needed} needed to reach the quorum of this security domain"
    )]
    NotEnoughKeys { given: usize, needed: usize },

    /// A private key that does not belong to any share of the file.
    #[error(
        "custodian key {key} matches no share of this security domain file: check that it is one of the keys the domain was downloaded with"
    )]
    KeyMatchesNoShare { key: String },

    /// The same private key given twice.
    #[error(
        "custodian key {key} was given more than once: each key counts once towards the quorum"
    )]
    DuplicateKey { key: String },

    /// Two custodian certificates with the same thumbprint or the same public key.
    #[error(
        "custodian key {thumbprint} appears more than once (same certificate or same public key): every custodian needs a distinct key pair"
    )]
    DuplicateCustodian { thumbprint: String },

    /// RSA key too small, too large, or with a weak public exponent.
    #[error("key {key} is not acceptable: {reason}")]
    WeakKey { key: String, reason: String },

    /// Not an RSA key.
    #[error("{what} is not an RSA key: security-domain keys must be RSA with at least 2048 bits")]
    NotRsa { what: String },

    /// Unparseable input (PEM, DER, JSON, base64).
    #[error("malformed input: {0}")]
    Malformed(String),

    /// A document of an unknown format or version.
    #[error(
        "unsupported {what}: found {found:?}, this tool supports {supported:?}; use a matching Keystead version"
    )]
    UnsupportedVersion {
        what: &'static str,
        found: String,
        supported: &'static str,
    },

    /// Tampering or corruption detected.
    #[error("integrity check failed: {0}; the file was altered or corrupted, use an intact copy")]
    Integrity(String),

    /// A transfer blob made for another exchange key.
    #[error(
        "this transfer blob was made for exchange key {found}, not for this pool's exchange key {expected}: build it again from the pool's current exchange key"
    )]
    WrongExchangeKey { expected: String, found: String },

    /// A transfer blob made for another pool.
    #[error(
        "this transfer blob was made for pool {found:?}, not for pool {expected:?}: build it again from this pool's exchange key"
    )]
    WrongPool { expected: String, found: String },

    /// Private-key file protection problems.
    #[error("{0}")]
    Passphrase(String),

    /// An internal cryptographic failure that is not caused by the input.
    #[error("internal cryptographic failure during {0}")]
    Crypto(&'static str),
}
