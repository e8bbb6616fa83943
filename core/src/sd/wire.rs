//! Azure-shaped request and response envelopes of the security-domain API
//! (`/securitydomain/download`, `/securitydomain/upload`, their `pending` status, and the
//! transfer key). Field names follow the Azure REST specification and the Azure CLI.

use serde::{Deserialize, Serialize};

/// A certificate in a download request (`certificates[]`): `kty` RSA, `x5c` with the
/// certificate (standard base64 DER), `n`/`e` base64url, `x5t#S256` = b64url(SHA-256(DER)).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecurityDomainJsonWebKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default)]
    pub kty: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ops: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default)]
    pub x5c: Vec<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x5t: Option<String>,
    #[serde(rename = "x5t#S256", default, skip_serializing_if = "Option::is_none")]
    pub x5t_s256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
}

fn default_required() -> u32 {
    2
}

/// Body of `POST /securitydomain/download`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertificateInfo {
    pub certificates: Vec<SecurityDomainJsonWebKey>,
    /// The quorum; 2 when absent (as Azure).
    #[serde(default = "default_required")]
    pub required: u32,
}

/// `{"value": "<JSON text>"}`: the download response (the security-domain file as text) and
/// the upload request (the transfer blob as text).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecurityDomainObject {
    pub value: String,
}

/// Status strings of the `pending` endpoints. Azure uses `Success` (not `Succeeded`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum OperationStatus {
    InProgress,
    Success,
    Failed,
}

/// `GET /securitydomain/{download,upload}/pending` body (and the 202 body of upload).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecurityDomainOperationStatus {
    pub status: OperationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_details: Option<String>,
}

/// `GET /securitydomain/upload` body. `transfer_key` is the JSON *text* of a JWK with `x5c`
/// (the Azure CLI and SDKs `json.loads` it), not a nested object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransferKey {
    pub key_format: String,
    pub transfer_key: String,
}
