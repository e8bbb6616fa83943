//! The security-domain file: create (download), recover (custodian side), rehearse, inspect.
//!
//! Layout (JSON, all binary fields base64url without padding):
//!
//! ```json
//! {"version":"keystead/sd/1",
//!  "domain_id":"<uuid>","fingerprint":"<hex>","origin_pool":"<pool>","created":1700000000,
//!  "quorum":2,
//!  "shares":[{"x5t_256":"<thumbprint>","public_key_sha256":"<spki thumbprint>",
//!             "alg":"RSA-OAEP-256","enc_share":"<b64url>"}, ...],
//!  "enc":"A256GCM","nonce":"<b64url 12 bytes>","ciphertext":"<b64url ct||tag>"}
//! ```
//!
//! See `docs/security-domain.md` for the exact construction.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::keys::{CustodianKey, CustodianPrivateKey};
use super::util::{Canon, aead_open, aead_seal, b64_field, random, sha256};
use super::{DomainSecret, SdError};
use crate::b64::encode_url;

/// Version string of the security-domain file.
pub const DOMAIN_FILE_VERSION: &str = "keystead/sd/1";
/// Share encryption algorithm (RSA-OAEP, SHA-256, MGF1-SHA-256).
pub const SHARE_ALG: &str = "RSA-OAEP-256";
/// Content encryption algorithm.
pub const CONTENT_ENC: &str = "A256GCM";
/// Custodian count bounds.
pub const MIN_CUSTODIANS: usize = 3;
pub const MAX_CUSTODIANS: usize = 10;
/// Smallest quorum.
pub const MIN_QUORUM: u32 = 2;

const SHARE_FORMAT: u8 = 1;
/// Share plaintext: format byte, quorum, n, blahaj share (x + 32 bytes).
const SHARE_PLAINTEXT_LEN: usize = 3 + 1 + 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainFile {
    version: String,
    domain_id: String,
    fingerprint: String,
    origin_pool: String,
    created: i64,
    quorum: u32,
    shares: Vec<ShareEntry>,
    enc: String,
    nonce: String,
    ciphertext: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareEntry {
    x5t_256: String,
    public_key_sha256: String,
    alg: String,
    enc_share: String,
}

/// Public summary of a domain file (no keys needed, integrity NOT verified).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DomainFileSummary {
    pub version: String,
    pub domain_id: String,
    pub fingerprint: String,
    pub origin_pool: String,
    pub created: i64,
    pub quorum: u32,
    pub shares: Vec<ShareSummary>,
}

/// One share's custodian.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShareSummary {
    /// Thumbprint of the custodian certificate (or public key).
    pub thumbprint: String,
    /// b64url(SHA-256(SPKI DER)) of the custodian public key.
    pub public_key_thumbprint: String,
}

/// Result of a rehearsal: the keys reach the quorum and open the domain.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RehearsalReport {
    pub domain_id: String,
    pub fingerprint: String,
    pub quorum: u32,
    pub shares: usize,
    pub keys_given: usize,
    pub matched: Vec<MatchedKey>,
}

/// A private key and the share it opened.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MatchedKey {
    pub key: String,
    pub thumbprint: String,
}

fn share_label(domain_id: &str, x5t: &str, spki: &str) -> Vec<u8> {
    Canon::new("keystead/sd/1 share")
        .push_str(domain_id)
        .push_str(x5t)
        .push_str(spki)
        .bytes()
        .to_vec()
}

fn header_aad(f: &DomainFile, share_cts: &[Vec<u8>]) -> Vec<u8> {
    let mut c = Canon::new("keystead/sd/1 header");
    c.push_str(&f.version)
        .push_str(&f.domain_id)
        .push_str(&f.fingerprint)
        .push_str(&f.origin_pool)
        .push(&f.created.to_be_bytes())
        .push_u64(u64::from(f.quorum))
        .push_u64(f.shares.len() as u64);
    for (s, ct) in f.shares.iter().zip(share_cts) {
        c.push_str(&s.x5t_256)
            .push_str(&s.public_key_sha256)
            .push_str(&s.alg)
            .push(&sha256(ct));
    }
    c.push_str(&f.enc);
    c.bytes().to_vec()
}

