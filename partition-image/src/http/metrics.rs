//! `GET /metrics`: the partition's replication and domain state as OpenMetrics text, through
//! `prometheus-client` like the operator's (same library, same exposition format).
//!
//! Unauthenticated by design (scraped like `/healthz`): it exposes only counters, indexes,
//! the Raft role and whether the domain is loaded — no key names, principals, fingerprints
//! or material. The values are read at each scrape into a registry of their own.

use crate::service::app::App;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The label of a per-member series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    member: String,
}

/// Register the gauge `name` with `value` (saturated to the gauge's range).
fn gauge(registry: &mut Registry, name: &str, help: &str, value: impl TryInto<i64>) {
    let g: Gauge = Gauge::default();
    g.set(value.try_into().unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

/// Register the counter `name` (exposed as `name_total`) at `value`.
fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// What this partition reports, as a registry.
fn registry(app: &App) -> Registry {
    let mut r = Registry::default();
    let (activated, keys) = {
        let st = app.store.read();
        (st.is_activated(), st.keys.len())
    };
    gauge(
        &mut r,
        "keystead_domain_loaded",
        "1 when this partition holds the security domain",
        u8::from(app.keyring.is_unsealed()),
    );
    gauge(
        &mut r,
        "keystead_keyring_cached_versions",
        "Key versions held unwrapped in this partition's memory",
        app.keyring.cached_versions(),
    );
    counter(
        &mut r,
        "keystead_audit_write_failures",
        "Audit records this partition could not write (changes are refused meanwhile)",
        app.audit.failures(),
    );
    gauge(
        &mut r,
        "keystead_pool_activated",
        "1 when the pool is activated",
        u8::from(activated),
    );
    gauge(
        &mut r,
        "keystead_keys",
        "Keys in the pool as this partition has applied them",
        keys,
    );
    gauge(
        &mut r,
        "keystead_applied_index",
        "Last applied log index",
        app.store.applied_index(),
    );
    gauge(
        &mut r,
        "keystead_key_generations_running",
        "RSA key generations running (off the request workers)",
        app.keygen.running(),
    );
    gauge(
        &mut r,
        "keystead_key_generations_waiting",
        "RSA key generations waiting for a slot (limits.keyGenerationConcurrency)",
        app.keygen.waiting(),
    );
    if let Some(replica) = app.store.replica() {
        let s = replica.status();
        gauge(&mut r, "keystead_raft_term", "Current Raft term", s.term);
        gauge(
            &mut r,
            "keystead_raft_is_leader",
            "1 on the leader",
            u8::from(s.role == "leader"),
        );
        gauge(
            &mut r,
            "keystead_raft_has_leader",
            "1 when this partition knows a leader",
            u8::from(s.leader.is_some()),
        );
        gauge(
            &mut r,
            "keystead_raft_commit_index",
            "Commit index known to this partition",
            s.commit_index,
        );
        gauge(
            &mut r,
            "keystead_raft_last_log_index",
            "Last log index",
            s.last_log_index,
        );
        gauge(
            &mut r,
            "keystead_raft_snapshot_index",
            "Index of the last snapshot",
            s.snapshot_index,
        );
        gauge(
            &mut r,
            "keystead_raft_recovering",
            "1 while catching up after an empty start (not voting)",
            u8::from(s.recovering),
        );
        let lag = Family::<MemberLabels, Gauge>::default();
        for m in &s.members {
            if let Some(l) = m.lag {
                lag.get_or_create(&MemberLabels {
                    member: m.name.clone(),
                })
                .set(i64::try_from(l).unwrap_or(i64::MAX));
            }
        }
        r.register(
            "keystead_raft_member_lag",
            "Entries a member is behind the leader (leader only)",
            lag,
        );
        counter(
            &mut r,
            "keystead_reads_under_lease",
            "Reads this partition answered as the leader under its lease, without a read-index round (readConsistency: lease)",
            replica.leases.served(),
        );
    }
    region_metrics(&mut r, app);
    r
}

/// The label of a per-region series (region names are operator-chosen DNS labels).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabels {
    region: String,
}

/// Region replication (docs/regions.md): a replica's position and lag, a primary's view of
/// each region it served here.
fn region_metrics(r: &mut Registry, app: &App) {
    let status = {
        let st = app.store.read();
        app.regions.status(&st, app.store.applied_index(), None)
    };
    let Some(s) = status else {
        return;
    };
    if s.role == keystead_core::region::RegionRole::Replica {
        gauge(
            r,
            "keystead_region_applied_primary_index",
            "The primary's log index this replica region has applied",
            s.applied_primary_index,
        );
        gauge(
            r,
            "keystead_region_lag_entries",
            "Primary log entries this replica region has not applied yet",
            s.lag_entries,
        );
        let secs: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        secs.set(s.lag_ms as f64 / 1000.0);
        r.register(
            "keystead_region_lag_seconds",
            "Seconds since this replica region was last caught up with its primary (0 when caught up)",
            secs,
        );
        gauge(
            r,
            "keystead_region_primary_reachable",
            "1 when the primary region answered the last request",
            u8::from(s.primary_reachable),
        );
    }
    let lag = Family::<RegionLabels, Gauge>::default();
    for p in &s.regions {
        lag.get_or_create(&RegionLabels {
            region: p.name.clone(),
        })
        .set(i64::try_from(p.lag_entries).unwrap_or(i64::MAX));
    }
    r.register(
        "keystead_region_peer_lag_entries",
        "Entries a replica region is behind this primary partition (as of its last request here)",
        lag,
    );
}

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry(&app)).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
