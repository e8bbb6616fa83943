//! `kubectl hsm members ...`: the Raft membership of a replicated pool (`/admin/members`).

use crate::client::{Client, Output, PoolArgs, print_json};
use anyhow::Context;
use clap::Subcommand;
use keystead_core::members::{MemberHealth, MemberRole, MemberSpec, MembersView};
use reqwest::Method;
use std::fmt::Write;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// List the members as the leader sees them: role, health, replication lag.
    List,
    /// Add a partition: it joins as a learner, catches up and receives the domain from a
    /// peer, then becomes a voter (unless --learner).
    Add {
        /// Raft node id of the new partition (never used before in this pool).
        #[arg(long)]
        id: u64,
        /// Partition name: the common name of its pool-CA certificate.
        #[arg(long)]
        name: String,
        /// Base URL of its HTTPS port, e.g. https://pool-3.pool.svc:8443
        #[arg(long)]
        url: String,
        /// Keep it a learner (replicates and serves, does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member. A voter only if at least three voters remain (or --force, never the
    /// last one) and the rest have a reachable majority.
    Remove {
        /// Node id of the member (see `members list`).
        id: u64,
        /// Allow the pool to shrink below three voters.
        #[arg(long)]
        force: bool,
    },
    /// Replace voter ID by a new partition: the new one joins and catches up, then takes the
    /// old one's vote in one joint change.
    Replace {
        /// Node id of the member to replace.
        id: u64,
        /// Raft node id of the new partition.
        #[arg(long = "new-id")]
        new_id: u64,
        /// Name of the new partition (its certificate's common name).
        #[arg(long)]
        name: String,
        /// Base URL of the new partition.
        #[arg(long)]
        url: String,
    },
}

/// How long the plugin keeps repeating a change that answers 202 (still catching up).
const CHANGE_DEADLINE: Duration = Duration::from_secs(30 * 60);

fn spec(id: u64, name: String, url: String, learner: bool) -> anyhow::Result<MemberSpec> {
    let s = MemberSpec {
        id,
        name,
        url,
        role: if learner {
            MemberRole::Learner
        } else {
            MemberRole::Voter
        },
    };
    s.validate()?;
    Ok(s)
}

/// Send a change; while the pool answers 202 (the new member is still catching up), say so
/// and repeat it (changes are idempotent).
async fn change(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&MemberSpec>,
) -> anyhow::Result<MembersView> {
    let started = Instant::now();
    loop {
        let (status, text) = c.raw(method.clone(), path, body).await?;
        let view: MembersView = serde_json::from_str(&text)
            .with_context(|| format!("unexpected answer from the pool: {text}"))?;
        if status != 202 {
            return Ok(view);
        }
        let pending = view.pending.as_deref().unwrap_or("still catching up");
        anyhow::ensure!(
            started.elapsed() < CHANGE_DEADLINE,
            "gave up after {} minutes: {pending}",
            CHANGE_DEADLINE.as_secs() / 60
        );
        eprintln!("{pending}");
    }
}

pub async fn run(pool: &PoolArgs, cmd: MembersCommand) -> anyhow::Result<()> {
    let c = pool.client()?;
    let view = match cmd {
        MembersCommand::List => c.call::<(), _>(Method::GET, "/admin/members", None).await?,
        MembersCommand::Add {
            id,
            name,
            url,
            learner,
        } => {
            let s = spec(id, name, url, learner)?;
            change(&c, Method::POST, "/admin/members", Some(&s)).await?
        }
        MembersCommand::Remove { id, force } => {
            let path = format!("/admin/members/{id}?force={force}");
            change(&c, Method::DELETE, &path, None).await?
        }
        MembersCommand::Replace {
            id,
            new_id,
            name,
            url,
        } => {
            let s = spec(new_id, name, url, false)?;
            change(&c, Method::PUT, &format!("/admin/members/{id}"), Some(&s)).await?
        }
    };
    if pool.output == Output::Json {
        return print_json(&view);
    }
    print!("{}", render(&view));
    Ok(())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The membership as a table.
pub fn render(v: &MembersView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6}{:<14}{:<9}{:<12}{:>9}{:>7}{:>9}  {:<7}URL",
        "ID", "NAME", "ROLE", "HEALTH", "MATCHED", "LAG", "APPLIED", "DOMAIN"
    );
    for m in &v.members {
        let role = match m.role {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
        };
        let health = match m.health {
            MemberHealth::Healthy => "healthy",
            MemberHealth::CatchingUp => "catchingUp",
            MemberHealth::Unreachable => "unreachable",
        };
        let leader = if v.leader.as_deref() == Some(m.name.as_str()) {
            " (leader)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:<6}{:<14}{:<9}{:<12}{:>9}{:>7}{:>9}  {:<7}{}{leader}",
            m.id,
            m.name,
            role,
            health,
            opt(m.matched_index),
            opt(m.lag),
            opt(m.applied_index),
            opt(m.domain_loaded.map(|d| if d { "yes" } else { "no" })),
            m.url,
        );
        if let Some(e) = &m.error {
            let _ = writeln!(out, "      {e}");
        }
    }
    let _ = writeln!(
        out,
        "leader: {}, term {}, commit index {} (as seen by {})",
        v.leader.as_deref().unwrap_or("none"),
        v.term,
        v.commit_index,
        v.observed_by
    );
    if let Some(p) = &v.pending {
        let _ = writeln!(out, "pending: {p}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keystead_core::members::MemberInfo;

    #[test]
    fn table() {
        let v = MembersView {
            observed_by: "p0".into(),
            leader: Some("p0".into()),
            term: 3,
            commit_index: 42,
            members: vec![
                MemberInfo {
                    id: 1,
                    name: "p0".into(),
                    url: "https://127.0.0.1:1".into(),
                    role: MemberRole::Voter,
                    health: MemberHealth::Healthy,
                    matched_index: Some(42),
                    lag: Some(0),
                    applied_index: Some(42),
                    domain_loaded: Some(true),
                    recovering: Some(false),
                    error: None,
                },
                MemberInfo {
                    id: 4,
                    name: "p3".into(),
                    url: "https://127.0.0.1:4".into(),
                    role: MemberRole::Learner,
                    health: MemberHealth::Unreachable,
                    matched_index: None,
                    lag: None,
                    applied_index: None,
                    domain_loaded: None,
                    recovering: None,
                    error: Some("cannot connect".into()),
                },
            ],
            pending: None,
        };
        let t = render(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID"), "{t}");
        assert!(
            lines[1].contains("voter") && lines[1].ends_with("(leader)"),
            "{t}"
        );
        assert!(
            lines[2].contains("learner") && lines[2].contains("unreachable"),
            "{t}"
        );
        assert!(lines[3].contains("cannot connect"), "{t}");
        assert!(lines[4].contains("term 3, commit index 42"), "{t}");
    }

    #[test]
    fn bad_member_is_refused_before_sending() {
        let e = spec(4, "p3".into(), "http://x:1".into(), false).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        assert_eq!(
            spec(4, "p3".into(), "https://x:1".into(), true)
                .unwrap()
                .role,
            MemberRole::Learner
        );
    }
}
