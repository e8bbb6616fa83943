//! Local RBAC of a Keystead pool: the Managed HSM data actions, the built-in roles, custom
//! role definitions and role assignments, with the Azure-shaped wire types of
//! `.../providers/Microsoft.Authorization/role{Definitions,Assignments}`.
//!
//! Everything here is pure and deterministic (no clock, no randomness): the RBAC state lives
//! in the replicated state machine, so every partition must compute the same result from the
//! same commands. Callers pass ids (assignment and definition names are GUIDs chosen by the
//! client, as in Azure).
//!
//! Decisions (see `docs/rbac.md`):
//! - Crypto Auditor does **not** get `keys/deletedKeys/delete` (the published table shows it,
//!   which is very probably a documentation error; an auditor must not purge keys).
//! - `rng/action` is granted by Crypto User; `keys/export/action` by Crypto Officer (its
//!   published description says "export keys"); `securitydomain/download/read` (the status
//!   poll of a download) by Administrator, who is the one allowed to start a download.
//! - The principal id compared with `principalId` of assignments is the one the
//!   authentication layer produces (`oid` when the token has it, else `sub`).

mod actions;
mod builtin;
mod error;
mod scope;
mod state;
mod wire;

pub use actions::*;
pub use builtin::*;
pub use error::*;
pub use scope::*;
pub use state::*;
pub use wire::*;

#[cfg(test)]
mod tests;
