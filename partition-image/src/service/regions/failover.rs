//! After a failover, the other replica regions (docs/regions.md): a region that followed
//! the lost primary is re-pointed to the promoted region (`POST /admin/regions/follow`).
//! It continues in place when it had applied exactly the position the promoted region had
//! when promoted (same old epoch); otherwise it re-seeds from a snapshot of the promoted
//! region, and the old primary's changes it had that the promoted region never got are
//! listed (status, audit record) before they are dropped — never silently.

use crate::audit::AuditRecord;
use crate::region::link::{PrimaryLink, Target};
use crate::service::app::App;
use crate::service::error::Error;
use crate::state::{Command, Demotion, ReplicaOf};
use keystead_core::region::{FollowRequest, Promotion};
use openraft::EntryPayload;
use std::sync::Arc;

/// `POST /admin/regions/follow`: check that `to` answers as a primary promoted at a later
/// epoch than this region's, then commit the re-point (the Raft leader's follow loop
/// completes it: [`follow_promoted`]).
pub async fn follow(app: &App, req: &FollowRequest) -> Result<(), Error> {
    let r = app.store.read().region.replica.clone().ok_or_else(|| {
        Error::conflict(
            "RegionNotReplica",
            "only a replica region re-points to a promoted region; this pool is a primary",
        )
    })?;
    if req.to == r.primary {
        return Err(Error::bad_request(format!(
            "'{}' is already this region's primary; name the region promoted by the failover",
            req.to
        )));
    }
    if req.endpoints.is_empty() {
        return Err(Error::bad_request(
            "endpoints is empty: give the promoted region's partition URLs",
        ));
    }
    let link = app
        .regions
        .link_to(Target {
            name: req.to.clone(),
            endpoints: req.endpoints.clone(),
            ca_pem: req.ca_certificate.clone(),
        })
        .map_err(|e| {
            Error::bad_request(format!(
                "caCertificate is not a usable CA for the promoted region: {e:#}"
            ))
        })?;
    let p = link.position().await.map_err(|e| {
        Error::new(
            crate::service::error::Kind::Unavailable,
            "RegionUnreachable",
            format!("region '{}' does not answer: {e}; check the endpoints and that it accepts this region (PUT /admin/regions/<this region> on it)", req.to),
        )
    })?;
    if p.promoted_at.is_none() || p.epoch <= r.epoch {
        return Err(Error::conflict(
            keystead_core::region::REGION_NOT_PROMOTED,
            format!(
                "region '{}' is not a primary promoted after this region's epoch {} (it answers epoch {}{}); promote it first (kubectl hsm region promote --force)",
                req.to,
                r.epoch,
                p.epoch,
                if p.promoted_at.is_none() {
                    ", not promoted"
                } else {
                    ""
                }
            ),
        ));
    }
    app.store
        .propose_local(Command::RegionRepoint {
            to: req.to.clone(),
            endpoints: req.endpoints.clone(),
            ca_pem: req.ca_certificate.clone(),
            epoch: p.epoch,
            last_index: 0,
            failover: true,
        })
        .await?;
    app.regions.reconcile(&app.store);
    tracing::warn!(primary = %req.to, epoch = p.epoch, "re-pointed after a failover: this region follows the promoted region");
    Ok(())
}

/// Whether a region at `r` continues in place after `promotion`: it applied exactly what the
/// promoted region had when promoted, in the same old epoch.
fn in_place(r: &ReplicaOf, promotion: Option<Promotion>) -> bool {
    promotion.is_some_and(|p| p.from_epoch == r.epoch && p.common_index == r.applied_primary_index)
}

/// The re-pointed region follows `d.to` once it answers as promoted at `d.epoch`: in place,
/// or re-seeded with what it drops listed.
pub(super) async fn follow_promoted(
    app: &Arc<App>,
    link: &PrimaryLink,
    d: &Demotion,
) -> anyhow::Result<()> {
    let p = link.position().await?;
    let (Some(at), true) = (p.promoted_at, p.epoch == d.epoch) else {
        anyhow::bail!(
            "region '{}' answers epoch {} (promoted: {}), not the epoch {} this region was re-pointed to",
            d.to,
            p.epoch,
            p.promoted_at.is_some(),
            d.epoch
        );
    };
    let Some(r) = app.store.read().region.replica.clone() else {
        anyhow::bail!("this region follows no primary");
    };
    let reseed = !in_place(&r, p.promotion);
    let discarded = if reseed {
        discarded_since(app, &r, p.promotion)
    } else {
        Vec::new()
    };
    super::switchover::commit_follow(app, d, &p.pool_id, at, discarded.clone(), reseed).await?;
    let operation = if reseed {
        "RegionFollowReseed"
    } else {
        "RegionFollowInPlace"
    };
    let call = ("GET", "/internal/region/position");
    app.audit.record(AuditRecord {
        key_name: (!discarded.is_empty()).then(|| discarded.join(", ")),
        ..super::follow::outbound_record(app, &d.to, call, operation, true)
    });
    if reseed {
        tracing::warn!(primary = %d.to, epoch = d.epoch, discarded = ?discarded, "following the region promoted by the failover: this region's position differs from the one it was promoted at, so it re-seeds from it and drops the listed changes");
    } else {
        tracing::info!(primary = %d.to, epoch = d.epoch, from = at, "following the region promoted by the failover in place");
    }
    Ok(())
}

/// The old primary's changes this region applied after the promoted region's common index
/// (which the promoted region never had), in the user's terms.
fn discarded_since(app: &App, r: &ReplicaOf, promotion: Option<Promotion>) -> Vec<String> {
    let common = match promotion {
        Some(p) if p.from_epoch == r.epoch => p.common_index,
        // Promoted from another epoch than the one this region followed: what differs is
        // not known index by index.
        _ => {
            return vec![format!(
                "changes of epoch {} after the promoted region's position (it was promoted from another epoch; see this region's audit log)",
                r.epoch
            )];
        }
    };
    if r.applied_primary_index <= common {
        return Vec::new();
    }
    let Some(replica) = app.store.replica() else {
        return Vec::new();
    };
    let applied = replica.sm.applied().map(|l| l.index).unwrap_or(0);
    let mut reaches_back = false;
    let mut out = Vec::new();
    for e in replica.log.kept_entries(applied) {
        let EntryPayload::Normal(cmd) = &e.payload else {
            continue;
        };
        match cmd {
            Command::RegionApply { entries, through } => {
                if *through <= common {
                    reaches_back = true;
                }
                out.extend(
                    entries
                        .iter()
                        .filter(|fe| fe.index > common)
                        .filter_map(|fe| fe.command.describe_change()),
                );
            }
            Command::RegionInstall { through, .. } if *through <= common => reaches_back = true,
            _ => {}
        }
    }
    out.dedup();
    if !reaches_back {
        out.push(format!(
            "changes after the old primary's index {common} (this partition's log was compacted past it; see the audit log of that period)"
        ));
    }
    out
}
