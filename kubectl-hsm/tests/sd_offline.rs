//! The offline custodian ceremony, through the built `kubectl-hsm` binary, in temp dirs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keystead_core::sd::{CustodianKey, DomainSecret, ExchangeKey, create_domain_file};

fn hsm(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-hsm"))
        .current_dir(dir)
        .env_remove("KEYSTEAD_POOL")
        .env("KS_TEST_PASS", "bob's passphrase")
        .args(args)
        .output()
        .expect("run kubectl-hsm")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\nstdout: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn listing(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let c = std::fs::read(&p).unwrap_or_default();
            (p, c)
        })
        .collect();
    v.sort();
    v
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Keygen for alice, bob (passphrase from env), carol and dave (not a custodian); a domain
/// file for alice, bob and carol with quorum 2. Returns (temp dir, domain).
fn ceremony() -> (tempfile::TempDir, DomainSecret) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["alice", "carol", "dave"] {
        ok(&hsm(
            d,
            &[
                "sd",
                "keygen",
                "--name",
                name,
                "--out-dir",
                "keys",
                "--bits",
                "2048",
            ],
        ));
    }
    ok(&hsm(
        d,
        &[
            "sd",
            "keygen",
            "--name",
            "bob",
            "--out-dir",
            "keys",
            "--bits",
            "2048",
            "--passphrase-env",
            "KS_TEST_PASS",
        ],
    ));
    let custodians: Vec<CustodianKey> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| {
            let pem = std::fs::read_to_string(d.join(format!("keys/{n}.cer"))).unwrap();
            CustodianKey::from_pem(&pem).unwrap()
        })
        .collect();
    let secret = DomainSecret::generate("pool-a");
    let file = create_domain_file(&secret, &custodians, 2).unwrap();
    std::fs::write(d.join("sd.json"), file).unwrap();
    (dir, secret)
}

