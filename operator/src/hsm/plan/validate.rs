//! Validation of a ManagedHsm beyond what the CRD schema (OpenAPI bounds and CEL) enforces.
//! Each problem is a typed [`InvalidSpec`]; the reconciler reports them in the `Ready`
//! condition (reason `InvalidSpec`) and an Event, and waits for the next change.

use crate::context::Settings;
use crate::crd::{ManagedHsm, SealMode};
use keystead_core::principal::{IssuerPrefix, PrefixProblem};
use std::collections::BTreeSet;

/// The longest pool name: the peers Service `<name>-peers` must stay a DNS-1035 label (63).
pub const MAX_POOL_NAME: usize = 57;

/// One reason a ManagedHsm cannot be reconciled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    #[error(
        "the pool name {name:?} is longer than {MAX_POOL_NAME} characters; its Services and pod names would not be valid DNS labels — use a shorter name"
    )]
    NameTooLong { name: String },
    #[error(
        "the pool name {name:?} is not a DNS-1035 label (lowercase letters, digits and '-', starting with a letter); Services need one — rename the pool"
    )]
    NameNotDns1035 { name: String },
    #[error("spec.partitions is {0}; v1alpha1 pools have exactly 3 partitions — set partitions: 3")]
    PartitionCount(i32),
    #[error(
        "spec.initialAdministrators contains an empty entry; list token subjects such as system:serviceaccount:<namespace>:<name>"
    )]
    EmptyAdministrator,
    #[error("spec.initialAdministrators lists {0:?} twice; remove the duplicate")]
    DuplicateAdministrator(String),
    #[error(
        "spec.seal.mode is SealingKeySecret but spec.seal.secret is not set; name the Secret holding `sealing-key` (32 random bytes)"
    )]
    SealSecretMissing,
    #[error(
        "spec.tls.renewBeforeDays ({renew}) must be smaller than spec.tls.certificateValidityDays ({validity}), or certificates would be re-issued on every reconcile"
    )]
    RenewBeforeNotBelowValidity { renew: i32, validity: i32 },
    #[error("spec.tls.extraDnsNames entry {0:?} is not a valid DNS name")]
    InvalidDnsName(String),
    #[error(
        "spec.image is empty; name the partition image (e.g. ghcr.io/keystead/keystead-partition:0.1.0)"
    )]
    EmptyImage,
    #[error("spec.replication: {0}")]
    Replication(String),
    #[error(
        "spec.authentication.issuers: issuer {issuer:?} has no principalPrefix; set one such as \"{suggestion}:\" — its tokens' subjects become principals `<prefix><subject>`, so it cannot mint the principals of the cluster's service accounts or of another issuer"
    )]
    PrincipalPrefixMissing { issuer: String, suggestion: String },
    #[error(
        "spec.authentication.issuers: issuer {issuer:?} is the cluster's own service-account issuer, which the pool always trusts (without a prefix); remove it from the list and use authentication.kubernetesServiceAccounts"
    )]
    ClusterIssuerListed { issuer: String },
    #[error("spec.authentication.issuers: {0}")]
    PrincipalPrefix(String),
    #[error(
        "spec.authentication.audience is empty; omit it (the pool's own default) or name the pool's resource"
    )]
    EmptyAudience,
}

impl InvalidSpec {
    /// A stable, PascalCase sub-reason (for Events and metric labels).
    pub fn code(&self) -> &'static str {
        match self {
            Self::NameTooLong { .. } => "NameTooLong",
            Self::NameNotDns1035 { .. } => "NameNotDns1035",
            Self::PartitionCount(_) => "PartitionCount",
            Self::EmptyAdministrator => "EmptyAdministrator",
            Self::DuplicateAdministrator(_) => "DuplicateAdministrator",
            Self::SealSecretMissing => "SealSecretMissing",
            Self::RenewBeforeNotBelowValidity { .. } => "RenewBeforeNotBelowValidity",
            Self::InvalidDnsName(_) => "InvalidDnsName",
            Self::EmptyImage => "EmptyImage",
            Self::Replication(_) => "Replication",
            Self::PrincipalPrefixMissing { .. } => "PrincipalPrefixMissing",
            Self::ClusterIssuerListed { .. } => "ClusterIssuerListed",
            Self::PrincipalPrefix(_) => "PrincipalPrefix",
            Self::EmptyAudience => "EmptyAudience",
        }
    }
}

