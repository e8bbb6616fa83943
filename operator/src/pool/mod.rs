//! A pool as every controller sees it: its names and addresses (`names`), how the operator
//! reaches its partitions (`reach`), the operator's HTTPS client of their admin,
//! security-domain and job APIs (`client`), and what their `GET /admin/status` says
//! (`admin`). Below the controllers: nothing here imports one of them.

pub mod admin;
pub mod client;
pub mod names;
pub mod reach;
