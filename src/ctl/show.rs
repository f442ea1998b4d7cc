//! `pvdir show`: what a volume ID says and where that volume is mounted on this machine, from
//! the ID and the mount table alone (no driver needed).

use std::path::Path;

use super::args::ShowArgs;
use super::CtlError;
use crate::domain::local::LocalBackend;
use crate::domain::params::join_export;
use crate::domain::volume_id::{LocalId, NfsId, OnDelete, VolumeId};
use crate::os::{mountinfo, MountEntry, MountSource};

pub fn run(args: ShowArgs) -> Result<(), CtlError> {
    let id = VolumeId::parse(&args.volume_id).map_err(|source| CtlError::DecodeId {
        id: args.volume_id.clone(),
        source,
    })?;
    let text = std::fs::read(&args.mountinfo).map_err(|source| CtlError::ReadMountinfo {
        path: args.mountinfo.clone(),
        source,
    })?;
    let mounts = mountinfo::parse(&text);
    line("volume id", &args.volume_id);
    let found = match &id {
        VolumeId::Local(local) => show_local(local, &args.local_root, &mounts),
        VolumeId::Nfs(nfs) => show_nfs(nfs, &mounts),
    };
    if found.is_empty() {
        line("mounted at", "not mounted");
    } else {
        println!("mounted at:");
        for m in found {
            println!("  {m}");
        }
    }
    Ok(())
}

fn line(label: &str, value: impl std::fmt::Display) {
    println!("{:<14} {value}", format!("{label}:"));
}

fn show_local(id: &LocalId, local_root: &Path, mounts: &[MountEntry]) -> Vec<String> {
    // Canonical, as the driver serves it and the kernel reports it; as given if it is not here.
    let root = std::fs::canonicalize(local_root).unwrap_or_else(|_| local_root.to_path_buf());
    let dir = LocalBackend::volume_dir_in(&root, &id.key);
    line("backend", "local");
    line("node", &id.node);
    line("key", id.key.as_str());
    let state = match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => "",
        Ok(_) => " (not a directory here)",
        Err(_) => " (not on this machine)",
    };
    line("directory", format!("{}{state}", dir.display()));
    line("on delete", "delete (DeleteVolume removes the directory)");
    line(
        "mount options",
        "none in the ID (flags come with each publish)",
    );
    local_mounts(&dir, mounts)
}

/// Bind mounts showing the volume directory or a subdirectory of it (kubelet's subPath).
fn local_mounts(dir: &Path, mounts: &[MountEntry]) -> Vec<String> {
    let Some((_, root)) = mountinfo::bind_identity(mounts, dir) else {
        return Vec::new();
    };
    mountinfo::mounts_of_tree(mounts, dir)
        // The directory itself, should something be mounted on it, is not a publish of it.
        .filter(|m| m.mount_point != dir)
        .map(|m| {
            let what = match m.root.strip_prefix(&root) {
                Ok(sub) if !sub.as_os_str().is_empty() => {
                    format!("bind of subdirectory {}", sub.display())
                }
                _ => "bind".into(),
            };
            describe(m, &what)
        })
        .collect()
}

fn show_nfs(id: &NfsId, mounts: &[MountEntry]) -> Vec<String> {
    let path = join_export(&id.share, &id.subdir);
    let device = MountSource::nfs_device(&id.server, &path);
    line("backend", "nfs");
    line("server", &id.server);
    line("share", &id.share);
    line("subdir", id.subdir.as_str());
    line("source", &device);
    let on_delete = match id.on_delete {
        OnDelete::Delete => "delete (DeleteVolume removes the directory)",
        OnDelete::Retain => "retain (DeleteVolume keeps the directory)",
        OnDelete::Archive => "archive (DeleteVolume renames it to archived-<name>)",
    };
    line("on delete", on_delete);
    let options = if id.mount_options.is_empty() {
        "none".to_string()
    } else {
        id.mount_options.join(",")
    };
    line("mount options", options);
    line("owner", &id.owner);
    // The same test the node uses: an NFS mount of exactly `server:/share/subdir`.
    mounts
        .iter()
        .filter(|m| m.is_remote() && m.source_is(&device))
        .map(|m| describe(m, &m.fs_type))
        .collect()
}

fn describe(m: &MountEntry, what: &str) -> String {
    let mode = if m.readonly() { "ro" } else { "rw" };
    format!("{} ({what}, {mode})", m.mount_point.display())
}
