//! Per-VM resource samples: the ring of recent samples, the rates between them, and the reader
//! of a VMM process's CPU time and memory from procfs.
//!
//! The daemon's stats loop owns the timing: every `stats_poll_interval_secs` it builds one
//! [`RawSample`] per running VM (process counters from [`ProcReader`], I/O counters from
//! `Vmm::counters`) and hands it to the shared [`StatsBook`], which turns consecutive raw
//! samples into [`VmStatsSample`]s with rates and keeps the last [`RING_CAPACITY`] per VM.
//! Everything here is pure or reads files under a root passed in, so it is tested without a VM.
//!
//! Concurrency: the book is one mutex around a map; the loop writes once per tick and API
//! handlers copy out what they need, so the lock is never held across an await.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use banger_api::{VmId, VmStats, VmStatsSample};
use banger_host::process::ProcessId;
use banger_vmm::VmmCounters;
use chrono::{DateTime, Utc};

/// Samples kept per VM (10 minutes at the default 5 s interval).
pub const RING_CAPACITY: usize = 120;

/// What one VMM process (or the sum of it and its helpers) has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcUsage {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

impl std::ops::Add for ProcUsage {
    type Output = ProcUsage;

    fn add(self, other: ProcUsage) -> ProcUsage {
        ProcUsage {
            cpu_ticks: self.cpu_ticks.saturating_add(other.cpu_ticks),
            rss_bytes: self.rss_bytes.saturating_add(other.rss_bytes),
        }
    }
}

/// Why a process's usage could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcReadError {
    /// A procfs file could not be read (the process is gone, or procfs is elsewhere).
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A procfs file did not have the expected shape.
    #[error("{path} has no {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was missing.
        what: &'static str,
    },
    /// The pid now belongs to another process (its start time differs).
    #[error("pid {pid} was reused by another process")]
    Recycled {
        /// The pid.
        pid: u32,
    },
}

/// Reads CPU time and RSS of processes from a procfs root (`/proc`, or a directory a test
/// fills with `PID/stat` and `PID/status` files).
#[derive(Debug, Clone)]
pub struct ProcReader {
    root: PathBuf,
    ticks_per_sec: u64,
}

impl ProcReader {
    /// A reader of `root` whose CPU times are in `ticks_per_sec` clock ticks (`sysconf(CLK_TCK)`).
    pub fn new(root: impl Into<PathBuf>, ticks_per_sec: u64) -> Self {
        Self {
            root: root.into(),
            ticks_per_sec: ticks_per_sec.max(1),
        }
    }

    /// The procfs root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Clock ticks per second of the CPU times this reader returns.
    pub fn ticks_per_sec(&self) -> u64 {
        self.ticks_per_sec
    }

    /// The usage of `process`, refusing a pid that now names another process.
    pub fn read(&self, process: ProcessId) -> Result<ProcUsage, ProcReadError> {
        let dir = self.root.join(process.pid.to_string());
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| ProcReadError::Io { path, source })
        };
        let stat = read("stat")?;
        let (start_time, cpu_ticks) =
            parse_stat(&stat).ok_or_else(|| ProcReadError::Malformed {
                path: dir.join("stat"),
                what: "utime/stime/starttime fields",
            })?;
        if start_time != process.start_time {
            return Err(ProcReadError::Recycled { pid: process.pid });
        }
        let status = read("status")?;
        // Kernel threads and zombies have no VmRSS line: they use no user memory.
        let rss_bytes = parse_status_rss(&status).unwrap_or(0);
        Ok(ProcUsage {
            cpu_ticks,
            rss_bytes,
        })
    }
}

/// `(starttime, utime + stime)` from `/proc/PID/stat`. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted after the
/// last `)`.
pub fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, utime (14) is 11, stime (15) is 12,
    // starttime (22) is 19.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some((start, utime.saturating_add(stime)))
}

