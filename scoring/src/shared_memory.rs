//! Triton's system shared memory extension: a client registers a region of a POSIX
//! shared memory object (`shm_open`'s key, which Linux keeps under `/dev/shm`), then names
//! it in requests instead of sending tensor bytes: inputs are read from it and outputs
//! written into it, every access checked against the region's bounds.

use crate::error::ScoringError;
use parking_lot::RwLock;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Where POSIX shared memory objects live on Linux.
const SHM_ROOT: &str = "/dev/shm";

/// Registered regions, by name.
#[derive(Default)]
pub struct SystemSharedMemory {
    regions: RwLock<BTreeMap<String, Arc<Region>>>,
}

/// What the status call reports of a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegionStatus {
    pub name: String,
    pub key: String,
    pub offset: u64,
    pub byte_size: u64,
}

/// A mapped region: `byte_size` bytes from `offset` in the object `key`.
pub struct Region {
    status: RegionStatus,
    map: memmap2::MmapRaw,
}

impl SystemSharedMemory {
    pub fn register(
        &self,
        name: &str,
        key: &str,
        offset: u64,
        byte_size: u64,
    ) -> Result<(), ScoringError> {
        if name.is_empty() {
            return Err(ScoringError::BadRequest(
                "a shared memory region needs a name".into(),
            ));
        }
        let path = object_path(key)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| {
                ScoringError::BadRequest(format!(
                    "unable to open shared memory region key '{key}': {e}"
                ))
            })?;
        let object_size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let end = offset.checked_add(byte_size);
        if byte_size == 0 || end.is_none_or(|end| end > object_size) {
            return Err(ScoringError::BadRequest(format!(
                "shared memory region '{name}': offset {offset} + byte_size {byte_size} does not fit the {object_size} bytes of key '{key}'"
            )));
        }
        let map = memmap2::MmapOptions::new()
            .offset(offset)
            .len(byte_size as usize)
            .map_raw(&file)
            .map_err(|e| {
                ScoringError::BadRequest(format!("unable to map shared memory key '{key}': {e}"))
            })?;
        let mut regions = self.regions.write();
        if regions.contains_key(name) {
            return Err(ScoringError::BadRequest(format!(
                "shared memory region '{name}' is already registered"
            )));
        }
        let status = RegionStatus {
            name: name.to_string(),
            key: key.to_string(),
            offset,
            byte_size,
        };
        regions.insert(name.to_string(), Arc::new(Region { status, map }));
        Ok(())
    }

    /// Unregisters one region, or every region for an empty name. Requests that hold the
    /// region finish with it; its mapping goes with the last of them.
    pub fn unregister(&self, name: &str) -> Result<(), ScoringError> {
        let mut regions = self.regions.write();
        if name.is_empty() {
            regions.clear();
        } else {
            regions.remove(name);
        }
        Ok(())
    }

    /// The status of one region, or of all for an empty name.
    pub fn status(&self, name: &str) -> Result<Vec<RegionStatus>, ScoringError> {
        let regions = self.regions.read();
        if name.is_empty() {
            return Ok(regions.values().map(|r| r.status.clone()).collect());
        }
        regions
            .get(name)
            .map(|r| vec![r.status.clone()])
            .ok_or_else(|| unknown(name))
    }

    pub fn get(&self, name: &str) -> Result<Arc<Region>, ScoringError> {
        self.regions
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| unknown(name))
    }

    /// `byte_size` bytes at `offset` in region `name`.
    pub fn read(
        &self,
        name: &str,
        offset: usize,
        byte_size: usize,
    ) -> Result<Vec<u8>, ScoringError> {
        self.get(name)?.read(offset, byte_size)
    }
}

fn unknown(name: &str) -> ScoringError {
    ScoringError::BadRequest(format!(
        "unable to find system shared memory region: '{name}'"
    ))
}

/// The file behind a `shm_open` key: one name under /dev/shm, nothing that leaves it.
fn object_path(key: &str) -> Result<PathBuf, ScoringError> {
    let name = key.strip_prefix('/').unwrap_or(key);
    let bad = name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']);
    if bad {
        return Err(ScoringError::BadRequest(format!(
            "shared memory key '{key}' must be one name such as '/my_region' (no other '/', '.' or '..')"
        )));
    }
    Ok(PathBuf::from(SHM_ROOT).join(name))
}

impl Region {
    pub fn status(&self) -> &RegionStatus {
        &self.status
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), ScoringError> {
        let size = self.map.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ScoringError::BadRequest(format!(
                "{len} bytes at offset {offset} are out of bounds of shared memory region '{}' ({size} bytes)",
                self.status.name
            )));
        }
        Ok(())
    }

    pub fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>, ScoringError> {
        self.check(offset, len)?;
        let mut bytes = vec![0u8; len];
        // SAFETY: the range is inside the mapping (checked above), which lives as long as
        // `self`. The client may write the region meanwhile; that is the protocol's contract
        // (it must not touch a region during a request), and a copy of bytes has no invalid
        // values whatever it reads.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(offset), bytes.as_mut_ptr(), len);
        }
        Ok(bytes)
    }

    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<(), ScoringError> {
        self.check(offset, bytes.len())?;
        // SAFETY: as in `read`; the mapping is shared and writable (opened read-write).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                bytes.len(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_dev_shm() {
        for key in ["", "/", "/..", "..", "/a/b", "../etc/passwd", "/.", "a\0b"] {
            assert!(object_path(key).is_err(), "{key:?}");
        }
        assert_eq!(
            object_path("/input_data").unwrap(),
            PathBuf::from("/dev/shm/input_data")
        );
    }

    #[test]
    fn regions_read_and_write_within_their_bounds() {
        let key = format!("/modelpod-test-{}", std::process::id());
        let path = object_path(&key).unwrap();
        std::fs::write(&path, [0u8; 64]).unwrap();
        let shm = SystemSharedMemory::default();
        assert!(
            shm.register("r", &key, 60, 8).is_err(),
            "past the object's end"
        );
        shm.register("r", &key, 16, 32).unwrap();
        assert!(shm.register("r", &key, 0, 8).is_err(), "the name is taken");
        let region = shm.get("r").unwrap();
        region.write(4, &[1, 2, 3]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[20..23], [1, 2, 3]);
        assert_eq!(shm.read("r", 4, 3).unwrap(), vec![1, 2, 3]);
        assert!(region.read(30, 4).is_err());
        assert!(region.write(usize::MAX, &[1]).is_err());
        assert_eq!(shm.status("").unwrap().len(), 1);
        shm.unregister("r").unwrap();
        assert!(shm.status("r").is_err());
        std::fs::remove_file(path).unwrap();
    }
}
