//! Reading what the file sink wrote: every NDJSON segment in a directory,
//! documents grouped by `handoff_id`.

use std::collections::BTreeMap;
use std::path::Path;

/// One line of the file sink.
#[derive(Clone, Debug, PartialEq)]
pub struct FileDoc {
    /// The post-flight document, without the sink's `written_at_ms`.
    pub doc: serde_json::Value,
    /// When the sink wrote the line (its node's clock, Unix ms).
    pub written_at_ms: Option<u64>,
}

/// What a file-sink directory holds.
#[derive(Clone, Debug, Default)]
pub struct FileSink {
    /// Every copy of every document, by handoff_id, in file order.
    pub docs: BTreeMap<String, Vec<FileDoc>>,
    /// Complete lines (ending in a newline) that are not a document with a
    /// `handoff_id`: "file: line" each. A correct sink writes none.
    pub bad_lines: Vec<String>,
}

impl FileSink {
    /// Reads every file in `dir` (a missing directory holds nothing). A last
    /// line without its newline is still being written (or was torn by a
    /// crash, and is written again) and is not counted.
    pub fn read(dir: &Path) -> FileSink {
        let mut out = FileSink::default();
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for path in files {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                let line = line.trim_end();
                let parsed = serde_json::from_str::<serde_json::Value>(line).ok();
                let Some(serde_json::Value::Object(mut doc)) = parsed else {
                    out.bad_lines.push(format!("{}: {line}", path.display()));
                    continue;
                };
                let written_at_ms = doc.remove("written_at_ms").and_then(|v| v.as_u64());
                let Some(id) = doc.get("handoff_id").and_then(|v| v.as_str()) else {
                    out.bad_lines.push(format!("{}: {line}", path.display()));
                    continue;
                };
                out.docs.entry(id.to_string()).or_default().push(FileDoc {
                    doc: serde_json::Value::Object(doc.clone()),
                    written_at_ms,
                });
            }
        }
        out
    }

    /// handoff_id → how many copies the directory holds.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.docs
            .iter()
            .map(|(id, copies)| (id.clone(), copies.len()))
            .collect()
    }

    /// handoff_id → when its first copy was written (ids whose lines carry no
    /// `written_at_ms` are left out).
    pub fn first_written_ms(&self) -> BTreeMap<String, u64> {
        self.docs
            .iter()
            .filter_map(|(id, copies)| {
                let first = copies.iter().filter_map(|c| c.written_at_ms).min()?;
                Some((id.clone(), first))
            })
            .collect()
    }
}
