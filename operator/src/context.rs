//! What every controller shares: the [`Context`] (client, Event recorder, metrics, the
//! operator's [`Settings`], its token source, the watch caches and the reads through them), the [`Error`] of a reconcile (the step that
//! failed and why), and the steps every controller takes the same way: the reconcile span
//! with its metrics, status writes, Events and the requeue after a failure.

use crate::cache::{self, Caches};
use crate::crd::{Backup, BackupSchedule, ManagedHsm};
use crate::metrics::Metrics;
use crate::pool::client::TokenSource;
use crate::pool::names::{BuildError, FIELD_MANAGER};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::borrow::Cow;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// What the operator knows about its own environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The operator's own principal (`system:serviceaccount:<ns>:<sa>`), added to every
    /// pool's initial administrators so it can run the security-domain ceremony.
    pub operator_principal: Option<String>,
    /// Cluster DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// Issuer of this cluster's service-account tokens.
    pub service_account_issuer: String,
    /// Backup destinations may name loopback object stores (`--allow-loopback-storage-endpoints`;
    /// development and tests only), in the partitions and in the operator's own deletes.
    pub loopback_storage_endpoints: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            operator_principal: None,
            cluster_domain: "cluster.local".into(),
            service_account_issuer: "https://kubernetes.default.svc.cluster.local".into(),
            loopback_storage_endpoints: false,
        }
    }
}

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub settings: Settings,
    pub tokens: TokenSource,
    /// When false, the admin API of the partitions is not called (tests without partitions).
    pub read_partitions: bool,
    /// The watch caches while the controllers run (`run::run_controllers` sets them);
    /// without them (the scenario tests) reads go to the API server.
    pub caches: std::sync::RwLock<Option<Caches>>,
}

impl Context {
    fn caches(&self) -> Option<Caches> {
        self.caches.read().ok().and_then(|c| c.clone())
    }

    /// A partition pod (watch cache).
    pub async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, Error> {
        let c = self.caches();
        cache::get(c.as_ref().map(|c| &c.pods), &self.client, ns, name)
            .await
            .at(format!("reading the Pod {name}"))
    }

    /// A ManagedHsm (watch cache).
    pub async fn hsm(&self, ns: &str, name: &str) -> Result<Option<ManagedHsm>, Error> {
        let c = self.caches();
        cache::get(c.as_ref().map(|c| &c.hsms), &self.client, ns, name)
            .await
            .at(format!("reading the ManagedHsm {name}"))
    }

    /// A Backup (watch cache).
    pub async fn backup(&self, ns: &str, name: &str) -> Result<Option<Backup>, Error> {
        let c = self.caches();
        cache::get(c.as_ref().map(|c| &c.backups), &self.client, ns, name)
            .await
            .at(format!("reading the Backup {name}"))
    }

    /// The Backups of a namespace (watch cache).
    pub async fn backups(&self, ns: &str) -> Result<Vec<Backup>, Error> {
        let c = self.caches();
        cache::list(c.as_ref().map(|c| &c.backups), &self.client, ns)
            .await
            .at("listing the Backups")
    }

    /// The BackupSchedules of a namespace (watch cache).
    pub async fn schedules(&self, ns: &str) -> Result<Vec<BackupSchedule>, Error> {
        let c = self.caches();
        cache::list(c.as_ref().map(|c| &c.schedules), &self.client, ns)
            .await
            .at("listing the BackupSchedules")
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// Why a step failed; each kind has a stable metric label.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Build(#[from] BuildError),
    /// The pool's TLS material (`hsm::plan::tls::TlsError`).
    #[error("{0}")]
    Tls(Box<dyn std::error::Error + Send + Sync>),
    #[error("soft delete: {0}")]
    Finalizer(String),
    #[error("internal: {0}")]
    Internal(String),
}

/// An error of a reconcile: the step that failed, in the user's terms, and its cause —
/// rendered as "reading the CA Secret: Kubernetes API: …".
#[derive(Debug, thiserror::Error)]
#[error("{step}: {cause}")]
pub struct Error {
    pub step: Cow<'static, str>,
    #[source]
    pub cause: Cause,
}

impl Error {
    pub fn new(step: impl Into<Cow<'static, str>>, cause: impl Into<Cause>) -> Self {
        Self {
            step: step.into(),
            cause: cause.into(),
        }
    }

