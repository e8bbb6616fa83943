//! The pure plan of a SecurityDomain ceremony: every decision of its reconcile, over what the
//! controller observed, as an [`Outcome`] (the status to write and when to look again) or
//! the next step to carry out. Nothing here talks to an API; `operator/tests/sd_plan.rs`
//! tests it without a cluster.
//!
//! The gates, in the order the reconcile meets them: the pool exists and runs
//! ([`Ceremony::pool`]), its CA bundle exists ([`Ceremony::no_ca_bundle`]); then Download
//! (the custodians' certificates → [`Ceremony::custodians`], done already →
//! [`Ceremony::download_finished`], the result → [`Ceremony::downloaded`]) or Upload (done
//! already → [`Ceremony::upload_finished`], the exchange key →
//! [`Ceremony::needs_exchange_key`], the transfer blob → [`Ceremony::waiting_for_blob`],
//! the result → [`Ceremony::uploaded`]).

use crate::conditions as c;
use crate::crd::{
    DownloadSpec, ManagedHsm, SecurityDomain, SecurityDomainPhase, SecurityDomainStatus,
};
use crate::pool::names::FIELD_MANAGER;
use crate::pool::names::Names;
use crate::pool::reach::pod_ready;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use keystead_core::sd::CustodianKey;
use keystead_core::status::{Activation, PoolStatus};
use kube::ResourceExt;
use kube::runtime::controller::Action as Requeue;
use std::collections::BTreeMap;
use std::time::Duration;

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

/// Parse the custodians' PEM certificates.
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
    let mut conditions = [c::READY, c::SECURITY_DOMAIN_ACTIVATED]
        .map(|t| cond(t, s, reason, message, generation, &prev.conditions, now))
        .to_vec();
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

/// What a reconcile ends with: the status to write (written only when it differs from the
/// live one) and when to look again.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub status: Option<Box<SecurityDomainStatus>>,
    pub requeue: Requeue,
}

impl Outcome {
    /// Write nothing; look again.
    pub fn later(requeue: Requeue) -> Self {
        Self {
            status: None,
            requeue,
        }
    }

    fn write(status: SecurityDomainStatus, requeue: Requeue) -> Self {
        Self {
            status: Some(Box::new(status)),
            requeue,
        }
    }
}

fn secs(s: u64) -> Requeue {
    Requeue::requeue(Duration::from_secs(s))
}

/// A finished ceremony is looked at again this often.
const FINISHED: u64 = 600;

/// One reconcile of one SecurityDomain: its previous status, generation and the time.
#[derive(Clone, Debug)]
pub struct Ceremony {
    pub name: String,
    pub pool: String,
    pub prev: SecurityDomainStatus,
    pub generation: Option<i64>,
    pub now: Time,
}

impl Ceremony {
    pub fn of(sd: &SecurityDomain, now: Time) -> Self {
        Self {
            name: sd.name_any(),
            pool: sd.spec.hsm_ref.name.clone(),
            prev: sd.status.clone().unwrap_or_default(),
            generation: sd.metadata.generation,
            now,
        }
    }

    fn status(&self, phase: SecurityDomainPhase, reason: &str, msg: &str) -> SecurityDomainStatus {
        status_for(&self.prev, phase, reason, msg, self.generation, &self.now)
    }

    fn waiting(&self, reason: &str, msg: &str, requeue: Requeue) -> Outcome {
        Outcome::write(
            self.status(SecurityDomainPhase::Pending, reason, msg),
            requeue,
        )
    }

    fn failed(&self, reason: &str, msg: &str, requeue: Requeue) -> Outcome {
        Outcome::write(
            self.status(SecurityDomainPhase::Failed, reason, msg),
            requeue,
        )
    }

