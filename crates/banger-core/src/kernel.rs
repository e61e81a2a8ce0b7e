//! Recognising guest kernel images before anything is created for a VM.
//!
//! Firecracker boots only an uncompressed ELF `vmlinux`; QEMU also boots a `bzImage`. Checking
//! the format up front turns "the VMM refused the kernel" (after disks and a tap were made) into
//! a clear error at request time.

use std::io::Read;
use std::path::Path;

/// What a kernel file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF image (`vmlinux`).
    Elf,
    /// An x86 boot-protocol image (`bzImage`, `vmlinuz`): "HdrS" at offset 0x202.
    BzImage,
}

/// Why a kernel file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The file cannot be read.
    #[error("cannot read the kernel {path}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither ELF nor bzImage.
    #[error("{path} is not a kernel: neither an ELF vmlinux nor a bzImage")]
    Unknown {
        /// The file.
        path: String,
    },
}

/// Reads the first bytes of `path` and says what kernel format it is.
pub fn kernel_format(path: &Path) -> Result<KernelFormat, KernelError> {
    let unreadable = |source| KernelError::Unreadable {
        path: path.display().to_string(),
        source,
    };
    let mut head = Vec::with_capacity(0x210);
    std::fs::File::open(path)
        .map_err(unreadable)?
        .take(0x210)
        .read_to_end(&mut head)
        .map_err(unreadable)?;
    if head.starts_with(b"\x7fELF") {
        Ok(KernelFormat::Elf)
    } else if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(KernelError::Unknown {
            path: path.display().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_bzimage_and_garbage_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let elf = dir.path().join("vmlinux");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01rest").unwrap();
        assert_eq!(kernel_format(&elf).unwrap(), KernelFormat::Elf);
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let bz_path = dir.path().join("vmlinuz");
        std::fs::write(&bz_path, &bz).unwrap();
        assert_eq!(kernel_format(&bz_path).unwrap(), KernelFormat::BzImage);
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a kernel").unwrap();
        assert!(matches!(
            kernel_format(&junk),
            Err(KernelError::Unknown { .. })
        ));
        assert!(matches!(
            kernel_format(&dir.path().join("missing")),
            Err(KernelError::Unreadable { .. })
        ));
    }
}
