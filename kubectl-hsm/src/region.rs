//! `kubectl hsm region list|status|add|remove|demote|promote|follow`: the pool's region role, its
//! position and lag behind its primary, and (on a primary) the regions it accepts and how far
//! behind each is (docs/regions.md; reads `GET /admin/status`); naming and removing the
//! regions a primary accepts; switchover and failover, and re-pointing a region to the one a
//! failover promoted.

use crate::client::{Output, PoolArgs, print_json};
use clap::Subcommand;
use keystead_core::region::{
    AcceptRegionRequest, AcceptedRegion, DemoteReply, DemoteRequest, FollowRequest, PromoteRequest,
    RegionRole, RegionStatus,
};
use keystead_core::status::PoolStatus;

#[derive(Subcommand, Debug)]
pub enum RegionCommand {
    /// The regions of this pool's topology: itself, its primary or the regions it accepts.
    List,
    /// This pool's region role, epoch, applied primary index and lag.
    Status,
    /// On the primary: accept region NAME, identified by its pool CA (it may then join and
    /// obtain the security domain). Naming it again with another CA replaces the CA.
    Add {
        name: String,
        /// The region's pool CA certificate (PEM): its `ca.crt` (a local pool's
        /// `ca.crt` beside its pool.json).
        #[arg(long)]
        ca: std::path::PathBuf,
    },
    /// On the primary: stop accepting region NAME — its partitions are refused from their
    /// next request on (existing connections included).
    Remove { name: String },
    /// Planned switchover, step 1 (on the primary): stop taking changes, hand over to an
    /// accepted region; prints the demotion token to promote it with.
    Demote {
        /// The accepted region to promote next.
        #[arg(long)]
        to: String,
        /// Its pool file (a local pool), for its endpoints.
        #[arg(long, conflicts_with = "endpoint_of_new_primary")]
        to_pool: Option<std::path::PathBuf>,
        /// Its partitions' endpoints (repeat), when there is no pool file.
        #[arg(long = "new-primary-endpoint")]
        endpoint_of_new_primary: Vec<String>,
    },
    /// Planned switchover, step 2 (on the region named by the token): become the primary
    /// once every change of the demoted primary is applied here.
    Promote {
        /// The demotion token `region demote` printed (or region.demotionToken of the
        /// demoted primary's status).
        #[arg(long, required_unless_present = "force")]
        token: Option<String>,
        /// Failover: the primary is lost; promote at the position this region has applied
        /// (what it has not applied is lost). Keep the old primary stopped.
        #[arg(long, conflicts_with = "token")]
        force: bool,
    },
    /// After a failover (on a replica region of the lost primary): follow the region the
    /// failover promoted. In place when this region had applied exactly what that region had
    /// when promoted; otherwise re-seeded from it, the changes it never had listed in this
    /// region's status (discardedWrites) and audit log. The promoted region must accept this
    /// region first (`region add` there).
    Follow {
        /// The promoted region.
        #[arg(long)]
        to: String,
        /// Its pool file (a local pool), for its endpoints and CA.
        #[arg(long, conflicts_with = "endpoint_of_new_primary")]
        to_pool: Option<std::path::PathBuf>,
        /// Its partitions' endpoints (repeat), when there is no pool file.
        #[arg(long = "new-primary-endpoint", requires = "ca")]
        endpoint_of_new_primary: Vec<String>,
        /// Its pool CA certificate (PEM), when there is no pool file.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
    },
}

