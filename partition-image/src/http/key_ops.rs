//! The Key Vault key operations (sign, verify, encrypt, decrypt, wrap, unwrap) and random
//! bytes: authorise, check the key version is usable, run the operation on its material.

use super::error::ApiError;
use super::keys::{key_not_found, key_scope, key_version, kid};
use super::route::KeyOp;
use super::{Ctx, json_response};
use crate::crypto;
use crate::service::keys::{check_usable, crypto_err, keyring_err};
use axum::http::StatusCode;
use axum::response::Response;
use keystead_core::keys::{
    Base64Url, EncryptionAlgorithm, GetRandomBytesRequest, KeyOperationResult,
    KeyOperationsParameters, KeySignParameters, KeyVerifyParameters, KeyVerifyResult, RandomBytes,
    SignatureAlgorithm,
};
use keystead_core::rbac::DataAction;

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
