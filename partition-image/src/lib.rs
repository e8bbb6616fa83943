//! A Keystead HSM partition.

#![forbid(unsafe_code)]

pub mod crypto;
