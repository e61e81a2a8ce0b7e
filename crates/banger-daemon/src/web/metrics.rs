//! `GET /metrics`: Prometheus text exposition (format 0.0.4), written by hand.
//!
//! Every value already lives in the stats book and the store, so a scrape renders them into
//! text; a metrics registry crate would only duplicate that state. Metric names follow
//! Prometheus conventions (`_total` for counters, base units: seconds and bytes); every per-VM
//! series carries a `vm` label with the VM's name. The list is in docs/observability.md.

use std::fmt::Write;

use banger_api::{Vm, VmState, VmStats, VmStatsSample};

/// The content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const STATES: [VmState; 7] = [
    VmState::Creating,
    VmState::Running,
    VmState::Stopping,
    VmState::Stopped,
    VmState::Starting,
    VmState::Deleting,
    VmState::Error,
];

type Field = fn(&VmStatsSample) -> f64;

/// Per-VM series taken from the latest sample: name, type, help, value.
const SERIES: &[(&str, &str, &str, Field)] = &[
    (
        "banger_vm_cpu_seconds_total",
        "counter",
        "CPU time used by the VM's VMM processes.",
        |s| s.cpu_time_ms as f64 / 1000.0,
    ),
    (
        "banger_vm_cpu_percent",
        "gauge",
        "CPU use between the last two samples, percent of one host CPU.",
        |s| s.cpu_percent,
    ),
    (
        "banger_vm_rss_bytes",
        "gauge",
        "Resident memory of the VM's VMM processes.",
        |s| s.rss_bytes as f64,
    ),
    (
        "banger_vm_guest_memory_bytes",
        "gauge",
        "Memory configured for the guest.",
        |s| s.guest_memory_bytes as f64,
    ),
    (
        "banger_vm_network_receive_bytes_total",
        "counter",
        "Bytes received by the guest NIC (0 when unknown).",
        |s| s.net_rx_bytes as f64,
    ),
    (
        "banger_vm_network_transmit_bytes_total",
        "counter",
        "Bytes sent by the guest NIC (0 when unknown).",
        |s| s.net_tx_bytes as f64,
    ),
    (
        "banger_vm_network_receive_packets_total",
        "counter",
        "Packets received by the guest NIC (0 when unknown).",
        |s| s.net_rx_packets as f64,
    ),
    (
        "banger_vm_network_transmit_packets_total",
        "counter",
        "Packets sent by the guest NIC (0 when unknown).",
        |s| s.net_tx_packets as f64,
    ),
    (
        "banger_vm_block_read_bytes_total",
        "counter",
        "Bytes read from the VM's block devices.",
        |s| s.block_read_bytes as f64,
    ),
    (
        "banger_vm_block_written_bytes_total",
        "counter",
        "Bytes written to the VM's block devices.",
        |s| s.block_write_bytes as f64,
    ),
    (
        "banger_vm_block_reads_total",
        "counter",
        "Read requests to the VM's block devices.",
        |s| s.block_read_ops as f64,
    ),
    (
        "banger_vm_block_writes_total",
        "counter",
        "Write requests to the VM's block devices.",
        |s| s.block_write_ops as f64,
    ),
];

/// Escapes a label value (`\`, `"` and newlines).
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every metric.
pub fn render(version: &str, vms: &[Vm], images: usize, stats: &[VmStats]) -> String {
    let mut out = String::new();
    header(
        &mut out,
        "banger_info",
        "gauge",
        "The running bangerd; always 1.",
    );
    let _ = writeln!(out, "banger_info{{version=\"{}\"}} 1", label(version));
    header(&mut out, "banger_vms", "gauge", "VMs by state.");
    for state in STATES {
        let count = vms.iter().filter(|vm| vm.state == state).count();
        let _ = writeln!(out, "banger_vms{{state=\"{state}\"}} {count}");
    }
    header(&mut out, "banger_images", "gauge", "Registered images.");
    let _ = writeln!(out, "banger_images {images}");
    header(
        &mut out,
        "banger_vm_vcpus",
        "gauge",
        "Virtual CPUs of each VM.",
    );
    for vm in vms {
        let _ = writeln!(
            out,
            "banger_vm_vcpus{{vm=\"{}\"}} {}",
            label(vm.name.as_str()),
            vm.vcpus
        );
    }
    for (name, kind, help, field) in SERIES {
        header(&mut out, name, kind, help);
        for vm in stats {
            if let Some(sample) = &vm.latest {
                let _ = writeln!(
                    out,
                    "{name}{{vm=\"{}\"}} {}",
                    label(&vm.name),
                    field(sample)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_series_has_help_and_type_and_counters_end_in_total() {
        let text = render("1.2.3", &[], 0, &[]);
        assert!(text.contains("banger_info{version=\"1.2.3\"} 1\n"));
        assert!(text.contains("banger_vms{state=\"running\"} 0\n"));
        for (name, kind, _, _) in SERIES {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name}");
            assert_eq!(*kind == "counter", name.ends_with("_total"), "{name}");
        }
    }
}
