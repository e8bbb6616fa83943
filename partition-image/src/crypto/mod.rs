//! Every key algorithm of a partition: key generation and import, the at-rest encoding of key
//! material, and the Key Vault operations (sign, verify, encrypt, decrypt, wrap, unwrap).
//!
//! Pure and synchronous: no I/O, no logging. All private-key operations use `aws-lc-rs`.
//! A [`KeyMaterial`] keeps parsed `aws-lc-rs` handles so an operation never re-parses DER; it
//! is `Send + Sync`, share it as `Arc<KeyMaterial>`.
//!
//! Key Vault semantics: `sign`/`verify` take the **digest** (32/48/64 bytes for the
//! 256/384/512 algorithms); ECDSA signatures are the fixed-size `r || s` form; AES-GCM uses a
//! 12-byte IV (generated when absent) and a separate 16-byte tag. `key_ops` enforcement,
//! `enabled`/`nbf`/`exp` checks are the caller's job.

mod aes;
mod ec;
mod error;
mod kw;
mod rsa;

#[cfg(test)]
mod tests;

use std::fmt;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use keystead_core::keys::{
    CurveName, EncryptionAlgorithm, JsonWebKey, KeyCreateParameters, KeyFamily, KeyType,
    SignatureAlgorithm,
};
use zeroize::Zeroizing;

pub use error::CryptoError;

/// What to generate, parsed from [`KeyCreateParameters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// RSA with public exponent 65537; `bits` is 2048, 3072 or 4096.
    Rsa {
        bits: u32,
    },
    Ec {
        curve: CurveName,
    },
    /// AES key; `bits` is 128, 192 or 256.
    Oct {
        bits: u32,
    },
}

pub const RSA_SIZES: [u32; 3] = [2048, 3072, 4096];
pub const OCT_SIZES: [u32; 3] = [128, 192, 256];

impl KeySpec {
    /// Validates create parameters: kty `RSA`/`RSA-HSM` (key_size 2048 default, 3072, 4096;
    /// public_exponent 65537 only), `EC`/`EC-HSM` (crv default P-256, P-384, P-521, P-256K),
    /// `oct`/`oct-HSM` (key_size 128, 192, 256 default).
    pub fn from_create(p: &KeyCreateParameters) -> Result<KeySpec, CryptoError> {
        let kty =
            KeyType::parse(&p.kty).map_err(|e| CryptoError::KeyTypeNotSupported(e.to_string()))?;
        let family = kty.family();
        if family != KeyFamily::Rsa && p.public_exponent.is_some() {
            return Err(CryptoError::BadParameter(format!(
                "public_exponent applies only to RSA keys; remove it for kty '{}'",
                kty
            )));
        }
        if family != KeyFamily::Ec && p.crv.is_some() {
            return Err(CryptoError::BadParameter(format!(
                "crv applies only to EC keys; remove it for kty '{}'",
                kty
            )));
        }
        match family {
            KeyFamily::Rsa => {
                if let Some(e) = p.public_exponent
                    && e != 65537
                {
                    return Err(CryptoError::BadParameter(format!(
                        "public_exponent {e} is not supported; omit it or use 65537"
                    )));
                }
                let bits = p.key_size.unwrap_or(2048);
                if !RSA_SIZES.contains(&bits) {
                    return Err(CryptoError::BadParameter(format!(
                        "RSA key_size {bits} is not supported; use 2048, 3072 or 4096"
                    )));
                }
                Ok(KeySpec::Rsa { bits })
            }
            KeyFamily::Ec => {
                let curve = match &p.crv {
                    Some(c) => {
                        CurveName::parse(c).map_err(|e| CryptoError::BadParameter(e.to_string()))?
                    }
                    None => CurveName::P256,
                };
                if let Some(size) = p.key_size
                    && size != curve.bits()
                {
                    return Err(CryptoError::BadParameter(format!(
                        "key_size {size} does not match curve {curve} ({} bits); omit key_size for EC keys",
                        curve.bits()
                    )));
                }
                Ok(KeySpec::Ec { curve })
            }
            KeyFamily::Oct => {
                let bits = p.key_size.unwrap_or(256);
                if !OCT_SIZES.contains(&bits) {
                    return Err(CryptoError::BadParameter(format!(
                        "oct key_size {bits} is not supported; use 128, 192 or 256"
                    )));
                }
                Ok(KeySpec::Oct { bits })
            }
        }
    }

