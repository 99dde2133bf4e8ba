//! What the kubelet's volume manager does for the volumes kedge has, on the
//! device, for both runtimes: `hostPath.type` checked (and the `*OrCreate`
//! types made) before a container starts, `emptyDir.medium: Memory` a tmpfs
//! mounted on the volume's directory (of `sizeLimit`, or the pod's memory
//! limit), unmounted before the pod's directory is removed.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::model::{HostPathType, PodSpec, VolumeSource};

/// Checks `path` against `kind` as the kubelet does (`checkType` of its
/// hostPath plugin), making a missing directory (0755) or empty file
/// (0644) for the `*OrCreate` types. The error is the kubelet's message.
pub fn check_host_path(path: &Path, kind: HostPathType) -> Result<(), String> {
    let shown = path.display();
    // Like the kubelet's `os.Stat`: symbolic links are followed.
    let meta = std::fs::metadata(path).ok();
    let file_type = meta.as_ref().map(|m| m.file_type());
    let is = |pred: fn(&std::fs::FileType) -> bool| file_type.as_ref().is_some_and(pred);
    match kind {
        HostPathType::Unset => Ok(()),
        HostPathType::DirectoryOrCreate if meta.is_none() => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|e| {
                format!("hostPath type check failed: cannot create directory {shown}: {e}")
            }),
        HostPathType::DirectoryOrCreate | HostPathType::Directory => {
            if is(std::fs::FileType::is_dir) {
                Ok(())
            } else {
                Err(format!(
                    "hostPath type check failed: {shown} is not a directory"
                ))
            }
        }
        // The parent must exist, as on the kubelet.
        HostPathType::FileOrCreate if meta.is_none() => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map(drop)
            .map_err(|e| format!("hostPath type check failed: cannot create file {shown}: {e}")),
        HostPathType::FileOrCreate | HostPathType::File => {
            if is(std::fs::FileType::is_file) {
                Ok(())
            } else {
                Err(format!("hostPath type check failed: {shown} is not a file"))
            }
        }
        HostPathType::Socket => {
            if is(FileTypeExt::is_socket) {
                Ok(())
            } else {
                Err(format!(
                    "hostPath type check failed: {shown} is not a socket file"
                ))
            }
        }
        HostPathType::CharDevice => {
            if is(FileTypeExt::is_char_device) {
                Ok(())
            } else {
                Err(format!(
                    "hostPath type check failed: {shown} is not a character device"
                ))
            }
        }
        HostPathType::BlockDevice => {
            if is(FileTypeExt::is_block_device) {
                Ok(())
            } else {
                Err(format!(
                    "hostPath type check failed: {shown} is not a block device"
                ))
            }
        }
    }
}

/// Checks every hostPath volume of the pod (the kubelet sets up all of a
/// pod's volumes, used or not); the message names the volume as the
/// kubelet's `FailedMount` does.
pub fn check_host_paths(spec: &PodSpec) -> Result<(), String> {
    for v in &spec.volumes {
        if let VolumeSource::HostPath { path, kind } = &v.source {
            check_host_path(Path::new(path), *kind)
                .map_err(|e| format!("MountVolume.SetUp failed for volume {:?} : {e}", v.name))?;
        }
    }
    Ok(())
}

