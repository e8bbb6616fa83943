//! Durable file writes, in one place: owner-only files, write-temp-fsync-rename with the
//! directory fsync'd after the rename, and directories created durably.

use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Create (truncate) a file readable only by its owner.
pub fn restricted_create(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// Open (or create) an owner-only file for appending.
pub fn restricted_append(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// The temporary file `path` is written as before it is renamed into place (`path` with
/// `.tmp` appended: `snapshot.json` → `snapshot.json.tmp`).
fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Replace `path` with `bytes` atomically and durably: written to a temporary owner-only
/// file beside it, fsync'd, renamed over `path`, and the directory fsync'd (so that the
/// rename itself survives a crash). A crash leaves either the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(path);
    {
        let mut f = restricted_create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => sync_dir(dir),
        None => sync_dir(Path::new(".")),
    }
}

/// Write a new owner-only file (fsync'd), with the path in the error.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f =
        restricted_create(path).with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Fsync a directory, so that the entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The power-loss tests' ledger of durable lengths (`KEYSTEAD_FAULT_SYNC_LEDGER`, read once):
/// when set, every fsync of an append-only log records `<length>\t<path>` there, so that a
/// test can drop what a power loss would have dropped (the bytes after the last fsync) from a
/// killed partition's files. It holds lengths and paths only, never content; unset (as in
/// production) it costs one check of a `OnceLock`.
static SYNC_LEDGER: std::sync::OnceLock<Option<std::sync::Mutex<File>>> =
    std::sync::OnceLock::new();

/// Record that the append-only log `path` (open as `file`) was just fsync'd whole, so its
/// current length is durable (see [`SYNC_LEDGER`]); nothing unless
/// `KEYSTEAD_FAULT_SYNC_LEDGER` names a file.
pub fn note_durable(path: &Path, file: &File) {
    let ledger = SYNC_LEDGER.get_or_init(|| {
        let at = std::env::var_os("KEYSTEAD_FAULT_SYNC_LEDGER")?;
        match restricted_append(Path::new(&at)) {
            Ok(f) => Some(std::sync::Mutex::new(f)),
            Err(e) => {
                tracing::error!(ledger = %Path::new(&at).display(), error = %e, "cannot open the fault-test sync ledger");
                None
            }
        }
    });
    if let Some(f) = ledger
        && let Ok(meta) = file.metadata()
    {
        let len = meta.len();
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        // A test aid: a failed write only weakens the test's simulation.
        let _ = writeln!(f, "{len}\t{}", path.display());
    }
}

/// Create `dir` if needed, durably: its own entry is fsync'd in its parent.
pub fn create_dir_durably(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)
            .with_context(|| format!("cannot fsync the directory {}", parent.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomically_replaces_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("snapshot.json");
        write_atomically(&path, b"old").expect("first write");
        write_atomically(&path, b"new").expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        assert!(!temp_path(&path).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "owner-only");
        }
    }
}
