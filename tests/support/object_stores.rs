//! The object stores of the backup tests, shared by the test crates that need them
//! (included with `#[path]`): `scripts/start-object-stores.sh` starts Azurite and moto when
//! they are not running (idempotent, safe from parallel tests) and prints the variables
//! `KEYSTEAD_TEST_AZURITE_URL`, `KEYSTEAD_TEST_S3_ENDPOINT` and `KEYSTEAD_TEST_S3_BUCKET`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Start the stores (once per test process) and return the variables the script prints.
pub fn object_stores() -> &'static BTreeMap<String, String> {
    static S: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    S.get_or_init(|| {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scripts/start-object-stores.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .expect("run scripts/start-object-stores.sh");
        assert!(
            out.status.success(),
            "scripts/start-object-stores.sh failed (run scripts/install-tools.sh first): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}
