//! Key work: names and operations checked, key material generated (RSA off the request
//! workers) and wrapped under the domain into a new version, single-key backup blobs sealed
//! and opened, rotation-policy durations. The HTTP handlers (`http/keys.rs`) call these and
//! shape the answers.

use super::app::App;
use super::error::{Error, Kind};
use crate::crypto::{self, KeyMaterial, KeySpec};
use crate::keyring::KeyringError;
use crate::state::{
    Attributes, AttributesPatch, Command, DeletedKey, KeyRecord, KeyVersion, Outcome,
};
use keystead_core::aead;
use keystead_core::keys::KeyAttributes;
use std::collections::BTreeMap;

pub const KEY_OPS: [&str; 6] = [
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "wrapKey",
    "unwrapKey",
];

pub fn new_version() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Key names: `^[0-9a-zA-Z-]{1,127}$`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name.len() > 127
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(Error::bad_request(format!(
            "invalid key name '{}': use 1-127 characters among 0-9, a-z, A-Z and '-'",
            name.chars().take(130).collect::<String>()
        )));
    }
    Ok(())
}

pub fn crypto_err(e: crypto::CryptoError) -> Error {
    Error::new(Kind::from_status(e.http_status()), e.code(), e.to_string())
}

pub fn keyring_err(e: KeyringError) -> Error {
    match e {
        KeyringError::Sealed => Error::new(Kind::Unavailable, "PartitionSealed", e.to_string()),
        other => Error::internal(other.to_string()),
    }
}

pub fn default_ops(kty: &str) -> Vec<String> {
    let ops: &[&str] = if kty.starts_with("EC") {
        &["sign", "verify"]
    } else if kty.starts_with("oct") {
        &["encrypt", "decrypt", "wrapKey", "unwrapKey"]
    } else {
        &KEY_OPS
    };
    ops.iter().map(|s| s.to_string()).collect()
}

pub fn validate_ops(ops: &[String]) -> Result<(), Error> {
    for op in ops {
        if !KEY_OPS.contains(&op.as_str()) && op != "import" && op != "export" {
            return Err(Error::bad_request(format!(
                "unknown key operation '{op}' in key_ops; allowed: {}",
                KEY_OPS.join(", ")
            )));
        }
    }
    Ok(())
}

pub fn check_exportable(a: Option<&KeyAttributes>) -> Result<(), Error> {
    if a.and_then(|a| a.exportable) == Some(true) {
        return Err(Error::new(
            Kind::BadRequest,
            "NotSupported",
            "exportable keys (secure key release) are not supported: Keystead has no attestation service; create the key with exportable=false",
        ));
    }
    Ok(())
}

pub fn new_attributes(a: Option<&KeyAttributes>, now: i64) -> Attributes {
    Attributes {
        enabled: a.and_then(|a| a.enabled).unwrap_or(true),
        nbf: a.and_then(|a| a.nbf),
        exp: a.and_then(|a| a.exp),
        created: now,
        updated: now,
        exportable: false,
    }
}

/// Generate key material for `spec` (RSA on the bounded blocking pool).
pub async fn generate(app: &App, spec: KeySpec) -> Result<KeyMaterial, Error> {
    app.keygen.key(spec).await.map_err(crypto_err)
}

/// A new version of key `name` holding `material`, wrapped under the domain (not yet
/// committed: [`commit_version`]).
pub fn new_key_version(
    app: &App,
    name: &str,
    material: &KeyMaterial,
    key_ops: Vec<String>,
    attributes: Attributes,
    tags: BTreeMap<String, String>,
) -> Result<KeyVersion, Error> {
    let version = new_version();
    let wrapped = app
        .keyring
        .wrap(name, &version, material)
        .map_err(keyring_err)?;
    let public_jwk = material.public_jwk("", &key_ops);
    Ok(KeyVersion {
        version,
        kty: public_jwk.kty.clone().unwrap_or_default(),
        key_ops,
        public_jwk,
        wrapped,
        attributes,
        tags,
        release_policy: None,
    })
}

