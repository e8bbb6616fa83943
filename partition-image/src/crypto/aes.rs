//! oct (AES) keys: AES-GCM, AES-CBC (no padding), AES-CBC with PKCS#7, AES key wrap
//! (RFC 3394 / RFC 5649) and HMAC (HS256/384/512).

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{
    self, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
    PaddedBlockDecryptingKey, PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use keystead_core::keys::{EncryptionAlgorithm, JsonWebKey, SignatureAlgorithm};
use zeroize::Zeroizing;

use super::{CryptoError, EncryptOutput, OCT_SIZES, fill_random, kw};

const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
const BLOCK: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Gcm,
    Cbc,
    CbcPad,
    Kw,
    KwPad,
}

/// Mode and required key length in bytes (`None`: any AES key size).
fn mode_of(alg: EncryptionAlgorithm) -> Option<(Mode, Option<usize>)> {
    use EncryptionAlgorithm::*;
    Some(match alg {
        A128Gcm => (Mode::Gcm, Some(16)),
        A192Gcm => (Mode::Gcm, Some(24)),
        A256Gcm => (Mode::Gcm, Some(32)),
        A128Cbc => (Mode::Cbc, Some(16)),
        A192Cbc => (Mode::Cbc, Some(24)),
        A256Cbc => (Mode::Cbc, Some(32)),
        A128CbcPad => (Mode::CbcPad, Some(16)),
        A192CbcPad => (Mode::CbcPad, Some(24)),
        A256CbcPad => (Mode::CbcPad, Some(32)),
        A128Kw => (Mode::Kw, Some(16)),
        A192Kw => (Mode::Kw, Some(24)),
        A256Kw => (Mode::Kw, Some(32)),
        CkmAesKeyWrap => (Mode::Kw, None),
        CkmAesKeyWrapPad => (Mode::KwPad, None),
        RsaOaep | RsaOaep256 | Rsa1_5 => return None,
    })
}

pub(super) struct OctMaterial {
    key: Zeroizing<Vec<u8>>,
    gcm: LessSafeKey,
    cbc_enc: EncryptingKey,
    cbc_dec: DecryptingKey,
    pad_enc: PaddedBlockEncryptingKey,
    pad_dec: PaddedBlockDecryptingKey,
}

impl OctMaterial {
    pub(super) fn generate(bits: u32) -> Result<Self, CryptoError> {
        if !OCT_SIZES.contains(&bits) {
            return Err(CryptoError::BadParameter(format!(
                "oct key_size {bits} is not supported; use 128, 192 or 256"
            )));
        }
        let mut key = Zeroizing::new(vec![0u8; bits as usize / 8]);
        fill_random(&mut key)?;
        Self::from_bytes(&key)
    }

    pub(super) fn from_jwk(jwk: &JsonWebKey) -> Result<Self, CryptoError> {
        let k = jwk.k.as_ref().ok_or_else(|| {
            CryptoError::InvalidKey(
                "the oct JWK has no 'k'; include the 16, 24 or 32 key bytes in k".into(),
            )
        })?;
        Self::from_bytes(k.as_bytes())
    }

    pub(super) fn from_bytes(key: &[u8]) -> Result<Self, CryptoError> {
        let (gcm_alg, cbc_alg) = match key.len() {
            16 => (&aead::AES_128_GCM, &cipher::AES_128),
            24 => (&aead::AES_192_GCM, &cipher::AES_192),
            32 => (&aead::AES_256_GCM, &cipher::AES_256),
            n => {
                return Err(CryptoError::InvalidKey(format!(
                    "an oct key of {} bits is not supported; use 128, 192 or 256 bits (16, 24 or 32 bytes)",
                    n * 8
                )));
            }
        };
        let bad = || CryptoError::Internal("setting up the AES key failed".into());
        let unbound = || UnboundCipherKey::new(cbc_alg, key).map_err(|_| bad());
        Ok(OctMaterial {
            key: Zeroizing::new(key.to_vec()),
            gcm: LessSafeKey::new(UnboundKey::new(gcm_alg, key).map_err(|_| bad())?),
            cbc_enc: EncryptingKey::cbc(unbound()?).map_err(|_| bad())?,
            cbc_dec: DecryptingKey::cbc(unbound()?).map_err(|_| bad())?,
            pad_enc: PaddedBlockEncryptingKey::cbc_pkcs7(unbound()?).map_err(|_| bad())?,
            pad_dec: PaddedBlockDecryptingKey::cbc_pkcs7(unbound()?).map_err(|_| bad())?,
        })
    }

