//! The pool's internal CA and the partitions' certificates (rcgen on aws-lc-rs).
//!
//! Pure decisions (`needs_renewal`, [`plan_tls`]) are separate from issuance so that the
//! rotation policy is tested without generating keys; [`material`] carries out the plan over
//! the Secrets the reconcile read (no API call here).

use crate::crd::TlsSpec;
use crate::pool::names::Names;
use k8s_openapi::api::core::v1::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// Errors of certificate handling. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "the stored {what} is not a valid PEM certificate: {reason}; delete the Secret to have it re-issued"
    )]
    BadCertificate { what: String, reason: String },
    #[error(
        "the stored private key of {what} cannot be read; delete the Secret to have it re-issued"
    )]
    BadKey { what: String },
    #[error("certificate issuance failed: {0}")]
    Issue(String),
}

/// A certificate with its private key (PKCS#8 PEM). Debug never shows the key.
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The TLS material of one pool: its CA and one certificate per partition (by pod name).
#[derive(Clone, Debug)]
pub struct TlsState {
    pub ca: CertAndKey,
    pub partitions: BTreeMap<String, CertAndKey>,
}

/// What [`plan_tls`] decided for one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertAction {
    Keep,
    /// Issue because none exists.
    Issue,
    /// Re-issue because it expires within `renewBeforeDays` (or is unreadable, or its CA was
    /// re-issued).
    Renew,
}

/// The rotation plan of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPlan {
    pub ca: CertAction,
    pub partitions: BTreeMap<String, CertAction>,
}

impl TlsPlan {
    pub fn is_noop(&self) -> bool {
        self.ca == CertAction::Keep && self.partitions.values().all(|a| *a == CertAction::Keep)
    }
}

/// True when a certificate expiring at `not_after` must be re-issued at `now`.
pub fn needs_renewal(
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    renew_before_days: i32,
) -> bool {
    not_after - Duration::days(i64::from(renew_before_days.max(0))) <= now
}

/// The notAfter of a PEM certificate.
pub fn cert_not_after(pem_text: &str, what: &str) -> Result<OffsetDateTime, TlsError> {
    let bad = |reason: String| TlsError::BadCertificate {
        what: what.to_string(),
        reason,
    };
    let block = pem::parse(pem_text.as_bytes()).map_err(|e| bad(e.to_string()))?;
    if block.tag() != "CERTIFICATE" {
        return Err(bad(format!(
            "PEM block is {}, not CERTIFICATE",
            block.tag()
        )));
    }
    let (_, cert) =
        x509_parser::parse_x509_certificate(block.contents()).map_err(|e| bad(e.to_string()))?;
    Ok(cert.validity().not_after.to_datetime())
}

/// Whether the certificate `pem` names every host of `names` (a DNS name, or an IP address
/// as an IP address entry).
pub fn names_cover(pem_text: &str, names: &[String]) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok(block) = pem::parse(pem_text.as_bytes()) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(block.contents()) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for n in &san.value.general_names {
        match n {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => ips.push(b.to_vec()),
            _ => {}
        }
    }
    names.iter().all(|n| match n.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ips.contains(&ip.octets().to_vec()),
        Ok(std::net::IpAddr::V6(ip)) => ips.contains(&ip.octets().to_vec()),
        Err(_) => dns.contains(n),
    })
}

/// Decide which certificates to keep, issue or renew. `existing_*` are the PEM certificates
/// found in the Secrets (the keys are not needed to decide).
pub fn plan_tls(
    existing_ca: Option<&str>,
    existing_partitions: &BTreeMap<String, String>,
    partitions: &[String],
    renew_before_days: i32,
    now: OffsetDateTime,
) -> TlsPlan {
    let decide = |pem: Option<&str>, what: &str| match pem {
        None => CertAction::Issue,
        Some(p) => match cert_not_after(p, what) {
            Ok(na) if !needs_renewal(na, now, renew_before_days) => CertAction::Keep,
            _ => CertAction::Renew,
        },
    };
    let ca = decide(existing_ca, "pool CA");
    let partitions = partitions
        .iter()
        .map(|p| {
            let action = if ca != CertAction::Keep {
                if existing_partitions.contains_key(p) {
                    CertAction::Renew
                } else {
                    CertAction::Issue
                }
            } else {
                decide(existing_partitions.get(p).map(String::as_str), p)
            };
            (p.clone(), action)
        })
        .collect();
    TlsPlan { ca, partitions }
}

