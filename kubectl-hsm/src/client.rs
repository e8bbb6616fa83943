//! Talking to a pool: endpoint, CA bundle and bearer token, from a local `pool.json` or
//! from flags/environment.

use anyhow::Context;
use clap::Args;
use keystead_core::error::ErrorBody;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct PoolArgs {
    /// A local pool's `pool.json` (endpoint, CA bundle and administrator token).
    #[arg(long, env = "KEYSTEAD_POOL", global = true)]
    pub pool: Option<PathBuf>,
    /// Pool endpoint (overrides pool.json), e.g. https://hsm.example:8443
    #[arg(long, env = "KEYSTEAD_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// CA bundle to trust for the endpoint (overrides pool.json).
    #[arg(long, env = "KEYSTEAD_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token (overrides pool.json's administrator token).
    #[arg(long, env = "KEYSTEAD_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Output format: `text` (default) or `json`.
    #[arg(short = 'o', long = "output", default_value = "text", global = true)]
    pub output: Output,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// A connection to one pool endpoint.
pub struct Client {
    pub endpoint: String,
    http: reqwest::Client,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl PoolArgs {
    pub fn client(&self) -> anyhow::Result<Client> {
        let pool = match &self.pool {
            Some(p) => Some(keystead_core::pool_file::PoolFile::load(p)?),
            None => None,
        };
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| pool.as_ref().and_then(|p| p.endpoints.first().cloned()))
            .context("no pool given: pass --pool DIR/pool.json, or --endpoint with --ca-file and --token-file")?;
        let ca_file = self
            .ca_file
            .clone()
            .or_else(|| pool.as_ref().map(|p| p.ca_file.clone()));
        let token_file = self
            .token_file
            .clone()
            .or_else(|| pool.as_ref().map(|p| p.admin_token_file.clone()))
            .context("no token: pass --token-file (or --pool for a local pool)")?;
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("cannot read the token file {}", token_file.display()))?
            .trim()
            .to_string();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(120));
        if let Some(ca) = ca_file {
            let pem = std::fs::read(&ca)
                .with_context(|| format!("cannot read the CA bundle {}", ca.display()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem).context("the CA bundle is not PEM")?,
            );
        }
        Ok(Client {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http: builder.build()?,
            token,
        })
    }
}

impl Client {
    /// Send a request and decode the JSON answer; Key Vault errors become readable errors.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let (status, text) = self.raw(method, path, body).await?;
        if status == 204 || text.is_empty() {
            return serde_json::from_str("null").context("empty answer");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("unexpected answer from the pool: {text}"))
    }

    /// Send a request; returns (status, body) for 2xx, an error with the pool's message otherwise.
    pub async fn raw<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<(u16, String)> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}api-version=7.5", self.endpoint);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the pool at {}", self.endpoint))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            let msg = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| format!("{} ({})", e.error.message, e.error.code))
                .unwrap_or(text);
            anyhow::bail!("the pool answered {status}: {msg}");
        }
        Ok((status, text))
    }
}

/// Print `value` as pretty JSON.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
