//! The Key Vault keys API (reference §1).

use super::error::ApiError;
use super::route::KeyOp;
use super::{Ctx, json_response};
use crate::crypto::{self, KeyMaterial, KeySpec};
use crate::state::{
    Attributes, AttributesPatch, Command, DeletedKey, KeyRecord, KeyVersion, Outcome,
};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keystead_core::aead;
use keystead_core::b64;
use keystead_core::keys::{
    BackupKeyResult, Base64Url, DeletedKeyBundle, DeletedKeyItem, EncryptionAlgorithm,
    GetRandomBytesRequest, JsonWebKey, KeyAttributes, KeyBundle, KeyCreateParameters,
    KeyImportParameters, KeyItem, KeyListResult, KeyOperationResult, KeyOperationsParameters,
    KeyRestoreParameters, KeyRotationPolicy, KeySignParameters, KeyUpdateParameters,
    KeyVerifyParameters, KeyVerifyResult, RandomBytes, SignatureAlgorithm,
};
use keystead_core::rbac::DataAction;
use std::collections::BTreeMap;

const MAX_PAGE: usize = 25;
const KEY_OPS: [&str; 6] = [
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "wrapKey",
    "unwrapKey",
];

pub use crate::service::now;

fn new_version() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Key names: `^[0-9a-zA-Z-]{1,127}$`.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > 127
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::bad_request(format!(
            "invalid key name '{}': use 1-127 characters among 0-9, a-z, A-Z and '-'",
            name.chars().take(130).collect::<String>()
        )));
    }
    Ok(())
}

fn crypto_err(e: crypto::CryptoError) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        e.code(),
        e.to_string(),
    )
}

fn keyring_err(e: crate::keyring::KeyringError) -> ApiError {
    match e {
        crate::keyring::KeyringError::Sealed => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "PartitionSealed",
            e.to_string(),
        ),
        other => ApiError::internal(other.to_string()),
    }
}

fn key_scope(name: &str) -> String {
    format!("/keys/{name}")
}

fn recovery_level(ctx: &Ctx) -> (i64, String) {
    let s = ctx.app.store.read().settings.clone();
    let custom = if s.soft_delete_retention_days < 90 {
        "CustomizedRecoverable"
    } else {
        "Recoverable"
    };
    let level = if s.purge_protection {
        custom.to_string()
    } else {
        format!("{custom}+Purgeable")
    };
    (s.soft_delete_retention_days, level)
}

fn attributes(ctx: &Ctx, a: &Attributes) -> KeyAttributes {
    let (days, level) = recovery_level(ctx);
    KeyAttributes {
        enabled: Some(a.enabled),
        nbf: a.nbf,
        exp: a.exp,
        created: Some(a.created),
        updated: Some(a.updated),
        recoverable_days: Some(days as i32),
        recovery_level: Some(level),
        exportable: Some(a.exportable),
        hsm_platform: None,
        attestation: None,
    }
}

fn kid(ctx: &Ctx, name: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{}/keys/{name}/{v}", ctx.base_url),
        None => format!("{}/keys/{name}", ctx.base_url),
    }
}

fn bundle(ctx: &Ctx, name: &str, v: &KeyVersion) -> KeyBundle {
    let mut key: JsonWebKey = v.public_jwk.clone();
    key.kid = Some(kid(ctx, name, Some(&v.version)));
    key.key_ops = Some(v.key_ops.clone());
    key.kty = Some(v.kty.clone());
    KeyBundle {
        key: Some(key),
        attributes: Some(attributes(ctx, &v.attributes)),
        tags: if v.tags.is_empty() {
            None
        } else {
            Some(v.tags.clone())
        },
        managed: None,
        release_policy: None,
    }
}

fn deleted_bundle(ctx: &Ctx, d: &DeletedKey) -> Result<DeletedKeyBundle, ApiError> {
    let latest = d
        .key
        .latest()
        .ok_or_else(|| ApiError::internal("a deleted key has no versions"))?;
    Ok(DeletedKeyBundle {
        bundle: bundle(ctx, &d.key.name, latest),
        recovery_id: Some(recovery_id(ctx, d)),
        scheduled_purge_date: Some(d.scheduled_purge_date),
        deleted_date: Some(d.deleted_date),
    })
}

