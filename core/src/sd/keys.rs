//! Custodian keys: public keys (certificates) that shares are encrypted to, private keys that
//! open them, key-pair generation, and passphrase protection of private-key files
//! (PKCS#8 `EncryptedPrivateKeyInfo`, PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC).
//!
//! Thumbprints: for a certificate, `b64url(SHA-256(certificate DER))` (Azure's `x5t#S256`);
//! for a bare public key, `b64url(SHA-256(SubjectPublicKeyInfo DER))`. Every custodian also has
//! a *public-key thumbprint*, `b64url(SHA-256(SPKI DER))`, which is how a private key (which
//! has no certificate) finds its share.
//!
//! One file on purpose (~730 lines): every custodian key format (certificate, PKCS#8,
//! encrypted PKCS#8) and the checks between them, which a change to one must keep in step.

use std::fmt;
use std::num::NonZeroU32;

use aws_lc_rs::cipher::{
    AES_128, AES_192, AES_256, DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey,
    PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::pbkdf2;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use pkcs8::der::{Decode, Encode};
use pkcs8::pkcs5;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use super::SdError;
use super::util::{random, thumbprint};
use super::wire::SecurityDomainJsonWebKey;

/// PBKDF2 iterations used when this tool encrypts a private key (OWASP 2023 guidance for
/// PBKDF2-HMAC-SHA256).
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Largest PBKDF2 iteration count accepted when decrypting (bounds the work a file can ask for).
pub const PBKDF2_MAX_ITERATIONS: u32 = 10_000_000;
/// Smallest RSA modulus accepted for custodian and exchange keys.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted.
pub const MAX_RSA_BITS: usize = 8192;

const RSA_ENCRYPTION_OID: &str = "1.2.840.113549.1.1.1";

/// A parsed and checked RSA public key.
#[derive(Clone)]
pub(crate) struct RsaPublic {
    pub(crate) spki_der: Vec<u8>,
    /// Big-endian modulus without leading zeros.
    pub(crate) modulus: Vec<u8>,
    /// Big-endian public exponent without leading zeros.
    pub(crate) exponent: Vec<u8>,
    pub(crate) bits: usize,
    key: PublicEncryptingKey,
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

/// Parse a SubjectPublicKeyInfo and check it is RSA, 2048..=8192 bits, with a sound exponent.
pub(crate) fn parse_rsa_spki(spki_der: &[u8], what: &str) -> Result<RsaPublic, SdError> {
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|_| SdError::Malformed(format!("{what}: the public key is not valid DER")))?;
    if !rest.is_empty() {
        return Err(SdError::Malformed(format!(
            "{what}: trailing data after the public key"
        )));
    }
    if spki.algorithm.algorithm.to_id_string() != RSA_ENCRYPTION_OID {
        return Err(SdError::NotRsa {
            what: what.to_owned(),
        });
    }
    let parsed = spki
        .parsed()
        .map_err(|_| SdError::Malformed(format!("{what}: the RSA public key is not valid")))?;
    let x509_parser::public_key::PublicKey::RSA(rsa) = parsed else {
        return Err(SdError::NotRsa {
            what: what.to_owned(),
        });
    };
    let modulus = strip_zeros(rsa.modulus);
    let exponent = strip_zeros(rsa.exponent);
    let bits = modulus.len() * 8 - modulus.first().map_or(8, |b| b.leading_zeros() as usize);
    if bits < MIN_RSA_BITS {
        return Err(SdError::WeakKey {
            key: what.to_owned(),
            reason: format!("RSA modulus of {bits} bits, at least {MIN_RSA_BITS} are required"),
        });
    }
    if bits > MAX_RSA_BITS {
        return Err(SdError::WeakKey {
            key: what.to_owned(),
            reason: format!("RSA modulus of {bits} bits, at most {MAX_RSA_BITS} are supported"),
        });
    }
    let e_ok = exponent.last().is_some_and(|b| b & 1 == 1)
        && (exponent.len() > 3 || (exponent.len() == 3 && exponent[0] >= 1))
        && exponent.len() <= 8;
    if !e_ok {
        return Err(SdError::WeakKey {
            key: what.to_owned(),
            reason: "RSA public exponent must be odd and between 65537 and 2^64".to_owned(),
        });
    }
    if modulus.last().is_none_or(|b| b & 1 == 0) {
        return Err(SdError::WeakKey {
            key: what.to_owned(),
            reason: "RSA modulus is even".to_owned(),
        });
    }
    let key = PublicEncryptingKey::from_der(spki_der).map_err(|e| SdError::WeakKey {
        key: what.to_owned(),
        reason: format!("rejected by the crypto library ({})", e.description_()),
    })?;
    Ok(RsaPublic {
        spki_der: spki_der.to_vec(),
        modulus,
        exponent,
        bits,
        key,
    })
}

impl RsaPublic {
    /// RSA-OAEP with SHA-256 and MGF1-SHA256, with an OAEP label.
    pub(crate) fn oaep_encrypt(&self, plaintext: &[u8], label: &[u8]) -> Result<Vec<u8>, SdError> {
        let k = OaepPublicEncryptingKey::new(self.key.clone())
            .map_err(|_| SdError::Crypto("RSA-OAEP key setup"))?;
        let mut out = vec![0u8; k.ciphertext_size()];
        let len = k
            .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, Some(label))
            .map_err(|_| SdError::Crypto("RSA-OAEP encryption"))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// Parsed certificate facts needed here.
pub(crate) struct CertInfo {
    pub(crate) der: Vec<u8>,
    pub(crate) public: RsaPublic,
    pub(crate) uris: Vec<String>,
}

pub(crate) fn parse_certificate(der: &[u8], what: &str) -> Result<CertInfo, SdError> {
    let (rest, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| SdError::Malformed(format!("{what}: not a valid X.509 certificate")))?;
    if !rest.is_empty() {
        return Err(SdError::Malformed(format!(
            "{what}: trailing data after the certificate"
        )));
    }
    let public = parse_rsa_spki(cert.public_key().raw, what)?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = name {
                uris.push((*u).to_owned());
            }
        }
    }
    Ok(CertInfo {
        der: der.to_vec(),
        public,
        uris,
    })
}

