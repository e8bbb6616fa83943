//! Watched caches of the objects the agent acts on (one watch per kind) and a wake-up
//! signal for every change.

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::sync::Notify;

pub struct Caches {
    pub pods: Store<Pod>,
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub statefulsets: Store<StatefulSet>,
    /// Notified on every change of any watched object.
    pub changed: Arc<Notify>,
}

fn watch<K>(client: &kube::Client, changed: &Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client.clone());
    let changed = changed.clone();
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .touched_objects()
            .boxed();
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!(kind = %K::kind(&()), error = %e, "watch error (retried)");
            }
            changed.notify_waiters();
        }
    });
    store
}

impl Caches {
    pub async fn start(client: &kube::Client) -> anyhow::Result<Self> {
        let changed = Arc::new(Notify::new());
        let c = Self {
            pods: watch(client, &changed),
            claims: watch(client, &changed),
            volumes: watch(client, &changed),
            services: watch(client, &changed),
            slices: watch(client, &changed),
            statefulsets: watch(client, &changed),
            changed,
        };
        c.pods.wait_until_ready().await?;
        c.claims.wait_until_ready().await?;
        c.volumes.wait_until_ready().await?;
        c.services.wait_until_ready().await?;
        c.slices.wait_until_ready().await?;
        c.statefulsets.wait_until_ready().await?;
        Ok(c)
    }
}
