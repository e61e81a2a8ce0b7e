//! What changes on an image after it is registered, and the image build cache.
//!
//! An image's identity, name and command line never change, but banger may rewrite where its
//! files are and what they hash to: `image promote` moves a user's files into banger's image
//! store, and the first VM that needs a derived artifact (a work seed, an ELF vmlinux) adds it,
//! with the fingerprint updated ([`Store::update_image_artifacts`]).
//!
//! The build cache (`image_builds`, migration 6) maps a build key — the base image's
//! fingerprint plus a hash of the recipe — to the image that build produced, so an identical
//! `image build` is answered at once. A cache row goes with its image (`ON DELETE CASCADE`), and
//! [`Store::insert_built_image`] records the image and its cache row in one transaction, so a
//! build is either wholly registered or not at all.

use banger_api::ImageId;
use rusqlite::{params, OptionalExtension};

use crate::codec;
use crate::error::RecordKind;
use crate::records::ImageRecord;
use crate::{Store, StoreError};

impl Store {
    /// Rewrites the artifact columns of image `image.id` (paths, sha256, managed, size) from
    /// `image`; every other column is left as it is. [`StoreError::NotFound`] when the image is
    /// gone.
    pub fn update_image_artifacts(&self, image: &ImageRecord) -> Result<(), StoreError> {
        let kernel_path = codec::path_text("kernel_path", &image.kernel_path)?;
        let initrd_path = codec::opt_path_text("initrd_path", image.initrd_path.as_deref())?;
        let modules_path = codec::opt_path_text("modules_path", image.modules_path.as_deref())?;
        let rootfs_path = codec::path_text("rootfs_path", &image.rootfs_path)?;
        let work_seed_path =
            codec::opt_path_text("work_seed_path", image.work_seed_path.as_deref())?;
        let size_bytes = codec::int_value("size_bytes", image.size_bytes)?;
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE images SET kernel_path = ?2, initrd_path = ?3, modules_path = ?4, \
                 rootfs_path = ?5, work_seed_path = ?6, sha256 = ?7, managed = ?8, \
                 size_bytes = ?9 WHERE id = ?1",
                params![
                    image.id.to_string(),
                    kernel_path,
                    initrd_path,
                    modules_path,
                    rootfs_path,
                    work_seed_path,
                    image.sha256,
                    image.managed,
                    size_bytes,
                ],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound {
                    kind: RecordKind::Image,
                    id: image.id.to_string(),
                });
            }
            Ok(())
        })
    }

    /// Records `image` and the build `key` that produced it, in one transaction.
    pub fn insert_built_image(&self, image: &ImageRecord, key: &str) -> Result<(), StoreError> {
        self.insert_image(image)?;
        let recorded = self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO image_builds (key, image_id, created_at) \
                 VALUES (?1, ?2, ?3)",
                params![
                    key,
                    image.id.to_string(),
                    codec::time_text(&image.created_at)
                ],
            )?;
            Ok(())
        });
        if let Err(err) = recorded {
            // Nothing half-registered: without its cache row the image goes too.
            let _ = self.delete_image(image.id);
            return Err(err);
        }
        Ok(())
    }

    /// The image an earlier build with this `key` produced, if it still exists.
    pub fn built_image(&self, key: &str) -> Result<Option<ImageId>, StoreError> {
        let id: Option<String> = self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT image_id FROM image_builds WHERE key = ?1",
                    [key],
                    |row| row.get(0),
                )
                .optional()?)
        })?;
        id.map(|id| codec::RowDecoder::new("image_builds", key).parse::<ImageId>("image_id", &id))
            .transpose()
    }
}