    /// The spec of an existing key version from its stored public JWK (used by rotate):
    /// RSA size from `n`, EC curve from `crv`. oct keys carry no public material, so their
    /// size cannot be recovered from the JWK: use [`KeyMaterial::spec`] for them.
    pub fn from_public_jwk(jwk: &JsonWebKey) -> Result<KeySpec, CryptoError> {
        let kty = jwk.kty.as_deref().ok_or_else(|| {
            CryptoError::BadParameter("the JWK has no 'kty'; set kty to RSA, EC or oct".into())
        })?;
        let kty =
            KeyType::parse(kty).map_err(|e| CryptoError::KeyTypeNotSupported(e.to_string()))?;
        match kty.family() {
            KeyFamily::Rsa => {
                let n = jwk.n.as_ref().map(|n| n.as_bytes()).unwrap_or(&[]);
                let first = n.iter().position(|b| *b != 0).unwrap_or(n.len());
                let bits = u32::try_from((n.len() - first) * 8).unwrap_or(0);
                if !RSA_SIZES.contains(&bits) {
                    return Err(CryptoError::InvalidKey(format!(
                        "the RSA JWK modulus has {bits} bits; expected 2048, 3072 or 4096"
                    )));
                }
                Ok(KeySpec::Rsa { bits })
            }
            KeyFamily::Ec => {
                let crv = jwk.crv.as_deref().ok_or_else(|| {
                    CryptoError::InvalidKey("the EC JWK has no 'crv'".into())
                })?;
                Ok(KeySpec::Ec {
                    curve: CurveName::parse(crv).map_err(|e| CryptoError::InvalidKey(e.to_string()))?,
                })
            }
            KeyFamily::Oct => Err(CryptoError::BadParameter(
                "an oct key's size is not in its public JWK; take the spec from KeyMaterial::spec()".into(),
            )),
        }
    }

    /// The stored (Managed HSM) key type: `RSA-HSM`, `EC-HSM` or `oct-HSM`.
    pub fn key_type(&self) -> KeyType {
        match self {
            KeySpec::Rsa { .. } => KeyType::RsaHsm,
            KeySpec::Ec { .. } => KeyType::EcHsm,
            KeySpec::Oct { .. } => KeyType::OctHsm,
        }
    }
}

/// A signature algorithm given as the enum or as its wire string (parsed, unknown values
/// become a `BadParameter` error listing the supported values).
pub trait SignatureAlg {
    fn to_alg(self) -> Result<SignatureAlgorithm, CryptoError>;
}

impl SignatureAlg for SignatureAlgorithm {
    fn to_alg(self) -> Result<SignatureAlgorithm, CryptoError> {
        Ok(self)
    }
}

impl SignatureAlg for &str {
    fn to_alg(self) -> Result<SignatureAlgorithm, CryptoError> {
        Ok(SignatureAlgorithm::parse(self)?)
    }
}

impl SignatureAlg for &String {
    fn to_alg(self) -> Result<SignatureAlgorithm, CryptoError> {
        Ok(SignatureAlgorithm::parse(self)?)
    }
}

/// An encryption / key-wrap algorithm given as the enum or as its wire string.
pub trait EncryptionAlg {
    fn to_alg(self) -> Result<EncryptionAlgorithm, CryptoError>;
}

impl EncryptionAlg for EncryptionAlgorithm {
    fn to_alg(self) -> Result<EncryptionAlgorithm, CryptoError> {
        Ok(self)
    }
}

impl EncryptionAlg for &str {
    fn to_alg(self) -> Result<EncryptionAlgorithm, CryptoError> {
        Ok(EncryptionAlgorithm::parse(self)?)
    }
}

impl EncryptionAlg for &String {
    fn to_alg(self) -> Result<EncryptionAlgorithm, CryptoError> {
        Ok(EncryptionAlgorithm::parse(self)?)
    }
}

