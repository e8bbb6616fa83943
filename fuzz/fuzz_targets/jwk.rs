//! JWK parsing. Mode byte: 0 a JWKS (the token validator's parser, then
//! `DecodingKey::from_jwk` for each key); 1 a Key Vault `JsonWebKey` (key import), round
//! trip; 2 a security-domain download request (custodian certificates as JWKs);
//! 3 an exchange key as custodians receive it (transfer-key JSON or PEM); 4 a custodian
//! certificate or public key (PEM); 5 a custodian private key (PEM: PKCS#8, encrypted
//! PKCS#8, PKCS#1), as `kubectl hsm sd` reads them.
#![no_main]

use keystead_core::keys::JsonWebKey;
use keystead_core::sd::{self, ExchangeCertificate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 6 {
        0 => {
            if let Ok(keys) = keystead_partition::fuzzing::parse_jwks(body) {
                assert!(!keys.is_empty(), "an empty key set was accepted");
                for k in &keys {
                    let _ = jsonwebtoken::DecodingKey::from_jwk(k);
                }
            }
        }
        1 => {
            if let Ok(k) = serde_json::from_slice::<JsonWebKey>(body) {
                let text = serde_json::to_vec(&k).expect("a parsed JWK serializes");
                let back: JsonWebKey = serde_json::from_slice(&text).expect("round trip parses");
                assert_eq!(back, k, "JWK round trip changed the key");
                let _ = k.has_private_material();
                let _ = format!("{k:?}");
            }
        }
        2 => {
            if let Ok(req) = serde_json::from_slice::<sd::wire::CertificateInfo>(body)
                && let Ok((keys, quorum)) = sd::custodians_from_download_request(&req)
            {
                assert_eq!(keys.len(), req.certificates.len());
                assert!(sd::validate_custodians(&keys, quorum).is_ok());
                for k in &keys {
                    let jwk = k.to_jwk().expect("an accepted custodian key has a JWK");
                    let again = sd::CustodianKey::from_jwk(&jwk).expect("its JWK parses");
                    assert_eq!(again.public_key_thumbprint(), k.public_key_thumbprint());
                }
            }
        }
        4 => {
            if let Ok(text) = std::str::from_utf8(body)
                && let Ok(k) = sd::CustodianKey::from_pem(text)
            {
                assert!(k.bits() >= sd::MIN_RSA_BITS);
                let again = sd::CustodianKey::from_jwk(&k.to_jwk().expect("JWK"))
                    .expect("an accepted custodian key's JWK parses");
                assert_eq!(again.public_key_thumbprint(), k.public_key_thumbprint());
            }
        }
        5 => {
            if let Ok(text) = std::str::from_utf8(body) {
                for pass in [None, Some("fuzz")] {
                    if let Ok(k) = sd::CustodianPrivateKey::from_pem(text, pass) {
                        assert!(k.bits() >= sd::MIN_RSA_BITS);
                        assert!(!k.public_key_thumbprint().is_empty());
                    }
                }
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(body)
                && let Ok(cert) = ExchangeCertificate::parse(text)
            {
                assert!(!cert.pool_id().is_empty());
                let again = ExchangeCertificate::from_der(cert.certificate_der())
                    .expect("an accepted exchange certificate re-parses");
                assert_eq!(again.thumbprint(), cert.thumbprint());
            }
        }
    }
});
