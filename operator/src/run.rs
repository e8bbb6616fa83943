//! `keystead-operator run`: the controllers behind a leader Lease, the metrics and health
//! endpoint, JSON logs and graceful shutdown.

use crate::backup::{restore, schedule, take};
use crate::cache::{OWNED_SELECTOR, Watches};
use crate::context::{Context, Settings, error_policy};
use crate::crd::{ManagedHsm, Restore};
use crate::hsm::{controller, soft_delete};
use crate::leader;
use crate::metrics::Metrics;
use crate::pool::client::{Identity, TokenSource};
use crate::security_domain::controller as sd_controller;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

/// Options of `run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub metrics_addr: String,
    pub lease_namespace: String,
    pub lease_name: String,
    pub pod_name: String,
    pub service_account: Option<String>,
    pub cluster_domain: String,
    pub service_account_issuer: String,
    pub allow_loopback_storage_endpoints: bool,
}

#[derive(Clone)]
struct Http {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
}

async fn metrics_handler(
    State(h): State<Http>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

async fn readyz(State(h): State<Http>) -> StatusCode {
    if h.ready.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Resolves when SIGTERM or Ctrl-C arrives.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot build a Kubernetes client (kubeconfig or in-cluster service account): {e}"
        )
    })?;
    let metrics = Metrics::default();
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);

    // Health and metrics.
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Http {
            metrics: metrics.clone(),
            ready: ready.clone(),
        });
    let listener = tokio::net::TcpListener::bind(&opts.metrics_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} for metrics: {e}", opts.metrics_addr))?;
    let mut http_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.changed().await;
            })
            .await
    });

    // Leader election.
    let (lead_tx, mut lead_rx) = watch::channel(false);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.lease_namespace);
    let elector = tokio::spawn(leader::run(
        leases,
        opts.lease_name.clone(),
        opts.pod_name.clone(),
        lead_tx,
        stop_rx.clone(),
    ));
    // Ready once the process serves; the controllers only run while leading.
    ready.store(true, Ordering::Relaxed);

    let identity = opts.service_account.clone().map(|sa| Identity {
        namespace: opts.lease_namespace.clone(),
        service_account: sa,
    });
    let settings = Settings {
        operator_principal: identity.as_ref().map(|i| {
            format!(
                "system:serviceaccount:{}:{}",
                i.namespace, i.service_account
            )
        }),
        cluster_domain: opts.cluster_domain.clone(),
        service_account_issuer: opts.service_account_issuer.clone(),
        loopback_storage_endpoints: opts.allow_loopback_storage_endpoints,
    };
    let reporter = Reporter {
        controller: "keystead-operator".into(),
        instance: Some(opts.pod_name.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        settings,
        tokens: TokenSource::new(client.clone(), identity),
        read_partitions: true,
        caches: Default::default(),
    });

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        // Wait to lead (or for shutdown).
        while !*lead_rx.borrow() {
            tokio::select! {
                _ = &mut shutdown => { return finish(stop_tx, elector, server).await; }
                r = lead_rx.changed() => if r.is_err() { return finish(stop_tx, elector, server).await; },
            }
        }
        metrics.leader.set(1);
        tracing::info!("leading: starting the controllers");
        let (ctl_stop_tx, ctl_stop_rx) = watch::channel(false);
        let controllers = run_controllers(client.clone(), ctx.clone(), ctl_stop_rx);
        tokio::pin!(controllers);
        let lost = loop {
            tokio::select! {
                _ = &mut shutdown => break false,
                r = lead_rx.changed() => {
                    if r.is_err() || !*lead_rx.borrow() { break true; }
                }
                _ = &mut controllers => break true,
            }
        };
        let _ = ctl_stop_tx.send(true);
        controllers.await;
        metrics.leader.set(0);
        if !lost {
            return finish(stop_tx, elector, server).await;
        }
        tracing::warn!("lost the leader Lease: controllers stopped");
    }
}

async fn finish(
    stop_tx: watch::Sender<bool>,
    elector: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = elector.await;
    let _ = server.await;
    Ok(())
}

/// The ManagedHsm a partition pod belongs to (label `app.kubernetes.io/instance`).
fn pool_of_pod(pod: &Pod) -> Option<ObjectRef<ManagedHsm>> {
    let pool = pod.labels().get("app.kubernetes.io/instance")?;
    Some(ObjectRef::new(pool).within(&pod.namespace()?))
}