/// Commit `version` as the newest version of key `name` (creating the key if needed).
pub async fn commit_version(app: &App, name: &str, version: &KeyVersion) -> Result<(), Error> {
    app.store
        .propose(Command::AddKeyVersion {
            name: name.to_string(),
            version: Box::new(version.clone()),
            must_be_new: false,
        })
        .await?;
    Ok(())
}

/// Change the key operations, attributes or tags of one version of key `name`; the key as
/// it is after the change.
pub async fn update_version(
    app: &App,
    name: &str,
    version: String,
    key_ops: Option<Vec<String>>,
    attributes: Option<AttributesPatch>,
    tags: Option<BTreeMap<String, String>>,
) -> Result<KeyRecord, Error> {
    let out = app
        .store
        .propose(Command::UpdateKeyVersion {
            name: name.to_string(),
            version: Some(version),
            key_ops,
            attributes,
            tags,
            release_policy: None,
            now: super::now(),
        })
        .await?;
    match out {
        Outcome::Key(rec) => Ok(*rec),
        _ => Err(Error::internal("unexpected outcome of an update")),
    }
}

/// Soft-delete key `name` (every partition evicts its material as it applies the delete).
pub async fn delete(app: &App, name: &str) -> Result<DeletedKey, Error> {
    let out = app
        .store
        .propose(Command::DeleteKey {
            name: name.to_string(),
            now: super::now(),
        })
        .await?;
    match out {
        Outcome::Deleted(d) => Ok(*d),
        _ => Err(Error::internal("unexpected outcome of a delete")),
    }
}

/// Recover the soft-deleted key `name`.
pub async fn recover(app: &App, name: &str) -> Result<KeyRecord, Error> {
    let out = app
        .store
        .propose(Command::RecoverKey {
            name: name.to_string(),
        })
        .await?;
    match out {
        Outcome::Key(rec) => Ok(*rec),
        _ => Err(Error::internal("unexpected outcome of a recover")),
    }
}

/// Purge the soft-deleted key `name`.
pub async fn purge(app: &App, name: &str) -> Result<(), Error> {
    app.store
        .propose(Command::PurgeKey {
            name: name.to_string(),
            now: super::now(),
        })
        .await?;
    Ok(())
}

/// Restore a key from its backup record: every version must unwrap under this domain before
/// anything is committed.
pub async fn restore(app: &App, rec: KeyRecord) -> Result<KeyRecord, Error> {
    for v in &rec.versions {
        app.keyring
            .unwrap_uncached(&rec.name, &v.version, &v.wrapped)
            .map_err(|e| Error::bad_request(format!("the backup could not be restored: {e}")))?;
    }
    match app.store.propose(Command::RestoreKey { key: rec }).await? {
        Outcome::Key(rec) => Ok(*rec),
        _ => Err(Error::internal("unexpected outcome of a restore")),
    }
}

/// Store the rotation policy of key `name` (as the client sent it, already checked).
pub async fn set_rotation_policy(
    app: &App,
    name: &str,
    policy: serde_json::Value,
) -> Result<(), Error> {
    app.store
        .propose(Command::SetRotationPolicy {
            name: name.to_string(),
            policy,
            now: super::now(),
        })
        .await?;
    Ok(())
}

/// The material of a new version of key `name` with the same key type and size as its
/// `current` version.
pub async fn rotated_material(
    app: &App,
    name: &str,
    current: &KeyVersion,
) -> Result<KeyMaterial, Error> {
    let spec = app
        .keyring
        .unwrap_uncached(name, &current.version, &current.wrapped)
        .map_err(keyring_err)?
        .spec();
    generate(app, spec).await
}

/// Single-key backup blob: `KSKB1` magic, then the domain fingerprint (so a restore into
/// another pool can name both domains), then the key record sealed under the domain's
/// key-backup key with the fingerprint as AAD.
const BLOB_MAGIC: &[u8] = b"KSKB1";

fn blob_aad(fingerprint: &str) -> Vec<u8> {
    format!("keystead/v1/key-backup|{fingerprint}").into_bytes()
}

