//! RSA keys: PKCS#1 v1.5 and PSS signatures over a digest, RSA-OAEP (SHA-1), RSA-OAEP-256
//! and RSA1_5 encryption. All with aws-lc-rs.

use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeyPair, KeyPairComponents, KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm,
    OaepPrivateDecryptingKey, OaepPublicEncryptingKey, Pkcs1PrivateDecryptingKey,
    Pkcs1PublicEncryptingKey, PrivateDecryptingKey, PublicKeyComponents,
};
use aws_lc_rs::signature::{self, KeyPair as _, ParsedPublicKey, RsaEncoding, RsaParameters};
use keystead_core::keys::{Base64Url, EncryptionAlgorithm, JsonWebKey, SignatureAlgorithm};
use zeroize::Zeroizing;

use super::{CryptoError, RSA_SIZES, check_digest_len};

/// RS256, RS384, RS512, PS256, PS384, PS512 in this order.
const SIG_ALGS: [SignatureAlgorithm; 6] = [
    SignatureAlgorithm::RS256,
    SignatureAlgorithm::RS384,
    SignatureAlgorithm::RS512,
    SignatureAlgorithm::PS256,
    SignatureAlgorithm::PS384,
    SignatureAlgorithm::PS512,
];

fn signing_params(
    alg: SignatureAlgorithm,
) -> Option<(
    &'static dyn RsaEncoding,
    &'static RsaParameters,
    &'static digest::Algorithm,
)> {
    use SignatureAlgorithm::*;
    Some(match alg {
        RS256 => (
            &signature::RSA_PKCS1_SHA256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
            &digest::SHA256,
        ),
        RS384 => (
            &signature::RSA_PKCS1_SHA384,
            &signature::RSA_PKCS1_2048_8192_SHA384,
            &digest::SHA384,
        ),
        RS512 => (
            &signature::RSA_PKCS1_SHA512,
            &signature::RSA_PKCS1_2048_8192_SHA512,
            &digest::SHA512,
        ),
        PS256 => (
            &signature::RSA_PSS_SHA256,
            &signature::RSA_PSS_2048_8192_SHA256,
            &digest::SHA256,
        ),
        PS384 => (
            &signature::RSA_PSS_SHA384,
            &signature::RSA_PSS_2048_8192_SHA384,
            &digest::SHA384,
        ),
        PS512 => (
            &signature::RSA_PSS_SHA512,
            &signature::RSA_PSS_2048_8192_SHA512,
            &digest::SHA512,
        ),
        _ => return None,
    })
}

pub(super) struct RsaMaterial {
    key_pair: KeyPair,
    oaep_dec: OaepPrivateDecryptingKey,
    pkcs1_dec: Pkcs1PrivateDecryptingKey,
    oaep_enc: OaepPublicEncryptingKey,
    pkcs1_enc: Pkcs1PublicEncryptingKey,
    /// Parsed public keys, one per entry of [`SIG_ALGS`].
    verifiers: Vec<ParsedPublicKey>,
    n: Vec<u8>,
    e: Vec<u8>,
    bits: u32,
}

