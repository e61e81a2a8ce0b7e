//! Image rows: register, look up, list, delete (refused while VMs use the image).

use banger_api::{ImageId, VmName};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::codec::{self, RowDecoder};
use crate::error::{write_error, RecordKind};
use crate::records::ImageRecord;
use crate::{Store, StoreError};

const TABLE: &str = "images";

const COLUMNS: &str = "id, name, kernel_path, initrd_path, modules_path, rootfs_path, \
     work_seed_path, cmdline, readiness_ports, agent_version, parent_id, sha256, managed, \
     size_bytes, created_at, root_mode";

impl Store {
    /// Records a new image. [`StoreError::Conflict`] if its id or name is taken,
    /// [`StoreError::NotFound`] if its parent does not exist.
    pub fn insert_image(&self, image: &ImageRecord) -> Result<(), StoreError> {
        let kernel_path = codec::path_text("kernel_path", &image.kernel_path)?;
        let initrd_path = codec::opt_path_text("initrd_path", image.initrd_path.as_deref())?;
        let modules_path = codec::opt_path_text("modules_path", image.modules_path.as_deref())?;
        let rootfs_path = codec::path_text("rootfs_path", &image.rootfs_path)?;
        let work_seed_path =
            codec::opt_path_text("work_seed_path", image.work_seed_path.as_deref())?;
        let readiness_ports = codec::json_text("readiness_ports", &image.readiness_ports)?;
        let size_bytes = codec::int_value("size_bytes", image.size_bytes)?;
        self.write(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO images ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ),
                params![
                    image.id.to_string(),
                    image.name.as_str(),
                    kernel_path,
                    initrd_path,
                    modules_path,
                    rootfs_path,
                    work_seed_path,
                    image.cmdline,
                    readiness_ports,
                    image.agent_version,
                    image.parent_id.map(|id| id.to_string()),
                    image.sha256,
                    image.managed,
                    size_bytes,
                    codec::time_text(&image.created_at),
                    image.root_mode.as_str(),
                ],
            )
            .map_err(|err| {
                write_error(
                    err,
                    |column| match column {
                        "id" => Some(("id", image.id.to_string())),
                        "name" => Some(("name", image.name.to_string())),
                        _ => None,
                    },
                    || StoreError::NotFound {
                        kind: RecordKind::Image,
                        id: image.parent_id.map(|id| id.to_string()).unwrap_or_default(),
                    },
                )
            })?;
            Ok(())
        })
    }

    /// The image with this id, if any.
    pub fn get_image(&self, id: ImageId) -> Result<Option<ImageRecord>, StoreError> {
        self.read(|conn| select_one(conn, "id", &id.to_string()))
    }

    /// The image with exactly this name, if any.
    pub fn get_image_by_name(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.read(|conn| select_one(conn, "name", name))
    }

    /// Every image, ordered by name.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.read(|conn| {
            let mut statement =
                conn.prepare(&format!("SELECT {COLUMNS} FROM images ORDER BY name"))?;
            let raws = statement
                .query_map([], RawImage::from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(RawImage::decode).collect()
        })
    }

    /// Deletes an image. `Ok(false)` if it did not exist; [`StoreError::InUse`] naming the VMs
    /// if any still use it. Images built from it lose their `parent_id`.
    pub fn delete_image(&self, id: ImageId) -> Result<bool, StoreError> {
        let id_text = id.to_string();
        self.write(|tx| {
            let name: Option<String> = tx
                .query_row("SELECT name FROM images WHERE id = ?1", [&id_text], |row| {
                    row.get(0)
                })
                .optional()?;
            let Some(name) = name else {
                return Ok(false);
            };
            let vms = vm_names_using(tx, &id_text)?;
            if !vms.is_empty() {
                return Err(StoreError::InUse { image: name, vms });
            }
            tx.execute("DELETE FROM images WHERE id = ?1", [&id_text])?;
            Ok(true)
        })
    }

    /// Names of the VMs made from this image, sorted.
    pub fn vms_using_image(&self, id: ImageId) -> Result<Vec<VmName>, StoreError> {
        self.read(|conn| {
            let id_text = id.to_string();
            let mut statement =
                conn.prepare("SELECT id, name FROM vms WHERE image_id = ?1 ORDER BY name")?;
            let rows = statement
                .query_map([&id_text], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows.iter()
                .map(|(vm_id, name)| RowDecoder::new("vms", vm_id).name("name", name))
                .collect()
        })
    }
}

/// Names of the VMs using image `id`, as stored (the error path does not need them parsed).
fn vm_names_using(conn: &Connection, id: &str) -> Result<Vec<String>, StoreError> {
    let mut statement = conn.prepare("SELECT name FROM vms WHERE image_id = ?1 ORDER BY name")?;
    let names = statement
        .query_map([id], |row| row.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names)
}

/// The image whose `column` equals `value` (`column` is one of ours, never user input).
fn select_one(
    conn: &Connection,
    column: &str,
    value: &str,
) -> Result<Option<ImageRecord>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM images WHERE {column} = ?1"),
        [value],
        RawImage::from_row,
    )
    .optional()?
    .map(RawImage::decode)
    .transpose()
}

/// An image row as SQLite typed it, before validation.
struct RawImage {
    id: String,
    name: String,
    kernel_path: String,
    initrd_path: Option<String>,
    modules_path: Option<String>,
    rootfs_path: String,
    work_seed_path: Option<String>,
    cmdline: String,
    readiness_ports: String,
    agent_version: Option<String>,
    parent_id: Option<String>,
    sha256: Option<String>,
    managed: i64,
    size_bytes: i64,
    created_at: String,
    root_mode: String,
}

impl RawImage {
    /// Reads the columns in [`COLUMNS`] order.
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            name: row.get(1)?,
            kernel_path: row.get(2)?,
            initrd_path: row.get(3)?,
            modules_path: row.get(4)?,
            rootfs_path: row.get(5)?,
            work_seed_path: row.get(6)?,
            cmdline: row.get(7)?,
            readiness_ports: row.get(8)?,
            agent_version: row.get(9)?,
            parent_id: row.get(10)?,
            sha256: row.get(11)?,
            managed: row.get(12)?,
            size_bytes: row.get(13)?,
            created_at: row.get(14)?,
            root_mode: row.get(15)?,
        })
    }

    fn decode(self) -> Result<ImageRecord, StoreError> {
        let row = RowDecoder::new(TABLE, &self.id);
        Ok(ImageRecord {
            id: row.parse("id", &self.id)?,
            name: row.name("name", &self.name)?,
            kernel_path: self.kernel_path.into(),
            initrd_path: codec::opt_path(self.initrd_path),
            modules_path: codec::opt_path(self.modules_path),
            rootfs_path: self.rootfs_path.into(),
            work_seed_path: codec::opt_path(self.work_seed_path),
            cmdline: self.cmdline,
            readiness_ports: row.json("readiness_ports", &self.readiness_ports)?,
            agent_version: self.agent_version,
            parent_id: row.parse_opt("parent_id", self.parent_id.as_deref())?,
            sha256: self.sha256,
            managed: row.flag("managed", self.managed)?,
            size_bytes: row.int("size_bytes", self.size_bytes)?,
            created_at: row.time("created_at", &self.created_at)?,
            root_mode: row.parse("root_mode", &self.root_mode)?,
        })
    }
}