/// A custodian's public key: what a share is encrypted to.
#[derive(Clone)]
pub struct CustodianKey {
    thumbprint: String,
    spki_thumbprint: String,
    certificate_der: Option<Vec<u8>>,
    public: RsaPublic,
}

impl fmt::Debug for CustodianKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustodianKey")
            .field("thumbprint", &self.thumbprint)
            .field("bits", &self.public.bits)
            .field("certificate", &self.certificate_der.is_some())
            .finish()
    }
}

impl CustodianKey {
    /// Parse a PEM `CERTIFICATE` (X.509) or `PUBLIC KEY` (SubjectPublicKeyInfo). The first
    /// such block of the text is used.
    pub fn from_pem(pem_text: &str) -> Result<Self, SdError> {
        let blocks = pem::parse_many(pem_text)
            .map_err(|e| SdError::Malformed(format!("custodian key: invalid PEM ({e})")))?;
        for block in &blocks {
            match block.tag() {
                "CERTIFICATE" => return Self::from_certificate_der(block.contents()),
                "PUBLIC KEY" => return Self::from_spki_der(block.contents()),
                "RSA PUBLIC KEY" => {
                    return Err(SdError::Malformed(
                        "custodian key: PKCS#1 `RSA PUBLIC KEY` is not accepted; give the X.509 certificate (or convert with `openssl rsa -RSAPublicKey_in -pubout`)".to_owned(),
                    ));
                }
                t if t.contains("PRIVATE KEY") => {
                    return Err(SdError::Malformed(
                        "custodian key: this is a PRIVATE key; give the custodian's certificate (.cer) instead and keep the private key offline".to_owned(),
                    ));
                }
                _ => {}
            }
        }
        Err(SdError::Malformed(
            "custodian key: no PEM `CERTIFICATE` or `PUBLIC KEY` block found".to_owned(),
        ))
    }

