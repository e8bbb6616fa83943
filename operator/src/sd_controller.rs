//! The SecurityDomain controller: the activation (Download) and recovery (Upload)
//! ceremonies. The operator only moves encrypted blobs: the domain file encrypted to the
//! custodians, the exchange certificate (public), and the transfer blob encrypted to it.

use crate::children::{FIELD_MANAGER, Names};
use crate::conditions::{self as c};
use crate::controller::{Context, Error, now_time, partition_addresses, pod_ready};
use crate::crd::{
    ManagedHsm, SecurityDomain, SecurityDomainMode, SecurityDomainPhase, SecurityDomainStatus,
};
use crate::pool_client::PoolClient;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use keystead_core::sd::CustodianKey;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CONTROLLER: &str = "securitydomain";
/// Key of the encrypted domain file in the domain Secret.
pub const DOMAIN_KEY: &str = "security-domain.json";
/// Key of the exchange certificate in the exchange ConfigMap.
pub const EXCHANGE_KEY: &str = "exchange.pem";
/// Default key of the transfer blob in the referenced Secret.
pub const TRANSFER_KEY: &str = "transfer.json";

/// The certificates of a Download, with their thumbprints (sorted, for change detection).
#[derive(Debug)]
pub struct Custodians {
    pub jwks: Vec<serde_json::Value>,
    pub thumbprints: Vec<String>,
}

/// Parse the custodians' PEM certificates (pure).
pub fn custodians(pems: &[String]) -> Result<Custodians, String> {
    let mut jwks = Vec::new();
    let mut thumbprints = Vec::new();
    for (i, pem) in pems.iter().enumerate() {
        let key = CustodianKey::from_pem(pem).map_err(|e| format!("certificate {}: {e}", i + 1))?;
        let jwk = key
            .to_jwk()
            .map_err(|e| format!("certificate {}: {e}", i + 1))?;
        jwks.push(serde_json::to_value(jwk).map_err(|e| e.to_string())?);
        thumbprints.push(key.thumbprint().to_string());
    }
    if !(3..=10).contains(&jwks.len()) {
        return Err(format!(
            "{} certificates given; the ceremony needs 3 to 10",
            jwks.len()
        ));
    }
    let mut sorted = thumbprints.clone();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != thumbprints.len() {
        return Err(
            "the same certificate is listed twice; each custodian needs their own key".into(),
        );
    }
    Ok(Custodians {
        jwks,
        thumbprints: sorted,
    })
}

fn cond(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    prev: &[Condition],
    now: &Time,
) -> Condition {
    let ltt = c::find(prev, type_)
        .filter(|p| p.status == status)
        .map(|p| p.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: ltt,
    }
}