pub async fn run(pool: &PoolArgs, cmd: RegionCommand) -> anyhow::Result<()> {
    let cmd = match cmd {
        RegionCommand::Demote {
            to,
            to_pool,
            endpoint_of_new_primary,
        } => return demote(pool, to, to_pool, endpoint_of_new_primary).await,
        RegionCommand::Follow {
            to,
            to_pool,
            endpoint_of_new_primary,
            ca,
        } => return follow(pool, to, to_pool, endpoint_of_new_primary, ca).await,
        RegionCommand::Add { name, ca } => {
            let ca_certificate = std::fs::read_to_string(&ca).map_err(|e| {
                anyhow::anyhow!("cannot read the region's CA {}: {e}", ca.display())
            })?;
            let c = pool.client()?;
            let v: AcceptedList = c
                .call(
                    reqwest::Method::PUT,
                    &format!("/admin/regions/{name}"),
                    Some(&AcceptRegionRequest { ca_certificate }),
                )
                .await?;
            return print_accepted(pool.output, &v.value);
        }
        RegionCommand::Remove { name } => {
            let c = pool.client()?;
            let v: AcceptedList = c
                .call(
                    reqwest::Method::DELETE,
                    &format!("/admin/regions/{name}"),
                    None::<&()>,
                )
                .await?;
            return print_accepted(pool.output, &v.value);
        }
        RegionCommand::Promote { token, force } => {
            let c = pool.client()?;
            let status: RegionStatus = c
                .call(
                    reqwest::Method::POST,
                    "/admin/regions/promote",
                    Some(&PromoteRequest { token, force }),
                )
                .await?;
            return match pool.output {
                Output::Json => print_json(&status),
                Output::Text => {
                    print!("{}", status_text("", &status));
                    Ok(())
                }
            };
        }
        other => other,
    };
    let (s, r) = pool_view(pool).await?;
    match (cmd, pool.output) {
        (RegionCommand::Status, Output::Json) => print_json(&r),
        (RegionCommand::List, Output::Json) => print_json(&rows(&s.pool_name, &r)),
        (RegionCommand::Status, Output::Text) => {
            print!("{}", status_text(&s.pool_name, &r));
            Ok(())
        }
        (RegionCommand::List, Output::Text) => {
            print!("{}", list_text(&rows(&s.pool_name, &r)));
            Ok(())
        }
        (
            RegionCommand::Demote { .. }
            | RegionCommand::Promote { .. }
            | RegionCommand::Follow { .. }
            | RegionCommand::Add { .. }
            | RegionCommand::Remove { .. },
            _,
        ) => Ok(()),
    }
}

/// The answer of `PUT`/`DELETE /admin/regions/{name}`: the regions accepted now.
#[derive(serde::Deserialize)]
struct AcceptedList {
    value: Vec<AcceptedRegion>,
}

fn print_accepted(output: Output, accepted: &[AcceptedRegion]) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&accepted),
        Output::Text => {
            if accepted.is_empty() {
                println!("this primary accepts no region");
            }
            for a in accepted {
                println!("accepted: {} (CA sha256 {})", a.name, a.ca_sha256);
            }
            Ok(())
        }
    }
}

async fn demote(
    pool: &PoolArgs,
    to: String,
    to_pool: Option<std::path::PathBuf>,
    endpoints: Vec<String>,
) -> anyhow::Result<()> {
    let endpoints = match to_pool {
        Some(p) => keystead_core::pool_file::PoolFile::load(&p)?.endpoints,
        None => endpoints,
    };
    anyhow::ensure!(
        !endpoints.is_empty(),
        "give the new primary's endpoints: --to-pool ITS/pool.json or --new-primary-endpoint URL (repeat)"
    );
    let c = pool.client()?;
    let reply: DemoteReply = c
        .call(
            reqwest::Method::POST,
            "/admin/regions/demote",
            Some(&DemoteRequest {
                to,
                endpoints,
                wait_seconds: None,
            }),
        )
        .await?;
    match pool.output {
        Output::Json => print_json(&reply),
        Output::Text => {
            println!(
                "demoted at index {} (next epoch {})",
                reply.last_index, reply.epoch
            );
            println!("promote the new primary with:");
            println!("  kubectl hsm region promote --token {}", reply.token);
            Ok(())
        }
    }
}

async fn follow(
    pool: &PoolArgs,
    to: String,
    to_pool: Option<std::path::PathBuf>,
    endpoints: Vec<String>,
    ca: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let (endpoints, ca) = match to_pool {
        Some(p) => {
            let f = keystead_core::pool_file::PoolFile::load(&p)?;
            (f.endpoints, f.ca_file)
        }
        None => (
            endpoints,
            ca.ok_or_else(|| anyhow::anyhow!("give the promoted region's CA: --ca FILE"))?,
        ),
    };
    anyhow::ensure!(
        !endpoints.is_empty(),
        "give the promoted region's endpoints: --to-pool ITS/pool.json or --new-primary-endpoint URL (repeat) with --ca FILE"
    );
    let ca_certificate = std::fs::read_to_string(&ca).map_err(|e| {
        anyhow::anyhow!("cannot read the promoted region's CA {}: {e}", ca.display())
    })?;
    let c = pool.client()?;
    let status: RegionStatus = c
        .call(
            reqwest::Method::POST,
            "/admin/regions/follow",
            Some(&FollowRequest {
                to: to.clone(),
                endpoints,
                ca_certificate,
            }),
        )
        .await?;
    match pool.output {
        Output::Json => print_json(&status),
        Output::Text => {
            println!(
                "this region follows '{to}' from now on (in place, or re-seeded: see `kubectl hsm region status`)"
            );
            Ok(())
        }
    }
}

