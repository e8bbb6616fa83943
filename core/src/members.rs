//! Wire types of the membership admin API of a replicated pool (`/admin/members`), shared
//! by the partition, `kubectl hsm members` and the operator. See `docs/replication.md`.

use serde::{Deserialize, Serialize};

/// What a member is in the Raft group.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum MemberRole {
    /// Counts for elections and commits.
    #[default]
    Voter,
    /// Receives the log and serves requests, but does not count for elections or commits.
    Learner,
}

/// Body of `POST /admin/members` (add) and `PUT /admin/members/{id}` (replace member `id`
/// by this one).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemberSpec {
    /// Raft node id of the new member: never used before in this pool.
    pub id: u64,
    /// Partition name: the common name of its pool-CA certificate and its workload identity
    /// `partition:<name>`.
    pub name: String,
    /// Base URL of its HTTPS port (`https://host:port`).
    pub url: String,
    /// `voter` (default) or `learner` (add only; a replacement is always a voter).
    #[serde(default)]
    pub role: MemberRole,
}

/// The request is not a valid member description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidMember(pub String);

impl MemberSpec {
    /// The URL without a trailing slash (the form stored in the membership).
    pub fn normalized_url(&self) -> String {
        self.url.trim_end_matches('/').to_string()
    }

    /// Check the fields: a name usable as a certificate common name, an https base URL.
    pub fn validate(&self) -> Result<(), InvalidMember> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !name_ok {
            return Err(InvalidMember(format!(
                "member name {:?} is not valid: use 1-63 letters, digits, '-', '.' or '_' (the common name of the partition's pool-CA certificate)",
                self.name
            )));
        }
        let rest = self.url.strip_prefix("https://").ok_or_else(|| {
            InvalidMember(format!(
                "member url {:?} must be an https base URL such as https://p3.pool.svc:8443",
                self.url
            ))
        })?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains(['/', '?', '#', ' ', '@']) {
            return Err(InvalidMember(format!(
                "member url {:?} must be a base URL (scheme, host and port, no path, query or credentials)",
                self.url
            )));
        }
        Ok(())
    }
}

/// Health of a member as the observing partition (normally the leader) sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum MemberHealth {
    /// Answers, has applied (almost) everything, holds the domain of an activated pool.
    Healthy,
    /// Answers but is behind, still recovering after an empty start, or lacks the domain.
    CatchingUp,
    /// Did not answer the probe.
    Unreachable,
}

/// One member in `GET /admin/members`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub url: String,
    pub role: MemberRole,
    pub health: MemberHealth,
    /// Last log index replicated to it (known on the leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
    /// Entries it is behind the leader's last log index (known on the leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Its own applied index, as it answered the probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// Whether it holds the security domain, as it answered the probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_loaded: Option<bool>,
    /// Started with an empty disk and not caught up yet (not voting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovering: Option<bool>,
    /// Why the probe failed (unreachable members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer of `GET /admin/members` and of the changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MembersView {
    /// The partition that computed this view: the leader, unless no leader was reachable.
    pub observed_by: String,
    /// Name of the current leader, if known.
    pub leader: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    pub members: Vec<MemberInfo>,
    /// Set when a change was accepted but is not finished (202): what is pending and how to
    /// continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

impl MembersView {
    pub fn member(&self, id: u64) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn voters(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.iter().filter(|m| m.role == MemberRole::Voter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, url: &str) -> MemberSpec {
        MemberSpec {
            id: 4,
            name: name.into(),
            url: url.into(),
            role: MemberRole::Voter,
        }
    }

    #[test]
    fn validation() {
        assert!(spec("p3", "https://127.0.0.1:8443").validate().is_ok());
        assert!(
            spec("pool-3.x", "https://pool-3.pool:8443/")
                .validate()
                .is_ok()
        );
        assert!(spec("", "https://a:1").validate().is_err());
        assert!(spec("p 3", "https://a:1").validate().is_err());
        assert!(spec("p3", "http://a:1").validate().is_err());
        assert!(spec("p3", "https://").validate().is_err());
        assert!(spec("p3", "https://a:1/path").validate().is_err());
        assert!(spec("p3", "https://u@a:1").validate().is_err());
        let e = spec("p3", "ftp://a").validate().unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
    }

    #[test]
    fn role_defaults_to_voter_and_unknown_fields_are_refused() {
        let s: MemberSpec =
            serde_json::from_str(r#"{"id":4,"name":"p3","url":"https://a:1"}"#).unwrap();
        assert_eq!(s.role, MemberRole::Voter);
        let s: MemberSpec =
            serde_json::from_str(r#"{"id":4,"name":"p3","url":"https://a:1","role":"learner"}"#)
                .unwrap();
        assert_eq!(s.role, MemberRole::Learner);
        assert!(
            serde_json::from_str::<MemberSpec>(r#"{"id":4,"name":"p3","url":"x","voter":1}"#)
                .is_err()
        );
        assert_eq!(spec("p3", "https://a:1/").normalized_url(), "https://a:1");
    }
}
