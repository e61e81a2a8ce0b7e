//! banger's SSH key pair: the ed25519 key the CLI uses to reach guests and that images carry as
//! an authorized key.
//!
//! [`ensure_ssh_key`] is idempotent: the first call generates the pair, later calls load it. The
//! private key is the commit point. It is written to a temp file (mode 0600) in the target
//! directory and linked into place without replacing anything, so two processes racing to create
//! it agree on one key: the loser loads the winner's. The `.pub` file (0644) is derived from the
//! private key and rewritten whenever it is missing, so a crash between the two writes heals on
//! the next call. Directories created on the way are 0700.

use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

/// Comment carried by generated keys, shown at the end of the public key line.
const KEY_COMMENT: &str = "banger";

/// banger's SSH key pair on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKeyPair {
    /// The private key (OpenSSH format, mode 0600).
    pub private_path: PathBuf,
    /// The public key: `<private_path>.pub`.
    pub public_path: PathBuf,
    /// The public key as an `authorized_keys` line, e.g. `ssh-ed25519 AAAA... banger`.
    pub public_openssh: String,
}

/// Why the SSH key pair could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    /// The private key exists but cannot be read.
    #[error("cannot read SSH private key {}", path.display())]
    Read {
        /// The private key.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// The private key is not an OpenSSH private key.
    #[error("{} is not an OpenSSH private key", path.display())]
    Parse {
        /// The private key.
        path: PathBuf,
        /// The decoder's complaint.
        #[source]
        source: ssh_key::Error,
    },
    /// The private key needs a passphrase, which a daemon cannot type.
    #[error("SSH private key {} is passphrase-protected; banger needs an unencrypted key", path.display())]
    Encrypted {
        /// The private key.
        path: PathBuf,
    },
    /// The directory for the key could not be created.
    #[error("cannot create directory {} for the SSH key", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Key generation failed (no randomness).
    #[error("cannot generate an ed25519 key")]
    Generate {
        /// The generator's failure.
        #[source]
        source: ssh_key::Error,
    },
    /// The key could not be encoded in OpenSSH format.
    #[error("cannot encode the SSH key for {}", path.display())]
    Encode {
        /// The file it was meant for.
        path: PathBuf,
        /// The encoder's failure.
        #[source]
        source: ssh_key::Error,
    },
    /// Writing a key file (or its temp file) failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
}

/// Returns the key pair at `private_path`, generating an ed25519 pair there first if there is
/// none.
///
/// Callers decide whether generating is wanted: for a key the user configured (`ssh_key`), a
/// missing file is usually better reported than replaced; check
/// [`crate::Config::ssh_key_is_generated`].
pub fn ensure_ssh_key(private_path: &Path) -> Result<SshKeyPair, SshKeyError> {
    match fs::read(private_path) {
        Ok(bytes) => load_existing(private_path, &bytes),
        Err(err) if err.kind() == io::ErrorKind::NotFound => generate(private_path),
        Err(source) => Err(SshKeyError::Read {
            path: private_path.to_path_buf(),
            source,
        }),
    }
}

/// `<private_path>.pub`.
fn public_path_of(private_path: &Path) -> PathBuf {
    let mut name = private_path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn load_existing(private_path: &Path, bytes: &[u8]) -> Result<SshKeyPair, SshKeyError> {
    let key = PrivateKey::from_openssh(bytes).map_err(|source| SshKeyError::Parse {
        path: private_path.to_path_buf(),
        source,
    })?;
    if key.is_encrypted() {
        return Err(SshKeyError::Encrypted {
            path: private_path.to_path_buf(),
        });
    }
    if let Ok(meta) = fs::metadata(private_path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %private_path.display(),
                mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                "SSH private key is readable by others; OpenSSH will refuse it (chmod 600)"
            );
        }
    }
    let public_openssh = encode_public(&key, private_path)?;
    let public_path = public_path_of(private_path);
    if !public_path.exists() {
        write_atomically(&public_path, public_openssh.as_bytes(), 0o644, Replace::Yes)?;
    }
    Ok(SshKeyPair {
        private_path: private_path.to_path_buf(),
        public_path,
        public_openssh,
    })
}

fn generate(private_path: &Path) -> Result<SshKeyPair, SshKeyError> {
    let dir = parent_of(private_path);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SshKeyError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;

    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
        .map_err(|source| SshKeyError::Generate { source })?;
    key.set_comment(KEY_COMMENT);
    let private_text = key
        .to_openssh(LineEnding::LF)
        .map_err(|source| SshKeyError::Encode {
            path: private_path.to_path_buf(),
            source,
        })?;

    match write_atomically(private_path, private_text.as_bytes(), 0o600, Replace::No)? {
        Written::Yes => {}
        // Another process created the key between our read and our link: use theirs.
        Written::AlreadyExists => {
            let bytes = fs::read(private_path).map_err(|source| SshKeyError::Read {
                path: private_path.to_path_buf(),
                source,
            })?;
            return load_existing(private_path, &bytes);
        }
    }

    let public_openssh = encode_public(&key, private_path)?;
    let public_path = public_path_of(private_path);
    write_atomically(&public_path, public_openssh.as_bytes(), 0o644, Replace::Yes)?;
    // Make the new directory entries durable; failure here loses nothing already returned.
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    tracing::info!(path = %private_path.display(), "generated banger's SSH key pair");
    Ok(SshKeyPair {
        private_path: private_path.to_path_buf(),
        public_path,
        public_openssh,
    })
}

fn encode_public(key: &PrivateKey, private_path: &Path) -> Result<String, SshKeyError> {
    key.public_key()
        .to_openssh()
        .map_err(|source| SshKeyError::Encode {
            path: public_path_of(private_path),
            source,
        })
}

/// Whether [`write_atomically`] may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

/// Whether [`write_atomically`] put the file in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Yes,
    /// `Replace::No` and the target already existed.
    AlreadyExists,
}

/// Writes `contents` to a temp file beside `path` with `mode`, syncs it, then moves it into place
/// (rename, or a no-clobber link for `Replace::No`). Readers see the old file or the whole new
/// one, never a partial write.
fn write_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
    replace: Replace,
) -> Result<Written, SshKeyError> {
    let write_err = |source| SshKeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    // tempfile creates the file with mode 0600, so a private key is never briefly world-readable.
    let mut temp = tempfile::Builder::new()
        .prefix(".banger-key-")
        .tempfile_in(parent_of(path))
        .map_err(write_err)?;
    temp.write_all(contents).map_err(write_err)?;
    temp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(write_err)?;
    temp.as_file().sync_all().map_err(write_err)?;
    match replace {
        Replace::Yes => temp
            .persist(path)
            .map(|_| Written::Yes)
            .map_err(|err| write_err(err.error)),
        Replace::No => match temp.persist_noclobber(path) {
            Ok(_) => Ok(Written::Yes),
            Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => {
                Ok(Written::AlreadyExists)
            }
            Err(err) => Err(write_err(err.error)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_path_appends_pub() {
        assert_eq!(
            public_path_of(Path::new("/a/id_ed25519")),
            PathBuf::from("/a/id_ed25519.pub")
        );
    }

    #[test]
    fn bare_file_name_lives_in_the_current_directory() {
        assert_eq!(parent_of(Path::new("id")), Path::new("."));
    }
}