impl RsaMaterial {
    pub(super) fn generate(bits: u32) -> Result<Self, CryptoError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            _ => {
                return Err(CryptoError::BadParameter(format!(
                    "RSA key_size {bits} is not supported; use 2048, 3072 or 4096"
                )));
            }
        };
        let kp = KeyPair::generate(size).map_err(|_| {
            CryptoError::Internal("RSA key generation failed; retry the request".into())
        })?;
        Self::from_key_pair(kp)
    }

    pub(super) fn from_pkcs8(der: &[u8]) -> Result<Self, CryptoError> {
        let kp = KeyPair::from_pkcs8(der).map_err(|_| {
            CryptoError::InvalidKey("the RSA private key is not valid PKCS#8".into())
        })?;
        Self::from_key_pair(kp)
    }

    fn from_key_pair(kp: KeyPair) -> Result<Self, CryptoError> {
        let bits = u32::try_from(kp.public_modulus_len() * 8).unwrap_or(0);
        if !RSA_SIZES.contains(&bits) {
            return Err(CryptoError::InvalidKey(format!(
                "RSA keys of {bits} bits are not supported; use 2048, 3072 or 4096 bits"
            )));
        }
        let pkcs8 = pkcs8_of(&kp)?;
        let invalid = || CryptoError::InvalidKey("the RSA private key is not usable".into());
        let dec = PrivateDecryptingKey::from_pkcs8(&pkcs8).map_err(|_| invalid())?;
        let public = dec.public_key();
        let oaep_enc = OaepPublicEncryptingKey::new(public.clone()).map_err(|_| invalid())?;
        let pkcs1_enc = Pkcs1PublicEncryptingKey::new(public).map_err(|_| invalid())?;
        let oaep_dec = OaepPrivateDecryptingKey::new(dec.clone()).map_err(|_| invalid())?;
        let pkcs1_dec = Pkcs1PrivateDecryptingKey::new(dec).map_err(|_| invalid())?;
        let public_der = kp.public_key().as_ref();
        let mut verifiers = Vec::with_capacity(SIG_ALGS.len());
        for alg in SIG_ALGS {
            let (_, params, _) = signing_params(alg).ok_or_else(invalid)?;
            verifiers.push(ParsedPublicKey::new(params, public_der).map_err(|_| invalid())?);
        }
        let n = kp
            .public_key()
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec();
        let e = kp
            .public_key()
            .exponent()
            .big_endian_without_leading_zero()
            .to_vec();
        Ok(RsaMaterial {
            key_pair: kp,
            oaep_dec,
            pkcs1_dec,
            oaep_enc,
            pkcs1_enc,
            verifiers,
            n,
            e,
            bits,
        })
    }

    /// Import from n, e, d, p, q, dp, dq, qi; aws-lc checks their consistency.
    pub(super) fn from_jwk(jwk: &JsonWebKey) -> Result<Self, CryptoError> {
        fn field<'a>(v: &'a Option<Base64Url>, name: &str) -> Result<&'a [u8], CryptoError> {
            match v {
                Some(b) if !b.as_bytes().is_empty() => Ok(strip_zeros(b.as_bytes())),
                _ => Err(CryptoError::InvalidKey(format!(
                    "the RSA JWK has no '{name}'; include n, e, d, p, q, dp, dq and qi to import an RSA key"
                ))),
            }
        }
        let n = field(&jwk.n, "n")?;
        let e = field(&jwk.e, "e")?;
        let bits = n.len() * 8;
        if !RSA_SIZES.iter().any(|s| *s as usize == bits) {
            return Err(CryptoError::InvalidKey(format!(
                "RSA modulus of {bits} bits is not supported; import a 2048, 3072 or 4096-bit key"
            )));
        }
        let components = KeyPairComponents {
            public_key: PublicKeyComponents { n, e },
            d: field(&jwk.d, "d")?,
            p: field(&jwk.p, "p")?,
            q: field(&jwk.q, "q")?,
            dP: field(&jwk.dp, "dp")?,
            dQ: field(&jwk.dq, "dq")?,
            qInv: field(&jwk.qi, "qi")?,
        };
        let kp = KeyPair::from_components(&components).map_err(|_| {
            CryptoError::InvalidKey(
                "the RSA JWK components are inconsistent (n, e, d, p, q, dp, dq, qi do not form one key); export the key again from its source".into(),
            )
        })?;
        if kp.public_key().modulus().big_endian_without_leading_zero() != n {
            return Err(CryptoError::InvalidKey(
                "the RSA JWK modulus does not match its private components".into(),
            ));
        }
        Self::from_key_pair(kp)
    }

    pub(super) fn pkcs8(&self) -> Zeroizing<Vec<u8>> {
        // Only fails on allocation failure inside aws-lc; an empty buffer then fails to load.
        pkcs8_of(&self.key_pair).unwrap_or_default()
    }

    pub(super) fn bits(&self) -> u32 {
        self.bits
    }

    pub(super) fn fill_public(&self, jwk: &mut JsonWebKey) {
        jwk.n = Some(Base64Url::new(self.n.clone()));
        jwk.e = Some(Base64Url::new(self.e.clone()));
    }

    fn wrong_alg(&self, what: &str) -> CryptoError {
        CryptoError::AlgorithmNotSupported(format!(
            "{what} cannot be used with an RSA key (RSA-HSM, {} bits); use RS256/384/512 or PS256/384/512 to sign, RSA-OAEP, RSA-OAEP-256 or RSA1_5 to encrypt or wrap",
            self.bits
        ))
    }

    pub(super) fn sign(
        &self,
        alg: SignatureAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if alg == SignatureAlgorithm::RSNULL {
            return Err(CryptoError::NotSupported(
                "RSNULL (raw PKCS#1 v1.5 signature without DigestInfo) is not supported; use RS256, RS384 or RS512".into(),
            ));
        }
        let (enc, _, dalg) = signing_params(alg).ok_or_else(|| self.wrong_alg(alg.as_str()))?;
        check_digest_len(alg, digest)?;
        let d = Digest::import_less_safe(digest, dalg).map_err(|_| {
            CryptoError::BadParameter(format!("the digest for {alg} has the wrong length"))
        })?;
        let mut sig = vec![0u8; self.key_pair.public_modulus_len()];
        self.key_pair.sign_digest(enc, &d, &mut sig).map_err(|_| {
            CryptoError::Internal(format!("{alg} signing failed; retry the request"))
        })?;
        Ok(sig)
    }

    pub(super) fn verify(
        &self,
        alg: SignatureAlgorithm,
        digest: &[u8],
        signature: &[u8],
    ) -> Result<bool, CryptoError> {
        if alg == SignatureAlgorithm::RSNULL {
            return Err(CryptoError::NotSupported(
                "RSNULL (raw PKCS#1 v1.5 signature without DigestInfo) is not supported; use RS256, RS384 or RS512".into(),
            ));
        }
        let (_, _, dalg) = signing_params(alg).ok_or_else(|| self.wrong_alg(alg.as_str()))?;
        check_digest_len(alg, digest)?;
        let idx = SIG_ALGS
            .iter()
            .position(|a| *a == alg)
            .ok_or_else(|| self.wrong_alg(alg.as_str()))?;
        let d = Digest::import_less_safe(digest, dalg).map_err(|_| {
            CryptoError::BadParameter(format!("the digest for {alg} has the wrong length"))
        })?;
        Ok(self.verifiers[idx].verify_digest_sig(&d, signature).is_ok())
    }

    fn oaep(alg: EncryptionAlgorithm) -> Option<&'static OaepAlgorithm> {
        match alg {
            EncryptionAlgorithm::RsaOaep => Some(&OAEP_SHA1_MGF1SHA1),
            EncryptionAlgorithm::RsaOaep256 => Some(&OAEP_SHA256_MGF1SHA256),
            _ => None,
        }
    }

    pub(super) fn encrypt(
        &self,
        alg: EncryptionAlgorithm,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; self.key_pair.public_modulus_len()];
        let too_long = |max: usize| {
            CryptoError::BadParameter(format!(
                "the value is {} bytes but {alg} with a {}-bit key takes at most {max} bytes; encrypt a symmetric key instead of bulk data",
                plaintext.len(),
                self.bits
            ))
        };
        let len = if let Some(oaep) = Self::oaep(alg) {
            let max = self.oaep_enc.max_plaintext_size(oaep);
            if plaintext.len() > max {
                return Err(too_long(max));
            }
            self.oaep_enc
                .encrypt(oaep, plaintext, &mut out, None)
                .map_err(|_| {
                    CryptoError::Internal(format!("{alg} encryption failed; retry the request"))
                })?
                .len()
        } else if alg == EncryptionAlgorithm::Rsa1_5 {
            let max = self.pkcs1_enc.max_plaintext_size();
            if plaintext.len() > max {
                return Err(too_long(max));
            }
            self.pkcs1_enc
                .encrypt(plaintext, &mut out)
                .map_err(|_| {
                    CryptoError::Internal(format!("{alg} encryption failed; retry the request"))
                })?
                .len()
        } else {
            return Err(self.wrong_alg(alg.as_str()));
        };
        out.truncate(len);
        Ok(out)
    }

    pub(super) fn decrypt(
        &self,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let oaep = Self::oaep(alg);
        if oaep.is_none() && alg != EncryptionAlgorithm::Rsa1_5 {
            return Err(self.wrong_alg(alg.as_str()));
        }
        let k = self.key_pair.public_modulus_len();
        if ciphertext.len() != k {
            return Err(CryptoError::BadParameter(format!(
                "the value is {} bytes but {alg} ciphertexts for this {}-bit key are exactly {k} bytes",
                ciphertext.len(),
                self.bits
            )));
        }
        let mut out = Zeroizing::new(vec![0u8; k]);
        let len = match oaep {
            Some(oaep) => self
                .oaep_dec
                .decrypt(oaep, ciphertext, &mut out, None)
                .map(|p| p.len()),
            None => self
                .pkcs1_dec
                .decrypt(ciphertext, &mut out)
                .map(|p| p.len()),
        }
        .map_err(|_| CryptoError::DecryptionFailed)?;
        out.truncate(len);
        Ok(out)
    }
}

fn pkcs8_of(kp: &KeyPair) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'static>>::as_der(kp)
        .map_err(|_| CryptoError::Internal("encoding the RSA key failed".into()))?;
    Ok(Zeroizing::new(der.as_ref().to_vec()))
}

/// JWK integers are unsigned big-endian; some encoders add leading zero bytes.
fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b
        .iter()
        .position(|x| *x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[first..]
}