/// A list entry for key `name` (its `kid` with `version`, or without for key lists).
fn item(ctx: &Ctx, name: &str, version: Option<&str>, v: &KeyVersion) -> KeyItem {
    KeyItem {
        kid: Some(kid(ctx, name, version)),
        attributes: Some(attributes(ctx, &v.attributes)),
        tags: if v.tags.is_empty() {
            None
        } else {
            Some(v.tags.clone())
        },
        managed: None,
    }
}

fn recovery_id(ctx: &Ctx, d: &DeletedKey) -> String {
    format!("{}/deletedkeys/{}", ctx.base_url, d.key.name)
}

fn key_record(ctx: &Ctx, name: &str) -> Result<KeyRecord, ApiError> {
    ctx.app
        .store
        .read()
        .keys
        .get(name)
        .cloned()
        .ok_or_else(|| key_not_found(name))
}

/// One version of a key (the latest when `version` is None), copied out under the state's
/// read lock without copying the key's other versions (the hot path of every key operation).
fn one_version(ctx: &Ctx, name: &str, version: Option<&str>) -> Result<KeyVersion, ApiError> {
    let st = ctx.app.store.read();
    match st.keys.get(name) {
        Some(rec) => key_version(rec, version),
        None => Err(key_not_found(name)),
    }
}

fn key_not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "KeyNotFound",
        format!("A key with (name/id) {name} was not found in this pool; list keys with GET /keys"),
    )
}

fn key_version(rec: &KeyRecord, version: Option<&str>) -> Result<KeyVersion, ApiError> {
    match version {
        None => rec.latest().cloned(),
        Some(v) => rec.version(v).cloned(),
    }
    .ok_or_else(|| {
        ApiError::not_found(
            "KeyNotFound",
            format!(
                "key '{}' has no version '{}'; list its versions with GET /keys/{}/versions",
                rec.name,
                version.unwrap_or(""),
                rec.name
            ),
        )
    })
}

fn default_ops(kty: &str) -> Vec<String> {
    let ops: &[&str] = if kty.starts_with("EC") {
        &["sign", "verify"]
    } else if kty.starts_with("oct") {
        &["encrypt", "decrypt", "wrapKey", "unwrapKey"]
    } else {
        &KEY_OPS
    };
    ops.iter().map(|s| s.to_string()).collect()
}

fn validate_ops(ops: &[String]) -> Result<(), ApiError> {
    for op in ops {
        if !KEY_OPS.contains(&op.as_str()) && op != "import" && op != "export" {
            return Err(ApiError::bad_request(format!(
                "unknown key operation '{op}' in key_ops; allowed: {}",
                KEY_OPS.join(", ")
            )));
        }
    }
    Ok(())
}

fn check_exportable(a: Option<&KeyAttributes>) -> Result<(), ApiError> {
    if a.and_then(|a| a.exportable) == Some(true) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "NotSupported",
            "exportable keys (secure key release) are not supported: Keystead has no attestation service; create the key with exportable=false",
        ));
    }
    Ok(())
}

fn new_attributes(a: Option<&KeyAttributes>, now: i64) -> Attributes {
    Attributes {
        enabled: a.and_then(|a| a.enabled).unwrap_or(true),
        nbf: a.and_then(|a| a.nbf),
        exp: a.and_then(|a| a.exp),
        created: now,
        updated: now,
        exportable: false,
    }
}

async fn add_version(
    ctx: &mut Ctx,
    name: &str,
    material: &KeyMaterial,
    key_ops: Vec<String>,
    attrs: Attributes,
    tags: BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let version = new_version();
    let wrapped = ctx
        .app
        .keyring
        .wrap(name, &version, material)
        .map_err(keyring_err)?;
    let public_jwk = material.public_jwk("", &key_ops);
    let kv = KeyVersion {
        version: version.clone(),
        kty: public_jwk.kty.clone().unwrap_or_default(),
        key_ops,
        public_jwk,
        wrapped,
        attributes: attrs,
        tags,
        release_policy: None,
    };
    ctx.key(name, Some(&version));
    ctx.app
        .store
        .propose(Command::AddKeyVersion {
            name: name.to_string(),
            version: Box::new(kv.clone()),
            must_be_new: false,
        })
        .await?;
    Ok(json_response(StatusCode::OK, &bundle(ctx, name, &kv)))
}

