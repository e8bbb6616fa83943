//! The demotion token of a planned switchover (docs/regions.md): what a demoted primary
//! publishes (its pool, domain, the new epoch, its last index, the region to promote),
//! authenticated with HMAC-SHA256 under a key derived from the security domain — every
//! region holds the domain, so the promoted region checks it, and nobody without the domain
//! can forge one. Not secret: it is shown in status and passed through the operator.

use crate::b64::{decode_url, encode_url};
use crate::kdf::{LABEL_REGION_DEMOTION, derive_key};
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

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the demotion token is not of the form <payload>.<mac> in base64url")]
    Format,
    #[error("the demotion token's MAC does not verify under this security domain")]
    Mac,
}

fn mac_key(master: &[u8; 32], pool_id: &str) -> aws_lc_rs::hmac::Key {
    let k = derive_key(master, LABEL_REGION_DEMOTION, pool_id.as_bytes());
    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, k.as_slice())
}

impl DemotionToken {
    /// `base64url(JSON) "." base64url(HMAC)`, the MAC keyed by the domain and the pool id.
    pub fn seal(&self, master: &[u8; 32]) -> String {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        let tag = aws_lc_rs::hmac::sign(&mac_key(master, &self.pool_id), &payload);
        format!("{}.{}", encode_url(&payload), encode_url(tag.as_ref()))
    }

    /// Check a sealed token's MAC under `master` and return what it says.
    pub fn open(token: &str, master: &[u8; 32]) -> Result<DemotionToken, TokenError> {
        let (payload, tag) = token.trim().split_once('.').ok_or(TokenError::Format)?;
        let payload = decode_url(payload).map_err(|_| TokenError::Format)?;
        let tag = decode_url(tag).map_err(|_| TokenError::Format)?;
        let t: DemotionToken = serde_json::from_slice(&payload).map_err(|_| TokenError::Format)?;
        aws_lc_rs::hmac::verify(&mac_key(master, &t.pool_id), &payload, &tag)
            .map_err(|_| TokenError::Mac)?;
        Ok(t)
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
}
