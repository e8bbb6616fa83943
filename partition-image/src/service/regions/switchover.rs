//! Planned switchover (docs/regions.md): the primary is demoted — it stops taking changes
//! from the index of its demotion on, waits until every region it accepted has applied that
//! index, and publishes a demotion token signed under the security domain; the named region
//! is promoted with that token once it has applied the demoted primary's last index (zero
//! loss) and starts a new epoch, accepting the other regions; the old primary and every
//! other region then follow it from the index of its promotion, without re-seeding.

use crate::region::link::PrimaryLink;
use crate::service::app::App;
use crate::service::error::{Error, Kind};
use crate::state::{Command, Demotion, FenceTarget, PoolState};
use keystead_core::region::{
    DemoteReply, DemoteRequest, FenceRequest, Handover, REGIONS_NOT_CAUGHT_UP,
};
use keystead_core::region_token::DemotionToken;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a promotion waits for this region to apply the demoted primary's last index.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// How long a demotion waits by default, and at most, for every region to apply its last
/// index before it answers.
const HANDOVER_WAIT: u64 = 60;
const HANDOVER_WAIT_MAX: u64 = 300;

/// The demotion token of a demoted primary that does not follow its successor yet, made with
/// the domain this partition holds (`None` otherwise).
pub fn demotion_token(app: &App, st: &PoolState) -> Option<String> {
    let d = st
        .region
        .demoted
        .as_ref()
        .filter(|d| d.ready && st.region.replica.is_none())?;
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

/// The position every region acknowledged in this pool (the furthest per region): a region
/// pulls from whichever partition answers it, so each partition knows only its own part.
async fn pool_acks(app: &App) -> BTreeMap<String, u64> {
    let mut acks = app.regions.acks();
    if let Some(replica) = app.store.replica() {
        for state in crate::service::members::probe(app, replica, None)
            .await
            .into_values()
            .flatten()
        {
            for (name, at) in state.region_acks {
                let e = acks.entry(name).or_default();
                *e = (*e).max(at);
            }
        }
    }
    acks
}

/// The accepted regions that have not acknowledged the demotion's last index yet, with
/// the position they acknowledged.
async fn regions_behind(app: &App, d: &Demotion) -> Vec<(String, u64)> {
    let names: Vec<String> = app.store.read().region.accepted.keys().cloned().collect();
    let acks = pool_acks(app).await;
    names
        .into_iter()
        .map(|n| {
            let at = acks.get(&n).copied().unwrap_or(0);
            (n, at)
        })
        .filter(|(_, at)| *at < d.last_index)
        .collect()
}

/// A demoted primary: once every region it accepted has applied its last index, commit
/// `RegionHandoverReady` (the token is published from then on). The demote call and the
/// leader's region task both try, so a demote that stopped waiting completes by itself.
pub(super) async fn mark_handover_ready(app: &App, d: &Demotion) -> anyhow::Result<bool> {
    if d.ready {
        return Ok(true);
    }
    if d.last_index == 0 || !regions_behind(app, d).await.is_empty() {
        return Ok(false);
    }
    app.store
        .propose_local(Command::RegionHandoverReady { epoch: d.epoch })
        .await?;
    tracing::info!(to = %d.to, last_index = d.last_index, "every region applied the demoted primary's last index: the demotion token is published");
    Ok(true)
}

/// What a demoted primary tells the regions it fed (in its feed and position answers):
/// while it is demoted, and once it follows its successor. None for a fenced old primary
/// (its regions may hold changes the new primary never had: they re-point by hand).
pub fn handover(st: &PoolState) -> Option<Handover> {
    let (d, regions) = match (&st.region.handed_over, &st.region.demoted) {
        (Some(h), _) if st.region.replica.is_some() => (&h.demotion, &h.regions),
        (_, Some(d)) if st.region.replica.is_none() && !st.region.reseed => {
            (d, &st.region.accepted)
        }
        _ => return None,
    };
    Some(Handover {
        to: d.to.clone(),
        endpoints: d.endpoints.clone(),
        ca_certificate: d.ca_pem.clone(),
        epoch: d.epoch,
        last_index: d.last_index,
        ready: d.ready,
        regions: regions
            .iter()
            .filter(|(name, _)| **name != d.to)
            .map(|(name, r)| keystead_core::region::HandoverRegion {
                name: name.clone(),
                ca_certificate: r.ca_pem.clone(),
            })
            .collect(),
    })
}

/// `POST /admin/regions/demote`: stop taking changes and hand over to an accepted region
/// once every region has applied the last index. Called again with the same `to`, it waits
/// again.
pub async fn demote(app: &App, req: &DemoteRequest) -> Result<DemoteReply, Error> {
    let wait = Duration::from_secs(
        req.wait_seconds
            .unwrap_or(HANDOVER_WAIT)
            .min(HANDOVER_WAIT_MAX),
    );
    let again = {
        let st = app.store.read();
        st.region.replica.is_none()
            && st.region.demoted.as_ref().is_some_and(|d| d.to == req.to)
            && !st.region.reseed
    };
    if !again {
        propose_demotion(app, req).await?;
    }
    app.regions.reconcile(&app.store);
    let deadline = Instant::now() + wait;
    let d = loop {
        let d = {
            let st = app.store.read();
            st.region
                .demoted
                .clone()
                .filter(|_| st.region.replica.is_none())
        }
        .ok_or_else(|| {
            Error::conflict(
                "RegionNotPrimary",
                "this pool is no longer a demoted primary (it follows its successor): see GET /admin/status, region",
            )
        })?;
        if mark_handover_ready(app, &d).await.unwrap_or(false) {
            break d;
        }
        if Instant::now() >= deadline {
            let behind = regions_behind(app, &d)
                .await
                .into_iter()
                .map(|(name, at)| format!("'{name}' at index {at}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::new(
                Kind::Unavailable,
                REGIONS_NOT_CAUGHT_UP,
                format!(
                    "{REGIONS_NOT_CAUGHT_UP}: this pool is demoted (it takes no more changes from index {} on) but not every region has applied that index yet: {behind}. The demotion token is published (region.demotionToken in GET /admin/status) once they have; call demote again with the same region to wait again, or remove a region that is gone (DELETE /admin/regions/{{name}}) first",
                    d.last_index
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let st = app.store.read();
    let token = demotion_token(app, &st).ok_or_else(|| {
        Error::new(
            Kind::Unavailable,
            "PartitionSealed",
            "the pool is demoted, but this partition cannot sign the demotion token (it does not hold the domain); read region.demotionToken from GET /admin/status on another partition",
        )
    })?;
    tracing::warn!(to = %req.to, epoch = d.epoch, last_index = d.last_index, "this primary region was demoted: it takes no more changes and hands over");
    Ok(DemoteReply {
        token,
        epoch: d.epoch,
        last_index: d.last_index,
    })
}

/// Commit the demotion (`RegionDemote`) after checking the request.
async fn propose_demotion(app: &App, req: &DemoteRequest) -> Result<(), Error> {
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
    Ok(())
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
    // CA this region trusts for the primary it followed); and the other regions the old
    // primary handed over (it tells them, and their CAs, in its answers).
    let link = app.regions.link();
    let old_primary_ca = link
        .as_ref()
        .map(|l| l.primary.ca_pem.clone())
        .unwrap_or_default();
    let handover = match &link {
        Some(l) => match l.position().await {
            Ok(p) => p.handover.or_else(|| l.handover()),
            Err(_) => l.handover(),
        },
        None => None,
    };
    let also_accept: Vec<(String, String)> = handover
        .filter(|h| h.to == me && h.epoch == t.epoch)
        .map(|h| {
            h.regions
                .into_iter()
                .map(|r| (r.name, r.ca_certificate))
                .collect()
        })
        .unwrap_or_default();
    if also_accept.is_empty() {
        tracing::info!("the demoted primary handed over no other region");
    }
    app.store
        .propose_local(Command::RegionPromote {
            epoch: t.epoch,
            old_primary: r.primary.clone(),
            old_primary_ca,
            now: crate::service::now(),
            fence: None,
            also_accept,
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
    if let Some(ms) = r.primary_write_lease_ms {
        super::lease::wait_out_primary_lease(app, ms).await?;
    }
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
            also_accept: Vec::new(),
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

/// Commit `RegionFollow` of `d.to` (pool `pool_id`) from index `at` — re-seeding first,
/// dropping `discarded`, when `reseed` — and move the link to it.
pub(super) async fn commit_follow(
    app: &App,
    d: &Demotion,
    pool_id: &str,
    at: u64,
    discarded: Vec<String>,
    reseed: bool,
) -> anyhow::Result<()> {
    app.store
        .propose_local(Command::RegionFollow {
            primary: d.to.clone(),
            primary_pool_id: pool_id.to_string(),
            epoch: d.epoch,
            from: at,
            reseed,
            discarded,
        })
        .await?;
    app.regions.reconcile(&app.store);
    Ok(())
}

/// A demoted primary, or a region it handed over: once the region promoted next was promoted
/// (same epoch), follow it from the index of its promotion.
pub(super) async fn follow_promoted(
    app: &Arc<App>,
    link: &PrimaryLink,
    d: &Demotion,
) -> anyhow::Result<()> {
    if d.failover {
        return super::failover::follow_promoted(app, link, d).await;
    }
    let p = link.position().await?;
    match p.promoted_at {
        Some(at) if p.epoch == d.epoch => {
            commit_follow(app, d, &p.pool_id, at, Vec::new(), false).await?;
            tracing::info!(primary = %d.to, epoch = d.epoch, from = at, "following the promoted region");
            Ok(())
        }
        _ => {
            tokio::time::sleep(crate::region::link::RETRY).await;
            Ok(())
        }
    }
}
