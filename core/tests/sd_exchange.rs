//! The upload path: exchange key, transfer blob, binding to exchange key and pool.

mod sd_common;

use keystead_core::sd::wire::TransferKey;
use keystead_core::sd::{
    DomainSecret, ExchangeCertificate, ExchangeKey, SdError, build_transfer_blob,
    create_domain_file, inspect_transfer_blob, recover_domain, seal_to_exchange_key,
};
use sd_common::{privates, publics};

#[test]
fn download_transfer_upload_round_trip_keeps_the_fingerprint() {
    let secret = DomainSecret::generate("pool-1");
    let file = create_domain_file(&secret, &publics(&[0, 1, 2, 3]), 3).unwrap();
    let xk = ExchangeKey::generate("pool-2").unwrap();
    // Custodians receive the transfer key over the API, as JSON text.
    let tk_json = serde_json::to_string(&xk.transfer_key()).unwrap();
    let cert = ExchangeCertificate::from_transfer_key_json(&tk_json).unwrap();
    assert_eq!(cert.thumbprint(), xk.thumbprint());
    assert_eq!(cert.pool_id(), "pool-2");
    let blob = build_transfer_blob(&file, &privates(&[3, 1, 0]), &cert).unwrap();
    let summary = inspect_transfer_blob(&blob).unwrap();
    assert_eq!(summary.fingerprint, secret.fingerprint());
    assert_eq!(summary.pool_id, "pool-2");
    let opened = xk.open_transfer_blob(&blob, "pool-2").unwrap();
    assert_eq!(opened.fingerprint(), secret.fingerprint());
    assert_eq!(opened, secret);
    assert!(!blob.contains(&hex::encode(secret.master_key())));
}

#[test]
fn exchange_certificate_parses_from_pem_jwk_and_envelope() {
    let xk = ExchangeKey::generate("ns/pool-3").unwrap();
    let from_pem = ExchangeCertificate::from_pem(&xk.certificate_pem()).unwrap();
    let from_jwk =
        ExchangeCertificate::from_transfer_key_json(&xk.transfer_key_jwk_json()).unwrap();
    let from_any = ExchangeCertificate::parse(&xk.transfer_key_jwk_json()).unwrap();
    for c in [&from_pem, &from_jwk, &from_any] {
        assert_eq!(c.thumbprint(), xk.thumbprint());
        assert_eq!(c.pool_id(), "ns/pool-3");
    }
    // The JWK is the Azure transfer-key shape: x5c (standard base64), x5t#S256, n, e.
    let jwk: serde_json::Value = serde_json::from_str(&xk.transfer_key_jwk_json()).unwrap();
    assert_eq!(jwk["kty"], "RSA");
    assert!(jwk["x5c"][0].as_str().unwrap().len() > 100);
    assert_eq!(jwk["x5t#S256"], xk.thumbprint());
    let tk: TransferKey = serde_json::from_value(serde_json::json!({
        "key_format": "jwk", "transfer_key": xk.transfer_key_jwk_json()
    }))
    .unwrap();
    assert_eq!(tk.key_format, "jwk");
    assert!(format!("{xk:?}").contains("redacted"));
    // A custodian certificate is not an exchange certificate (it names no pool).
    let err = ExchangeCertificate::from_pem(&sd_common::custodians()[0].cert_pem).unwrap_err();
    assert!(err.to_string().contains("names no pool"), "{err}");
    assert!(ExchangeKey::generate("bad pool id").is_err());
    assert!(ExchangeKey::generate("").is_err());
}

#[test]
fn blob_for_another_exchange_key_or_pool_is_rejected() {
    let secret = DomainSecret::generate("pool-1");
    let file = create_domain_file(&secret, &publics(&[0, 1, 2]), 2).unwrap();
    let first = ExchangeKey::generate("pool-4").unwrap();
    let second = ExchangeKey::generate("pool-4").unwrap();
    let other_pool = ExchangeKey::generate("pool-5").unwrap();
    let blob = build_transfer_blob(&file, &privates(&[0, 1]), &first.certificate()).unwrap();
    assert!(matches!(
        second.open_transfer_blob(&blob, "pool-4"),
        Err(SdError::WrongExchangeKey { .. })
    ));
    assert!(matches!(
        other_pool.open_transfer_blob(&blob, "pool-5"),
        Err(SdError::WrongExchangeKey { .. })
    ));
    let err = first.open_transfer_blob(&blob, "pool-5").unwrap_err();
    assert!(matches!(err, SdError::WrongPool { .. }), "{err:?}");
    // Rewriting the blob's header to name the other key or pool is detected.
    let mut v: serde_json::Value = serde_json::from_str(&blob).unwrap();
    v["exchange_x5t_256"] = second.thumbprint().into();
    assert!(matches!(
        second.open_transfer_blob(&v.to_string(), "pool-4"),
        Err(SdError::Integrity(_))
    ));
    let mut v: serde_json::Value = serde_json::from_str(&blob).unwrap();
    v["pool_id"] = "pool-9".into();
    assert!(matches!(
        first.open_transfer_blob(&v.to_string(), "pool-4"),
        Err(SdError::WrongPool { .. })
    ));
    assert_eq!(first.open_transfer_blob(&blob, "pool-4").unwrap(), secret);
}

#[test]
fn transfer_needs_the_quorum() {
    let secret = DomainSecret::generate("pool-1");
    let file = create_domain_file(&secret, &publics(&[0, 1, 2]), 3).unwrap();
    let xk = ExchangeKey::generate("pool-6").unwrap();
    assert_eq!(
        build_transfer_blob(&file, &privates(&[0, 1]), &xk.certificate()).unwrap_err(),
        SdError::NotEnoughKeys {
            given: 2,
            needed: 3
        }
    );
    // Pool-to-pool transfer from a live secret.
    let blob = seal_to_exchange_key(&secret, &xk.certificate()).unwrap();
    assert_eq!(xk.open_transfer_blob(&blob, "pool-6").unwrap(), secret);
    assert_eq!(
        recover_domain(&file, &privates(&[0, 1, 2])).unwrap(),
        secret
    );
}
