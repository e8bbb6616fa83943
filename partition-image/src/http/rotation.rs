//! Key rotation: `POST /keys/{name}/rotate` and the rotation policy
//! (`GET`/`PUT /keys/{name}/rotationpolicy`).

use super::error::ApiError;
use super::keys::{add_version, key_record, key_scope, key_version};
use super::{Ctx, json_response};
use crate::service::keys::{
    self as service, MIN_EXPIRY, MIN_TRIGGER, duration_range, new_attributes, policy_duration,
};
use crate::service::now;
use axum::http::StatusCode;
use axum::response::Response;
use keystead_core::keys::KeyRotationPolicy;
use keystead_core::rbac::DataAction;

pub async fn rotate(ctx: &mut Ctx, name: &str) -> Result<Response, ApiError> {
    ctx.audit.operation = "KeyRotate";
    ctx.key(name, None);
    ctx.authorize(DataAction::KeysRotate, &key_scope(name))?;
    ctx.require_active()?;
    let rec = key_record(ctx, name)?;
    let current = key_version(&rec, None)?;
    let material = service::rotated_material(&ctx.app, name, &current).await?;
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
    service::set_rotation_policy(&ctx.app, name, value).await?;
    get_rotation_policy(ctx, name)
}
