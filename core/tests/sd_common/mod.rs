//! Shared helpers of the security-domain tests: a pool of custodian key pairs generated once
//! per test binary (RSA key generation is slow), 2048-bit.
#![allow(dead_code)]

pub mod fixtures;

use std::sync::OnceLock;

use keystead_core::sd::{CustodianKey, CustodianPrivateKey, generate_custodian};

pub struct Custodian {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Custodian {
    pub fn public(&self) -> CustodianKey {
        CustodianKey::from_pem(&self.cert_pem).expect("custodian certificate parses")
    }

    pub fn private(&self) -> CustodianPrivateKey {
        CustodianPrivateKey::from_pem(&self.key_pem, None)
            .expect("custodian key parses")
            .with_label(format!("{}.key", self.name))
    }
}

/// Ten custodians, generated on first use and shared by every test of the binary.
pub fn custodians() -> &'static [Custodian] {
    static POOL: OnceLock<Vec<Custodian>> = OnceLock::new();
    POOL.get_or_init(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..10)
                .map(|i| {
                    s.spawn(move || {
                        let name = format!("custodian{i}");
                        let (cert_pem, key_pem) =
                            generate_custodian(&name, 2048, None).expect("keygen");
                        Custodian {
                            name,
                            cert_pem,
                            key_pem: key_pem.to_string(),
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("keygen thread"))
                .collect()
        })
    })
}

pub fn publics(idx: &[usize]) -> Vec<CustodianKey> {
    idx.iter().map(|i| custodians()[*i].public()).collect()
}

pub fn privates(idx: &[usize]) -> Vec<CustodianPrivateKey> {
    idx.iter().map(|i| custodians()[*i].private()).collect()
}

/// All subsets of `0..n` of size `k`.
pub fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn rec(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            rec(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    rec(0, n, k, &mut Vec::new(), &mut out);
    out
}
