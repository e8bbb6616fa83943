//! Token validation against a local issuer (static JWKS and JWKS file): valid tokens and
//! every rejection, each with its specific error.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keystead_core::b64;
use keystead_partition::auth::*;
use serde_json::{Value, json};

const ISS: &str = "https://issuer.keystead.test";
const AUD: &str = "https://hsm.keystead.test";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn validator_for(issuer: &LocalIssuer) -> TokenValidator {
    TokenValidator::new(AuthConfig {
        audience: AUD.into(),
        issuers: vec![issuer.issuer_config()],
        leeway_secs: 30,
    })
}

fn claims(sub: &str) -> Value {
    let n = now();
    json!({"iss": ISS, "sub": sub, "aud": AUD, "iat": n, "nbf": n, "exp": n + 600})
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    c[key] = v;
    c
}

/// Checks the error and that its message never echoes the token or its signature.
fn assert_rejected(err: &AuthError, token: &str) {
    let msg = err.to_string();
    assert!(!msg.contains(token), "{msg}");
    if let Some(sig) = token.rsplit('.').next().filter(|s| s.len() > 8) {
        assert!(!msg.contains(sig), "{msg}");
    }
    assert!(matches!(err.status(), 401 | 503));
}

#[tokio::test]
async fn local_issuer_tokens_validate() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = LocalIssuer::load_or_create(dir.path(), &format!("{ISS}/")).unwrap();
    assert_eq!(issuer.issuer(), ISS);
    let v = validator_for(&issuer);
    let token = issuer
        .issue("alice", AUD, Duration::from_secs(300))
        .unwrap();
    let p = v.validate(&token).await.unwrap();
    assert_eq!(p.subject, "alice");
    assert_eq!(p.issuer, ISS);
    assert!(p.expires_at >= now() + 290 && p.expires_at <= now() + 301);
    // Claims of issued tokens.
    let payload: Value =
        serde_json::from_slice(&b64::decode_url(token.split('.').nth(1).unwrap()).unwrap())
            .unwrap();
    for c in [
        "iss", "sub", "aud", "iat", "nbf", "exp", "oid", "tid", "jti",
    ] {
        assert!(payload.get(c).is_some(), "claim {c} missing");
    }
    let header: Value =
        serde_json::from_slice(&b64::decode_url(token.split('.').next().unwrap()).unwrap())
            .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], issuer.kid());
    assert!(
        issuer
            .issue("alice", AUD, Duration::from_millis(10))
            .is_err()
    );
}

#[tokio::test]
async fn oid_is_the_principal_when_present() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = LocalIssuer::load_or_create(dir.path(), ISS).unwrap();
    let v = validator_for(&issuer);
    let token = issuer
        .sign_claims(&with(claims("app-sub"), "oid", json!("object-id-1")))
        .unwrap();
    assert_eq!(v.validate(&token).await.unwrap().subject, "object-id-1");
    // Audience as an array is fine.
    let token = issuer
        .sign_claims(&with(claims("s"), "aud", json!(["other", AUD])))
        .unwrap();
    assert_eq!(v.validate(&token).await.unwrap().subject, "s");
}

#[test]
fn issuer_key_is_persisted_privately_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let a = LocalIssuer::load_or_create(dir.path(), ISS).unwrap();
    let b = LocalIssuer::load_or_create(dir.path(), ISS).unwrap();
    assert_eq!(a.kid(), b.kid());
    assert_eq!(a.jwks(), b.jwks());
    let key_file = dir.path().join("issuer-key.p8");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Debug never shows the key.
    let dbg = format!("{a:?}");
    assert!(dbg.contains("redacted"), "{dbg}");
    // JWKS JSON shape.
    let jwks = serde_json::to_value(a.jwks()).unwrap();
    let k = &jwks["keys"][0];
    assert_eq!(k["kty"], "EC");
    assert_eq!(k["crv"], "P-256");
    assert_eq!(k["kid"], a.kid());
    assert!(k.get("d").is_none(), "private part must not be published");
    // A corrupt key file is reported, not replaced.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("issuer-key.p8"), b"garbage").unwrap();
    let err = LocalIssuer::load_or_create(other.path(), ISS).unwrap_err();
    assert!(err.to_string().contains("not a PKCS#8"), "{err}");
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = LocalIssuer::load_or_create(dir.path(), ISS).unwrap();
    let v = validator_for(&issuer);
    let expired = issuer
        .sign_claims(&with(claims("a"), "exp", json!(now() - 3600)))
        .unwrap();
    let err = v.validate(&expired).await.unwrap_err();
    assert!(matches!(err, AuthError::Expired(_)), "{err}");
    assert!(err.to_string().contains("expired at 20"), "{err}");
    assert_rejected(&err, &expired);
    // Within the leeway is still fine.
    let barely = issuer
        .sign_claims(&with(claims("a"), "exp", json!(now() - 5)))
        .unwrap();
    assert!(v.validate(&barely).await.is_ok());
    let future = issuer
        .sign_claims(&with(claims("a"), "nbf", json!(now() + 3600)))
        .unwrap();
    let err = v.validate(&future).await.unwrap_err();
    assert!(matches!(err, AuthError::NotYetValid(_)), "{err}");
}

