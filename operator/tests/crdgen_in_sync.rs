//! The committed CRD YAML must be exactly what the Rust types generate.

use std::path::PathBuf;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

const REGENERATE: &str = "regenerate with `cargo run -p keystead-operator -- crdgen --out crds --out charts/keystead/crds` and commit the result";

#[test]
fn committed_crds_match_the_types() {
    let rendered = keystead_operator::crdgen::render_all().expect("CRDs render");
    assert_eq!(rendered.len(), 5, "five kinds are generated");
    for dir in ["crds", "charts/keystead/crds"] {
        let dir = repo_root().join(dir);
        for (file, text) in &rendered {
            let path = dir.join(file);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} is missing ({e}); {REGENERATE}", path.display()));
            assert!(
                committed == *text,
                "{} differs from what operator/src/crd.rs generates; {REGENERATE}",
                path.display()
            );
        }
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("crd dir readable")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let mut expected: Vec<String> = rendered.iter().map(|(f, _)| f.clone()).collect();
        expected.sort();
        assert_eq!(
            on_disk,
            expected,
            "stale CRD files in {}; {REGENERATE}",
            dir.display()
        );
    }
}

#[test]
fn crdgen_binary_writes_the_same_files() {
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_keystead-operator"))
        .args(["crdgen", "--out"])
        .arg(out.path())
        .status()
        .expect("keystead-operator runs");
    assert!(status.success());
    for (file, text) in keystead_operator::crdgen::render_all().unwrap() {
        let written = std::fs::read_to_string(out.path().join(&file)).unwrap();
        assert_eq!(written, text, "{file}");
    }
}
