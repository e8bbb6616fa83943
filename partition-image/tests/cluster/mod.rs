//! A pool of real `keystead-partition serve` processes for the fault and membership tests:
//! three partitions in one Raft group, peer traffic through in-test TCP proxies (one per
//! ordered pair of the first three partitions) so a partition can be cut off, plus any
//! partitions a test adds later (reached directly).
//!
//! One file (~690 lines) on purpose: one harness type whose methods every fault test shares.
#![allow(dead_code)]

use keystead_partition::config::{PartitionConfig, PeerSettings};
use keystead_partition::consensus::raft::client::PeerClient;
use keystead_partition::local::{LocalOptions, LocalPki, free_port, prepare};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Partitions of the initial pool.
pub const N: usize = 3;

/// A TCP proxy that can be switched off (dropping its open connections).
pub struct Proxy {
    port: u16,
    on: watch::Sender<bool>,
}

pub async fn proxy(target: SocketAddr) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = watch::channel(true);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            if !*rx.borrow() {
                continue;
            }
            let mut rx = rx.clone();
            tokio::spawn(async move {
                let Ok(mut out) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                    _ = async {
                        while rx.changed().await.is_ok() {
                            if !*rx.borrow() {
                                break;
                            }
                        }
                    } => {}
                }
            });
        }
    });
    Proxy { port, on: tx }
}

/// Isolated partitions, and links (a, b) with a < b cut both ways.
type Cuts = (BTreeSet<usize>, BTreeSet<(usize, usize)>);

pub struct Cluster {
    _tmp: tempfile::TempDir,
    /// The pool directory (CA, issuer, one directory per partition).
    pub dir: PathBuf,
    pub configs: Vec<PathBuf>,
    pub cfgs: Vec<PartitionConfig>,
    children: Mutex<Vec<Option<Child>>>,
    proxies: HashMap<(usize, usize), Proxy>,
    /// What is cut: isolated partitions, and links (a, b) with a < b cut both ways.
    cuts: Mutex<Cuts>,
    token: String,
    pub http: reqwest::Client,
    /// `serve --region-config` of a replica region's partitions (region.rs).
    region_config: Option<PathBuf>,
}

mod region;

/// Name of the test pool.
const POOL: &str = "faults";

impl Drop for Cluster {
    fn drop(&mut self) {
        let children = self.children.get_mut().unwrap_or_else(|p| p.into_inner());
        for c in children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keystead-partition"))
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_inner(|_, _| {}, |_, _| {}, (POOL, None)).await
    }

    /// Start the pool after `edit` changed partition `i`'s configuration.
    pub async fn start_with(edit: impl Fn(usize, &mut PartitionConfig)) -> Cluster {
        Self::start_inner(edit, |_, _| {}, (POOL, None)).await
    }

    /// [`Cluster::start`], calling `edit(pool directory, configuration files)` after the
    /// configurations are written and before any partition starts (the configurations are
    /// read back without validation: a test may start partitions with a configuration they
    /// refuse).
    pub async fn start_with_files(edit: impl FnOnce(&std::path::Path, &[PathBuf])) -> Cluster {
        Self::start_inner(|_, _| {}, edit, (POOL, None)).await
    }

