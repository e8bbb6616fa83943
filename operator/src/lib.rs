//! The Keystead operator library: custom resource types (the API contract), the CRD
//! generator, and the reconcilers.

#![forbid(unsafe_code)]

pub mod backup_controller;
pub mod backup_plan;
pub mod children;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod decide;
pub mod leader;
pub mod metrics;
pub mod pool_client;
pub mod run;
pub mod sd_controller;
pub mod tls;
pub mod validate;
