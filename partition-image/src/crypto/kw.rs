//! AES key wrap: RFC 3394 (A*KW, CKM_AES_KEY_WRAP) and RFC 5649 (CKM_AES_KEY_WRAP_PAD).
//!
//! 128- and 256-bit KEKs use aws-lc-rs `key_wrap` directly. aws-lc-rs has no 192-bit KEK, so
//! for those the RFC algorithms run here over aws-lc-rs AES-192 single-block (ECB)
//! operations; the same code is cross-checked against aws-lc-rs for 128/256-bit KEKs and
//! against the RFC vectors in the tests.

use aws_lc_rs::cipher::{self, DecryptingKey, DecryptionContext, EncryptingKey, UnboundCipherKey};
use aws_lc_rs::constant_time;
use aws_lc_rs::key_wrap::{AES_128, AES_256, AesKek, KeyWrap, KeyWrapPadded};
use zeroize::Zeroizing;

use super::CryptoError;

const IV_3394: [u8; 8] = [0xA6; 8];
const AIV_5649: [u8; 4] = [0xA6, 0x59, 0x59, 0xA6];

fn kek(key: &[u8]) -> Option<AesKek> {
    match key.len() {
        16 => AesKek::new(&AES_128, key).ok(),
        32 => AesKek::new(&AES_256, key).ok(),
        _ => None,
    }
}

fn internal() -> CryptoError {
    CryptoError::Internal("AES key wrap failed; retry the request".into())
}

pub(super) fn wrap(key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    match kek(key) {
        Some(k) => {
            let mut out = vec![0u8; plaintext.len() + 8];
            let n = k.wrap(plaintext, &mut out).map_err(|_| internal())?.len();
            out.truncate(n);
            Ok(out)
        }
        None => own_wrap(key, plaintext),
    }
}

pub(super) fn unwrap(key: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    match kek(key) {
        Some(k) => {
            let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
            let n = k
                .unwrap(wrapped, &mut out)
                .map_err(|_| CryptoError::DecryptionFailed)?
                .len();
            out.truncate(n);
            Ok(out)
        }
        None => own_unwrap(key, wrapped),
    }
}

pub(super) fn wrap_pad(key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    match kek(key) {
        Some(k) => {
            let mut out = vec![0u8; plaintext.len() + 16];
            let n = k
                .wrap_with_padding(plaintext, &mut out)
                .map_err(|_| internal())?
                .len();
            out.truncate(n);
            Ok(out)
        }
        None => own_wrap_pad(key, plaintext),
    }
}

pub(super) fn unwrap_pad(key: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    match kek(key) {
        Some(k) => {
            let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
            let n = k
                .unwrap_with_padding(wrapped, &mut out)
                .map_err(|_| CryptoError::DecryptionFailed)?
                .len();
            out.truncate(n);
            Ok(out)
        }
        None => own_unwrap_pad(key, wrapped),
    }
}

fn aes_alg(key: &[u8]) -> Result<&'static cipher::Algorithm, CryptoError> {
    match key.len() {
        16 => Ok(&cipher::AES_128),
        24 => Ok(&cipher::AES_192),
        32 => Ok(&cipher::AES_256),
        _ => Err(internal()),
    }
}

/// One AES block encryption/decryption with aws-lc-rs (ECB of exactly one block).
struct Block {
    enc: EncryptingKey,
    dec: DecryptingKey,
}

impl Block {
    fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let alg = aes_alg(key)?;
        Ok(Block {
            enc: EncryptingKey::ecb(UnboundCipherKey::new(alg, key).map_err(|_| internal())?)
                .map_err(|_| internal())?,
            dec: DecryptingKey::ecb(UnboundCipherKey::new(alg, key).map_err(|_| internal())?)
                .map_err(|_| internal())?,
        })
    }

    fn encrypt(&self, b: &mut [u8; 16]) -> Result<(), CryptoError> {
        self.enc.encrypt(b).map(|_| ()).map_err(|_| internal())
    }

    fn decrypt(&self, b: &mut [u8; 16]) -> Result<(), CryptoError> {
        self.dec
            .decrypt(b, DecryptionContext::None)
            .map(|_| ())
            .map_err(|_| internal())
    }
}

