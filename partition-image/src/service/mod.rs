//! The services: the partition's domain work between the edges (`http/`, `peer/`) and the
//! state below (`state/`, `consensus/`). A service checks a request against the pool's
//! state, does the cryptographic work, proposes [`Command`](crate::state::Command)s and
//! answers with typed results and [`Error`]s — never HTTP responses.

pub mod app;
pub mod backup;
pub mod error;
pub mod keys;
pub mod members;
pub mod rbac;
pub mod regions;
mod replication;
pub mod sd;

pub use error::{Error, Kind};

/// Seconds since the Unix epoch: the `now` that proposers put into commands.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
