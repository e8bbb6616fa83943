//! The upload (recovery) path: the pool's one-time exchange key and the transfer blob that
//! custodians build offline for it.
//!
//! Blob layout (JSON, binary fields base64url without padding):
//!
//! ```json
//! {"version":"keystead/sd-transfer/1","exchange_x5t_256":"<thumbprint of exchange cert>",
//!  "pool_id":"<pool>","domain_id":"<uuid>","fingerprint":"<hex>",
//!  "alg":"RSA-OAEP-256","enc":"A256GCM",
//!  "wrapped_key":"<RSA-OAEP-256 of a fresh 32-byte content key>",
//!  "nonce":"<12 bytes>","ciphertext":"<AES-256-GCM of the domain, ct||tag>"}
//! ```

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::PrivateDecryptingKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::file::{CONTENT_ENC, SHARE_ALG};
use super::keys::{
    CertInfo, CustodianPrivateKey, RsaPublic, generate_rsa, jwk_for_certificate, oaep_decrypt,
    parse_certificate, self_signed_certificate,
};
use super::util::{Canon, aead_open, aead_seal, b64_field, random, sha256, thumbprint};
use super::wire::{SecurityDomainJsonWebKey, TransferKey};
use super::{DomainSecret, SdError, recover_domain};
use crate::b64::encode_url;

/// Version string of the transfer blob.
pub const TRANSFER_BLOB_VERSION: &str = "keystead/sd-transfer/1";
/// Prefix of the SAN URI naming the pool in an exchange certificate.
pub const POOL_URI_PREFIX: &str = "urn:keystead:pool:";
/// RSA size of exchange keys.
pub const EXCHANGE_KEY_BITS: u32 = 3072;
/// Validity of the exchange certificate, days (informational; the key is single-use and
/// lives only in the memory of the partition that made it).
pub const EXCHANGE_CERT_VALIDITY_DAYS: i64 = 30;

fn check_pool_id(pool_id: &str) -> Result<(), SdError> {
    let ok = !pool_id.is_empty()
        && pool_id.len() <= 253
        && pool_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SdError::Malformed(format!(
            "pool id {pool_id:?} is invalid: use 1 to 253 characters from [A-Za-z0-9-._/:]"
        )))
    }
}

fn pool_from_uris(info: &CertInfo) -> Result<String, SdError> {
    info.uris
        .iter()
        .find_map(|u| u.strip_prefix(POOL_URI_PREFIX))
        .map(str::to_owned)
        .ok_or_else(|| {
            SdError::Malformed(format!(
                "not a Keystead exchange certificate: it names no pool (subject alternative name URI `{POOL_URI_PREFIX}<pool>`)"
            ))
        })
}

/// The public side of a pool's exchange key, as custodians receive it.
#[derive(Clone)]
pub struct ExchangeCertificate {
    thumbprint: String,
    pool_id: String,
    der: Vec<u8>,
    public: RsaPublic,
}

impl fmt::Debug for ExchangeCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeCertificate")
            .field("thumbprint", &self.thumbprint)
            .field("pool_id", &self.pool_id)
            .finish()
    }
}

impl ExchangeCertificate {
    /// From the certificate DER.
    pub fn from_der(der: &[u8]) -> Result<Self, SdError> {
        let info = parse_certificate(der, "exchange certificate")?;
        let pool_id = pool_from_uris(&info)?;
        check_pool_id(&pool_id)?;
        Ok(Self {
            thumbprint: thumbprint(der),
            pool_id,
            der: info.der,
            public: info.public,
        })
    }

    /// From a PEM `CERTIFICATE`.
    pub fn from_pem(pem_text: &str) -> Result<Self, SdError> {
        let blocks = pem::parse_many(pem_text)
            .map_err(|e| SdError::Malformed(format!("exchange key: invalid PEM ({e})")))?;
        let block = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or_else(|| {
                SdError::Malformed("exchange key: no PEM `CERTIFICATE` block found".to_owned())
            })?;
        Self::from_der(block.contents())
    }