pub async fn create(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyCreate";
    ctx.key(name, None);
    validate_name(name)?;
    ctx.authorize(DataAction::KeysCreate, &key_scope(name))?;
    ctx.require_active()?;
    let p: KeyCreateParameters = ctx.json()?;
    check_exportable(p.attributes.as_ref())?;
    if p.release_policy.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "NotSupported",
            "release policies are not supported (no attestation service); omit release_policy",
        ));
    }
    let spec = KeySpec::from_create(&p).map_err(crypto_err)?;
    let material = ctx.app.keygen.key(spec).await.map_err(crypto_err)?;
    let kty = material.public_jwk("", &[]).kty.unwrap_or_default();
    let ops = match p.key_ops {
        Some(ops) => {
            validate_ops(&ops)?;
            ops
        }
        None => default_ops(&kty),
    };
    let attrs = new_attributes(p.attributes.as_ref(), now());
    add_version(ctx, name, &material, ops, attrs, p.tags.unwrap_or_default()).await
}

pub async fn import(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyImport";
    ctx.key(name, None);
    validate_name(name)?;
    ctx.authorize(DataAction::KeysImport, &key_scope(name))?;
    ctx.require_active()?;
    let p: KeyImportParameters = ctx.json()?;
    check_exportable(p.attributes.as_ref())?;
    let material = KeyMaterial::from_jwk(&p.key).map_err(crypto_err)?;
    let kty = material.public_jwk("", &[]).kty.unwrap_or_default();
    let ops = match p.key.key_ops.clone() {
        Some(ops) if !ops.is_empty() => {
            validate_ops(&ops)?;
            ops
        }
        _ => default_ops(&kty),
    };
    let attrs = new_attributes(p.attributes.as_ref(), now());
    add_version(ctx, name, &material, ops, attrs, p.tags.unwrap_or_default()).await
}

pub fn get(ctx: &mut Ctx, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyGet";
    ctx.key(name, version);
    ctx.authorize(DataAction::KeysRead, &key_scope(name))?;
    ctx.require_active()?;
    let v = one_version(ctx, name, version)?;
    Ok(json_response(StatusCode::OK, &bundle(ctx, name, &v)))
}

pub async fn update(
    ctx: &mut Ctx,
    name: &str,
    version: Option<&str>,
) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyUpdate";
    ctx.key(name, version);
    ctx.authorize(DataAction::KeysWrite, &key_scope(name))?;
    ctx.require_active()?;
    let p: KeyUpdateParameters = ctx.json()?;
    if let Some(ops) = &p.key_ops {
        validate_ops(ops)?;
    }
    check_exportable(p.attributes.as_ref())?;
    let rec = key_record(ctx, name)?;
    let current = key_version(&rec, version)?;
    let out = ctx
        .app
        .store
        .propose(Command::UpdateKeyVersion {
            name: name.to_string(),
            version: Some(current.version.clone()),
            key_ops: p.key_ops,
            attributes: p.attributes.map(|a| AttributesPatch {
                enabled: a.enabled,
                nbf: a.nbf,
                exp: a.exp,
            }),
            tags: p.tags,
            release_policy: None,
            now: now(),
        })
        .await?;
    let Outcome::Key(rec) = out else {
        return Err(ApiError::internal("unexpected outcome of an update"));
    };
    let v = key_version(&rec, Some(&current.version))?;
    Ok(json_response(StatusCode::OK, &bundle(ctx, name, &v)))
}

fn page_params(ctx: &Ctx) -> Result<(usize, Option<String>), ApiError> {
    let max = match ctx.query("maxresults") {
        None => MAX_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "maxresults must be an integer from 1 to {MAX_PAGE}, got '{s}'"
                )));
            }
        },
    };
    let skip = match ctx.query("$skiptoken") {
        None => None,
        Some(t) => Some(
            b64::decode_url(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::bad_request("$skiptoken is not a token this pool issued; start the listing again without it"))?,
        ),
    };
    Ok((max, skip))
}

