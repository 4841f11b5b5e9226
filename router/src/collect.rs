//! Model data collection: each scored request's inputs and outputs, with its request id, time,
//! service, model, version and designation, appended to date-partitioned files
//! (`<root>/<service>/<model>/<version>/<designation>/<yyyy>/<mm>/<dd>/data.jsonl`, or
//! `data.csv` when asked, as Azure wrote them).
//!
//! Scoring never waits for it: records go to a queue bounded in records and in bytes that one
//! background thread drains. A record that does not fit, or that the disk refuses, is counted
//! as dropped and never held in memory. Shutting down drains the queue and flushes every file,
//! so no accepted record is lost.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// One scored request.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339, UTC; its date names the partition.
    pub time: jiff::Timestamp,
    pub request_id: String,
    pub service: String,
    pub model: String,
    pub version: String,
    /// `default` (a service), or `control` or `treatment` (an endpoint's version).
    pub designation: String,
    /// The endpoint version that answered (`default` for a service).
    pub endpoint_version: String,
    pub inputs: serde_json::Value,
    pub outputs: serde_json::Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Jsonl,
    Csv,
}

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub root: PathBuf,
    pub format: Format,
    /// Records waiting to be written, at most.
    pub max_queued_records: usize,
    /// Bytes waiting to be written, at most.
    pub max_queued_bytes: usize,
}

impl CollectorConfig {
    pub fn new(root: PathBuf) -> CollectorConfig {
        CollectorConfig {
            root,
            format: Format::Jsonl,
            max_queued_records: 10_000,
            max_queued_bytes: 64 << 20,
        }
    }
}

/// What happened to the records offered.
#[derive(Debug, Default)]
pub struct CollectorStats {
    pub written: AtomicU64,
    /// Refused because the queue was full.
    pub dropped_full: AtomicU64,
    /// Lost because the file system refused them (disk full, permissions).
    pub dropped_write: AtomicU64,
}

/// A record and its size in the queue's byte count.
type Queued = (Record, Vec<u8>);

