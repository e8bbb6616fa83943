//! A partition started in-process on a loopback port with real TLS and real tokens.
#![allow(dead_code)]

use keystead_core::sd::{CustodianKey, generate_custodian};
use keystead_partition::auth::LocalIssuer;
use keystead_partition::config::*;
use keystead_partition::pki;
use keystead_partition::service::app::App;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const ADMIN: &str = "admin-alice";
pub const ISSUER: &str = "https://issuer.test/keystead";
/// The pool's audience (the `resource` of its 401 challenge).
pub const AUD: &str = "https://hsm.keystead.test";

pub struct TestPool {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub app: Arc<App>,
    pub issuer: LocalIssuer,
    ca_pem: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Three custodian certificates (PEM) and private keys (PEM), generated once per binary.
pub fn custodians() -> &'static Vec<(String, String)> {
    static C: OnceLock<Vec<(String, String)>> = OnceLock::new();
    C.get_or_init(|| {
        (0..3)
            .map(|i| {
                let (cert, key) = generate_custodian(&format!("custodian{i}"), 2048, None).unwrap();
                (cert, key.to_string())
            })
            .collect()
    })
}

pub struct Options {
    pub purge_protection: bool,
    pub retention_days: i64,
    pub seal: bool,
    /// `backupFilesystemRoot` (default `/`, as a local pool).
    pub backup_root: Option<std::path::PathBuf>,
    /// `backupClaims`: claim name → directory.
    pub backup_claims: std::collections::BTreeMap<String, std::path::PathBuf>,
    /// `securityDomainRedownload`.
    pub security_domain_redownload: keystead_partition::config::RedownloadPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            purge_protection: false,
            retention_days: 90,
            seal: true,
            backup_root: Some("/".into()),
            backup_claims: Default::default(),
            security_domain_redownload: Default::default(),
        }
    }
}

impl TestPool {
    pub async fn start() -> TestPool {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> TestPool {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, opts).await
    }

    /// Start (or restart) a partition whose files live in `dir`.
    pub async fn start_in(dir: tempfile::TempDir, opts: Options) -> TestPool {
        let d = dir.path();
        let ca_path = d.join("ca.pem");
        if !ca_path.exists() {
            let ca = pki::generate_ca("test", 30).unwrap();
            let leaf = pki::issue_leaf(
                &ca,
                "p0",
                &["localhost".into()],
                &["127.0.0.1".parse().unwrap()],
                1,
            )
            .unwrap();
            std::fs::write(&ca_path, &ca.cert_pem).unwrap();
            std::fs::write(d.join("tls.crt"), &leaf.cert_pem).unwrap();
            std::fs::write(d.join("tls.key"), &leaf.key_pem).unwrap();
            let mut k = [0u8; 32];
            aws_lc_rs::rand::fill(&mut k).unwrap();
            std::fs::write(d.join("sealing.key"), k).unwrap();
        }
        let issuer = LocalIssuer::load_or_create(&d.join("issuer"), ISSUER).unwrap();
        std::fs::write(
            d.join("jwks.json"),
            serde_json::to_vec(&issuer.jwks()).unwrap(),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cfg = PartitionConfig {
            pool_name: "test".into(),
            partition_id: "p0".into(),
            listen: format!("127.0.0.1:{port}"),
            public_url: format!("https://127.0.0.1:{port}"),
            data_dir: d.join("data"),
            tls: TlsFiles {
                cert_file: d.join("tls.crt"),
                key_file: d.join("tls.key"),
                ca_file: ca_path.clone(),
            },
            auth: AuthSettings {
                audience: Some(AUD.into()),
                authority: "https://login.test/tenant".into(),
                issuers: vec![IssuerSettings {
                    issuer: ISSUER.into(),
                    audiences: vec![],
                    principal_prefix: None,
                    jwks_file: Some(d.join("jwks.json")),
                    ca_file: None,
                    bearer_token_file: None,
                }],
            },
            initial_administrators: vec![ADMIN.into()],
            soft_delete_retention_days: opts.retention_days,
            purge_protection: opts.purge_protection,
            seal: if opts.seal {
                SealSettings {
                    mode: SealMode::SealingKeyFile,
                    key_file: Some(d.join("sealing.key")),
                }
            } else {
                SealSettings::default()
            },
            audit: AuditSettings {
                file: None,
                stdout: false,
            },
            peers: vec![],
            peer_token_file: None,
            peer_service_account: None,
            host_addresses: Default::default(),
            backup_filesystem_root: opts.backup_root.clone(),
            backup_claims: opts.backup_claims.clone(),
            // The backup tests use emulators on loopback.
            backup_loopback_endpoints: true,
            security_domain_redownload: opts.security_domain_redownload,
            limits: Default::default(),
            read_consistency: Default::default(),
        };
        let app = App::open(cfg).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let a = app.clone();
        let task = tokio::spawn(async move {
            keystead_partition::http::server::serve(a, listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestPool {
            url: format!("https://127.0.0.1:{port}"),
            ca_pem: std::fs::read_to_string(&ca_path).unwrap(),
            app,
            issuer,
            dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stop serving and hand back the directory (to restart on the same data).
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        let TestPool { dir, .. } = self;
        dir
    }

    pub fn token(&self, subject: &str) -> String {
        self.issuer
            .issue(subject, AUD, Duration::from_secs(600))
            .unwrap()
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    /// Send a request as `subject` (None: no token). Returns status and JSON (Null if none).
    pub async fn call(
        &self,
        subject: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (s, _, v) = self.call_full(subject, method, path, body).await;
        (s, v)
    }

    pub async fn call_full(
        &self,
        subject: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut req = self
            .http()
            .request(method, format!("{}{path}{sep}api-version=7.5", self.url));
        if let Some(s) = subject {
            req = req.bearer_auth(self.token(s));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, v)
    }

    /// Assign `role` (a GUID, or a full role definition id) to `principal` at `scope`
    /// (`/`, `/keys`, `/keys/{name}`) as the administrator; returns the assignment name.
    pub async fn assign(&self, principal: &str, role: &str, scope: &str) -> String {
        let name = uuid::Uuid::new_v4().to_string();
        let prefix = if scope == "/" { "" } else { scope };
        let role_id = if role.contains('/') {
            role.to_string()
        } else {
            format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{role}")
        };
        let (s, v) = self
            .call(
                Some(ADMIN),
                Method::PUT,
                &format!("{prefix}/providers/Microsoft.Authorization/roleAssignments/{name}"),
                Some(
                    json!({"properties": {"roleDefinitionId": role_id, "principalId": principal}}),
                ),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        name
    }

    pub fn certificate_jwks(&self, n: usize) -> Vec<Value> {
        custodians()[..n]
            .iter()
            .map(|(cert, _)| {
                serde_json::to_value(CustodianKey::from_pem(cert).unwrap().to_jwk().unwrap())
                    .unwrap()
            })
            .collect()
    }

    /// Activate the pool by downloading a security domain; returns the domain file JSON.
    pub async fn activate(&self) -> String {
        let (s, v) = self
            .call(
                Some(ADMIN),
                Method::POST,
                "/securitydomain/download",
                Some(json!({"certificates": self.certificate_jwks(3), "required": 2})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        v["value"].as_str().unwrap().to_string()
    }
}
