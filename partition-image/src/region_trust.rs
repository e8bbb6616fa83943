//! Who a client certificate belongs to: a partition of this pool (pool CA) or a partition of
//! an accepted region (that region's CA, from the replicated state) — checked after the TLS
//! handshake, which accepts any client certificate whose key the client proves it holds
//! (docs/regions.md, Join).

use crate::state::AcceptedRegionRecord;
use crate::tls::{chain_verifier, verify_chain};
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

type Verifiers = Vec<(String, Arc<dyn ClientCertVerifier>)>;

/// The CAs of the accepted regions, rebuilt when the replicated list changes.
#[derive(Default)]
pub struct RegionTrust {
    current: RwLock<([u8; 32], Verifiers)>,
}

impl std::fmt::Debug for RegionTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegionTrust")
    }
}

fn digest(accepted: &BTreeMap<String, AcceptedRegionRecord>) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (name, r) in accepted {
        for part in [name.as_str(), r.ca_pem.as_str()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part.as_bytes());
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl RegionTrust {
    /// Follow the accepted regions of the state (cheap when nothing changed).
    pub fn sync(&self, accepted: &BTreeMap<String, AcceptedRegionRecord>) {
        let d = digest(accepted);
        if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == d {
            return;
        }
        let mut verifiers = Vec::new();
        for (name, r) in accepted {
            match chain_verifier(&r.ca_pem) {
                Ok(v) => verifiers.push((name.clone(), v)),
                Err(e) => {
                    tracing::warn!(region = %name, error = %format!("{e:#}"), "the accepted region's CA is unusable; its partitions are refused")
                }
            }
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (d, verifiers);
    }

    /// The accepted region whose CA issued `chain`, if any.
    pub fn region_of(&self, chain: &[CertificateDer<'_>]) -> Option<String> {
        let g = self.current.read().unwrap_or_else(|p| p.into_inner());
        g.1.iter()
            .find(|(_, v)| verify_chain(v.as_ref(), chain))
            .map(|(n, _)| n.clone())
    }
}

/// The client certificate chain of a connection (its key proven in the handshake), for the
/// region API to classify at each request — the accepted regions may change while a
/// connection stays open.
#[derive(Clone, Debug, Default)]
pub struct ClientChain(pub Arc<Vec<CertificateDer<'static>>>);

impl ClientChain {
    /// A certificate was presented, whatever issued it.
    pub fn presented(&self) -> bool {
        !self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn a_chain_is_attributed_to_the_region_whose_ca_issued_it_only() {
        let a = crate::pki::generate_ca("region a", 30).unwrap();
        let b = crate::pki::generate_ca("region b", 30).unwrap();
        let leaf = crate::pki::issue_leaf(&b, "p0", &["localhost".into()], &[], 30).unwrap();
        let trust = RegionTrust::default();
        let chain = [der(&leaf.cert_pem)];
        assert_eq!(trust.region_of(&chain), None, "nothing accepted yet");
        let mut accepted = BTreeMap::new();
        accepted.insert(
            "a".to_string(),
            AcceptedRegionRecord {
                ca_pem: a.cert_pem.clone(),
                added: 0,
            },
        );
        trust.sync(&accepted);
        assert_eq!(trust.region_of(&chain), None, "b is not accepted");
        accepted.insert(
            "b".to_string(),
            AcceptedRegionRecord {
                ca_pem: b.cert_pem.clone(),
                added: 0,
            },
        );
        trust.sync(&accepted);
        assert_eq!(trust.region_of(&chain).as_deref(), Some("b"));
        assert!(!verify_chain(
            chain_verifier(&a.cert_pem).unwrap().as_ref(),
            &chain
        ));
        assert_eq!(trust.region_of(&[]), None);
    }
}
