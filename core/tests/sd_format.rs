//! The security-domain file: round trips, re-protection, input validation, key formats.

mod sd_common;

use keystead_core::sd::wire::{CertificateInfo, SecurityDomainJsonWebKey};
use keystead_core::sd::{
    CustodianKey, CustodianPrivateKey, DomainSecret, SdError, create_domain_file,
    generate_custodian, inspect_domain_file, recover_domain, rehearse,
};
use sd_common::{custodians, fixtures, privates, publics};

#[test]
fn round_trip_recovers_the_same_domain() {
    let secret = DomainSecret::generate("pool-a");
    let file = create_domain_file(&secret, &publics(&[0, 1, 2]), 2).unwrap();
    let back = recover_domain(&file, &privates(&[2, 0])).unwrap();
    assert_eq!(back, secret);
    assert_eq!(back.fingerprint(), secret.fingerprint());
    assert_eq!(back.metadata().origin_pool, "pool-a");
}

#[test]
fn summary_shows_header_without_keys() {
    let secret = DomainSecret::generate("pool-b");
    let pubs = publics(&[0, 1, 2, 3]);
    let file = create_domain_file(&secret, &pubs, 3).unwrap();
    let s = inspect_domain_file(&file).unwrap();
    assert_eq!(s.domain_id, secret.domain_id());
    assert_eq!(s.fingerprint, secret.fingerprint());
    assert_eq!(s.quorum, 3);
    let tps: Vec<_> = s.shares.iter().map(|x| x.thumbprint.clone()).collect();
    let expected: Vec<_> = pubs.iter().map(|p| p.thumbprint().to_owned()).collect();
    assert_eq!(tps, expected);
    // Nothing secret in the file text.
    assert!(!file.contains(&hex::encode(secret.master_key())));
    assert!(!file.contains(&keystead_core::b64::encode_url(secret.master_key())));
}

#[test]
fn redownload_keeps_the_domain_and_changes_protection() {
    let secret = DomainSecret::generate("pool-c");
    let first = create_domain_file(&secret, &publics(&[0, 1, 2]), 2).unwrap();
    let second = create_domain_file(&secret, &publics(&[5, 6, 7, 8]), 3).unwrap();
    assert_ne!(first, second);
    let a = recover_domain(&first, &privates(&[0, 1])).unwrap();
    let b = recover_domain(&second, &privates(&[6, 7, 8])).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(a, b);
    // Old keys do not open the new file.
    assert_eq!(
        recover_domain(&second, &privates(&[0, 1, 2])).unwrap_err(),
        SdError::KeyMatchesNoShare {
            key: "custodian0.key".into()
        }
    );
    // Same custodians twice: a fresh file key each time.
    let again = create_domain_file(&secret, &publics(&[0, 1, 2]), 2).unwrap();
    assert_ne!(first, again);
}

#[test]
fn custodian_count_and_quorum_limits() {
    let secret = DomainSecret::generate("pool-d");
    for n in [0usize, 1, 2] {
        let idx: Vec<usize> = (0..n).collect();
        assert_eq!(
            create_domain_file(&secret, &publics(&idx), 2).unwrap_err(),
            SdError::CustodianCount { given: n }
        );
    }
    // 11 keys: we have 10 distinct; the count check comes before the duplicate check.
    let mut eleven = publics(&(0..10).collect::<Vec<_>>());
    eleven.push(custodians()[0].public());
    assert_eq!(
        create_domain_file(&secret, &eleven, 2).unwrap_err(),
        SdError::CustodianCount { given: 11 }
    );
    let three = publics(&[0, 1, 2]);
    for q in [0u32, 1, 4, 11] {
        let err = create_domain_file(&secret, &three, q).unwrap_err();
        assert_eq!(err, SdError::InvalidQuorum { quorum: q, n: 3 });
        assert!(err.to_string().contains("at most the number of keys (3)") || q < 2);
    }
    let ten = publics(&(0..10).collect::<Vec<_>>());
    let file = create_domain_file(&secret, &ten, 10).unwrap();
    assert_eq!(
        recover_domain(&file, &privates(&(0..10).collect::<Vec<_>>())).unwrap(),
        secret
    );
}

