//! The services' error: what went wrong in the Key Vault's terms (a kind, an error code, a
//! message), without HTTP. The edge (`http::error`) turns it into a status and an error body.

use crate::consensus::ProposeError;
use crate::state::StateError;

/// What kind of failure an [`Error`] is; the edge maps each to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is invalid (400).
    BadRequest,
    /// The caller may not do this, or the pool refuses it in its current state (403).
    Forbidden,
    /// What the request names does not exist (404).
    NotFound,
    /// The request conflicts with the pool's state (409).
    Conflict,
    /// A fault of this partition (500).
    Internal,
    /// Not supported by Keystead (501).
    NotSupported,
    /// A peer or a backup store answered wrongly (502).
    BadGateway,
    /// Not possible right now; retrying (here or elsewhere) may succeed (503).
    Unavailable,
}

impl Kind {
    /// The HTTP status code of this kind (also carried between partitions on the peer API).
    pub fn status(self) -> u16 {
        match self {
            Kind::BadRequest => 400,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::Conflict => 409,
            Kind::Internal => 500,
            Kind::NotSupported => 501,
            Kind::BadGateway => 502,
            Kind::Unavailable => 503,
        }
    }

    /// The kind of a status code received from a peer or the core library (unknown codes
    /// are internal errors).
    pub fn from_status(status: u16) -> Kind {
        match status {
            400 => Kind::BadRequest,
            403 => Kind::Forbidden,
            404 => Kind::NotFound,
            409 => Kind::Conflict,
            501 => Kind::NotSupported,
            502 => Kind::BadGateway,
            503 => Kind::Unavailable,
            _ => Kind::Internal,
        }
    }
}

/// A failed service operation: kind, Key Vault error code, message, and an optional inner
/// error (code, message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub code: String,
    pub message: String,
    pub inner: Option<(String, String)>,
}

impl Error {
    pub fn new(kind: Kind, code: &str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.to_string(),
            message: message.into(),
            inner: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, "BadParameter", message)
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, code, message)
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Kind::Internal, "InternalError", message)
    }

    pub fn with_inner(mut self, code: &str, message: impl Into<String>) -> Self {
        self.inner = Some((code.to_string(), message.into()));
        self
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.kind.status(), self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<ProposeError> for Error {
    fn from(e: ProposeError) -> Self {
        use StateError as S;
        match e {
            ProposeError::Storage(m) => Error::new(
                Kind::Unavailable,
                "ServiceUnavailable",
                format!("the change was not committed ({m}); it is safe to retry"),
            ),
            ProposeError::Uncertain(m) => Error::new(
                Kind::Unavailable,
                "ServiceUnavailable",
                format!(
                    "the change may or may not have been committed ({m}); read the resource back before retrying"
                ),
            ),
            ProposeError::PrimaryUnreachable(m) => Error::new(
                Kind::Unavailable,
                keystead_core::region::PRIMARY_UNREACHABLE,
                m,
            ),
            ProposeError::LeaseExpired(m) => Error::new(
                Kind::Unavailable,
                keystead_core::region::WRITE_LEASE_EXPIRED,
                m,
            ),
            ProposeError::Refused(s) => {
                let msg = s.to_string();
                match s {
                    S::KeyNotFound(_) | S::VersionNotFound { .. } => {
                        Error::not_found("KeyNotFound", msg)
                    }
                    S::DeletedKeyNotFound(_) => Error::not_found("KeyNotFound", msg),
                    S::KeyIsDeleted(_) | S::KeyExists(_) | S::VersionExists { .. } => {
                        Error::conflict("Conflict", msg)
                    }
                    S::PurgeProtected { .. } => Error::new(Kind::Forbidden, "Forbidden", msg)
                        .with_inner("PurgeProtectionEnabled", "purge protection is enabled"),
                    S::Rbac(r) => Error::new(Kind::from_status(r.status()), r.code(), msg),
                    S::AlreadyActivated(_) => Error::conflict("Conflict", msg),
                    S::AlreadyBootstrapped => Error::conflict("Conflict", msg),
                    S::RegionNotFound(_) => Error::not_found("RegionNotFound", msg),
                    S::RegionRole(_) => Error::conflict("Conflict", msg),
                    S::RegionFenced(_) => Error::new(Kind::Unavailable, "RegionNotPrimary", msg),
                    S::RestoreNotStaged(_) | S::RestoreIncomplete { .. } => {
                        Error::conflict("Conflict", msg)
                    }
                }
            }
        }
    }
}
