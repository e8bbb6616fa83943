//! The security domain inside the partition: activation by download or by an uploaded
//! transfer blob, the pending exchange key of a recovery, and the handover of the domain
//! between the partitions of a pool (this side asks its peers; `peer/` answers them).

use super::app::App;
use super::error::{Error, Kind};
use crate::config::RedownloadPolicy;
use crate::state::{Activation, Command, DomainRedownload};
use keystead_core::sd::wire::{CertificateInfo, TransferKey};
use keystead_core::sd::{self, DomainSecret, ExchangeCertificate};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// A security-domain input that was rejected.
pub fn sd_err(e: sd::SdError) -> Error {
    Error::bad_request(e.to_string()).with_inner(
        "SecurityDomainInvalid",
        "the security-domain input was rejected",
    )
}

/// `POST /securitydomain/download`: activate a provisioned pool with a new domain, or (if the
/// pool allows it) protect the activated domain again under new custodian keys; the domain
/// file to hand to the caller.
pub async fn download(app: &App, principal: &str, req: &CertificateInfo) -> Result<String, Error> {
    // 3..=10 distinct RSA >= 2048 keys, 2 <= quorum <= n: the format library's own check.
    let (custodians, quorum) = sd::custodians_from_download_request(req).map_err(sd_err)?;
    let n = custodians.len();
    let activation = app.store.read().activation.clone();
    let _guard = app.sd_lock.lock().await;
    match activation {
        Activation::Activated { fingerprint, .. } => {
            // Re-protection: the same domain under new wrapping keys.
            if app.cfg.security_domain_redownload == RedownloadPolicy::Refused {
                return Err(Error::new(
                    Kind::Forbidden,
                    "RedownloadRefused",
                    "this pool refuses to download its activated security domain again (securityDomainRedownload: refused); keep the file made at activation, and to change custodians recover into a pool that allows it",
                ));
            }
            let u = app.keyring.unsealed().ok_or_else(|| {
                Error::new(
                    Kind::Unavailable,
                    "PartitionSealed",
                    "this partition does not hold the security domain; retry on another partition",
                )
            })?;
            if u.fingerprint() != fingerprint {
                return Err(Error::internal(
                    "the partition holds a domain other than the pool's",
                ));
            }
            let file = sd::create_domain_file(&u.secret, &custodians, quorum).map_err(sd_err)?;
            verify_file(&file, &fingerprint, n)?;
            // Recorded pool-wide before the file leaves: a re-download that cannot be
            // recorded is not made (the operator turns the record into a Warning Event).
            let download = DomainRedownload {
                principal: principal.to_string(),
                time: super::now(),
                wrapping_keys: n as u32,
                quorum,
            };
            app.store
                .propose(Command::RecordDomainRedownload { download })
                .await?;
            tracing::warn!(fingerprint = %fingerprint, principal = %principal, wrapping_keys = n, quorum, "security domain downloaded again (re-protected under new custodian keys)");
            Ok(file)
        }
        Activation::RecoveryPending { .. } => Err(Error::conflict(
            "Conflict",
            "the pool is waiting for a security-domain upload (recovery was started with GET /securitydomain/upload); upload the transfer blob made for its exchange key",
        )),
        Activation::Provisioned => {
            replica_region_waits_for_its_primary(app)?;
            let pool = app.store.read().settings.pool_name.clone();
            let secret = DomainSecret::generate(&pool);
            let fingerprint = secret.fingerprint();
            let file = sd::create_domain_file(&secret, &custodians, quorum).map_err(sd_err)?;
            verify_file(&file, &fingerprint, n)?;
            app.activate(secret).await?;
            tracing::info!(fingerprint = %fingerprint, wrapping_keys = n, quorum, "pool activated by security-domain download");
            Ok(file)
        }
    }
}

/// Check what is about to be handed out before the pool commits to it.
fn verify_file(file: &str, fingerprint: &str, n: usize) -> Result<(), Error> {
    let info = sd::inspect_domain_file(file)
        .map_err(|e| Error::internal(format!("the new domain file does not verify: {e}")))?;
    if info.fingerprint != fingerprint || info.shares.len() != n {
        return Err(Error::internal(
            "the new domain file does not match the domain; nothing was changed",
        ));
    }
    Ok(())
}

/// A replica region receives its primary's domain when it joins (docs/regions.md): a domain
/// of its own, downloaded or uploaded, would make it a different pool.
fn replica_region_waits_for_its_primary(app: &App) -> Result<(), Error> {
    match app.regions.link() {
        Some(link) => Err(Error::conflict(
            "RegionReplica",
            format!(
                "this pool is a replica region of '{}': it receives that primary's security domain when it joins (see GET /admin/status, region); no download or upload here",
                link.primary.name
            ),
        )),
        None => Ok(()),
    }
}