    /// From the DER of an X.509 certificate. Thumbprint = b64url(SHA-256(certificate DER)).
    pub fn from_certificate_der(der: &[u8]) -> Result<Self, SdError> {
        let info = parse_certificate(der, "custodian certificate")?;
        Ok(Self {
            thumbprint: thumbprint(der),
            spki_thumbprint: thumbprint(&info.public.spki_der),
            certificate_der: Some(info.der),
            public: info.public,
        })
    }

    /// From the DER of a SubjectPublicKeyInfo. Thumbprint = b64url(SHA-256(SPKI DER)).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, SdError> {
        let public = parse_rsa_spki(der, "custodian public key")?;
        let tp = thumbprint(der);
        Ok(Self {
            thumbprint: tp.clone(),
            spki_thumbprint: tp,
            certificate_der: None,
            public,
        })
    }

    /// From the JWK of an Azure download request (`certificates[]` of
    /// `POST /securitydomain/download`). `x5c[0]` is required; `n`, `e` and `x5t#S256`, when
    /// present, must agree with it.
    pub fn from_jwk(jwk: &SecurityDomainJsonWebKey) -> Result<Self, SdError> {
        if !jwk.kty.is_empty() && jwk.kty != "RSA" && jwk.kty != "RSA-HSM" {
            return Err(SdError::NotRsa {
                what: format!("certificate JWK with kty {:?}", jwk.kty),
            });
        }
        let first = jwk.x5c.first().ok_or_else(|| {
            SdError::Malformed("certificate JWK has no `x5c` certificate chain".to_owned())
        })?;
        let der = crate::b64::decode_std(first).map_err(|_| {
            SdError::Malformed("certificate JWK: `x5c[0]` is not standard base64".to_owned())
        })?;
        let key = Self::from_certificate_der(&der)?;
        if let Some(t) = jwk.x5t_s256.as_deref().filter(|t| !t.is_empty())
            && t.trim_end_matches('=') != key.thumbprint
        {
            return Err(SdError::Malformed(format!(
                "certificate JWK: `x5t#S256` {t} does not match the SHA-256 thumbprint {} of `x5c[0]`",
                key.thumbprint
            )));
        }
        for (field, value, expected) in [
            ("n", jwk.n.as_deref(), &key.public.modulus),
            ("e", jwk.e.as_deref(), &key.public.exponent),
        ] {
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                let bytes = crate::b64::decode_url(v).map_err(|_| {
                    SdError::Malformed(format!("certificate JWK: `{field}` is not base64url"))
                })?;
                if strip_zeros(&bytes) != *expected {
                    return Err(SdError::Malformed(format!(
                        "certificate JWK: `{field}` does not match the key of `x5c[0]`"
                    )));
                }
            }
        }
        Ok(key)
    }

    /// The JWK form used in an Azure download request (needs a certificate).
    pub fn to_jwk(&self) -> Result<SecurityDomainJsonWebKey, SdError> {
        let der = self.certificate_der.as_deref().ok_or_else(|| {
            SdError::Malformed(
                "a download request needs certificates; this custodian key is a bare public key"
                    .to_owned(),
            )
        })?;
        Ok(jwk_for_certificate(
            der,
            &self.public,
            vec!["verify".into(), "encrypt".into(), "wrapKey".into()],
        ))
    }

    /// `x5t#S256`-style thumbprint identifying the custodian in the domain file.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// b64url(SHA-256(SubjectPublicKeyInfo DER)).
    pub fn public_key_thumbprint(&self) -> &str {
        &self.spki_thumbprint
    }

    pub fn bits(&self) -> usize {
        self.public.bits
    }

    pub fn certificate_der(&self) -> Option<&[u8]> {
        self.certificate_der.as_deref()
    }

    pub(crate) fn public(&self) -> &RsaPublic {
        &self.public
    }
}