#[tokio::test]
async fn wrong_audience_and_issuer_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = LocalIssuer::load_or_create(dir.path(), ISS).unwrap();
    let v = validator_for(&issuer);
    let token = issuer
        .issue("a", "https://other.example", Duration::from_secs(60))
        .unwrap();
    let err = v.validate(&token).await.unwrap_err();
    assert_eq!(
        err,
        AuthError::WrongAudience {
            got: vec!["https://other.example".into()],
            expected: vec![AUD.into()],
        }
    );
    assert!(err.to_string().contains(
        "got [\"https://other.example\"], expected one of [\"https://hsm.keystead.test\"]"
    ));
    let no_aud = {
        let mut c = claims("a");
        c.as_object_mut().unwrap().remove("aud");
        issuer.sign_claims(&c).unwrap()
    };
    assert_eq!(
        v.validate(&no_aud).await.unwrap_err(),
        AuthError::MissingClaim("aud".into())
    );
    let no_sub = {
        let mut c = claims("a");
        c.as_object_mut().unwrap().remove("sub");
        issuer.sign_claims(&c).unwrap()
    };
    assert_eq!(
        v.validate(&no_sub).await.unwrap_err(),
        AuthError::MissingClaim("sub".into())
    );
    // Another issuer (its own key and URL) is not trusted.
    let dir2 = tempfile::tempdir().unwrap();
    let stranger = LocalIssuer::load_or_create(dir2.path(), "https://evil.example").unwrap();
    let token = stranger.issue("a", AUD, Duration::from_secs(60)).unwrap();
    let err = v.validate(&token).await.unwrap_err();
    assert_eq!(err, AuthError::UnknownIssuer("https://evil.example".into()));
    // Per-issuer audiences override the pool audience.
    let v2 = TokenValidator::new(AuthConfig {
        audience: AUD.into(),
        issuers: vec![IssuerConfig {
            audiences: vec!["api://custom".into()],
            ..issuer.issuer_config()
        }],
        leeway_secs: 0,
    });
    let custom = issuer
        .issue("a", "api://custom", Duration::from_secs(60))
        .unwrap();
    assert!(v2.validate(&custom).await.is_ok());
    let pool = issuer.issue("a", AUD, Duration::from_secs(60)).unwrap();
    assert!(matches!(
        v2.validate(&pool).await.unwrap_err(),
        AuthError::WrongAudience { .. }
    ));
}

#[tokio::test]
async fn a_different_key_with_the_same_kid_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = LocalIssuer::load_or_create(dir.path(), ISS).unwrap();
    let v = validator_for(&issuer);
    // Same issuer URL, other key; forge the trusted key's kid.
    let dir2 = tempfile::tempdir().unwrap();
    let _attacker = LocalIssuer::load_or_create(dir2.path(), ISS).unwrap();
    let der = std::fs::read(dir2.path().join("issuer-key.p8")).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(issuer.kid().to_owned());
    let forged =
        jsonwebtoken::encode(&header, &claims("admin"), &EncodingKey::from_ec_der(&der)).unwrap();
    let err = v.validate(&forged).await.unwrap_err();
    assert_eq!(err, AuthError::BadSignature(ISS.into()));
    assert_rejected(&err, &forged);
    // A kid the issuer never published.
    header.kid = Some("nope".into());
    let unknown =
        jsonwebtoken::encode(&header, &claims("admin"), &EncodingKey::from_ec_der(&der)).unwrap();
    assert!(matches!(
        v.validate(&unknown).await.unwrap_err(),
        AuthError::UnknownKey { .. }
    ));
    // A tampered payload under a genuine signature.
    let good = issuer.issue("bob", AUD, Duration::from_secs(60)).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let evil_payload = b64::encode_url(claims("admin").to_string());
    let tampered = format!("{}.{}.{}", parts[0], evil_payload, parts[2]);
    assert_eq!(
        v.validate(&tampered).await.unwrap_err(),
        AuthError::BadSignature(ISS.into())
    );
}

