//! Azure Key Vault / Managed HSM **keys** wire types (REST `keys.json`, API 7.x / 2025-07-01).
//!
//! Field names are exactly the Key Vault JSON names. Binary fields are [`Base64Url`]
//! (base64url without padding on output; padding tolerated on input). Times are integer Unix
//! seconds. Absent options are omitted on output.
//!
//! Enumerated values (`kty`, `crv`, `alg`, `key_ops`) travel as plain `String`s so that a
//! value we do not know never fails deserialization; parse them with [`KeyType::parse`],
//! [`CurveName::parse`], [`SignatureAlgorithm::parse`], [`EncryptionAlgorithm::parse`] and
//! [`KeyOperation::parse`], which return an [`UnknownValue`] error whose message lists the
//! supported values (map it to a 400 `BadParameter`).
//!
//! One file on purpose (~720 lines of code): it is the whole `keys.json` wire contract, kept
//! together so that a change of the wire shape has one place.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

use crate::b64;

/// Bytes that travel as base64url without padding. The buffer is zeroized on drop because
/// the same type carries private JWK components, plaintexts and unwrapped keys.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64Url(pub Vec<u8>);

impl Base64Url {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Takes the bytes out (the emptied value is then dropped).
    pub fn into_inner(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Base64Url {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl AsRef<[u8]> for Base64Url {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Base64Url {
    fn from(v: Vec<u8>) -> Self {
        Self(v)
    }
}

impl From<&[u8]> for Base64Url {
    fn from(v: &[u8]) -> Self {
        Self(v.to_vec())
    }
}

/// Shows only the length: a `Base64Url` may hold secret bytes.
impl fmt::Debug for Base64Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Url({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Url {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64::encode_url(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Url {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        b64::decode_url(&s).map(Base64Url).map_err(|_| {
            serde::de::Error::custom(
                "invalid base64url value; binary fields must be base64url (RFC 4648 §5)",
            )
        })
    }
}

/// Tags: at most 15 name/value pairs (validated by the server, not here).
pub type Tags = BTreeMap<String, String>;

/// A JSON Web Key as Key Vault sends and receives it. Debug redacts private components.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct JsonWebKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kty: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dq: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qi: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hsm: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<Base64Url>,
}

impl JsonWebKey {
    /// True when any private component (d, dp, dq, qi, p, q, k, key_hsm) is present.
    pub fn has_private_material(&self) -> bool {
        [
            &self.d,
            &self.dp,
            &self.dq,
            &self.qi,
            &self.p,
            &self.q,
            &self.k,
            &self.key_hsm,
        ]
        .iter()
        .any(|f| f.is_some())
    }
}

impl fmt::Debug for JsonWebKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn redact(v: &Option<Base64Url>) -> Option<&'static str> {
            v.as_ref().map(|_| "<redacted>")
        }
        f.debug_struct("JsonWebKey")
            .field("kid", &self.kid)
            .field("kty", &self.kty)
            .field("key_ops", &self.key_ops)
            .field("crv", &self.crv)
            .field("n", &self.n)
            .field("e", &self.e)
            .field("x", &self.x)
            .field("y", &self.y)
            .field("d", &redact(&self.d))
            .field("dp", &redact(&self.dp))
            .field("dq", &redact(&self.dq))
            .field("qi", &redact(&self.qi))
            .field("p", &redact(&self.p))
            .field("q", &redact(&self.q))
            .field("k", &redact(&self.k))
            .field("key_hsm", &redact(&self.key_hsm))
            .finish()
    }
}

/// `attributes.attestation` (API 7.6+), read-only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyAttestation {
    #[serde(
        rename = "certificatePemFile",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub certificate_pem_file: Option<Base64Url>,
    #[serde(
        rename = "privateKeyAttestation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub private_key_attestation: Option<Base64Url>,
    #[serde(
        rename = "publicKeyAttestation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub public_key_attestation: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Key attributes. Writable: `enabled`, `nbf`, `exp`, `exportable`; the rest are read-only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyAttributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<i64>,
    #[serde(
        rename = "recoverableDays",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub recoverable_days: Option<i32>,
    #[serde(
        rename = "recoveryLevel",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub recovery_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exportable: Option<bool>,
    #[serde(
        rename = "hsmPlatform",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub hsm_platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<KeyAttestation>,
}

/// `release_policy`: `{contentType, immutable, data: b64url}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyReleasePolicy {
    #[serde(
        rename = "contentType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immutable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Base64Url>,
}

/// A key version: `{key, attributes, tags, managed, release_policy}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyBundle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<JsonWebKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<KeyAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_policy: Option<KeyReleasePolicy>,
}

