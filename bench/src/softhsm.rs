//! `keystead-bench softhsm`: the same operations through PKCS#11 on SoftHSM2 (Debian
//! `softhsm2`), the usual software HSM baseline. A throwaway token is initialised in a
//! temporary directory (`SOFTHSM2_CONF` points at it); each thread has its own session.

use crate::runner::{Window, run_threads};
use crate::stats::OpResult;
use anyhow::Context;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use std::path::{Path, PathBuf};

pub const SOURCE: &str = "softhsm2";
/// Where Debian's `softhsm2` package puts the module.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The environment variable SoftHSM2 reads its configuration path from.
pub const CONF_ENV: &str = "SOFTHSM2_CONF";

/// DER prefix of a SHA-256 DigestInfo: `CKM_RSA_PKCS` over `prefix || digest` is RS256
/// over a digest, which is what Key Vault's sign operation does.
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
/// DER OID of prime256v1 (secp256r1), the `CKA_EC_PARAMS` of a P-256 key.
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The operations measured by `softhsm`, in report order (names match `raw` and `load`).
pub const OPS: [&str; 3] = ["rs256-sign", "es256-sign", "rsa-oaep-256-encrypt"];

/// Write a SoftHSM2 configuration with its token directory under `dir`; returns its path.
pub fn write_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens)
        .with_context(|| format!("cannot create {}", tokens.display()))?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .with_context(|| format!("cannot write {}", conf.display()))?;
    Ok(conf)
}

struct Token {
    pkcs11: Pkcs11,
    slot: cryptoki::slot::Slot,
    rsa_priv: ObjectHandle,
    rsa_pub: ObjectHandle,
    ec_priv: ObjectHandle,
    ec_pub: ObjectHandle,
}

/// The token and the logged-in session that must stay open for the whole run: PKCS#11
/// login state is per application, so the threads' sessions are logged in while it is.
fn open_token(module: &Path) -> anyhow::Result<(Token, Session)> {
    anyhow::ensure!(
        std::env::var_os(CONF_ENV).is_some(),
        "{CONF_ENV} is not set; run `keystead-bench softhsm` without it and it makes a temporary token"
    );
    let pkcs11 = Pkcs11::new(module).with_context(|| {
        format!(
            "cannot load the PKCS#11 module {} (install Debian's softhsm2: apt-get install softhsm2)",
            module.display()
        )
    })?;
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .context("C_Initialize failed")?;
    let slot = pkcs11
        .get_slots_with_token()
        .context("C_GetSlotList failed")?
        .into_iter()
        .next()
        .context("SoftHSM2 offers no slot; check the token directory in SOFTHSM2_CONF")?;
    // Throwaway PINs for a throwaway token in a temporary directory.
    let so_pin = AuthPin::new("bench-so-pin".into());
    let user_pin = AuthPin::new("bench-user-pin".into());
    pkcs11
        .init_token(slot, &so_pin, "keystead-bench")
        .context("C_InitToken failed")?;
    {
        let so = pkcs11
            .open_rw_session(slot)
            .context("C_OpenSession failed")?;
        so.login(UserType::So, Some(&so_pin))
            .context("SO login failed")?;
        so.init_pin(&user_pin).context("C_InitPIN failed")?;
    }
    let session = pkcs11
        .open_rw_session(slot)
        .context("C_OpenSession failed")?;
    session
        .login(UserType::User, Some(&user_pin))
        .context("user login failed")?;
    let (rsa_pub, rsa_priv) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                Attribute::ModulusBits(2048.into()),
                Attribute::Verify(true),
                Attribute::Encrypt(true),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
                Attribute::Decrypt(true),
            ],
        )
        .context("RSA-2048 key generation in SoftHSM2 failed")?;
    let (ec_pub, ec_priv) = session
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256_OID.to_vec()),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
            ],
        )
        .context("P-256 key generation in SoftHSM2 failed")?;
    let token = Token {
        pkcs11,
        slot,
        rsa_priv,
        rsa_pub,
        ec_priv,
        ec_pub,
    };
    Ok((token, session))
}

