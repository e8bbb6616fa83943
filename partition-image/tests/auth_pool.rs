//! Authentication decisions on a pool of real partition processes over real TLS
//! (docs/authentication.md):
//! - principals of different token issuers never collide ("Principal namespaces"): a second
//!   trusted issuer that mints the subject of an administrator, of the operator or of a peer
//!   partition gets its own, prefixed principal — with none of their rights — and a
//!   configuration that would let two issuers share one namespace is refused at start;
//! - a local pool's audience is its own resource, named by its 401 challenge; a token of the
//!   pool's own issuer minted for Azure's Managed HSM audience is refused.

mod cluster;
mod common;

use cluster::*;
use keystead_partition::auth::LocalIssuer;
use keystead_partition::config::AZURE_AUDIENCE;
use keystead_partition::consensus::raft::client::{PeerClient, PeerError};
use keystead_partition::local::ADMIN_SUBJECT;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The second issuer the pool trusts (a static JWKS file, like the local issuer's).
const OTHER_ISSUER: &str = "https://other-issuer.test/tenant";
/// The Kubernetes operator's principal, an initial administrator of every operator pool.
const OPERATOR: &str = "system:serviceaccount:keystead-system:keystead-operator";

fn other_issuer(dir: &Path) -> LocalIssuer {
    LocalIssuer::load_or_create(&dir.join("other-issuer"), OTHER_ISSUER).unwrap()
}

/// Trusts the second issuer on every partition (with `prefix` as its `principalPrefix`)
/// and makes the operator's principal an initial administrator, as the operator does.
fn trust_other_issuer(dir: &Path, configs: &[PathBuf], prefix: Option<&str>) {
    let issuer = other_issuer(dir);
    let jwks = dir.join("other-issuer").join("jwks.json");
    std::fs::write(&jwks, serde_json::to_vec(&issuer.jwks()).unwrap()).unwrap();
    for path in configs {
        let mut cfg: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let mut entry = json!({"issuer": OTHER_ISSUER, "jwksFile": jwks});
        if let Some(p) = prefix {
            entry["principalPrefix"] = json!(p);
        }
        cfg["auth"]["issuers"].as_array_mut().unwrap().push(entry);
        cfg["initialAdministrators"]
            .as_array_mut()
            .unwrap()
            .push(json!(OPERATOR));
        std::fs::write(path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    }
}

/// The audience the pool's tokens must carry (from partition 0's configuration file).
fn audience(c: &Cluster) -> String {
    let cfg: Value = serde_json::from_slice(&std::fs::read(&c.configs[0]).unwrap()).unwrap();
    cfg["auth"]["audience"]
        .as_str()
        .expect("the local runner writes the audience")
        .to_string()
}

fn other_token(c: &Cluster, subject: &str) -> String {
    other_issuer(&c.dir)
        .issue(subject, &audience(c), Duration::from_secs(600))
        .unwrap()
}

/// A peer-API client with partition `i`'s certificate but the bearer token `token`.
fn peer_client_with_token(c: &Cluster, i: usize, token: &str) -> PeerClient {
    let file = c.dir.join(format!("forged-peer-{i}.token"));
    std::fs::write(&file, token).unwrap();
    let mut cfg = c.cfgs[i].clone();
    cfg.peer_token_file = Some(file);
    PeerClient::new(&cfg).unwrap()
}

async fn peer_state(client: &PeerClient, c: &Cluster, to: usize) -> Result<Value, PeerError> {
    client
        .get::<Value>(c.url(to), "/internal/state", Duration::from_secs(5))
        .await
}

fn status_of(r: &Result<Value, PeerError>) -> Option<u16> {
    match r {
        Err(PeerError::Status(_, s, _)) => Some(*s),
        Ok(_) => Some(200),
        _ => None,
    }
}

/// A security-domain download as the principal of `token`: the most privileged call an
/// administrator makes (with its own custodian certificates, it takes the pool's master key).
async fn download_as(c: &Cluster, token: &str) -> (StatusCode, Value) {
    c.call_as(
        token,
        0,
        Method::POST,
        "/securitydomain/download",
        Some(json!({"certificates": custodian_jwks(), "required": 2})),
    )
    .await
}

const ASSIGNMENTS: &str = "/providers/Microsoft.Authorization/roleAssignments";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_issuer_gets_prefixed_principals_without_the_administrators_rights() {
    let c =
        Cluster::start_with_files(|dir, configs| trust_other_issuer(dir, configs, Some("other:")))
            .await;
    c.leader(&[0, 1, 2]).await;

    // The second issuer mints the local administrator's and the operator's subjects: their
    // principals are `other:<subject>`, which hold no role — no domain download, no RBAC.
    for subject in [ADMIN_SUBJECT, OPERATOR] {
        let forged = other_token(&c, subject);
        let (s, v) = download_as(&c, &forged).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{subject}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(&format!("Caller: other:{subject}")), "{msg}");
        let (s, v) = c.call_as(&forged, 1, Method::GET, ASSIGNMENTS, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{subject}: {v}");
    }
    // The real administrator (local issuer, no prefix) still holds its rights.
    c.activate().await;

    // A prefixed principal is an ordinary principal: assigned a role, it can use it.
    let (s, v) = c
        .call(
            0,
            Method::PUT,
            &format!("{ASSIGNMENTS}/{}", uuid::Uuid::new_v4()),
            Some(json!({"properties": {
                "roleDefinitionId": format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{}", keystead_core::rbac::CRYPTO_USER_ROLE_ID),
                "principalId": "other:alice",
            }})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let alice = other_token(&c, "alice");
    c.until("other:alice may create a key", 30, || async {
        let (s, _) = c
            .call_as(
                &alice,
                2,
                Method::POST,
                "/keys/alice-key/create",
                Some(json!({"kty": "EC", "crv": "P-256"})),
            )
            .await;
        s == StatusCode::OK
    })
    .await;
    // ... but the issuer still gets no administrator rights.
    let (s, v) = c
        .call_as(
            &other_token(&c, ADMIN_SUBJECT),
            2,
            Method::GET,
            ASSIGNMENTS,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    // The prefix-less local issuer may not reach into the second issuer's namespace.
    let squatter = c.token_for("other:alice");
    let (s, v) = c
        .call_as(&squatter, 0, Method::GET, "/keys/alice-key", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("principal prefix") && msg.contains(OTHER_ISSUER),
        "{msg}"
    );

    // Peers: partition 1's own certificate with the second issuer's `partition:p1` token is
    // refused (its principal is `other:partition:p1`); with its real token it is served.
    let forged = peer_client_with_token(&c, 1, &other_token(&c, "partition:p1"));
    let r = peer_state(&forged, &c, 0).await;
    assert_eq!(status_of(&r), Some(403), "{r:?}");
    let genuine = c.peer_client(1);
    let r = peer_state(&genuine, &c, 0).await;
    assert!(r.is_ok(), "{r:?}");

    // The audit trail names the prefixed principal.
    let records = c.audit_records(0);
    assert!(
        records
            .iter()
            .any(|r| r["caller"] == format!("other:{ADMIN_SUBJECT}") && r["status"] == 403),
        "no audit record of the refused other:{ADMIN_SUBJECT}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_without_a_principal_prefix_are_refused_at_start() {
    let c = Cluster::start_with_files(|dir, configs| trust_other_issuer(dir, configs, None)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(exit) = c.exited(0) {
            assert!(
                exit.contains("principalPrefix") && exit.contains(OTHER_ISSUER),
                "{exit}"
            );
            break;
        }
        if c.ready(0).await {
            // The old behaviour: both issuers share one namespace. Show what that allows.
            c.leader(&[0, 1, 2]).await;
            let (admin, _) = download_as(&c, &other_token(&c, ADMIN_SUBJECT)).await;
            let forged = peer_client_with_token(&c, 1, &other_token(&c, "partition:p1"));
            let peer = status_of(&peer_state(&forged, &c, 0).await);
            panic!(
                "the pool started trusting two issuers without a principal prefix: the second \
                 issuer's token for {ADMIN_SUBJECT:?} got {admin} on a security-domain download, \
                 and its token for partition:p1 got {peer:?} from the peer API"
            );
        }
        assert!(
            Instant::now() < deadline,
            "partition 0 neither refused its configuration nor became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_pool_challenges_for_its_own_audience_and_refuses_azures() {
    let c = Cluster::start().await;
    let aud = audience(&c);
    assert_eq!(aud, "https://hsm.keystead.local/faults");
    c.until("partition 0 answers", 30, || c.ready(0)).await;
    let resp = c
        .http
        .get(format!("{}/keys?api-version=7.5", c.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains(&format!("resource=\"{aud}\"")),
        "{challenge}"
    );
    // The pool's own issuer, the administrator's subject, Azure's audience: refused.
    let pki = keystead_partition::local::LocalPki::open_or_create(&c.dir, "faults").unwrap();
    let azure = pki
        .issuer
        .issue(ADMIN_SUBJECT, AZURE_AUDIENCE, Duration::from_secs(600))
        .unwrap();
    let (s, v) = c.call_as(&azure, 0, Method::GET, "/keys", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("wrong audience") && m.contains(&aud)),
        "{v}"
    );
    // The runner's administrator token carries the pool's audience.
    c.leader(&[0, 1, 2]).await;
    let (s, v) = c.call(0, Method::GET, ASSIGNMENTS, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