    /// From the transfer key JSON: either the whole `GET /securitydomain/upload` response
    /// (`{"key_format":"jwk","transfer_key":"<JWK JSON text>"}`) or the JWK JSON itself.
    pub fn from_transfer_key_json(json: &str) -> Result<Self, SdError> {
        let jwk: SecurityDomainJsonWebKey =
            if let Ok(tk) = serde_json::from_str::<TransferKey>(json) {
                serde_json::from_str(&tk.transfer_key).map_err(|e| {
                    SdError::Malformed(format!("transfer key: `transfer_key` is not a JWK ({e})"))
                })?
            } else {
                serde_json::from_str(json).map_err(|e| {
                    SdError::Malformed(format!(
                        "transfer key: not a JWK or transfer-key JSON ({e})"
                    ))
                })?
            };
        let first = jwk.x5c.first().ok_or_else(|| {
            SdError::Malformed("transfer key: the JWK has no `x5c` certificate".to_owned())
        })?;
        let der = crate::b64::decode_std(first).map_err(|_| {
            SdError::Malformed("transfer key: `x5c[0]` is not standard base64".to_owned())
        })?;
        let cert = Self::from_der(&der)?;
        if let Some(t) = jwk.x5t_s256.as_deref().filter(|t| !t.is_empty())
            && t.trim_end_matches('=') != cert.thumbprint
        {
            return Err(SdError::Malformed(
                "transfer key: `x5t#S256` does not match `x5c[0]`".to_owned(),
            ));
        }
        Ok(cert)
    }

    /// Parse either form, guessing from the text (PEM or JSON).
    pub fn parse(text: &str) -> Result<Self, SdError> {
        if text.trim_start().starts_with('{') {
            Self::from_transfer_key_json(text)
        } else {
            Self::from_pem(text)
        }
    }

    /// b64url(SHA-256(certificate DER)).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    pub fn pool_id(&self) -> &str {
        &self.pool_id
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.der
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferBlob {
    version: String,
    exchange_x5t_256: String,
    pool_id: String,
    domain_id: String,
    fingerprint: String,
    alg: String,
    enc: String,
    wrapped_key: String,
    nonce: String,
    ciphertext: String,
}

fn wrap_label(exchange_tp: &str, pool_id: &str) -> Vec<u8> {
    Canon::new("keystead/sd-transfer/1 key")
        .push_str(exchange_tp)
        .push_str(pool_id)
        .bytes()
        .to_vec()
}

fn blob_aad(b: &TransferBlob, wrapped: &[u8]) -> Vec<u8> {
    Canon::new("keystead/sd-transfer/1 header")
        .push_str(&b.version)
        .push_str(&b.exchange_x5t_256)
        .push_str(&b.pool_id)
        .push_str(&b.domain_id)
        .push_str(&b.fingerprint)
        .push_str(&b.alg)
        .push_str(&b.enc)
        .push(&sha256(wrapped))
        .bytes()
        .to_vec()
}

/// Encrypt a domain to an exchange certificate (a fresh AES-256-GCM content key wrapped with
/// RSA-OAEP-SHA256; the associated data binds the exchange thumbprint, the pool, the domain
/// fingerprint and the blob version). Used by [`build_transfer_blob`] and for pool-to-pool
/// transfer.
pub fn seal_to_exchange_key(
    secret: &DomainSecret,
    exchange: &ExchangeCertificate,
) -> Result<String, SdError> {
    let content_key = random::<32>();
    let wrapped = exchange.public.oaep_encrypt(
        &content_key[..],
        &wrap_label(&exchange.thumbprint, &exchange.pool_id),
    )?;
    let mut blob = TransferBlob {
        version: TRANSFER_BLOB_VERSION.to_owned(),
        exchange_x5t_256: exchange.thumbprint.clone(),
        pool_id: exchange.pool_id.clone(),
        domain_id: secret.domain_id().to_owned(),
        fingerprint: secret.fingerprint(),
        alg: SHARE_ALG.to_owned(),
        enc: CONTENT_ENC.to_owned(),
        wrapped_key: encode_url(&wrapped),
        nonce: String::new(),
        ciphertext: String::new(),
    };
    let (nonce, ct) = aead_seal(&content_key, &blob_aad(&blob, &wrapped), &secret.encode())?;
    blob.nonce = encode_url(nonce);
    blob.ciphertext = encode_url(&ct);
    serde_json::to_string(&blob).map_err(|_| SdError::Crypto("JSON encoding"))
}

/// Custodian side, offline: open the domain file with at least quorum private keys and
/// encrypt the domain to the pool's exchange certificate.
pub fn build_transfer_blob(
    file_json: &str,
    private_keys: &[CustodianPrivateKey],
    exchange_cert: &ExchangeCertificate,
) -> Result<String, SdError> {
    let secret = recover_domain(file_json, private_keys)?;
    seal_to_exchange_key(&secret, exchange_cert)
}

/// Public header of a transfer blob (no key needed; integrity not verified).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TransferBlobSummary {
    pub exchange_thumbprint: String,
    pub pool_id: String,
    pub domain_id: String,
    pub fingerprint: String,
}

