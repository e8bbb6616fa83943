//! A pool as every controller sees it: its names and addresses (`names`), how the operator
//! reaches its partitions (`reach`), the operator's HTTPS client of their admin,
//! security-domain and job APIs (`client`; `GET /admin/status` answers
//! `keystead_core::status::PoolStatus`). Below the controllers: nothing here imports one of them.

pub mod client;
pub mod names;
pub mod reach;
