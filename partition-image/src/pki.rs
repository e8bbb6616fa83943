//! The pool's internal PKI: a CA and the partitions' TLS certificates.
//!
//! In Kubernetes the operator keeps the CA in a Secret and issues each partition's
//! certificate; in local mode the runner generates them into the pool directory (files of
//! mode 0600; a development setting, see docs/local-pool.md).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};

/// A CA certificate and its private key, both PEM.
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaMaterial")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A leaf certificate and its private key, both PEM.
pub struct LeafMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for LeafMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafMaterial")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Generate a new pool CA (ECDSA P-256).
pub fn generate_ca(common_name: &str, validity_days: i64) -> anyhow::Result<CaMaterial> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Keystead");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(validity_days);
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issue a certificate usable for both TLS server and client authentication (partitions
/// use one certificate for the data plane and for mutual TLS between peers).
pub fn issue_leaf(
    ca: &CaMaterial,
    common_name: &str,
    dns_names: &[String],
    ips: &[IpAddr],
    validity_days: i64,
) -> anyhow::Result<LeafMaterial> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns_names.to_vec())?;
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(validity_days);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(LeafMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_chains_to_ca() {
        let ca = generate_ca("test CA", 30).unwrap();
        let leaf = issue_leaf(
            &ca,
            "p0",
            &["localhost".to_string()],
            &["127.0.0.1".parse().unwrap()],
            1,
        )
        .unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!format!("{ca:?}{leaf:?}").contains("PRIVATE"));
        // rustls accepts the pair with the CA as root.
        let cfg = crate::tls::server_config(&leaf.cert_pem, &leaf.key_pem, None).unwrap();
        assert!(!cfg.alpn_protocols.is_empty());
    }
}
