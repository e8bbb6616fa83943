//! The pure plan of a ManagedHsm: nothing here talks to an API, and every step is tested
//! from fixtures (`operator/tests/plan.rs`). In the order a reconcile takes them: `validate`
//! the spec, plan and issue the pool's TLS material (`tls`), build the desired `children`,
//! read what was `observed`, derive the `status`, and decide the next `lifecycle` action.

pub mod children;
pub mod lifecycle;
pub mod observed;
pub mod status;
pub mod tls;
pub mod validate;