pub struct Collector {
    sender: Mutex<Option<SyncSender<Queued>>>,
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
    format: Format,
    pub stats: Arc<CollectorStats>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Collector {
    pub fn start(config: CollectorConfig) -> Collector {
        let (sender, receiver) = sync_channel(config.max_queued_records.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(CollectorStats::default());
        let writer = {
            let (root, queued_bytes, stats) =
                (config.root.clone(), queued_bytes.clone(), stats.clone());
            let format = config.format;
            std::thread::Builder::new()
                .name("data-collection".into())
                .spawn(move || write_loop(root, format, receiver, &queued_bytes, &stats))
                .expect("spawning the data collection writer")
        };
        Collector {
            sender: Mutex::new(Some(sender)),
            queued_bytes,
            max_queued_bytes: config.max_queued_bytes,
            format: config.format,
            stats,
            writer: Mutex::new(Some(writer)),
        }
    }

    /// Offers a record; never blocks. Returns whether it was accepted (and so will be written,
    /// unless the disk refuses it).
    pub fn record(&self, record: Record) -> bool {
        let line = match self.format {
            Format::Jsonl => serde_json::to_vec(&record).expect("records serialise"),
            Format::Csv => csv_line(&record),
        };
        let size = line.len();
        let accepted = self.queued_bytes.fetch_add(size, Ordering::AcqRel) + size
            <= self.max_queued_bytes
            && match self.sender.lock().as_ref() {
                Some(sender) => match sender.try_send((record, line)) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                },
                None => false,
            };
        if !accepted {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
        }
        accepted
    }

    /// Stops accepting, writes everything accepted, flushes and closes the files.
    pub fn shutdown(&self) {
        self.sender.lock().take();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.shutdown();
    }
}

const CSV_HEADER: &str =
    "time,request_id,service,model,version,designation,endpoint_version,inputs,outputs\n";

/// One CSV row: the record's fields, inputs and outputs as JSON text, quoted as RFC 4180 asks.
fn csv_line(record: &Record) -> Vec<u8> {
    let quote = |field: &str| format!("\"{}\"", field.replace('"', "\"\""));
    let fields = [
        record.time.to_string(),
        record.request_id.clone(),
        record.service.clone(),
        record.model.clone(),
        record.version.clone(),
        record.designation.clone(),
        record.endpoint_version.clone(),
        record.inputs.to_string(),
        record.outputs.to_string(),
    ];
    fields
        .iter()
        .map(|f| quote(f))
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// Path components come from requests: keep each one a single, harmless name.
fn component(text: &str) -> String {
    let cleaned = modelpod_scoring::repository::file_name_chars(text);
    match cleaned.as_str() {
        "" | "." | ".." => "_".into(),
        _ => cleaned,
    }
}

fn partition(root: &std::path::Path, record: &Record, format: Format) -> PathBuf {
    let date = record.time.to_zoned(jiff::tz::TimeZone::UTC).date();
    root.join(component(&record.service))
        .join(component(&record.model))
        .join(component(&record.version))
        .join(component(&record.designation))
        .join(format!("{:04}", date.year()))
        .join(format!("{:02}", date.month()))
        .join(format!("{:02}", date.day()))
        .join(match format {
            Format::Jsonl => "data.jsonl",
            Format::Csv => "data.csv",
        })
}

fn write_loop(
    root: PathBuf,
    format: Format,
    receiver: Receiver<Queued>,
    queued_bytes: &AtomicUsize,
    stats: &CollectorStats,
) {
    let mut files: HashMap<PathBuf, BufWriter<File>> = HashMap::new();
    let open = |path: &PathBuf| -> std::io::Result<BufWriter<File>> {
        std::fs::create_dir_all(path.parent().expect("partitions have a parent"))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let fresh = file.metadata()?.len() == 0;
        let mut writer = BufWriter::new(file);
        if fresh && format == Format::Csv {
            writer.write_all(CSV_HEADER.as_bytes())?;
        }
        Ok(writer)
    };
    loop {
        let (record, line) = match receiver.recv_timeout(Duration::from_secs(1)) {
            Ok(item) => item,
            Err(RecvTimeoutError::Timeout) => {
                // Idle: what is buffered reaches the files.
                for writer in files.values_mut() {
                    let _ = writer.flush();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        queued_bytes.fetch_sub(line.len(), Ordering::AcqRel);
        let path = partition(&root, &record, format);
        let written = (|| {
            if !files.contains_key(&path) {
                // Files stay open across records; all are flushed and closed once 256 are open,
                // which bounds descriptors whatever the mix of models, versions and days.
                if files.len() >= 256 {
                    for (_, mut writer) in files.drain() {
                        let _ = writer.flush();
                    }
                }
                files.insert(path.clone(), open(&path)?);
            }
            let writer = files.get_mut(&path).expect("inserted above");
            writer.write_all(&line)?;
            writer.write_all(b"\n")
        })();
        match written {
            Ok(()) => stats.written.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "data collection record lost");
                files.remove(&path);
                stats.dropped_write.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
    for (path, mut writer) in files {
        if let Err(e) = writer.flush().and_then(|()| writer.get_ref().sync_all()) {
            tracing::warn!(path = %path.display(), error = %e, "data collection flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(i: usize, model: &str) -> Record {
        Record {
            time: "2026-11-23T10:00:00Z".parse().unwrap(),
            request_id: format!("req-{i}"),
            service: "svc".into(),
            model: model.into(),
            version: "1".into(),
            designation: "default".into(),
            endpoint_version: "default".into(),
            inputs: json!({"data": [[i, 2.5]]}),
            outputs: json!(["setosa"]),
        }
    }

    #[test]
    fn records_land_in_date_partitions_and_shutdown_loses_none() {
        let dir = tempfile::tempdir().unwrap();
        let collector = Collector::start(CollectorConfig::new(dir.path().to_path_buf()));
        for i in 0..500 {
            assert!(collector.record(record(i, if i % 2 == 0 { "iris" } else { "../x" })));
        }
        collector.shutdown();
        let iris = dir.path().join("svc/iris/1/default/2026/11/23/data.jsonl");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&iris)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 250);
        assert_eq!(lines[0]["request_id"], "req-0");
        assert_eq!(lines[0]["inputs"], json!({"data": [[0, 2.5]]}));
        // A model name from a request cannot climb out of the root.
        assert!(
            dir.path()
                .join("svc/.._x/1/default/2026/11/23/data.jsonl")
                .is_file()
        );
        assert_eq!(collector.stats.written.load(Ordering::Relaxed), 500);
        // After shutdown nothing is accepted, and that is counted.
        assert!(!collector.record(record(0, "iris")));
        assert_eq!(collector.stats.dropped_full.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = CollectorConfig::new(dir.path().to_path_buf());
        config.max_queued_bytes = 1_000;
        let collector = Collector::start(config);
        let started = std::time::Instant::now();
        let accepted = (0..10_000)
            .filter(|&i| collector.record(record(i, "iris")))
            .count();
        assert!(started.elapsed() < Duration::from_secs(5));
        collector.shutdown();
        let dropped = collector.stats.dropped_full.load(Ordering::Relaxed) as usize;
        assert!(dropped > 0, "the byte bound never applied");
        assert_eq!(accepted + dropped, 10_000);
        assert_eq!(
            collector.stats.written.load(Ordering::Relaxed) as usize,
            accepted
        );
    }

    #[test]
    fn csv_has_a_header_and_quoted_json_cells() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = CollectorConfig::new(dir.path().to_path_buf());
        config.format = Format::Csv;
        let collector = Collector::start(config);
        collector.record(record(7, "iris"));
        collector.shutdown();
        let text =
            std::fs::read_to_string(dir.path().join("svc/iris/1/default/2026/11/23/data.csv"))
                .unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap(), CSV_HEADER.trim_end());
        let row = lines.next().unwrap();
        assert!(
            row.starts_with("\"2026-11-23T10:00:00Z\",\"req-7\""),
            "{row}"
        );
        assert!(row.contains("\"{\"\"data\"\":[[7,2.5]]}\""), "{row}");
    }

    #[test]
    fn a_refusing_disk_is_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        // The root is a file: every partition directory fails to be created.
        let root = dir.path().join("root");
        std::fs::write(&root, b"").unwrap();
        let collector = Collector::start(CollectorConfig::new(root));
        assert!(collector.record(record(1, "iris")));
        collector.shutdown();
        assert_eq!(collector.stats.dropped_write.load(Ordering::Relaxed), 1);
        assert_eq!(collector.stats.written.load(Ordering::Relaxed), 0);
    }
}