/// The result of [`KeyMaterial::encrypt`]: ciphertext plus, for AES, the IV and tag used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptOutput {
    pub value: Vec<u8>,
    pub iv: Option<Vec<u8>>,
    pub tag: Option<Vec<u8>>,
    pub aad: Option<Vec<u8>>,
}

// Boxed: the variants differ a lot in size (parsed aws-lc handles).
enum Inner {
    Rsa(Box<rsa::RsaMaterial>),
    Ec(Box<ec::EcMaterial>),
    Oct(Box<aes::OctMaterial>),
}

/// The private material of one key version, with parsed `aws-lc-rs` handles.
/// Debug shows only the type and size.
pub struct KeyMaterial {
    inner: Inner,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyMaterial({:?})", self.spec())
    }
}

/// At-rest encoding: `[FORMAT_VERSION, tag, ...]`.
const FORMAT_VERSION: u8 = 1;
const TAG_RSA: u8 = 1;
const TAG_EC: u8 = 2;
const TAG_OCT: u8 = 3;

fn curve_tag(c: CurveName) -> u8 {
    match c {
        CurveName::P256 => 1,
        CurveName::P384 => 2,
        CurveName::P521 => 3,
        CurveName::P256K => 4,
    }
}

fn curve_from_tag(t: u8) -> Option<CurveName> {
    Some(match t {
        1 => CurveName::P256,
        2 => CurveName::P384,
        3 => CurveName::P521,
        4 => CurveName::P256K,
        _ => return None,
    })
}

impl KeyMaterial {
    /// Generates a new key.
    pub fn generate(spec: &KeySpec) -> Result<KeyMaterial, CryptoError> {
        let inner = match *spec {
            KeySpec::Rsa { bits } => Inner::Rsa(Box::new(rsa::RsaMaterial::generate(bits)?)),
            KeySpec::Ec { curve } => Inner::Ec(Box::new(ec::EcMaterial::generate(curve)?)),
            KeySpec::Oct { bits } => Inner::Oct(Box::new(aes::OctMaterial::generate(bits)?)),
        };
        Ok(KeyMaterial { inner })
    }

    /// Imports a JWK with private material: RSA (n, e, d, p, q, dp, dq, qi), EC (crv, x, y,
    /// d) or oct (k of 16, 24 or 32 bytes). Checks that the components are consistent.
    pub fn from_jwk(jwk: &JsonWebKey) -> Result<KeyMaterial, CryptoError> {
        let kty = jwk.kty.as_deref().ok_or_else(|| {
            CryptoError::BadParameter("the JWK has no 'kty'; set kty to RSA, EC or oct".into())
        })?;
        let kty =
            KeyType::parse(kty).map_err(|e| CryptoError::KeyTypeNotSupported(e.to_string()))?;
        if jwk.key_hsm.is_some() {
            return Err(CryptoError::NotSupported(
                "BYOK transfer blobs (key_hsm) are not supported; import the key as a plain JWK with its private components".into(),
            ));
        }
        let inner = match kty.family() {
            KeyFamily::Rsa => Inner::Rsa(Box::new(rsa::RsaMaterial::from_jwk(jwk)?)),
            KeyFamily::Ec => Inner::Ec(Box::new(ec::EcMaterial::from_jwk(jwk)?)),
            KeyFamily::Oct => Inner::Oct(Box::new(aes::OctMaterial::from_jwk(jwk)?)),
        };
        Ok(KeyMaterial { inner })
    }