fn next_link(ctx: &Ctx, path: &str, last: &str, max: usize) -> String {
    format!(
        "{}{path}?api-version={}&$skiptoken={}&maxresults={max}",
        ctx.base_url,
        ctx.query("api-version").unwrap_or("7.5"),
        b64::encode_url(last.as_bytes())
    )
}

/// Page over `items` (sorted by key), returning the page and the nextLink.
fn paginate<T: Clone>(
    ctx: &Ctx,
    path: &str,
    items: Vec<(String, T)>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let (max, skip) = page_params(ctx)?;
    let rest: Vec<(String, T)> = items
        .into_iter()
        .filter(|(k, _)| skip.as_ref().is_none_or(|s| k > s))
        .collect();
    let more = rest.len() > max;
    let page: Vec<(String, T)> = rest.into_iter().take(max).collect();
    let link = link_after(ctx, path, &page, more, max);
    Ok((page.into_iter().map(|(_, t)| t).collect(), link))
}

/// One page of a name-ordered map after the skip token: at most `max` entries, cloned out so
/// the state lock is not held while the page is rendered, and whether more follow.
fn page_of<V: Clone>(
    map: &std::collections::BTreeMap<String, V>,
    skip: Option<&String>,
    max: usize,
) -> (Vec<(String, V)>, bool) {
    use std::ops::Bound;
    let start = skip.map_or(Bound::Unbounded, Bound::Excluded);
    let mut page: Vec<(String, V)> = map
        .range::<String, _>((start, Bound::Unbounded))
        .take(max + 1)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let more = page.len() > max;
    page.truncate(max);
    (page, more)
}

fn link_after<T>(
    ctx: &Ctx,
    path: &str,
    page: &[(String, T)],
    more: bool,
    max: usize,
) -> Option<String> {
    if more {
        page.last().map(|(k, _)| next_link(ctx, path, k, max))
    } else {
        None
    }
}

pub fn list(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyList";
    ctx.authorize(DataAction::KeysRead, "/keys")?;
    ctx.require_active()?;
    let (max, skip) = page_params(ctx)?;
    let (page, more) = page_of(&ctx.app.store.read().keys, skip.as_ref(), max);
    let next_link = link_after(ctx, "/keys", &page, more, max);
    let value: Vec<KeyItem> = page
        .iter()
        .filter_map(|(name, rec)| rec.latest().map(|v| item(ctx, name, None, v)))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &KeyListResult { value, next_link },
    ))
}

pub fn list_versions(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyListVersions";
    ctx.key(name, None);
    ctx.authorize(DataAction::KeysRead, &key_scope(name))?;
    ctx.require_active()?;
    let rec = key_record(ctx, name)?;
    // Versions listed in creation order; the skip token is a zero-padded position.
    let items: Vec<(String, KeyItem)> = rec
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("{i:010}"), item(ctx, name, Some(&v.version), v)))
        .collect();
    let (value, next_link) = paginate(ctx, &format!("/keys/{name}/versions"), items)?;
    Ok(json_response(
        StatusCode::OK,
        &KeyListResult { value, next_link },
    ))
}

pub async fn delete(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyDelete";
    ctx.key(name, None);
    ctx.authorize(DataAction::KeysDelete, &key_scope(name))?;
    ctx.require_active()?;
    let out = ctx
        .app
        .store
        .propose(Command::DeleteKey {
            name: name.to_string(),
            now: now(),
        })
        .await?;
    // Every partition evicts the key's material as it applies the delete (Keyring::forget).
    let Outcome::Deleted(d) = out else {
        return Err(ApiError::internal("unexpected outcome of a delete"));
    };
    Ok(json_response(StatusCode::OK, &deleted_bundle(ctx, &d)?))
}

fn deleted_record(ctx: &Ctx, name: &str) -> Result<DeletedKey, ApiError> {
    ctx.app
        .store
        .read()
        .deleted
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found("KeyNotFound", format!("Deleted Key not found: {name}")))
}

pub fn get_deleted(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "DeletedKeyGet";
    ctx.key(name, None);
    ctx.authorize(DataAction::DeletedKeysRead, &key_scope(name))?;
    ctx.require_active()?;
    let d = deleted_record(ctx, name)?;
    Ok(json_response(StatusCode::OK, &deleted_bundle(ctx, &d)?))
}