#[tokio::test]
async fn alg_none_hmac_and_garbage_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = LocalIssuer::load_or_create(dir.path(), ISS).unwrap();
    let v = validator_for(&issuer);
    let none = format!(
        "{}.{}.",
        b64::encode_url(json!({"alg": "none", "typ": "JWT"}).to_string()),
        b64::encode_url(claims("admin").to_string())
    );
    assert_eq!(
        v.validate(&none).await.unwrap_err(),
        AuthError::UnsupportedAlgorithm("none".into())
    );
    // HS256 "signed" with the public key bytes (classic confusion attack).
    let jwks = serde_json::to_vec(&issuer.jwks()).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(issuer.kid().to_owned());
    let hs =
        jsonwebtoken::encode(&header, &claims("admin"), &EncodingKey::from_secret(&jwks)).unwrap();
    let err = v.validate(&hs).await.unwrap_err();
    assert_eq!(err, AuthError::UnsupportedAlgorithm("HS256".into()));
    assert_rejected(&err, &hs);
    for garbage in [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "!!!.???.***",
        "e30.e30.",
        "eyJhbGciOiJFUzI1NiJ9.bm90anNvbg.c2ln",
    ] {
        let err = v.validate(garbage).await.unwrap_err();
        assert!(
            matches!(err, AuthError::Malformed(_) | AuthError::MissingClaim(_)),
            "{garbage:?}: {err:?}"
        );
    }
    let huge = "a".repeat(20_000);
    assert!(matches!(
        v.validate(&huge).await.unwrap_err(),
        AuthError::Malformed(_)
    ));
}

#[tokio::test]
async fn jwks_file_is_reread_for_an_unknown_kid_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = LocalIssuer::load_or_create(&dir.path().join("k1"), ISS).unwrap();
    let k2 = LocalIssuer::load_or_create(&dir.path().join("k2"), ISS).unwrap();
    let k3 = LocalIssuer::load_or_create(&dir.path().join("k3"), ISS).unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, serde_json::to_vec(&k1.jwks()).unwrap()).unwrap();
    let v = TokenValidator::new(AuthConfig {
        audience: AUD.into(),
        issuers: vec![IssuerConfig {
            issuer: ISS.into(),
            audiences: vec![],
            jwks: JwksSource::File(file.clone()),
            principal_prefix: None,
        }],
        leeway_secs: 0,
    });
    let t1 = k1.issue("a", AUD, Duration::from_secs(60)).unwrap();
    assert!(v.validate(&t1).await.is_ok());
    // The issuer rotates to k2 (keeping nothing of k1).
    std::fs::write(&file, serde_json::to_vec(&k2.jwks()).unwrap()).unwrap();
    let t2 = k2.issue("b", AUD, Duration::from_secs(60)).unwrap();
    assert_eq!(v.validate(&t2).await.unwrap().subject, "b");
    // A second rotation right away is not picked up: refreshes are rate limited.
    std::fs::write(&file, serde_json::to_vec(&k3.jwks()).unwrap()).unwrap();
    let t3 = k3.issue("c", AUD, Duration::from_secs(60)).unwrap();
    assert!(matches!(
        v.validate(&t3).await.unwrap_err(),
        AuthError::UnknownKey { .. }
    ));
    // A missing file is "unavailable" (503), not a bad token.
    let v = TokenValidator::new(AuthConfig {
        audience: AUD.into(),
        issuers: vec![IssuerConfig {
            issuer: ISS.into(),
            audiences: vec![],
            jwks: JwksSource::File(dir.path().join("missing.json")),
            principal_prefix: None,
        }],
        leeway_secs: 0,
    });
    let err = v.validate(&t1).await.unwrap_err();
    assert!(matches!(err, AuthError::JwksUnavailable { .. }), "{err}");
    assert_eq!(err.status(), 503);
}

