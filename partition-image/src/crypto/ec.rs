//! EC keys: ECDSA over a digest with P-256 (ES256), P-384 (ES384), P-521 (ES512) and
//! secp256k1 (ES256K); signatures in the fixed-size JOSE form `r || s`.

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, EcdsaSigningAlgorithm, EcdsaVerificationAlgorithm, KeyPair as _,
    ParsedPublicKey,
};
use keystead_core::keys::{Base64Url, CurveName, JsonWebKey, SignatureAlgorithm};
use zeroize::Zeroizing;

use super::{CryptoError, check_digest_len};

struct CurveParams {
    alg: SignatureAlgorithm,
    signing: &'static EcdsaSigningAlgorithm,
    verification: &'static EcdsaVerificationAlgorithm,
    digest: &'static digest::Algorithm,
}

fn params(curve: CurveName) -> CurveParams {
    match curve {
        CurveName::P256 => CurveParams {
            alg: SignatureAlgorithm::ES256,
            signing: &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            verification: &signature::ECDSA_P256_SHA256_FIXED,
            digest: &digest::SHA256,
        },
        CurveName::P384 => CurveParams {
            alg: SignatureAlgorithm::ES384,
            signing: &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            verification: &signature::ECDSA_P384_SHA384_FIXED,
            digest: &digest::SHA384,
        },
        CurveName::P521 => CurveParams {
            alg: SignatureAlgorithm::ES512,
            signing: &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
            verification: &signature::ECDSA_P521_SHA512_FIXED,
            digest: &digest::SHA512,
        },
        CurveName::P256K => CurveParams {
            alg: SignatureAlgorithm::ES256K,
            signing: &signature::ECDSA_P256K1_SHA256_FIXED_SIGNING,
            verification: &signature::ECDSA_P256K1_SHA256_FIXED,
            digest: &digest::SHA256,
        },
    }
}

pub(super) struct EcMaterial {
    curve: CurveName,
    key_pair: EcdsaKeyPair,
    verifier: ParsedPublicKey,
}

impl EcMaterial {
    pub(super) fn generate(curve: CurveName) -> Result<Self, CryptoError> {
        let kp = EcdsaKeyPair::generate(params(curve).signing).map_err(|_| {
            CryptoError::Internal("EC key generation failed; retry the request".into())
        })?;
        Self::from_key_pair(curve, kp)
    }

    pub(super) fn from_pkcs8(curve: CurveName, der: &[u8]) -> Result<Self, CryptoError> {
        let kp = EcdsaKeyPair::from_pkcs8(params(curve).signing, der).map_err(|_| {
            CryptoError::InvalidKey("the EC private key is not valid PKCS#8".into())
        })?;
        Self::from_key_pair(curve, kp)
    }

    fn from_key_pair(curve: CurveName, kp: EcdsaKeyPair) -> Result<Self, CryptoError> {
        let verifier =
            ParsedPublicKey::new(params(curve).verification, kp.public_key().as_ref())
                .map_err(|_| CryptoError::InvalidKey("the EC public key is not usable".into()))?;
        Ok(EcMaterial {
            curve,
            key_pair: kp,
            verifier,
        })
    }

    /// Import from crv, x, y, d; the public point must be the one derived from d.
    pub(super) fn from_jwk(jwk: &JsonWebKey) -> Result<Self, CryptoError> {
        let crv = jwk.crv.as_deref().ok_or_else(|| {
            CryptoError::InvalidKey(
                "the EC JWK has no 'crv'; set crv to P-256, P-384, P-521 or P-256K".into(),
            )
        })?;
        let curve = CurveName::parse(crv).map_err(|e| CryptoError::InvalidKey(e.to_string()))?;
        let len = curve.field_len();
        let fixed =
            |v: &Option<Base64Url>, name: &str| -> Result<Zeroizing<Vec<u8>>, CryptoError> {
                let b = v.as_ref().map(|b| b.as_bytes()).ok_or_else(|| {
                    CryptoError::InvalidKey(format!(
                        "the EC JWK has no '{name}'; include crv, x, y and d to import an EC key"
                    ))
                })?;
                // Accept shorter encodings (leading zeros stripped) and left-pad them.
                let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                let b = &b[first..];
                if b.len() > len {
                    return Err(CryptoError::InvalidKey(format!(
                        "the EC JWK '{name}' is longer than {len} bytes, the size for {curve}"
                    )));
                }
                let mut out = Zeroizing::new(vec![0u8; len]);
                out[len - b.len()..].copy_from_slice(b);
                Ok(out)
            };
        let x = fixed(&jwk.x, "x")?;
        let y = fixed(&jwk.y, "y")?;
        let d = fixed(&jwk.d, "d")?;
        let mut point = Vec::with_capacity(1 + 2 * len);
        point.push(0x04);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        let kp = EcdsaKeyPair::from_private_key_and_public_key(params(curve).signing, &d, &point)
            .map_err(|_| {
                CryptoError::InvalidKey(format!(
                    "the EC JWK is inconsistent: x and y are not the public point of d on {curve}; export the key again from its source"
                ))
            })?;
        Self::from_key_pair(curve, kp)
    }

    pub(super) fn curve(&self) -> CurveName {
        self.curve
    }

    pub(super) fn pkcs8(&self) -> Zeroizing<Vec<u8>> {
        // Only fails on allocation failure inside aws-lc; an empty buffer then fails to load.
        self.key_pair
            .to_pkcs8v1()
            .map(|doc| Zeroizing::new(doc.as_ref().to_vec()))
            .unwrap_or_default()
    }

    pub(super) fn fill_public(&self, jwk: &mut JsonWebKey) {
        let point = self.key_pair.public_key().as_ref();
        let len = self.curve.field_len();
        jwk.crv = Some(self.curve.as_str().to_string());
        if point.len() == 1 + 2 * len {
            jwk.x = Some(Base64Url::new(point[1..1 + len].to_vec()));
            jwk.y = Some(Base64Url::new(point[1 + len..].to_vec()));
        }
    }

    fn check_alg(&self, alg: SignatureAlgorithm) -> Result<CurveParams, CryptoError> {
        let p = params(self.curve);
        if p.alg != alg {
            return Err(CryptoError::AlgorithmNotSupported(format!(
                "{alg} cannot be used with this EC-HSM {} key; use {}",
                self.curve, p.alg
            )));
        }
        Ok(p)
    }

    pub(super) fn sign(
        &self,
        alg: SignatureAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let p = self.check_alg(alg)?;
        check_digest_len(alg, digest)?;
        let d = Digest::import_less_safe(digest, p.digest).map_err(|_| {
            CryptoError::BadParameter(format!("the digest for {alg} has the wrong length"))
        })?;
        let sig = self.key_pair.sign_digest(&d).map_err(|_| {
            CryptoError::Internal(format!("{alg} signing failed; retry the request"))
        })?;
        Ok(sig.as_ref().to_vec())
    }

    pub(super) fn verify(
        &self,
        alg: SignatureAlgorithm,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, CryptoError> {
        let p = self.check_alg(alg)?;
        check_digest_len(alg, digest)?;
        let d = Digest::import_less_safe(digest, p.digest).map_err(|_| {
            CryptoError::BadParameter(format!("the digest for {alg} has the wrong length"))
        })?;
        Ok(self.verifier.verify_digest_sig(&d, signature).is_ok())
    }
}
