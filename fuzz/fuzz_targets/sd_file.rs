//! The security-domain file (`inspect_domain_file`, `recover_domain` with the fixture
//! custodian keys) and the sealed domain a partition keeps on disk
//! (`DomainSecret::from_sealed_bytes`, inputs starting with `KSS1`). Anything that opens
//! must be the fixture domain: a tampered file never yields another secret.
#![no_main]

use std::sync::OnceLock;

use keystead_core::sd::{self, CustodianPrivateKey, DomainSecret, SdError};
use keystead_fuzz::{CUSTODIANS, SEAL_KEY, fixture};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    keys: Vec<CustodianPrivateKey>,
    fingerprint: String,
}

fn fx() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture {
        keys: (0..CUSTODIANS)
            .map(|i| {
                CustodianPrivateKey::from_pem(&fixture(&format!("custodian{i}.key.pem")), None)
                    .expect("custodian fixture parses")
            })
            .collect(),
        fingerprint: fixture("domain-fingerprint.txt").trim().to_owned(),
    })
}

fn check_error(e: &SdError) {
    // Clean errors: a message, never empty.
    assert!(!e.to_string().is_empty());
}

fuzz_target!(|data: &[u8]| {
    let f = fx();
    if data.starts_with(b"KSS1") {
        match DomainSecret::from_sealed_bytes(data, &SEAL_KEY) {
            Ok(s) => assert_eq!(
                s.fingerprint(),
                f.fingerprint,
                "a forged sealed domain opened"
            ),
            Err(e) => check_error(&e),
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match sd::inspect_domain_file(text) {
        Ok(summary) => {
            assert!(summary.quorum as usize <= summary.shares.len());
            match sd::recover_domain(text, &f.keys[..2]) {
                Ok(s) => {
                    assert_eq!(
                        s.fingerprint(),
                        f.fingerprint,
                        "a forged domain file opened"
                    );
                    assert_eq!(summary.fingerprint, f.fingerprint);
                    assert_eq!(summary.domain_id, s.domain_id());
                }
                Err(e) => check_error(&e),
            }
        }
        Err(e) => {
            check_error(&e);
            // What inspect refuses, recovery refuses too.
            assert!(sd::recover_domain(text, &f.keys[..2]).is_err());
        }
    }
});
