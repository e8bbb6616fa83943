//! The security domain: its plaintext ([`DomainSecret`]), the versioned domain file that
//! custodians hold ([`create_domain_file`], [`recover_domain`], [`rehearse`]), custodian keys
//! ([`CustodianKey`], [`CustodianPrivateKey`], [`generate_custodian`]), the recovery transfer
//! ([`ExchangeKey`], [`ExchangeCertificate`], [`build_transfer_blob`]) and the Azure-shaped
//! API envelopes ([`wire`]). The format is documented in `docs/security-domain.md`.

mod domain;
mod error;
mod exchange;
mod file;
mod keys;
mod util;
pub mod wire;

pub use domain::{
    DOMAIN_VERSION, DomainMetadata, DomainSecret, FINGERPRINT_LABEL, SEAL_PURPOSE_DEFAULT,
};
pub use error::SdError;
pub use exchange::{
    EXCHANGE_KEY_BITS, ExchangeCertificate, ExchangeKey, POOL_URI_PREFIX, TRANSFER_BLOB_VERSION,
    TransferBlobSummary, build_transfer_blob, inspect_transfer_blob, seal_to_exchange_key,
};
pub use file::{
    CONTENT_ENC, DOMAIN_FILE_VERSION, DomainFileSummary, MAX_CUSTODIANS, MIN_CUSTODIANS,
    MIN_QUORUM, MatchedKey, RehearsalReport, SHARE_ALG, ShareSummary, create_domain_file,
    custodians_from_download_request, inspect_domain_file, recover_domain, rehearse,
    validate_custodians,
};
pub use keys::{
    CustodianKey, CustodianPrivateKey, MAX_RSA_BITS, MIN_RSA_BITS, PBKDF2_ITERATIONS,
    generate_custodian,
};