/// The status of every partition the pool file lists (or of the one endpoint given): each
/// partition sees the regions it served itself, so their views are merged — the furthest
/// position of this region, the latest acknowledgement of each accepted region.
async fn pool_view(pool: &PoolArgs) -> anyhow::Result<(PoolStatus, RegionStatus)> {
    let endpoints: Vec<Option<String>> = match (&pool.endpoint, &pool.pool) {
        (None, Some(p)) => keystead_core::pool_file::PoolFile::load(p)?
            .endpoints
            .into_iter()
            .map(Some)
            .collect(),
        _ => vec![None],
    };
    let mut views = Vec::new();
    let mut last_err = None;
    for ep in endpoints {
        let args = PoolArgs {
            endpoint: ep.or_else(|| pool.endpoint.clone()),
            ..pool.clone()
        };
        let got = async {
            args.client()?
                .call::<serde_json::Value, PoolStatus>(reqwest::Method::GET, "/admin/status", None)
                .await
        }
        .await;
        match got {
            Ok(s) => views.push(s),
            Err(e) => last_err = Some(e),
        }
    }
    let Some(first) = views.first().cloned() else {
        return Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no endpoint to ask")));
    };
    let regions: Vec<RegionStatus> = views.iter().filter_map(|v| v.region.clone()).collect();
    Ok((first, merge(regions)))
}

/// One view of a region from several partitions' views (shared with the operator).
pub use keystead_core::region::merge_views as merge;

/// One line of `region list`.
#[derive(serde::Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub name: String,
    pub role: String,
    pub position: Option<u64>,
    pub lag_entries: Option<u64>,
    pub note: String,
}

fn role(r: RegionRole) -> &'static str {
    match r {
        RegionRole::Primary => "primary",
        RegionRole::Replica => "replica",
    }
}

/// This region first, then its primary (a replica) or the regions it accepts (a primary).
pub fn rows(pool_name: &str, r: &RegionStatus) -> Vec<Row> {
    let me = r.name.clone().unwrap_or_else(|| pool_name.to_string());
    let mut out = vec![Row {
        name: me,
        role: format!("{} (this pool)", role(r.role)),
        position: Some(match r.role {
            RegionRole::Replica => r.applied_primary_index,
            RegionRole::Primary => r.primary_index,
        }),
        lag_entries: (r.role == RegionRole::Replica).then_some(r.lag_entries),
        note: match r.role {
            RegionRole::Replica if !r.joined => "not joined yet".into(),
            RegionRole::Replica => format!("lag {} ms", r.lag_ms),
            RegionRole::Primary => String::new(),
        },
    }];
    if let Some(p) = &r.primary {
        out.push(Row {
            name: p.clone(),
            role: "primary".into(),
            position: Some(r.primary_index),
            lag_entries: None,
            note: if r.primary_refuses {
                "REFUSES this region (removed there): name it again on the primary".into()
            } else if r.primary_reachable {
                "reachable".into()
            } else {
                "UNREACHABLE: writes are refused here".into()
            },
        });
    }
    for a in &r.accepted {
        let seen = r.regions.iter().find(|p| p.name == a.name);
        out.push(Row {
            name: a.name.clone(),
            role: "replica".into(),
            position: seen.map(|p| p.acknowledged_index),
            lag_entries: seen.map(|p| p.lag_entries),
            note: match seen.and_then(|p| p.last_seen_seconds_ago) {
                Some(s) => format!(
                    "seen {s}s ago by this partition; CA sha256 {}",
                    short(&a.ca_sha256)
                ),
                None => format!(
                    "not seen by this partition; CA sha256 {}",
                    short(&a.ca_sha256)
                ),
            },
        });
    }
    out
}

fn short(h: &str) -> &str {
    &h[..h.len().min(16)]
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub fn list_text(rows: &[Row]) -> String {
    let mut s = format!(
        "{:<20}{:<22}{:>10}{:>10}  {}\n",
        "REGION", "ROLE", "POSITION", "LAG", "NOTE"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<20}{:<22}{:>10}{:>10}  {}\n",
            r.name,
            r.role,
            opt(r.position),
            opt(r.lag_entries),
            r.note
        ));
    }
    s
}

