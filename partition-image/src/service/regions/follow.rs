//! A replica region's side (docs/regions.md): its Raft leader joins the primary (domain
//! sealed to a one-time transfer key), then pulls the primary's committed changes in order
//! and applies them through its own Raft group exactly once by primary index, or catches up
//! from a streamed snapshot when the primary's log no longer reaches back far enough.

use crate::audit::AuditRecord;
use crate::region::link::{LinkError, PrimaryLink, RETRY};
use crate::service::app::App;
use crate::service::backup::{STAGE_BYTES, stages};
use crate::state::{Command, ReplicaOf};
use keystead_core::region::JoinRequest;
use keystead_core::region_token::RemovalNotice;
use std::sync::Arc;
use std::time::Duration;

/// Entries per feed request, and how long the primary holds a request with nothing new.
const FEED_MAX: usize = 256;
const FEED_WAIT: Duration = Duration::from_millis(1000);
/// How often a partition that does not lead asks the primary for its position (and one
/// that follows no primary looks again).
pub(super) const IDLE_POLL: Duration = Duration::from_secs(1);

/// Run for the life of the partition: it follows a primary only while the pool is a replica
/// region (configured, or after a switchover), and only while it leads its region's group
/// does it join and pull; every partition runs it, so a new leader takes over within a round.
pub async fn run(app: Arc<App>) {
    let Some(replica) = app.store.replica().cloned() else {
        return;
    };
    let mut failures = 0u64;
    loop {
        app.regions.reconcile(&app.store);
        if app.store.read().region.purged.is_some() {
            purged(&app, &replica).await;
            continue;
        }
        let Some(link) = app.regions.link() else {
            // A primary promoted by failover fences the old primary once it answers.
            let old = app.store.read().region.fence_old.clone();
            if let Some(old) = old.filter(|_| replica.is_leader())
                && let Err(e) = super::switchover::fence_old_primary(&app, &old).await
            {
                tracing::debug!(error = %format!("{e:#}"), "the old primary is not fenced yet");
            }
            tokio::time::sleep(IDLE_POLL).await;
            continue;
        };
        if !replica.is_leader() || !app.store.read().bootstrapped {
            link_idle(&app, &link).await;
            continue;
        }
        let (joined, demoted, repoint) = {
            let st = app.store.read();
            (
                st.region.replica.clone(),
                st.region.demoted.clone(),
                st.region.repoint.clone(),
            )
        };
        let result = match (joined, demoted, repoint) {
            // Its primary handed over: follow the region promoted next.
            (Some(_), _, Some(p)) => super::switchover::follow_promoted(&app, &link, &p).await,
            (Some(r), _, None) => pull(&app, &link, &r).await,
            (None, Some(d), _) => {
                if let Err(e) = super::switchover::mark_handover_ready(&app, &d).await {
                    tracing::debug!(error = %format!("{e:#}"), "the hand-over is not marked ready yet");
                }
                super::switchover::follow_promoted(&app, &link, &d).await
            }
            (None, None, _) => join(&app, &link).await,
        };
        match result {
            Ok(()) => failures = 0,
            Err(e)
                if matches!(
                    e.downcast_ref::<LinkError>(),
                    Some(LinkError::Removed { .. })
                ) =>
            {
                if let Some(LinkError::Removed { notice }) = e.downcast_ref::<LinkError>()
                    && let Err(e) = purge(&app, notice).await
                {
                    tracing::error!(error = %format!("{e:#}"), "the primary answers that it removed this region, but its notice was not acted on");
                }
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => {
                // The first failure and then one a minute: a primary that is down for long
                // does not flood the log.
                if failures.is_multiple_of(120) {
                    tracing::warn!(error = %format!("{e:#}"), failures = failures + 1, "region replication round failed; retrying");
                } else {
                    tracing::debug!(error = %format!("{e:#}"), "region replication round failed; retrying");
                }
                failures += 1;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// The primary answered that it removed this region: check its notice under this region's
/// own domain (only a holder of the domain can make one) and purge the pool —
/// `RegionPurge` drops keys and deleted keys on every partition, and each partition then
/// deletes the domain from its memory and disk.
async fn purge(app: &Arc<App>, notice: &str) -> anyhow::Result<()> {
    let (joined, me, fingerprint) = {
        let st = app.store.read();
        (
            st.region.replica.clone(),
            app.regions.name(&st),
            st.fingerprint().map(str::to_string),
        )
    };
    let Some(r) = joined else {
        return Ok(()); // not joined: nothing to purge
    };
    let unsealed = app.keyring.unsealed().ok_or_else(|| {
        anyhow::anyhow!("this partition does not hold the domain: it cannot check the notice")
    })?;
    let n = RemovalNotice::open(notice, unsealed.secret.master_key())
        .map_err(|e| anyhow::anyhow!("the removal notice was refused: {e}"))?;
    anyhow::ensure!(
        n.region == me
            && n.pool_id == r.primary_pool_id
            && Some(&n.fingerprint) == fingerprint.as_ref(),
        "the removal notice names region '{}' of primary pool {} (this is region '{me}' of {})",
        n.region,
        n.pool_id,
        r.primary_pool_id
    );
    let result = app
        .store
        .propose_local(Command::RegionPurge {
            primary: r.primary.clone(),
            removed_at: n.removed_at,
        })
        .await;
    audit_outbound(
        app,
        &r.primary,
        ("GET", "/internal/region/feed"),
        "RegionPurged",
        result.is_ok(),
    );
    result?;
    tracing::warn!(primary = %r.primary, "the primary removed this region: its keys and its security domain were purged");
    Ok(())
}

/// The audit record of what this region did on an answer of its primary (`call`: the
/// method and path it called).
fn audit_outbound(app: &App, primary: &str, call: (&str, &str), operation: &str, committed: bool) {
    app.audit
        .record(outbound_record(app, primary, call, operation, committed));
}

/// [`audit_outbound`]'s record, for a caller that adds to it (the keys it names).
pub(super) fn outbound_record(
    app: &App,
    primary: &str,
    call: (&str, &str),
    operation: &str,
    committed: bool,
) -> AuditRecord {
    AuditRecord {
        request_id: uuid::Uuid::new_v4().to_string(),
        partition: app.cfg.partition_id.clone(),
        caller: format!("region:{primary}"),
        client_address: "outbound".into(),
        method: call.0.into(),
        path: call.1.into(),
        operation: operation.into(),
        member: Some(primary.to_string()),
        status: if committed { 200 } else { 500 },
        ..AuditRecord::default()
    }
}

/// A region its primary removed: every partition deletes the domain (again after a
/// restart); the leader asks the primary now and then whether it accepts the region again
/// (named again): then the region joins anew, from nothing.
async fn purged(app: &Arc<App>, replica: &crate::consensus::raft::Replica) {
    app.shred_domain();
    if let Some(link) = app.regions.link().filter(|_| replica.is_leader())
        && link.position().await.is_ok()
    {
        match app.store.propose_local(Command::RegionRejoin).await {
            Ok(_) => {
                tracing::warn!(primary = %link.primary.name, "the primary accepts this region again: joining it anew")
            }
            Err(e) => tracing::debug!(error = %e, "rejoin not committed yet"),
        }
    }
    tokio::time::sleep(5 * IDLE_POLL).await;
}

/// A partition that does not lead: keep what its status says of the primary fresh.
async fn link_idle(app: &App, link: &PrimaryLink) {
    if let Ok(p) = link.position().await {
        link.saw(
            p.primary_index,
            app.store.read().region.applied_primary_index(),
        );
    }
    tokio::time::sleep(IDLE_POLL).await;
}

/// Obtain the domain from the primary and commit `RegionJoined`.
async fn join(app: &Arc<App>, link: &PrimaryLink) -> anyhow::Result<()> {
    let Some(cfg) = &app.regions.config else {
        anyhow::bail!("no region configuration");
    };
    let pool_id = app.store.read().settings.pool_id.clone();
    // The transfer key: generated here, held in memory only, used once.
    let ek = app.keygen.exchange_key(&pool_id).await?;
    let reply = link
        .join(&JoinRequest {
            region: cfg.name.clone(),
            exchange_certificate: ek.certificate_pem(),
        })
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "joining the primary region failed");
            e
        })?;
    let secret = ek.open_transfer_blob(&reply.blob, &pool_id)?;
    anyhow::ensure!(
        secret.fingerprint() == reply.fingerprint,
        "the primary sent a domain whose fingerprint is not the one it announced"
    );
    app.install_domain(secret)?;
    let r = app
        .store
        .propose_local(Command::RegionJoined {
            primary: reply.primary.clone(),
            primary_pool_id: reply.primary_pool_id.clone(),
            epoch: reply.epoch,
            domain_id: reply.domain_id.clone(),
            fingerprint: reply.fingerprint.clone(),
            settings: reply.settings.clone(),
            now: crate::service::now(),
        })
        .await;
    audit_outbound(
        app,
        &reply.primary,
        ("POST", "/internal/region/join"),
        "RegionJoined",
        r.is_ok(),
    );
    r?;
    tracing::info!(primary = %reply.primary, fingerprint = %reply.fingerprint, "joined the primary region: the security domain was sealed to this region's transfer key");
    Ok(())
}

/// One feed round: apply what the primary has after this region's position.
async fn pull(app: &Arc<App>, link: &PrimaryLink, r: &ReplicaOf) -> anyhow::Result<()> {
    if app.store.read().region.reseed {
        // A fenced old primary: its own changes after the common index go.
        return bootstrap(app, link).await;
    }
    let after = r.applied_primary_index;
    let feed = match link.feed(after, FEED_MAX, FEED_WAIT).await {
        Ok(f) => f,
        Err(e @ LinkError::Unreachable { .. }) => {
            link.saw(0, after);
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    anyhow::ensure!(
        feed.epoch == r.epoch,
        "the primary '{}' is at epoch {}, this region follows epoch {}",
        r.primary,
        feed.epoch,
        r.epoch
    );
    if feed.snapshot_required {
        tracing::warn!(
            after,
            primary_index = feed.primary_index,
            "the primary's log no longer reaches this region's position; catching up from a snapshot"
        );
        return bootstrap(app, link).await;
    }
    link.saw(feed.primary_index, after);
    if feed.write_lease_ms != r.primary_write_lease_ms {
        // Kept in the replicated state: a failover on any partition waits the lease out.
        app.store
            .propose_local(Command::RegionPrimaryLease {
                ms: feed.write_lease_ms,
            })
            .await?;
    }
    if feed.through > after {
        app.store
            .propose_local(Command::RegionApply {
                entries: feed.entries,
                through: feed.through,
            })
            .await?;
        link.saw(feed.primary_index, feed.through);
    }
    match feed.handover {
        Some(h) => repoint(app, link, &h, feed.through.max(after)).await,
        None => Ok(()),
    }
}

/// The primary was demoted (planned switchover): once this region has applied its last
/// index and every region has acknowledged it (the hand-over is ready: this region's polls
/// after the last index are its acknowledgement), follow the region promoted next — unless
/// this region is the one promoted, which waits for its promotion with the demotion token.
async fn repoint(
    app: &Arc<App>,
    link: &PrimaryLink,
    h: &keystead_core::region::Handover,
    applied: u64,
) -> anyhow::Result<()> {
    link.note_handover(h);
    let me = app.regions.name(&app.store.read());
    if h.to == me || applied < h.last_index || !h.ready {
        return Ok(());
    }
    app.store
        .propose_local(Command::RegionRepoint {
            to: h.to.clone(),
            endpoints: h.endpoints.clone(),
            ca_pem: h.ca_certificate.clone(),
            epoch: h.epoch,
            last_index: h.last_index,
            failover: false,
        })
        .await?;
    app.regions.reconcile(&app.store);
    tracing::warn!(primary = %h.to, epoch = h.epoch, "the primary handed over: this region follows the new primary once it is promoted");
    Ok(())
}

/// Catch up from a streamed snapshot: stage its pages through the region's own group, then
/// install it at the primary index it was taken at.
async fn bootstrap(app: &Arc<App>, link: &PrimaryLink) -> anyhow::Result<()> {
    let id = uuid::Uuid::new_v4().to_string();
    app.store
        .propose_local(Command::RegionStage {
            command: Box::new(Command::RestoreBegin { id: id.clone() }),
        })
        .await?;
    let mut page = link.snapshot_page(None, 0).await?;
    let (session, through, settings) = (page.session.clone(), page.through, page.settings.clone());
    let (key_count, deleted_count) = (page.key_count, page.deleted_count);
    loop {
        let last = page.last;
        let next = page.page + 1;
        // A page (<= 256 KiB on the wire) is staged in commands of the restore's bounded
        // size: an append request of 64 of them must reach a follower of this region and be
        // made durable within one heartbeat interval (pages staged whole stalled this
        // region's own group under load).
        let keys = stages(page.keys, Some(STAGE_BYTES)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let deleted =
            stages(page.deleted, Some(STAGE_BYTES)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let runs = keys
            .into_iter()
            .map(|k| (k, Vec::new()))
            .chain(deleted.into_iter().map(|d| (Vec::new(), d)));
        for (keys, deleted) in runs {
            app.store
                .propose_local(Command::RegionStage {
                    command: Box::new(Command::RestoreStage {
                        id: id.clone(),
                        keys,
                        deleted,
                        rbac: None,
                    }),
                })
                .await?;
        }
        if let Some(rbac) = page.rbac {
            app.store
                .propose_local(Command::RegionStage {
                    command: Box::new(Command::RestoreStage {
                        id: id.clone(),
                        keys: Vec::new(),
                        deleted: Vec::new(),
                        rbac: Some(Box::new(rbac)),
                    }),
                })
                .await?;
        }
        if last {
            break;
        }
        page = link.snapshot_page(Some(&session), next).await?;
    }
    app.store
        .propose_local(Command::RegionInstall {
            id,
            key_count,
            deleted_count,
            through,
            settings,
        })
        .await?;
    link.saw(through, through);
    tracing::info!(
        through,
        keys = key_count,
        "caught up from the primary's snapshot"
    );
    Ok(())
}
