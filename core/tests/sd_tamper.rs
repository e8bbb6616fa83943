//! Tamper tests: flipping any byte of a domain file or a transfer blob is detected, and
//! edits of each region give an integrity error.

mod sd_common;

use keystead_core::sd::{
    DomainSecret, ExchangeKey, SdError, build_transfer_blob, create_domain_file, recover_domain,
};
use sd_common::{privates, publics};

fn flip(text: &str, i: usize) -> String {
    let mut b = text.as_bytes().to_vec();
    b[i] ^= 0x01;
    String::from_utf8(b).expect("ASCII stays ASCII")
}

#[test]
fn every_byte_of_the_domain_file_is_protected() {
    let secret = DomainSecret::generate("tamper-pool");
    let file = create_domain_file(&secret, &publics(&[0, 1, 2]), 2).unwrap();
    let keys = privates(&[0, 1, 2]);
    assert_eq!(recover_domain(&file, &keys).unwrap(), secret);
    for i in 0..file.len() {
        let t = flip(&file, i);
        let r = recover_domain(&t, &keys);
        assert!(
            r.is_err(),
            "flip at byte {i} ({:?}) was not detected",
            &file[i..i + 1]
        );
    }
}

type Edit = Box<dyn Fn(&mut serde_json::Value)>;

fn edit(file: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(file).unwrap();
    f(&mut v);
    v.to_string()
}

fn flip_b64(v: &mut serde_json::Value) {
    let s = v.as_str().unwrap().to_owned();
    let mid = s.len() / 2;
    let c = s.as_bytes()[mid];
    let r = if c == b'A' { 'B' } else { 'A' };
    *v = format!("{}{}{}", &s[..mid], r, &s[mid + 1..]).into();
}

#[test]
fn each_region_of_the_domain_file_gives_an_integrity_error() {
    let secret = DomainSecret::generate("tamper-pool");
    let file = create_domain_file(&secret, &publics(&[0, 1, 2]), 2).unwrap();
    let keys = privates(&[0, 1]);
    let cases: Vec<(&str, Edit)> = vec![
        (
            "domain_id",
            Box::new(|v| v["domain_id"] = uuid_like().into()),
        ),
        ("fingerprint", Box::new(|v| flip_b64(&mut v["fingerprint"]))),
        (
            "origin_pool",
            Box::new(|v| v["origin_pool"] = "evil".into()),
        ),
        ("created", Box::new(|v| v["created"] = 1.into())),
        ("nonce", Box::new(|v| flip_b64(&mut v["nonce"]))),
        ("ciphertext", Box::new(|v| flip_b64(&mut v["ciphertext"]))),
        (
            "share 0",
            Box::new(|v| flip_b64(&mut v["shares"][0]["enc_share"])),
        ),
        (
            "unused share 2",
            Box::new(|v| flip_b64(&mut v["shares"][2]["enc_share"])),
        ),
        (
            "x5t_256",
            Box::new(|v| flip_b64(&mut v["shares"][2]["x5t_256"])),
        ),
        (
            "swap shares",
            Box::new(|v| {
                let a = v["shares"][0]["enc_share"].clone();
                v["shares"][0]["enc_share"] = v["shares"][1]["enc_share"].clone();
                v["shares"][1]["enc_share"] = a;
            }),
        ),
        ("enc", Box::new(|v| v["enc"] = "A128GCM".into())),
        (
            "alg",
            Box::new(|v| v["shares"][1]["alg"] = "RSA-OAEP".into()),
        ),
        ("extra field", Box::new(|v| v["extra"] = 1.into())),
        (
            "truncated",
            Box::new(|v| {
                let s = v["ciphertext"].as_str().unwrap().to_owned();
                v["ciphertext"] = s[..s.len() - 4].to_owned().into();
            }),
        ),
    ];
    for (name, f) in cases {
        let t = edit(&file, f);
        let err = recover_domain(&t, &keys).unwrap_err();
        assert!(matches!(err, SdError::Integrity(_)), "{name}: {err:?}");
        assert!(
            err.to_string().contains("integrity check failed"),
            "{name}: {err}"
        );
    }
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".to_owned()
}