fn check_counts(n: usize, quorum: u32) -> Result<(), SdError> {
    if !(MIN_CUSTODIANS..=MAX_CUSTODIANS).contains(&n) {
        return Err(SdError::CustodianCount { given: n });
    }
    if quorum < MIN_QUORUM || quorum as usize > n {
        return Err(SdError::InvalidQuorum { quorum, n });
    }
    Ok(())
}

/// Check a custodian set for a download: 3..=10 keys, quorum 2..=n, all distinct (by
/// certificate thumbprint and by public key).
pub fn validate_custodians(custodians: &[CustodianKey], quorum: u32) -> Result<(), SdError> {
    check_counts(custodians.len(), quorum)?;
    let mut certs = HashSet::new();
    let mut keys = HashSet::new();
    for c in custodians {
        if !certs.insert(c.thumbprint()) || !keys.insert(c.public_key_thumbprint()) {
            return Err(SdError::DuplicateCustodian {
                thumbprint: c.thumbprint().to_owned(),
            });
        }
    }
    Ok(())
}

/// Parse and check the custodian certificates of an Azure-shaped download request
/// (`POST /securitydomain/download`): 3..=10 certificates, `required` in 2..=n, RSA >= 2048
/// bits, no duplicates. Returns the keys in request order and the quorum.
pub fn custodians_from_download_request(
    request: &crate::sd::wire::CertificateInfo,
) -> Result<(Vec<CustodianKey>, u32), SdError> {
    check_counts(request.certificates.len(), request.required)?;
    let keys = request
        .certificates
        .iter()
        .map(CustodianKey::from_jwk)
        .collect::<Result<Vec<_>, _>>()?;
    validate_custodians(&keys, request.required)?;
    Ok((keys, request.required))
}

/// Create a security-domain file protecting `secret` for `custodians` with `quorum`.
///
/// A fresh random 32-byte file key encrypts the domain (AES-256-GCM, the header as associated
/// data); the file key is split with Shamir (`blahaj`, GF(256)) into n shares, share i
/// encrypted with RSA-OAEP-SHA256 to custodian i. Calling it again with the same secret and
/// other custodians re-protects the same domain (same fingerprint).
pub fn create_domain_file(
    secret: &DomainSecret,
    custodians: &[CustodianKey],
    quorum: u32,
) -> Result<String, SdError> {
    validate_custodians(custodians, quorum)?;
    let n = custodians.len();
    let meta = secret.metadata();
    let file_key = random::<32>();
    let quorum_u8 = u8::try_from(quorum).map_err(|_| SdError::InvalidQuorum { quorum, n })?;
    let sharks = blahaj::Sharks(quorum_u8);
    let mut shares = Vec::with_capacity(n);
    let mut share_cts = Vec::with_capacity(n);
    for (custodian, share) in custodians.iter().zip(sharks.dealer(&file_key[..]).take(n)) {
        let mut plain = Zeroizing::new(Vec::with_capacity(SHARE_PLAINTEXT_LEN));
        plain.extend_from_slice(&[SHARE_FORMAT, quorum_u8, n as u8]);
        let share_bytes = Zeroizing::new(Vec::<u8>::from(&share));
        plain.extend_from_slice(&share_bytes);
        let label = share_label(
            &meta.domain_id,
            custodian.thumbprint(),
            custodian.public_key_thumbprint(),
        );
        let ct = custodian.public().oaep_encrypt(&plain, &label)?;
        shares.push(ShareEntry {
            x5t_256: custodian.thumbprint().to_owned(),
            public_key_sha256: custodian.public_key_thumbprint().to_owned(),
            alg: SHARE_ALG.to_owned(),
            enc_share: encode_url(&ct),
        });
        share_cts.push(ct);
    }
    let mut file = DomainFile {
        version: DOMAIN_FILE_VERSION.to_owned(),
        domain_id: meta.domain_id.clone(),
        fingerprint: secret.fingerprint(),
        origin_pool: meta.origin_pool.clone(),
        created: meta.created,
        quorum,
        shares,
        enc: CONTENT_ENC.to_owned(),
        nonce: String::new(),
        ciphertext: String::new(),
    };
    let aad = header_aad(&file, &share_cts);
    let (nonce, ct) = aead_seal(&file_key, &aad, &secret.encode())?;
    file.nonce = encode_url(nonce);
    file.ciphertext = encode_url(&ct);
    serde_json::to_string(&file).map_err(|_| SdError::Crypto("JSON encoding"))
}

