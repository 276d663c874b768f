//! The history on disk: `history.jsonl` beside the relay queue, one JSON record a line,
//! appended as records are added or updated (the last line of an id wins). A thread of its
//! own writes it, so answering a request never waits for the disk, and rewrites it with the
//! last `size` records once it has grown past twice that: the file stays bounded. Under load
//! a delivery makes about three lines (its record, then each target settling): the writer
//! appends what is waiting with one `write` rather than one per line.

use super::Record;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

const FILE: &str = "history.jsonl";

/// Records waiting for the writer; past this (a stalled disk) records are kept in memory only.
const BACKLOG: usize = 4096;

/// A line longer than this is not a record this code wrote; it is skipped unread.
const MAX_LINE: usize = 256 * 1024;

/// A record's id and its line.
type Line = (String, String);

/// Lines appended with one `write` at most; more waiting go in the next.
const BATCH: usize = 256;

pub struct Writer(SyncSender<Line>);

impl Writer {
    pub fn write(&self, r: &Record) {
        let Ok(line) = serde_json::to_string(r) else {
            return;
        };
        if let Err(TrySendError::Full(_)) = self.0.try_send((r.id.clone(), line)) {
            tracing::warn!(
                "the delivery history's file is behind; a record is kept in memory only"
            );
        }
    }
}

/// Reads what a previous process left, newest last, and starts the writer.
pub fn open(dir: &Path, size: usize) -> Result<(VecDeque<Record>, Writer), String> {
    let path = dir.join(FILE);
    let kept = read(&path, size).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines: VecDeque<Line> = kept
        .iter()
        .filter_map(|r| Some((r.id.clone(), serde_json::to_string(r).ok()?)))
        .collect();
    // Start from a compact file, so its size is bounded from the first write.
    rewrite(&path, &lines).map_err(|e| format!("{}: {e}", path.display()))?;
    let (tx, rx) = sync_channel(BACKLOG);
    std::thread::Builder::new()
        .name("fluxgate-history".into())
        .spawn(move || run(path, rx, &mut lines, size))
        .map_err(|e| format!("cannot start the history writer: {e}"))?;
    Ok((kept, Writer(tx)))
}

fn read(path: &Path, size: usize) -> std::io::Result<VecDeque<Record>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VecDeque::new()),
        Err(e) => return Err(e),
    };
    let mut out: VecDeque<Record> = VecDeque::new();
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if n > MAX_LINE {
            // Skip the rest of an overlong line.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest)?;
            continue;
        }
        // A torn last line (a crash mid-write) is skipped.
        let Ok(r) = serde_json::from_slice::<Record>(&line) else {
            continue;
        };
        if let Some(old) = out.iter_mut().rev().find(|o| o.id == r.id) {
            *old = r;
        } else {
            out.push_back(r);
            if out.len() > size {
                out.pop_front();
            }
        }
    }
    Ok(out)
}

use std::io::Read as _;

fn run(path: PathBuf, rx: Receiver<Line>, lines: &mut VecDeque<Line>, size: usize) {
    let mut appended = 0usize;
    let mut file = None;
    let mut out = Vec::new();
    while let Ok(first) = rx.recv() {
        // What else is already waiting goes in the same write.
        let batch = std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok()));
        out.clear();
        for (id, line) in batch.take(BATCH) {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
            keep(lines, id, line, size);
            appended += 1;
        }
        if appended > size {
            appended = 0;
            file = None;
            if let Err(e) = rewrite(&path, lines) {
                tracing::warn!("cannot rewrite {}: {e}", path.display());
            }
            continue;
        }
        if file.is_none() {
            file = append(&path)
                .map_err(|e| tracing::warn!("cannot open {}: {e}", path.display()))
                .ok();
        }
        if let Some(f) = file.as_mut() {
            if let Err(e) = f.write_all(&out) {
                tracing::warn!("cannot write {}: {e}", path.display());
                file = None;
            }
        }
    }
}

/// The newest line of each of the last `size` records, for the next rewrite. An update is
/// almost always of a recent record, so the search from the end is short.
fn keep(lines: &mut VecDeque<Line>, id: String, line: String, size: usize) {
    if let Some(old) = lines.iter_mut().rev().find(|(i, _)| *i == id) {
        old.1 = line;
    } else {
        lines.push_back((id, line));
        if lines.len() > size {
            lines.pop_front();
        }
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Replaces the file with these lines, atomically.
fn rewrite(path: &Path, lines: &VecDeque<Line>) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut w = std::io::BufWriter::new(f);
    for (_, l) in lines {
        writeln!(w, "{l}")?;
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;

    #[test]
    fn survives_a_restart_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(3, dir.path()).unwrap();
        let mut last = String::new();
        for i in 0..20 {
            last = h.add(Record {
                receiver: "ns/r".into(),
                delivery: Some(format!("d{i}")),
                ..Record::default()
            });
        }
        drop(h);
        // The writer thread drains its channel once the history is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let again = History::open(3, dir.path()).unwrap();
            let got: Vec<_> = again
                .list(&Default::default())
                .iter()
                .map(|r| r.delivery.clone().unwrap())
                .collect();
            if got == ["d19", "d18", "d17"] {
                assert_eq!(again.get("d19").unwrap().id, last);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{got:?}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(text.lines().count() <= 6, "{text}");
    }

    #[test]
    fn a_burst_of_records_and_updates_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(1000, dir.path()).unwrap();
        let ids: Vec<String> = (0..600)
            .map(|i| {
                let mut r = Record {
                    receiver: "ns/r".into(),
                    delivery: Some(format!("d{i}")),
                    ..Record::default()
                };
                r.targets.push(super::super::TargetResult {
                    state: "queued".into(),
                    ..Default::default()
                });
                h.add(r)
            })
            .collect();
        for id in &ids {
            h.update_target(
                id,
                0,
                super::super::TargetResult {
                    state: "patched".into(),
                    ..Default::default()
                },
            );
        }
        drop(h);
        // Read the file without opening a History on it: that would rewrite the file while
        // the dropped one's writer may still be appending to it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let kept = read(&dir.path().join(FILE), 1000).unwrap();
            let done = ids
                .iter()
                .filter(|id| {
                    kept.iter()
                        .any(|r| &r.id == *id && r.targets[0].state == "patched")
                })
                .count();
            if done == ids.len() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{done} of 600");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