/// A list entry: `kid` without a version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<KeyAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
}

macro_rules! deletion_fields {
    ($(#[$m:meta])* $name:ident, $inner:ident: $ty:ty) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
        pub struct $name {
            #[serde(flatten)]
            pub $inner: $ty,
            #[serde(rename = "recoveryId", default, skip_serializing_if = "Option::is_none")]
            pub recovery_id: Option<String>,
            #[serde(rename = "scheduledPurgeDate", default, skip_serializing_if = "Option::is_none")]
            pub scheduled_purge_date: Option<i64>,
            #[serde(rename = "deletedDate", default, skip_serializing_if = "Option::is_none")]
            pub deleted_date: Option<i64>,
        }
    };
}

deletion_fields!(
    /// A [`KeyBundle`] plus `recoveryId`, `scheduledPurgeDate`, `deletedDate` (Unix seconds).
    DeletedKeyBundle, bundle: KeyBundle
);
deletion_fields!(
    /// A [`KeyItem`] plus `recoveryId`, `scheduledPurgeDate`, `deletedDate` (Unix seconds).
    DeletedKeyItem, item: KeyItem
);

/// A page: `{value: [...], nextLink}` (`nextLink` is an absolute URL or absent/null).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyListResult<T> {
    #[serde(default = "Vec::new")]
    pub value: Vec<T>,
    #[serde(rename = "nextLink", default)]
    pub next_link: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyCreateParameters {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_exponent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<KeyAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_policy: Option<KeyReleasePolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyImportParameters {
    pub key: JsonWebKey,
    #[serde(rename = "Hsm", default, skip_serializing_if = "Option::is_none")]
    pub hsm: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<KeyAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_policy: Option<KeyReleasePolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyUpdateParameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<KeyAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_policy: Option<KeyReleasePolicy>,
}

/// Body of encrypt, decrypt, wrapkey and unwrapkey.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyOperationsParameters {
    pub alg: String,
    pub value: Base64Url,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iv: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Base64Url>,
}

/// Result of encrypt, decrypt, wrapkey, unwrapkey and sign.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyOperationResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iv: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Base64Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aad: Option<Base64Url>,
}

/// Sign: `value` is the **digest** to sign.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeySignParameters {
    pub alg: String,
    pub value: Base64Url,
}