fn parse_file(file_json: &str) -> Result<DomainFile, SdError> {
    // Peek at the version first so that a future format gets a version error, not a
    // field error.
    let value: serde_json::Value = serde_json::from_str(file_json).map_err(|e| {
        SdError::Malformed(format!("the security-domain file is not valid JSON ({e})"))
    })?;
    match value.get("version") {
        Some(serde_json::Value::String(v)) if v == DOMAIN_FILE_VERSION => {}
        Some(v) => {
            return Err(SdError::UnsupportedVersion {
                what: "security-domain file version",
                found: v.to_string(),
                supported: DOMAIN_FILE_VERSION,
            });
        }
        None => {
            return Err(SdError::Malformed(
                "not a Keystead security-domain file (no `version`); Azure-format files (`EncData`/`SharedKeys`) are not supported".to_owned(),
            ));
        }
    }
    let file: DomainFile = serde_json::from_value(value).map_err(|e| {
        SdError::Integrity(format!(
            "the security-domain file has an unexpected structure ({e})"
        ))
    })?;
    if !(MIN_CUSTODIANS..=MAX_CUSTODIANS).contains(&file.shares.len())
        || file.quorum < MIN_QUORUM
        || file.quorum as usize > file.shares.len()
    {
        return Err(SdError::Integrity(
            "the file's quorum or share count is out of range".to_owned(),
        ));
    }
    if file.enc != CONTENT_ENC || file.shares.iter().any(|s| s.alg != SHARE_ALG) {
        return Err(SdError::Integrity(
            "the file names an unknown encryption algorithm".to_owned(),
        ));
    }
    let mut seen = HashSet::new();
    for s in &file.shares {
        if !seen.insert(&s.public_key_sha256) {
            return Err(SdError::Integrity(
                "the file lists a custodian key twice".to_owned(),
            ));
        }
    }
    Ok(file)
}

/// Read the public header of a domain file. Does not verify integrity (that needs the keys).
pub fn inspect_domain_file(file_json: &str) -> Result<DomainFileSummary, SdError> {
    let f = parse_file(file_json)?;
    Ok(DomainFileSummary {
        version: f.version,
        domain_id: f.domain_id,
        fingerprint: f.fingerprint,
        origin_pool: f.origin_pool,
        created: f.created,
        quorum: f.quorum,
        shares: f
            .shares
            .into_iter()
            .map(|s| ShareSummary {
                thumbprint: s.x5t_256,
                public_key_thumbprint: s.public_key_sha256,
            })
            .collect(),
    })
}

