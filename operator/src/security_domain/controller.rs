//! The SecurityDomain controller: the activation (Download) and recovery (Upload)
//! ceremonies, carried out. It reads what the plan needs, asks `plan` what follows, and does
//! it. The operator only moves encrypted blobs: the domain file encrypted to the custodians,
//! the exchange certificate (public), and the transfer blob encrypted to it.

use super::plan::{self, Ceremony, EXCHANGE_KEY, Outcome, TRANSFER_KEY};
use crate::context::{At, Context, Error, apply_status, namespace_of, now_time, reconciling};
use crate::crd::{
    DownloadSpec, ManagedHsm, SecurityDomain, SecurityDomainMode, SecurityDomainPhase,
};
use crate::pool::client::PoolClient;
use crate::pool::names::FIELD_MANAGER;
use crate::pool::names::Names;
use crate::pool::reach::{ca_bundle, connect};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;

pub const CONTROLLER: &str = "securitydomain";

/// Write the ceremony's status when it changed, with an Event when its phase changed.
async fn write(ctx: &Context, sd: &SecurityDomain, outcome: Outcome) -> Result<Requeue, Error> {
    let Some(status) = outcome.status.filter(|s| sd.status.as_ref() != Some(&**s)) else {
        return Ok(outcome.requeue);
    };
    apply_status(ctx, sd, &status).await?;
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
    Ok(outcome.requeue)
}

pub async fn reconcile(sd: Arc<SecurityDomain>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    reconciling(&ctx, CONTROLLER, &*sd, async {
        let outcome = ceremony(&sd, &ctx).await?;
        write(&ctx, &sd, outcome).await
    })
    .await
}

/// The pool a ceremony runs against, reached at one partition.
struct Reached<'a> {
    ctx: &'a Context,
    hsm: ManagedHsm,
    names: Names,
    ca_pem: String,
    pods: Vec<Option<Pod>>,
    endpoint: String,
}

impl Reached<'_> {
    async fn connect(&self) -> Result<PoolClient, String> {
        connect(
            &self.ctx.tokens,
            &self.hsm,
            &self.names,
            &self.ca_pem,
            &self.pods,
        )
        .await
    }

    /// The fingerprint of the domain the pool reports now (none when it cannot be read).
    async fn fingerprint(&self, pool: &PoolClient) -> Option<String> {
        pool.admin_status(&self.endpoint)
            .await
            .ok()
            .and_then(|a| a.security_domain_fingerprint)
    }
}

async fn ceremony(sd: &SecurityDomain, ctx: &Context) -> Result<Outcome, Error> {
    let ns = namespace_of(sd)?;
    let cer = Ceremony::of(sd, now_time());

    // Dereference the pool.
    let hsm = ctx.hsm(&ns, &cer.pool).await?;
    let hsm = match cer.pool(hsm) {
        Ok(hsm) => hsm,
        Err(stop) => return Ok(stop),
    };
    let names = Names::of(&hsm).at("naming the pool's objects")?;
    let Some(ca_pem) = ca_bundle(&ctx.client, &names)
        .await
        .at(format!("reading the CA bundle {}", names.ca_bundle))?
    else {
        return Ok(cer.no_ca_bundle(&names));
    };
    // The partition it talks to, reached at its pod IP.
    let mut live = Vec::new();
    for p in names.pods(hsm.spec.partitions) {
        live.push(ctx.pod(&ns, &p).await?);
    }
    let endpoint = names.partition_url(&plan::target(&names, &live));
    let pool = Reached {
        ctx,
        hsm,
        names,
        ca_pem,
        pods: live,
        endpoint,
    };
    match sd.spec.mode {
        SecurityDomainMode::Download => match &sd.spec.download {
            Some(dl) => download(sd, &ns, &cer, dl, &pool).await,
            None => Ok(cer.no_download_spec()),
        },
        SecurityDomainMode::Upload => upload(sd, &ns, &cer, &pool).await,
    }
}