/// `VmRSS` from `/proc/PID/status`, in bytes.
pub fn parse_status_rss(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// What the loop read for one VM at one instant, before rates.
#[derive(Debug, Clone, PartialEq)]
pub struct RawSample {
    /// When.
    pub at: DateTime<Utc>,
    /// The VMM process (plus helpers), when procfs answered.
    pub process: Option<ProcUsage>,
    /// The guest's configured memory, in bytes.
    pub guest_memory_bytes: u64,
    /// I/O counters, when the VMM answered.
    pub io: Option<VmmCounters>,
}

/// The last samples of one VM and the raw sample the next rates are computed against.
#[derive(Debug, Clone)]
pub struct StatsRing {
    samples: VecDeque<VmStatsSample>,
    previous: Option<RawSample>,
    capacity: usize,
    ticks_per_sec: u64,
}

impl StatsRing {
    /// An empty ring keeping `capacity` samples of CPU times in `ticks_per_sec` ticks.
    pub fn new(capacity: usize, ticks_per_sec: u64) -> Self {
        Self {
            samples: VecDeque::with_capacity(capacity),
            previous: None,
            capacity: capacity.max(1),
            ticks_per_sec: ticks_per_sec.max(1),
        }
    }

    /// Adds `raw`, computing rates against the previous raw sample, and drops the oldest
    /// sample beyond capacity. A counter that went down (the VMM restarted) gives a rate of 0.
    pub fn push(&mut self, raw: RawSample) -> VmStatsSample {
        let sample = self.rate(&raw);
        self.previous = Some(raw);
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample.clone());
        sample
    }

    fn rate(&self, raw: &RawSample) -> VmStatsSample {
        let previous = self.previous.as_ref();
        let secs = previous
            .map(|p| (raw.at - p.at).num_milliseconds() as f64 / 1000.0)
            .filter(|s| *s > 0.0);
        let per_sec = |now: Option<u64>, before: Option<u64>| match (now, before, secs) {
            (Some(now), Some(before), Some(secs)) if now >= before => (now - before) as f64 / secs,
            _ => 0.0,
        };
        let process = raw.process.unwrap_or_default();
        let ticks = |r: Option<&RawSample>| r.and_then(|r| r.process).map(|p| p.cpu_ticks);
        let cpu_ticks_per_sec = per_sec(ticks(Some(raw)), ticks(previous));
        let io = raw.io.clone().unwrap_or_default();
        let field = |r: Option<&RawSample>, f: fn(&VmmCounters) -> u64| {
            r.and_then(|r| r.io.as_ref()).map(f)
        };
        let io_rate = |f: fn(&VmmCounters) -> u64| per_sec(field(Some(raw), f), field(previous, f));
        VmStatsSample {
            at: raw.at,
            cpu_percent: cpu_ticks_per_sec * 100.0 / self.ticks_per_sec as f64,
            cpu_time_ms: process.cpu_ticks.saturating_mul(1000) / self.ticks_per_sec,
            rss_bytes: process.rss_bytes,
            guest_memory_bytes: raw.guest_memory_bytes,
            process_known: raw.process.is_some(),
            io_known: raw.io.is_some(),
            net_rx_bytes: io.net_rx_bytes,
            net_tx_bytes: io.net_tx_bytes,
            net_rx_packets: io.net_rx_packets,
            net_tx_packets: io.net_tx_packets,
            block_read_bytes: io.block_read_bytes,
            block_write_bytes: io.block_write_bytes,
            block_read_ops: io.block_read_ops,
            block_write_ops: io.block_write_ops,
            net_rx_bytes_per_sec: io_rate(|c| c.net_rx_bytes),
            net_tx_bytes_per_sec: io_rate(|c| c.net_tx_bytes),
            block_read_bytes_per_sec: io_rate(|c| c.block_read_bytes),
            block_write_bytes_per_sec: io_rate(|c| c.block_write_bytes),
        }
    }

    /// Samples, oldest first.
    pub fn samples(&self) -> impl DoubleEndedIterator<Item = &VmStatsSample> + ExactSizeIterator {
        self.samples.iter()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&VmStatsSample> {
        self.samples.back()
    }
}

#[derive(Debug)]
struct Entry {
    name: String,
    ring: StatsRing,
}

/// The rings of every running VM, shared by the stats loop (writer) and the API (readers).
#[derive(Debug, Clone)]
pub struct StatsBook {
    entries: Arc<Mutex<HashMap<VmId, Entry>>>,
    capacity: usize,
    ticks_per_sec: u64,
    interval_secs: u64,
}

impl StatsBook {
    /// An empty book of rings of `capacity` samples taken every `interval_secs`.
    pub fn new(capacity: usize, ticks_per_sec: u64, interval_secs: u64) -> Self {
        Self {
            entries: Arc::default(),
            capacity,
            ticks_per_sec,
            interval_secs,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Seconds between two samples.
    pub fn interval_secs(&self) -> u64 {
        self.interval_secs
    }

    /// Records a raw sample of VM `id` (named `name`) and returns the sample with rates.
    pub fn record(&self, id: VmId, name: &str, raw: RawSample) -> VmStatsSample {
        let mut entries = self.lock();
        let entry = entries.entry(id).or_insert_with(|| Entry {
            name: name.to_string(),
            ring: StatsRing::new(self.capacity, self.ticks_per_sec),
        });
        entry.name = name.to_string();
        entry.ring.push(raw)
    }

    /// Forgets every VM not in `running` (stopped or deleted VMs start a fresh ring: their
    /// next VMM's counters start at zero).
    pub fn retain(&self, running: &[VmId]) {
        self.lock().retain(|id, _| running.contains(id));
    }

    /// The stats of VM `id` (named `name`) with its last `last` samples; an empty answer when
    /// it has none (not running, or not sampled yet).
    pub fn get(&self, id: VmId, name: &str, last: usize) -> VmStats {
        let entries = self.lock();
        match entries.get(&id) {
            Some(entry) => self.stats_of(id, entry, last),
            None => VmStats {
                vm_id: id,
                name: name.to_string(),
                interval_secs: self.interval_secs,
                latest: None,
                samples: Vec::new(),
            },
        }
    }

    /// The stats of every sampled VM, by name, each with its last `last` samples.
    pub fn all(&self, last: usize) -> Vec<VmStats> {
        let entries = self.lock();
        let mut all: Vec<VmStats> = entries
            .iter()
            .map(|(id, entry)| self.stats_of(*id, entry, last))
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn stats_of(&self, id: VmId, entry: &Entry, last: usize) -> VmStats {
        let skip = entry.ring.samples.len().saturating_sub(last);
        VmStats {
            vm_id: id,
            name: entry.name.clone(),
            interval_secs: self.interval_secs,
            latest: entry.ring.latest().cloned(),
            samples: entry.ring.samples().skip(skip).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (qemu-system-x86 (v)) S 1 4242 4242 0 -1 4194560 3456 0 0 0 \
                        250 50 0 0 20 0 3 0 987654 1234567 890 18446744073709551615 1 1 0 0 0 0 0";

    fn raw(secs: i64, ticks: u64, rx: u64) -> RawSample {
        RawSample {
            at: DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap(),
            process: Some(ProcUsage {
                cpu_ticks: ticks,
                rss_bytes: 64 << 20,
            }),
            guest_memory_bytes: 256 << 20,
            io: Some(VmmCounters {
                net_rx_bytes: rx,
                block_write_bytes: rx * 2,
                ..VmmCounters::default()
            }),
        }
    }

    #[test]
    fn stat_fields_are_counted_after_a_name_with_spaces_and_parens() {
        assert_eq!(parse_stat(STAT), Some((987_654, 300)));
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn rss_is_read_in_kib_and_returned_in_bytes() {
        let status = "Name:\tqemu\nVmPeak:\t  9000 kB\nVmRSS:\t   65536 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss(status), Some(64 << 20));
        assert_eq!(parse_status_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn first_sample_has_no_rates_then_rates_are_per_second() {
        let mut ring = StatsRing::new(10, 100);
        let first = ring.push(raw(0, 1000, 0));
        assert_eq!(first.cpu_percent, 0.0);
        assert_eq!(first.cpu_time_ms, 10_000);
        assert!(first.process_known && first.io_known);
        // 5 s later: 250 ticks = 2.5 CPU-seconds in 5 s = 50 %; 10 000 bytes in 5 s.
        let second = ring.push(raw(5, 1250, 10_000));
        assert!((second.cpu_percent - 50.0).abs() < 1e-9, "{second:?}");
        assert!((second.net_rx_bytes_per_sec - 2000.0).abs() < 1e-9);
        assert!((second.block_write_bytes_per_sec - 4000.0).abs() < 1e-9);
        assert_eq!(second.net_tx_bytes_per_sec, 0.0);
        assert_eq!(second.guest_memory_bytes, 256 << 20);
    }

    #[test]
    fn counters_that_go_down_give_zero_rates_not_huge_ones() {
        let mut ring = StatsRing::new(10, 100);
        ring.push(raw(0, 5000, 90_000));
        let after_restart = ring.push(raw(5, 10, 100));
        assert_eq!(after_restart.cpu_percent, 0.0);
        assert_eq!(after_restart.net_rx_bytes_per_sec, 0.0);
        assert_eq!(after_restart.net_rx_bytes, 100);
    }

    #[test]
    fn unknown_counters_are_zero_and_flagged() {
        let mut ring = StatsRing::new(10, 100);
        ring.push(raw(0, 100, 100));
        let sample = ring.push(RawSample {
            process: None,
            io: None,
            ..raw(5, 0, 0)
        });
        assert!(!sample.process_known && !sample.io_known);
        assert_eq!((sample.cpu_percent, sample.rss_bytes), (0.0, 0));
        assert_eq!(sample.net_rx_bytes_per_sec, 0.0);
    }

    #[test]
    fn ring_keeps_only_the_newest_samples() {
        let mut ring = StatsRing::new(3, 100);
        for i in 0..5 {
            ring.push(raw(i * 5, 100 * i as u64, 0));
        }
        let times: Vec<i64> = ring
            .samples()
            .map(|s| s.at.timestamp() - 1_700_000_000)
            .collect();
        assert_eq!(times, [10, 15, 20]);
        assert_eq!(
            ring.latest().map(|s| s.at.timestamp() - 1_700_000_000),
            Some(20)
        );
    }

    #[test]
    fn book_forgets_vms_that_stopped_and_limits_history() {
        let book = StatsBook::new(RING_CAPACITY, 100, 5);
        let (a, b) = (VmId::new(), VmId::new());
        for i in 0..4 {
            book.record(a, "alpha", raw(i * 5, 0, 0));
        }
        book.record(b, "beta", raw(0, 0, 0));
        let all = book.all(2);
        assert_eq!(
            all.iter()
                .map(|s| (s.name.as_str(), s.samples.len()))
                .collect::<Vec<_>>(),
            [("alpha", 2), ("beta", 1)]
        );
        assert_eq!(book.get(a, "alpha", usize::MAX).samples.len(), 4);
        book.retain(&[b]);
        let gone = book.get(a, "alpha", usize::MAX);
        assert!(gone.latest.is_none() && gone.samples.is_empty());
        assert_eq!(book.all(0).len(), 1);
    }

    #[test]
    fn proc_reader_reads_a_fake_procfs_and_refuses_recycled_pids() {
        let dir = tempfile::tempdir().unwrap();
        let pid_dir = dir.path().join("4242");
        std::fs::create_dir_all(&pid_dir).unwrap();
        std::fs::write(pid_dir.join("stat"), STAT).unwrap();
        std::fs::write(pid_dir.join("status"), "VmRSS:\t 1024 kB\n").unwrap();
        let reader = ProcReader::new(dir.path(), 100);
        let usage = reader
            .read(ProcessId {
                pid: 4242,
                start_time: 987_654,
            })
            .unwrap();
        assert_eq!(
            usage,
            ProcUsage {
                cpu_ticks: 300,
                rss_bytes: 1 << 20
            }
        );
        assert!(matches!(
            reader.read(ProcessId {
                pid: 4242,
                start_time: 1
            }),
            Err(ProcReadError::Recycled { pid: 4242 })
        ));
        assert!(matches!(
            reader.read(ProcessId {
                pid: 7,
                start_time: 1
            }),
            Err(ProcReadError::Io { .. })
        ));
    }
}