#[test]
fn every_byte_of_the_transfer_blob_is_protected() {
    let secret = DomainSecret::generate("origin");
    let file = create_domain_file(&secret, &publics(&[0, 1, 2]), 2).unwrap();
    let xk = ExchangeKey::generate("target-pool").unwrap();
    let blob = build_transfer_blob(&file, &privates(&[0, 2]), &xk.certificate()).unwrap();
    assert_eq!(xk.open_transfer_blob(&blob, "target-pool").unwrap(), secret);
    for i in 0..blob.len() {
        let t = flip(&blob, i);
        assert!(
            xk.open_transfer_blob(&t, "target-pool").is_err(),
            "flip at byte {i} was not detected"
        );
    }
    for field in ["wrapped_key", "nonce", "ciphertext", "fingerprint"] {
        let t = edit(&blob, |v| flip_b64(&mut v[field]));
        let err = xk.open_transfer_blob(&t, "target-pool").unwrap_err();
        assert!(matches!(err, SdError::Integrity(_)), "{field}: {err:?}");
    }
    let t = edit(&blob, |v| v["domain_id"] = uuid_like().into());
    assert!(matches!(
        xk.open_transfer_blob(&t, "target-pool"),
        Err(SdError::Integrity(_))
    ));
}

#[test]
fn every_byte_of_a_sealed_domain_is_protected() {
    let secret = DomainSecret::generate("sealed-pool");
    let key = [9u8; 32];
    let sealed = secret.to_sealed_bytes(&key);
    assert_eq!(
        DomainSecret::from_sealed_bytes(&sealed, &key).unwrap(),
        secret
    );
    for i in 0..sealed.len() {
        for x in [0x01u8, 0x80, 0xff] {
            let mut t = sealed.clone();
            t[i] ^= x;
            assert!(
                DomainSecret::from_sealed_bytes(&t, &key).is_err(),
                "flip {x:#x} at byte {i} was not detected"
            );
        }
    }
    for n in 0..sealed.len() {
        assert!(DomainSecret::from_sealed_bytes(&sealed[..n], &key).is_err());
    }
    assert!(DomainSecret::from_sealed_bytes_for(&sealed, &key, "another purpose").is_err());
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    struct Fixture {
        secret: DomainSecret,
        file: String,
        xk: ExchangeKey,
        blob: String,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let secret = DomainSecret::generate("prop-tamper");
            let file = create_domain_file(&secret, &publics(&[0, 1, 2]), 2).unwrap();
            let xk = ExchangeKey::generate("prop-target").unwrap();
            let blob = build_transfer_blob(&file, &privates(&[0, 1]), &xk.certificate()).unwrap();
            Fixture {
                secret,
                file,
                xk,
                blob,
            }
        })
    }

    /// Apply XOR edits; `None` when the result is not text (the APIs take strings).
    fn edit_bytes(text: &str, edits: &[(usize, u8)]) -> Option<String> {
        let mut b = text.as_bytes().to_vec();
        for (i, x) in edits {
            let i = i % b.len();
            b[i] ^= x;
        }
        String::from_utf8(b).ok()
    }

    fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
        prop::collection::vec((any::<usize>(), 1u8..=255), 1..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any edit of a domain file is rejected with an error, or (an edit that only
        /// changes the JSON layout) opens the very same domain: never another one.
        #[test]
        fn tampered_domain_files_never_open_to_another_domain(edits in edits()) {
            let f = fixture();
            if let Some(t) = edit_bytes(&f.file, &edits)
                && let Ok(s) = recover_domain(&t, &privates(&[0, 1]))
            {
                prop_assert!(s == f.secret);
            }
        }

        #[test]
        fn tampered_transfer_blobs_never_open_to_another_domain(edits in edits()) {
            let f = fixture();
            if let Some(t) = edit_bytes(&f.blob, &edits) {
                if let Ok(s) = f.xk.open_transfer_blob(&t, "prop-target") {
                    prop_assert!(s == f.secret);
                }
                // The upload body wraps the blob: the same verdict.
                let body = serde_json::json!({"value": t}).to_string();
                let o: keystead_core::sd::wire::SecurityDomainObject =
                    serde_json::from_str(&body).unwrap();
                prop_assert_eq!(
                    f.xk.open_transfer_blob(&o.value, "prop-target").is_ok(),
                    f.xk.open_transfer_blob(&t, "prop-target").is_ok()
                );
            }
        }

        #[test]
        fn tampered_sealed_domains_are_rejected(edits in edits(), purpose in "[a-z]{0,8}") {
            let f = fixture();
            let key = [3u8; 32];
            let sealed = f.secret.to_sealed_bytes_for(&key, &purpose);
            let mut t = sealed.clone();
            for (i, x) in &edits {
                let i = i % t.len();
                t[i] ^= x;
            }
            prop_assert!(DomainSecret::from_sealed_bytes_for(&t, &key, &purpose).is_err());
        }
    }
}