pub(crate) fn jwk_for_certificate(
    der: &[u8],
    public: &RsaPublic,
    key_ops: Vec<String>,
) -> SecurityDomainJsonWebKey {
    use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
    SecurityDomainJsonWebKey {
        kid: None,
        kty: "RSA".to_owned(),
        key_ops,
        n: Some(crate::b64::encode_url(&public.modulus)),
        e: Some(crate::b64::encode_url(&public.exponent)),
        x5c: vec![crate::b64::encode_std(der)],
        use_: None,
        x5t: Some(crate::b64::encode_url(digest(
            &SHA1_FOR_LEGACY_USE_ONLY,
            der,
        ))),
        x5t_s256: Some(thumbprint(der)),
        alg: Some("RSA-OAEP-256".to_owned()),
    }
}

/// A custodian's private key, held in memory only (inside `aws-lc-rs`, which wipes it when
/// freed). Not serializable; `Debug` shows only the label and public-key thumbprint.
pub struct CustodianPrivateKey {
    label: String,
    spki_thumbprint: String,
    bits: usize,
    key: PrivateDecryptingKey,
}

impl fmt::Debug for CustodianPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustodianPrivateKey")
            .field("label", &self.label)
            .field("public_key_thumbprint", &self.spki_thumbprint)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CustodianPrivateKey {
    /// Parse a PEM private key: PKCS#8 `PRIVATE KEY`, encrypted PKCS#8
    /// `ENCRYPTED PRIVATE KEY` (PBES2: PBKDF2 with HMAC-SHA1/256/384/512 and AES-CBC; needs
    /// `passphrase`), or unencrypted PKCS#1 `RSA PRIVATE KEY`. The passphrase is ignored for
    /// unencrypted keys.
    pub fn from_pem(pem_text: &str, passphrase: Option<&str>) -> Result<Self, SdError> {
        let blocks = pem::parse_many(pem_text)
            .map_err(|e| SdError::Malformed(format!("private key: invalid PEM ({e})")))?;
        for block in blocks {
            let tag = block.tag().to_owned();
            let encrypted_legacy = block
                .headers()
                .get("Proc-Type")
                .is_some_and(|v| v.contains("ENCRYPTED"));
            let der = Zeroizing::new(block.into_contents());
            match tag.as_str() {
                "PRIVATE KEY" => return Self::from_pkcs8_der(&der),
                "ENCRYPTED PRIVATE KEY" => {
                    let pass = passphrase.ok_or_else(|| {
                        SdError::Passphrase(
                            "the private key is encrypted: give its passphrase (--passphrase-file or --passphrase-env)".to_owned(),
                        )
                    })?;
                    let plain = decrypt_pkcs8(&der, pass)?;
                    return Self::from_pkcs8_der(&plain);
                }
                "RSA PRIVATE KEY" if encrypted_legacy => {
                    return Err(SdError::Passphrase(
                        "legacy OpenSSL-encrypted `RSA PRIVATE KEY` files are not supported: convert with `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256`".to_owned(),
                    ));
                }
                "RSA PRIVATE KEY" => {
                    let pkcs8 = pkcs1_to_pkcs8(&der)?;
                    return Self::from_pkcs8_der(&pkcs8);
                }
                _ => {}
            }
        }
        Err(SdError::Malformed(
            "no PEM `PRIVATE KEY`, `ENCRYPTED PRIVATE KEY` or `RSA PRIVATE KEY` block found"
                .to_owned(),
        ))
    }

    /// From an unencrypted PKCS#8 (v1) DER document.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, SdError> {
        let key = PrivateDecryptingKey::from_pkcs8(der).map_err(|e| match e.description_() {
            "TooSmall" => SdError::WeakKey {
                key: "private key".to_owned(),
                reason: format!("RSA modulus below {MIN_RSA_BITS} bits"),
            },
            "TooLarge" => SdError::WeakKey {
                key: "private key".to_owned(),
                reason: format!("RSA modulus above {MAX_RSA_BITS} bits"),
            },
            "WrongAlgorithm" => SdError::NotRsa {
                what: "the private key".to_owned(),
            },
            other => SdError::Malformed(format!("private key rejected ({other})")),
        })?;
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| SdError::Crypto("public-key export"))?;
        let public = parse_rsa_spki(spki.as_ref(), "private key")?;
        let spki_thumbprint = thumbprint(&public.spki_der);
        Ok(Self {
            label: spki_thumbprint.clone(),
            spki_thumbprint,
            bits: public.bits,
            key,
        })
    }

    /// Name this key in error messages (for example its file name).
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// b64url(SHA-256(SubjectPublicKeyInfo DER)) of the matching public key.
    pub fn public_key_thumbprint(&self) -> &str {
        &self.spki_thumbprint
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// RSA-OAEP-SHA256 decryption with a label; any failure is reported as `None`.
    pub(crate) fn oaep_decrypt(
        &self,
        ciphertext: &[u8],
        label: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        oaep_decrypt(&self.key, ciphertext, label)
    }
}