/// `GET /securitydomain/upload`: the exchange key custodians build a transfer blob for —
/// starting recovery of a pool that is not activated (or handing out the pending key, here or
/// on a peer), or, for an activated pool whose partitions all lost the domain, a key kept on
/// this partition only.
pub async fn transfer_key(app: &Arc<App>) -> Result<TransferKey, Error> {
    let _guard = app.sd_lock.lock().await;
    let (activation, pool_id) = {
        let st = app.store.read();
        (st.activation.clone(), st.settings.pool_id.clone())
    };
    if let Activation::Activated { fingerprint, .. } = &activation {
        if app.keyring.is_unsealed() {
            return Err(Error::conflict(
                "Conflict",
                format!(
                    "the pool is already activated with security domain {fingerprint} and this partition holds it; recovery is only possible into a pool that is not activated, or one whose partitions all lost the domain"
                ),
            ));
        }
        // Activated, but this partition lacks the domain and could not get it from a peer
        // (every partition restarted with `seal.mode: memoryOnly`): the custodians supply it
        // again. The exchange key stays local; the pool's state does not change.
        let mut slot = app.exchange.lock().await;
        if slot.is_none() {
            let key = app.keygen.exchange_key(&pool_id).await.map_err(sd_err)?;
            *slot = Some(key);
        }
        let key = slot
            .as_ref()
            .ok_or_else(|| Error::internal("no exchange key"))?;
        return Ok(key.transfer_key());
    }
    replica_region_waits_for_its_primary(app)?;
    let mut slot = app.exchange.lock().await;
    let reuse = matches!((&activation, slot.as_ref()),
        (Activation::RecoveryPending { exchange_thumbprint, .. }, Some(k)) if *exchange_thumbprint == k.thumbprint());
    if !reuse
        && let Activation::RecoveryPending {
            exchange_thumbprint,
            ..
        } = &activation
    {
        // Another partition may hold the pending exchange key (a client behind a
        // load-balanced Service reaches any partition): hand out that one rather than
        // replacing it.
        if let Some(k) = find_transfer_key(app, exchange_thumbprint).await {
            return Ok(k);
        }
    }
    if !reuse {
        let key = app.keygen.exchange_key(&pool_id).await.map_err(sd_err)?;
        app.store
            .propose(Command::BeginRecovery {
                exchange_thumbprint: key.thumbprint().to_string(),
                now: super::now(),
            })
            .await?;
        *slot = Some(key);
    }
    let key = slot
        .as_ref()
        .ok_or_else(|| Error::internal("no exchange key"))?;
    Ok(key.transfer_key())
}

/// Open `blob` with this partition's pending exchange key and activate the pool.
/// `Ok(None)`: this partition holds no exchange key (nothing was done).
pub async fn upload_here(app: &Arc<App>, blob: &str) -> Result<Option<String>, Error> {
    let _guard = app.sd_lock.lock().await;
    let (activation, pool_id) = {
        let st = app.store.read();
        (st.activation.clone(), st.settings.pool_id.clone())
    };
    let committed = match &activation {
        Activation::Activated { fingerprint, .. } if app.keyring.is_unsealed() => {
            return Err(Error::conflict(
                "Conflict",
                format!(
                    "the pool is already activated with security domain {fingerprint}; an upload is only possible into a pool that is not activated (or whose partitions all lost the domain)"
                ),
            ));
        }
        Activation::Activated { fingerprint, .. } => Some(fingerprint.clone()),
        _ => None,
    };
    let mut slot = app.exchange.lock().await;
    let Some(key) = slot.as_ref() else {
        return Ok(None);
    };
    if let Some(committed) = committed {
        // Re-supplying the domain of an activated pool: it must be that very domain.
        let secret = key.open_transfer_blob(blob, &pool_id).map_err(sd_err)?;
        let fingerprint = secret.fingerprint();
        if fingerprint != committed {
            return Err(Error::bad_request(format!(
                "the transfer blob holds security domain {fingerprint}, but this pool was activated with {committed}; build the blob from this pool's domain file"
            ))
            .with_inner("SecurityDomainMismatch", "the domain is not this pool's"));
        }
        app.install_domain(secret)
            .map_err(|e| Error::internal(format!("cannot install the domain: {e}")))?;
        *slot = None;
        tracing::info!(fingerprint = %fingerprint, "security domain supplied again to an activated pool; peers fetch it from this partition");
        return Ok(Some(fingerprint));
    }
    let secret = match key.open_transfer_blob(blob, &pool_id) {
        Ok(s) => s,
        Err(e) => {
            *app.upload_status.lock().await = Some(("Failed".into(), e.to_string()));
            return Err(sd_err(e));
        }
    };
    let fingerprint = secret.fingerprint();
    app.activate(secret).await?;
    // Single use: the exchange private key is dropped (and zeroized) now.
    *slot = None;
    *app.upload_status.lock().await = Some(("Success".into(), "The resource is active.".into()));
    Ok(Some(fingerprint))
}

