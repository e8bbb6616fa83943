//! Service addresses (what kube-proxy does): the dev cluster's Service CIDR is on loopback, so
//! for every TCP port of every ClusterIP Service the agent listens on `clusterIP:port` and
//! forwards each connection to a ready endpoint of the Service's EndpointSlices.

use crate::Agent;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// `ns/name` and the Service port's name, number.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Frontend {
    ns: String,
    service: String,
    port_name: String,
    addr: SocketAddr,
}

pub async fn run(agent: Arc<Agent>) -> anyhow::Result<()> {
    let mut listeners: HashMap<Frontend, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let changed = agent.caches.changed.notified();
        let wanted = frontends(&agent.caches.services.state());
        listeners.retain(|f, task| {
            let keep = wanted.contains(f) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for f in wanted {
            if listeners.contains_key(&f) {
                continue;
            }
            match TcpListener::bind(f.addr).await {
                Ok(l) => {
                    tracing::debug!(service = %f.service, addr = %f.addr, "proxying");
                    listeners.insert(f.clone(), tokio::spawn(serve(agent.clone(), f, l)));
                }
                Err(e) => {
                    tracing::warn!(service = %f.service, addr = %f.addr, error = %e, "cannot listen")
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), changed).await;
    }
}

fn frontends(services: &[Arc<Service>]) -> Vec<Frontend> {
    let mut out = Vec::new();
    for s in services {
        let Some(spec) = &s.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|i| i.parse::<IpAddr>().ok())
        else {
            continue;
        };
        if !ip.is_loopback() {
            continue;
        }
        for p in spec.ports.iter().flatten() {
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            out.push(Frontend {
                ns: s.metadata.namespace.clone().unwrap_or_default(),
                service: s.metadata.name.clone().unwrap_or_default(),
                port_name: p.name.clone().unwrap_or_default(),
                addr: SocketAddr::new(ip, p.port as u16),
            });
        }
    }
    out
}

/// Ready endpoints of the Service's port named `port_name`.
fn backends(slices: &[Arc<EndpointSlice>], f: &Frontend) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in slices {
        let labels = s.metadata.labels.clone().unwrap_or_default();
        if s.metadata.namespace.as_deref() != Some(&f.ns)
            || labels.get("kubernetes.io/service-name") != Some(&f.service)
        {
            continue;
        }
        let port = s.ports.iter().flatten().find(|p| {
            p.name.clone().unwrap_or_default() == f.port_name
                && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        });
        let Some(port) = port.and_then(|p| p.port) else {
            continue;
        };
        for e in &s.endpoints {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.push(SocketAddr::new(ip, port as u16));
                }
            }
        }
    }
    out
}

async fn serve(agent: Arc<Agent>, f: Frontend, listener: TcpListener) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let candidates = backends(&agent.caches.slices.state(), &f);
        let start = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            // Round robin; an endpoint that refuses is skipped (as a connection retry would).
            for i in 0..candidates.len() {
                let b = candidates[(start + i) % candidates.len()];
                let Ok(Ok(mut outbound)) =
                    tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(b)).await
                else {
                    continue;
                };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                return;
            }
        });
    }
}