/// Status for a phase with its two conditions (`Ready`, `SecurityDomainActivated`).
pub fn status_for(
    prev: &SecurityDomainStatus,
    phase: SecurityDomainPhase,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> SecurityDomainStatus {
    let activated = phase == SecurityDomainPhase::Activated;
    let s = if activated { "True" } else { "False" };
    let mut conditions = vec![
        cond(
            c::READY,
            s,
            reason,
            message,
            generation,
            &prev.conditions,
            now,
        ),
        cond(
            c::SECURITY_DOMAIN_ACTIVATED,
            s,
            reason,
            message,
            generation,
            &prev.conditions,
            now,
        ),
    ];
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    let last_transition_time = if prev.phase.as_ref() == Some(&phase) {
        prev.last_transition_time.clone()
    } else {
        Some(now.clone())
    };
    SecurityDomainStatus {
        phase: Some(phase),
        conditions,
        observed_generation: generation,
        last_transition_time,
        ..prev.clone()
    }
}

async fn write(
    ctx: &Context,
    sd: &SecurityDomain,
    status: SecurityDomainStatus,
) -> Result<bool, Error> {
    if sd.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    let api: Api<SecurityDomain> =
        Api::namespaced(ctx.client.clone(), &sd.namespace().unwrap_or_default());
    let patch =
        json!({"apiVersion": "keystead.io/v1alpha1", "kind": "SecurityDomain", "status": status});
    api.patch_status(
        &sd.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    let ev = Event {
        type_: if status.phase == Some(SecurityDomainPhase::Failed) {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: status
            .conditions
            .first()
            .map(|c| c.reason.clone())
            .unwrap_or_default(),
        note: status.conditions.first().map(|c| c.message.clone()),
        action: "Ceremony".into(),
        secondary: None,
    };
    if sd.status.as_ref().and_then(|s| s.phase.clone()) != status.phase
        && let Err(e) = ctx.recorder.publish(&ev, &sd.object_ref(&())).await
    {
        tracing::warn!(error = %e, "cannot publish an Event");
    }
    Ok(true)
}

pub fn error_policy(sd: Arc<SecurityDomain>, error: &Error, ctx: Arc<Context>) -> Requeue {
    ctx.metrics.failure(CONTROLLER, error.metric_label());
    tracing::warn!(securitydomain = %sd.name_any(), reason = error.metric_label(), error = %error, "reconcile failed");
    Requeue::requeue(Duration::from_secs(15))
}

pub async fn reconcile(sd: Arc<SecurityDomain>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    ctx.metrics.reconcile_started(CONTROLLER);
    let r = reconcile_inner(&sd, &ctx).await;
    ctx.metrics
        .observe_duration(CONTROLLER, started.elapsed().as_secs_f64());
    r
}

async fn reconcile_inner(sd: &SecurityDomain, ctx: &Context) -> Result<Requeue, Error> {
    let ns = sd
        .namespace()
        .ok_or_else(|| Error::Internal("SecurityDomain without namespace".into()))?;
    let now = now_time();
    let generation = sd.metadata.generation;
    let prev = sd.status.clone().unwrap_or_default();
    let waiting = |reason: &str, msg: String| {
        status_for(
            &prev,
            SecurityDomainPhase::Pending,
            reason,
            &msg,
            generation,
            &now,
        )
    };

    // Dereference the pool.
    let hsms: Api<ManagedHsm> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(hsm) = hsms.get_opt(&sd.spec.hsm_ref.name).await? else {
        write(
            ctx,
            sd,
            waiting(
                "PoolNotFound",
                format!(
                    "the ManagedHsm {} does not exist in this namespace",
                    sd.spec.hsm_ref.name
                ),
            ),
        )
        .await?;
        return Ok(Requeue::requeue(Duration::from_secs(30)));
    };
    let pool_ready = hsm
        .status
        .as_ref()
        .is_some_and(|s| s.partitions.iter().filter(|p| p.ready).count() >= 2);
    // A finished ceremony stays finished while the pool's health dips (right after an
    // activation the followers are still loading the domain): going back to Pending would
    // make the next reconcile download the domain again.
    let activated = prev.phase == Some(SecurityDomainPhase::Activated)
        && prev.observed_generation == generation;
    if !pool_ready && activated {
        return Ok(Requeue::requeue(Duration::from_secs(60)));
    }
    if !pool_ready {
        write(
            ctx,
            sd,
            waiting(
                "PoolNotReady",
                format!(
                    "waiting for the partitions of {} to run",
                    sd.spec.hsm_ref.name
                ),
            ),
        )
        .await?;
        return Ok(Requeue::requeue(Duration::from_secs(15)));
    }
    let names = Names::of(&hsm)?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let ca_pem = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&names.ca_bundle)
        .await?
        .and_then(|cm| cm.data)
        .and_then(|d| d.get("ca.crt").cloned());
    let Some(ca_pem) = ca_pem else {
        write(
            ctx,
            sd,
            waiting(
                "PoolNotReady",
                format!("the CA bundle {} does not exist yet", names.ca_bundle),
            ),
        )
        .await?;
        return Ok(Requeue::requeue(Duration::from_secs(15)));
    };
    // The first Ready partition (any partition forwards writes to the Raft leader), reached
    // at its pod IP.
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut live = Vec::new();
    for p in names.pods(hsm.spec.partitions) {
        live.push(pods.get_opt(&p).await?);
    }
    let target = live
        .iter()
        .flatten()
        .find(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .unwrap_or_else(|| format!("{}-0", names.statefulset));
    let endpoint = names.partition_url(&target);
    let addresses = partition_addresses(&names, &live);
    let connect = || async {
        let token = ctx
            .tokens
            .token(&crate::children::pool_audience(&hsm, &names))
            .await
            .map_err(|e| e.to_string())?;
        PoolClient::new(&ca_pem, token, &addresses).map_err(|e| e.to_string())
    };

    match sd.spec.mode {
        SecurityDomainMode::Download => {
            let Some(dl) = &sd.spec.download else {
                write(
                    ctx,
                    sd,
                    status_for(
                        &prev,
                        SecurityDomainPhase::Failed,
                        "InvalidSpec",
                        "mode Download needs spec.download",
                        generation,
                        &now,
                    ),
                )
                .await?;
                return Ok(Requeue::await_change());
            };
            let pems: Vec<String> = match (&dl.certificates, &dl.certificates_from) {
                (Some(c), _) => c.clone(),
                (None, Some(r)) => match Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns)
                    .get_opt(&r.name)
                    .await?
                {
                    Some(cm) => cm.data.unwrap_or_default().into_values().collect(),
                    None => {
                        write(ctx, sd, waiting("CertificatesNotFound", format!("the ConfigMap {} with the custodians' certificates does not exist", r.name))).await?;
                        return Ok(Requeue::requeue(Duration::from_secs(30)));
                    }
                },
                (None, None) => Vec::new(),
            };
            let custodians = match custodians(&pems) {
                Ok(c) if dl.quorum >= 2 && dl.quorum as usize <= c.jwks.len() => c,
                Ok(c) => {
                    let msg = format!(
                        "quorum {} must be between 2 and the number of certificates ({})",
                        dl.quorum,
                        c.jwks.len()
                    );
                    write(
                        ctx,
                        sd,
                        status_for(
                            &prev,
                            SecurityDomainPhase::Failed,
                            "InvalidSpec",
                            &msg,
                            generation,
                            &now,
                        ),
                    )
                    .await?;
                    return Ok(Requeue::await_change());
                }
                Err(msg) => {
                    write(
                        ctx,
                        sd,
                        status_for(
                            &prev,
                            SecurityDomainPhase::Failed,
                            "InvalidCertificates",
                            &msg,
                            generation,
                            &now,
                        ),
                    )
                    .await?;
                    return Ok(Requeue::await_change());
                }
            };
            let domain_secret = format!("{}-domain", sd.name_any());
            let finished = |st: &SecurityDomainStatus| {
                st.phase == Some(SecurityDomainPhase::Activated)
                    && st.wrapping_key_thumbprints == custodians.thumbprints
            };
            // The watch cache may lag behind this controller's own last status write (a
            // reconcile triggered by the domain Secret it just created sees the old status):
            // a download is made only when the API server's current status says it is not
            // done, or every such reconcile would re-split the domain (a re-download).
            let current = Api::<SecurityDomain>::namespaced(ctx.client.clone(), &ns)
                .get_opt(&sd.name_any())
                .await?
                .and_then(|s| s.status)
                .unwrap_or_default();
            let done = (finished(&prev) || finished(&current))
                && secrets.get_opt(&domain_secret).await?.is_some();
            if done {
                return Ok(Requeue::requeue(Duration::from_secs(600)));
            }
            let pool = match connect().await {
                Ok(p) => p,
                Err(e) => {
                    write(ctx, sd, waiting("PoolUnreachable", e)).await?;
                    return Ok(Requeue::requeue(Duration::from_secs(15)));
                }
            };
            let file = match pool
                .download(&endpoint, custodians.jwks.clone(), dl.quorum)
                .await
            {
                Ok(f) => f,
                Err(e) => {
                    write(
                        ctx,
                        sd,
                        status_for(
                            &prev,
                            SecurityDomainPhase::Failed,
                            "DownloadFailed",
                            &e.to_string(),
                            generation,
                            &now,
                        ),
                    )
                    .await?;
                    return Ok(Requeue::requeue(Duration::from_secs(60)));
                }
            };
            // The encrypted domain file; no ownerReference: it must outlive the ceremony object.
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(domain_secret.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(BTreeMap::from([
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            FIELD_MANAGER.to_string(),
                        ),
                        ("keystead.io/pool".to_string(), names.pool.clone()),
                    ])),
                    ..ObjectMeta::default()
                },
                type_: Some("Opaque".into()),
                data: Some(BTreeMap::from([(
                    DOMAIN_KEY.to_string(),
                    ByteString(file.into_bytes()),
                )])),
                ..Secret::default()
            };
            let mut v =
                serde_json::to_value(&secret).map_err(|e| Error::Internal(e.to_string()))?;
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("Secret");
            secrets
                .patch(
                    &domain_secret,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&v),
                )
                .await?;
            let fingerprint = pool
                .admin_status(&endpoint)
                .await
                .ok()
                .and_then(|a| a.security_domain_fingerprint);
            let mut st = status_for(
                &prev,
                SecurityDomainPhase::Activated,
                "Activated",
                "the security domain was downloaded; the encrypted file is in the domain Secret",
                generation,
                &now,
            );
            st.domain_secret = Some(domain_secret);
            st.wrapping_key_thumbprints = custodians.thumbprints;
            st.fingerprint = fingerprint.or(st.fingerprint);
            write(ctx, sd, st).await?;
            Ok(Requeue::requeue(Duration::from_secs(600)))
        }
        SecurityDomainMode::Upload => {
            if prev.phase == Some(SecurityDomainPhase::Activated) {
                return Ok(Requeue::requeue(Duration::from_secs(600)));
            }
            let pool = match connect().await {
                Ok(p) => p,
                Err(e) => {
                    write(ctx, sd, waiting("PoolUnreachable", e)).await?;
                    return Ok(Requeue::requeue(Duration::from_secs(15)));
                }
            };
            let exchange_cm = format!("{}-exchange", sd.name_any());
            let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            if cms.get_opt(&exchange_cm).await?.is_none() || prev.exchange_key_config_map.is_none()
            {
                let key = match pool.exchange_key(&endpoint).await {
                    Ok(k) => k,
                    Err(e) => {
                        write(
                            ctx,
                            sd,
                            status_for(
                                &prev,
                                SecurityDomainPhase::Failed,
                                "ExchangeKeyFailed",
                                &e.to_string(),
                                generation,
                                &now,
                            ),
                        )
                        .await?;
                        return Ok(Requeue::requeue(Duration::from_secs(60)));
                    }
                };
                let cert = keystead_core::sd::ExchangeCertificate::from_transfer_key_json(
                    &key.transfer_key,
                )
                .map_err(|e| {
                    Error::Internal(format!("the pool's exchange key is not usable: {e}"))
                })?;
                let pem_text = pem::encode(&pem::Pem::new(
                    "CERTIFICATE",
                    cert.certificate_der().to_vec(),
                ));
                let cm = json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": exchange_cm, "namespace": ns, "ownerReferences": [sd.controller_owner_ref(&())]},
                    "data": {EXCHANGE_KEY: pem_text, "transfer-key.json": key.transfer_key},
                });
                cms.patch(
                    &exchange_cm,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&cm),
                )
                .await?;
            }
            let blob_ref = sd
                .spec
                .upload
                .as_ref()
                .and_then(|u| u.transfer_blob_secret.clone());
            let blob = match &blob_ref {
                Some(r) => secrets
                    .get_opt(&r.name)
                    .await?
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(r.key.as_deref().unwrap_or(TRANSFER_KEY)).cloned())
                    .and_then(|b| String::from_utf8(b.0).ok()),
                None => None,
            };
            let Some(blob) = blob else {
                let mut st = status_for(
                    &prev,
                    SecurityDomainPhase::WaitingForTransferBlob,
                    "WaitingForTransferBlob",
                    &format!(
                        "the exchange certificate is in ConfigMap {exchange_cm} (key {EXCHANGE_KEY}); run `kubectl hsm sd transfer` offline and reference the result in spec.upload.transferBlobSecret"
                    ),
                    generation,
                    &now,
                );
                st.exchange_key_config_map = Some(exchange_cm);
                write(ctx, sd, st).await?;
                return Ok(Requeue::requeue(Duration::from_secs(30)));
            };
            let uploaded = match pool.upload(&endpoint, &blob).await {
                Ok(()) => Ok(()),
                // The goal is a pool that holds its domain: an upload that repeats an earlier
                // successful one of this ceremony (a reconcile from a stale cache) is refused
                // as "already activated" — that is not a failure.
                Err(e) => match pool.admin_status(&endpoint).await {
                    Ok(a)
                        if a.activation == crate::decide::Activation::Activated
                            && a.domain_loaded == Some(true) =>
                    {
                        tracing::info!(error = %e, "the pool already holds its domain: the upload ceremony is complete");
                        Ok(())
                    }
                    _ => Err(e),
                },
            };
            if let Err(e) = uploaded {
                let mut st = status_for(
                    &prev,
                    SecurityDomainPhase::Failed,
                    "UploadFailed",
                    &e.to_string(),
                    generation,
                    &now,
                );
                st.exchange_key_config_map = Some(exchange_cm);
                write(ctx, sd, st).await?;
                return Ok(Requeue::requeue(Duration::from_secs(60)));
            }
            let fingerprint = pool
                .admin_status(&endpoint)
                .await
                .ok()
                .and_then(|a| a.security_domain_fingerprint);
            let mut st = status_for(
                &prev,
                SecurityDomainPhase::Activated,
                "Activated",
                "the security domain was uploaded; the pool is activated",
                generation,
                &now,
            );
            st.exchange_key_config_map = Some(exchange_cm);
            st.fingerprint = fingerprint.or(st.fingerprint);
            write(ctx, sd, st).await?;
            Ok(Requeue::requeue(Duration::from_secs(600)))
        }
    }
}