fn validity(params: &mut CertificateParams, now: OffsetDateTime, days: i32) {
    // Back-date by five minutes for clock skew between nodes.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(i64::from(days.max(1)));
}

/// Generate a new pool CA (ECDSA P-256).
pub fn generate_ca(
    pool: &str,
    namespace: &str,
    validity_days: i32,
    now: OffsetDateTime,
) -> Result<CertAndKey, TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Issue(e.to_string()))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::Issue(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("keystead pool CA {namespace}/{pool}"),
    );
    dn.push(DnType::OrganizationName, "Keystead");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, now, validity_days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Issue(e.to_string()))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

/// Issue a partition certificate (server and client auth: clients and peers use it) signed
/// by the pool CA.
pub fn issue_partition_cert(
    ca: &CertAndKey,
    common_name: &str,
    dns_names: &[String],
    validity_days: i32,
    now: OffsetDateTime,
) -> Result<CertAndKey, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|_| TlsError::BadKey {
        what: "the pool CA".into(),
    })?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(|e| TlsError::BadCertificate {
            what: "pool CA".into(),
            reason: e.to_string(),
        })?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| TlsError::Issue(e.to_string()))?;
    let mut params =
        CertificateParams::new(dns_names.to_vec()).map_err(|e| TlsError::Issue(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Keystead");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, now, validity_days);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| TlsError::Issue(e.to_string()))?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
    })
}

impl From<TlsError> for crate::context::Cause {
    fn from(e: TlsError) -> Self {
        Self::Tls(Box::new(e))
    }
}

fn secret_str(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// The pool's TLS material from its CA and TLS Secrets as read: keep what is valid, issue or
/// renew the rest. Also returns what changed, in words (empty: nothing).
pub fn material(
    names: &Names,
    pods: &[String],
    spec: &TlsSpec,
    cluster_domain: &str,
    (ca_secret, tls_secret): (Option<&Secret>, Option<&Secret>),
    now: OffsetDateTime,
) -> Result<(TlsState, Vec<String>), TlsError> {
    let ca_pem = ca_secret.and_then(|s| secret_str(s, "tls.crt"));
    let ca_key = ca_secret
        .and_then(|s| secret_str(s, "tls.key"))
        .map(Zeroizing::new);
    let existing: BTreeMap<String, String> = pods
        .iter()
        .filter_map(|p| Some((p.clone(), secret_str(tls_secret?, &format!("{p}.crt"))?)))
        .collect();
    let plan = plan_tls(
        ca_pem.as_deref(),
        &existing,
        pods,
        spec.renew_before_days,
        now,
    );
    let mut changes = Vec::new();
    let ca = match (plan.ca.clone(), ca_pem, ca_key) {
        (CertAction::Keep, Some(cert_pem), Some(key_pem)) => CertAndKey { cert_pem, key_pem },
        (action, _, _) => {
            changes.push(format!("pool CA {action:?}"));
            generate_ca(&names.pool, &names.namespace, spec.ca_validity_days, now)?
        }
    };
    let mut partitions = BTreeMap::new();
    for pod in pods {
        let dns = names.partition_dns_names(pod, cluster_domain, &spec.extra_dns_names);
        // A certificate that does not name every host it must (spec.tls.extraDnsNames
        // changed) is re-issued like an expiring one.
        let keep = plan.partitions.get(pod) == Some(&CertAction::Keep)
            && changes.is_empty()
            && existing.get(pod).is_some_and(|pem| names_cover(pem, &dns));
        let existing_pair = tls_secret.and_then(|s| {
            Some(CertAndKey {
                cert_pem: secret_str(s, &format!("{pod}.crt"))?,
                key_pem: Zeroizing::new(secret_str(s, &format!("{pod}.key"))?),
            })
        });
        let pair = match (keep, existing_pair) {
            (true, Some(pair)) => pair,
            _ => {
                changes.push(format!("certificate of {pod}"));
                issue_partition_cert(&ca, pod, &dns, spec.certificate_validity_days, now)?
            }
        };
        partitions.insert(pod.clone(), pair);
    }
    Ok((TlsState { ca, partitions }, changes))
}
