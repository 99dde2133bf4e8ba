//! What a directory holds on the node's disk, as the kubelet's `du`
//! measures a volume: the agent's eviction checks measure a pod's
//! disk-backed emptyDirs and its containers' logs with it (the writable
//! layers come from the runtime, `Runtime::writable_layers`).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The bytes the files under `path` take on disk (allocated blocks, as
/// `du` counts them; a hard-linked file once), not following symbolic
/// links. A missing directory is 0; what cannot be read (removed while
/// walking) counts as nothing.
pub fn dir_usage(path: &Path) -> u64 {
    let mut total: u64 = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if !meta.is_dir() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino())) {
                total = total.saturating_add(meta.blocks().saturating_mul(512));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_allocated_blocks_of_every_file_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("v");
        assert_eq!(dir_usage(&root), 0, "missing is empty");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        let empty = dir_usage(&root);
        std::fs::write(root.join("a/b/f"), vec![7u8; 256 * 1024]).expect("write");
        std::fs::hard_link(root.join("a/b/f"), root.join("a/g")).expect("link");
        std::os::unix::fs::symlink("/usr", root.join("a/outside")).expect("symlink");
        let used = dir_usage(&root) - empty;
        // 256 KiB of data: at least that many bytes of blocks, counted once
        // for two links, and nothing of what the symbolic link points to.
        assert!(
            (256 * 1024..2 * 256 * 1024).contains(&used),
            "used {used} bytes"
        );
    }
}