/// Every controller, until `stop` fires (graceful: in-flight reconciles finish). Each
/// watched type is watched once ([`Watches`]); the controllers it triggers subscribe to the
/// same events, and the reconciles read the caches those events filled (`crate::cache`).
pub async fn run_controllers(client: Client, ctx: Arc<Context>, stop: watch::Receiver<bool>) {
    let owned = watcher::Config::default().labels(OWNED_SELECTOR);
    let stop_signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let mut watches = Watches::new(&client);
    let caches = watches.caches();
    let hsm_ctl = Controller::for_shared_stream(watches.hsms.subscribe(), caches.hsms.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        // A Backup that finishes changes its pool's LastBackupSucceeded.
        .watches_shared_stream(watches.backups.subscribe(), |b| {
            let ns = b.metadata.namespace.clone()?;
            Some(ObjectRef::<ManagedHsm>::new(&b.spec.hsm_ref.name).within(&ns))
        })
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<Secret>::all(client.clone()), owned)
        // Partition pods belong to the StatefulSet, not to the ManagedHsm: map them to their
        // pool by label, so readiness changes and deletions are seen at once.
        .watches_shared_stream(watches.pods.subscribe(), |p| pool_of_pod(&p))
        // A ceremony's progress (activation, recovery) changes what the partitions report.
        .watches_shared_stream(watches.ceremonies.subscribe(), |sd| {
            Some(ObjectRef::<ManagedHsm>::new(&sd.spec.hsm_ref.name).within(&sd.namespace()?))
        })
        .graceful_shutdown_on(stop_signal(stop.clone()))
        .run(controller::reconcile, controller::error_policy, ctx.clone())
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "managedhsm controller");
            }
        });
    // A pool's status change (partitions ready, recovery pending) wakes its ceremonies.
    let ceremonies = caches.ceremonies.clone();
    let sd_ctl =
        Controller::for_shared_stream(watches.ceremonies.subscribe(), caches.ceremonies.clone())
            .watches_shared_stream(watches.hsms.subscribe(), move |hsm| {
                ceremonies
                    .state()
                    .into_iter()
                    .filter(|sd| {
                        sd.namespace() == hsm.namespace()
                            && Some(&sd.spec.hsm_ref.name) == hsm.metadata.name.as_ref()
                    })
                    .map(|sd| ObjectRef::from_obj(&*sd))
                    .collect::<Vec<_>>()
            })
            .graceful_shutdown_on(stop_signal(stop.clone()))
            .run(
                sd_controller::reconcile,
                error_policy(sd_controller::CONTROLLER),
                ctx.clone(),
            )
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "securitydomain controller");
                }
            });
    let backup_ctl =
        Controller::for_shared_stream(watches.backups.subscribe(), caches.backups.clone())
            .graceful_shutdown_on(stop_signal(stop.clone()))
            .run(
                take::reconcile_backup,
                error_policy(take::BACKUP_CONTROLLER),
                ctx.clone(),
            )
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "backup controller");
                }
            });
    let restore_ctl = Controller::new(
        Api::<Restore>::all(client.clone()),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(stop_signal(stop.clone()))
    .run(
        restore::reconcile_restore,
        error_policy(restore::RESTORE_CONTROLLER),
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "restore controller");
        }
    });
    let schedule_ctl =
        Controller::for_shared_stream(watches.schedules.subscribe(), caches.schedules.clone())
            .owns_shared_stream(watches.backups.subscribe())
            .graceful_shutdown_on(stop_signal(stop.clone()))
            .run(
                schedule::reconcile_schedule,
                error_policy(schedule::SCHEDULE_CONTROLLER),
                ctx.clone(),
            )
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "backupschedule controller");
                }
            });
    let reflectors = {
        let all = futures::future::join_all(watches.run());
        let stopped = stop_signal(stop.clone());
        async move {
            tokio::select! {
                _ = all => {}
                _ = stopped => {}
            }
        }
    };
    // The controllers start once every cache holds its first list: a reconcile must not
    // read "no such pod" from a cache that has not listed yet.
    let ready = {
        let caches = caches.clone();
        let ctx = ctx.clone();
        async move {
            if caches.wait_until_ready().await.is_ok() {
                *ctx.caches.write().unwrap_or_else(|e| e.into_inner()) = Some(caches);
                tracing::info!("watch caches filled: starting the reconciles");
                true
            } else {
                false
            }
        }
    };
    let sweeper = {
        let mut stop = stop.clone();
        let client = client.clone();
        async move {
            loop {
                match soft_delete::purge_sweep(&client).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "purge sweep"),
                    Err(e) => tracing::warn!(error = %e, "purge sweep failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(600)) => {}
                    _ = stop.wait_for(|v| *v) => break,
                }
            }
        }
    };
    futures::join!(
        reflectors,
        ready,
        hsm_ctl,
        sd_ctl,
        backup_ctl,
        restore_ctl,
        schedule_ctl,
        sweeper
    );
    // The next leadership term starts with caches of its own.
    *ctx.caches.write().unwrap_or_else(|e| e.into_inner()) = None;
}
