//! Wire types of the stats loop: per-VM samples (`GET /v1/vms/{vm}/stats`), the latest sample
//! of every running VM (`GET /v1/stats`), and the web listener's address (`GET /v1/web`).
//!
//! Counters are cumulative since the VMM started; rates are computed by the daemon between two
//! consecutive samples, so a client never has to keep history to draw a chart. Network counters
//! come from the VM's tap (whatever the VMM), 0 for a VM without a NIC; block counters come from
//! the VMM. When the VMM's counters cannot be read at all, they are 0 and `io_known` says so.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::VmId;

/// One sample of one running VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmStatsSample {
    /// When the sample was taken.
    pub at: DateTime<Utc>,
    /// CPU used by the VMM process and its helpers since the previous sample, in percent of one
    /// host CPU (like `top`: a busy 2-vCPU guest can show 200). 0 for the first sample.
    pub cpu_percent: f64,
    /// CPU time the VMM process and its helpers used since they started, in milliseconds.
    pub cpu_time_ms: u64,
    /// Resident memory of the VMM process and its helpers, in bytes.
    pub rss_bytes: u64,
    /// Memory configured for the guest, in bytes.
    pub guest_memory_bytes: u64,
    /// Whether the VMM's process counters (`cpu_*`, `rss_bytes`) could be read.
    pub process_known: bool,
    /// Whether the VMM's I/O counters (`net_*`, `block_*`) could be read.
    pub io_known: bool,
    /// Bytes received by the guest NIC.
    pub net_rx_bytes: u64,
    /// Bytes sent by the guest NIC.
    pub net_tx_bytes: u64,
    /// Packets received by the guest NIC.
    pub net_rx_packets: u64,
    /// Packets sent by the guest NIC.
    pub net_tx_packets: u64,
    /// Bytes read from the VM's block devices.
    pub block_read_bytes: u64,
    /// Bytes written to the VM's block devices.
    pub block_write_bytes: u64,
    /// Read requests.
    pub block_read_ops: u64,
    /// Write requests.
    pub block_write_ops: u64,
    /// Receive rate since the previous sample, bytes per second.
    pub net_rx_bytes_per_sec: f64,
    /// Send rate since the previous sample, bytes per second.
    pub net_tx_bytes_per_sec: f64,
    /// Block read rate since the previous sample, bytes per second.
    pub block_read_bytes_per_sec: f64,
    /// Block write rate since the previous sample, bytes per second.
    pub block_write_bytes_per_sec: f64,
}

/// The stats the daemon holds for one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VmStats {
    /// The VM.
    pub vm_id: VmId,
    /// Its name.
    pub name: String,
    /// Seconds between two samples (`stats_poll_interval_secs`).
    pub interval_secs: u64,
    /// The newest sample; `None` until the loop sampled the VM while it ran.
    pub latest: Option<VmStatsSample>,
    /// Samples, oldest first (at most the ring's capacity; empty in `GET /v1/stats` unless
    /// `last` asks for some).
    pub samples: Vec<VmStatsSample>,
}

/// Answer of `GET /v1/web` (Unix socket only): where the web UI listens and how to log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebAccess {
    /// Base URL of the web listener, e.g. `http://127.0.0.1:7777`.
    pub url: String,
    /// The token of this daemon start (64 hex digits). `GET {url}/login?token=...` exchanges
    /// it for a session cookie; API clients may send `Authorization: Bearer <token>` instead.
    pub token: String,
    /// `{url}/login?token={token}`, the link to open in a browser.
    pub login_url: String,
}
