//! Principal namespaces: how the principals of different token issuers are kept apart.
//!
//! A pool may trust several issuers. The RBAC principal of a token is the issuer's
//! `principalPrefix` followed by the token's subject (`oid`, else `sub`), so two issuers can
//! never produce the same principal:
//!
//! - at most one issuer has no prefix (in Kubernetes: the cluster's service-account issuer;
//!   in a local pool: the local issuer);
//! - the non-empty prefixes are pairwise prefix-free (no prefix starts with another), so
//!   prefixed principals of different issuers differ;
//! - no prefix overlaps a [reserved namespace](RESERVED_NAMESPACES) of the prefix-less
//!   issuer (`partition:` — the partitions' workload identity — and `system:` — Kubernetes
//!   principals such as the operator's service account);
//! - the prefix-less issuer's tokens whose subject starts with another issuer's prefix are
//!   refused (checked when a token is validated).
//!
//! See docs/authentication.md, "Principal namespaces".

use std::fmt;

/// Principal namespaces that only the prefix-less issuer may produce: `partition:<id>` (the
/// workload identity of a local pool's partitions) and `system:` (Kubernetes principals:
/// `system:serviceaccount:<ns>:<name>` of the operator and of the partitions). A prefix may
/// neither start with one of these nor be the beginning of one.
pub const RESERVED_NAMESPACES: &[&str] = &["partition:", "system:"];

/// Longest principal prefix.
pub const MAX_PREFIX_LEN: usize = 64;

/// One trusted issuer and its principal prefix (`None`: no prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IssuerPrefix<'a> {
    pub issuer: &'a str,
    pub prefix: Option<&'a str>,
}

/// Why a set of issuers and prefixes is not acceptable. The messages name the field
/// `principalPrefix`; callers with other field paths reword them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixProblem {
    /// An issuer is listed twice (tokens would be checked against the first entry only).
    DuplicateIssuer { issuer: String },
    /// A prefix is empty or has characters other than printable ASCII without spaces, or
    /// is too long.
    Malformed { issuer: String, prefix: String },
    /// More than one issuer has no prefix.
    TwoWithoutPrefix { first: String, second: String },
    /// One prefix starts with the other (or they are equal).
    Overlap {
        issuer: String,
        prefix: String,
        other_issuer: String,
        other_prefix: String,
    },
    /// A prefix overlaps a reserved namespace.
    Reserved {
        issuer: String,
        prefix: String,
        reserved: &'static str,
    },
}

impl fmt::Display for PrefixProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateIssuer { issuer } => write!(
                f,
                "issuer {issuer:?} is listed twice; list each issuer once (give it every audience it needs)"
            ),
            Self::Malformed { issuer, prefix } => write!(
                f,
                "the principalPrefix {prefix:?} of issuer {issuer:?} is not valid: use 1 to {MAX_PREFIX_LEN} printable ASCII characters without spaces, such as \"entra:\", or omit it"
            ),
            Self::TwoWithoutPrefix { first, second } => write!(
                f,
                "issuers {first:?} and {second:?} both have no principalPrefix, so either could mint the other's principals; set principalPrefix (for example \"{}:\") on every issuer but one",
                suggestion(second)
            ),
            Self::Overlap {
                issuer,
                prefix,
                other_issuer,
                other_prefix,
            } => write!(
                f,
                "the principalPrefix {prefix:?} of issuer {issuer:?} and {other_prefix:?} of issuer {other_issuer:?} overlap (one starts with the other), so their principals could collide; choose prefixes where neither starts with the other, such as \"a:\" and \"b:\""
            ),
            Self::Reserved {
                issuer,
                prefix,
                reserved,
            } => write!(
                f,
                "the principalPrefix {prefix:?} of issuer {issuer:?} overlaps the reserved namespace {reserved:?} (partition workload identities and Kubernetes principals); choose a prefix that neither starts with {reserved:?} nor is the beginning of it"
            ),
        }
    }
}

impl std::error::Error for PrefixProblem {}

/// A readable prefix suggestion from an issuer URL: its host's first label (`login` of
/// `https://login.example.com/...`), or `idp`.
fn suggestion(issuer: &str) -> String {
    let host = issuer
        .split("://")
        .nth(1)
        .unwrap_or(issuer)
        .split(['/', ':', '.'])
        .next()
        .unwrap_or_default();
    if !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        host.to_ascii_lowercase()
    } else {
        "idp".to_string()
    }
}

