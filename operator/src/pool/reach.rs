//! How the operator reaches a pool's partitions: which pods are Ready and at which IP, the
//! pool's CA bundle, and a [`PoolClient`] with the operator's token for the pool's audience.

use super::client::{PoolClient, TokenSource};
use super::names::{Names, pool_audience};
use crate::crd::ManagedHsm;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{Api, Client, ResourceExt};
use std::net::IpAddr;

/// A pod is Ready (its `Ready` condition is True).
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod runs (phase `Running`) at an address: its process may answer even when it is not
/// Ready (not caught up, or waiting for the domain).
pub fn pod_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .is_some_and(|s| s.phase.as_deref() == Some("Running"))
        && pod_ip(pod).is_some()
}

/// A pod's IP (`status.podIP`).
pub fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Host name → IP of the pool's pods that have an address: how the operator reaches a
/// partition without depending on cluster DNS (TLS still verifies the host name).
pub fn partition_addresses(names: &Names, pods: &[Option<Pod>]) -> Vec<(String, IpAddr)> {
    pods.iter()
        .flatten()
        .filter_map(|p| Some((names.partition_host(&p.name_any()), pod_ip(p)?)))
        .collect()
}

/// The pool's CA certificate (PEM) from its CA bundle ConfigMap, if it exists yet.
pub async fn ca_bundle(client: &Client, names: &Names) -> Result<Option<String>, kube::Error> {
    Ok(
        Api::<ConfigMap>::namespaced(client.clone(), &names.namespace)
            .get_opt(&names.ca_bundle)
            .await?
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("ca.crt").cloned()),
    )
}

/// A client of the pool that trusts `ca_pem` only, reaches `pods` at their IPs and carries
/// the operator's token for the pool's audience; why not, in words.
pub async fn connect(
    tokens: &TokenSource,
    hsm: &ManagedHsm,
    names: &Names,
    ca_pem: &str,
    pods: &[Option<Pod>],
) -> Result<PoolClient, String> {
    let token = tokens
        .token(&pool_audience(hsm, names))
        .await
        .map_err(|e| e.to_string())?;
    PoolClient::new(ca_pem, token, &partition_addresses(names, pods)).map_err(|e| e.to_string())
}
