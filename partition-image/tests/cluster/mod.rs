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

/// What is cut: isolated partitions, links (a, b) with a < b cut both ways, and one-way
/// cuts (from, to).
#[derive(Default)]
struct Cuts {
    isolated: BTreeSet<usize>,
    links: BTreeSet<(usize, usize)>,
    one_way: BTreeSet<(usize, usize)>,
}

impl Cuts {
    /// Whether what `from` sends to `to` is dropped.
    fn drops(&self, from: usize, to: usize) -> bool {
        self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self.links.contains(&(from.min(to), from.max(to)))
            || self.one_way.contains(&(from, to))
    }
}

/// How peer traffic flows, and so how it is cut.
enum Net {
    /// One TCP proxy per ordered pair on 127.0.0.1 (a cut closes connections; one-way cuts
    /// and slow links cannot be made).
    Proxies(HashMap<(usize, usize), Proxy>),
    /// Each partition on a host of its own (a network namespace): cuts drop packets.
    Hosts(netns::Namespaces),
}

/// How [`Cluster::start_inner`] starts a pool.
pub(crate) struct Opts<'a> {
    pool_name: &'a str,
    extend: Option<PathBuf>,
    /// Put each partition on a host of its own (network namespaces) when the machine allows.
    hosts: bool,
    /// A pool on hosts of its own whose network this one's joins (two sites, one link).
    join: Option<&'a Cluster>,
}

pub struct Cluster {
    _tmp: tempfile::TempDir,
    /// The pool directory (CA, issuer, one directory per partition).
    pub dir: PathBuf,
    pub configs: Vec<PathBuf>,
    pub cfgs: Vec<PartitionConfig>,
    children: Mutex<Vec<Option<Child>>>,
    net: Net,
    /// Why the pool is not on hosts of its own, when it was asked to be.
    pub hosts_refused: Option<String>,
    cuts: Mutex<Cuts>,
    token: String,
    pub http: reqwest::Client,
    /// `serve --region-config` of a replica region's partitions (region.rs).
    region_config: Option<PathBuf>,
}

pub mod netns;
mod region;

/// Name of the test pool.
const POOL: &str = "faults";

impl<'a> Opts<'a> {
    fn pool(pool_name: &'a str) -> Opts<'a> {
        Opts {
            pool_name,
            extend: None,
            hosts: false,
            join: None,
        }
    }
}

/// Move the pool's partitions onto the hosts of `ns`: each listens on its host's address
/// (same port), its peers are reached there, and its certificate names that address too.
fn place_on_hosts(dir: &std::path::Path, ns: &netns::Namespaces, cfgs: &mut [PartitionConfig]) {
    let ca = keystead_partition::pki::CaMaterial {
        cert_pem: std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("ca-key.pem")).unwrap(),
    };
    let mut urls = Vec::new();
    for (i, cfg) in cfgs.iter_mut().enumerate() {
        let port = cfg.listen.rsplit_once(':').unwrap().1.to_string();
        let addr = ns.addr(i);
        cfg.listen = format!("{addr}:{port}");
        cfg.public_url = format!("https://{addr}:{port}");
        urls.push(cfg.public_url.clone());
        let leaf = keystead_partition::pki::issue_leaf(
            &ca,
            &cfg.partition_id,
            &["localhost".to_string()],
            &["127.0.0.1".parse().unwrap(), std::net::IpAddr::V4(addr)],
            30,
        )
        .unwrap();
        std::fs::write(&cfg.tls.cert_file, &leaf.cert_pem).unwrap();
        keystead_partition::fsutil::write_private(&cfg.tls.key_file, leaf.key_pem.as_bytes())
            .unwrap();
    }
    for cfg in cfgs.iter_mut() {
        for (b, url) in urls.iter().enumerate() {
            cfg.peers[b].url = url.clone();
        }
    }
    // The pool file names the hosts too (a region extending this pool reaches them there).
    let pool_json = dir.join("pool.json");
    let mut pool: Value = serde_json::from_slice(&std::fs::read(&pool_json).unwrap()).unwrap();
    pool["endpoints"] = serde_json::json!(urls);
    std::fs::write(&pool_json, serde_json::to_vec_pretty(&pool).unwrap()).unwrap();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let children = self.children.get_mut().unwrap_or_else(|p| p.into_inner());
        for c in children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A failed test keeps the partitions' logs (the pool directory goes with the test).
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!(
                "keystead-failed-{}-{}",
                std::process::id(),
                self.dir
                    .parent()
                    .and_then(|p| p.file_name())
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ));
            self.keep_logs(&keep, "");
        }
    }
}