pub fn list_deleted(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "DeletedKeyList";
    ctx.authorize(DataAction::DeletedKeysRead, "/keys")?;
    ctx.require_active()?;
    let (max, skip) = page_params(ctx)?;
    let (page, more) = page_of(&ctx.app.store.read().deleted, skip.as_ref(), max);
    let next_link = link_after(ctx, "/deletedkeys", &page, more, max);
    let value: Vec<DeletedKeyItem> = page
        .iter()
        .filter_map(|(name, d)| {
            d.key.latest().map(|v| DeletedKeyItem {
                item: item(ctx, name, None, v),
                recovery_id: Some(recovery_id(ctx, d)),
                scheduled_purge_date: Some(d.scheduled_purge_date),
                deleted_date: Some(d.deleted_date),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &KeyListResult { value, next_link },
    ))
}

pub async fn recover(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "DeletedKeyRecover";
    ctx.key(name, None);
    ctx.authorize(DataAction::DeletedKeysRecover, &key_scope(name))?;
    ctx.require_active()?;
    let out = ctx
        .app
        .store
        .propose(Command::RecoverKey {
            name: name.to_string(),
        })
        .await?;
    let Outcome::Key(rec) = out else {
        return Err(ApiError::internal("unexpected outcome of a recover"));
    };
    let v = key_version(&rec, None)?;
    Ok(json_response(StatusCode::OK, &bundle(ctx, name, &v)))
}

pub async fn purge(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "DeletedKeyPurge";
    ctx.key(name, None);
    ctx.authorize(DataAction::DeletedKeysDelete, &key_scope(name))?;
    ctx.require_active()?;
    ctx.app
        .store
        .propose(Command::PurgeKey {
            name: name.to_string(),
            now: now(),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
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

pub fn backup(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyBackup";
    ctx.key(name, None);
    ctx.authorize(DataAction::KeysBackup, &key_scope(name))?;
    ctx.require_active()?;
    let rec = key_record(ctx, name)?;
    let u = ctx
        .app
        .keyring
        .unsealed()
        .ok_or_else(|| keyring_err(crate::keyring::KeyringError::Sealed))?;
    let blob = seal_key_backup_blob(u.key_backup_key(), &u.fingerprint(), &rec)
        .map_err(ApiError::internal)?;
    Ok(json_response(
        StatusCode::OK,
        &BackupKeyResult {
            value: Base64Url(blob),
        },
    ))
}

pub async fn restore(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyRestore";
    ctx.authorize(DataAction::KeysRestore, "/keys")?;
    ctx.require_active()?;
    let p: KeyRestoreParameters = ctx.json()?;
    let (fp, sealed) = split_key_backup_blob(p.value.as_bytes()).map_err(|_| {
        ApiError::bad_request(
            "the value is not a Keystead key backup blob (bad header); pass the value returned by POST /keys/{name}/backup unchanged",
        )
    })?;
    let u = ctx
        .app
        .keyring
        .unsealed()
        .ok_or_else(|| keyring_err(crate::keyring::KeyringError::Sealed))?;
    let ours = u.fingerprint();
    if fp != ours {
        return Err(ApiError::bad_request(format!(
            "this key backup belongs to security domain {fp}, but this pool holds security domain {ours}; a key backup restores only into a pool with the same security domain"
        ))
        .with_inner("SecurityDomainMismatch", "the backup was made under another security domain"));
    }
    let rec = open_key_backup_blob(u.key_backup_key(), fp, sealed).map_err(|e| match e {
        KeyBlobError::Content => ApiError::bad_request(
            "the key backup blob's content does not parse; nothing was restored",
        ),
        _ => ApiError::bad_request("the key backup blob failed its integrity check: it was altered or truncated; nothing was restored")
            .with_inner("BackupIntegrity", "tampered blob"),
    })?;
    validate_name(&rec.name)?;
    ctx.key(&rec.name, None);
    // Every version must unwrap under this domain before anything is committed.
    for v in &rec.versions {
        ctx.app
            .keyring
            .unwrap_uncached(&rec.name, &v.version, &v.wrapped)
            .map_err(|e| ApiError::bad_request(format!("the backup could not be restored: {e}")))?;
    }
    let out = ctx
        .app
        .store
        .propose(Command::RestoreKey { key: rec })
        .await?;
    let Outcome::Key(rec) = out else {
        return Err(ApiError::internal("unexpected outcome of a restore"));
    };
    let v = key_version(&rec, None)?;
    Ok(json_response(StatusCode::OK, &bundle(ctx, &rec.name, &v)))
}

pub async fn rotate(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyRotate";
    ctx.key(name, None);
    ctx.authorize(DataAction::KeysRotate, &key_scope(name))?;
    ctx.require_active()?;
    let rec = key_record(ctx, name)?;
    let current = key_version(&rec, None)?;
    let spec = ctx
        .app
        .keyring
        .unwrap_uncached(name, &current.version, &current.wrapped)
        .map_err(keyring_err)?
        .spec();
    let material = ctx.app.keygen.key(spec).await.map_err(crypto_err)?;
    let now = now();
    let mut attrs = new_attributes(None, now);
    if let Some(expiry) = rec
        .rotation_policy
        .as_ref()
        .and_then(|p| p.policy.get("attributes"))
        .and_then(|a| a.get("expiryTime"))
        .and_then(|e| e.as_str())
    {
        // Checked when the policy was set; a policy stored before that check may be out
        // of range, and is refused here rather than giving a wrong or overflowing `exp`.
        let exp = policy_duration("attributes.expiryTime", expiry, MIN_EXPIRY)
            .ok()
            .and_then(|d| now.checked_add(d))
            .ok_or_else(|| {
                ApiError::conflict(
                    "Conflict",
                    format!(
                        "key '{name}' has a rotation policy whose attributes.expiryTime '{expiry}' is outside {}; set a valid policy with PUT /keys/{name}/rotationpolicy and rotate again",
                        duration_range(MIN_EXPIRY)
                    ),
                )
            })?;
        attrs.exp = Some(exp);
    }
    add_version(
        ctx,
        name,
        &material,
        current.key_ops.clone(),
        attrs,
        current.tags.clone(),
    )
    .await
}

/// Shortest `expiryTime` of a rotation policy (Key Vault's minimum: 28 days).
const MIN_EXPIRY: i64 = 28 * 86_400;
/// Shortest `timeAfterCreate` / `timeBeforeExpiry` of a lifetime action (Key Vault's: 7 days).
const MIN_TRIGGER: i64 = 7 * 86_400;
/// Longest rotation-policy duration: 100 years (`P100Y`).
const MAX_POLICY_DURATION: i64 = 100 * 365 * 86_400;

fn duration_range(min: i64) -> String {
    format!("P{}D to P100Y", min / 86_400)
}

/// A rotation-policy duration in seconds, within `min..=MAX_POLICY_DURATION`; the error
/// names `field` and the allowed range.
fn policy_duration(field: &str, value: &str, min: i64) -> Result<i64, ApiError> {
    match iso8601_duration_secs(value) {
        Some(d) if (min..=MAX_POLICY_DURATION).contains(&d) => Ok(d),
        parsed => {
            let shown: String = value.chars().take(64).collect();
            let what = if parsed.is_some() {
                "is out of range"
            } else {
                "is not an ISO-8601 duration"
            };
            Err(ApiError::bad_request(format!(
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

fn policy_id(ctx: &Ctx, name: &str) -> String {
    format!("{}/keys/{name}/rotationpolicy", ctx.base_url)
}

pub fn get_rotation_policy(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyGetRotationPolicy";
    ctx.key(name, None);
    ctx.authorize(DataAction::KeysRead, &key_scope(name))?;
    ctx.require_active()?;
    let rec = key_record(ctx, name)?;
    let body = match &rec.rotation_policy {
        Some(p) => {
            let mut policy: KeyRotationPolicy = serde_json::from_value(p.policy.clone())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            policy.id = Some(policy_id(ctx, name));
            let attrs = policy.attributes.get_or_insert_with(Default::default);
            attrs.created = Some(p.created);
            attrs.updated = Some(p.updated);
            policy
        }
        None => {
            // Key Vault's default: notify 30 days before expiry, no automatic rotation.
            serde_json::from_value(serde_json::json!({
                "id": policy_id(ctx, name),
                "lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}],
                "attributes": {}
            }))
            .map_err(|e| ApiError::internal(e.to_string()))?
        }
    };
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn set_rotation_policy(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeySetRotationPolicy";
    ctx.key(name, None);
    ctx.authorize(DataAction::KeysWrite, &key_scope(name))?;
    ctx.require_active()?;
    let mut policy: KeyRotationPolicy = ctx.json()?;
    for (i, a) in policy.lifetime_actions.iter().flatten().enumerate() {
        let trig = a.trigger.as_ref();
        let after = trig.and_then(|t| t.time_after_create.as_deref());
        let before = trig.and_then(|t| t.time_before_expiry.as_deref());
        match (after, before) {
            (Some(d), None) => {
                let field = format!("lifetimeActions[{i}].trigger.timeAfterCreate");
                policy_duration(&field, d, MIN_TRIGGER)?;
            }
            (None, Some(d)) => {
                let field = format!("lifetimeActions[{i}].trigger.timeBeforeExpiry");
                policy_duration(&field, d, MIN_TRIGGER)?;
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "lifetimeActions[{i}] needs exactly one trigger: timeAfterCreate or timeBeforeExpiry"
                )));
            }
        }
        let ty = a
            .action
            .as_ref()
            .and_then(|x| x.r#type.as_deref())
            .unwrap_or("");
        if !ty.eq_ignore_ascii_case("rotate") && !ty.eq_ignore_ascii_case("notify") {
            return Err(ApiError::bad_request(format!(
                "lifetime action type '{ty}' is not valid: use Rotate or Notify"
            )));
        }
    }
    if let Some(e) = policy
        .attributes
        .as_ref()
        .and_then(|a| a.expiry_time.as_deref())
    {
        policy_duration("attributes.expiryTime", e, MIN_EXPIRY)?;
    }
    policy.id = None;
    let value = serde_json::to_value(&policy).map_err(|e| ApiError::internal(e.to_string()))?;
    ctx.app
        .store
        .propose(Command::SetRotationPolicy {
            name: name.to_string(),
            policy: value,
            now: now(),
        })
        .await?;
    get_rotation_policy(ctx, name)
}

fn check_usable(name: &str, v: &KeyVersion, op: &str) -> Result<(), ApiError> {
    let now = now();
    if !v.attributes.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "key '{name}' version '{}' is disabled; enable it with PATCH /keys/{name}/{} before using it",
                v.version, v.version
            ),
        ));
    }
    if v.attributes.nbf.is_some_and(|nbf| now < nbf) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("key '{name}' is not valid yet (nbf)"),
        ));
    }
    if v.attributes.exp.is_some_and(|exp| now >= exp) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("key '{name}' has expired (exp); rotate it or update its exp"),
        ));
    }
    if !v.key_ops.iter().any(|o| o == op) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "key '{name}' does not allow the '{op}' operation (its key_ops are [{}]); update key_ops with PATCH",
                v.key_ops.join(", ")
            ),
        ));
    }
    Ok(())
}