/// RSA-OAEP with SHA-256 (hash and MGF1), or with SHA-1 when `sha1` — SoftHSM2 2.6.1
/// refuses any OAEP hash but SHA-1 (CKR_ARGUMENTS_BAD). The cost of OAEP encryption is the
/// public-key exponentiation; the hash of a 32-byte value does not change it measurably.
fn oaep(sha1: bool) -> Mechanism<'static> {
    let (hash, mgf) = if sha1 {
        (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1)
    } else {
        (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256)
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
}

fn rs256_input(digest32: &[u8; 32]) -> Vec<u8> {
    let mut v = SHA256_DIGEST_INFO.to_vec();
    v.extend_from_slice(digest32);
    v
}

fn do_op(
    t: &Token,
    s: &Session,
    op: &str,
    digest32: &[u8; 32],
    oaep_sha1: bool,
) -> anyhow::Result<Vec<u8>> {
    Ok(match op {
        "rs256-sign" => s
            .sign(&Mechanism::RsaPkcs, t.rsa_priv, &rs256_input(digest32))
            .context("C_Sign (CKM_RSA_PKCS) failed")?,
        "es256-sign" => s
            .sign(&Mechanism::Ecdsa, t.ec_priv, digest32)
            .context("C_Sign (CKM_ECDSA) failed")?,
        "rsa-oaep-256-encrypt" => s
            .encrypt(&oaep(oaep_sha1), t.rsa_pub, &[0x42u8; 32])
            .context("C_Encrypt (CKM_RSA_PKCS_OAEP) failed")?,
        other => anyhow::bail!("unknown operation {other}"),
    })
}

/// Initialise the token (needs `SOFTHSM2_CONF`), check each operation once, then measure.
pub fn run(
    module: &Path,
    thread_counts: &[usize],
    window: Window,
) -> anyhow::Result<Vec<OpResult>> {
    let (t, _login) = open_token(module)?;
    let digest32 = [0x5au8; 32];
    let mut oaep_sha1 = false;
    {
        let s = t.pkcs11.open_ro_session(t.slot)?;
        let sig = do_op(&t, &s, "rs256-sign", &digest32, false)?;
        s.verify(
            &Mechanism::RsaPkcs,
            t.rsa_pub,
            &rs256_input(&digest32),
            &sig,
        )
        .context("the SoftHSM2 RS256 self-check signature does not verify")?;
        let sig = do_op(&t, &s, "es256-sign", &digest32, false)?;
        s.verify(&Mechanism::Ecdsa, t.ec_pub, &digest32, &sig)
            .context("the SoftHSM2 ES256 self-check signature does not verify")?;
        let ct = match do_op(&t, &s, "rsa-oaep-256-encrypt", &digest32, false) {
            Ok(ct) => ct,
            Err(e) => {
                eprintln!(
                    "SoftHSM2 refused RSA-OAEP with SHA-256 ({e:#}); measuring RSA-OAEP with SHA-1"
                );
                oaep_sha1 = true;
                do_op(&t, &s, "rsa-oaep-256-encrypt", &digest32, true)?
            }
        };
        anyhow::ensure!(ct.len() == 256, "RSA-OAEP output is not 256 bytes");
    }
    let mut out = Vec::new();
    for &threads in thread_counts {
        for op in OPS {
            let r = run_threads(
                SOURCE,
                op,
                threads,
                window,
                |_| {
                    t.pkcs11
                        .open_ro_session(t.slot)
                        .context("C_OpenSession failed")
                },
                |s| do_op(&t, s, op, &digest32, oaep_sha1).map(drop),
            )?;
            let mut r = r;
            if op == "rsa-oaep-256-encrypt" && oaep_sha1 {
                r.label = Some("OAEP with SHA-1 (SoftHSM2 2.6.1 has no SHA-256 OAEP)".into());
            }
            println!("{}", r.line());
            out.push(r);
        }
    }
    Ok(out)
}
