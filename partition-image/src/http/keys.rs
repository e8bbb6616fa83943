//! The Key Vault keys API (reference §1).

use super::error::ApiError;
use super::{Ctx, json_response};
use crate::crypto::{KeyMaterial, KeySpec};
use crate::service::keys::validate_name;
use crate::service::keys::{
    self as service, KeyBlobError, check_exportable, crypto_err, default_ops, keyring_err,
    new_attributes, open_key_backup_blob, seal_key_backup_blob, split_key_backup_blob,
    validate_ops,
};
use crate::service::now;
use crate::state::{Attributes, AttributesPatch, DeletedKey, KeyRecord, KeyVersion};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keystead_core::b64;
use keystead_core::keys::{
    BackupKeyResult, Base64Url, DeletedKeyBundle, DeletedKeyItem, JsonWebKey, KeyAttributes,
    KeyBundle, KeyCreateParameters, KeyImportParameters, KeyItem, KeyListResult,
    KeyRestoreParameters, KeyUpdateParameters,
};
use keystead_core::rbac::DataAction;
use std::collections::BTreeMap;

const MAX_PAGE: usize = 25;
pub(super) fn key_scope(name: &str) -> String {
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

pub(super) fn kid(ctx: &Ctx, name: &str, version: Option<&str>) -> String {
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

pub(super) fn key_record(ctx: &Ctx, name: &str) -> Result<KeyRecord, ApiError> {
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

pub(super) fn key_not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "KeyNotFound",
        format!("A key with (name/id) {name} was not found in this pool; list keys with GET /keys"),
    )
}

pub(super) fn key_version(rec: &KeyRecord, version: Option<&str>) -> Result<KeyVersion, ApiError> {
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

/// Wrap `material` into a new version of key `name`, commit it, answer its bundle.
pub(super) async fn add_version(
    ctx: &mut Ctx,
    name: &str,
    material: &KeyMaterial,
    key_ops: Vec<String>,
    attrs: Attributes,
    tags: BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let kv = service::new_key_version(&ctx.app, name, material, key_ops, attrs, tags)?;
    ctx.key(name, Some(&kv.version));
    service::commit_version(&ctx.app, name, &kv).await?;
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
    let material = service::generate(&ctx.app, spec).await?;
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
    let patch = p.attributes.map(|a| AttributesPatch {
        enabled: a.enabled,
        nbf: a.nbf,
        exp: a.exp,
    });
    let rec = service::update_version(
        &ctx.app,
        name,
        current.version.clone(),
        p.key_ops,
        patch,
        p.tags,
    )
    .await?;
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
    map: &imbl::OrdMap<String, V>,
    skip: Option<&String>,
    max: usize,
) -> (Vec<(String, V)>, bool) {
    use std::ops::Bound;
    let start: Bound<&String> = skip.map_or(Bound::Unbounded, Bound::Excluded);
    let mut page: Vec<(String, V)> = map
        .range::<_, String>((start, Bound::Unbounded))
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
    // Every partition evicts the key's material as it applies the delete (Keyring::forget).
    let d = service::delete(&ctx.app, name).await?;
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
    let rec = service::recover(&ctx.app, name).await?;
    let v = key_version(&rec, None)?;
    Ok(json_response(StatusCode::OK, &bundle(ctx, name, &v)))
}

pub async fn purge(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "DeletedKeyPurge";
    ctx.key(name, None);
    ctx.authorize(DataAction::DeletedKeysDelete, &key_scope(name))?;
    ctx.require_active()?;
    service::purge(&ctx.app, name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
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
    let rec = service::restore(&ctx.app, rec).await?;
    let v = key_version(&rec, None)?;
    Ok(json_response(StatusCode::OK, &bundle(ctx, &rec.name, &v)))
}
