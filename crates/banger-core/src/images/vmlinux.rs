//! Kernels: telling an ELF vmlinux from a bzImage, and extracting the ELF from a bzImage.
//!
//! QEMU boots either; Firecracker needs the uncompressed ELF `vmlinux`. Debian's cloud kernels
//! ship as LZ4-compressed bzImages: the x86 boot header (boot protocol >= 2.08) says where the
//! compressed payload is (`payload_offset`/`payload_length` after the real-mode setup), and the
//! payload is an LZ4 *legacy* stream (magic `02 21 4c 18`: 4-byte little-endian block sizes,
//! each followed by an LZ4 block of at most 8 MiB of output) followed by the uncompressed size
//! as 4 little-endian bytes. lz4_flex's frame decoder reads only the newer frame format, so the
//! legacy blocks are decoded here with its block decoder; the trailing size, when present,
//! checks the result. Only LZ4 payloads are supported: others are named in the error.

use std::path::Path;

/// ELF magic.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Offset of the `HdrS` magic of the x86 setup header.
const HDRS_OFFSET: usize = 0x202;
/// Magic of an LZ4 legacy stream (0x184C2102, little-endian).
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Largest output of one LZ4 legacy block.
const LZ4_LEGACY_BLOCK: usize = 8 * 1024 * 1024;
/// Bytes read to recognise a kernel.
pub const HEADER_LEN: usize = 0x250;

/// What a kernel file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux` (Firecracker and QEMU).
    Elf,
    /// A compressed x86 `bzImage` (QEMU; Firecracker needs the ELF extracted).
    BzImage,
}

/// Why a file is not a usable kernel, or its ELF could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// Neither an ELF nor a bzImage.
    #[error("not a kernel: neither an ELF vmlinux (7f 45 4c 46) nor a bzImage (`HdrS` at 0x202)")]
    NotAKernel,
    /// An ELF for another machine or word size.
    #[error("an ELF file, but not a 64-bit x86 one")]
    WrongElf,
    /// The bzImage's payload is compressed with something other than LZ4.
    #[error("the bzImage payload is {0}-compressed; only LZ4 kernels can be extracted")]
    UnsupportedCompression(&'static str),
    /// The payload could not be found or decoded.
    #[error("the bzImage payload is corrupt: {0}")]
    Corrupt(String),
}

/// Recognises a kernel from its first [`HEADER_LEN`] bytes (fewer if the file is shorter).
pub fn detect(header: &[u8]) -> Result<KernelFormat, KernelError> {
    if header.len() >= 20 && &header[..4] == ELF_MAGIC {
        // EI_CLASS 2 = 64-bit; e_machine 0x3e = x86-64.
        if header[4] != 2 || u16::from_le_bytes([header[18], header[19]]) != 0x3e {
            return Err(KernelError::WrongElf);
        }
        return Ok(KernelFormat::Elf);
    }
    if header.len() >= HDRS_OFFSET + 4 && &header[HDRS_OFFSET..HDRS_OFFSET + 4] == b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(KernelError::NotAKernel)
}

/// Reads the first bytes of `path` and recognises the kernel.
pub fn detect_file(path: &Path) -> std::io::Result<Result<KernelFormat, KernelError>> {
    use std::io::Read;
    let mut header = Vec::with_capacity(HEADER_LEN);
    std::fs::File::open(path)?
        .take(HEADER_LEN as u64)
        .read_to_end(&mut header)?;
    Ok(detect(&header))
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn compression_of(payload: &[u8]) -> Option<&'static str> {
    let magic = payload.get(..6)?;
    Some(match magic {
        [0x1f, 0x8b, ..] => "gzip",
        [0xfd, b'7', b'z', b'X', b'Z', 0x00] => "xz",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [b'B', b'Z', b'h', ..] => "bzip2",
        [0x5d, 0x00, 0x00, ..] => "lzma",
        [0x89, b'L', b'Z', b'O', ..] => "lzo",
        _ => return None,
    })
}

/// The compressed payload of a bzImage: from the setup header when it is consistent, else from
/// the first LZ4 legacy magic in the file.
fn payload(bzimage: &[u8]) -> Result<&[u8], KernelError> {
    let setup_sects = match bzimage.get(0x1f1) {
        Some(0) => 4,
        Some(n) => usize::from(*n),
        None => return Err(KernelError::NotAKernel),
    };
    let from_header = le32(bzimage, 0x248)
        .zip(le32(bzimage, 0x24c))
        .and_then(|(offset, length)| {
            let start = (setup_sects + 1) * 512 + offset as usize;
            bzimage.get(start..start.checked_add(length as usize)?)
        })
        .filter(|p| p.len() >= 8);
    if let Some(payload) = from_header {
        if payload[..4] == LZ4_LEGACY_MAGIC {
            return Ok(payload);
        }
        if let Some(name) = compression_of(payload) {
            return Err(KernelError::UnsupportedCompression(name));
        }
    }
    bzimage
        .windows(4)
        .position(|w| w == LZ4_LEGACY_MAGIC)
        .map(|at| &bzimage[at..])
        .ok_or_else(|| {
            KernelError::Corrupt("no LZ4 payload (magic 02 21 4c 18) in the file".into())
        })
}

/// Whether a bzImage carries an LZ4 payload banger can extract an ELF from.
pub fn has_lz4_payload(bzimage: &[u8]) -> bool {
    payload(bzimage).is_ok()
}