    pub(super) fn key_bytes(&self) -> &[u8] {
        &self.key
    }

    pub(super) fn bits(&self) -> u32 {
        (self.key.len() * 8) as u32
    }

    /// Checks that `alg` is an AES algorithm of `wanted` family matching this key's size.
    fn check(&self, alg: EncryptionAlgorithm, op: &str) -> Result<Mode, CryptoError> {
        let (mode, len) = mode_of(alg).ok_or_else(|| {
            CryptoError::AlgorithmNotSupported(format!(
                "{alg} needs an RSA key; this key is oct-HSM {} bits: use an AES algorithm",
                self.bits()
            ))
        })?;
        if let Some(len) = len
            && len != self.key.len()
        {
            return Err(CryptoError::AlgorithmNotSupported(format!(
                "{alg} needs a {}-bit oct key but this key has {} bits; use the A{}* algorithm of the same size",
                len * 8,
                self.bits(),
                self.bits()
            )));
        }
        let is_wrap = matches!(mode, Mode::Kw | Mode::KwPad);
        if op == "wrap" && !is_wrap {
            return Err(CryptoError::AlgorithmNotSupported(format!(
                "{alg} is an encryption algorithm; to wrap keys use A{b}KW, CKM_AES_KEY_WRAP or CKM_AES_KEY_WRAP_PAD, or call encrypt",
                b = self.bits()
            )));
        }
        if op == "encrypt" && is_wrap {
            return Err(CryptoError::AlgorithmNotSupported(format!(
                "{alg} is a key-wrap algorithm; call wrapkey/unwrapkey, or encrypt with A{b}GCM, A{b}CBC or A{b}CBCPAD",
                b = self.bits()
            )));
        }
        Ok(mode)
    }