pub(crate) fn oaep_decrypt(
    key: &PrivateDecryptingKey,
    ciphertext: &[u8],
    label: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let k = OaepPrivateDecryptingKey::new(key.clone()).ok()?;
    let mut out = Zeroizing::new(vec![0u8; k.min_output_size()]);
    let len = k
        .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, Some(label))
        .ok()?
        .len();
    out.truncate(len);
    Some(out)
}

/// Wrap a PKCS#1 `RSAPrivateKey` into a PKCS#8 `PrivateKeyInfo`.
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Result<Zeroizing<Vec<u8>>, SdError> {
    let info = pkcs8::PrivateKeyInfo {
        algorithm: pkcs8::AlgorithmIdentifierRef {
            oid: pkcs8::ObjectIdentifier::new_unwrap(RSA_ENCRYPTION_OID),
            parameters: Some(pkcs8::der::asn1::AnyRef::NULL),
        },
        private_key: pkcs1,
        public_key: None,
    };
    info.to_der()
        .map(Zeroizing::new)
        .map_err(|_| SdError::Malformed("private key: invalid PKCS#1 RSA private key".to_owned()))
}

/// Decrypt a PKCS#8 `EncryptedPrivateKeyInfo` (PBES2 / PBKDF2 / AES-CBC) with aws-lc-rs.
pub(crate) fn decrypt_pkcs8(der: &[u8], passphrase: &str) -> Result<Zeroizing<Vec<u8>>, SdError> {
    let unsupported = |what: &str| {
        SdError::Passphrase(format!(
            "the private key is encrypted with {what}, which is not supported: re-encrypt it with `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256`"
        ))
    };
    let epki = pkcs8::EncryptedPrivateKeyInfo::from_der(der).map_err(|_| {
        SdError::Malformed(
            "encrypted private key: not a valid PKCS#8 EncryptedPrivateKeyInfo".to_owned(),
        )
    })?;
    let pkcs5::EncryptionScheme::Pbes2(params) = &epki.encryption_algorithm else {
        return Err(unsupported("PBES1 (legacy)"));
    };
    let Some(kdf) = params.kdf.pbkdf2() else {
        return Err(unsupported("scrypt"));
    };
    let prf = match kdf.prf {
        pkcs5::pbes2::Pbkdf2Prf::HmacWithSha1 => pbkdf2::PBKDF2_HMAC_SHA1,
        pkcs5::pbes2::Pbkdf2Prf::HmacWithSha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        pkcs5::pbes2::Pbkdf2Prf::HmacWithSha384 => pbkdf2::PBKDF2_HMAC_SHA384,
        pkcs5::pbes2::Pbkdf2Prf::HmacWithSha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        _ => return Err(unsupported("an unsupported PBKDF2 hash")),
    };
    let iterations = NonZeroU32::new(kdf.iteration_count)
        .filter(|n| n.get() <= PBKDF2_MAX_ITERATIONS)
        .ok_or_else(|| {
            SdError::Malformed(format!(
                "encrypted private key: PBKDF2 iteration count must be 1..={PBKDF2_MAX_ITERATIONS}"
            ))
        })?;
    let (alg, key_len, iv) = match params.encryption {
        pkcs5::pbes2::EncryptionScheme::Aes128Cbc { iv } => (&AES_128, 16usize, iv),
        pkcs5::pbes2::EncryptionScheme::Aes192Cbc { iv } => (&AES_192, 24, iv),
        pkcs5::pbes2::EncryptionScheme::Aes256Cbc { iv } => (&AES_256, 32, iv),
        _ => return Err(unsupported("an unsupported cipher")),
    };
    if kdf.key_length.is_some_and(|l| usize::from(l) != key_len) {
        return Err(SdError::Malformed(
            "encrypted private key: PBKDF2 key length does not match the cipher".to_owned(),
        ));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    pbkdf2::derive(
        prf,
        iterations,
        kdf.salt,
        passphrase.as_bytes(),
        &mut key[..key_len],
    );
    let dk = PaddedBlockDecryptingKey::cbc_pkcs7(
        UnboundCipherKey::new(alg, &key[..key_len])
            .map_err(|_| SdError::Crypto("AES key setup"))?,
    )
    .map_err(|_| SdError::Crypto("AES-CBC setup"))?;
    let mut buf = Zeroizing::new(epki.encrypted_data.to_vec());
    let wrong = || {
        SdError::Passphrase(
            "wrong passphrase for the encrypted private key (or the key file is corrupt)"
                .to_owned(),
        )
    };
    let len = dk
        .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
        .map_err(|_| wrong())?
        .len();
    buf.truncate(len);
    // A wrong passphrase can still yield valid padding by chance: check it parses as PKCS#8.
    pkcs8::PrivateKeyInfo::from_der(&buf).map_err(|_| wrong())?;
    Ok(buf)
}

/// Encrypt a PKCS#8 document into an `EncryptedPrivateKeyInfo` (PBES2, PBKDF2-HMAC-SHA256
/// with [`PBKDF2_ITERATIONS`], AES-256-CBC), readable by OpenSSL.
pub(crate) fn encrypt_pkcs8(pkcs8_der: &[u8], passphrase: &str) -> Result<Vec<u8>, SdError> {
    if passphrase.is_empty() {
        return Err(SdError::Passphrase(
            "the passphrase is empty: give a non-empty passphrase or none at all".to_owned(),
        ));
    }
    let salt = random::<16>();
    let iv = random::<16>();
    let mut key = Zeroizing::new([0u8; 32]);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(PBKDF2_ITERATIONS).ok_or(SdError::Crypto("PBKDF2 parameters"))?,
        &salt[..],
        passphrase.as_bytes(),
        &mut key[..],
    );
    let ek = PaddedBlockEncryptingKey::cbc_pkcs7(
        UnboundCipherKey::new(&AES_256, &key[..]).map_err(|_| SdError::Crypto("AES key setup"))?,
    )
    .map_err(|_| SdError::Crypto("AES-CBC setup"))?;
    let mut buf = pkcs8_der.to_vec();
    ek.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(*iv)))
        .map_err(|_| SdError::Crypto("AES-CBC encryption"))?;
    let params =
        pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt[..], &iv)
            .map_err(|_| SdError::Crypto("PBES2 parameters"))?;
    let epki = pkcs8::EncryptedPrivateKeyInfo {
        encryption_algorithm: params.into(),
        encrypted_data: &buf,
    };
    epki.to_der()
        .map_err(|_| SdError::Crypto("PKCS#8 encoding"))
}

