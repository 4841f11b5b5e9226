//! The router's persisted state: one JSON document, replaced atomically. A save writes the
//! whole document to a temporary file in the same directory, fsyncs it, renames it over the
//! old one and fsyncs the directory, so a router killed at any moment comes back with either
//! the old state or the new one, never a mix or a torn file.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state file {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("state file {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
}

/// A JSON document at `path`, saved whole and atomically.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: PathBuf) -> StateFile {
        StateFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, e: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// The saved state, or `None` when nothing was ever saved. A leftover temporary file (a
    /// save cut short) is ignored: the last completed save is the state.
    pub fn load<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error(e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Invalid {
                path: self.path.display().to_string(),
                reason: e.to_string(),
            })
    }

    /// Replaces the saved state with `state`; when this returns, the new state is durable.
    pub fn save<T: Serialize>(&self, state: &T) -> Result<(), StoreError> {
        let directory = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(directory).map_err(|e| self.io_error(e))?;
        let bytes = serde_json::to_vec_pretty(state).expect("router state serialises");
        let temporary = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let written = (|| {
            // It holds keys and the token secret: readable by the router's user only.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)?;
            // The rename itself is durable only once the directory is.
            std::fs::File::open(directory)?.sync_all()
        })();
        written.map_err(|e| {
            let _ = std::fs::remove_file(&temporary);
            self.io_error(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        generation: u64,
        padding: String,
    }

    #[test]
    fn saves_replace_the_whole_state_and_leftovers_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("nested/state.json"));
        assert_eq!(file.load::<State>().unwrap(), None);
        for generation in 0..3 {
            let state = State {
                generation,
                padding: "x".repeat(10_000 >> generation),
            };
            file.save(&state).unwrap();
            assert_eq!(file.load::<State>().unwrap(), Some(state));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "keys are readable by the router's user only"
        );
        // A save cut short leaves a temporary file, which changes nothing.
        std::fs::write(dir.path().join("nested/state.tmp.1"), b"{\"generation\": 9").unwrap();
        assert_eq!(file.load::<State>().unwrap().unwrap().generation, 2);
        // A corrupt state file is an error that names it, not an empty state.
        std::fs::write(file.path(), b"{").unwrap();
        let error = file.load::<State>().unwrap_err().to_string();
        assert!(error.contains("state.json"), "{error}");
    }
}
