//! The Keystead operator library: custom resource types (the API contract), the CRD
//! generator, and the reconcilers.

#![forbid(unsafe_code)]

pub mod children;
pub mod conditions;
pub mod crd;
pub mod crdgen;
pub mod decide;
pub mod tls;
pub mod validate;