/// Verify: `digest` and the signature in `value`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyVerifyParameters {
    pub alg: String,
    pub digest: Base64Url,
    pub value: Base64Url,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyVerifyResult {
    pub value: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BackupKeyResult {
    pub value: Base64Url,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyRestoreParameters {
    pub value: Base64Url,
}

/// `POST /keys/{n}/{v}/release` body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyReleaseParameters {
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyReleaseResult {
    pub value: String,
}

/// `POST /rng` body: `count` must be 1..=128 (checked by the server).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GetRandomBytesRequest {
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RandomBytes {
    pub value: Base64Url,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LifetimeActionTrigger {
    /// ISO-8601 duration, e.g. `P90D`.
    #[serde(
        rename = "timeAfterCreate",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub time_after_create: Option<String>,
    #[serde(
        rename = "timeBeforeExpiry",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub time_before_expiry: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LifetimeActionType {
    /// `Rotate` or `Notify` (see [`is_lifetime_action_type`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LifetimeAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<LifetimeActionTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<LifetimeActionType>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyRotationPolicyAttributes {
    /// ISO-8601 duration, e.g. `P2Y`.
    #[serde(
        rename = "expiryTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub expiry_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KeyRotationPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(
        rename = "lifetimeActions",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub lifetime_actions: Option<Vec<LifetimeAction>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<KeyRotationPolicyAttributes>,
}

/// `Rotate` / `Notify`, compared case-insensitively.
pub fn is_lifetime_action_type(s: &str) -> bool {
    s.eq_ignore_ascii_case("Rotate") || s.eq_ignore_ascii_case("Notify")
}

/// A value of an enumerated field that Keystead does not know. The message names the field
/// and lists the accepted values; map it to a 400 `BadParameter`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {field} '{value}'; use one of: {supported}")]
pub struct UnknownValue {
    pub field: &'static str,
    pub value: String,
    pub supported: String,
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident, $field:literal, { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The exact Key Vault spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }

            /// Parses a wire value (ASCII case-insensitive).
            pub fn parse(s: &str) -> Result<Self, UnknownValue> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str().eq_ignore_ascii_case(s))
                    .ok_or_else(|| UnknownValue {
                        field: $field,
                        // Bounded so that an absurd client value cannot bloat logs/errors.
                        value: s.chars().take(64).collect(),
                        supported: Self::ALL
                            .iter()
                            .map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                Self::parse(s)
            }
        }
    };
}

wire_enum!(
    /// `kty`.
    KeyType, "key type (kty)", {
        Ec => "EC",
        EcHsm => "EC-HSM",
        Rsa => "RSA",
        RsaHsm => "RSA-HSM",
        Oct => "oct",
        OctHsm => "oct-HSM",
    }
);

/// The algorithm family of a key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    Rsa,
    Ec,
    Oct,
}

impl KeyType {
    pub fn family(self) -> KeyFamily {
        match self {
            KeyType::Rsa | KeyType::RsaHsm => KeyFamily::Rsa,
            KeyType::Ec | KeyType::EcHsm => KeyFamily::Ec,
            KeyType::Oct | KeyType::OctHsm => KeyFamily::Oct,
        }
    }

    /// The HSM-protected type of the same family (what Managed HSM stores).
    pub fn to_hsm(self) -> KeyType {
        match self.family() {
            KeyFamily::Rsa => KeyType::RsaHsm,
            KeyFamily::Ec => KeyType::EcHsm,
            KeyFamily::Oct => KeyType::OctHsm,
        }
    }
}

wire_enum!(
    /// `crv`.
    CurveName, "curve (crv)", {
        P256 => "P-256",
        P384 => "P-384",
        P521 => "P-521",
        P256K => "P-256K",
    }
);

impl CurveName {
    /// Size in bytes of a coordinate / of the private scalar.
    pub fn field_len(self) -> usize {
        match self {
            CurveName::P256 | CurveName::P256K => 32,
            CurveName::P384 => 48,
            CurveName::P521 => 66,
        }
    }

    /// Nominal size in bits (256, 384, 521).
    pub fn bits(self) -> u32 {
        match self {
            CurveName::P256 | CurveName::P256K => 256,
            CurveName::P384 => 384,
            CurveName::P521 => 521,
        }
    }
}

wire_enum!(
    /// Signature `alg`.
    SignatureAlgorithm, "signature algorithm (alg)", {
        PS256 => "PS256",
        PS384 => "PS384",
        PS512 => "PS512",
        RS256 => "RS256",
        RS384 => "RS384",
        RS512 => "RS512",
        HS256 => "HS256",
        HS384 => "HS384",
        HS512 => "HS512",
        RSNULL => "RSNULL",
        ES256 => "ES256",
        ES384 => "ES384",
        ES512 => "ES512",
        ES256K => "ES256K",
    }
);

impl SignatureAlgorithm {
    /// Length of the digest the client must send, where the algorithm signs a digest.
    pub fn digest_len(self) -> Option<usize> {
        use SignatureAlgorithm::*;
        match self {
            PS256 | RS256 | ES256 | ES256K => Some(32),
            PS384 | RS384 | ES384 => Some(48),
            PS512 | RS512 | ES512 => Some(64),
            HS256 | HS384 | HS512 | RSNULL => None,
        }
    }
}

wire_enum!(
    /// Encryption / key-wrap `alg`.
    EncryptionAlgorithm, "encryption algorithm (alg)", {
        RsaOaep => "RSA-OAEP",
        RsaOaep256 => "RSA-OAEP-256",
        Rsa1_5 => "RSA1_5",
        A128Gcm => "A128GCM",
        A192Gcm => "A192GCM",
        A256Gcm => "A256GCM",
        A128Kw => "A128KW",
        A192Kw => "A192KW",
        A256Kw => "A256KW",
        A128Cbc => "A128CBC",
        A192Cbc => "A192CBC",
        A256Cbc => "A256CBC",
        A128CbcPad => "A128CBCPAD",
        A192CbcPad => "A192CBCPAD",
        A256CbcPad => "A256CBCPAD",
        CkmAesKeyWrap => "CKM_AES_KEY_WRAP",
        CkmAesKeyWrapPad => "CKM_AES_KEY_WRAP_PAD",
    }
);

wire_enum!(
    /// `key_ops` entries.
    KeyOperation, "key operation (key_ops)", {
        Encrypt => "encrypt",
        Decrypt => "decrypt",
        Sign => "sign",
        Verify => "verify",
        WrapKey => "wrapKey",
        UnwrapKey => "unwrapKey",
        Import => "import",
        Export => "export",
    }
);

wire_enum!(
    /// `attributes.recoveryLevel`.
    DeletionRecoveryLevel, "recovery level (recoveryLevel)", {
        Purgeable => "Purgeable",
        RecoverablePurgeable => "Recoverable+Purgeable",
        Recoverable => "Recoverable",
        RecoverableProtectedSubscription => "Recoverable+ProtectedSubscription",
        CustomizedRecoverablePurgeable => "CustomizedRecoverable+Purgeable",
        CustomizedRecoverable => "CustomizedRecoverable",
        CustomizedRecoverableProtectedSubscription => "CustomizedRecoverable+ProtectedSubscription",
    }
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug>(
        text: &str,
    ) -> T {
        let parsed: T = serde_json::from_str(text).unwrap();
        let back = serde_json::to_value(&parsed).unwrap();
        let orig: Value = serde_json::from_str(text).unwrap();
        assert_eq!(back, orig, "re-serialized body differs");
        let again: T = serde_json::from_value(back).unwrap();
        assert_eq!(again, parsed);
        parsed
    }

    #[test]
    fn sdk_create_bodies_round_trip() {
        let p: KeyCreateParameters = round_trip(
            r#"{"kty":"RSA-HSM","key_size":3072,"attributes":{"exp":1893456000},"key_ops":["sign","verify"],"tags":{"a":"b"}}"#,
        );
        assert_eq!(p.kty, "RSA-HSM");
        assert_eq!(p.key_size, Some(3072));
        assert_eq!(p.attributes.unwrap().exp, Some(1_893_456_000));
        assert_eq!(p.tags.unwrap()["a"], "b");

        let p: KeyCreateParameters = round_trip(r#"{"kty":"EC-HSM","crv":"P-256"}"#);
        assert_eq!(
            CurveName::parse(p.crv.as_deref().unwrap()),
            Ok(CurveName::P256)
        );

        let p: KeyCreateParameters = round_trip(
            r#"{"kty":"oct-HSM","key_size":256,"attributes":{"exportable":true},"release_policy":{"data":"eyJhbnlPZiI6W119"}}"#,
        );
        assert_eq!(p.attributes.unwrap().exportable, Some(true));
        assert_eq!(
            p.release_policy.unwrap().data.unwrap().as_bytes(),
            br#"{"anyOf":[]}"#
        );
    }

    #[test]
    fn sdk_import_body_round_trips() {
        let p: KeyImportParameters =
            round_trip(r#"{"key":{"kty":"oct-HSM","k":"AQEBAQEBAQEBAQEBAQEBAQ"},"Hsm":true}"#);
        assert_eq!(p.hsm, Some(true));
        assert_eq!(p.key.k.as_ref().unwrap().as_bytes(), &[1u8; 16]);
        assert!(p.key.has_private_material());
    }

    #[test]
    fn rotation_policy_round_trips() {
        let p: KeyRotationPolicy = round_trip(
            r#"{"lifetimeActions":[{"action":{"type":"Rotate"},"trigger":{"timeAfterCreate":"P90D"}}],"attributes":{"expiryTime":"P2Y"}}"#,
        );
        let a = &p.lifetime_actions.as_ref().unwrap()[0];
        assert!(is_lifetime_action_type(
            a.action.as_ref().unwrap().r#type.as_deref().unwrap()
        ));
        assert_eq!(
            a.trigger.as_ref().unwrap().time_after_create.as_deref(),
            Some("P90D")
        );
        assert!(!is_lifetime_action_type("Explode"));
    }

    #[test]
    fn operation_bodies_round_trip() {
        let p: KeyOperationsParameters =
            round_trip(r#"{"alg":"A256GCM","value":"AAEC","aad":"AwQ"}"#);
        assert_eq!(p.value.as_bytes(), &[0, 1, 2]);
        assert_eq!(
            EncryptionAlgorithm::parse(&p.alg),
            Ok(EncryptionAlgorithm::A256Gcm)
        );
        let r: KeyOperationResult = round_trip(
            r#"{"kid":"https://h/keys/k/0123","value":"AAEC","iv":"AAAAAAAAAAAAAAAA","tag":"AQ"}"#,
        );
        assert_eq!(r.iv.unwrap().as_bytes().len(), 12);
        let v: KeyVerifyParameters = round_trip(r#"{"alg":"ES256","digest":"AQ","value":"Ag"}"#);
        assert_eq!(v.digest.as_bytes(), &[1]);
        let _: KeyVerifyResult = round_trip(r#"{"value":true}"#);
        let _: KeySignParameters = round_trip(r#"{"alg":"RS256","value":"AQ"}"#);
        let g: GetRandomBytesRequest = round_trip(r#"{"count":32}"#);
        assert_eq!(g.count, 32);
        let _: RandomBytes = round_trip(r#"{"value":"AQID"}"#);
        let _: BackupKeyResult = round_trip(r#"{"value":"AQID"}"#);
        let _: KeyRestoreParameters = round_trip(r#"{"value":"AQID"}"#);
        let _: KeyReleaseParameters = round_trip(r#"{"target":"eyJ0","nonce":"n"}"#);
    }

    #[test]
    fn bundles_and_lists_round_trip() {
        let b: DeletedKeyBundle = round_trip(
            r#"{"key":{"kid":"https://h/keys/k/v1","kty":"EC-HSM","key_ops":["sign"],"crv":"P-256","x":"AQ","y":"Ag"},
                "attributes":{"enabled":true,"created":1,"updated":2,"recoverableDays":90,"recoveryLevel":"Recoverable+Purgeable","exportable":false},
                "tags":{"t":"v"},"recoveryId":"https://h/deletedkeys/k","scheduledPurgeDate":3,"deletedDate":4}"#,
        );
        assert_eq!(b.recovery_id.as_deref(), Some("https://h/deletedkeys/k"));
        let attrs = b.bundle.attributes.as_ref().unwrap();
        assert_eq!(attrs.recoverable_days, Some(90));
        assert_eq!(
            DeletionRecoveryLevel::parse(attrs.recovery_level.as_deref().unwrap()),
            Ok(DeletionRecoveryLevel::RecoverablePurgeable)
        );

        let l: KeyListResult<DeletedKeyItem> = round_trip(
            r#"{"value":[{"kid":"https://h/keys/k","attributes":{"enabled":true},"recoveryId":"https://h/deletedkeys/k","deletedDate":4}],"nextLink":"https://h/deletedkeys?api-version=7.5&$skiptoken=x"}"#,
        );
        assert_eq!(l.value[0].item.kid.as_deref(), Some("https://h/keys/k"));
        assert_eq!(l.value[0].deleted_date, Some(4));

        let l: KeyListResult<KeyItem> =
            serde_json::from_str(r#"{"value":[],"nextLink":null}"#).unwrap();
        assert!(l.next_link.is_none());
        // nextLink is always present (null) on output, like the service.
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            json!({"value":[],"nextLink":null})
        );
    }

    #[test]
    fn absent_options_are_omitted() {
        let b = KeyBundle {
            key: Some(JsonWebKey {
                kid: Some("https://h/keys/k/v".into()),
                kty: Some("oct-HSM".into()),
                ..Default::default()
            }),
            attributes: Some(KeyAttributes::default()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            json!({"key":{"kid":"https://h/keys/k/v","kty":"oct-HSM"},"attributes":{}})
        );
    }

    #[test]
    fn base64url_tolerates_padding_and_rejects_garbage() {
        let v: KeySignParameters =
            serde_json::from_str(r#"{"alg":"RS256","value":"-_8="}"#).unwrap();
        assert_eq!(v.value.as_bytes(), &[0xfb, 0xff]);
        assert_eq!(serde_json::to_string(&v.value).unwrap(), r#""-_8""#);
        let err = serde_json::from_str::<KeySignParameters>(r#"{"alg":"RS256","value":"***"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("base64url"), "{err}");
    }

    #[test]
    fn jwk_debug_redacts_private_fields() {
        let jwk = JsonWebKey {
            kty: Some("RSA".into()),
            n: Some(Base64Url::new(vec![7u8; 4])),
            d: Some(Base64Url::new(b"SECRETSECRET".to_vec())),
            k: Some(Base64Url::new(b"KKKKKKKK".to_vec())),
            ..Default::default()
        };
        let s = format!("{jwk:?}");
        assert!(s.contains("<redacted>"));
        assert!(!s.contains("SECRET") && !s.contains("U0VDUkVU") && !s.contains("75, 75"));
    }

    #[test]
    fn enums_parse_and_report_unknown_values() {
        assert_eq!(KeyType::parse("oct-hsm"), Ok(KeyType::OctHsm));
        assert_eq!(KeyType::parse("RSA").unwrap().to_hsm(), KeyType::RsaHsm);
        assert_eq!(
            "ES256K".parse::<SignatureAlgorithm>(),
            Ok(SignatureAlgorithm::ES256K)
        );
        assert_eq!(SignatureAlgorithm::ES512.digest_len(), Some(64));
        assert_eq!(
            EncryptionAlgorithm::parse("CKM_AES_KEY_WRAP_PAD"),
            Ok(EncryptionAlgorithm::CkmAesKeyWrapPad)
        );
        assert_eq!(KeyOperation::parse("wrapkey"), Ok(KeyOperation::WrapKey));
        let e = EncryptionAlgorithm::parse("A256KWP").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("A256KWP") && msg.contains("RSA-OAEP-256"),
            "{msg}"
        );
        for v in EncryptionAlgorithm::ALL {
            assert_eq!(EncryptionAlgorithm::parse(v.as_str()), Ok(*v));
        }
    }
}