pub fn status_text(pool_name: &str, r: &RegionStatus) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<24}{v}\n"));
    line(
        "region",
        r.name.clone().unwrap_or_else(|| pool_name.to_string()),
    );
    line("role", role(r.role).into());
    line("epoch", r.epoch.to_string());
    if r.role == RegionRole::Replica {
        line("primary", r.primary.clone().unwrap_or_default());
        line("primaryEndpoints", r.primary_endpoints.join(", "));
        line("joined", r.joined.to_string());
        line("appliedPrimaryIndex", r.applied_primary_index.to_string());
        line("primaryIndex", r.primary_index.to_string());
        line("lagEntries", r.lag_entries.to_string());
        line("lagMs", r.lag_ms.to_string());
        line("primaryReachable", r.primary_reachable.to_string());
        if r.primary_refuses {
            line(
                "primaryRefuses",
                "true (removed on the primary, or named there with another CA)".into(),
            );
        }
        if !r.discarded_writes.is_empty() {
            line("discardedWrites", r.discarded_writes.join(", "));
        }
        if let Some(by) = &r.removed_by {
            line(
                "removedBy",
                format!(
                    "{by} (this pool was purged: keys and security domain gone; named again there, it joins anew)"
                ),
            );
        }
        if let Some(ms) = r.primary_write_lease_ms {
            line("primaryWriteLeaseMs", ms.to_string());
        }
    } else {
        let names: Vec<&str> = r.accepted.iter().map(|a| a.name.as_str()).collect();
        line("acceptedRegions", names.join(", "));
        if let Some(ms) = r.write_lease_ms {
            line(
                "writeLeaseMs",
                format!(
                    "{ms}{}",
                    if r.writes_refused_by_lease {
                        " (EXPIRED: no region polled within it; writes are refused)"
                    } else {
                        ""
                    }
                ),
            );
        }
        if let Some(to) = &r.demoted_to {
            line("demotedTo", to.clone());
            line(
                "demotionToken",
                r.demotion_token.clone().unwrap_or_default(),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use keystead_core::region::{AcceptedRegion, PeerRegionStatus};

    #[test]
    fn a_primary_lists_itself_then_each_accepted_region_with_its_lag() {
        let r = RegionStatus {
            name: Some("a".into()),
            accepted: vec![AcceptedRegion {
                name: "b".into(),
                ca_sha256: "ab".repeat(32),
                added: 1,
            }],
            regions: vec![PeerRegionStatus {
                name: "b".into(),
                acknowledged_index: 40,
                lag_entries: 2,
                last_seen_seconds_ago: Some(0),
            }],
            primary_index: 42,
            ..RegionStatus::default()
        };
        let rows = rows("a", &r);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[1].position, rows[1].lag_entries), (Some(40), Some(2)));
        let text = list_text(&rows);
        assert!(
            text.contains("primary (this pool)") && text.contains("seen 0s ago"),
            "{text}"
        );
    }

    #[test]
    fn partition_views_merge_into_the_furthest_position_and_the_freshest_acknowledgements() {
        let seen = |ack, ago| PeerRegionStatus {
            name: "b".into(),
            acknowledged_index: ack,
            lag_entries: 0,
            last_seen_seconds_ago: ago,
        };
        let a = RegionStatus {
            applied_primary_index: 5,
            regions: vec![seen(3, Some(9))],
            ..RegionStatus::default()
        };
        let b = RegionStatus {
            applied_primary_index: 7,
            regions: vec![seen(6, Some(0))],
            ..RegionStatus::default()
        };
        let m = merge(vec![a, b]);
        assert_eq!(m.applied_primary_index, 7);
        assert_eq!(m.regions, vec![seen(6, Some(0))]);
    }

    #[test]
    fn a_replica_shows_its_primary_and_says_when_it_is_unreachable() {
        let r = RegionStatus {
            name: Some("b".into()),
            role: RegionRole::Replica,
            primary: Some("a".into()),
            joined: true,
            applied_primary_index: 7,
            primary_index: 9,
            lag_entries: 2,
            ..RegionStatus::default()
        };
        let text = list_text(&rows("b", &r));
        assert!(text.contains("UNREACHABLE"), "{text}");
        assert!(status_text("b", &r).contains("lagEntries              2"));
    }
}