fn parse_blob(blob_json: &str) -> Result<TransferBlob, SdError> {
    let value: serde_json::Value = serde_json::from_str(blob_json)
        .map_err(|e| SdError::Malformed(format!("the transfer blob is not valid JSON ({e})")))?;
    match value.get("version") {
        Some(serde_json::Value::String(v)) if v == TRANSFER_BLOB_VERSION => {}
        Some(v) => {
            return Err(SdError::UnsupportedVersion {
                what: "transfer blob version",
                found: v.to_string(),
                supported: TRANSFER_BLOB_VERSION,
            });
        }
        None => {
            return Err(SdError::Malformed(
                "not a Keystead transfer blob (no `version`)".to_owned(),
            ));
        }
    }
    let blob: TransferBlob = serde_json::from_value(value).map_err(|e| {
        SdError::Integrity(format!(
            "the transfer blob has an unexpected structure ({e})"
        ))
    })?;
    if blob.alg != SHARE_ALG || blob.enc != CONTENT_ENC {
        return Err(SdError::Integrity(
            "the transfer blob names an unknown algorithm".to_owned(),
        ));
    }
    Ok(blob)
}

/// Read the public header of a transfer blob.
pub fn inspect_transfer_blob(blob_json: &str) -> Result<TransferBlobSummary, SdError> {
    let b = parse_blob(blob_json)?;
    Ok(TransferBlobSummary {
        exchange_thumbprint: b.exchange_x5t_256,
        pool_id: b.pool_id,
        domain_id: b.domain_id,
        fingerprint: b.fingerprint,
    })
}

/// A pool's one-time exchange key (partition side). The RSA-3072 private key is generated in
/// memory, never serialized, never logged, and wiped when dropped.
///
/// Single use is the caller's duty: the partition keeps one `ExchangeKey` while it waits for
/// an upload and drops it after the first successful [`ExchangeKey::open_transfer_blob`]
/// (and on restart, since it is never persisted). A blob made for an earlier exchange key is
/// then rejected with [`SdError::WrongExchangeKey`].
pub struct ExchangeKey {
    pool_id: String,
    cert_der: Vec<u8>,
    thumbprint: String,
    public: RsaPublic,
    key: PrivateDecryptingKey,
}

