//! What model data collection wrote, read back.

use std::path::{Path, PathBuf};

/// Every record model data collection wrote under `partition` (a directory of date-partitioned
/// `data.jsonl` files), in file order.
pub fn collected_records(partition: &Path) -> Vec<serde_json::Value> {
    let mut records = Vec::new();
    for file in files_under(partition) {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            records.push(serde_json::from_str(line).unwrap());
        }
    }
    records
}

/// Every file under `dir`, depth first, in name order.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}