/// The size of a Memory emptyDir's tmpfs: its sizeLimit, else the pod's
/// memory limit when every container has one (the kubelet's
/// `SizeMemoryBackedVolumes`: the smaller of the two), else None (the
/// kernel's default, half of the RAM).
pub fn memory_volume_size(spec: &PodSpec, size_limit: Option<u64>) -> Option<u64> {
    let limits = |list: &[crate::model::Container]| -> Option<Vec<u64>> {
        list.iter()
            .map(|c| c.resources.memory_limit_bytes)
            .collect()
    };
    let pod_limit = match (limits(&spec.containers), limits(&spec.init_containers)) {
        (Some(app), Some(init)) => Some(
            app.iter()
                .fold(0u64, |a, b| a.saturating_add(*b))
                .max(init.into_iter().max().unwrap_or(0)),
        ),
        _ => None,
    };
    match (size_limit, pod_limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether `dir` is a mount point (another device than its parent's).
fn is_mount_point(dir: &Path) -> bool {
    let parent = dir.parent().unwrap_or(dir);
    match (std::fs::metadata(dir), std::fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.dev() != p.dev(),
        _ => false,
    }
}

/// Mounts a tmpfs of `size` bytes on `dir` (made if missing), unless one
/// is mounted there already (an agent restarted under running containers:
/// their data stays).
pub fn mount_memory_volume(dir: &Path, size: Option<u64>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if is_mount_point(dir) {
        return Ok(());
    }
    let data = match size {
        Some(bytes) => format!("size={bytes}"),
        None => String::new(),
    };
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        "tmpfs",
        dir,
        "tmpfs",
        rustix::mount::MountFlags::NODEV | rustix::mount::MountFlags::NOSUID,
        Some(data.as_c_str()),
    )
    .map_err(|e| std::io::Error::other(format!("cannot mount a tmpfs on {}: {e}", dir.display())))
}

/// Removes a pod's directory, unmounting its Memory volumes first (a mount
/// point cannot be removed, and its contents must not outlive the pod).
/// Gives a volume to the pod's `fsGroup` as the kubelet's
/// `SetVolumeOwnership` does: everything under `dir` (symlinks aside) gets
/// group `gid`, user and group read (and write unless `read_only`), and
/// directories also execute and setgid, so what the pod makes there
/// belongs to the group too.
pub fn set_volume_ownership(dir: &Path, gid: u32, read_only: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::chown(dir, None, Some(gid))?;
    let mut mask = if read_only { 0o440 } else { 0o660 };
    if meta.is_dir() {
        mask |= 0o2110;
        for entry in std::fs::read_dir(dir)? {
            set_volume_ownership(&entry?.path(), gid, read_only)?;
        }
    }
    let mode = meta.permissions().mode() | mask;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Where a pod volume lives on the host, for both runtimes: a hostPath's
/// own path, a claim's directory (`claim_dir`), else a directory the agent
/// made under the pod's (`{pod_dir}/volumes/{name}`). None: no such volume.
pub fn volume_host_path(spec: &PodSpec, pod_dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    let v = spec.volumes.iter().find(|v| v.name == name)?;
    Some(match &v.source {
        VolumeSource::HostPath { path, .. } => std::path::PathBuf::from(path),
        VolumeSource::Claim { claim, .. } => claim_dir(pod_dir, &spec.namespace, claim),
        VolumeSource::EmptyDir { .. } | VolumeSource::Files { .. } => {
            pod_dir.join("volumes").join(name)
        }
    })
}

/// The durable directory of a persistent volume claim on the device:
/// `{data_dir}/claims/{namespace}/{claim}`, beside `{data_dir}/pods`, where
/// `pod_dir` is (`{data_dir}/pods/{namespace}_{name}_{uid}`). It outlives
/// the pods that use it: nothing removes it with a pod.
pub fn claim_dir(pod_dir: &Path, namespace: &str, claim: &str) -> std::path::PathBuf {
    let data_dir = pod_dir.parent().and_then(Path::parent).unwrap_or(pod_dir);
    data_dir.join("claims").join(namespace).join(claim)
}

/// The symlink through which a file volume's visible names reach its
/// current files (the kubelet's `..data`).
const DATA_LINK: &str = "..data";

/// Writes the files of a configMap, secret, downwardAPI or projected
/// volume as the kubelet's `AtomicWriter` does: into a new directory
/// `..<timestamp>` beside the current one, then `..data` (a symlink to the
/// current one) is replaced by a rename, so a reader sees every old file
/// or every new one, never a mix; each visible name is a symlink through
/// `..data`. Names that are gone are removed, the old directory last. A
/// volume an older agent wrote as plain files is brought to this layout.
/// A name that would leave the directory (or take a `..` name) is refused.
pub fn write_volume_files(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    mode: u32,
) -> std::io::Result<()> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    for (name, _) in files {
        if name.starts_with('/') || name.contains("..") || name.split('/').any(str::is_empty) {
            return Err(std::io::Error::other(format!(
                "file name {name:?} leaves the volume"
            )));
        }
    }
    std::fs::create_dir_all(dir)?;
    let stamp = data_dir_name(dir);
    let data = dir.join(&stamp);
    std::fs::create_dir(&data)?;
    for (name, bytes) in files {
        let path = data.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    let link = dir.join(DATA_LINK);
    let old = std::fs::read_link(&link).ok();
    let tmp = dir.join("..data_tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &link)?;
    // The visible names: one symlink per top-level name.
    let top: std::collections::BTreeSet<&str> = files
        .iter()
        .filter_map(|(n, _)| n.split('/').next())
        .collect();
    for name in &top {
        let path = dir.join(name);
        let target = Path::new(DATA_LINK).join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() && std::fs::read_link(&path)? == target => {
                continue;
            }
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path)?,
            Ok(_) => std::fs::remove_file(&path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        symlink(&target, &path)?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let keep = name
            .to_str()
            .is_some_and(|n| n.starts_with("..") || top.contains(n));
        if !keep {
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    // The previous files, once nothing points at them.
    if let Some(old) = old.as_ref().and_then(|o| o.to_str())
        && old != stamp
        && old.starts_with("..")
        && !old.contains('/')
    {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(())
}

/// A new `..<timestamp>` name in `dir` (seconds and nanoseconds since the
/// epoch; the kubelet writes the date, nothing reads it but `..data`).
fn data_dir_name(dir: &Path) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let base = format!("..{}.{:09}", now.as_secs(), now.subsec_nanos());
    let mut name = base.clone();
    let mut n = 0;
    // Two writes within a tick of a coarse clock.
    while std::fs::symlink_metadata(dir.join(&name)).is_ok() {
        n += 1;
        name = format!("{base}_{n}");
    }
    name
}

pub fn remove_pod_dir(pod_dir: &Path) -> std::io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(pod_dir.join("volumes")) {
        for entry in entries.flatten() {
            let path = entry.path();
            if is_mount_point(&path)
                && let Err(e) = rustix::mount::unmount(&path, rustix::mount::UnmountFlags::DETACH)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot unmount a memory volume");
            }
        }
    }
    match std::fs::remove_dir_all(pod_dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file volume is written the kubelet's way and updated in place:
    /// the same paths read the new files, a key that is gone is gone, the
    /// old files' directory is removed, and a volume of plain files (an
    /// older agent's) is brought to the same layout.
    #[test]
    fn file_volumes_are_swapped_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v = dir.path().join("config");
        let read = |name: &str| std::fs::read_to_string(v.join(name)).ok();
        let data_dirs = || {
            std::fs::read_dir(&v)
                .expect("reads")
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| {
                    n.starts_with("..") && n.as_bytes().get(2).is_some_and(u8::is_ascii_digit)
                })
                .count()
        };
        let files = |list: &[(&str, &str)]| -> Vec<(String, Vec<u8>)> {
            list.iter()
                .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec()))
                .collect()
        };
        // An older agent's layout: plain files and directories.
        std::fs::create_dir_all(v.join("nested")).expect("dir");
        std::fs::write(v.join("mode"), "legacy").expect("file");
        std::fs::write(v.join("stale"), "x").expect("file");
        write_volume_files(
            &v,
            &files(&[("mode", "fast"), ("nested/rate", "5"), ("keep", "k")]),
            0o640,
        )
        .expect("writes");
        assert_eq!(read("mode").as_deref(), Some("fast"));
        assert_eq!(read("nested/rate").as_deref(), Some("5"));
        assert_eq!(read("stale"), None, "not in the volume any more");
        assert!(
            std::fs::symlink_metadata(v.join("mode"))
                .expect("exists")
                .file_type()
                .is_symlink()
        );
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(v.join("mode"))
            .expect("target")
            .permissions()
            .mode();
        assert_eq!(m & 0o777, 0o640);
        let first = std::fs::read_link(v.join(DATA_LINK)).expect("..data");
        // An update: changed, removed and added keys; one data directory.
        write_volume_files(&v, &files(&[("mode", "slow"), ("added", "a")]), 0o640)
            .expect("updates");
        assert_eq!(read("mode").as_deref(), Some("slow"));
        assert_eq!(read("added").as_deref(), Some("a"));
        assert_eq!(read("keep"), None);
        assert_eq!(read("nested/rate"), None);
        assert_ne!(
            std::fs::read_link(v.join(DATA_LINK)).expect("..data"),
            first
        );
        assert!(!v.join(&first).exists(), "the old files are removed");
        assert_eq!(data_dirs(), 1);
        assert!(!v.join("..data_tmp").exists());
        // Nothing may leave the volume.
        for bad in ["../escape", "/etc/passwd", "a/../../b", "..data", "a//b"] {
            assert!(
                write_volume_files(&v, &files(&[(bad, "x")]), 0o644).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            read("mode").as_deref(),
            Some("slow"),
            "a refused write changes nothing"
        );
    }

    /// A claim's directory is the device's, beside the pods' directories,
    /// so it outlives them; the other volumes live where they always did.
    #[test]
    fn claims_live_beside_the_pods_and_outlive_them() {
        let pod_dir = Path::new("/var/lib/kedge/pods/shop_db_u1");
        let mut spec =
            crate::model::samples::spec("db", "u1", 1, crate::model::RestartPolicy::Always);
        spec.namespace = "shop".into();
        spec.volumes = vec![
            crate::model::Volume {
                name: "data".into(),
                source: VolumeSource::Claim {
                    claim: "db-data".into(),
                    read_only: false,
                },
            },
            crate::model::Volume {
                name: "scratch".into(),
                source: VolumeSource::EmptyDir {
                    memory: false,
                    size_limit_bytes: None,
                },
            },
        ];
        assert_eq!(
            volume_host_path(&spec, pod_dir, "data"),
            Some("/var/lib/kedge/claims/shop/db-data".into())
        );
        assert_eq!(
            volume_host_path(&spec, pod_dir, "scratch"),
            Some("/var/lib/kedge/pods/shop_db_u1/volumes/scratch".into())
        );
        assert_eq!(volume_host_path(&spec, pod_dir, "none"), None);
        // Removing the pod's directory leaves the claim's.
        let dir = tempfile::tempdir().expect("tempdir");
        let pod_dir = dir.path().join("pods/shop_db_u1");
        let claim = claim_dir(&pod_dir, "shop", "db-data");
        std::fs::create_dir_all(&claim).expect("claim");
        std::fs::write(claim.join("row"), "kept").expect("write");
        std::fs::create_dir_all(pod_dir.join("volumes")).expect("pod dir");
        remove_pod_dir(&pod_dir).expect("removes");
        assert_eq!(
            std::fs::read_to_string(claim.join("row")).expect("kept"),
            "kept"
        );
    }

    #[test]
    fn host_path_types_are_checked_like_the_kubelet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("file"), b"x").expect("file");
        std::fs::create_dir(d.join("dir")).expect("dir");
        let socket = std::os::unix::net::UnixListener::bind(d.join("sock")).expect("socket");
        std::os::unix::fs::symlink(d.join("dir"), d.join("link-to-dir")).expect("symlink");
        let ok = [
            ("file", HostPathType::File),
            ("file", HostPathType::FileOrCreate),
            ("file", HostPathType::Unset),
            ("missing", HostPathType::Unset),
            ("dir", HostPathType::Directory),
            ("dir", HostPathType::DirectoryOrCreate),
            ("link-to-dir", HostPathType::Directory),
            ("sock", HostPathType::Socket),
        ];
        for (name, kind) in ok {
            assert_eq!(
                check_host_path(&d.join(name), kind),
                Ok(()),
                "{name} {kind:?}"
            );
        }
        assert_eq!(
            check_host_path(Path::new("/dev/null"), HostPathType::CharDevice),
            Ok(())
        );
        let shown = |name: &str| d.join(name).display().to_string();
        let refused = [
            ("file", HostPathType::Directory, "is not a directory"),
            (
                "file",
                HostPathType::DirectoryOrCreate,
                "is not a directory",
            ),
            ("missing", HostPathType::Directory, "is not a directory"),
            ("dir", HostPathType::File, "is not a file"),
            ("dir", HostPathType::FileOrCreate, "is not a file"),
            ("missing", HostPathType::File, "is not a file"),
            ("file", HostPathType::Socket, "is not a socket file"),
            (
                "file",
                HostPathType::CharDevice,
                "is not a character device",
            ),
            ("file", HostPathType::BlockDevice, "is not a block device"),
        ];
        for (name, kind, what) in refused {
            assert_eq!(
                check_host_path(&d.join(name), kind),
                Err(format!(
                    "hostPath type check failed: {} {what}",
                    shown(name)
                )),
                "{name} {kind:?}"
            );
        }
        drop(socket);
    }

    #[test]
    fn or_create_types_make_what_is_missing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        // The kubelet's modes, less the umask.
        let umask = {
            let probe = d.join("umask-probe");
            std::fs::DirBuilder::new()
                .mode(0o777)
                .create(&probe)
                .expect("probe");
            0o777
                & !std::fs::metadata(&probe)
                    .expect("meta")
                    .permissions()
                    .mode()
        };
        let new_dir = d.join("a/b/c");
        assert_eq!(
            check_host_path(&new_dir, HostPathType::DirectoryOrCreate),
            Ok(())
        );
        let meta = std::fs::metadata(&new_dir).expect("made");
        assert!(meta.is_dir());
        assert_eq!(meta.permissions().mode() & 0o777, 0o755 & !umask);

        let new_file = d.join("a/new.sock");
        assert_eq!(
            check_host_path(&new_file, HostPathType::FileOrCreate),
            Ok(())
        );
        let meta = std::fs::metadata(&new_file).expect("made");
        assert!(meta.is_file() && meta.len() == 0);
        assert_eq!(meta.permissions().mode() & 0o777, 0o644 & !umask);
        // An existing file is left alone.
        std::fs::write(&new_file, b"kept").expect("write");
        assert_eq!(
            check_host_path(&new_file, HostPathType::FileOrCreate),
            Ok(())
        );
        assert_eq!(std::fs::read(&new_file).expect("read"), b"kept");

        // FileOrCreate does not make the parent directory.
        let err = check_host_path(&d.join("no/such/file"), HostPathType::FileOrCreate)
            .expect_err("no parent");
        assert!(
            err.starts_with(&format!(
                "hostPath type check failed: cannot create file {}",
                d.join("no/such/file").display()
            )),
            "{err}"
        );
    }

    #[test]
    fn the_volume_is_named_in_the_message() {
        let mut spec =
            crate::model::samples::spec("web", "u1", 1, crate::model::RestartPolicy::Never);
        spec.volumes = vec![crate::model::Volume {
            name: "sock".into(),
            source: VolumeSource::HostPath {
                path: "/definitely/not/here".into(),
                kind: HostPathType::Socket,
            },
        }];
        assert_eq!(
            check_host_paths(&spec),
            Err("MountVolume.SetUp failed for volume \"sock\" : hostPath type check failed: /definitely/not/here is not a socket file".into())
        );
    }

    #[test]
    fn an_fs_group_owns_the_volume_with_the_kubelets_modes() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("v");
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("sub/f"), b"x").expect("write");
        std::fs::set_permissions(dir.join("sub/f"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        set_volume_ownership(&dir, 4321, false).expect("owned");
        let meta = |p: &str| std::fs::metadata(dir.join(p)).expect("meta");
        for p in ["", "sub", "sub/f"] {
            assert_eq!(meta(p).gid(), 4321, "{p:?}");
        }
        // Directories: setgid, and the group may read, write and enter.
        assert_eq!(meta("sub").mode() & 0o2770, 0o2770);
        assert_eq!(meta("sub/f").mode() & 0o777, 0o660);
        let ro = tmp.path().join("ro");
        std::fs::create_dir(&ro).expect("mkdir");
        std::fs::write(ro.join("f"), b"x").expect("write");
        std::fs::set_permissions(ro.join("f"), std::fs::Permissions::from_mode(0o400))
            .expect("chmod");
        set_volume_ownership(&ro, 4321, true).expect("owned");
        assert_eq!(
            std::fs::metadata(ro.join("f")).expect("meta").mode() & 0o777,
            0o440
        );
    }

    #[test]
    fn memory_volumes_are_sized_by_limit_or_pod_memory() {
        let mut spec =
            crate::model::samples::spec("web", "u1", 1, crate::model::RestartPolicy::Never);
        spec.containers = vec![crate::model::samples::container("app")];
        assert_eq!(memory_volume_size(&spec, None), None);
        assert_eq!(memory_volume_size(&spec, Some(5)), Some(5));
        spec.containers[0].resources.memory_limit_bytes = Some(64 << 20);
        assert_eq!(memory_volume_size(&spec, None), Some(64 << 20));
        assert_eq!(memory_volume_size(&spec, Some(1 << 20)), Some(1 << 20));
        assert_eq!(memory_volume_size(&spec, Some(1 << 30)), Some(64 << 20));
        // An init container's limit counts when it is the larger; one
        // without a limit leaves the pod without one.
        spec.init_containers = vec![crate::model::samples::container("init")];
        assert_eq!(memory_volume_size(&spec, None), None);
        spec.init_containers[0].resources.memory_limit_bytes = Some(128 << 20);
        assert_eq!(memory_volume_size(&spec, None), Some(128 << 20));
        spec.init_containers[0].resources.memory_limit_bytes = Some(1 << 20);
        assert_eq!(memory_volume_size(&spec, None), Some(64 << 20));
    }
}
