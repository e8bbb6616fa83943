//! Region tokens (docs/regions.md), authenticated with HMAC-SHA256 under a key derived
//! from the security domain — every region holds the domain, so a region checks them, and
//! nobody without the domain can forge one. Not secret:
//! - the demotion token of a planned switchover: what a demoted primary publishes (its
//!   pool, domain, the new epoch, its last index, the region to promote), shown in status
//!   and passed through the operator;
//! - the removal notice a primary answers a region it no longer accepts: the region purges
//!   its pool on it (and only on a notice that verifies under its own domain).

use crate::b64::{decode_url, encode_url};
use crate::kdf::{LABEL_REGION_DEMOTION, LABEL_REGION_REMOVAL, derive_key};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DemotionToken {
    /// The demoted primary: region name and pool id.
    pub primary: String,
    pub pool_id: String,
    /// The security domain's fingerprint.
    pub fingerprint: String,
    /// The epoch the promoted region starts.
    pub epoch: u64,
    /// The demoted primary's last log index: the promoted region must have applied it.
    pub last_index: u64,
    /// The region to promote.
    pub new_primary: String,
}

/// The notice a primary gives a region it removed (`DELETE /admin/regions/{name}`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemovalNotice {
    /// The primary: region name and pool id.
    pub primary: String,
    pub pool_id: String,
    /// The security domain's fingerprint.
    pub fingerprint: String,
    /// The region removed.
    pub region: String,
    /// When it was removed (Unix seconds).
    pub removed_at: i64,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the region token is not of the form <payload>.<mac> in base64url")]
    Format,
    #[error("the region token's MAC does not verify under this security domain")]
    Mac,
}

fn mac_key(master: &[u8; 32], label: &str, pool_id: &str) -> aws_lc_rs::hmac::Key {
    let k = derive_key(master, label, pool_id.as_bytes());
    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, k.as_slice())
}

/// `base64url(JSON) "." base64url(HMAC)`, the MAC keyed by the domain, `label` and the pool id.
fn seal<T: Serialize>(t: &T, label: &str, pool_id: &str, master: &[u8; 32]) -> String {
    let payload = serde_json::to_vec(t).unwrap_or_default();
    let tag = aws_lc_rs::hmac::sign(&mac_key(master, label, pool_id), &payload);
    format!("{}.{}", encode_url(&payload), encode_url(tag.as_ref()))
}

/// Check a sealed token's MAC under `master` and `label` and return what it says (the pool
/// id the MAC is keyed with is read from the payload by `pool_id`).
fn open<T: DeserializeOwned>(
    token: &str,
    label: &str,
    pool_id: impl Fn(&T) -> &str,
    master: &[u8; 32],
) -> Result<T, TokenError> {
    let (payload, tag) = token.trim().split_once('.').ok_or(TokenError::Format)?;
    let payload = decode_url(payload).map_err(|_| TokenError::Format)?;
    let tag = decode_url(tag).map_err(|_| TokenError::Format)?;
    let t: T = serde_json::from_slice(&payload).map_err(|_| TokenError::Format)?;
    aws_lc_rs::hmac::verify(&mac_key(master, label, pool_id(&t)), &payload, &tag)
        .map_err(|_| TokenError::Mac)?;
    Ok(t)
}

impl DemotionToken {
    pub fn seal(&self, master: &[u8; 32]) -> String {
        seal(self, LABEL_REGION_DEMOTION, &self.pool_id, master)
    }

    pub fn open(token: &str, master: &[u8; 32]) -> Result<DemotionToken, TokenError> {
        open(
            token,
            LABEL_REGION_DEMOTION,
            |t: &DemotionToken| &t.pool_id,
            master,
        )
    }
}

impl RemovalNotice {
    pub fn seal(&self, master: &[u8; 32]) -> String {
        seal(self, LABEL_REGION_REMOVAL, &self.pool_id, master)
    }

    pub fn open(token: &str, master: &[u8; 32]) -> Result<RemovalNotice, TokenError> {
        open(
            token,
            LABEL_REGION_REMOVAL,
            |t: &RemovalNotice| &t.pool_id,
            master,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> DemotionToken {
        DemotionToken {
            primary: "east".into(),
            pool_id: "p-1".into(),
            fingerprint: "ab".into(),
            epoch: 2,
            last_index: 41,
            new_primary: "west".into(),
        }
    }

    #[test]
    fn a_token_opens_under_its_domain_only_and_resists_edits() {
        let sealed = token().seal(&[7; 32]);
        assert_eq!(DemotionToken::open(&sealed, &[7; 32]), Ok(token()));
        assert_eq!(DemotionToken::open(&sealed, &[8; 32]), Err(TokenError::Mac));
        let (p, t) = sealed.split_once('.').unwrap();
        let mut edited = token();
        edited.last_index = 1;
        let forged = format!("{}.{t}", encode_url(serde_json::to_vec(&edited).unwrap()));
        assert_eq!(DemotionToken::open(&forged, &[7; 32]), Err(TokenError::Mac));
        assert_eq!(DemotionToken::open(p, &[7; 32]), Err(TokenError::Format));
        assert_eq!(
            DemotionToken::open("x.y", &[7; 32]),
            Err(TokenError::Format)
        );
    }

    #[test]
    fn a_removal_notice_opens_under_its_domain_only_and_is_no_demotion_token() {
        let n = RemovalNotice {
            primary: "east".into(),
            pool_id: "p-1".into(),
            fingerprint: "ab".into(),
            region: "west".into(),
            removed_at: 1_800_000_000,
        };
        let sealed = n.seal(&[7; 32]);
        assert_eq!(RemovalNotice::open(&sealed, &[7; 32]), Ok(n));
        assert_eq!(RemovalNotice::open(&sealed, &[8; 32]), Err(TokenError::Mac));
        // The labels differ: a demotion token is never taken for a notice, nor back.
        let demotion = token().seal(&[7; 32]);
        assert!(RemovalNotice::open(&demotion, &[7; 32]).is_err());
        assert!(DemotionToken::open(&sealed, &[7; 32]).is_err());
    }
}