    pub(super) fn encrypt(
        &self,
        alg: EncryptionAlgorithm,
        plaintext: &[u8],
        iv: Option<&[u8]>,
        aad: Option<&[u8]>,
    ) -> Result<EncryptOutput, CryptoError> {
        let mode = self.check(alg, "encrypt")?;
        match mode {
            Mode::Gcm => {
                // The IV is always the HSM's own: a caller-chosen one could repeat, and two
                // GCM encryptions under one key and IV give away the XOR of the plaintexts
                // and the authentication key.
                if iv.is_some() {
                    return Err(CryptoError::BadParameter(format!(
                        "{alg} encryption takes no iv: the HSM generates a fresh random 12-byte iv for every encryption (a repeated GCM iv reveals plaintext); omit iv, and pass the iv and tag returned by encrypt to decrypt"
                    )));
                }
                let mut nonce = [0u8; GCM_IV_LEN];
                fill_random(&mut nonce)?;
                let mut buf = plaintext.to_vec();
                let tag = self
                    .gcm
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad.unwrap_or(&[])),
                        &mut buf,
                    )
                    .map_err(|_| {
                        CryptoError::Internal(format!("{alg} encryption failed; retry the request"))
                    })?;
                Ok(EncryptOutput {
                    value: buf,
                    iv: Some(nonce.to_vec()),
                    tag: Some(tag.as_ref().to_vec()),
                    aad: aad.map(<[u8]>::to_vec),
                })
            }
            Mode::Cbc | Mode::CbcPad => {
                if aad.is_some() {
                    return Err(CryptoError::BadParameter(format!(
                        "aad applies only to AES-GCM; remove it for {alg}"
                    )));
                }
                let iv = cbc_iv(alg, iv)?;
                let ctx = EncryptionContext::Iv128(FixedLength::from(iv));
                let mut buf = plaintext.to_vec();
                let res = if mode == Mode::Cbc {
                    if buf.is_empty() || !buf.len().is_multiple_of(BLOCK) {
                        return Err(CryptoError::BadParameter(format!(
                            "{alg} has no padding: the value must be a non-empty multiple of 16 bytes ({} given); pad it or use {alg}PAD",
                            buf.len()
                        )));
                    }
                    self.cbc_enc.less_safe_encrypt(&mut buf, ctx)
                } else {
                    self.pad_enc.less_safe_encrypt(&mut buf, ctx)
                };
                res.map_err(|_| {
                    CryptoError::Internal(format!("{alg} encryption failed; retry the request"))
                })?;
                Ok(EncryptOutput {
                    value: buf,
                    iv: Some(iv.to_vec()),
                    tag: None,
                    aad: None,
                })
            }
            Mode::Kw | Mode::KwPad => {
                Err(CryptoError::Internal("unreachable key-wrap mode".into()))
            }
        }
    }

    pub(super) fn decrypt(
        &self,
        alg: EncryptionAlgorithm,
        ciphertext: &[u8],
        iv: Option<&[u8]>,
        aad: Option<&[u8]>,
        tag: Option<&[u8]>,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mode = self.check(alg, "encrypt")?;
        match mode {
            Mode::Gcm => {
                let iv = iv.ok_or_else(|| {
                    CryptoError::BadParameter(format!(
                        "{alg} decryption needs the iv returned by encrypt"
                    ))
                })?;
                let nonce = Nonce::try_assume_unique_for_key(iv).map_err(|_| {
                    CryptoError::BadParameter(format!(
                        "the iv is {} bytes but {alg} uses a 12-byte iv",
                        iv.len()
                    ))
                })?;
                let tag = tag.ok_or_else(|| {
                    CryptoError::BadParameter(format!(
                        "{alg} decryption needs the tag returned by encrypt"
                    ))
                })?;
                if tag.len() != GCM_TAG_LEN {
                    return Err(CryptoError::BadParameter(format!(
                        "the tag is {} bytes but {alg} tags are 16 bytes",
                        tag.len()
                    )));
                }
                let mut buf = Zeroizing::new(Vec::with_capacity(ciphertext.len() + GCM_TAG_LEN));
                buf.extend_from_slice(ciphertext);
                buf.extend_from_slice(tag);
                let len = self
                    .gcm
                    .open_in_place(nonce, Aad::from(aad.unwrap_or(&[])), &mut buf)
                    .map_err(|_| CryptoError::DecryptionFailed)?
                    .len();
                buf.truncate(len);
                Ok(buf)
            }
            Mode::Cbc | Mode::CbcPad => {
                if aad.is_some() || tag.is_some() {
                    return Err(CryptoError::BadParameter(format!(
                        "aad and tag apply only to AES-GCM; remove them for {alg}"
                    )));
                }
                let iv = iv.ok_or_else(|| {
                    CryptoError::BadParameter(format!(
                        "{alg} decryption needs the iv used for encryption"
                    ))
                })?;
                let iv: [u8; BLOCK] = iv.try_into().map_err(|_| {
                    CryptoError::BadParameter(format!(
                        "the iv is {} bytes but {alg} uses a 16-byte iv",
                        iv.len()
                    ))
                })?;
                if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(BLOCK) {
                    return Err(CryptoError::BadParameter(format!(
                        "{alg} ciphertexts are a non-empty multiple of 16 bytes ({} given)",
                        ciphertext.len()
                    )));
                }
                let ctx = DecryptionContext::Iv128(FixedLength::from(iv));
                let mut buf = Zeroizing::new(ciphertext.to_vec());
                let len = if mode == Mode::Cbc {
                    self.cbc_dec.decrypt(&mut buf, ctx).map(|p| p.len())
                } else {
                    self.pad_dec.decrypt(&mut buf, ctx).map(|p| p.len())
                }
                .map_err(|_| CryptoError::DecryptionFailed)?;
                buf.truncate(len);
                Ok(buf)
            }
            Mode::Kw | Mode::KwPad => {
                Err(CryptoError::Internal("unreachable key-wrap mode".into()))
            }
        }
    }

    pub(super) fn wrap(
        &self,
        alg: EncryptionAlgorithm,
        key: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        match self.check(alg, "wrap")? {
            Mode::Kw => {
                if key.len() < 16 || !key.len().is_multiple_of(8) {
                    return Err(CryptoError::BadParameter(format!(
                        "{alg} (RFC 3394) wraps keys of at least 16 bytes in multiples of 8 ({} given); use CKM_AES_KEY_WRAP_PAD for other lengths",
                        key.len()
                    )));
                }
                kw::wrap(&self.key, key)
            }
            _ => {
                if key.is_empty() {
                    return Err(CryptoError::BadParameter(format!(
                        "{alg} needs a non-empty key to wrap"
                    )));
                }
                kw::wrap_pad(&self.key, key)
            }
        }
    }

    pub(super) fn unwrap(
        &self,
        alg: EncryptionAlgorithm,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        match self.check(alg, "wrap")? {
            Mode::Kw => {
                if wrapped.len() < 24 || !wrapped.len().is_multiple_of(8) {
                    return Err(CryptoError::BadParameter(format!(
                        "{alg} wrapped keys are at least 24 bytes in multiples of 8 ({} given)",
                        wrapped.len()
                    )));
                }
                kw::unwrap(&self.key, wrapped)
            }
            _ => {
                if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
                    return Err(CryptoError::BadParameter(format!(
                        "{alg} wrapped keys are at least 16 bytes in multiples of 8 ({} given)",
                        wrapped.len()
                    )));
                }
                kw::unwrap_pad(&self.key, wrapped)
            }
        }
    }

    fn hmac_key(&self, alg: SignatureAlgorithm) -> Result<hmac::Key, CryptoError> {
        let h = match alg {
            SignatureAlgorithm::HS256 => hmac::HMAC_SHA256,
            SignatureAlgorithm::HS384 => hmac::HMAC_SHA384,
            SignatureAlgorithm::HS512 => hmac::HMAC_SHA512,
            _ => {
                return Err(CryptoError::AlgorithmNotSupported(format!(
                    "{alg} needs an RSA or EC key; oct keys sign only with HS256, HS384 or HS512"
                )));
            }
        };
        Ok(hmac::Key::new(h, &self.key))
    }

    /// HS256/384/512: HMAC over `data` (not a digest).
    pub(super) fn sign(
        &self,
        alg: SignatureAlgorithm,
        data: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let key = self.hmac_key(alg)?;
        Ok(hmac::sign(&key, data).as_ref().to_vec())
    }

    pub(super) fn verify(
        &self,
        alg: SignatureAlgorithm,
        data: &[u8],
        mac: &[u8],
    ) -> Result<bool, CryptoError> {
        let key = self.hmac_key(alg)?;
        Ok(hmac::verify(&key, data, mac).is_ok())
    }
}

fn cbc_iv(alg: EncryptionAlgorithm, iv: Option<&[u8]>) -> Result<[u8; BLOCK], CryptoError> {
    match iv {
        Some(iv) => iv.try_into().map_err(|_| {
            CryptoError::BadParameter(format!(
                "the iv is {} bytes but {alg} uses a 16-byte iv; omit iv and the HSM generates one",
                iv.len()
            ))
        }),
        None => {
            let mut out = [0u8; BLOCK];
            fill_random(&mut out)?;
            Ok(out)
        }
    }
}
