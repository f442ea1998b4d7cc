//! Unix sockets this process serves on: CSI endpoints and kubelet registration sockets.
//! [`authority`] lets gRPC clients that send the socket's path as `:authority` through.
//!
//! Invariants: a file at the path that is not a socket is never deleted; a socket another
//! process still answers on is never stolen (an overlapping rollout); at shutdown only the
//! socket this process bound is removed, recognised by its inode, since a successor may
//! already have replaced it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};

pub mod authority;
pub mod limit;

pub use authority::AuthorityFix;

/// The connections of a unix listener, each behind [`AuthorityFix`], within the bounds of
/// [`limit`].
pub fn incoming(
    listener: UnixListener,
) -> impl Stream<Item = std::io::Result<limit::Limited<AuthorityFix<tokio::net::UnixStream>>>> {
    limit::bounded(UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new)))
}

/// A socket file this process bound, remembered by inode so that shutdown removes only our
/// own: after an overlapping rollout the path may already hold the successor's socket.
pub struct OwnSocket {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl OwnSocket {
    fn new(path: &Path, meta: &std::fs::Metadata) -> Self {
        Self {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    pub fn remove(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == (self.dev, self.ino) {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }

    /// Whether the path still holds the socket this process bound. kubelet learns about a
    /// plugin from the socket file; one deleted under us (kubelet's directory wiped) or
    /// replaced by someone else must be made again.
    pub fn still_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == (self.dev, self.ino))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Bind a unix socket at `path`, creating its parent. A stale socket left by a killed
/// predecessor is replaced (bind would fail with EADDRINUSE); any other file at that path is
/// refused, never deleted.
pub async fn bind_unix(path: &Path) -> std::io::Result<(UnixListener, OwnSocket)> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process is serving on this socket",
                ));
            }
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "not a socket",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let identity = std::fs::symlink_metadata(path)?;
    Ok((listener, OwnSocket::new(path, &identity)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        std::fs::write(&path, b"precious").unwrap();
        assert!(bind_unix(&path).await.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn a_live_socket_is_not_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let _live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(bind_unix(&path).await.is_err());
        assert!(path.exists());
    }

    #[tokio::test]
    async fn shutdown_removes_only_its_own_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        let (_listener, ours) = bind_unix(&path).await.unwrap();
        assert!(ours.still_ours());
        // A successor replaced the socket file meanwhile.
        std::fs::remove_file(&path).unwrap();
        let _successor = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(!ours.still_ours());
        ours.remove();
        assert!(path.exists(), "the successor's socket was removed");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("csi.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(bind_unix(&path).await.is_ok());
    }
}