/// Signs certificates for rcgen with an aws-lc-rs RSA key (PKCS#1 v1.5, SHA-256).
pub(crate) struct RsaCertSigner {
    key: aws_lc_rs::rsa::KeyPair,
    public_pkcs1: Vec<u8>,
}

impl RsaCertSigner {
    pub(crate) fn from_pkcs8(pkcs8_der: &[u8]) -> Result<Self, SdError> {
        use aws_lc_rs::signature::KeyPair as _;
        let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8_der)
            .map_err(|_| SdError::Crypto("RSA signing key setup"))?;
        let public_pkcs1 = key.public_key().as_ref().to_vec();
        Ok(Self { key, public_pkcs1 })
    }
}

impl rcgen::PublicKeyData for RsaCertSigner {
    fn der_bytes(&self) -> &[u8] {
        &self.public_pkcs1
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

impl rcgen::SigningKey for RsaCertSigner {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                msg,
                &mut sig,
            )
            .map_err(|_| rcgen::Error::RingUnspecified)?;
        Ok(sig)
    }
}

/// Generate an RSA key pair with aws-lc-rs; returns the key and its PKCS#8 DER.
pub(crate) fn generate_rsa(
    bits: u32,
) -> Result<(PrivateDecryptingKey, Zeroizing<Vec<u8>>), SdError> {
    let size = match bits {
        2048 => KeySize::Rsa2048,
        3072 => KeySize::Rsa3072,
        4096 => KeySize::Rsa4096,
        other => {
            return Err(SdError::WeakKey {
                key: "new key".to_owned(),
                reason: format!("{other} bits requested; choose 2048, 3072 or 4096"),
            });
        }
    };
    let key =
        PrivateDecryptingKey::generate(size).map_err(|_| SdError::Crypto("RSA key generation"))?;
    let der = key.as_der().map_err(|_| SdError::Crypto("PKCS#8 export"))?;
    let pkcs8 = Zeroizing::new(der.as_ref().to_vec());
    Ok((key, pkcs8))
}