/// Decrypt share `idx` of `file` with custodian key `k` and check it against the header.
fn decrypt_share(
    file: &DomainFile,
    share_cts: &[Vec<u8>],
    k: &CustodianPrivateKey,
    idx: usize,
) -> Result<blahaj::Share, SdError> {
    let entry = &file.shares[idx];
    let label = share_label(&file.domain_id, &entry.x5t_256, &entry.public_key_sha256);
    let plain = k.oaep_decrypt(&share_cts[idx], &label).ok_or_else(|| {
        SdError::Integrity(format!(
            "the share of custodian key {} does not decrypt",
            k.label()
        ))
    })?;
    if plain.len() != SHARE_PLAINTEXT_LEN
        || plain[0] != SHARE_FORMAT
        || u32::from(plain[1]) != file.quorum
        || usize::from(plain[2]) != file.shares.len()
    {
        return Err(SdError::Integrity(format!(
            "the share of custodian key {} does not match the file header",
            k.label()
        )));
    }
    blahaj::Share::try_from(&plain[3..])
        .map_err(|_| SdError::Integrity("a share is malformed".to_owned()))
}

/// Open a domain file with at least `quorum` custodian private keys.
///
/// Errors: [`SdError::DuplicateKey`], [`SdError::NotEnoughKeys`] (given, needed),
/// [`SdError::KeyMatchesNoShare`] (naming the key's label), [`SdError::Integrity`] for any
/// alteration of the file.
pub fn recover_domain(
    file_json: &str,
    private_keys: &[CustodianPrivateKey],
) -> Result<DomainSecret, SdError> {
    recover_with_report(file_json, private_keys).map(|(s, _)| s)
}

fn recover_with_report(
    file_json: &str,
    private_keys: &[CustodianPrivateKey],
) -> Result<(DomainSecret, Vec<MatchedKey>), SdError> {
    let file = parse_file(file_json)?;
    let mut seen = HashSet::new();
    for k in private_keys {
        if !seen.insert(k.public_key_thumbprint()) {
            return Err(SdError::DuplicateKey {
                key: k.label().to_owned(),
            });
        }
    }
    let needed = file.quorum as usize;
    if private_keys.len() < needed {
        return Err(SdError::NotEnoughKeys {
            given: private_keys.len(),
            needed,
        });
    }
    let mut matches = Vec::with_capacity(private_keys.len());
    for k in private_keys {
        let idx = file
            .shares
            .iter()
            .position(|s| s.public_key_sha256 == k.public_key_thumbprint())
            .ok_or_else(|| SdError::KeyMatchesNoShare {
                key: k.label().to_owned(),
            })?;
        matches.push((k, idx));
    }
    let share_cts = file
        .shares
        .iter()
        .map(|s| b64_field(&s.enc_share, "enc_share"))
        .collect::<Result<Vec<_>, _>>()?;
    let nonce = b64_field(&file.nonce, "nonce")?;
    let ciphertext = b64_field(&file.ciphertext, "ciphertext")?;
    let mut shares = Vec::with_capacity(matches.len());
    let mut report = Vec::with_capacity(matches.len());
    for (k, idx) in &matches {
        shares.push(decrypt_share(&file, &share_cts, k, *idx)?);
        report.push(MatchedKey {
            key: k.label().to_owned(),
            thumbprint: file.shares[*idx].x5t_256.clone(),
        });
    }
    let quorum_u8 = u8::try_from(file.quorum)
        .map_err(|_| SdError::Integrity("quorum out of range".to_owned()))?;
    let recovered = Zeroizing::new(
        blahaj::Sharks(quorum_u8)
            .recover(&shares)
            .map_err(|_| SdError::Integrity("the shares do not combine".to_owned()))?,
    );
    let file_key: Zeroizing<[u8; 32]> =
        Zeroizing::new(recovered.as_slice().try_into().map_err(|_| {
            SdError::Integrity("the recovered file key has the wrong size".to_owned())
        })?);
    let aad = header_aad(&file, &share_cts);
    let plain = aead_open(
        &file_key,
        &nonce,
        &aad,
        &ciphertext,
        "the domain does not decrypt (header or ciphertext altered)",
    )?;
    let secret = DomainSecret::decode(&plain)?;
    let m = secret.metadata();
    if m.domain_id != file.domain_id
        || m.origin_pool != file.origin_pool
        || m.created != file.created
        || secret.fingerprint() != file.fingerprint
    {
        return Err(SdError::Integrity(
            "the decrypted domain does not match the file header".to_owned(),
        ));
    }
    Ok((secret, report))
}

