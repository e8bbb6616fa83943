//! The operator's watch caches, one per watched type, shared by every controller: each
//! type is watched once, its reflector fills a [`Store`] and fans the same events out to the
//! controllers it triggers, so a reconcile woken by an event reads a cache that already
//! holds that event (docs/architecture.md, "Reads").
//!
//! Cached: ManagedHsm, SecurityDomain, Backup, BackupSchedule (every namespace) and the
//! partition pods (label `app.kubernetes.io/managed-by=keystead-operator`). Read from the API
//! server on purpose: what a reconcile writes and reads back within one pass (the CA and TLS
//! Secrets, ConfigMaps, the StatefulSet, a ceremony's own status, a schedule's own Backups) —
//! a cache may lag the reconcile's last write, and a stale CA Secret would mean a new CA.

use crate::crd::{Backup, BackupSchedule, ManagedHsm, SecurityDomain};
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Events buffered per subscriber before the reflector waits for the slowest controller.
const FAN_OUT_BUFFER: usize = 1024;

/// Label of every object the operator creates (partition pods among them).
pub const OWNED_SELECTOR: &str = "app.kubernetes.io/managed-by=keystead-operator";

/// The read side of the watch caches.
#[derive(Clone)]
pub struct Caches {
    pub hsms: Store<ManagedHsm>,
    pub ceremonies: Store<SecurityDomain>,
    pub backups: Store<Backup>,
    pub schedules: Store<BackupSchedule>,
    pub pods: Store<Pod>,
}

/// One watched type: its store, its subscriptions (one per controller it triggers) and the
/// watch that fills both (polled by whoever runs the controllers).
pub struct Shared<K: Resource + Clone + 'static>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    pub store: Store<K>,
    writer: Option<reflector::store::Writer<K>>,
    api: Api<K>,
    config: watcher::Config,
}

/// A type-erased future of one reflector: runs until the watch ends (never, in practice).
pub type Reflector = Pin<Box<dyn Future<Output = ()> + Send>>;

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    fn new(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store_shared(FAN_OUT_BUFFER);
        Self {
            store,
            writer: Some(writer),
            api,
            config,
        }
    }

    /// A stream of this type's objects for one more controller (call before [`Self::run`]).
    pub fn subscribe(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.writer
            .as_ref()
            .and_then(|w| w.subscribe())
            .expect("a shared store subscribed before its reflector runs")
    }

    /// The watch that fills the store and feeds the subscribers.
    pub fn run(&mut self) -> Reflector {
        let writer = self
            .writer
            .take()
            .expect("a shared store's reflector runs once");
        let name = std::any::type_name::<K>();
        Box::pin(
            watcher(self.api.clone(), self.config.clone())
                .default_backoff()
                .reflect_shared(writer)
                .for_each(move |ev| async move {
                    if let Err(e) = ev {
                        tracing::warn!(kind = name, error = %e, "watch failed; retrying with backoff");
                    }
                }),
        )
    }
}

/// The watched types of the operator, ready to be subscribed to and run.
pub struct Watches {
    pub hsms: Shared<ManagedHsm>,
    pub ceremonies: Shared<SecurityDomain>,
    pub backups: Shared<Backup>,
    pub schedules: Shared<BackupSchedule>,
    pub pods: Shared<Pod>,
}

impl Watches {
    pub fn new(client: &Client) -> Self {
        let all = watcher::Config::default();
        Self {
            hsms: Shared::new(Api::all(client.clone()), all.clone()),
            ceremonies: Shared::new(Api::all(client.clone()), all.clone()),
            backups: Shared::new(Api::all(client.clone()), all.clone()),
            schedules: Shared::new(Api::all(client.clone()), all),
            pods: Shared::new(
                Api::all(client.clone()),
                watcher::Config::default().labels(OWNED_SELECTOR),
            ),
        }
    }

    pub fn caches(&self) -> Caches {
        Caches {
            hsms: self.hsms.store.clone(),
            ceremonies: self.ceremonies.store.clone(),
            backups: self.backups.store.clone(),
            schedules: self.schedules.store.clone(),
            pods: self.pods.store.clone(),
        }
    }

    /// Every reflector (call once, after the last subscription).
    pub fn run(&mut self) -> Vec<Reflector> {
        vec![
            self.hsms.run(),
            self.ceremonies.run(),
            self.backups.run(),
            self.schedules.run(),
            self.pods.run(),
        ]
    }
}

impl Caches {
    /// Resolves once every store holds its first complete list: a reconcile must not read
    /// "no such pod" from a cache that has not listed yet.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.hsms.wait_until_ready().await?;
        self.ceremonies.wait_until_ready().await?;
        self.backups.wait_until_ready().await?;
        self.schedules.wait_until_ready().await?;
        self.pods.wait_until_ready().await
    }
}

/// A namespaced kind the operator reads through a cache or the API server.
pub trait Namespaced:
    Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug
{
}

impl<K> Namespaced for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
{
}

/// One object by namespace and name: from `store` when the operator runs its caches, from
/// the API server otherwise (the scenario tests' in-memory API server has no watch).
pub async fn get<K>(
    store: Option<&Store<K>>,
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<K>, kube::Error>
where
    K: Namespaced,
{
    match store {
        Some(s) => Ok(s
            .get(&ObjectRef::new(name).within(ns))
            .map(|o| (*o).clone())),
        None => Api::<K>::namespaced(client.clone(), ns).get_opt(name).await,
    }
}

/// Every object of a kind in a namespace (cache or API server, as [`get`]).
pub async fn list<K>(
    store: Option<&Store<K>>,
    client: &Client,
    ns: &str,
) -> Result<Vec<K>, kube::Error>
where
    K: Namespaced,
{
    match store {
        Some(s) => Ok(s
            .state()
            .into_iter()
            .filter(|o| o.namespace().as_deref() == Some(ns))
            .map(|o| (*o).clone())
            .collect()),
        None => Ok(Api::<K>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items),
    }
}
