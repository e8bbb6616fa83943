//! Pod addresses: one loopback address per pod name (namespace/name), kept across
//! re-creation like a StatefulSet pod's DNS name, persisted so a restarted agent keeps them.

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
        let table = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
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
}