    /// A failure that is no API error (an object without namespace, a body that does not
    /// serialise).
    pub fn internal(step: impl Into<Cow<'static, str>>, why: impl ToString) -> Self {
        Self::new(step, Cause::Internal(why.to_string()))
    }

    /// The API server refused a create because the namespace is being deleted.
    pub fn namespace_terminating(&self) -> bool {
        matches!(&self.cause, Cause::Kube(kube::Error::Api(e))
            if e.code == 403 && e.message.contains("because it is being terminated"))
    }

    pub fn metric_label(&self) -> &'static str {
        match &self.cause {
            Cause::Kube(kube::Error::Api(e)) if e.code == 409 => "conflict",
            Cause::Kube(_) => "kube_api",
            Cause::Build(_) => "build",
            Cause::Tls(_) => "tls",
            Cause::Finalizer(_) => "finalizer",
            Cause::Internal(_) => "internal",
        }
    }
}

/// Name the step of a fallible call: `api.get_opt(name).await.at("reading the CA Secret")?`.
pub trait At<T> {
    fn at(self, step: impl Into<Cow<'static, str>>) -> Result<T, Error>;
}

impl<T, E: Into<Cause>> At<T> for Result<T, E> {
    fn at(self, step: impl Into<Cow<'static, str>>) -> Result<T, Error> {
        self.map_err(|e| Error::new(step, e))
    }
}

/// The namespace of a namespaced object (every custom resource of Keystead is one).
pub fn namespace_of<K: Resource<DynamicType = ()>>(obj: &K) -> Result<String, Error> {
    obj.meta().namespace.clone().ok_or_else(|| {
        Error::internal(
            "reading the object",
            format!("{} without namespace", K::kind(&())),
        )
    })
}

/// Now, at second precision: conditions serialise without fractions, so compare like for like.
pub fn now_time() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

/// A namespaced Kubernetes object the controllers read, patch and delete.
pub trait Namespaced:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + Debug + DeserializeOwned
{
}

impl<K> Namespaced for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned
{
}

/// Ids of reconciles, unique in this process: they tie a reconcile's log lines together.
static RECONCILE_ID: AtomicU64 = AtomicU64::new(1);

/// Run one reconcile of `obj` inside a `reconcile` span (controller, namespace, name and a
/// reconcile id, carried by every log line written meanwhile) and count it in the metrics.
pub async fn reconciling<K, F>(
    ctx: &Context,
    controller: &'static str,
    obj: &K,
    f: F,
) -> Result<Requeue, Error>
where
    K: Resource,
    F: Future<Output = Result<Requeue, Error>>,
{
    let span = tracing::info_span!(
        "reconcile",
        controller,
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
        name = obj.meta().name.as_deref().unwrap_or_default(),
        reconcile_id = RECONCILE_ID.fetch_add(1, Ordering::Relaxed),
    );
    let started = Instant::now();
    ctx.metrics.reconcile_started(controller);
    let r = f.instrument(span).await;
    ctx.metrics
        .observe_duration(controller, started.elapsed().as_secs_f64());
    r
}

/// The error policy of a controller: count the failure, log it, look again in 15 s.
pub fn error_policy<K: Resource<DynamicType = ()>>(
    controller: &'static str,
) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Requeue {
    move |obj, error, ctx| {
        ctx.metrics.failure(controller, error.metric_label());
        tracing::warn!(controller, namespace = ?obj.meta().namespace, name = %obj.name_any(), reason = error.metric_label(), error = %error, "reconcile failed");
        Requeue::requeue(Duration::from_secs(15))
    }
}

/// Publish an Event about any object (a failure to publish is logged, not returned).
pub async fn publish_on(
    ctx: &Context,
    object: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, object).await {
        tracing::warn!(error = %e, "cannot publish an Event");
    }
}

/// Server-side apply `status` on `obj`'s status subresource, under the operator's field
/// manager.
pub async fn apply_status<K: Namespaced, S: Serialize>(
    ctx: &Context,
    obj: &K,
    status: &S,
) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status});
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .at(format!(
        "writing the status of the {} {}",
        K::kind(&()),
        obj.name_any()
    ))?;
    Ok(())
}