    /// The pool gate: the pool when it exists and runs (two Ready partitions).
    pub fn pool(&self, hsm: Option<ManagedHsm>) -> Result<ManagedHsm, Outcome> {
        let Some(hsm) = hsm else {
            let msg = format!(
                "the ManagedHsm {} does not exist in this namespace",
                self.pool
            );
            return Err(self.waiting("PoolNotFound", &msg, secs(30)));
        };
        let pool_ready = hsm
            .status
            .as_ref()
            .is_some_and(|s| s.partitions.iter().filter(|p| p.ready).count() >= 2);
        // A finished ceremony stays finished while the pool's health dips (right after an
        // activation the followers are still loading the domain): going back to Pending would
        // make the next reconcile download the domain again.
        let activated = self.prev.phase == Some(SecurityDomainPhase::Activated)
            && self.prev.observed_generation == self.generation;
        match (pool_ready, activated) {
            (true, _) => Ok(hsm),
            (false, true) => Err(Outcome::later(secs(60))),
            (false, false) => {
                let msg = format!("waiting for the partitions of {} to run", self.pool);
                Err(self.waiting("PoolNotReady", &msg, secs(15)))
            }
        }
    }

    /// The pool's CA bundle does not exist yet.
    pub fn no_ca_bundle(&self, names: &Names) -> Outcome {
        let msg = format!("the CA bundle {} does not exist yet", names.ca_bundle);
        self.waiting("PoolNotReady", &msg, secs(15))
    }

    /// The pool cannot be reached (no token, no client).
    pub fn unreachable(&self, why: &str) -> Outcome {
        self.waiting("PoolUnreachable", why, secs(15))
    }

    // -- Download ------------------------------------------------------------------------

    /// `spec.download` is missing in mode Download.
    pub fn no_download_spec(&self) -> Outcome {
        self.failed(
            "InvalidSpec",
            "mode Download needs spec.download",
            Requeue::await_change(),
        )
    }

    /// The ConfigMap named by `certificatesFrom` does not exist.
    pub fn certificates_not_found(&self, config_map: &str) -> Outcome {
        let msg =
            format!("the ConfigMap {config_map} with the custodians' certificates does not exist");
        self.waiting("CertificatesNotFound", &msg, secs(30))
    }

    /// The custodians of a Download from their certificates (`pems`), or why the spec is
    /// refused until it changes.
    pub fn custodians(&self, dl: &DownloadSpec, pems: &[String]) -> Result<Custodians, Outcome> {
        match custodians(pems) {
            Ok(c) if dl.quorum >= 2 && dl.quorum as usize <= c.jwks.len() => Ok(c),
            Ok(c) => {
                let msg = format!(
                    "quorum {} must be between 2 and the number of certificates ({})",
                    dl.quorum,
                    c.jwks.len()
                );
                Err(self.failed("InvalidSpec", &msg, Requeue::await_change()))
            }
            Err(msg) => Err(self.failed("InvalidCertificates", &msg, Requeue::await_change())),
        }
    }

    /// The Secret that keeps the encrypted domain file.
    pub fn domain_secret_name(&self) -> String {
        format!("{}-domain", self.name)
    }

    /// The download to these custodians is done according to the previous status or the API
    /// server's `current` one. The watch cache may lag behind this controller's own last
    /// status write (a reconcile triggered by the domain Secret it just created sees the old
    /// status): a download is made only when neither says it is done, or every such
    /// reconcile would re-split the domain (a re-download). The domain Secret must exist too.
    pub fn download_finished(
        &self,
        custodians: &Custodians,
        current: &SecurityDomainStatus,
    ) -> bool {
        let finished = |st: &SecurityDomainStatus| {
            st.phase == Some(SecurityDomainPhase::Activated)
                && st.wrapping_key_thumbprints == custodians.thumbprints
        };
        finished(&self.prev) || finished(current)
    }

    /// Nothing left to do for a finished ceremony.
    pub fn finished(&self) -> Outcome {
        Outcome::later(secs(FINISHED))
    }

    pub fn download_failed(&self, why: &str) -> Outcome {
        self.failed("DownloadFailed", why, secs(60))
    }

