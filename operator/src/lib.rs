//! The Keystead operator library: custom resource types (the API contract), the CRD
//! generator, and the reconcilers.

#![forbid(unsafe_code)]

pub mod crd;
pub mod crdgen;
