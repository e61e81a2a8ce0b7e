//! Port-forward rows: which host port (per protocol, unique across all VMs) reaches which guest
//! port of which VM. Rows go with their VM (`ON DELETE CASCADE`); applying them to the host is
//! the network backend's job, not the store's.

use banger_api::{PortForward, PortProto, VmId};
use chrono::Utc;
use rusqlite::params;

use crate::codec::{self, RowDecoder};
use crate::error::{write_error, RecordKind};
use crate::{Store, StoreError};

const TABLE: &str = "port_forwards";

/// One stored forward and the VM it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForwardRecord {
    /// The VM the guest port belongs to.
    pub vm_id: VmId,
    /// The forward.
    pub forward: PortForward,
}

impl Store {
    /// Records `forward` for VM `vm`. [`StoreError::Conflict`] (what `"host port"`) when the
    /// host port is already forwarded for that protocol (to any VM); [`StoreError::NotFound`]
    /// when the VM does not exist.
    pub fn insert_port_forward(&self, vm: VmId, forward: &PortForward) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO port_forwards (vm_id, proto, host_port, guest_port, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    vm.to_string(),
                    forward.proto.as_str(),
                    forward.host_port,
                    forward.guest_port,
                    codec::time_text(&Utc::now())
                ],
            )
            .map_err(|err| {
                write_error(
                    err,
                    |column| match column {
                        "proto" | "host_port" => Some((
                            "host port",
                            format!("{}/{}", forward.host_port, forward.proto),
                        )),
                        _ => None,
                    },
                    || StoreError::NotFound {
                        kind: RecordKind::Vm,
                        id: vm.to_string(),
                    },
                )
            })?;
            Ok(())
        })
    }

    /// Removes the forward of host port `host_port`/`proto` from VM `vm`. `Ok(false)` when that
    /// VM had no such forward.
    pub fn delete_port_forward(
        &self,
        vm: VmId,
        proto: PortProto,
        host_port: u16,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM port_forwards WHERE vm_id = ?1 AND proto = ?2 AND host_port = ?3",
                params![vm.to_string(), proto.as_str(), host_port],
            )? > 0)
        })
    }

    /// The forwards of VM `vm`, by protocol then host port.
    pub fn list_port_forwards(&self, vm: VmId) -> Result<Vec<PortForward>, StoreError> {
        Ok(self
            .select_forwards(Some(vm))?
            .into_iter()
            .map(|record| record.forward)
            .collect())
    }

    /// Every forward of every VM, by protocol then host port.
    pub fn all_port_forwards(&self) -> Result<Vec<PortForwardRecord>, StoreError> {
        self.select_forwards(None)
    }

    fn select_forwards(&self, vm: Option<VmId>) -> Result<Vec<PortForwardRecord>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT vm_id, proto, host_port, guest_port FROM port_forwards \
                 WHERE ?1 IS NULL OR vm_id = ?1 ORDER BY proto, host_port",
            )?;
            let rows = statement
                .query_map([vm.map(|id| id.to_string())], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter()
                .map(|(vm_id, proto, host_port, guest_port)| {
                    let row = RowDecoder::new(TABLE, vm_id);
                    Ok(PortForwardRecord {
                        vm_id: row.parse("vm_id", vm_id)?,
                        forward: PortForward {
                            host_port: row.int("host_port", *host_port)?,
                            guest_port: row.int("guest_port", *guest_port)?,
                            proto: row.parse("proto", proto)?,
                        },
                    })
                })
                .collect()
        })
    }
}