#[test]
fn duplicate_custodians_are_rejected() {
    let secret = DomainSecret::generate("pool-e");
    let c = &custodians()[0];
    let pubs = vec![c.public(), custodians()[1].public(), c.public()];
    assert!(matches!(
        create_domain_file(&secret, &pubs, 2),
        Err(SdError::DuplicateCustodian { .. })
    ));
    // Same public key given once as a certificate and once as a bare SPKI.
    let spki_pem = pem::encode(&pem::Pem::new(
        "PUBLIC KEY",
        x509_spki(c.public().certificate_der().unwrap()),
    ));
    let pubs = vec![
        c.public(),
        custodians()[1].public(),
        CustodianKey::from_pem(&spki_pem).unwrap(),
    ];
    assert!(matches!(
        create_domain_file(&secret, &pubs, 2),
        Err(SdError::DuplicateCustodian { .. })
    ));
}

fn x509_spki(cert_der: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).unwrap();
    cert.public_key().raw.to_vec()
}

#[test]
fn recovery_errors_are_specific() {
    let secret = DomainSecret::generate("pool-f");
    let file = create_domain_file(&secret, &publics(&[0, 1, 2, 3]), 3).unwrap();
    let err = recover_domain(&file, &privates(&[0])).unwrap_err();
    assert_eq!(
        err,
        SdError::NotEnoughKeys {
            given: 1,
            needed: 3
        }
    );
    assert!(err.to_string().contains("1 given, 3 needed"), "{err}");
    assert_eq!(
        recover_domain(&file, &privates(&[0, 1])).unwrap_err(),
        SdError::NotEnoughKeys {
            given: 2,
            needed: 3
        }
    );
    let err = recover_domain(&file, &privates(&[0, 9, 1])).unwrap_err();
    assert_eq!(
        err,
        SdError::KeyMatchesNoShare {
            key: "custodian9.key".into()
        }
    );
    assert!(err.to_string().contains("custodian9.key"));
    let mut dup = privates(&[0, 1]);
    dup.push(custodians()[0].private().with_label("copy-of-0.key"));
    assert_eq!(
        recover_domain(&file, &dup).unwrap_err(),
        SdError::DuplicateKey {
            key: "copy-of-0.key".into()
        }
    );
    // More keys than the quorum is fine.
    assert_eq!(
        recover_domain(&file, &privates(&[3, 2, 1, 0])).unwrap(),
        secret
    );
}

#[test]
fn rehearsal_reports_without_returning_the_secret() {
    let secret = DomainSecret::generate("pool-g");
    let file = create_domain_file(&secret, &publics(&[0, 1, 2]), 2).unwrap();
    let r = rehearse(&file, &privates(&[1, 2])).unwrap();
    assert_eq!(r.fingerprint, secret.fingerprint());
    assert_eq!(r.domain_id, secret.domain_id());
    assert_eq!((r.quorum, r.shares, r.keys_given), (2, 3, 2));
    let names: Vec<_> = r.matched.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(names, ["custodian1.key", "custodian2.key"]);
    let json = serde_json::to_string(&r).unwrap();
    assert!(!json.contains(&hex::encode(secret.master_key())));
    assert_eq!(
        rehearse(&file, &privates(&[1])).unwrap_err(),
        SdError::NotEnoughKeys {
            given: 1,
            needed: 2
        }
    );
}

#[test]
fn weak_and_non_rsa_keys_are_rejected() {
    assert!(matches!(
        CustodianKey::from_pem(fixtures::OPENSSL_WEAK_1024_CERT),
        Err(SdError::WeakKey { .. })
    ));
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ec".into()])
        .unwrap()
        .self_signed(&ec)
        .unwrap();
    assert!(matches!(
        CustodianKey::from_pem(&cert.pem()),
        Err(SdError::NotRsa { .. })
    ));
    assert!(matches!(
        CustodianKey::from_pem(&ec.public_key_pem()),
        Err(SdError::NotRsa { .. })
    ));
    assert!(matches!(
        CustodianPrivateKey::from_pem(&ec.serialize_pem(), None),
        Err(SdError::NotRsa { .. }) | Err(SdError::Malformed(_))
    ));
    assert!(matches!(
        CustodianKey::from_pem("not pem"),
        Err(SdError::Malformed(_))
    ));
    // A private key where a certificate is expected: a clear hint.
    let err = CustodianKey::from_pem(&custodians()[0].key_pem).unwrap_err();
    assert!(err.to_string().contains("PRIVATE key"), "{err}");
    assert!(matches!(
        CustodianPrivateKey::from_pem(fixtures::OPENSSL_WEAK_1024_PKCS8, None),
        Err(SdError::WeakKey { .. })
    ));
    assert!(matches!(
        generate_custodian("x", 1024, None),
        Err(SdError::WeakKey { .. })
    ));
}