/// Build a self-signed certificate for an RSA key.
pub(crate) fn self_signed_certificate(
    pkcs8_der: &[u8],
    common_name: &str,
    uris: &[String],
    validity_days: i64,
) -> Result<Vec<u8>, SdError> {
    let signer = RsaCertSigner::from_pkcs8(pkcs8_der)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(validity_days);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&random::<16>()[..]));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    for u in uris {
        let s = rcgen::string::Ia5String::try_from(u.as_str()).map_err(|_| {
            SdError::Malformed(format!("{u:?} is not a valid URI for a certificate"))
        })?;
        params.subject_alt_names.push(rcgen::SanType::URI(s));
    }
    let cert = params
        .self_signed(&signer)
        .map_err(|e| SdError::Malformed(format!("certificate generation failed: {e}")))?;
    Ok(cert.der().to_vec())
}

/// Generate a custodian key pair and self-signed certificate (valid 10 years).
///
/// Returns `(certificate PEM, private key PEM)`; the key is PKCS#8, encrypted (PBES2,
/// PBKDF2-HMAC-SHA256 600 000 iterations, AES-256-CBC) when `passphrase` is given.
/// `bits` is 2048, 3072 or 4096.
pub fn generate_custodian(
    subject_cn: &str,
    bits: u32,
    passphrase: Option<&str>,
) -> Result<(String, Zeroizing<String>), SdError> {
    if subject_cn.trim().is_empty() {
        return Err(SdError::Malformed("the custodian name is empty".to_owned()));
    }
    let (_key, pkcs8_der) = generate_rsa(bits)?;
    let cert_der = self_signed_certificate(&pkcs8_der, subject_cn, &[], 3650)?;
    let cert_pem = pem::encode(&pem::Pem::new("CERTIFICATE", cert_der));
    let key_pem = match passphrase {
        Some(p) => pem_secret("ENCRYPTED PRIVATE KEY", encrypt_pkcs8(&pkcs8_der, p)?),
        None => pem_secret("PRIVATE KEY", pkcs8_der.to_vec()),
    };
    Ok((cert_pem, key_pem))
}

/// PEM-encode secret DER, wiping the intermediate buffer.
fn pem_secret(tag: &str, der: Vec<u8>) -> Zeroizing<String> {
    let block = pem::Pem::new(tag, der);
    let text = Zeroizing::new(pem::encode(&block));
    drop(Zeroizing::new(block.into_contents()));
    text
}
