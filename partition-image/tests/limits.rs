//! The listener and the request workers under abuse, on real `keystead-partition serve`
//! processes (docs/limits.md):
//!
//! - a TLS handshake that never finishes, request headers dribbled byte by byte and idle
//!   connections (HTTP/1.1 and HTTP/2) are closed by the partition;
//! - connections over `limits.maxConnections` wait until a slot frees, and are served then;
//! - at the open-files limit the accept loop backs off and logs sparingly, and serves again
//!   once descriptors are free;
//! - `/healthz` is answered while RSA-4096 keys are being generated.

mod cluster;
mod common;

use keystead_partition::local::{ADMIN_SUBJECT, LocalPki, free_port};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One `keystead-partition serve` process: a pool of one partition (no peers).
struct Partition {
    _tmp: tempfile::TempDir,
    child: Child,
    addr: String,
    url: String,
    ca_pem: String,
    token: String,
    log: PathBuf,
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Partition {
    /// Start a partition whose configuration has `limits` (when not null), with `nofile` as
    /// its open-files limit (when given); wait until it answers `/healthz`.
    async fn start(limits: Value, nofile: Option<u32>) -> Partition {
        let tmp = tempfile::tempdir().unwrap();
        let pki = LocalPki::open_or_create(&tmp.path().join("pool"), "limits").unwrap();
        let (cfg_path, cfg) = pki.partition("p0", free_port().unwrap(), &[]).unwrap();
        let mut v = serde_json::to_value(&cfg).unwrap();
        if !limits.is_null() {
            v["limits"] = limits;
        }
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        let log = tmp.path().join("stderr.log");
        let mut cmd = match nofile {
            // `ulimit` of the shell, then exec: the partition keeps the shell's pid.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(cluster::bin());
                c
            }
            None => Command::new(cluster::bin()),
        };
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .env("KEYSTEAD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let token = pki
            .issuer
            .issue(ADMIN_SUBJECT, &cfg.audience(), Duration::from_secs(3600))
            .unwrap();
        let mut p = Partition {
            _tmp: tmp,
            child,
            addr: cfg.listen.clone(),
            url: cfg.public_url.clone(),
            ca_pem: std::fs::read_to_string(&cfg.tls.ca_file).unwrap(),
            token,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !p.healthy().await {
            if let Some(s) = p.child.try_wait().unwrap() {
                panic!("the partition exited with {s}:\n{}", p.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "the partition did not answer /healthz:\n{}",
                p.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client that opens a fresh connection for every request.
    fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap()
    }

    async fn healthy(&self) -> bool {
        matches!(
            self.http().get(format!("{}/healthz", self.url)).send().await,
            Ok(r) if r.status() == StatusCode::OK
        )
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut req = self
            .http()
            .request(method, format!("{}{path}{sep}api-version=7.5", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let s = resp.status();
        let text = resp.text().await.unwrap();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A TLS connection offering only `alpn`, handshake finished.
    async fn tls(
        &self,
        alpn: &[&str],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(&self.addr).await?;
        self.handshake(tcp, alpn).await
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
        alpn: &[&str],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut cfg = keystead_partition::tls::client_config(&self.ca_pem, None).unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await
    }

    /// The process's CPU time (user + system) in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }
}

/// Read from `io` until the peer closes it (EOF or an error); everything read, or None if
/// it is still open at the deadline.
async fn closed_within<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    deadline: Duration,
) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + deadline;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(end, io.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Deadline for the partition to close a connection whose configured limit is 2 s.
const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn an_unfinished_tls_handshake_is_closed() {
    let p = Partition::start(json!({"tlsHandshakeTimeoutSeconds": 2}), None).await;
    // A connection that sends nothing, and one that stops in the middle of a ClientHello.
    let mut silent = TcpStream::connect(&p.addr).await.unwrap();
    let mut partial = TcpStream::connect(&p.addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    for (what, conn) in [("silent", &mut silent), ("partial", &mut partial)] {
        assert!(
            closed_within(conn, CLOSE_DEADLINE).await.is_some(),
            "the {what} handshake was still open after {CLOSE_DEADLINE:?}"
        );
    }
    assert!(p.healthy().await);
}

#[tokio::test]
async fn dribbled_request_headers_are_cut_off() {
    let p = Partition::start(json!({"headerReadTimeoutSeconds": 2}), None).await;
    let tls = p.tls(&["http/1.1"]).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let reader = tokio::spawn(async move { closed_within(&mut rd, CLOSE_DEADLINE).await });
    // A request head that never ends: one byte every 100 ms (the slowloris pattern).
    wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        for b in b"X-Slow: ".iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let got = reader.await.unwrap();
    dribble.abort();
    let got = got.unwrap_or_else(|| {
        panic!("a request head dribbled for {CLOSE_DEADLINE:?} still held its connection")
    });
    assert!(
        !String::from_utf8_lossy(&got).contains(" 200 "),
        "the dribbled request was served: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(p.healthy().await);
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let p = Partition::start(
        json!({"idleTimeoutSeconds": 2, "headerReadTimeoutSeconds": 60}),
        None,
    )
    .await;
    // HTTP/1.1: one request, then silence on the kept-alive connection.
    let mut h1 = p.tls(&["http/1.1"]).await.unwrap();
    h1.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = h1.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut h1, CLOSE_DEADLINE).await.is_some(),
        "an idle HTTP/1.1 connection was still open after {CLOSE_DEADLINE:?}"
    );
    // HTTP/2: the preface and an empty SETTINGS frame, then no request — only pings, which
    // do not keep a connection open.
    let h2 = p.tls(&["h2"]).await.unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut rd, mut wr) = tokio::io::split(h2);
    wr.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let pinger = tokio::spawn(async move {
        loop {
            // PING: length 8, type 6, no flags, stream 0, 8 bytes of opaque data.
            let ping = b"\0\0\x08\x06\0\0\0\0\0keystead";
            if wr.write_all(ping).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let closed = closed_within(&mut rd, CLOSE_DEADLINE).await;
    pinger.abort();
    assert!(
        closed.is_some(),
        "an HTTP/2 connection without requests was still open after {CLOSE_DEADLINE:?}"
    );
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let long = json!({
        "maxConnections": 3,
        "tlsHandshakeTimeoutSeconds": 120,
        "headerReadTimeoutSeconds": 120,
        "idleTimeoutSeconds": 120,
    });
    let p = Partition::start(long, None).await;
    // Three connections hold every slot (a finished handshake shows each was accepted).
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(p.tls(&["http/1.1"]).await.unwrap());
    }
    // A fourth is not served while they are open: its handshake does not finish.
    let tcp = TcpStream::connect(&p.addr).await.unwrap();
    let p = Arc::new(p);
    let fourth = {
        let p = p.clone();
        tokio::spawn(async move { p.handshake(tcp, &["http/1.1"]).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await; // an observation window
    assert!(
        !fourth.is_finished(),
        "a connection over the cap was accepted: {:?}",
        fourth.await.unwrap().map(|_| ())
    );
    // One slot frees: the waiting connection is served.
    drop(held.pop());
    let mut fourth = tokio::time::timeout(CLOSE_DEADLINE, fourth)
        .await
        .expect("the waiting connection was not served after a slot freed")
        .unwrap()
        .unwrap();
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut fourth, CLOSE_DEADLINE).await.unwrap();
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // Everything released: fresh connections are served.
    drop(held);
    assert!(p.healthy().await);
}

#[tokio::test]
async fn accept_errors_back_off_and_are_logged_sparingly() {
    let long = json!({
        "maxConnections": 100000,
        "tlsHandshakeTimeoutSeconds": 120,
        "headerReadTimeoutSeconds": 120,
        "idleTimeoutSeconds": 120,
    });
    let p = Partition::start(long, Some(128)).await;
    // More connections than the partition has descriptors: accept() fails with EMFILE and
    // the rest wait in the listen backlog.
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(TcpStream::connect(&p.addr).await.unwrap());
    }
    let accept_errors = |text: &str| {
        text.lines()
            .filter(|l| l.contains("accept") && l.contains("open files"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while accept_errors(&p.log_text()) == 0 {
        assert!(
            Instant::now() < deadline,
            "the partition never reported running out of descriptors:\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Out of descriptors for a measured window: few log lines, little CPU.
    let (lines, ticks, start) = (accept_errors(&p.log_text()), p.cpu_ticks(), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await; // the measurement window
    let window = start.elapsed();
    let logged = accept_errors(&p.log_text()) - lines;
    let cpu = Duration::from_millis((p.cpu_ticks() - ticks) * 10); // 100 ticks per second
    let log_size = std::fs::metadata(&p.log).unwrap().len();
    eprintln!("out of descriptors for {window:?}: {logged} log lines, {cpu:?} of CPU");
    assert!(
        logged <= 3,
        "{logged} accept-error lines in {window:?} (log now {log_size} bytes)"
    );
    assert!(
        cpu < window / 4,
        "the partition used {cpu:?} of CPU in {window:?} while out of descriptors"
    );
    // Descriptors free again: the partition serves.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !p.healthy().await {
        assert!(
            Instant::now() < deadline,
            "the partition did not serve again once descriptors were free"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_is_answered_while_rsa_keys_are_generated() {
    const KEYS: usize = 8;
    let p = Arc::new(Partition::start(Value::Null, None).await);
    // Activate the pool and give the administrator the Crypto User role.
    let (s, v) = p
        .call(
            Method::POST,
            "/securitydomain/download",
            Some(json!({"certificates": cluster::custodian_jwks(), "required": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, v) = p
        .call(
            Method::PUT,
            &format!(
                "/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            ),
            Some(json!({"properties": {
                "roleDefinitionId": format!("Microsoft.KeyVault/providers/Microsoft.Authorization/roleDefinitions/{}", keystead_core::rbac::CRYPTO_USER_ROLE_ID),
                "principalId": ADMIN_SUBJECT,
            }})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let creates: Vec<_> = (0..KEYS)
        .map(|i| {
            let p = p.clone();
            tokio::spawn(async move {
                p.call(
                    Method::POST,
                    &format!("/keys/rsa{i}/create"),
                    Some(json!({"kty": "RSA", "key_size": 4096})),
                )
                .await
            })
        })
        .collect();
    // The partition's own account of the generations in flight, from /metrics.
    let gauge = |text: &str, name: &str| -> usize {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    let mut most = 0;
    loop {
        let text = p
            .http()
            .get(format!("{}/metrics", p.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let running = gauge(&text, "keystead_key_generations_running");
        let waiting = gauge(&text, "keystead_key_generations_waiting");
        assert!(
            running <= cpus,
            "{running} generations ran at once on {cpus} CPUs"
        );
        most = most.max(running + waiting);
        if running + waiting == KEYS {
            break;
        }
        assert!(
            !creates.iter().all(|c| c.is_finished()),
            "every key generation finished before the partition answered while all {KEYS} were in flight (at most {most} seen in flight)"
        );
    }
    // All generations are in flight; a health check on a fresh connection is answered
    // before they are all done.
    assert!(p.healthy().await);
    let done = creates.iter().filter(|c| c.is_finished()).count();
    assert!(
        done < KEYS,
        "/healthz was answered only after every key generation"
    );
    for c in creates {
        let (s, v) = c.await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(v["key"]["kty"].as_str().unwrap().starts_with("RSA"), "{v}");
        // A 4096-bit modulus: 512 bytes, 683 base64url characters.
        assert_eq!(v["key"]["n"].as_str().unwrap().len(), 683, "{v}");
    }
}