/// Why a single-key backup blob cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyBlobError {
    #[error("not a Keystead key backup blob (bad header)")]
    Malformed,
    #[error("the blob failed its integrity check (altered or truncated)")]
    Integrity,
    #[error("the blob's content does not parse")]
    Content,
}

/// Seal `rec` into a single-key backup blob under `key_backup_key` for the domain `fingerprint`.
pub fn seal_key_backup_blob(
    key_backup_key: &[u8; 32],
    fingerprint: &str,
    rec: &KeyRecord,
) -> Result<Vec<u8>, String> {
    let fp_len = u8::try_from(fingerprint.len()).map_err(|_| "fingerprint too long".to_owned())?;
    let body = serde_json::to_vec(rec).map_err(|e| e.to_string())?;
    let sealed =
        aead::seal(key_backup_key, &blob_aad(fingerprint), &body).map_err(|e| e.to_string())?;
    let mut blob = Vec::with_capacity(BLOB_MAGIC.len() + 1 + fingerprint.len() + sealed.len());
    blob.extend_from_slice(BLOB_MAGIC);
    blob.push(fp_len);
    blob.extend_from_slice(fingerprint.as_bytes());
    blob.extend_from_slice(&sealed);
    Ok(blob)
}

/// Split a single-key backup blob into the domain fingerprint it names and its sealed part.
pub fn split_key_backup_blob(blob: &[u8]) -> Result<(&str, &[u8]), KeyBlobError> {
    let rest = blob
        .strip_prefix(BLOB_MAGIC)
        .ok_or(KeyBlobError::Malformed)?;
    let (&fp_len, rest) = rest.split_first().ok_or(KeyBlobError::Malformed)?;
    if rest.len() < fp_len as usize {
        return Err(KeyBlobError::Malformed);
    }
    let (fp, sealed) = rest.split_at(fp_len as usize);
    let fp = std::str::from_utf8(fp).map_err(|_| KeyBlobError::Malformed)?;
    Ok((fp, sealed))
}

/// Open the sealed part of a blob made under `key_backup_key` for the domain `fingerprint`.
pub fn open_key_backup_blob(
    key_backup_key: &[u8; 32],
    fingerprint: &str,
    sealed: &[u8],
) -> Result<KeyRecord, KeyBlobError> {
    let plain = aead::open(key_backup_key, &blob_aad(fingerprint), sealed)
        .map_err(|_| KeyBlobError::Integrity)?;
    serde_json::from_slice(&plain).map_err(|_| KeyBlobError::Content)
}

/// Shortest `expiryTime` of a rotation policy (Key Vault's minimum: 28 days).
pub const MIN_EXPIRY: i64 = 28 * 86_400;
/// Shortest `timeAfterCreate` / `timeBeforeExpiry` of a lifetime action (Key Vault's: 7 days).
pub const MIN_TRIGGER: i64 = 7 * 86_400;
/// Longest rotation-policy duration: 100 years (`P100Y`).
pub const MAX_POLICY_DURATION: i64 = 100 * 365 * 86_400;

pub fn duration_range(min: i64) -> String {
    format!("P{}D to P100Y", min / 86_400)
}

/// A rotation-policy duration in seconds, within `min..=MAX_POLICY_DURATION`; the error
/// names `field` and the allowed range.
pub fn policy_duration(field: &str, value: &str, min: i64) -> Result<i64, Error> {
    match iso8601_duration_secs(value) {
        Some(d) if (min..=MAX_POLICY_DURATION).contains(&d) => Ok(d),
        parsed => {
            let shown: String = value.chars().take(64).collect();
            let what = if parsed.is_some() {
                "is out of range"
            } else {
                "is not an ISO-8601 duration"
            };
            Err(Error::bad_request(format!(
                "{field} '{shown}' {what}: give a duration from {} (e.g. P90D, P2Y, PT12H as long as it is in range)",
                duration_range(min)
            )))
        }
    }
}

