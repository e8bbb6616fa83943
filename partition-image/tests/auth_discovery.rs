//! OIDC discovery against an in-test HTTPS server (rcgen CA, rustls on aws-lc-rs): the
//! discovery document and the JWKS are fetched over verified TLS with a bearer token, and an
//! unknown `kid` (key rotation) triggers one refresh.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use keystead_partition::auth::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

const AUD: &str = "https://hsm.keystead.test";
const SA_TOKEN: &str = "test-service-account-token";

struct Idp {
    issuer: String,
    jwks: Mutex<Jwks>,
    discovery_hits: AtomicUsize,
    jwks_hits: AtomicUsize,
}

fn authorized(headers: &HeaderMap) -> bool {
    bearer_token(headers) == Some(SA_TOKEN)
}

async fn discovery(State(idp): State<Arc<Idp>>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    idp.discovery_hits.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "issuer": idp.issuer,
        "jwks_uri": format!("{}/openid/v1/jwks", idp.issuer),
        "response_types_supported": ["id_token"],
    }))
    .into_response()
}

async fn jwks(State(idp): State<Arc<Idp>>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    idp.jwks_hits.fetch_add(1, Ordering::SeqCst);
    let set = idp.jwks.lock().unwrap().clone();
    // Add a key this validator cannot use; it must be skipped, not break the set.
    let mut v = serde_json::to_value(set).unwrap();
    v["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "weird", "kid": "x"}));
    Json(v).into_response()
}

struct Server {
    idp: Arc<Idp>,
    ca_file: PathBuf,
    token_file: PathBuf,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_idp() -> Server {
    let dir = tempfile::tempdir().unwrap();
    // CA and a leaf for localhost.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "auth test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{SA_TOKEN}\n")).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let issuer = format!("https://localhost:{port}");
    let idp = Arc::new(Idp {
        issuer,
        jwks: Mutex::new(Jwks::default()),
        discovery_hits: AtomicUsize::new(0),
        jwks_hits: AtomicUsize::new(0),
    });
    let router = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/openid/v1/jwks", get(jwks))
        .with_state(Arc::clone(&idp));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                    .await;
            });
        }
    });
    Server {
        idp,
        ca_file,
        token_file,
        task,
        _dir: dir,
    }
}

fn discovery_validator(
    issuer: &str,
    ca_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
) -> TokenValidator {
    TokenValidator::new(AuthConfig {
        audience: AUD.into(),
        issuers: vec![IssuerConfig {
            issuer: issuer.to_owned(),
            audiences: vec![],
            jwks: JwksSource::Discovery {
                ca_file,
                bearer_token_file: token_file,
            },
            principal_prefix: None,
        }],
        leeway_secs: 0,
    })
}

#[tokio::test]
async fn discovery_fetches_keys_and_refreshes_on_rotation() {
    let server = start_idp().await;
    let idp = &server.idp;
    let keys = tempfile::tempdir().unwrap();
    let k1 = LocalIssuer::load_or_create(&keys.path().join("1"), &idp.issuer).unwrap();
    let k2 = LocalIssuer::load_or_create(&keys.path().join("2"), &idp.issuer).unwrap();
    let k3 = LocalIssuer::load_or_create(&keys.path().join("3"), &idp.issuer).unwrap();
    *idp.jwks.lock().unwrap() = k1.jwks();
    let v = discovery_validator(
        &idp.issuer,
        Some(server.ca_file.clone()),
        Some(server.token_file.clone()),
    );

    let t1 = k1
        .issue(
            "system:serviceaccount:apps:web",
            AUD,
            Duration::from_secs(60),
        )
        .unwrap();
    let p = v.validate(&t1).await.unwrap();
    assert_eq!(p.issuer, idp.issuer);
    assert_eq!(p.subject, "system:serviceaccount:apps:web");
    assert_eq!(idp.discovery_hits.load(Ordering::SeqCst), 1);
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 1);

    // Cached: no new fetch.
    assert!(v.validate(&t1).await.is_ok());
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 1);

    // Rotation: the issuer now publishes k2 only; a token with k2's kid triggers one refresh.
    *idp.jwks.lock().unwrap() = k2.jwks();
    let t2 = k2.issue("rotated", AUD, Duration::from_secs(60)).unwrap();
    assert_eq!(v.validate(&t2).await.unwrap().subject, "rotated");
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 2);

    // Another unknown kid within the interval does not hit the issuer again.
    *idp.jwks.lock().unwrap() = k3.jwks();
    let t3 = k3.issue("too-soon", AUD, Duration::from_secs(60)).unwrap();
    let err = v.validate(&t3).await.unwrap_err();
    assert!(matches!(err, AuthError::UnknownKey { .. }), "{err}");
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 2);
    // k1 was dropped by the issuer, so its tokens no longer validate.
    assert!(v.validate(&t1).await.is_err());
}

#[tokio::test]
async fn discovery_needs_the_ca_and_the_bearer_token() {
    let server = start_idp().await;
    let idp = &server.idp;
    let keys = tempfile::tempdir().unwrap();
    let k1 = LocalIssuer::load_or_create(keys.path(), &idp.issuer).unwrap();
    *idp.jwks.lock().unwrap() = k1.jwks();
    let token = k1.issue("a", AUD, Duration::from_secs(60)).unwrap();

    // Without the CA the server certificate is not trusted.
    let v = discovery_validator(&idp.issuer, None, Some(server.token_file.clone()));
    let err = v.validate(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::JwksUnavailable { .. }), "{err}");
    assert_eq!(err.status(), 503);

    // Without the bearer token the issuer answers 401.
    let v = discovery_validator(&idp.issuer, Some(server.ca_file.clone()), None);
    let err = v.validate(&token).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert!(!err.to_string().contains(SA_TOKEN));
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 0);

    // Plain http issuers are refused.
    let v = discovery_validator(
        "http://localhost:1",
        Some(server.ca_file.clone()),
        Some(server.token_file.clone()),
    );
    let plain = k1
        .sign_claims(
            &json!({"iss": "http://localhost:1", "sub": "a", "aud": AUD, "exp": 4_000_000_000u64}),
        )
        .unwrap();
    assert!(matches!(
        v.validate(&plain).await.unwrap_err(),
        AuthError::JwksUnavailable { .. }
    ));
}