#[test]
fn challenge_and_bearer_helpers() {
    assert_eq!(
        challenge_header(
            "https://login.microsoftonline.com/tenant",
            "https://managedhsm.azure.net"
        ),
        "Bearer authorization=\"https://login.microsoftonline.com/tenant\", resource=\"https://managedhsm.azure.net\""
    );
    let mut h = axum::http::HeaderMap::new();
    h.insert("authorization", "Bearer t0k".parse().unwrap());
    assert_eq!(bearer_token(&h), Some("t0k"));
}

#[tokio::test]
async fn rsa_tokens_rs256_and_ps256_validate() {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
    use aws_lc_rs::signature::{
        KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaEncoding, RsaKeyPair,
    };

    const RSA_ISS: &str = "https://rsa.keystead.test";
    let kp = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let comps: PublicKeyComponents<Vec<u8>> = kp.public_key().into();
    let jwks: Jwks = serde_json::from_value(json!({"keys": [{
        "kty": "RSA", "kid": "rsa-1", "use": "sig",
        "n": b64::encode_url(&comps.n), "e": b64::encode_url(&comps.e),
    }]}))
    .unwrap();
    let v = TokenValidator::new(AuthConfig {
        audience: AUD.into(),
        issuers: vec![IssuerConfig {
            issuer: RSA_ISS.into(),
            audiences: vec![],
            jwks: JwksSource::Static(jwks),
            principal_prefix: None,
        }],
        leeway_secs: 0,
    });
    let sign = |alg: &str, padding: &'static dyn RsaEncoding| {
        let header = json!({"alg": alg, "kid": "rsa-1", "typ": "JWT"});
        let c = with(claims("rsa-user"), "iss", json!(RSA_ISS));
        let input = format!(
            "{}.{}",
            b64::encode_url(header.to_string()),
            b64::encode_url(c.to_string())
        );
        let mut sig = vec![0u8; kp.public_modulus_len()];
        kp.sign(padding, &SystemRandom::new(), input.as_bytes(), &mut sig)
            .unwrap();
        format!("{input}.{}", b64::encode_url(&sig))
    };
    let rs = sign("RS256", &RSA_PKCS1_SHA256);
    assert_eq!(v.validate(&rs).await.unwrap().subject, "rsa-user");
    let ps = sign("PS256", &RSA_PSS_SHA256);
    assert_eq!(v.validate(&ps).await.unwrap().subject, "rsa-user");
    // A PKCS#1 signature presented as PSS (algorithm substitution) fails.
    let mixed = sign("PS256", &RSA_PKCS1_SHA256);
    assert_eq!(
        v.validate(&mixed).await.unwrap_err(),
        AuthError::BadSignature(RSA_ISS.into())
    );
}

#[tokio::test]
async fn principal_prefixes_keep_issuers_apart() {
    let dir = tempfile::tempdir().unwrap();
    let a = LocalIssuer::load_or_create(&dir.path().join("a"), ISS).unwrap();
    let b = LocalIssuer::load_or_create(&dir.path().join("b"), "https://b.keystead.test").unwrap();
    let v = TokenValidator::new(AuthConfig {
        audience: AUD.into(),
        issuers: vec![
            a.issuer_config(),
            IssuerConfig {
                principal_prefix: Some("b:".into()),
                ..b.issuer_config()
            },
        ],
        leeway_secs: 0,
    });
    let issue = |i: &LocalIssuer, s: &str| i.issue(s, AUD, Duration::from_secs(60)).unwrap();
    // The prefix-less issuer's principals are its subjects; the other's carry its prefix
    // (also when the subject is an `oid`, which the local issuer always sets).
    assert_eq!(
        v.validate(&issue(&a, "alice")).await.unwrap().subject,
        "alice"
    );
    for s in ["alice", "partition:p0", "system:serviceaccount:ns:op"] {
        let p = v.validate(&issue(&b, s)).await.unwrap();
        assert_eq!(p.subject, format!("b:{s}"));
        assert_eq!(p.issuer, "https://b.keystead.test");
    }
    // The prefix-less issuer may not mint principals of the other's namespace.
    let t = issue(&a, "b:alice");
    let err = v.validate(&t).await.unwrap_err();
    assert!(
        matches!(&err, AuthError::ForeignNamespace { owner, prefix, .. }
            if owner == "https://b.keystead.test" && prefix == "b:"),
        "{err:?}"
    );
    assert_rejected(&err, &t);
    assert!(err.to_string().contains("principal prefix"), "{err}");
}