    async fn start_inner(
        edit: impl Fn(usize, &mut PartitionConfig),
        edit_files: impl FnOnce(&std::path::Path, &[PathBuf]),
        (pool_name, extend): (&str, Option<PathBuf>),
    ) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pool");
        let (configs, pool) = prepare(&LocalOptions {
            dir: dir.clone(),
            partitions: N,
            pool_name: pool_name.into(),
            extend: extend.clone(),
        })
        .unwrap();
        let region_config = match extend {
            Some(primary) => Some(region::name_on_primary(&primary, pool_name, &pool).await),
            None => None,
        };
        let mut cfgs: Vec<PartitionConfig> = configs
            .iter()
            .map(|p| PartitionConfig::load(p).unwrap())
            .collect();
        // Route each partition's peer traffic through a proxy per ordered pair.
        let mut proxies = HashMap::new();
        for a in 0..N {
            for b in 0..N {
                if a == b {
                    continue;
                }
                let target: SocketAddr = cfgs[b].listen.parse().unwrap();
                let p = proxy(target).await;
                cfgs[a].peers[b].url = format!("https://127.0.0.1:{}", p.port);
                proxies.insert((a, b), p);
            }
        }
        for (i, cfg) in cfgs.iter_mut().enumerate() {
            edit(i, cfg);
        }
        for (cfg, path) in cfgs.iter().zip(&configs) {
            std::fs::write(path, serde_json::to_vec_pretty(cfg).unwrap()).unwrap();
        }
        edit_files(&dir, &configs);
        let cfgs: Vec<PartitionConfig> = configs
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect();
        let ca = std::fs::read(&pool.ca_file).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let token = std::fs::read_to_string(&pool.admin_token_file).unwrap();
        let c = Cluster {
            _tmp: tmp,
            dir,
            configs,
            cfgs,
            children: Mutex::new((0..N).map(|_| None).collect()),
            proxies,
            cuts: Mutex::default(),
            token,
            http,
            region_config,
        };
        for i in 0..N {
            c.spawn(i);
        }
        c
    }

    pub fn spawn(&self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.configs[i].with_file_name("stderr.log"))
            .unwrap();
        let mut command = Command::new(bin());
        command.arg("serve").arg("--config").arg(&self.configs[i]);
        if let Some(r) = &self.region_config {
            command.arg("--region-config").arg(r);
        }
        let child = command
            .env("KEYSTEAD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.lock().unwrap()[i] = Some(child);
    }

    /// If partition `i`'s process has exited: its status and the end of its stderr.
    pub fn exited(&self, i: usize) -> Option<String> {
        let mut children = self.children.lock().unwrap();
        let status = children[i].as_mut()?.try_wait().ok()??;
        let log = std::fs::read_to_string(self.configs[i].with_file_name("stderr.log"))
            .unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Some(format!("exited with {status}; stderr tail:\n{tail}"))
    }

    /// Stop every partition and start it again with memory-only sealing and its sealed
    /// domain file removed: the pool stays activated, but no partition holds the domain
    /// (an upload must bring it back).
    pub fn restart_all_without_domain(&mut self) {
        use keystead_partition::config::{SealMode, SealSettings};
        for i in 0..N {
            self.kill(i);
            self.cfgs[i].seal = SealSettings {
                mode: SealMode::MemoryOnly,
                key_file: None,
            };
            std::fs::write(
                &self.configs[i],
                serde_json::to_vec_pretty(&self.cfgs[i]).unwrap(),
            )
            .unwrap();
            let _ = std::fs::remove_file(self.cfgs[i].data_dir.join("domain.sealed"));
        }
        for i in 0..N {
            self.spawn(i);
        }
    }

    pub fn kill(&self, i: usize) {
        let child = self.children.lock().unwrap()[i].take();
        if let Some(mut c) = child {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn wipe(&self, i: usize) {
        let _ = std::fs::remove_dir_all(&self.cfgs[i].data_dir);
    }

    /// Cut partition `i` off from its peers (both ways), or reconnect it. Links cut with
    /// [`Cluster::cut_link`] and other isolated partitions stay cut.
    pub fn isolate(&self, i: usize, cut: bool) {
        let mut cuts = self.cuts.lock().unwrap();
        if cut {
            cuts.0.insert(i);
        } else {
            cuts.0.remove(&i);
        }
        self.apply_cuts(&cuts);
    }

    /// Cut the link between partitions `a` and `b` (both ways), or reconnect it: each of
    /// them still reaches the third partition (which bridges them).
    pub fn cut_link(&self, a: usize, b: usize, cut: bool) {
        let mut cuts = self.cuts.lock().unwrap();
        let pair = (a.min(b), a.max(b));
        if cut {
            cuts.1.insert(pair);
        } else {
            cuts.1.remove(&pair);
        }
        self.apply_cuts(&cuts);
    }

    /// Reconnect everything.
    pub fn heal_network(&self) {
        let mut cuts = self.cuts.lock().unwrap();
        cuts.0.clear();
        cuts.1.clear();
        self.apply_cuts(&cuts);
    }

    fn apply_cuts(&self, cuts: &Cuts) {
        for ((a, b), p) in &self.proxies {
            let off = cuts.0.contains(a)
                || cuts.0.contains(b)
                || cuts.1.contains(&((*a).min(*b), (*a).max(*b)));
            p.on.send_replace(!off);
        }
    }

    /// The process id of partition `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.lock().unwrap()[i].as_ref().map(|c| c.id())
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self.pid(i).expect("the partition runs");
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {pid} failed: {st}");
    }

    /// SIGSTOP partition `i`: it keeps its sockets but answers nothing until resumed.
    pub fn pause(&self, i: usize) {
        self.signal(i, "STOP");
    }

    /// SIGCONT partition `i`.
    pub fn resume(&self, i: usize) {
        self.signal(i, "CONT");
    }

    pub fn url(&self, i: usize) -> &str {
        &self.cfgs[i].public_url
    }

    /// A request to partition `i` as the local administrator.
    pub async fn call(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(&self.token, i, method, path, body).await
    }

    /// A request to partition `i` with the bearer token `token`.
    pub async fn call_as(
        &self,
        token: &str,
        i: usize,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut req = self
            .http
            .request(method, format!("{}{path}{sep}api-version=7.5", self.url(i)))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(resp) => {
                let s = resp.status();
                let text = resp.text().await.unwrap_or_default();
                (
                    s,
                    serde_json::from_str(&text).unwrap_or(Value::String(text)),
                )
            }
            Err(e) => (StatusCode::BAD_GATEWAY, Value::String(e.to_string())),
        }
    }

    pub async fn ready(&self, i: usize) -> bool {
        match self
            .http
            .get(format!("{}/readyz", self.url(i)))
            .send()
            .await
        {
            Ok(r) => r.status() == StatusCode::OK,
            Err(_) => false,
        }
    }

    pub async fn status(&self, i: usize) -> Option<Value> {
        let (s, v) = self.call(i, Method::GET, "/admin/status", None).await;
        (s == StatusCode::OK).then_some(v)
    }

    /// Wait until `cond` holds, polling.
    /// Start a full restore of `folder` of the store at `uri` through partition `via`; its
    /// job id.
    pub async fn start_restore(&self, via: usize, uri: &str, folder: &str) -> String {
        let (s, v) = self
            .call(
                via,
                Method::PUT,
                "/restore",
                Some(json!({"sasTokenParameters": {"storageResourceUri": uri},
                            "folderToRestore": folder})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        v["jobId"].as_str().expect("a job id").to_string()
    }

    /// Wait (at most 10 minutes) for restore job `job` to end on `via`; its final status.
    pub async fn restore_outcome(&self, via: usize, job: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let (s, v) = self
                .call(via, Method::GET, &format!("/restore/{job}/pending"), None)
                .await;
            if s == StatusCode::OK && v["status"] != "InProgress" {
                return v;
            }
            assert!(Instant::now() < deadline, "the restore still runs: {s} {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn until<F, Fut>(&self, what: &str, secs: u64, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !cond().await {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn leader(&self, among: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for &i in among {
                if let Some(v) = self.status(i).await
                    && v["replication"]["role"] == "leader"
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {among:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn domain_loaded(&self, i: usize) -> bool {
        matches!(self.status(i).await, Some(v) if v["domainLoaded"] == true)
    }

    /// Partition `i` has caught up since its disk was last emptied (it votes again).
    pub async fn caught_up(&self, i: usize) -> bool {
        matches!(self.status(i).await, Some(v) if v["replication"]["recovering"] == false)
    }

    /// Form the group, activate through partition 0, wait until every partition holds the domain.
    pub async fn activate(&self) {
        self.leader(&[0, 1, 2]).await;
        // The first download activates the pool.
        self.domain_file().await;
        // The administrator gives itself the Crypto User role (through partition 1: a
        // forwarded write when 1 is a follower).
        self.assign_role(
            1,
            keystead_core::rbac::CRYPTO_USER_ROLE_ID,
            keystead_partition::local::ADMIN_SUBJECT,
        )
        .await;
        for i in 0..N {
            self.until("every partition holds the domain", 60, || {
                self.domain_loaded(i)
            })
            .await;
        }
    }

    /// Assign built-in role `role_id` at `/` to `principal`, as the administrator, through
    /// partition `i`.
    pub async fn assign_role(&self, i: usize, role_id: &str, principal: &str) {
        let (s, v) = self
            .call(
                i,
                Method::PUT,
                &format!(
                    "/providers/Microsoft.Authorization/roleAssignments/{}",
                    uuid::Uuid::new_v4()
                ),
                Some(json!({"properties": {
                    "roleDefinitionId": format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{role_id}"),
                    "principalId": principal,
                }})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// The pool's security-domain file (downloaded again: same domain, new protection under
    /// the same custodians), e.g. to recover another pool with it.
    pub async fn domain_file(&self) -> String {
        let (s, v) = self
            .call(
                0,
                Method::POST,
                "/securitydomain/download",
                Some(json!({"certificates": custodian_jwks(), "required": 2})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        v["value"].as_str().expect("the domain file").to_string()
    }

    pub async fn create(&self, i: usize, name: &str) -> Result<Value, (StatusCode, Value)> {
        let (s, v) = self
            .call(
                i,
                Method::POST,
                &format!("/keys/{name}/create"),
                Some(json!({"kty": "EC", "crv": "P-256"})),
            )
            .await;
        if s == StatusCode::OK {
            Ok(v)
        } else {
            Err((s, v))
        }
    }

    /// The replicated identity of a key as partition `i` serves it (kid path, public point,
    /// creation time), or None.
    pub async fn key_identity(
        &self,
        i: usize,
        name: &str,
    ) -> Option<(String, Value, Value, Value)> {
        let (s, v) = self
            .call(i, Method::GET, &format!("/keys/{name}"), None)
            .await;
        if s != StatusCode::OK {
            eprintln!("GET /keys/{name} on partition {i}: {s} {v}");
            return None;
        }
        let kid = v["key"]["kid"].as_str()?;
        let path = kid.split_once("/keys/")?.1.to_string();
        Some((
            path,
            v["key"]["x"].clone(),
            v["key"]["y"].clone(),
            v["attributes"]["created"].clone(),
        ))
    }

    pub async fn sign(&self, i: usize, name: &str) -> StatusCode {
        let digest = keystead_core::b64::encode_url([7u8; 32]);
        self.call(
            i,
            Method::POST,
            &format!("/keys/{name}/sign"),
            Some(json!({"alg": "ES256", "value": digest})),
        )
        .await
        .0
    }

    /// Every name in `acked` exists on the three initial partitions with identical content.
    pub async fn assert_converged(&self, acked: &BTreeMap<String, String>) {
        self.assert_converged_on(acked, &[0, 1, 2]).await;
    }

    /// Every name in `acked` exists on the partitions `among` with identical content.
    pub async fn assert_converged_on(&self, acked: &BTreeMap<String, String>, among: &[usize]) {
        for (name, kid_path) in acked {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut ids = Vec::new();
                for &i in among {
                    ids.push(self.key_identity(i, name).await);
                }
                let all_same = ids.iter().all(|x| x.is_some() && *x == ids[0]);
                if all_same {
                    assert_eq!(
                        &ids[0].as_ref().unwrap().0,
                        kid_path,
                        "key {name}: acknowledged version differs from the stored one"
                    );
                    break;
                }
                if Instant::now() >= deadline {
                    for &i in among {
                        eprintln!("partition {i}: {:?}", self.status(i).await);
                        let log = self.configs[i].with_file_name("stderr.log");
                        eprintln!("{}", std::fs::read_to_string(log).unwrap_or_default());
                    }
                    panic!("acknowledged key {name} is not identical on all partitions: {ids:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Create a brand-new partition `name` with Raft node id `id` (new directory, new
    /// certificate from the pool CA, new workload token, new port), configured with the
    /// initial members as its peers, not started yet. Returns its index.
    pub fn add_partition(&mut self, name: &str, id: u64) -> usize {
        let pki = LocalPki::open_or_create(&self.dir, POOL).unwrap();
        let mut peers: Vec<PeerSettings> = (0..N)
            .map(|i| PeerSettings {
                id: self.node_id(i),
                name: self.cfgs[i].partition_id.clone(),
                url: self.cfgs[i].public_url.clone(),
            })
            .collect();
        let port = free_port().unwrap();
        peers.push(PeerSettings {
            id,
            name: name.to_string(),
            url: format!("https://127.0.0.1:{port}"),
        });
        let (path, cfg) = pki.partition(name, port, &peers).unwrap();
        self.configs.push(path);
        self.cfgs.push(cfg);
        self.children.get_mut().unwrap().push(None);
        self.cfgs.len() - 1
    }

    /// Raft node id of partition `i` (from its own configuration).
    pub fn node_id(&self, i: usize) -> u64 {
        let cfg = &self.cfgs[i];
        cfg.peers
            .iter()
            .find(|p| p.name == cfg.partition_id)
            .map(|p| p.id)
            .unwrap()
    }

    /// A bearer token of the pool's local issuer for `subject`.
    pub fn token_for(&self, subject: &str) -> String {
        let pki = LocalPki::open_or_create(&self.dir, POOL).unwrap();
        pki.issuer
            .issue(subject, &self.cfgs[0].audience(), Duration::from_secs(3600))
            .unwrap()
    }

    /// A peer-API client with partition `i`'s certificate and workload token.
    pub fn peer_client(&self, i: usize) -> PeerClient {
        PeerClient::new(&self.cfgs[i]).unwrap()
    }

    /// The audit records partition `i` has written so far.
    pub fn audit_records(&self, i: usize) -> Vec<Value> {
        std::fs::read_to_string(self.cfgs[i].audit_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The member list as partition `i` answers it (status, body).
    pub async fn members(&self, i: usize) -> (StatusCode, Value) {
        self.call(i, Method::GET, "/admin/members", None).await
    }
}

pub fn custodian_jwks() -> Vec<Value> {
    crate::common::custodians()
        .iter()
        .map(|(cert, _)| {
            serde_json::to_value(
                keystead_core::sd::CustodianKey::from_pem(cert)
                    .unwrap()
                    .to_jwk()
                    .unwrap(),
            )
            .unwrap()
        })
        .collect()
}

pub fn kid_path(v: &Value) -> String {
    v["key"]["kid"]
        .as_str()
        .and_then(|k| k.split_once("/keys/"))
        .map(|(_, p)| p.to_string())
        .unwrap_or_default()
}
