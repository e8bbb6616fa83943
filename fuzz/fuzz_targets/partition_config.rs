//! The partition configuration (`PartitionConfig`, what `PartitionConfig::load` parses and
//! validates). A parsed configuration round-trips; validation never panics.
#![no_main]

use keystead_partition::config::PartitionConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = serde_json::from_str::<PartitionConfig>(text) else {
        return;
    };
    let again: PartitionConfig =
        serde_json::from_str(&serde_json::to_string(&cfg).expect("serializes"))
            .expect("a serialized configuration parses");
    assert_eq!(again, cfg, "configuration round trip");
    if cfg.validate().is_ok() {
        let _ = cfg.backup_paths();
        let _ = cfg.audit_file();
    }
});