/// Parse an ISO-8601 duration such as `P90D`, `P2Y`, `P1M`, `PT12H`, `P1Y2M3DT4H5M6S`
/// (years as 365 days, months as 30 days, as Key Vault does).
pub fn iso8601_duration_secs(s: &str) -> Option<i64> {
    let s = s.strip_prefix('P')?;
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut total: i64 = 0;
    let mut any = false;
    let mut eat = |part: &str, units: &[(char, i64)]| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() {
                num.push(c);
            } else {
                let mult = units.iter().find(|(u, _)| *u == c)?.1;
                let n: i64 = num.parse().ok()?;
                total = total.checked_add(n.checked_mul(mult)?)?;
                num.clear();
                any = true;
            }
        }
        if num.is_empty() { Some(()) } else { None }
    };
    eat(
        date,
        &[
            ('Y', 365 * 86_400),
            ('M', 30 * 86_400),
            ('W', 7 * 86_400),
            ('D', 86_400),
        ],
    )?;
    if let Some(t) = time {
        eat(t, &[('H', 3_600), ('M', 60), ('S', 1)])?;
    }
    any.then_some(total)
}

/// Refuse an operation `op` on version `v` of key `name` that is disabled, not valid yet,
/// expired, or whose `key_ops` do not allow `op`.
pub fn check_usable(name: &str, v: &KeyVersion, op: &str) -> Result<(), Error> {
    let now = super::now();
    if !v.attributes.enabled {
        return Err(Error::new(
            Kind::Forbidden,
            "Forbidden",
            format!(
                "key '{name}' version '{}' is disabled; enable it with PATCH /keys/{name}/{} before using it",
                v.version, v.version
            ),
        ));
    }
    if v.attributes.nbf.is_some_and(|nbf| now < nbf) {
        return Err(Error::new(
            Kind::Forbidden,
            "Forbidden",
            format!("key '{name}' is not valid yet (nbf)"),
        ));
    }
    if v.attributes.exp.is_some_and(|exp| now >= exp) {
        return Err(Error::new(
            Kind::Forbidden,
            "Forbidden",
            format!("key '{name}' has expired (exp); rotate it or update its exp"),
        ));
    }
    if !v.key_ops.iter().any(|o| o == op) {
        return Err(Error::new(
            Kind::Forbidden,
            "Forbidden",
            format!(
                "key '{name}' does not allow the '{op}' operation (its key_ops are [{}]); update key_ops with PATCH",
                v.key_ops.join(", ")
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(iso8601_duration_secs("P90D"), Some(90 * 86_400));
        assert_eq!(iso8601_duration_secs("P2Y"), Some(2 * 365 * 86_400));
        assert_eq!(iso8601_duration_secs("PT12H"), Some(12 * 3_600));
        assert_eq!(iso8601_duration_secs("P1DT1M"), Some(86_400 + 60));
        assert_eq!(iso8601_duration_secs("90D"), None);
        assert_eq!(iso8601_duration_secs("P"), None);
        assert_eq!(iso8601_duration_secs("P1X"), None);
        // Overflow is refused, not wrapped.
        assert_eq!(
            iso8601_duration_secs("PT9223372036854775807S"),
            Some(i64::MAX)
        );
        assert_eq!(iso8601_duration_secs("P9223372036854775807D"), None);
        assert_eq!(iso8601_duration_secs("P99999999999999999999D"), None);
    }

    #[test]
    fn policy_durations_are_bounded() {
        assert_eq!(
            policy_duration("f", "P28D", MIN_EXPIRY).unwrap(),
            28 * 86_400
        );
        assert!(policy_duration("f", "P100Y", MIN_EXPIRY).is_ok());
        for bad in ["P27D", "P101Y", "PT9223372036854775807S", "P1X", ""] {
            let e = policy_duration("attributes.expiryTime", bad, MIN_EXPIRY).unwrap_err();
            assert_eq!(e.kind, Kind::BadRequest);
            assert!(e.message.contains("attributes.expiryTime"), "{e}");
            assert!(e.message.contains("P28D to P100Y"), "{e}");
        }
        assert!(policy_duration("t", "P7D", MIN_TRIGGER).is_ok());
        assert!(policy_duration("t", "P6D", MIN_TRIGGER).is_err());
    }

    #[test]
    fn names() {
        assert!(validate_name("key-1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a_b").is_err());
        assert!(validate_name(&"a".repeat(128)).is_err());
    }
}