/// This partition's pending exchange key as a transfer key, if it holds the one the pool's
/// state names.
pub async fn local_transfer_key(app: &App) -> Option<TransferKey> {
    let thumbprint = match &app.store.read().activation {
        Activation::RecoveryPending {
            exchange_thumbprint,
            ..
        } => exchange_thumbprint.clone(),
        _ => return None,
    };
    let slot = app.exchange.lock().await;
    slot.as_ref()
        .filter(|k| k.thumbprint() == thumbprint)
        .map(|k| k.transfer_key())
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainRequest {
    /// PEM of the requester's one-time exchange certificate.
    pub exchange_certificate: String,
}

#[derive(Serialize, Deserialize)]
pub struct DomainReply {
    /// The domain sealed to that exchange key (a transfer blob).
    pub blob: String,
}

/// `POST /internal/sd/upload`: a transfer blob for the partition holding the exchange key.
#[derive(Serialize, Deserialize)]
pub struct UploadRequest {
    pub value: String,
}

#[derive(Serialize, Deserialize)]
pub struct UploadReply {
    pub error: Option<UploadError>,
}

#[derive(Serialize, Deserialize)]
pub struct UploadError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

/// The pending exchange key (its thumbprint must be `thumbprint`) from the member that holds it.
pub async fn find_transfer_key(
    app: &Arc<App>,
    thumbprint: &str,
) -> Option<keystead_core::sd::wire::TransferKey> {
    let replica = app.store.replica()?.clone();
    for m in replica.other_members() {
        match replica
            .client
            .get::<keystead_core::sd::wire::TransferKey>(
                &m.url,
                "/internal/sd/transfer-key",
                Duration::from_secs(3),
            )
            .await
        {
            Ok(k) if transfer_key_thumbprint(&k).as_deref() == Some(thumbprint) => return Some(k),
            Ok(_) => {
                tracing::warn!(peer = %m.name, "a peer holds an exchange key the pool does not expect")
            }
            Err(e) => tracing::debug!(peer = %m.name, error = %e, "peer holds no exchange key"),
        }
    }
    None
}

fn transfer_key_thumbprint(k: &keystead_core::sd::wire::TransferKey) -> Option<String> {
    let json = serde_json::to_string(k).ok()?;
    ExchangeCertificate::from_transfer_key_json(&json)
        .ok()
        .map(|c| c.thumbprint().to_string())
}

/// Hand a transfer blob to the member holding the exchange key. `None`: no member holds one.
pub async fn forward_upload(app: &Arc<App>, blob: &str) -> Option<Result<(), Error>> {
    let replica = app.store.replica()?.clone();
    let req = UploadRequest {
        value: blob.to_string(),
    };
    for m in replica.other_members() {
        match replica
            .client
            .post::<_, UploadReply>(&m.url, "/internal/sd/upload", &req, Duration::from_secs(60))
            .await
        {
            Ok(UploadReply { error: None }) => return Some(Ok(())),
            Ok(UploadReply { error: Some(e) }) => {
                return Some(Err(Error::new(
                    Kind::from_status(e.status),
                    &e.code,
                    e.message,
                )));
            }
            Err(e) => tracing::debug!(peer = %m.name, error = %e, "peer did not take the upload"),
        }
    }
    None
}

/// Ask the members for the domain, wrapped to a fresh one-time exchange key of this
/// partition; install it if it is the pool's domain. Returns true once installed.
pub async fn fetch_domain(app: &Arc<App>) -> anyhow::Result<bool> {
    let Some(replica) = app.store.replica().cloned() else {
        return Ok(false);
    };
    let (pool_id, fingerprint) = {
        let s = app.store.read();
        match s.fingerprint() {
            Some(f) => (s.settings.pool_id.clone(), f.to_string()),
            None => return Ok(false),
        }
    };
    let ek = app.keygen.exchange_key(&pool_id).await?;
    let req = DomainRequest {
        exchange_certificate: ek.certificate_pem(),
    };
    for m in replica.other_members() {
        let reply: DomainReply = match replica
            .client
            .post(&m.url, "/internal/domain", &req, Duration::from_secs(5))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %m.name, error = %e, "peer could not hand over the domain");
                continue;
            }
        };
        let secret = match ek.open_transfer_blob(&reply.blob, &pool_id) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %m.name, error = %e, "the domain handed over does not open");
                continue;
            }
        };
        if secret.fingerprint() != fingerprint {
            tracing::warn!(peer = %m.name, "a peer handed over a domain that is not the pool's");
            continue;
        }
        app.install_domain(secret)?;
        tracing::info!(peer = %m.name, fingerprint = %fingerprint, "received the security domain from a peer");
        return Ok(true);
    }
    Ok(false)
}