/// Join the problems into one condition message.
pub fn message(problems: &[InvalidSpec]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn is_dns1035_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub fn is_dns_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// A prefix suggestion from an issuer URL: the first label of its host (`login` of
/// `https://login.example.com/t`), else `idp`.
fn suggestion(issuer: &str) -> String {
    let host = issuer
        .strip_prefix("https://")
        .unwrap_or(issuer)
        .split(['/', ':', '.'])
        .next()
        .unwrap_or_default();
    if is_dns1035_label(host) {
        host.to_string()
    } else {
        "idp".to_string()
    }
}

/// Problems of `spec.authentication`: the audience, and the issuers' principal prefixes
/// (keystead_core::principal; the cluster's service-account issuer is the one without).
fn validate_authentication(hsm: &ManagedHsm, settings: &Settings, out: &mut Vec<InvalidSpec>) {
    let auth = &hsm.spec.authentication;
    if auth.audience.as_ref().is_some_and(|a| a.trim().is_empty()) {
        out.push(InvalidSpec::EmptyAudience);
    }
    let mut set = vec![IssuerPrefix {
        issuer: &settings.service_account_issuer,
        prefix: None,
    }];
    for i in &auth.issuers {
        if i.issuer == settings.service_account_issuer {
            out.push(InvalidSpec::ClusterIssuerListed {
                issuer: i.issuer.clone(),
            });
            continue;
        }
        match &i.principal_prefix {
            None => out.push(InvalidSpec::PrincipalPrefixMissing {
                issuer: i.issuer.clone(),
                suggestion: suggestion(&i.issuer),
            }),
            Some(p) => set.push(IssuerPrefix {
                issuer: &i.issuer,
                prefix: Some(p),
            }),
        }
    }
    for problem in keystead_core::principal::check(&set) {
        // Missing prefixes are reported above, per issuer.
        if !matches!(problem, PrefixProblem::TwoWithoutPrefix { .. }) {
            out.push(InvalidSpec::PrincipalPrefix(problem.to_string()));
        }
    }
}

/// Every problem of the spec, in a stable order; empty when the spec is valid.
pub fn validate(hsm: &ManagedHsm, settings: &Settings) -> Vec<InvalidSpec> {
    let mut out = Vec::new();
    let name = hsm.metadata.name.clone().unwrap_or_default();
    if name.len() > MAX_POOL_NAME {
        out.push(InvalidSpec::NameTooLong { name: name.clone() });
    } else if !is_dns1035_label(&name) {
        out.push(InvalidSpec::NameNotDns1035 { name: name.clone() });
    }
    let spec = &hsm.spec;
    if spec.partitions != 3 {
        out.push(InvalidSpec::PartitionCount(spec.partitions));
    }
    if spec.image.trim().is_empty() {
        out.push(InvalidSpec::EmptyImage);
    }
    let mut seen = BTreeSet::new();
    for admin in &spec.initial_administrators {
        if admin.trim().is_empty() {
            out.push(InvalidSpec::EmptyAdministrator);
        } else if !seen.insert(admin.as_str()) {
            out.push(InvalidSpec::DuplicateAdministrator(admin.clone()));
        }
    }
    if spec.seal.mode == SealMode::SealingKeySecret && spec.seal.secret.is_none() {
        out.push(InvalidSpec::SealSecretMissing);
    }
    if spec.tls.renew_before_days >= spec.tls.certificate_validity_days {
        out.push(InvalidSpec::RenewBeforeNotBelowValidity {
            renew: spec.tls.renew_before_days,
            validity: spec.tls.certificate_validity_days,
        });
    }
    for dns in &spec.tls.extra_dns_names {
        if !is_dns_name(dns) {
            out.push(InvalidSpec::InvalidDnsName(dns.clone()));
        }
    }
    if let Some(r) = &spec.replication {
        out.extend(
            crate::replication::plan::validate(r)
                .into_iter()
                .map(InvalidSpec::Replication),
        );
    }
    validate_authentication(hsm, settings, &mut out);
    out
}