/// RFC 3394 §2.2.1 W with initial value `a` over 64-bit blocks `p` (n >= 2).
fn w(block: &Block, a0: [u8; 8], p: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let n = p.len() / 8;
    let mut a = a0;
    let mut r = Zeroizing::new(p.to_vec());
    let mut b = Zeroizing::new([0u8; 16]);
    for j in 0..6u64 {
        for i in 0..n {
            b[..8].copy_from_slice(&a);
            b[8..].copy_from_slice(&r[i * 8..i * 8 + 8]);
            block.encrypt(&mut b)?;
            let t = (n as u64) * j + (i as u64) + 1;
            for (k, tb) in t.to_be_bytes().iter().enumerate() {
                a[k] = b[k] ^ tb;
            }
            r[i * 8..i * 8 + 8].copy_from_slice(&b[8..]);
        }
    }
    let mut out = Vec::with_capacity(p.len() + 8);
    out.extend_from_slice(&a);
    out.extend_from_slice(&r);
    Ok(out)
}

/// RFC 3394 §2.2.2 W⁻¹: returns the recovered initial value and the plaintext blocks.
fn w_inv(block: &Block, c: &[u8]) -> Result<([u8; 8], Zeroizing<Vec<u8>>), CryptoError> {
    let n = c.len() / 8 - 1;
    let mut a = [0u8; 8];
    a.copy_from_slice(&c[..8]);
    let mut r = Zeroizing::new(c[8..].to_vec());
    let mut b = Zeroizing::new([0u8; 16]);
    for j in (0..6u64).rev() {
        for i in (0..n).rev() {
            let t = (n as u64) * j + (i as u64) + 1;
            for (k, tb) in t.to_be_bytes().iter().enumerate() {
                b[k] = a[k] ^ tb;
            }
            b[8..].copy_from_slice(&r[i * 8..i * 8 + 8]);
            block.decrypt(&mut b)?;
            a.copy_from_slice(&b[..8]);
            r[i * 8..i * 8 + 8].copy_from_slice(&b[8..]);
        }
    }
    Ok((a, r))
}

/// RFC 3394 key wrap; `plaintext` is >= 16 bytes, a multiple of 8.
pub(super) fn own_wrap(key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if plaintext.len() < 16 || !plaintext.len().is_multiple_of(8) {
        return Err(internal());
    }
    w(&Block::new(key)?, IV_3394, plaintext)
}

pub(super) fn own_unwrap(key: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if wrapped.len() < 24 || !wrapped.len().is_multiple_of(8) {
        return Err(CryptoError::DecryptionFailed);
    }
    let (a, r) = w_inv(&Block::new(key)?, wrapped)?;
    constant_time::verify_slices_are_equal(&a, &IV_3394)
        .map_err(|_| CryptoError::DecryptionFailed)?;
    Ok(r)
}

/// RFC 5649 key wrap with padding; `plaintext` is 1..2^32 bytes.
pub(super) fn own_wrap_pad(key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mli = u32::try_from(plaintext.len()).map_err(|_| internal())?;
    if mli == 0 {
        return Err(internal());
    }
    let mut aiv = [0u8; 8];
    aiv[..4].copy_from_slice(&AIV_5649);
    aiv[4..].copy_from_slice(&mli.to_be_bytes());
    let padded_len = plaintext.len().div_ceil(8) * 8;
    let mut p = Zeroizing::new(vec![0u8; padded_len]);
    p[..plaintext.len()].copy_from_slice(plaintext);
    let block = Block::new(key)?;
    if padded_len == 8 {
        let mut b = Zeroizing::new([0u8; 16]);
        b[..8].copy_from_slice(&aiv);
        b[8..].copy_from_slice(&p);
        block.encrypt(&mut b)?;
        return Ok(b.to_vec());
    }
    w(&block, aiv, &p)
}

pub(super) fn own_unwrap_pad(
    key: &[u8],
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
        return Err(CryptoError::DecryptionFailed);
    }
    let block = Block::new(key)?;
    let (a, p) = if wrapped.len() == 16 {
        let mut b = Zeroizing::new([0u8; 16]);
        b.copy_from_slice(wrapped);
        block.decrypt(&mut b)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        (a, Zeroizing::new(b[8..].to_vec()))
    } else {
        w_inv(&block, wrapped)?
    };
    // Accumulate every check before deciding, so that the failure cause is not revealed.
    let mut ok = constant_time::verify_slices_are_equal(&a[..4], &AIV_5649).is_ok();
    let mli = u32::from_be_bytes([a[4], a[5], a[6], a[7]]) as usize;
    let n = p.len();
    ok &= mli > n.saturating_sub(8) && mli <= n;
    let mli = mli.clamp(n.saturating_sub(8), n);
    let zero = [0u8; 8];
    ok &= constant_time::verify_slices_are_equal(&p[mli..], &zero[..n - mli]).is_ok();
    if !ok {
        return Err(CryptoError::DecryptionFailed);
    }
    let mut p = p;
    p.truncate(mli);
    Ok(p)
}