    /// Versioned compact encoding of the private material (PKCS#8 DER for RSA/EC, raw bytes
    /// for AES). Plaintext secret: wrap it with an AEAD before it touches disk.
    pub fn to_storage_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        out.push(FORMAT_VERSION);
        match &self.inner {
            Inner::Rsa(m) => {
                out.push(TAG_RSA);
                out.extend_from_slice(&m.pkcs8());
            }
            Inner::Ec(m) => {
                out.push(TAG_EC);
                out.push(curve_tag(m.curve()));
                out.extend_from_slice(&m.pkcs8());
            }
            Inner::Oct(m) => {
                out.push(TAG_OCT);
                out.extend_from_slice(m.key_bytes());
            }
        }
        out
    }

    /// Loads what [`to_storage_bytes`](Self::to_storage_bytes) produced.
    pub fn from_storage_bytes(bytes: &[u8]) -> Result<KeyMaterial, CryptoError> {
        let corrupt = || {
            CryptoError::Internal(
                "stored key material is unreadable (unknown format or corrupted); restore the key from a backup".into(),
            )
        };
        let [version, tag, rest @ ..] = bytes else {
            return Err(corrupt());
        };
        if *version != FORMAT_VERSION {
            return Err(corrupt());
        }
        let inner = match *tag {
            TAG_RSA => Inner::Rsa(Box::new(
                rsa::RsaMaterial::from_pkcs8(rest).map_err(|_| corrupt())?,
            )),
            TAG_EC => {
                let [c, der @ ..] = rest else {
                    return Err(corrupt());
                };
                let curve = curve_from_tag(*c).ok_or_else(corrupt)?;
                Inner::Ec(Box::new(
                    ec::EcMaterial::from_pkcs8(curve, der).map_err(|_| corrupt())?,
                ))
            }
            TAG_OCT => Inner::Oct(Box::new(
                aes::OctMaterial::from_bytes(rest).map_err(|_| corrupt())?,
            )),
            _ => return Err(corrupt()),
        };
        Ok(KeyMaterial { inner })
    }

    /// The public JWK (n, e for RSA; crv, x, y for EC; no material for oct) with
    /// kty `RSA-HSM` / `EC-HSM` / `oct-HSM`.
    pub fn public_jwk(&self, kid: &str, key_ops: &[String]) -> JsonWebKey {
        let mut jwk = JsonWebKey {
            kid: Some(kid.to_string()),
            kty: Some(self.key_type().as_str().to_string()),
            key_ops: Some(key_ops.to_vec()),
            ..Default::default()
        };
        match &self.inner {
            Inner::Rsa(m) => m.fill_public(&mut jwk),
            Inner::Ec(m) => m.fill_public(&mut jwk),
            Inner::Oct(_) => {}
        }
        jwk
    }

    /// Type and size of this key.
    pub fn spec(&self) -> KeySpec {
        match &self.inner {
            Inner::Rsa(m) => KeySpec::Rsa { bits: m.bits() },
            Inner::Ec(m) => KeySpec::Ec { curve: m.curve() },
            Inner::Oct(m) => KeySpec::Oct { bits: m.bits() },
        }
    }

    /// The stored key type (`RSA-HSM`, `EC-HSM`, `oct-HSM`).
    pub fn key_type(&self) -> KeyType {
        self.spec().key_type()
    }

    /// Signs a digest (RS*/PS*: RSA; ES256/ES384/ES512/ES256K: the matching curve, `r || s`).
    /// HS256/384/512 on oct keys compute an HMAC over `value` (see docs/compatibility.md).
    pub fn sign(&self, alg: impl SignatureAlg, digest: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let alg = alg.to_alg()?;
        match &self.inner {
            Inner::Rsa(m) => m.sign(alg, digest),
            Inner::Ec(m) => m.sign(alg, digest),
            Inner::Oct(m) => m.sign(alg, digest),
        }
    }

    /// Verifies a signature over a digest. `Ok(false)` for a wrong signature; `Err` for an
    /// algorithm that does not fit the key or a digest of the wrong length.
    pub fn verify(
        &self,
        alg: impl SignatureAlg,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, CryptoError> {
        let alg = alg.to_alg()?;
        match &self.inner {
            Inner::Rsa(m) => m.verify(alg, digest, signature),
            Inner::Ec(m) => m.verify(alg, digest, signature),
            Inner::Oct(m) => m.verify(alg, digest, signature),
        }
    }

    /// Encrypts: RSA-OAEP, RSA-OAEP-256, RSA1_5 (RSA keys); AxxxGCM, AxxxCBC, AxxxCBCPAD (oct).
    pub fn encrypt(
        &self,
        alg: impl EncryptionAlg,
        plaintext: &[u8],
        iv: Option<&[u8]>,
        aad: Option<&[u8]>,
    ) -> Result<EncryptOutput, CryptoError> {
        let alg = alg.to_alg()?;
        match &self.inner {
            Inner::Rsa(m) => {
                reject_aes_params(alg, iv, aad, None)?;
                Ok(EncryptOutput {
                    value: m.encrypt(alg, plaintext)?,
                    iv: None,
                    tag: None,
                    aad: None,
                })
            }
            Inner::Ec(_) => Err(ec_cannot_encrypt(alg)),
            Inner::Oct(m) => m.encrypt(alg, plaintext, iv, aad),
        }
    }

    /// Decrypts what [`encrypt`](Self::encrypt) produced. Any failure of the decryption itself
    /// is the single [`CryptoError::DecryptionFailed`].
    pub fn decrypt(
        &self,
        alg: impl EncryptionAlg,
        ciphertext: &[u8],
        iv: Option<&[u8]>,
        aad: Option<&[u8]>,
        tag: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let alg = alg.to_alg()?;
        match &self.inner {
            Inner::Rsa(m) => {
                reject_aes_params(alg, iv, aad, tag)?;
                m.decrypt(alg, ciphertext)
            }
            Inner::Ec(_) => Err(ec_cannot_encrypt(alg)),
            Inner::Oct(m) => m.decrypt(alg, ciphertext, iv, aad, tag),
        }
    }

    /// Wraps a key: RSA-OAEP, RSA-OAEP-256, RSA1_5 (RSA keys); A128KW/A192KW/A256KW and
    /// CKM_AES_KEY_WRAP (RFC 3394), CKM_AES_KEY_WRAP_PAD (RFC 5649) (oct keys).
    pub fn wrap_key(&self, alg: impl EncryptionAlg, key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let alg = alg.to_alg()?;
        match &self.inner {
            Inner::Rsa(m) => m.encrypt(alg, key),
            Inner::Ec(_) => Err(ec_cannot_encrypt(alg)),
            Inner::Oct(m) => m.wrap(alg, key),
        }
    }

    /// Unwraps what [`wrap_key`](Self::wrap_key) produced.
    pub fn unwrap_key(
        &self,
        alg: impl EncryptionAlg,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let alg = alg.to_alg()?;
        match &self.inner {
            Inner::Rsa(m) => m.decrypt(alg, wrapped),
            Inner::Ec(_) => Err(ec_cannot_encrypt(alg)),
            Inner::Oct(m) => m.unwrap(alg, wrapped),
        }
    }
}