    /// The domain was downloaded into the domain Secret.
    pub fn downloaded(&self, custodians: Custodians, fingerprint: Option<String>) -> Outcome {
        let mut st = self.status(
            SecurityDomainPhase::Activated,
            "Activated",
            "the security domain was downloaded; the encrypted file is in the domain Secret",
        );
        st.domain_secret = Some(self.domain_secret_name());
        st.wrapping_key_thumbprints = custodians.thumbprints;
        st.fingerprint = fingerprint.or(st.fingerprint);
        Outcome::write(st, secs(FINISHED))
    }

    // -- Upload --------------------------------------------------------------------------

    /// An Upload is finished once activated.
    pub fn upload_finished(&self) -> bool {
        self.prev.phase == Some(SecurityDomainPhase::Activated)
    }

    /// The ConfigMap that publishes the pool's exchange certificate.
    pub fn exchange_config_map_name(&self) -> String {
        format!("{}-exchange", self.name)
    }

    /// The exchange key is fetched (again) unless its ConfigMap exists and the status names it.
    pub fn needs_exchange_key(&self, config_map_exists: bool) -> bool {
        !config_map_exists || self.prev.exchange_key_config_map.is_none()
    }

    pub fn exchange_key_failed(&self, why: &str) -> Outcome {
        self.failed("ExchangeKeyFailed", why, secs(60))
    }

    /// No transfer blob yet: the custodians are told where the exchange certificate is.
    pub fn waiting_for_blob(&self) -> Outcome {
        let cm = self.exchange_config_map_name();
        let mut st = self.status(
            SecurityDomainPhase::WaitingForTransferBlob,
            "WaitingForTransferBlob",
            &format!(
                "the exchange certificate is in ConfigMap {cm} (key {EXCHANGE_KEY}); run `kubectl hsm sd transfer` offline and reference the result in spec.upload.transferBlobSecret"
            ),
        );
        st.exchange_key_config_map = Some(cm);
        Outcome::write(st, secs(30))
    }

    /// The upload's result: `Err` with the pool's refusal, or the fingerprint it reports.
    pub fn uploaded(&self, result: Result<Option<String>, String>) -> Outcome {
        let (mut st, requeue) = match result {
            Err(why) => (
                self.status(SecurityDomainPhase::Failed, "UploadFailed", &why),
                secs(60),
            ),
            Ok(fingerprint) => {
                let mut st = self.status(
                    SecurityDomainPhase::Activated,
                    "Activated",
                    "the security domain was uploaded; the pool is activated",
                );
                st.fingerprint = fingerprint.or(st.fingerprint);
                (st, secs(FINISHED))
            }
        };
        st.exchange_key_config_map = Some(self.exchange_config_map_name());
        Outcome::write(st, requeue)
    }
}

/// The partition a ceremony talks to: the first Ready one that is not going away (any
/// partition forwards writes to the Raft leader), else the first.
pub fn target(names: &Names, pods: &[Option<Pod>]) -> String {
    pods.iter()
        .flatten()
        .find(|p| pod_ready(p) && p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .unwrap_or_else(|| format!("{}-0", names.statefulset))
}

/// A refused upload that repeats an earlier successful one of this ceremony (a reconcile
/// from a stale cache): the pool already holds its domain, so the ceremony is complete.
pub fn already_uploaded(admin: Option<&PoolStatus>) -> bool {
    admin.is_some_and(|a| a.activation == Activation::Activated && a.domain_loaded)
}

/// The Secret with the encrypted domain file; no ownerReference: it must outlive the
/// ceremony object.
pub fn domain_secret(name: &str, namespace: &str, pool: &str, file: String) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    FIELD_MANAGER.to_string(),
                ),
                ("keystead.io/pool".to_string(), pool.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            DOMAIN_KEY.to_string(),
            ByteString(file.into_bytes()),
        )])),
        ..Secret::default()
    }
}
