//! Planned switchover (docs/regions.md): the primary is demoted — it stops taking changes
//! from the index of its demotion on and publishes a demotion token signed under the
//! security domain; the named region is promoted with that token once it has applied the
//! demoted primary's last index (zero loss) and starts a new epoch; the old primary then
//! follows it from the index of its promotion, without re-seeding.

use crate::region::link::PrimaryLink;
use crate::service::app::App;
use crate::service::error::{Error, Kind};
use crate::state::{Command, Demotion, FenceTarget, PoolState};
use keystead_core::region::{DemoteReply, DemoteRequest, FenceRequest};
use keystead_core::region_token::DemotionToken;
use std::sync::Arc;
use std::time::Duration;

/// How long a promotion waits for this region to apply the demoted primary's last index.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);

/// The demotion token of a demoted primary that does not follow its successor yet, made with
/// the domain this partition holds (`None` otherwise).
pub fn demotion_token(app: &App, st: &PoolState) -> Option<String> {
    let d = st
        .region
        .demoted
        .as_ref()
        .filter(|_| st.region.replica.is_none())?;
    let unsealed = app.keyring.unsealed()?;
    let token = DemotionToken {
        primary: app.regions.name(st),
        pool_id: st.settings.pool_id.clone(),
        fingerprint: st.fingerprint()?.to_string(),
        epoch: d.epoch,
        last_index: d.last_index,
        new_primary: d.to.clone(),
    };
    Some(token.seal(unsealed.secret.master_key()))
}

/// `POST /admin/regions/demote`: stop taking changes and hand over to an accepted region.
pub async fn demote(app: &App, req: &DemoteRequest) -> Result<DemoteReply, Error> {
    let (ca_pem, epoch) = {
        let st = app.store.read();
        if st.region.replica.is_some() || st.region.demoted.is_some() {
            return Err(Error::conflict(
                "RegionNotPrimary",
                "only a primary that is not demoted yet can be demoted (see GET /admin/status, region)",
            ));
        }
        let Some(r) = st.region.accepted.get(&req.to) else {
            return Err(Error::not_found(
                "RegionNotFound",
                format!(
                    "region '{}' is not accepted by this pool; name it first with PUT /admin/regions/{}",
                    req.to, req.to
                ),
            ));
        };
        (r.ca_pem.clone(), st.region.epoch() + 1)
    };
    if req.endpoints.is_empty() || req.endpoints.iter().any(|e| !e.starts_with("https://")) {
        return Err(Error::bad_request(
            "endpoints must list the https:// URLs of the new primary's partitions",
        ));
    }
    app.store
        .propose(Command::RegionDemote {
            to: req.to.clone(),
            endpoints: req.endpoints.clone(),
            ca_pem,
            epoch,
        })
        .await?;
    app.regions.reconcile(&app.store);
    let st = app.store.read();
    let last_index = st
        .region
        .demoted
        .as_ref()
        .map(|d| d.last_index)
        .unwrap_or(0);
    let token = demotion_token(app, &st).ok_or_else(|| {
        Error::new(
            Kind::Unavailable,
            "PartitionSealed",
            "the pool is demoted, but this partition cannot sign the demotion token (it does not hold the domain); read region.demotionToken from GET /admin/status on another partition",
        )
    })?;
    tracing::warn!(to = %req.to, epoch, last_index, "this primary region was demoted: it takes no more changes and hands over");
    Ok(DemoteReply {
        token,
        epoch,
        last_index,
    })
}

