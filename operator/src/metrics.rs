//! Prometheus metrics of the operator (`prometheus-client`), served on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
}

/// Every metric of the operator.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram>,
    pub healthy_partitions: Family<PoolLabels, Gauge>,
    pub pool_ready: Family<PoolLabels, Gauge>,
    pub leader: Gauge,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keystead_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.0, 12))
        });
        let healthy_partitions = Family::<PoolLabels, Gauge>::default();
        let pool_ready = Family::<PoolLabels, Gauge>::default();
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciliations started", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations",
            duration.clone(),
        );
        registry.register(
            "pool_healthy_partitions",
            "Healthy partitions of each pool",
            healthy_partitions.clone(),
        );
        registry.register(
            "pool_ready",
            "1 when the pool's Ready condition is True",
            pool_ready.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Self {
            reconciles,
            failures,
            duration,
            healthy_partitions,
            pool_ready,
            leader,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    pub fn reconcile_started(&self, controller: &str) {
        self.reconciles
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .inc();
    }

    pub fn observe_duration(&self, controller: &str, seconds: f64) {
        self.duration
            .get_or_create(&ControllerLabels {
                controller: controller.into(),
            })
            .observe(seconds);
    }

    pub fn failure(&self, controller: &str, reason: &str) {
        self.failures
            .get_or_create(&ErrorLabels {
                controller: controller.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn pool_health(&self, namespace: &str, pool: &str, healthy: i64, ready: bool) {
        let l = PoolLabels {
            namespace: namespace.into(),
            pool: pool.into(),
        };
        self.healthy_partitions.get_or_create(&l).set(healthy);
        self.pool_ready.get_or_create(&l).set(i64::from(ready));
    }

    pub fn forget_pool(&self, namespace: &str, pool: &str) {
        let l = PoolLabels {
            namespace: namespace.into(),
            pool: pool.into(),
        };
        self.healthy_partitions.remove(&l);
        self.pool_ready.remove(&l);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
