//! Container probes (startup, liveness, readiness) with the pod's own timing: `httpGet`
//! (HTTP or HTTPS, the certificate not verified, as a kubelet does) and `tcpSocket`.

use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum Check {
    Http {
        https: bool,
        port: u16,
        path: String,
    },
    Tcp {
        port: u16,
    },
}

#[derive(Debug, Clone)]
pub struct Probe {
    check: Check,
    period: Duration,
    timeout: Duration,
    failure_threshold: u32,
    success_threshold: u32,
    next: Instant,
    failures: u32,
    successes: u32,
    /// The probe's verdict so far (false until it first succeeds).
    pub ok: bool,
}

/// What a probe run concluded, for the caller to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unchanged,
    Succeeded,
    Failed,
}

fn port_of(container: &Value, port: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().map(|p| p as u16),
        Value::String(name) => container["ports"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == *name)?["containerPort"]
            .as_u64()
            .map(|p| p as u16),
        _ => None,
    }
}

impl Probe {
    /// The probe `which` (`startupProbe`, `livenessProbe`, `readinessProbe`) of a container.
    pub fn of(container: &Value, which: &str, started: Instant) -> Option<Probe> {
        let p = container.get(which)?;
        let check = if let Some(h) = p.get("httpGet") {
            Check::Http {
                https: h["scheme"].as_str() == Some("HTTPS"),
                port: port_of(container, &h["port"])?,
                path: h["path"].as_str().unwrap_or("/").to_string(),
            }
        } else if let Some(t) = p.get("tcpSocket") {
            Check::Tcp {
                port: port_of(container, &t["port"])?,
            }
        } else {
            // exec and gRPC probes are not run: the probe counts as passing.
            return None;
        };
        let secs = |k: &str, d: u64| Duration::from_secs(p[k].as_u64().unwrap_or(d));
        let initial_delay = secs("initialDelaySeconds", 0);
        Some(Probe {
            check,

            period: secs("periodSeconds", 10).max(Duration::from_secs(1)),
            timeout: secs("timeoutSeconds", 1).max(Duration::from_secs(1)),
            failure_threshold: p["failureThreshold"].as_u64().unwrap_or(3).max(1) as u32,
            success_threshold: p["successThreshold"].as_u64().unwrap_or(1).max(1) as u32,
            next: started + initial_delay,
            failures: 0,
            successes: 0,
            ok: false,
        })
    }

    pub fn due(&self) -> bool {
        self.next <= Instant::now()
    }

    /// Run the check against the pod's address.
    pub async fn run(&self, http: &reqwest::Client, ip: IpAddr) -> bool {
        match &self.check {
            Check::Http { https, port, path } => {
                let url = format!(
                    "{}://{}{path}",
                    if *https { "https" } else { "http" },
                    SocketAddr::new(ip, *port)
                );
                matches!(
                    tokio::time::timeout(self.timeout, http.get(&url).send()).await,
                    Ok(Ok(r)) if r.status().as_u16() >= 200 && r.status().as_u16() < 400
                )
            }
            Check::Tcp { port } => matches!(
                tokio::time::timeout(
                    self.timeout,
                    tokio::net::TcpStream::connect(SocketAddr::new(ip, *port))
                )
                .await,
                Ok(Ok(_))
            ),
        }
    }

    /// Count one result; the verdict changes after the thresholds.
    pub fn record(&mut self, passed: bool) -> Verdict {
        self.next = Instant::now() + self.period;
        if passed {
            self.failures = 0;
            self.successes += 1;
            if !self.ok && self.successes >= self.success_threshold {
                self.ok = true;
                return Verdict::Succeeded;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.failure_threshold
                && (self.ok || self.failures == self.failure_threshold)
            {
                self.ok = false;
                return Verdict::Failed;
            }
        }
        Verdict::Unchanged
    }

    /// Probe again at once (after the startup probe passed, readiness is checked immediately).
    pub fn now(&mut self) {
        self.next = Instant::now();
    }
}