/// `POST /admin/regions/promote`: become the primary with a demotion token, once this
/// region has applied everything the demoted primary committed.
pub async fn promote(app: &App, token: &str) -> Result<(), Error> {
    let (r, fingerprint, me) = {
        let st = app.store.read();
        let Some(r) = st.region.replica.clone() else {
            return Err(Error::conflict(
                "RegionNotReplica",
                "only a replica region that has joined its primary can be promoted",
            ));
        };
        (
            r,
            st.fingerprint().unwrap_or_default().to_string(),
            app.regions.name(&st),
        )
    };
    let unsealed = app.keyring.unsealed().ok_or_else(|| {
        Error::new(
            Kind::Unavailable,
            "PartitionSealed",
            "this partition does not hold the security domain yet; retry on another partition",
        )
    })?;
    let t = DemotionToken::open(token, unsealed.secret.master_key()).map_err(|e| {
        Error::bad_request(e.to_string())
            .with_inner("DemotionTokenInvalid", "the token was refused")
    })?;
    let mismatch = if t.pool_id != r.primary_pool_id || t.primary != r.primary {
        Some(format!(
            "it demotes '{}', this region follows '{}'",
            t.primary, r.primary
        ))
    } else if t.fingerprint != fingerprint {
        Some("it names another security domain".to_string())
    } else if t.new_primary != me {
        Some(format!(
            "it promotes region '{}', not '{me}'",
            t.new_primary
        ))
    } else if t.epoch != r.epoch + 1 {
        Some(format!(
            "it starts epoch {}, this region is at epoch {}",
            t.epoch, r.epoch
        ))
    } else {
        None
    };
    if let Some(m) = mismatch {
        return Err(Error::bad_request(format!(
            "the demotion token does not fit this region: {m}"
        ))
        .with_inner(
            "DemotionTokenMismatch",
            "the token is for another switchover",
        ));
    }
    let Some(replica) = app.store.replica() else {
        return Err(Error::internal("a region is a replicated pool"));
    };
    let mut applied = replica.sm.region_applied.subscribe();
    let caught_up = matches!(
        tokio::time::timeout(CATCH_UP_WAIT, applied.wait_for(|a| *a >= t.last_index)).await,
        Ok(Ok(_))
    );
    if !caught_up {
        return Err(Error::new(
            Kind::Unavailable,
            "RegionNotCaughtUp",
            format!(
                "this region has applied the demoted primary's index {} of {} so far; promote again once it caught up (region.lagEntries in GET /admin/status)",
                *applied.borrow(),
                t.last_index
            ),
        ));
    }
    // The old primary's partitions follow this region next: accept them by their CA (the
    // CA this region trusts for the primary it followed).
    let old_primary_ca = app
        .regions
        .link()
        .map(|l| l.primary.ca_pem.clone())
        .unwrap_or_default();
    app.store
        .propose_local(Command::RegionPromote {
            epoch: t.epoch,
            old_primary: r.primary.clone(),
            old_primary_ca,
            now: crate::service::now(),
            fence: None,
        })
        .await?;
    app.regions.reconcile(&app.store);
    tracing::warn!(epoch = t.epoch, old_primary = %r.primary, "this region was promoted: it is the primary now");
    Ok(())
}

/// `POST /admin/regions/promote {"force": true}`: failover — the primary is lost; become the
/// primary of the next epoch at the position this region has applied. Changes of the old
/// primary beyond it are lost (the lag at the time of loss, reported in the status).
pub async fn fail_over(app: &App) -> Result<(), Error> {
    let r = app.store.read().region.replica.clone().ok_or_else(|| {
        Error::conflict(
            "RegionNotReplica",
            "only a replica region that has joined its primary can be promoted",
        )
    })?;
    let old = app.regions.link().map(|l| l.primary.clone());
    let fence = old.as_ref().map(|t| FenceTarget {
        name: r.primary.clone(),
        endpoints: t.endpoints.clone(),
        ca_pem: t.ca_pem.clone(),
        epoch: r.epoch + 1,
        common_index: r.applied_primary_index,
    });
    app.store
        .propose_local(Command::RegionPromote {
            epoch: r.epoch + 1,
            old_primary: r.primary.clone(),
            old_primary_ca: old.map(|t| t.ca_pem).unwrap_or_default(),
            now: crate::service::now(),
            fence,
        })
        .await?;
    app.regions.reconcile(&app.store);
    tracing::warn!(epoch = r.epoch + 1, old_primary = %r.primary, at = r.applied_primary_index, "failover: this region was promoted without a demotion token; the old primary is fenced when it answers");
    Ok(())
}

/// A primary promoted by failover: tell the old primary (when it answers) that it is fenced,
/// then forget it.
pub(super) async fn fence_old_primary(app: &Arc<App>, old: &FenceTarget) -> anyhow::Result<()> {
    let link = app.regions.link_to(crate::region::link::Target {
        name: old.name.clone(),
        endpoints: old.endpoints.clone(),
        ca_pem: old.ca_pem.clone(),
    })?;
    let (name, endpoints) = {
        let st = app.store.read();
        let urls = app
            .store
            .replica()
            .map(|r| r.status().members.into_iter().map(|m| m.url).collect())
            .unwrap_or_default();
        (app.regions.name(&st), urls)
    };
    link.fence(&FenceRequest {
        primary: name,
        endpoints,
        epoch: old.epoch,
        common_index: old.common_index,
    })
    .await?;
    app.store.propose_local(Command::RegionFenceDone).await?;
    tracing::warn!(old_primary = %old.name, "the old primary acknowledged its fence");
    Ok(())
}

/// A demoted primary: once the region it handed over to was promoted (same epoch), follow
/// it from the index of its promotion.
pub(super) async fn follow_promoted(
    app: &Arc<App>,
    link: &PrimaryLink,
    d: &Demotion,
) -> anyhow::Result<()> {
    let p = link.position().await?;
    match p.promoted_at {
        Some(at) if p.epoch == d.epoch => {
            app.store
                .propose_local(Command::RegionFollow {
                    primary: d.to.clone(),
                    primary_pool_id: p.pool_id.clone(),
                    epoch: d.epoch,
                    from: at,
                })
                .await?;
            tracing::info!(primary = %d.to, epoch = d.epoch, from = at, "following the promoted region");
            Ok(())
        }
        _ => {
            tokio::time::sleep(crate::region::link::RETRY).await;
            Ok(())
        }
    }
}