/// Decodes an LZ4 legacy stream; stops at the end of the input or at trailing data (a block
/// size that cannot be one). When exactly 4 bytes trail the last block they must equal the
/// output's length (the kernel build appends it).
pub fn decode_lz4_legacy(stream: &[u8]) -> Result<Vec<u8>, KernelError> {
    if stream.get(..4) != Some(&LZ4_LEGACY_MAGIC[..]) {
        return Err(KernelError::Corrupt("missing the LZ4 legacy magic".into()));
    }
    let mut at = 4;
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while let Some(size) = le32(stream, at) {
        if size.to_le_bytes() == LZ4_LEGACY_MAGIC {
            at += 4;
            continue;
        }
        let size = size as usize;
        let body = at + 4;
        if size == 0 || body + size > stream.len() {
            break;
        }
        let written = lz4_flex::block::decompress_into(&stream[body..body + size], &mut block)
            .map_err(|e| KernelError::Corrupt(format!("LZ4 block at byte {at}: {e}")))?;
        out.extend_from_slice(&block[..written]);
        at = body + size;
    }
    if out.is_empty() {
        return Err(KernelError::Corrupt("the LZ4 stream holds no block".into()));
    }
    if stream.len() - at == 4 {
        if let Some(expected) = le32(stream, at) {
            if expected as usize != out.len() {
                return Err(KernelError::Corrupt(format!(
                    "decoded {} bytes but the kernel says {expected}",
                    out.len()
                )));
            }
        }
    }
    Ok(out)
}

/// The ELF vmlinux inside a bzImage.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, KernelError> {
    if detect(bzimage)? != KernelFormat::BzImage {
        return Err(KernelError::NotAKernel);
    }
    let elf = decode_lz4_legacy(payload(bzimage)?)?;
    match detect(&elf) {
        Ok(KernelFormat::Elf) => Ok(elf),
        Ok(KernelFormat::BzImage) | Err(_) => Err(KernelError::Corrupt(
            "the decompressed payload is not an x86-64 ELF".into(),
        )),
    }
}

/// A stand-in ELF kernel (header only) good enough for [`detect`]; for tests and fakes.
pub fn fake_elf() -> Vec<u8> {
    let mut elf = vec![0u8; 4096];
    elf[..4].copy_from_slice(ELF_MAGIC);
    elf[4] = 2;
    elf[18] = 0x3e;
    elf[100..120].copy_from_slice(b"banger test kernel!!");
    elf
}

/// A stand-in bzImage whose payload is `elf`, LZ4-legacy compressed in two blocks with the
/// size appended, laid out like Debian's; for tests and fakes.
pub fn fake_lz4_bzimage(elf: &[u8]) -> Vec<u8> {
    let mut image = banger_host::build_tools::fake_bzimage();
    image[0x1f1] = 1; // one setup sector: protected-mode code at 1024
    image.truncate(1024);
    let mut stream = LZ4_LEGACY_MAGIC.to_vec();
    for chunk in elf.chunks(elf.len() / 2 + 1) {
        let block = lz4_flex::block::compress(chunk);
        stream.extend_from_slice(&(block.len() as u32).to_le_bytes());
        stream.extend_from_slice(&block);
    }
    stream.extend_from_slice(&(elf.len() as u32).to_le_bytes());
    image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
    image[0x24c..0x250].copy_from_slice(&(stream.len() as u32).to_le_bytes());
    image.extend_from_slice(&[0u8; 16]);
    image.extend_from_slice(&stream);
    image.extend_from_slice(b"trailing setup data");
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_and_bzimage_are_recognised_and_other_files_are_not() {
        assert_eq!(detect(&fake_elf()), Ok(KernelFormat::Elf));
        assert_eq!(
            detect(&banger_host::build_tools::fake_bzimage()),
            Ok(KernelFormat::BzImage)
        );
        assert_eq!(
            detect(b"#!/bin/sh\necho hi\n"),
            Err(KernelError::NotAKernel)
        );
        let mut arm = fake_elf();
        arm[18] = 0xb7;
        assert_eq!(detect(&arm), Err(KernelError::WrongElf));
    }

    #[test]
    fn vmlinux_is_extracted_from_an_lz4_bzimage() {
        let elf = fake_elf();
        assert_eq!(extract_vmlinux(&fake_lz4_bzimage(&elf)), Ok(elf));
    }

    #[test]
    fn a_gzip_kernel_is_named_as_unsupported() {
        let mut image = banger_host::build_tools::fake_bzimage();
        image[0x1f1] = 1;
        image.truncate(1024);
        image[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&64u32.to_le_bytes());
        image.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        image.extend_from_slice(&[0u8; 56]);
        assert_eq!(
            extract_vmlinux(&image),
            Err(KernelError::UnsupportedCompression("gzip"))
        );
    }

    #[test]
    fn a_wrong_trailing_size_is_corruption() {
        let elf = fake_elf();
        let mut stream = LZ4_LEGACY_MAGIC.to_vec();
        let block = lz4_flex::block::compress(&elf);
        stream.extend_from_slice(&(block.len() as u32).to_le_bytes());
        stream.extend_from_slice(&block);
        stream.extend_from_slice(&7u32.to_le_bytes());
        assert!(matches!(
            decode_lz4_legacy(&stream),
            Err(KernelError::Corrupt(_))
        ));
    }
}
