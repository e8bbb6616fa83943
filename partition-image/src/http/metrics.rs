//! `GET /metrics`: Prometheus text of the partition's replication and domain state.
//!
//! Unauthenticated by design (scraped like `/healthz`): it exposes only counters, indexes,
//! the Raft role and whether the domain is loaded — no key names, principals, fingerprints
//! or material.

use crate::service::app::App;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::fmt::Write;
use std::sync::Arc;

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut out = String::new();
    let st = app.store.read();
    let activated = st.is_activated();
    let keys = st.keys.len();
    drop(st);
    let _ = writeln!(
        out,
        "# HELP keystead_domain_loaded 1 when this partition holds the security domain\n# TYPE keystead_domain_loaded gauge\nkeystead_domain_loaded {}",
        u8::from(app.keyring.is_unsealed())
    );
    let _ = writeln!(
        out,
        "# HELP keystead_keyring_cached_versions Key versions held unwrapped in this partition's memory\n# TYPE keystead_keyring_cached_versions gauge\nkeystead_keyring_cached_versions {}",
        app.keyring.cached_versions()
    );
    let _ = writeln!(
        out,
        "# HELP keystead_audit_write_failures_total Audit records this partition could not write (changes are refused meanwhile)\n# TYPE keystead_audit_write_failures_total counter\nkeystead_audit_write_failures_total {}",
        app.audit.failures()
    );
    let _ = writeln!(
        out,
        "# HELP keystead_pool_activated 1 when the pool is activated\n# TYPE keystead_pool_activated gauge\nkeystead_pool_activated {}",
        u8::from(activated)
    );
    let _ = writeln!(
        out,
        "# HELP keystead_keys Keys in the pool as this partition has applied them\n# TYPE keystead_keys gauge\nkeystead_keys {keys}"
    );
    let _ = writeln!(
        out,
        "# HELP keystead_applied_index Last applied log index\n# TYPE keystead_applied_index gauge\nkeystead_applied_index {}",
        app.store.applied_index()
    );
    let _ = writeln!(
        out,
        "# HELP keystead_key_generations_running RSA key generations running (off the request workers)\n# TYPE keystead_key_generations_running gauge\nkeystead_key_generations_running {}",
        app.keygen.running()
    );
    let _ = writeln!(
        out,
        "# HELP keystead_key_generations_waiting RSA key generations waiting for a slot (limits.keyGenerationConcurrency)\n# TYPE keystead_key_generations_waiting gauge\nkeystead_key_generations_waiting {}",
        app.keygen.waiting()
    );
    if let Some(r) = app.store.replica() {
        let s = r.status();
        let _ = writeln!(
            out,
            "# HELP keystead_raft_term Current Raft term\n# TYPE keystead_raft_term gauge\nkeystead_raft_term {}",
            s.term
        );
        let _ = writeln!(
            out,
            "# HELP keystead_raft_is_leader 1 on the leader\n# TYPE keystead_raft_is_leader gauge\nkeystead_raft_is_leader {}",
            u8::from(s.role == "leader")
        );
        let _ = writeln!(
            out,
            "# HELP keystead_raft_has_leader 1 when this partition knows a leader\n# TYPE keystead_raft_has_leader gauge\nkeystead_raft_has_leader {}",
            u8::from(s.leader.is_some())
        );
        let _ = writeln!(
            out,
            "# HELP keystead_raft_commit_index Commit index known to this partition\n# TYPE keystead_raft_commit_index gauge\nkeystead_raft_commit_index {}",
            s.commit_index
        );
        let _ = writeln!(
            out,
            "# HELP keystead_raft_last_log_index Last log index\n# TYPE keystead_raft_last_log_index gauge\nkeystead_raft_last_log_index {}",
            s.last_log_index
        );
        let _ = writeln!(
            out,
            "# HELP keystead_raft_snapshot_index Index of the last snapshot\n# TYPE keystead_raft_snapshot_index gauge\nkeystead_raft_snapshot_index {}",
            s.snapshot_index
        );
        let _ = writeln!(
            out,
            "# HELP keystead_raft_recovering 1 while catching up after an empty start (not voting)\n# TYPE keystead_raft_recovering gauge\nkeystead_raft_recovering {}",
            u8::from(s.recovering)
        );
        let _ = writeln!(
            out,
            "# HELP keystead_raft_member_lag Entries a member is behind the leader (leader only)\n# TYPE keystead_raft_member_lag gauge"
        );
        for m in &s.members {
            if let Some(lag) = m.lag {
                let _ = writeln!(
                    out,
                    "keystead_raft_member_lag{{member=\"{}\"}} {lag}",
                    m.name.escape_default()
                );
            }
        }
    }
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}
