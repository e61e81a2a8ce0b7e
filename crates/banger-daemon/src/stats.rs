//! The stats loop: every `stats_poll_interval_secs`, one sample of every running VM.
//!
//! For each VM that is running and has handles, the loop reads the VMM process's CPU time and
//! RSS (plus those of its helper processes, e.g. QEMU's vhost-device-vsock) from procfs, the
//! VMM's I/O counters through [`banger_vmm::Vmm::counters`], and the guest NIC's traffic from its
//! tap ([`banger_core::backends::VmNetwork::nic_counters`]; the same for every VMM, and the only
//! source for QEMU's microvm, which reports none), and records them in the shared [`StatsBook`].
//! VMs are sampled concurrently and each VMM call is bounded by a timeout, so a
//! VMM that does not answer costs one missing I/O sample, never a stalled loop. Rings of VMs
//! that stopped are dropped at the next tick. The loop owns no VM: it only reads.

use std::time::Duration;

use banger_api::{VmId, VmState};
use banger_core::stats::{ProcReader, ProcUsage, RawSample, StatsBook};
use banger_core::Manager;

/// Longest wait for one VMM's counters in one tick.
const COUNTERS_TIMEOUT: Duration = Duration::from_secs(2);

/// Clock ticks per second of the CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_sec() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(ticks)) if ticks > 0 => ticks as u64,
        // Linux has used 100 (USER_HZ) on every architecture banger runs on.
        _ => 100,
    }
}

/// Runs the loop until the task is aborted.
pub async fn run(manager: Manager, book: StatsBook, reader: ProcReader, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        tick(&manager, &book, &reader).await;
    }
}

/// Takes one sample of every running VM and forgets VMs that no longer run.
pub async fn tick(manager: &Manager, book: &StatsBook, reader: &ProcReader) {
    let vms = match manager.list_vms() {
        Ok(vms) => vms,
        Err(err) => {
            tracing::warn!(error = %err, "stats: listing VMs");
            return;
        }
    };
    let vmm = manager.vmm();
    let network = manager.backends().network.clone();
    let samples = vms
        .into_iter()
        .filter(|vm| vm.state == VmState::Running)
        .filter_map(|vm| manager.runtime_handles(vm.id).map(|h| (vm, h)))
        .map(|(vm, handles)| {
            let vmm = vmm.clone();
            let network = network.clone();
            async move {
                let process = std::iter::once(handles.vmm.process)
                    .chain(handles.vmm.helpers.iter().copied())
                    .enumerate()
                    .map(|(i, id)| (i, reader.read(id)))
                    .try_fold(ProcUsage::default(), |sum, (i, read)| match read {
                        Ok(usage) => Some(sum + usage),
                        // A helper that cannot be read does not hide the VMM's own numbers.
                        Err(_) if i > 0 => Some(sum),
                        Err(err) => {
                            tracing::debug!(vm = %vm.name, error = %err, "stats: VMM process");
                            None
                        }
                    });
                let io = match &vmm {
                    Some(vmm) => {
                        match tokio::time::timeout(COUNTERS_TIMEOUT, vmm.counters(&handles.vmm))
                            .await
                        {
                            Ok(Ok(counters)) => Some(counters),
                            Ok(Err(err)) => {
                                tracing::debug!(vm = %vm.name, error = %err, "stats: VMM counters");
                                None
                            }
                            Err(_) => {
                                tracing::debug!(vm = %vm.name, "stats: VMM counters timed out");
                                None
                            }
                        }
                    }
                    None => None,
                };
                let io = match (io, &handles.tap) {
                    (Some(mut io), Some(tap)) => {
                        match tokio::time::timeout(COUNTERS_TIMEOUT, network.nic_counters(tap))
                            .await
                        {
                            Ok(Ok(Some(nic))) => {
                                io.net_rx_bytes = nic.rx_bytes;
                                io.net_tx_bytes = nic.tx_bytes;
                                io.net_rx_packets = nic.rx_packets;
                                io.net_tx_packets = nic.tx_packets;
                            }
                            Ok(Ok(None)) => {}
                            Ok(Err(err)) => {
                                tracing::debug!(vm = %vm.name, error = %err, "stats: tap counters");
                            }
                            Err(_) => {
                                tracing::debug!(vm = %vm.name, "stats: tap counters timed out")
                            }
                        }
                        Some(io)
                    }
                    (io, _) => io,
                };
                let raw = RawSample {
                    at: chrono::Utc::now(),
                    process,
                    guest_memory_bytes: vm.memory_mib.saturating_mul(1024 * 1024),
                    io,
                };
                (vm.id, vm.name.to_string(), raw)
            }
        });
    let samples = futures::future::join_all(samples).await;
    let running: Vec<VmId> = samples.iter().map(|(id, _, _)| *id).collect();
    for (id, name, raw) in samples {
        book.record(id, &name, raw);
    }
    book.retain(&running);
}