/// Two prefixes overlap when one starts with the other (equal prefixes overlap).
pub fn overlap(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Is `prefix` an acceptable principal prefix on its own (not empty, printable ASCII without
/// spaces, at most [`MAX_PREFIX_LEN`])?
pub fn well_formed(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix.bytes().all(|b| b.is_ascii_graphic())
}

/// Every problem of a set of issuers (empty when the set is acceptable), in a stable order.
pub fn check(issuers: &[IssuerPrefix<'_>]) -> Vec<PrefixProblem> {
    let mut out = Vec::new();
    for (i, a) in issuers.iter().enumerate() {
        if issuers[..i].iter().any(|b| b.issuer == a.issuer) {
            out.push(PrefixProblem::DuplicateIssuer {
                issuer: a.issuer.to_string(),
            });
        }
    }
    let mut without: Option<&str> = None;
    for a in issuers {
        match a.prefix {
            None => match without {
                None => without = Some(a.issuer),
                Some(first) => out.push(PrefixProblem::TwoWithoutPrefix {
                    first: first.to_string(),
                    second: a.issuer.to_string(),
                }),
            },
            Some(p) if !well_formed(p) => out.push(PrefixProblem::Malformed {
                issuer: a.issuer.to_string(),
                prefix: p.to_string(),
            }),
            Some(p) => {
                if let Some(reserved) = RESERVED_NAMESPACES.iter().find(|r| overlap(p, r)) {
                    out.push(PrefixProblem::Reserved {
                        issuer: a.issuer.to_string(),
                        prefix: p.to_string(),
                        reserved,
                    });
                }
            }
        }
    }
    for (i, a) in issuers.iter().enumerate() {
        let Some(pa) = a.prefix.filter(|p| well_formed(p)) else {
            continue;
        };
        for b in &issuers[i + 1..] {
            if let Some(pb) = b.prefix.filter(|p| well_formed(p))
                && overlap(pa, pb)
            {
                out.push(PrefixProblem::Overlap {
                    issuer: a.issuer.to_string(),
                    prefix: pa.to_string(),
                    other_issuer: b.issuer.to_string(),
                    other_prefix: pb.to_string(),
                });
            }
        }
    }
    out
}

/// The principal of a token of `issuer` with subject `subject`, or the other issuer whose
/// namespace the principal would fall into (`Err((other issuer, its prefix))`).
///
/// With a valid configuration only the prefix-less issuer can be refused here (its subject
/// starts with another issuer's prefix); the check is general so that a configuration that
/// escaped [`check`] still cannot produce a colliding principal.
pub fn principal<'a>(
    issuers: &[IssuerPrefix<'a>],
    issuer: &str,
    subject: &str,
) -> Result<String, (&'a str, &'a str)> {
    let own = issuers
        .iter()
        .find(|i| i.issuer == issuer)
        .and_then(|i| i.prefix);
    let principal = format!("{}{subject}", own.unwrap_or_default());
    for other in issuers.iter().filter(|i| i.issuer != issuer) {
        if let Some(p) = other.prefix.filter(|p| !p.is_empty())
            && principal.starts_with(p)
        {
            return Err((other.issuer, p));
        }
    }
    if own.is_some_and(|p| !p.is_empty())
        && let Some(r) = RESERVED_NAMESPACES
            .iter()
            .find(|r| principal.starts_with(**r))
    {
        return Err((issuer_of_reserved(issuers), r));
    }
    Ok(principal)
}

/// The issuer that owns the reserved namespaces (the prefix-less one), for error messages.
fn issuer_of_reserved<'a>(issuers: &[IssuerPrefix<'a>]) -> &'a str {
    issuers
        .iter()
        .find(|i| i.prefix.is_none())
        .map_or("the issuer without a principal prefix", |i| i.issuer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip<'a>(issuer: &'a str, prefix: Option<&'a str>) -> IssuerPrefix<'a> {
        IssuerPrefix { issuer, prefix }
    }

    #[test]
    fn one_issuer_needs_no_prefix_and_may_have_one() {
        assert!(check(&[ip("https://a", None)]).is_empty());
        assert!(check(&[ip("https://a", Some("a:"))]).is_empty());
        assert!(check(&[]).is_empty());
    }

    #[test]
    fn at_most_one_issuer_without_a_prefix() {
        assert!(check(&[ip("https://k8s", None), ip("https://entra", Some("entra:"))]).is_empty());
        let p = check(&[
            ip("https://k8s", None),
            ip("https://login.example.com/t", None),
        ]);
        assert_eq!(
            p,
            vec![PrefixProblem::TwoWithoutPrefix {
                first: "https://k8s".into(),
                second: "https://login.example.com/t".into()
            }]
        );
        let msg = p[0].to_string();
        assert!(
            msg.contains("https://k8s")
                && msg.contains("https://login.example.com/t")
                && msg.contains("principalPrefix")
                && msg.contains("\"login:\""),
            "{msg}"
        );
    }

    #[test]
    fn prefixes_must_be_prefix_free() {
        assert!(check(&[ip("https://a", Some("a:")), ip("https://b", Some("b:"))]).is_empty());
        for (x, y) in [("a:", "a:"), ("a", "a:"), ("a:", "a:b/")] {
            let p = check(&[ip("https://a", Some(x)), ip("https://b", Some(y))]);
            assert!(
                matches!(p.as_slice(), [PrefixProblem::Overlap { issuer, other_issuer, .. }]
                    if issuer == "https://a" && other_issuer == "https://b"),
                "{x} {y}: {p:?}"
            );
            assert!(p[0].to_string().contains(x) && p[0].to_string().contains(y));
        }
    }

    #[test]
    fn prefixes_may_not_reach_the_reserved_namespaces() {
        for bad in [
            "partition:",
            "partition:x/",
            "part",
            "p",
            "system:",
            "sys",
            "s",
            "system:serviceaccount:",
        ] {
            let p = check(&[ip("https://k8s", None), ip("https://x", Some(bad))]);
            assert!(
                matches!(p.as_slice(), [PrefixProblem::Reserved { issuer, .. }] if issuer == "https://x"),
                "{bad}: {p:?}"
            );
        }
        for good in ["entra:", "oidc/", "kc:", "partitions-are-not-this:"] {
            let p = check(&[ip("https://k8s", None), ip("https://x", Some(good))]);
            // "partitions-are-not-this:" starts with "partition" but not with "partition:".
            assert!(p.is_empty(), "{good}: {p:?}");
        }
    }

    #[test]
    fn malformed_prefixes_and_duplicate_issuers() {
        for bad in ["", "a b:", "é:", "a\n"] {
            let p = check(&[ip("https://x", Some(bad))]);
            assert!(
                matches!(p.as_slice(), [PrefixProblem::Malformed { .. }]),
                "{bad:?}: {p:?}"
            );
        }
        let long = "x".repeat(MAX_PREFIX_LEN + 1);
        assert!(!check(&[ip("https://x", Some(&long))]).is_empty());
        let p = check(&[ip("https://x", None), ip("https://x", Some("x:"))]);
        assert_eq!(
            p,
            vec![PrefixProblem::DuplicateIssuer {
                issuer: "https://x".into()
            }]
        );
    }

    #[test]
    fn principals_carry_their_issuers_prefix() {
        let set = [ip("https://k8s", None), ip("https://entra", Some("entra:"))];
        assert_eq!(
            principal(&set, "https://entra", "alice").unwrap(),
            "entra:alice"
        );
        assert_eq!(
            principal(&set, "https://entra", "system:serviceaccount:a:b").unwrap(),
            "entra:system:serviceaccount:a:b"
        );
        assert_eq!(
            principal(&set, "https://k8s", "system:serviceaccount:a:b").unwrap(),
            "system:serviceaccount:a:b"
        );
        // The prefix-less issuer may not squat on another issuer's namespace.
        assert_eq!(
            principal(&set, "https://k8s", "entra:alice"),
            Err(("https://entra", "entra:"))
        );
        // A configuration that escaped `check` still produces no colliding principal.
        let bad = [ip("https://k8s", None), ip("https://x", Some("partition:"))];
        assert!(principal(&bad, "https://x", "p0").is_err());
        let bad = [ip("https://a", Some("a")), ip("https://b", Some("ab"))];
        assert!(principal(&bad, "https://a", "b:x").is_err());
    }
}
