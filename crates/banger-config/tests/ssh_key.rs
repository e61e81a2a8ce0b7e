//! `ensure_ssh_key` against temp directories: generation, permissions, idempotence, healing.

// Tests may unwrap: a panic there is a test failure, which is what we want.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use banger_config::{ensure_ssh_key, SshKeyError};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn generates_an_ed25519_pair_once_with_private_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("data/ssh/id_ed25519");

    let first = ensure_ssh_key(&private).unwrap();
    assert_eq!(first.private_path, private);
    assert_eq!(
        first.public_path,
        dir.path().join("data/ssh/id_ed25519.pub")
    );
    assert_eq!(mode(&private), 0o600);
    assert_eq!(mode(&first.public_path), 0o644);
    assert_eq!(mode(&dir.path().join("data/ssh")), 0o700);
    assert_eq!(mode(&dir.path().join("data")), 0o700);

    let public = std::fs::read_to_string(&first.public_path).unwrap();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    assert_eq!(public, first.public_openssh);
    assert!(first.public_openssh.ends_with(" banger"), "{public}");
    let private_text = std::fs::read_to_string(&private).unwrap();
    assert!(private_text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));

    let second = ensure_ssh_key(&private).unwrap();
    assert_eq!(second, first);
    assert_eq!(std::fs::read_to_string(&private).unwrap(), private_text);
}

#[test]
fn leaves_no_temp_files_behind() {
    let dir = tempfile::tempdir().unwrap();
    ensure_ssh_key(&dir.path().join("id_ed25519")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["id_ed25519", "id_ed25519.pub"]);
}

#[test]
fn missing_public_key_is_rewritten_from_the_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("id_ed25519");
    let first = ensure_ssh_key(&private).unwrap();
    std::fs::remove_file(&first.public_path).unwrap();
    let second = ensure_ssh_key(&private).unwrap();
    assert_eq!(second.public_openssh, first.public_openssh);
    assert_eq!(
        std::fs::read_to_string(&second.public_path).unwrap(),
        first.public_openssh
    );
}

#[test]
fn existing_directory_permissions_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    ensure_ssh_key(&dir.path().join("id_ed25519")).unwrap();
    assert_eq!(mode(dir.path()), 0o755);
}

#[test]
fn garbage_private_key_is_a_parse_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("id_ed25519");
    std::fs::write(&private, "not a key").unwrap();
    let err = ensure_ssh_key(&private).unwrap_err();
    assert!(matches!(err, SshKeyError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains(private.to_str().unwrap()));
    // The user's file is not replaced.
    assert_eq!(std::fs::read_to_string(&private).unwrap(), "not a key");
}

#[test]
fn concurrent_callers_agree_on_one_key() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("ssh/id_ed25519");
    let keys: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| ensure_ssh_key(&private).unwrap().public_openssh))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    assert_eq!(ensure_ssh_key(&private).unwrap().public_openssh, keys[0]);
}
