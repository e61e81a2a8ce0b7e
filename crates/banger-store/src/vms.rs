//! VM rows: create, update, look up, list, delete, and the allocation views (IPs and vsock
//! CIDs in use) the allocator reads.
//!
//! The store does not enforce the state machine: the VM's owning task calls
//! [`VmState::transition`](banger_api::VmState::transition) and then persists the result.

use std::net::Ipv4Addr;

use banger_api::{VmId, VmState};
use chrono::Utc;
use rusqlite::types::ToSql;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::codec::{self, RowDecoder};
use crate::error::{write_error, RecordKind};
use crate::records::VmRecord;
use crate::{Store, StoreError};

const TABLE: &str = "vms";

const COLUMNS: &str = "id, name, image_id, vcpus, memory_mib, disk_size_mib, state, \
     desired_state, ip, mac, vsock_cid, vm_dir, last_error, stage_timings, created_at, updated_at, \
     root_clone_method";

impl Store {
    /// Records a new VM. [`StoreError::Conflict`] if its id, name, IP, MAC or vsock CID is
    /// taken; [`StoreError::NotFound`] if its image does not exist.
    pub fn insert_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let values = VmValues::encode(vm)?;
        self.write(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO vms ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
                ),
                values.params().as_slice(),
            )
            .map_err(|err| vm_write_error(err, vm))?;
            Ok(())
        })
    }

    /// Replaces every field of the VM with id `vm.id` (including `updated_at`, which the caller
    /// sets). [`StoreError::NotFound`] if there is no such VM; conflicts as for
    /// [`insert_vm`](Store::insert_vm).
    pub fn update_vm(&self, vm: &VmRecord) -> Result<(), StoreError> {
        let values = VmValues::encode(vm)?;
        self.write(|tx| {
            let changed = tx
                .execute(
                    "UPDATE vms SET name = ?2, image_id = ?3, vcpus = ?4, memory_mib = ?5, \
                     disk_size_mib = ?6, state = ?7, desired_state = ?8, ip = ?9, mac = ?10, \
                     vsock_cid = ?11, vm_dir = ?12, last_error = ?13, stage_timings = ?14, \
                     created_at = ?15, updated_at = ?16, root_clone_method = ?17 WHERE id = ?1",
                    values.params().as_slice(),
                )
                .map_err(|err| vm_write_error(err, vm))?;
            if changed == 0 {
                return Err(StoreError::NotFound {
                    kind: RecordKind::Vm,
                    id: vm.id.to_string(),
                });
            }
            Ok(())
        })
    }

    /// Records a new state and last error (`None` clears it) and sets `updated_at` to now.
    /// [`StoreError::NotFound`] if there is no such VM.
    pub fn set_vm_state(
        &self,
        id: VmId,
        state: VmState,
        last_error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE vms SET state = ?2, last_error = ?3, updated_at = ?4 WHERE id = ?1",
                params![
                    id.to_string(),
                    state.as_str(),
                    last_error,
                    codec::time_text(&Utc::now())
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound {
                    kind: RecordKind::Vm,
                    id: id.to_string(),
                });
            }
            Ok(())
        })
    }

    /// The VM with this id, if any.
    pub fn get_vm(&self, id: VmId) -> Result<Option<VmRecord>, StoreError> {
        self.read(|conn| select_one(conn, "id", &id.to_string()))
    }

    /// The VM with exactly this name, if any.
    pub fn get_vm_by_name(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        self.read(|conn| select_one(conn, "name", name))
    }

    /// Every VM, ordered by name.
    pub fn list_vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        self.read(|conn| {
            let mut statement =
                conn.prepare(&format!("SELECT {COLUMNS} FROM vms ORDER BY name"))?;
            let raws = statement
                .query_map([], RawVm::from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(RawVm::decode).collect()
        })
    }

    /// Deletes a VM's record. `Ok(false)` if it did not exist.
    pub fn delete_vm(&self, id: VmId) -> Result<bool, StoreError> {
        self.write(|tx| Ok(tx.execute("DELETE FROM vms WHERE id = ?1", [id.to_string()])? > 0))
    }

    /// vsock CIDs held by some VM, ascending.
    pub fn used_vsock_cids(&self) -> Result<Vec<u32>, StoreError> {
        self.read(|conn| {
            let mut statement = conn.prepare(
                "SELECT id, vsock_cid FROM vms WHERE vsock_cid IS NOT NULL ORDER BY vsock_cid",
            )?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter()
                .map(|(id, cid)| RowDecoder::new(TABLE, id).int("vsock_cid", *cid))
                .collect()
        })
    }

    /// IPv4 addresses held by some VM, ascending.
    pub fn used_ips(&self) -> Result<Vec<Ipv4Addr>, StoreError> {
        let mut ips = self.read(|conn| {
            let mut statement = conn.prepare("SELECT id, ip FROM vms WHERE ip IS NOT NULL")?;
            let rows = statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter()
                .map(|(id, ip)| RowDecoder::new(TABLE, id).parse::<Ipv4Addr>("ip", ip))
                .collect::<Result<Vec<_>, _>>()
        })?;
        // Text order is not address order (`10.0.0.10` < `10.0.0.9`).
        ips.sort_unstable();
        Ok(ips)
    }
}

