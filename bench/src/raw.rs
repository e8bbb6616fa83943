//! `keystead-bench raw`: the data plane's operations with aws-lc-rs directly, in process —
//! the ceiling the HTTPS service is compared against. The calls are the ones the partition
//! makes: PKCS#1 v1.5 and ECDSA signatures over an imported SHA-256 digest, RSA-OAEP-256
//! with the public key.

use crate::runner::{Window, run_threads};
use crate::stats::OpResult;
use anyhow::Context;
use aws_lc_rs::digest::{self, Digest};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{
    KeyPair, KeySize, OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PrivateDecryptingKey,
};
use aws_lc_rs::signature::{self, EcdsaKeyPair};
use zeroize::Zeroizing;

pub const SOURCE: &str = "aws-lc-rs";

/// Freshly generated keys for one run (never stored).
pub struct RawKeys {
    rsa: KeyPair,
    ec: EcdsaKeyPair,
    oaep: OaepPublicEncryptingKey,
}

impl RawKeys {
    pub fn generate() -> anyhow::Result<RawKeys> {
        let rsa = KeyPair::generate(KeySize::Rsa2048).context("RSA-2048 key generation failed")?;
        let pkcs8 = Zeroizing::new(
            AsDer::<Pkcs8V1Der<'static>>::as_der(&rsa)
                .context("encoding the RSA key failed")?
                .as_ref()
                .to_vec(),
        );
        let dec = PrivateDecryptingKey::from_pkcs8(&pkcs8)
            .context("the generated RSA key is not usable for OAEP")?;
        let oaep = OaepPublicEncryptingKey::new(dec.public_key())
            .context("the generated RSA public key is not usable for OAEP")?;
        let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .context("P-256 key generation failed")?;
        Ok(RawKeys { rsa, ec, oaep })
    }

    /// RS256 over a SHA-256 digest, as the partition does for `POST .../sign`.
    pub fn rs256_sign(&self, digest32: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
        let d = Digest::import_less_safe(digest32, &digest::SHA256)
            .context("a SHA-256 digest is 32 bytes")?;
        let mut sig = vec![0u8; self.rsa.public_modulus_len()];
        self.rsa
            .sign_digest(&signature::RSA_PKCS1_SHA256, &d, &mut sig)
            .context("RS256 signing failed")?;
        Ok(sig)
    }

    /// ES256 over a SHA-256 digest (fixed-size `r || s`).
    pub fn es256_sign(&self, digest32: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
        let d = Digest::import_less_safe(digest32, &digest::SHA256)
            .context("a SHA-256 digest is 32 bytes")?;
        let sig = self.ec.sign_digest(&d).context("ES256 signing failed")?;
        Ok(sig.as_ref().to_vec())
    }

    /// RSA-OAEP-256 of a short value (a 32-byte key for wrap, a short secret for encrypt).
    pub fn oaep256_encrypt(&self, plaintext: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = vec![0u8; self.oaep.ciphertext_size()];
        let n = self
            .oaep
            .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, None)
            .context("RSA-OAEP-256 encryption failed")?
            .len();
        out.truncate(n);
        Ok(out)
    }

    fn rsa_public_der(&self) -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair as _;
        self.rsa.public_key().as_ref().to_vec()
    }

    fn ec_public(&self) -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair as _;
        self.ec.public_key().as_ref().to_vec()
    }
}

/// The operations measured by `raw`, in report order.
pub const OPS: [&str; 3] = ["rs256-sign", "es256-sign", "rsa-oaep-256-encrypt"];

/// Check once that each operation gives a verifiable result before timing it.
pub fn self_check(keys: &RawKeys) -> anyhow::Result<()> {
    let msg = b"keystead bench self-check";
    let d = digest::digest(&digest::SHA256, msg);
    let d32: [u8; 32] = d.as_ref().try_into().context("SHA-256 is 32 bytes")?;
    let sig = keys.rs256_sign(&d32)?;
    signature::UnparsedPublicKey::new(
        &signature::RSA_PKCS1_2048_8192_SHA256,
        keys.rsa_public_der(),
    )
    .verify(msg, &sig)
    .ok()
    .context("the RS256 self-check signature does not verify")?;
    let sig = keys.es256_sign(&d32)?;
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, keys.ec_public())
        .verify(msg, &sig)
        .ok()
        .context("the ES256 self-check signature does not verify")?;
    let ct = keys.oaep256_encrypt(&[7u8; 32])?;
    anyhow::ensure!(ct.len() == 256, "RSA-OAEP-256 output is not 256 bytes");
    Ok(())
}

/// Run every operation with each thread count.
pub fn run(thread_counts: &[usize], window: Window) -> anyhow::Result<Vec<OpResult>> {
    let keys = RawKeys::generate()?;
    self_check(&keys)?;
    let digest32 = {
        let d = digest::digest(&digest::SHA256, b"keystead benchmark payload");
        <[u8; 32]>::try_from(d.as_ref()).context("SHA-256 is 32 bytes")?
    };
    let secret = [0x42u8; 32];
    let mut out = Vec::new();
    for &threads in thread_counts {
        for op in OPS {
            let r = run_threads(
                SOURCE,
                op,
                threads,
                window,
                |_| Ok(()),
                |_| match op {
                    "rs256-sign" => keys.rs256_sign(&digest32).map(drop),
                    "es256-sign" => keys.es256_sign(&digest32).map(drop),
                    _ => keys.oaep256_encrypt(&secret).map(drop),
                },
            )?;
            println!("{}", r.line());
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn operations_verify() {
        let keys = RawKeys::generate().unwrap();
        self_check(&keys).unwrap();
    }

    #[test]
    fn a_short_run_measures_every_operation() {
        let w = Window {
            warmup: Duration::from_millis(5),
            measure: Duration::from_millis(100),
        };
        let r = run(&[1], w).unwrap();
        assert_eq!(r.len(), OPS.len());
        for row in &r {
            assert_eq!(row.errors, 0, "{row:?}");
            assert!(row.ops > 0, "{row:?}");
            assert!(row.p50_ms > 0.0 && row.p99_ms >= row.p50_ms, "{row:?}");
        }
    }
}