/// Check offline that `private_keys` reach the quorum and open the domain, without writing or
/// returning the secret (it is wiped before this returns).
pub fn rehearse(
    file_json: &str,
    private_keys: &[CustodianPrivateKey],
) -> Result<RehearsalReport, SdError> {
    let (secret, matched) = recover_with_report(file_json, private_keys)?;
    let summary = inspect_domain_file(file_json)?;
    Ok(RehearsalReport {
        domain_id: summary.domain_id,
        fingerprint: secret.fingerprint(),
        quorum: summary.quorum,
        shares: summary.shares.len(),
        keys_given: private_keys.len(),
        matched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sd::generate_custodian;

    /// "Any m-1 custodian keys fail", proven past the key-count check: m-1 shares are
    /// decrypted and combined (as if the split had a threshold of m-1, and as with the real
    /// threshold) and the result must not open the domain, while the same path with m shares
    /// does (so a split with a too-low threshold would fail this test).
    #[test]
    fn m_minus_one_shares_combined_do_not_open_the_domain() {
        let pairs: Vec<_> = (0..4)
            .map(|i| generate_custodian(&format!("c{i}"), 2048, None).unwrap())
            .collect();
        let public: Vec<CustodianKey> = pairs
            .iter()
            .map(|(c, _)| CustodianKey::from_pem(c).unwrap())
            .collect();
        let private: Vec<CustodianPrivateKey> = pairs
            .iter()
            .map(|(_, k)| CustodianPrivateKey::from_pem(k, None).unwrap())
            .collect();
        let secret = DomainSecret::generate("pool");
        let quorum = 3u8;
        let json = create_domain_file(&secret, &public, u32::from(quorum)).unwrap();
        let file = parse_file(&json).unwrap();
        let share_cts: Vec<Vec<u8>> = file
            .shares
            .iter()
            .map(|s| b64_field(&s.enc_share, "enc_share").unwrap())
            .collect();
        let nonce = b64_field(&file.nonce, "nonce").unwrap();
        let ciphertext = b64_field(&file.ciphertext, "ciphertext").unwrap();
        let aad = header_aad(&file, &share_cts);
        let idx_of = |k: &CustodianPrivateKey| {
            file.shares
                .iter()
                .position(|s| s.public_key_sha256 == k.public_key_thumbprint())
                .unwrap()
        };
        let opens = |shares: &[blahaj::Share], threshold: u8| -> bool {
            let Ok(bytes) = blahaj::Sharks(threshold).recover(shares) else {
                return false;
            };
            let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) else {
                return false;
            };
            aead_open(&key, &nonce, &aad, &ciphertext, "x").is_ok()
        };
        let shares_of = |keys: &[&CustodianPrivateKey]| -> Vec<blahaj::Share> {
            keys.iter()
                .map(|k| decrypt_share(&file, &share_cts, k, idx_of(k)).unwrap())
                .collect()
        };
        // Every (m-1)-subset, combined with threshold m-1 and with m: never opens.
        for skip in 0..4 {
            for other in 0..4 {
                if other == skip {
                    continue;
                }
                let two: Vec<&CustodianPrivateKey> = (0..4)
                    .filter(|i| *i != skip && *i != other)
                    .map(|i| &private[i])
                    .collect();
                let shares = shares_of(&two);
                assert_eq!(shares.len(), 2);
                assert!(!opens(&shares, quorum - 1), "2 shares opened the domain");
                assert!(!opens(&shares, quorum), "2 shares opened the domain");
            }
        }
        // m shares through the same path do open it.
        let three: Vec<&CustodianPrivateKey> = private[1..].iter().collect();
        assert!(opens(&shares_of(&three), quorum));
    }
}