/// Maps a failed VM insert/update to a conflict on the column that collided, or to the
/// missing image.
fn vm_write_error(err: rusqlite::Error, vm: &VmRecord) -> StoreError {
    write_error(
        err,
        |column| match column {
            "id" => Some(("id", vm.id.to_string())),
            "name" => Some(("name", vm.name.to_string())),
            "ip" => vm.ip.map(|ip| ("ip", ip.to_string())),
            "mac" => vm.mac.clone().map(|mac| ("mac", mac)),
            "vsock_cid" => vm.vsock_cid.map(|cid| ("vsock_cid", cid.to_string())),
            _ => None,
        },
        || StoreError::NotFound {
            kind: RecordKind::Image,
            id: vm.image_id.to_string(),
        },
    )
}

/// The VM whose `column` equals `value` (`column` is one of ours, never user input).
fn select_one(
    conn: &Connection,
    column: &str,
    value: &str,
) -> Result<Option<VmRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM vms WHERE {column} = ?1"),
        [value],
        RawVm::from_row,
    )
    .optional()?
    .map(RawVm::decode)
    .transpose()
}

/// A VM record encoded as SQLite values, in [`COLUMNS`] order.
struct VmValues {
    id: String,
    name: String,
    image_id: String,
    vcpus: u32,
    memory_mib: i64,
    disk_size_mib: i64,
    state: &'static str,
    desired_state: &'static str,
    ip: Option<String>,
    mac: Option<String>,
    vsock_cid: Option<u32>,
    vm_dir: String,
    last_error: Option<String>,
    stage_timings: String,
    created_at: String,
    updated_at: String,
    root_clone_method: Option<&'static str>,
}

impl VmValues {
    fn encode(vm: &VmRecord) -> Result<Self, StoreError> {
        Ok(Self {
            id: vm.id.to_string(),
            name: vm.name.to_string(),
            image_id: vm.image_id.to_string(),
            vcpus: vm.vcpus,
            memory_mib: codec::int_value("memory_mib", vm.memory_mib)?,
            disk_size_mib: codec::int_value("disk_size_mib", vm.disk_size_mib)?,
            state: vm.state.as_str(),
            desired_state: vm.desired_state.as_str(),
            ip: vm.ip.map(|ip| ip.to_string()),
            mac: vm.mac.clone(),
            vsock_cid: vm.vsock_cid,
            vm_dir: codec::path_text("vm_dir", &vm.vm_dir)?.to_string(),
            last_error: vm.last_error.clone(),
            stage_timings: codec::json_text("stage_timings", &vm.stage_timings)?,
            created_at: codec::time_text(&vm.created_at),
            updated_at: codec::time_text(&vm.updated_at),
            root_clone_method: vm.root_clone_method.map(|method| method.as_str()),
        })
    }

    /// Positional parameters `?1..?17`.
    fn params(&self) -> [&dyn ToSql; 17] {
        [
            &self.id,
            &self.name,
            &self.image_id,
            &self.vcpus,
            &self.memory_mib,
            &self.disk_size_mib,
            &self.state,
            &self.desired_state,
            &self.ip,
            &self.mac,
            &self.vsock_cid,
            &self.vm_dir,
            &self.last_error,
            &self.stage_timings,
            &self.created_at,
            &self.updated_at,
            &self.root_clone_method,
        ]
    }
}

/// A VM row as SQLite typed it, before validation.
struct RawVm {
    id: String,
    name: String,
    image_id: String,
    vcpus: i64,
    memory_mib: i64,
    disk_size_mib: i64,
    state: String,
    desired_state: String,
    ip: Option<String>,
    mac: Option<String>,
    vsock_cid: Option<i64>,
    vm_dir: String,
    last_error: Option<String>,
    stage_timings: String,
    created_at: String,
    updated_at: String,
    root_clone_method: Option<String>,
}

impl RawVm {
    /// Reads the columns in [`COLUMNS`] order.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            name: row.get(1)?,
            image_id: row.get(2)?,
            vcpus: row.get(3)?,
            memory_mib: row.get(4)?,
            disk_size_mib: row.get(5)?,
            state: row.get(6)?,
            desired_state: row.get(7)?,
            ip: row.get(8)?,
            mac: row.get(9)?,
            vsock_cid: row.get(10)?,
            vm_dir: row.get(11)?,
            last_error: row.get(12)?,
            stage_timings: row.get(13)?,
            created_at: row.get(14)?,
            updated_at: row.get(15)?,
            root_clone_method: row.get(16)?,
        })
    }

    fn decode(self) -> Result<VmRecord, StoreError> {
        let row = RowDecoder::new(TABLE, &self.id);
        Ok(VmRecord {
            id: row.parse("id", &self.id)?,
            name: row.name("name", &self.name)?,
            image_id: row.parse("image_id", &self.image_id)?,
            vcpus: row.int("vcpus", self.vcpus)?,
            memory_mib: row.int("memory_mib", self.memory_mib)?,
            disk_size_mib: row.int("disk_size_mib", self.disk_size_mib)?,
            state: row.parse("state", &self.state)?,
            desired_state: row.parse("desired_state", &self.desired_state)?,
            ip: row.parse_opt("ip", self.ip.as_deref())?,
            mac: self.mac,
            vsock_cid: row.int_opt("vsock_cid", self.vsock_cid)?,
            vm_dir: self.vm_dir.into(),
            last_error: self.last_error,
            stage_timings: row.json("stage_timings", &self.stage_timings)?,
            created_at: row.time("created_at", &self.created_at)?,
            updated_at: row.time("updated_at", &self.updated_at)?,
            root_clone_method: row
                .parse_opt("root_clone_method", self.root_clone_method.as_deref())?,
        })
    }
}
