//! Pod addresses: one address per pod name (namespace/name) in the agent's pod network
//! (100.64.0.0/10, shared address space), kept across re-creation like a StatefulSet pod's
//! DNS name, persisted so a restarted agent keeps them, and added to the loopback interface
//! as a /32 (`ip addr add`) so the pod's process can bind it and every other process reach
//! it. (Loopback addresses are not allowed in Endpoints and EndpointSlices.)

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

pub struct Addresses {
    file: PathBuf,
    net: [u8; 2],
    table: Mutex<BTreeMap<String, Ipv4Addr>>,
}

impl Addresses {
    pub fn load(file: PathBuf, net: [u8; 2]) -> anyhow::Result<Self> {
        let table: BTreeMap<String, Ipv4Addr> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        for ip in table.values() {
            add_to_loopback(*ip)?;
        }
        Ok(Self {
            file,
            net,
            table: Mutex::new(table),
        })
    }

    /// The address of pod `ns/name`, allocated on first use.
    pub fn of(&self, ns: &str, name: &str) -> Ipv4Addr {
        let key = format!("{ns}/{name}");
        let mut t = self.table.lock().unwrap();
        if let Some(ip) = t.get(&key) {
            return *ip;
        }
        let ip = crate::pod_ip(self.net, t.len() as u32);
        if let Err(e) = add_to_loopback(ip) {
            tracing::error!(%ip, error = %e, "cannot add the pod address to the loopback interface");
        }
        t.insert(key, ip);
        let tmp = self.file.with_extension("json.tmp");
        let saved = serde_json::to_vec(&*t)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.file));
        if let Err(e) = saved {
            tracing::warn!(error = %e, "cannot save the address table");
        }
        ip
    }

    /// Remove every pod address from the loopback interface (the agent is stopping).
    pub fn release_all(&self) {
        for ip in self.table.lock().unwrap().values() {
            let _ = std::process::Command::new("ip")
                .args(["addr", "del", &format!("{ip}/32"), "dev", "lo"])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// `ip addr add IP/32 dev lo`; an address already there is fine.
fn add_to_loopback(ip: Ipv4Addr) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || err.contains("File exists") {
        return Ok(());
    }
    anyhow::bail!("ip addr add {ip}/32 dev lo: {}", err.trim())
}