fn ec_cannot_encrypt(alg: EncryptionAlgorithm) -> CryptoError {
    CryptoError::AlgorithmNotSupported(format!(
        "EC keys cannot encrypt or wrap ({alg} requested); use an RSA or oct key"
    ))
}

fn reject_aes_params(
    alg: EncryptionAlgorithm,
    iv: Option<&[u8]>,
    aad: Option<&[u8]>,
    tag: Option<&[u8]>,
) -> Result<(), CryptoError> {
    if iv.is_some() || aad.is_some() || tag.is_some() {
        return Err(CryptoError::BadParameter(format!(
            "iv, aad and tag apply only to AES algorithms; remove them for {alg}"
        )));
    }
    Ok(())
}

/// `count` (1..=128) random bytes from the system CSPRNG.
pub fn random_bytes(count: usize) -> Result<Vec<u8>, CryptoError> {
    if !(1..=128).contains(&count) {
        return Err(CryptoError::BadParameter(format!(
            "count {count} is out of range; request between 1 and 128 bytes"
        )));
    }
    let mut out = vec![0u8; count];
    fill_random(&mut out)?;
    Ok(out)
}

pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new().fill(buf).map_err(|_| {
        CryptoError::Internal("the system random generator failed; retry the request".into())
    })
}

/// Raises an error when `digest` does not have the length `alg` needs.
pub(crate) fn check_digest_len(alg: SignatureAlgorithm, digest: &[u8]) -> Result<(), CryptoError> {
    match alg.digest_len() {
        Some(n) if n == digest.len() => Ok(()),
        Some(n) => Err(CryptoError::BadParameter(format!(
            "{alg} needs a {n}-byte digest but {} bytes were sent; send the hash of the message, not the message",
            digest.len()
        ))),
        None => Ok(()),
    }
}
