//! Reading Firecracker's metrics file into [`VmmCounters`].
//!
//! Firecracker appends one JSON object per line to its metrics file: on every `FlushMetrics`
//! action and on its own every 60 s. Its counters are *deltas*: serialising a counter resets it,
//! so a line holds what happened since the previous line. The cumulative counters banger reports
//! are therefore the sum over every complete line of the file (which launch creates empty for each
//! VMM process), not the last line alone.
//!
//! The `net` and `block` objects of a line are Firecracker's aggregates over all interfaces and
//! drives (present since 1.0; newer versions add per-device `net_<id>`/`block_<id>` objects,
//! which are ignored here so nothing is counted twice).
//!
//! [`MetricsLedger`] keeps, per VMM process, how far into the file it has read and the totals so
//! far, so each `counters()` call reads only the new lines. It is shared by all callers of one
//! backend behind a mutex held only for in-memory bookkeeping, never across I/O.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use banger_host::process::ProcessId;
use serde::Deserialize;

use crate::VmmCounters;

/// Aggregate network counters of one metrics line (deltas).
#[derive(Debug, Default, Deserialize)]
struct NetLine {
    #[serde(default)]
    rx_bytes_count: u64,
    #[serde(default)]
    tx_bytes_count: u64,
    #[serde(default)]
    rx_packets_count: u64,
    #[serde(default)]
    tx_packets_count: u64,
}

/// Aggregate block counters of one metrics line (deltas).
#[derive(Debug, Default, Deserialize)]
struct BlockLine {
    #[serde(default)]
    read_bytes: u64,
    #[serde(default)]
    write_bytes: u64,
    #[serde(default)]
    read_count: u64,
    #[serde(default)]
    write_count: u64,
}

/// The parts of one metrics line banger reads; everything else is ignored.
#[derive(Debug, Default, Deserialize)]
struct MetricsLine {
    #[serde(default)]
    net: NetLine,
    #[serde(default)]
    block: BlockLine,
}

/// Adds one metrics line (JSON) to `totals`.
pub(crate) fn add_line(totals: &mut VmmCounters, line: &str) -> Result<(), serde_json::Error> {
    let line: MetricsLine = serde_json::from_str(line)?;
    totals.net_rx_bytes = totals.net_rx_bytes.saturating_add(line.net.rx_bytes_count);
    totals.net_tx_bytes = totals.net_tx_bytes.saturating_add(line.net.tx_bytes_count);
    totals.net_rx_packets = totals
        .net_rx_packets
        .saturating_add(line.net.rx_packets_count);
    totals.net_tx_packets = totals
        .net_tx_packets
        .saturating_add(line.net.tx_packets_count);
    totals.block_read_bytes = totals
        .block_read_bytes
        .saturating_add(line.block.read_bytes);
    totals.block_write_bytes = totals
        .block_write_bytes
        .saturating_add(line.block.write_bytes);
    totals.block_read_ops = totals.block_read_ops.saturating_add(line.block.read_count);
    totals.block_write_ops = totals
        .block_write_ops
        .saturating_add(line.block.write_count);
    Ok(())
}

/// How far one process's metrics file has been read, and the totals up to there.
#[derive(Debug, Default, Clone)]
struct Cursor {
    offset: u64,
    totals: VmmCounters,
}

/// Per-process running totals of Firecracker metrics files.
#[derive(Debug, Default)]
pub(crate) struct MetricsLedger {
    cursors: Mutex<HashMap<ProcessId, Cursor>>,
}