async fn download(
    sd: &SecurityDomain,
    ns: &str,
    cer: &Ceremony,
    dl: &DownloadSpec,
    reached: &Reached<'_>,
) -> Result<Outcome, Error> {
    let ctx = reached.ctx;
    let pems: Vec<String> = match (&dl.certificates, &dl.certificates_from) {
        (Some(c), _) => c.clone(),
        (None, Some(r)) => match Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .get_opt(&r.name)
            .await
            .at(format!("reading the custodians' certificates {}", r.name))?
        {
            Some(cm) => cm.data.unwrap_or_default().into_values().collect(),
            None => return Ok(cer.certificates_not_found(&r.name)),
        },
        (None, None) => Vec::new(),
    };
    let custodians = match cer.custodians(dl, &pems) {
        Ok(c) => c,
        Err(refused) => return Ok(refused),
    };
    let domain_secret = cer.domain_secret_name();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let current = Api::<SecurityDomain>::namespaced(ctx.client.clone(), ns)
        .get_opt(&sd.name_any())
        .await
        .at("reading the SecurityDomain's current status")?
        .and_then(|s| s.status)
        .unwrap_or_default();
    if cer.download_finished(&custodians, &current)
        && secrets
            .get_opt(&domain_secret)
            .await
            .at(format!("reading the domain Secret {domain_secret}"))?
            .is_some()
    {
        return Ok(cer.finished());
    }
    let pool = match reached.connect().await {
        Ok(p) => p,
        Err(e) => return Ok(cer.unreachable(&e)),
    };
    let file = match pool
        .download(&reached.endpoint, custodians.jwks.clone(), dl.quorum)
        .await
    {
        Ok(f) => f,
        Err(e) => return Ok(cer.download_failed(&e.to_string())),
    };
    let step = || format!("writing the domain Secret {domain_secret}");
    let secret = plan::domain_secret(&domain_secret, ns, &reached.names.pool, file);
    let mut v = serde_json::to_value(&secret).map_err(|e| Error::internal(step(), e))?;
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Secret");
    secrets
        .patch(
            &domain_secret,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&v),
        )
        .await
        .at(step())?;
    let fingerprint = reached.fingerprint(&pool).await;
    Ok(cer.downloaded(custodians, fingerprint))
}

async fn upload(
    sd: &SecurityDomain,
    ns: &str,
    cer: &Ceremony,
    reached: &Reached<'_>,
) -> Result<Outcome, Error> {
    if cer.upload_finished() {
        return Ok(cer.finished());
    }
    let ctx = reached.ctx;
    let endpoint = &reached.endpoint;
    let pool = match reached.connect().await {
        Ok(p) => p,
        Err(e) => return Ok(cer.unreachable(&e)),
    };
    let exchange_cm = cer.exchange_config_map_name();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let step = || format!("publishing the exchange certificate in {exchange_cm}");
    let cm_exists = cms.get_opt(&exchange_cm).await.at(step())?.is_some();
    if cer.needs_exchange_key(cm_exists) {
        let key = match pool.exchange_key(endpoint).await {
            Ok(k) => k,
            Err(e) => return Ok(cer.exchange_key_failed(&e.to_string())),
        };
        let cert =
            keystead_core::sd::ExchangeCertificate::from_transfer_key_json(&key.transfer_key)
                .map_err(|e| {
                    Error::internal(
                        step(),
                        format!("the pool's exchange key is not usable: {e}"),
                    )
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
        .await
        .at(step())?;
    }
    let blob = match sd
        .spec
        .upload
        .as_ref()
        .and_then(|u| u.transfer_blob_secret.as_ref())
    {
        Some(r) => Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .get_opt(&r.name)
            .await
            .at(format!("reading the transfer blob Secret {}", r.name))?
            .and_then(|s| s.data)
            .and_then(|d| d.get(r.key.as_deref().unwrap_or(TRANSFER_KEY)).cloned())
            .and_then(|b| String::from_utf8(b.0).ok()),
        None => None,
    };
    let Some(blob) = blob else {
        return Ok(cer.waiting_for_blob());
    };
    let uploaded = match pool.upload(endpoint, &blob).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let admin = pool.admin_status(endpoint).await.ok();
            if plan::already_uploaded(admin.as_ref()) {
                tracing::info!(error = %e, "the pool already holds its domain: the upload ceremony is complete");
                Ok(())
            } else {
                Err(e.to_string())
            }
        }
    };
    let result = match uploaded {
        Ok(()) => Ok(reached.fingerprint(&pool).await),
        Err(e) => Err(e),
    };
    Ok(cer.uploaded(result))
}