#[test]
fn openssl_key_formats_are_accepted() {
    let plain = CustodianPrivateKey::from_pem(fixtures::OPENSSL_2048_PKCS8, None).unwrap();
    let pkcs1 = CustodianPrivateKey::from_pem(fixtures::OPENSSL_2048_PKCS1, None).unwrap();
    let enc = CustodianPrivateKey::from_pem(
        fixtures::OPENSSL_2048_PKCS8_ENCRYPTED,
        Some("correct-horse"),
    )
    .unwrap();
    let public = CustodianKey::from_pem(fixtures::OPENSSL_2048_SPKI).unwrap();
    for k in [&plain, &pkcs1, &enc] {
        assert_eq!(k.public_key_thumbprint(), public.public_key_thumbprint());
        assert_eq!(k.bits(), 2048);
    }
    // Bare SPKI: thumbprint = SHA-256 of the SPKI DER.
    assert_eq!(public.thumbprint(), public.public_key_thumbprint());
    assert!(matches!(
        CustodianPrivateKey::from_pem(fixtures::OPENSSL_2048_PKCS8_ENCRYPTED, Some("wrong")),
        Err(SdError::Passphrase(_))
    ));
    let err =
        CustodianPrivateKey::from_pem(fixtures::OPENSSL_2048_PKCS8_ENCRYPTED, None).unwrap_err();
    assert!(err.to_string().contains("passphrase"), "{err}");
    // A bare public key can be a custodian, and its private key opens its share.
    let secret = DomainSecret::generate("pool-h");
    let mut pubs = publics(&[0, 1]);
    pubs.push(public);
    let file = create_domain_file(&secret, &pubs, 2).unwrap();
    assert_eq!(
        recover_domain(&file, &[privates(&[0]).remove(0), enc]).unwrap(),
        secret
    );
}