#[test]
fn keygen_writes_protected_files_and_refuses_to_overwrite() {
    let (dir, _) = ceremony();
    let d = dir.path();
    let key = std::fs::read_to_string(d.join("keys/bob.key")).unwrap();
    assert!(key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let alice = std::fs::read_to_string(d.join("keys/alice.key")).unwrap();
    assert!(alice.starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    assert_eq!(mode(&d.join("keys/alice.key")), 0o600);
    let before = listing(&d.join("keys"));
    let err = fails(&hsm(
        d,
        &[
            "sd",
            "keygen",
            "--name",
            "alice",
            "--out-dir",
            "keys",
            "--bits",
            "2048",
        ],
    ));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(listing(&d.join("keys")), before);
    let err = fails(&hsm(
        d,
        &["sd", "keygen", "--name", "../x", "--out-dir", "keys"],
    ));
    assert!(err.contains("invalid"), "{err}");
    let out = ok(&hsm(
        d,
        &[
            "-o",
            "json",
            "sd",
            "keygen",
            "--name",
            "erin",
            "--out-dir",
            "keys",
            "--bits",
            "2048",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["bits"], 2048);
    assert_eq!(v["encrypted"], false);
}

#[test]
fn rehearse_reports_quorum_and_names_problems() {
    let (dir, secret) = ceremony();
    let d = dir.path();
    let before = listing(d);
    let out = ok(&hsm(
        d,
        &[
            "sd",
            "rehearse",
            "--domain",
            "sd.json",
            "--key",
            "keys/alice.key",
            "--key",
            "keys/bob.key",
            "--passphrase-env",
            "KS_TEST_PASS",
        ],
    ));
    assert!(out.contains(&secret.fingerprint()), "{out}");
    assert!(out.contains("Quorum reached"), "{out}");
    let out = ok(&hsm(
        d,
        &[
            "-o",
            "json",
            "sd",
            "rehearse",
            "--domain",
            "sd.json",
            "--key",
            "keys/alice.key",
            "--key",
            "keys/carol.key",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["fingerprint"], secret.fingerprint());
    assert_eq!(v["quorum"], 2);
    assert_eq!(v["matched"][0]["key"], "alice.key");

    let err = fails(&hsm(
        d,
        &[
            "sd",
            "rehearse",
            "--domain",
            "sd.json",
            "--key",
            "keys/alice.key",
        ],
    ));
    assert!(err.contains("1 given, 2 needed"), "{err}");
    let err = fails(&hsm(
        d,
        &[
            "sd",
            "rehearse",
            "--domain",
            "sd.json",
            "--key",
            "keys/alice.key",
            "--key",
            "keys/dave.key",
        ],
    ));
    assert!(
        err.contains("dave.key") && err.contains("matches no share"),
        "{err}"
    );
    let err = fails(&hsm(
        d,
        &[
            "sd",
            "rehearse",
            "--domain",
            "sd.json",
            "--key",
            "keys/alice.key",
            "--key",
            "keys/alice.key",
        ],
    ));
    assert!(err.contains("more than once"), "{err}");
    let err = fails(&hsm(
        d,
        &[
            "sd",
            "rehearse",
            "--domain",
            "sd.json",
            "--key",
            "keys/alice.key",
            "--key",
            "keys/bob.key",
        ],
    ));
    assert!(err.contains("passphrase"), "{err}");
    // A tampered file is an integrity error.
    let text = std::fs::read_to_string(d.join("sd.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["origin_pool"] = "evil".into();
    std::fs::write(d.join("tampered.json"), v.to_string()).unwrap();
    let err = fails(&hsm(
        d,
        &[
            "sd",
            "rehearse",
            "--domain",
            "tampered.json",
            "--key",
            "keys/alice.key",
            "--key",
            "keys/carol.key",
        ],
    ));
    assert!(err.contains("integrity"), "{err}");
    std::fs::remove_file(d.join("tampered.json")).unwrap();
    // Rehearsal wrote nothing.
    assert_eq!(listing(d), before);
}

#[test]
fn inspect_shows_the_header() {
    let (dir, secret) = ceremony();
    let d = dir.path();
    let out = ok(&hsm(d, &["sd", "inspect", "--domain", "sd.json"]));
    assert!(
        out.contains(secret.domain_id()) && out.contains(&secret.fingerprint()),
        "{out}"
    );
    assert!(out.contains("2 of 3"), "{out}");
    let out = ok(&hsm(
        d,
        &["-o", "json", "sd", "inspect", "--domain", "sd.json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["shares"].as_array().unwrap().len(), 3);
}

#[test]
fn transfer_blob_builds_offline_and_opens_with_the_exchange_key() {
    let (dir, secret) = ceremony();
    let d = dir.path();
    let xk = ExchangeKey::generate("pool-b").unwrap();
    std::fs::write(
        d.join("transfer-key.json"),
        serde_json::to_string(&xk.transfer_key()).unwrap(),
    )
    .unwrap();
    std::fs::write(d.join("exchange.pem"), xk.certificate_pem()).unwrap();
    let out = ok(&hsm(
        d,
        &[
            "sd",
            "transfer",
            "--domain",
            "sd.json",
            "--key",
            "keys/carol.key",
            "--key",
            "keys/bob.key",
            "--passphrase-env",
            "KS_TEST_PASS",
            "--exchange-key",
            "transfer-key.json",
            "--out",
            "blob.json",
        ],
    ));
    assert!(
        out.contains("pool-b") && out.contains(xk.thumbprint()),
        "{out}"
    );
    #[cfg(unix)]
    assert_eq!(mode(&d.join("blob.json")), 0o600);
    let blob = std::fs::read_to_string(d.join("blob.json")).unwrap();
    let opened = xk.open_transfer_blob(&blob, "pool-b").unwrap();
    assert_eq!(opened.fingerprint(), secret.fingerprint());

    // From the PEM certificate too; never overwrites.
    let err = fails(&hsm(
        d,
        &[
            "sd",
            "transfer",
            "--domain",
            "sd.json",
            "--key",
            "keys/alice.key",
            "--key",
            "keys/carol.key",
            "--exchange-key",
            "exchange.pem",
            "--out",
            "blob.json",
        ],
    ));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(d.join("blob.json")).unwrap(), blob);
    ok(&hsm(
        d,
        &[
            "sd",
            "transfer",
            "--domain",
            "sd.json",
            "--key",
            "keys/alice.key",
            "--key",
            "keys/carol.key",
            "--exchange-key",
            "exchange.pem",
            "--out",
            "blob2.json",
        ],
    ));
    let blob2 = std::fs::read_to_string(d.join("blob2.json")).unwrap();
    assert_eq!(xk.open_transfer_blob(&blob2, "pool-b").unwrap(), secret);
    let out = ok(&hsm(d, &["sd", "inspect", "--blob", "blob2.json"]));
    assert!(out.contains("pool-b"), "{out}");

    // Not enough keys: nothing is written.
    let err = fails(&hsm(
        d,
        &[
            "sd",
            "transfer",
            "--domain",
            "sd.json",
            "--key",
            "keys/alice.key",
            "--exchange-key",
            "exchange.pem",
            "--out",
            "blob3.json",
        ],
    ));
    assert!(err.contains("1 given, 2 needed"), "{err}");
    assert!(!d.join("blob3.json").exists());
}