pub fn operation(
    ctx: &mut Ctx,
    name: &str,
    version: Option<&str>,
    op: KeyOp,
) -> Result<Response, ApiError> {
    let (operation, action, op_name) = match op {
        KeyOp::Encrypt => ("KeyEncrypt", DataAction::KeysEncrypt, "encrypt"),
        KeyOp::Decrypt => ("KeyDecrypt", DataAction::KeysDecrypt, "decrypt"),
        KeyOp::WrapKey => ("KeyWrap", DataAction::KeysWrap, "wrapKey"),
        KeyOp::UnwrapKey => ("KeyUnwrap", DataAction::KeysUnwrap, "unwrapKey"),
        KeyOp::Sign => ("KeySign", DataAction::KeysSign, "sign"),
        KeyOp::Verify => ("KeyVerify", DataAction::KeysVerify, "verify"),
        KeyOp::Release => ("KeyRelease", DataAction::KeysRelease, "release"),
    };
    ctx.audit.operation = operation;
    ctx.key(name, version);
    ctx.authorize(action, &key_scope(name))?;
    if op == KeyOp::Release {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotSupported",
            "secure key release is not supported (Keystead has no attestation service); see docs/compatibility.md",
        ));
    }
    ctx.require_active()?;
    // The version and its material under one read lock of the state: a delete or purge
    // applied meanwhile cannot leave the material cached (Keyring::load).
    let app = ctx.app.clone();
    let (v, key) = {
        let st = app.store.read();
        let rec = st.keys.get(name).ok_or_else(|| key_not_found(name))?;
        let v = key_version(rec, version)?;
        ctx.key(name, Some(&v.version));
        check_usable(name, &v, op_name)?;
        let key = app
            .keyring
            .load(name, &v.version, &v.wrapped)
            .map_err(keyring_err)?;
        (v, key)
    };
    let kid = kid(ctx, name, Some(&v.version));
    let result = |value: Vec<u8>| KeyOperationResult {
        kid: Some(kid.clone()),
        value: Some(Base64Url(value)),
        iv: None,
        tag: None,
        aad: None,
    };
    let enc_alg = |alg: &str| EncryptionAlgorithm::parse(alg).map_err(|e| crypto_err(e.into()));
    match op {
        KeyOp::Sign => {
            let p: KeySignParameters = ctx.json()?;
            let alg = SignatureAlgorithm::parse(&p.alg).map_err(|e| crypto_err(e.into()))?;
            let sig = key.sign(alg, &p.value.0).map_err(crypto_err)?;
            Ok(json_response(StatusCode::OK, &result(sig)))
        }
        KeyOp::Verify => {
            let p: KeyVerifyParameters = ctx.json()?;
            let alg = SignatureAlgorithm::parse(&p.alg).map_err(|e| crypto_err(e.into()))?;
            let ok = key
                .verify(alg, &p.digest.0, &p.value.0)
                .map_err(crypto_err)?;
            Ok(json_response(
                StatusCode::OK,
                &KeyVerifyResult { value: ok },
            ))
        }
        KeyOp::Encrypt => {
            let p: KeyOperationsParameters = ctx.json()?;
            let out = key
                .encrypt(
                    enc_alg(&p.alg)?,
                    &p.value.0,
                    p.iv.as_ref().map(|v| &v.0[..]),
                    p.aad.as_ref().map(|v| &v.0[..]),
                )
                .map_err(crypto_err)?;
            Ok(json_response(
                StatusCode::OK,
                &KeyOperationResult {
                    kid: Some(kid.clone()),
                    value: Some(Base64Url(out.value)),
                    iv: out.iv.map(Base64Url),
                    tag: out.tag.map(Base64Url),
                    aad: out.aad.map(Base64Url),
                },
            ))
        }
        KeyOp::Decrypt => {
            let p: KeyOperationsParameters = ctx.json()?;
            let pt = key
                .decrypt(
                    enc_alg(&p.alg)?,
                    &p.value.0,
                    p.iv.as_ref().map(|v| &v.0[..]),
                    p.aad.as_ref().map(|v| &v.0[..]),
                    p.tag.as_ref().map(|v| &v.0[..]),
                )
                .map_err(crypto_err)?;
            Ok(json_response(StatusCode::OK, &result(pt.to_vec())))
        }
        KeyOp::WrapKey => {
            let p: KeyOperationsParameters = ctx.json()?;
            let w = key
                .wrap_key(enc_alg(&p.alg)?, &p.value.0)
                .map_err(crypto_err)?;
            Ok(json_response(StatusCode::OK, &result(w)))
        }
        KeyOp::UnwrapKey => {
            let p: KeyOperationsParameters = ctx.json()?;
            let k = key
                .unwrap_key(enc_alg(&p.alg)?, &p.value.0)
                .map_err(crypto_err)?;
            Ok(json_response(StatusCode::OK, &result(k.to_vec())))
        }
        KeyOp::Release => Err(ApiError::internal("release is refused above")),
    }
}

pub fn random(ctx: &mut Ctx) -> Result<Response, ApiError> {
    ctx.audit.operation = "GetRandomBytes";
    ctx.authorize(DataAction::Rng, "/")?;
    ctx.require_active()?;
    let p: GetRandomBytesRequest = ctx.json()?;
    let bytes = crypto::random_bytes(p.count as usize).map_err(crypto_err)?;
    Ok(json_response(
        StatusCode::OK,
        &RandomBytes {
            value: Base64Url(bytes),
        },
    ))
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
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
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