impl Cluster {
    /// Copy the partitions' logs to `keep` as `<prefix>p<i>.stderr.log` (a failed test keeps
    /// them: the pool directory goes with the test).
    pub fn keep_logs(&self, keep: &std::path::Path, prefix: &str) {
        if std::fs::create_dir_all(keep).is_err() {
            return;
        }
        for (i, cfg) in self.configs.iter().enumerate() {
            let _ = std::fs::copy(
                cfg.with_file_name("stderr.log"),
                keep.join(format!("{prefix}p{i}.stderr.log")),
            );
        }
        eprintln!(
            "the partitions' logs ({prefix}p*) are kept in {}",
            keep.display()
        );
    }
}

/// The partition binary: this build's, or `KEYSTEAD_TEST_PARTITION_BIN` (a long fault run
/// keeps a copy of the binary it started with while the tree is rebuilt).
pub fn bin() -> PathBuf {
    std::env::var_os("KEYSTEAD_TEST_PARTITION_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_keystead-partition")))
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_inner(|_, _| {}, |_, _| {}, Opts::pool(POOL)).await
    }

    /// [`Cluster::start`] with each partition on a host of its own (a network namespace,
    /// see `netns.rs`) where the machine allows it, else on loopback proxies
    /// ([`Cluster::network`] says which, and why).
    pub async fn start_on_hosts() -> Cluster {
        Self::start_on_hosts_with(|_, _| {}).await
    }

    /// [`Cluster::start_on_hosts`] after `edit` changed partition `i`'s configuration.
    pub async fn start_on_hosts_with(edit: impl Fn(usize, &mut PartitionConfig)) -> Cluster {
        Self::start_inner(
            edit,
            |_, _| {},
            Opts {
                hosts: true,
                ..Opts::pool(POOL)
            },
        )
        .await
    }

    /// How the pool's peer traffic flows, for a test's output.
    pub fn network(&self) -> String {
        match (&self.net, &self.hosts_refused) {
            (Net::Hosts(ns), _) => format!(
                "each partition on a host of its own (network namespaces {}…{}, bridge, real packet loss; slow links by tc tbf; no tc netem in this kernel: no fixed delay or random loss)",
                ns.ns(0),
                ns.ns(N - 1)
            ),
            (Net::Proxies(_), Some(why)) => format!(
                "loopback-only fallback (TCP proxies on 127.0.0.1; no one-way cuts, no slow links): network namespaces unavailable: {why}"
            ),
            (Net::Proxies(_), None) => "loopback TCP proxies on 127.0.0.1".into(),
        }
    }

    /// Whether cuts drop packets on hosts of their own (one-way cuts and slow links work).
    pub fn on_hosts(&self) -> bool {
        matches!(self.net, Net::Hosts(_))
    }

    /// Start the pool after `edit` changed partition `i`'s configuration.
    pub async fn start_with(edit: impl Fn(usize, &mut PartitionConfig)) -> Cluster {
        Self::start_inner(edit, |_, _| {}, Opts::pool(POOL)).await
    }

    /// [`Cluster::start`], calling `edit(pool directory, configuration files)` after the
    /// configurations are written and before any partition starts (the configurations are
    /// read back without validation: a test may start partitions with a configuration they
    /// refuse).
    pub async fn start_with_files(edit: impl FnOnce(&std::path::Path, &[PathBuf])) -> Cluster {
        Self::start_inner(|_, _| {}, edit, Opts::pool(POOL)).await
    }

    pub(crate) async fn start_inner(
        edit: impl Fn(usize, &mut PartitionConfig),
        edit_files: impl FnOnce(&std::path::Path, &[PathBuf]),
        opts: Opts<'_>,
    ) -> Cluster {
        let Opts {
            pool_name,
            extend,
            hosts,
            join,
        } = opts;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pool");
        let (configs, pool) = prepare(&LocalOptions {
            dir: dir.clone(),
            partitions: N,
            pool_name: pool_name.into(),
            extend: extend.clone(),
            read_consistency: None,
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
        let (hosts, hosts_refused) = if hosts {
            match netns::Namespaces::create(N) {
                Ok(ns) => (Some(ns), None),
                Err(why) => (None, Some(why)),
            }
        } else {
            (None, None)
        };
        let net = match hosts {
            Some(ns) => {
                place_on_hosts(&dir, &ns, &mut cfgs);
                if let Some(Net::Hosts(other)) = join.map(|c| &c.net) {
                    ns.join(other)
                        .unwrap_or_else(|e| panic!("cannot join the two pools' networks: {e}"));
                }
                Net::Hosts(ns)
            }
            None => {
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
                Net::Proxies(proxies)
            }
        };
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
            net,
            hosts_refused,
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
        let mut command = match &self.net {
            Net::Hosts(ns) if i < N => ns.command(i, &bin()),
            _ => Command::new(bin()),
        };
        command.arg("serve").arg("--config").arg(&self.configs[i]);
        if let Some(r) = &self.region_config {
            command.arg("--region-config").arg(r);
        }
        let child = command
            .env(
                "KEYSTEAD_LOG",
                std::env::var("KEYSTEAD_TEST_PARTITION_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("KEYSTEAD_FAULT_SYNC_LEDGER", self.ledger(i))
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
        Some(format!(
            "exited with {status}; stderr tail:\n{}",
            self.log_tail(i, 40)
        ))
    }

    /// The last `lines` lines of partition `i`'s stderr log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let log = std::fs::read_to_string(self.configs[i].with_file_name("stderr.log"))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Stop every partition, start it again, and wait until each holds the domain again.
    pub async fn restart_all(&self) {
        for i in 0..N {
            self.kill(i);
        }
        for i in 0..N {
            self.spawn(i);
        }
        for i in 0..N {
            self.until("the restarted partition holds the domain", 90, || {
                self.domain_loaded(i)
            })
            .await;
        }
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
        let _ = std::fs::remove_file(self.ledger(i));
    }

    /// Where partition `i` records the durable length of its logs after each fsync
    /// (`KEYSTEAD_FAULT_SYNC_LEDGER`), for [`Cluster::power_loss`].
    fn ledger(&self, i: usize) -> PathBuf {
        self.configs[i].with_file_name("sync.ledger")
    }

    /// A power loss of partition `i`, simulated in its storage (the kernel cannot drop a
    /// process's unsynced pages): SIGKILL, then every log loses what a power loss may lose —
    /// the bytes written after its last fsync (by the partition's ledger) are cut at a point
    /// chosen by `r`, or left as zeros (a file whose length reached the disk before its
    /// data); the audit log, which is not fsync'd per record, is torn inside its last record.
    /// What was dropped, for the fault log.
    pub fn power_loss(&self, i: usize, mut r: u64) -> String {
        self.kill(i);
        let mut durable: BTreeMap<PathBuf, u64> = BTreeMap::new();
        for line in std::fs::read_to_string(self.ledger(i))
            .unwrap_or_default()
            .lines()
        {
            if let Some((len, path)) = line.split_once('\t')
                && let Ok(len) = len.parse()
            {
                durable.insert(PathBuf::from(path), len);
            }
        }
        let mut next = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r
        };
        let mut what = Vec::new();
        for (path, keep) in &durable {
            let Ok(len) = std::fs::metadata(path).map(|m| m.len()) else {
                continue;
            };
            if len <= *keep {
                continue;
            }
            let cut = keep + next() % (len - keep + 1);
            tear(path, cut, next() % 2 == 0);
            what.push(format!(
                "{}: {} unsynced bytes, cut at +{}",
                path.file_name().unwrap().to_string_lossy(),
                len - keep,
                cut - keep
            ));
        }
        let audit = self.cfgs[i].audit_file();
        if let Ok(bytes) = std::fs::read(&audit)
            && bytes.len() > 1
        {
            let last = bytes[..bytes.len() - 1]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |p| p + 1);
            let span = (bytes.len() - last) as u64;
            let cut = last as u64 + 1 + next() % span;
            if cut < bytes.len() as u64 {
                tear(&audit, cut, next() % 2 == 0);
                what.push(format!(
                    "audit log torn {} bytes into its last record",
                    cut - last as u64
                ));
            }
        }
        if what.is_empty() {
            "nothing unsynced".into()
        } else {
            what.join("; ")
        }
    }

    /// Cut partition `i` off from its peers (both ways), or reconnect it. Links cut with
    /// [`Cluster::cut_link`] and other isolated partitions stay cut.
    pub fn isolate(&self, i: usize, cut: bool) {
        let mut cuts = self.cuts.lock().unwrap();
        if cut {
            cuts.isolated.insert(i);
        } else {
            cuts.isolated.remove(&i);
        }
        self.apply_cuts(&cuts);
    }

    /// Cut the link between partitions `a` and `b` (both ways), or reconnect it: each of
    /// them still reaches the third partition (which bridges them).
    pub fn cut_link(&self, a: usize, b: usize, cut: bool) {
        let mut cuts = self.cuts.lock().unwrap();
        let pair = (a.min(b), a.max(b));
        if cut {
            cuts.links.insert(pair);
        } else {
            cuts.links.remove(&pair);
        }
        self.apply_cuts(&cuts);
    }

    /// Drop what partition `from` sends to partition `to` (their answers still arrive), or
    /// pass it again. Only on hosts of their own ([`Cluster::on_hosts`]).
    pub fn cut_one_way(&self, from: usize, to: usize, cut: bool) {
        assert!(self.on_hosts(), "one-way cuts need hosts of their own");
        let mut cuts = self.cuts.lock().unwrap();
        if cut {
            cuts.one_way.insert((from, to));
        } else {
            cuts.one_way.remove(&(from, to));
        }
        self.apply_cuts(&cuts);
    }

    /// Make everything partition `i` sends trickle out at `kbit` kbit/s, or lift it. Only on
    /// hosts of their own.
    pub fn slow(&self, i: usize, kbit: Option<u32>) {
        match &self.net {
            Net::Hosts(ns) => ns.set_slow(i, kbit),
            Net::Proxies(_) => panic!("slow links need hosts of their own"),
        }
    }

    /// Cut the link between this pool's hosts and `other`'s (joined when `other` was
    /// started with this one to join), or restore it. Both pools keep serving their own
    /// clients (the test process reaches each on a leg of its own). Only when both are on
    /// hosts of their own.
    pub fn cut_region_link(&self, other: &Cluster, cut: bool) {
        match (&self.net, &other.net) {
            (Net::Hosts(a), Net::Hosts(b)) => a.set_joined(b, !cut),
            _ => panic!("region link cuts need both pools on hosts of their own"),
        }
    }

    /// Reconnect everything.
    pub fn heal_network(&self) {
        let mut cuts = self.cuts.lock().unwrap();
        *cuts = Cuts::default();
        self.apply_cuts(&cuts);
    }

    fn apply_cuts(&self, cuts: &Cuts) {
        match &self.net {
            Net::Proxies(proxies) => {
                for ((a, b), p) in proxies {
                    // A connection carries both directions: either one cut cuts it.
                    let off = cuts.drops(*a, *b) || cuts.drops(*b, *a);
                    p.on.send_replace(!off);
                }
            }
            Net::Hosts(ns) => {
                for a in 0..N {
                    for b in (0..N).filter(|b| *b != a) {
                        ns.set_cut(a, b, cuts.drops(a, b));
                    }
                }
            }
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

    /// Value of the gauge or counter `name` in partition `i`'s `/metrics`.
    pub async fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.url(i)))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
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

/// Keep the first `at` bytes of `path`; with `zeros`, the rest of its length stays as zeros.
fn tear(path: &std::path::Path, at: u64, zeros: bool) {
    let len = std::fs::metadata(path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(at).unwrap();
    if zeros {
        f.set_len(len).unwrap();
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