impl MetricsLedger {
    /// Reads the lines `process` has added to `path` since the last call and returns the totals.
    ///
    /// Only complete (newline-terminated) lines are consumed; a line Firecracker is still writing
    /// is read next time. A line that is not valid JSON is skipped with a warning rather than
    /// making the counters unreadable forever.
    pub(crate) fn read(&self, process: ProcessId, path: &Path) -> io::Result<VmmCounters> {
        let mut cursor = self.cursor(process);
        let mut file = std::fs::File::open(path)?;
        if file.metadata()?.len() < cursor.offset {
            // Truncated underneath us: start over rather than report nonsense.
            cursor = Cursor::default();
        }
        file.seek(SeekFrom::Start(cursor.offset))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)?;
        let complete = fresh
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |last| last + 1);
        for line in String::from_utf8_lossy(&fresh[..complete]).lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Err(error) = add_line(&mut cursor.totals, line) {
                tracing::warn!(path = %path.display(), %error, "skipping unreadable Firecracker metrics line");
            }
        }
        cursor.offset += complete as u64;
        let totals = cursor.totals.clone();
        self.store(process, cursor);
        Ok(totals)
    }

    /// Forgets `process` (after it was killed).
    pub(crate) fn forget(&self, process: ProcessId) {
        if let Ok(mut cursors) = self.cursors.lock() {
            cursors.remove(&process);
        }
    }

    fn cursor(&self, key: ProcessId) -> Cursor {
        match self.cursors.lock() {
            Ok(cursors) => cursors.get(&key).cloned().unwrap_or_default(),
            // A panic elsewhere while holding the lock: re-reading from the start is still right.
            Err(_) => Cursor::default(),
        }
    }

    fn store(&self, key: ProcessId, cursor: Cursor) {
        if let Ok(mut cursors) = self.cursors.lock() {
            cursors.insert(key, cursor);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap: a panic is the failure report
mod tests {
    use std::io::Write;

    use super::*;

    const LINE_1: &str = r#"{"utc_timestamp_ms":1,"net":{"rx_bytes_count":100,"tx_bytes_count":10,"rx_packets_count":2,"tx_packets_count":1,"rx_fails":0},"net_eth0":{"rx_bytes_count":100},"block":{"read_bytes":4096,"write_bytes":512,"read_count":3,"write_count":1},"block_rootfs":{"read_bytes":4096},"vcpu":{"exit_io_in":5}}"#;
    const LINE_2: &str = r#"{"utc_timestamp_ms":2,"net":{"rx_bytes_count":50,"tx_bytes_count":5,"rx_packets_count":1,"tx_packets_count":1},"block":{"read_bytes":1024,"write_bytes":0,"read_count":1,"write_count":0}}"#;

    fn pid() -> ProcessId {
        ProcessId {
            pid: 42,
            start_time: 7,
        }
    }

    #[test]
    fn lines_are_deltas_and_are_summed_using_aggregates_only() {
        let mut totals = VmmCounters::default();
        add_line(&mut totals, LINE_1).unwrap();
        add_line(&mut totals, LINE_2).unwrap();
        assert_eq!(
            totals,
            VmmCounters {
                net_rx_bytes: 150,
                net_tx_bytes: 15,
                net_rx_packets: 3,
                net_tx_packets: 2,
                block_read_bytes: 5120,
                block_write_bytes: 512,
                block_read_ops: 4,
                block_write_ops: 1,
            }
        );
    }

    #[test]
    fn a_line_without_devices_counts_zero() {
        let mut totals = VmmCounters::default();
        add_line(&mut totals, r#"{"utc_timestamp_ms":1,"api_server":{}}"#).unwrap();
        assert_eq!(totals, VmmCounters::default());
    }

    #[test]
    fn ledger_reads_only_new_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        let mut file = std::fs::File::create(&path).unwrap();
        let ledger = MetricsLedger::default();
        assert_eq!(ledger.read(pid(), &path).unwrap(), VmmCounters::default());

        writeln!(file, "{LINE_1}").unwrap();
        // Half of the second line: not yet counted.
        write!(file, "{}", &LINE_2[..20]).unwrap();
        assert_eq!(ledger.read(pid(), &path).unwrap().net_rx_bytes, 100);

        writeln!(file, "{}", &LINE_2[20..]).unwrap();
        let totals = ledger.read(pid(), &path).unwrap();
        assert_eq!(totals.net_rx_bytes, 150);
        assert_eq!(totals.block_read_ops, 4);
        // Nothing new: same totals, nothing double-counted.
        assert_eq!(ledger.read(pid(), &path).unwrap(), totals);
    }

    #[test]
    fn ledger_skips_garbage_and_restarts_after_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        std::fs::write(&path, format!("not json\n{LINE_1}\n{LINE_2}\n")).unwrap();
        let ledger = MetricsLedger::default();
        assert_eq!(ledger.read(pid(), &path).unwrap().net_rx_bytes, 150);

        std::fs::write(&path, format!("{LINE_2}\n")).unwrap();
        assert_eq!(ledger.read(pid(), &path).unwrap().net_rx_bytes, 50);
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = MetricsLedger::default();
        let err = ledger
            .read(pid(), &dir.path().join("absent.json"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