#[test]
fn generated_encrypted_key_round_trips_and_hides_the_key() {
    let (cert, key) = generate_custodian("alice", 2048, Some("s3cret pass")).unwrap();
    assert!(key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let private = CustodianPrivateKey::from_pem(&key, Some("s3cret pass")).unwrap();
    let public = CustodianKey::from_pem(&cert).unwrap();
    assert_eq!(
        private.public_key_thumbprint(),
        public.public_key_thumbprint()
    );
    assert!(matches!(
        CustodianPrivateKey::from_pem(&key, Some("s3cret pasS")),
        Err(SdError::Passphrase(_))
    ));
    let dbg = format!("{private:?}");
    assert!(dbg.contains("redacted"));
    assert!(matches!(
        generate_custodian("alice", 2048, Some("")),
        Err(SdError::Passphrase(_))
    ));
}

#[test]
fn jwk_round_trip_matches_azure_shape() {
    let c = custodians()[0].public();
    let jwk = c.to_jwk().unwrap();
    assert_eq!(jwk.kty, "RSA");
    assert_eq!(jwk.alg.as_deref(), Some("RSA-OAEP-256"));
    assert_eq!(jwk.x5t_s256.as_deref(), Some(c.thumbprint()));
    let text = serde_json::to_string(&CertificateInfo {
        certificates: vec![jwk.clone()],
        required: 2,
    })
    .unwrap();
    assert!(text.contains("\"x5t#S256\""));
    let back: CertificateInfo = serde_json::from_str(&text).unwrap();
    let again = CustodianKey::from_jwk(&back.certificates[0]).unwrap();
    assert_eq!(again.thumbprint(), c.thumbprint());
    // `required` defaults to 2 as in Azure.
    let d: CertificateInfo = serde_json::from_str(r#"{"certificates":[]}"#).unwrap();
    assert_eq!(d.required, 2);
    // Inconsistent JWK fields are rejected.
    let mut bad = jwk.clone();
    bad.x5t_s256 = Some(custodians()[1].public().thumbprint().to_owned());
    assert!(matches!(
        CustodianKey::from_jwk(&bad),
        Err(SdError::Malformed(_))
    ));
    let mut bad = jwk.clone();
    bad.n = custodians()[1].public().to_jwk().unwrap().n;
    assert!(matches!(
        CustodianKey::from_jwk(&bad),
        Err(SdError::Malformed(_))
    ));
    let bad = SecurityDomainJsonWebKey {
        kty: "RSA".into(),
        ..Default::default()
    };
    assert!(matches!(
        CustodianKey::from_jwk(&bad),
        Err(SdError::Malformed(_))
    ));
}

#[test]
fn sealed_bytes_round_trip_and_bind_key_and_purpose() {
    let secret = DomainSecret::generate("pool-i");
    let key = [7u8; 32];
    let sealed = secret.to_sealed_bytes(&key);
    assert_eq!(
        DomainSecret::from_sealed_bytes(&sealed, &key).unwrap(),
        secret
    );
    assert!(matches!(
        DomainSecret::from_sealed_bytes(&sealed, &[8u8; 32]),
        Err(SdError::Integrity(_))
    ));
    let peer = secret.to_sealed_bytes_for(&key, "keystead/v1/peer-transfer");
    assert!(DomainSecret::from_sealed_bytes(&peer, &key).is_err());
    assert_eq!(
        DomainSecret::from_sealed_bytes_for(&peer, &key, "keystead/v1/peer-transfer").unwrap(),
        secret
    );
    for i in 0..sealed.len() {
        let mut t = sealed.clone();
        t[i] ^= 0x01;
        assert!(
            DomainSecret::from_sealed_bytes(&t, &key).is_err(),
            "flip at {i}"
        );
    }
    assert!(DomainSecret::from_sealed_bytes(&sealed[..sealed.len() - 1], &key).is_err());
    assert!(DomainSecret::from_sealed_bytes(&[], &key).is_err());
}

#[test]
fn debug_output_redacts_the_master_key() {
    let secret = DomainSecret::generate("pool-j");
    let dbg = format!("{secret:?}");
    assert!(dbg.contains("redacted"));
    assert!(!dbg.contains(&hex::encode(secret.master_key())));
    assert!(!dbg.contains(&format!("{:?}", secret.master_key())));
    assert_eq!(secret.fingerprint().len(), 64);
    assert_ne!(secret.fingerprint(), hex::encode(secret.master_key()));
}

#[test]
fn unknown_versions_and_foreign_files_are_named() {
    assert!(matches!(
        inspect_domain_file(r#"{"version":"keystead/sd/9"}"#),
        Err(SdError::UnsupportedVersion { .. })
    ));
    let azure = r#"{"EncData":{"data":[],"kdf":"sp108_kdf"},"SharedKeys":{"enc_shares":[],"key_algorithm":"shamir_share","required":2},"version":2}"#;
    assert!(matches!(
        inspect_domain_file(azure),
        Err(SdError::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        inspect_domain_file("{"),
        Err(SdError::Malformed(_))
    ));
}

#[test]
fn download_request_is_validated_before_anything_is_created() {
    use keystead_core::sd::custodians_from_download_request;
    let jwks = |idx: &[usize]| -> Vec<SecurityDomainJsonWebKey> {
        publics(idx).iter().map(|k| k.to_jwk().unwrap()).collect()
    };
    let req = |idx: &[usize], required| CertificateInfo {
        certificates: jwks(idx),
        required,
    };
    let (keys, q) = custodians_from_download_request(&req(&[0, 1, 2], 2)).unwrap();
    assert_eq!((keys.len(), q), (3, 2));
    assert_eq!(
        custodians_from_download_request(&req(&[0, 1], 2)).unwrap_err(),
        SdError::CustodianCount { given: 2 }
    );
    let mut eleven = req(&(0..10).collect::<Vec<_>>(), 2);
    eleven.certificates.push(eleven.certificates[0].clone());
    assert_eq!(
        custodians_from_download_request(&eleven).unwrap_err(),
        SdError::CustodianCount { given: 11 }
    );
    assert_eq!(
        custodians_from_download_request(&req(&[0, 1, 2], 4)).unwrap_err(),
        SdError::InvalidQuorum { quorum: 4, n: 3 }
    );
    assert!(matches!(
        custodians_from_download_request(&req(&[0, 1, 1], 2)),
        Err(SdError::DuplicateCustodian { .. })
    ));
}

#[test]
fn long_metadata_round_trips() {
    let secret = DomainSecret::generate(&"p".repeat(70_000));
    let file = create_domain_file(&secret, &publics(&[0, 1, 2]), 2).unwrap();
    assert_eq!(recover_domain(&file, &privates(&[0, 1])).unwrap(), secret);
    let sealed = secret.to_sealed_bytes(&[1; 32]);
    assert_eq!(
        DomainSecret::from_sealed_bytes(&sealed, &[1; 32]).unwrap(),
        secret
    );
}