impl fmt::Debug for ExchangeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeKey")
            .field("pool_id", &self.pool_id)
            .field("thumbprint", &self.thumbprint)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ExchangeKey {
    /// Generate a fresh RSA-3072 key pair and a self-signed certificate naming the pool
    /// (subject alternative name URI `urn:keystead:pool:<pool_id>`).
    pub fn generate(pool_id: &str) -> Result<Self, SdError> {
        check_pool_id(pool_id)?;
        let (key, pkcs8) = generate_rsa(EXCHANGE_KEY_BITS)?;
        let uri = format!("{POOL_URI_PREFIX}{pool_id}");
        let cert_der = self_signed_certificate(
            &pkcs8,
            "Keystead security-domain exchange key",
            &[uri],
            EXCHANGE_CERT_VALIDITY_DAYS,
        )?;
        drop(pkcs8);
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| SdError::Crypto("public-key export"))?;
        let public = super::keys::parse_rsa_spki(spki.as_ref(), "exchange key")?;
        Ok(Self {
            pool_id: pool_id.to_owned(),
            thumbprint: thumbprint(&cert_der),
            cert_der,
            public,
            key,
        })
    }

    pub fn pool_id(&self) -> &str {
        &self.pool_id
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn certificate_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.cert_der.clone()))
    }

    /// b64url(SHA-256(certificate DER)).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The public certificate as custodians parse it.
    pub fn certificate(&self) -> ExchangeCertificate {
        ExchangeCertificate {
            thumbprint: self.thumbprint.clone(),
            pool_id: self.pool_id.clone(),
            der: self.cert_der.clone(),
            public: self.public.clone(),
        }
    }

    /// The JWK (with `x5c`, `x5t#S256`, `n`, `e`) as JSON text: the `transfer_key` string of
    /// `GET /securitydomain/upload`.
    pub fn transfer_key_jwk_json(&self) -> String {
        let mut jwk = jwk_for_certificate(
            &self.cert_der,
            &self.public,
            vec!["wrapKey".into(), "encrypt".into()],
        );
        jwk.kid = Some(format!(
            "{POOL_URI_PREFIX}{}#{}",
            self.pool_id, self.thumbprint
        ));
        serde_json::to_string(&jwk).unwrap_or_default()
    }

    /// The whole `GET /securitydomain/upload` response body.
    pub fn transfer_key(&self) -> TransferKey {
        TransferKey {
            key_format: "jwk".to_owned(),
            transfer_key: self.transfer_key_jwk_json(),
        }
    }

    /// Open a transfer blob: it must name this exchange key and `expected_pool_id`, decrypt,
    /// and match its fingerprint.
    pub fn open_transfer_blob(
        &self,
        blob_json: &str,
        expected_pool_id: &str,
    ) -> Result<DomainSecret, SdError> {
        let blob = parse_blob(blob_json)?;
        if expected_pool_id != self.pool_id {
            return Err(SdError::WrongPool {
                expected: expected_pool_id.to_owned(),
                found: self.pool_id.clone(),
            });
        }
        if blob.exchange_x5t_256 != self.thumbprint {
            return Err(SdError::WrongExchangeKey {
                expected: self.thumbprint.clone(),
                found: blob.exchange_x5t_256,
            });
        }
        if blob.pool_id != expected_pool_id {
            return Err(SdError::WrongPool {
                expected: expected_pool_id.to_owned(),
                found: blob.pool_id,
            });
        }
        let wrapped = b64_field(&blob.wrapped_key, "wrapped_key")?;
        let nonce = b64_field(&blob.nonce, "nonce")?;
        let ciphertext = b64_field(&blob.ciphertext, "ciphertext")?;
        let content_key = oaep_decrypt(
            &self.key,
            &wrapped,
            &wrap_label(&self.thumbprint, &self.pool_id),
        )
        .ok_or_else(|| {
            SdError::Integrity("the transfer blob's wrapped key does not decrypt".to_owned())
        })?;
        let content_key: Zeroizing<[u8; 32]> =
            Zeroizing::new(content_key.as_slice().try_into().map_err(|_| {
                SdError::Integrity("the wrapped key has the wrong size".to_owned())
            })?);
        let plain = aead_open(
            &content_key,
            &nonce,
            &blob_aad(&blob, &wrapped),
            &ciphertext,
            "the transfer blob does not decrypt (header or ciphertext altered)",
        )?;
        let secret = DomainSecret::decode(&plain)?;
        if secret.domain_id() != blob.domain_id || secret.fingerprint() != blob.fingerprint {
            return Err(SdError::Integrity(
                "the decrypted domain does not match the transfer blob header".to_owned(),
            ));
        }
        Ok(secret)
    }
}
