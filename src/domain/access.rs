//! Access modes and volume capabilities as domain values, and which backend supports which.

/// CSI access modes (the Kubernetes names in comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessMode {
    /// ReadWriteOnce
    SingleNodeWriter,
    SingleNodeReaderOnly,
    /// ReadOnlyMany
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    /// ReadWriteMany
    MultiNodeMultiWriter,
    /// ReadWriteOncePod: one publish target on one node.
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

impl AccessMode {
    pub fn is_multi_node(self) -> bool {
        matches!(
            self,
            Self::MultiNodeReaderOnly | Self::MultiNodeSingleWriter | Self::MultiNodeMultiWriter
        )
    }

    /// Reader-only modes must always produce a read-only mount.
    pub fn is_read_only(self) -> bool {
        matches!(self, Self::SingleNodeReaderOnly | Self::MultiNodeReaderOnly)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessType {
    /// A filesystem mount; pvdir volumes are directories, so `fs_type` is informational.
    Mount {
        fs_type: String,
        mount_flags: Vec<String>,
    },
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub mode: AccessMode,
    pub access: AccessType,
}

impl Capability {
    pub fn mount_flags(&self) -> &[String] {
        match &self.access {
            AccessType::Mount { mount_flags, .. } => mount_flags,
            AccessType::Block => &[],
        }
    }
}

/// Which backend a check is for: the only difference is multi-node access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Local,
    Nfs,
}

impl BackendKind {
    /// The backend's name as a metrics label and in `/healthz/<backend>`.
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Nfs => "nfs",
        }
    }
}

/// Mount options a local volume's bind mount can honour: they become per-mount flags of the
/// bind. Anything else (filesystem options) has no meaning for a bind and is refused rather than
/// silently dropped.
pub const BIND_MOUNT_FLAGS: &[&str] = &[
    "ro",
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "nodiratime",
    "relatime",
    "nosymfollow",
];

/// Longest mount option accepted; real ones are a few dozen bytes.
pub const MAX_MOUNT_OPTION_LEN: usize = 1024;

/// Options that change what mount does rather than how the filesystem behaves: a PV author's
/// `remount` or `move` would turn pvdir's mount into another operation on the target.
const OPERATION_OPTIONS: &[&str] = &[
    "remount",
    "bind",
    "rbind",
    "move",
    "shared",
    "rshared",
    "private",
    "rprivate",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
];

/// Why a string cannot be passed as one mount option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountOptionError {
    #[error("an empty mount option")]
    Empty,
    #[error("a mount option of {len} bytes (max {MAX_MOUNT_OPTION_LEN})")]
    TooLong { len: usize },
    /// A comma would split it into several options (`hard,remount`); control characters and
    /// spaces have no place in an option and could forge log lines.
    #[error(
        "mount option {0:?} is not one option: it holds a comma, a space or a control character"
    )]
    NotOne(String),
    #[error("mount option {0:?} changes the mount operation itself")]
    Operation(String),
}

/// The one check of a mount option, for StorageClass and PV `mountOptions` alike, wherever they
/// arrive (CreateVolume, NodePublishVolume, a volume ID): each is passed on as one option.
pub fn check_mount_option(option: &str) -> Result<(), MountOptionError> {
    if option.is_empty() {
        return Err(MountOptionError::Empty);
    }
    if option.len() > MAX_MOUNT_OPTION_LEN {
        return Err(MountOptionError::TooLong { len: option.len() });
    }
    if option
        .chars()
        .any(|c| c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(MountOptionError::NotOne(option.to_string()));
    }
    let word = option.split('=').next().unwrap_or(option);
    if OPERATION_OPTIONS.contains(&word) || word.starts_with("make-") {
        return Err(MountOptionError::Operation(option.to_string()));
    }
    Ok(())
}

/// Why a capability cannot be served, or `None` when it can.
pub fn unsupported_reason(kind: BackendKind, cap: &Capability) -> Option<String> {
    if cap.access == AccessType::Block {
        return Some("block access is not supported: pvdir volumes are directories".into());
    }
    if kind == BackendKind::Local && cap.mode.is_multi_node() {
        return Some(format!(
            "access mode {:?} needs several nodes, but a local volume lives on one node",
            cap.mode
        ));
    }
    if kind == BackendKind::Local {
        if let Some(flag) = cap
            .mount_flags()
            .iter()
            .find(|f| !BIND_MOUNT_FLAGS.contains(&f.as_str()))
        {
            return Some(format!(
                "mount option {flag:?} cannot apply to a local volume's bind mount (allowed: {})",
                BIND_MOUNT_FLAGS.join(", ")
            ));
        }
    }
    None
}

/// Mount flags of all capabilities, first occurrence kept, in order.
pub fn merged_mount_flags(caps: &[Capability]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for flag in caps.iter().flat_map(|c| c.mount_flags()) {
        if !out.contains(flag) {
            out.push(flag.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(mode: AccessMode) -> Capability {
        Capability {
            mode,
            access: AccessType::Mount {
                fs_type: String::new(),
                mount_flags: vec!["hard".into()],
            },
        }
    }

    #[test]
    fn local_rejects_multi_node_nfs_takes_all() {
        use AccessMode::*;
        for m in [
            SingleNodeWriter,
            SingleNodeReaderOnly,
            SingleNodeSingleWriter,
            SingleNodeMultiWriter,
        ] {
            let mut c = cap(m);
            c.access = AccessType::Mount {
                fs_type: String::new(),
                mount_flags: vec![],
            };
            assert_eq!(unsupported_reason(BackendKind::Local, &c), None);
        }
        for m in [
            MultiNodeReaderOnly,
            MultiNodeSingleWriter,
            MultiNodeMultiWriter,
        ] {
            assert!(unsupported_reason(BackendKind::Local, &cap(m)).is_some());
            assert_eq!(unsupported_reason(BackendKind::Nfs, &cap(m)), None);
        }
    }

    #[test]
    fn local_takes_only_bind_flags() {
        let mut c = cap(AccessMode::SingleNodeWriter);
        c.access = AccessType::Mount {
            fs_type: String::new(),
            mount_flags: vec!["nosuid".into(), "noexec".into()],
        };
        assert_eq!(unsupported_reason(BackendKind::Local, &c), None);
        // "hard" is an NFS option: meaningless for a bind.
        assert!(
            unsupported_reason(BackendKind::Local, &cap(AccessMode::SingleNodeWriter)).is_some()
        );
        assert_eq!(
            unsupported_reason(BackendKind::Nfs, &cap(AccessMode::SingleNodeWriter)),
            None
        );
    }

    #[test]
    fn mount_options_are_one_option_each() {
        for good in [
            "hard",
            "nfsvers=4.2",
            "sec=krb5p",
            "ro",
            "nosuid",
            "timeo=600",
        ] {
            assert_eq!(check_mount_option(good), Ok(()), "{good}");
        }
        assert_eq!(check_mount_option(""), Err(MountOptionError::Empty));
        for bad in ["hard,remount", "a b", "x\ny", "tab\t", "nul\0"] {
            assert!(
                matches!(check_mount_option(bad), Err(MountOptionError::NotOne(_))),
                "{bad:?}"
            );
        }
        for bad in ["remount", "bind", "move", "rshared", "make-private"] {
            assert!(
                matches!(check_mount_option(bad), Err(MountOptionError::Operation(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            check_mount_option(&"x".repeat(MAX_MOUNT_OPTION_LEN + 1)),
            Err(MountOptionError::TooLong { .. })
        ));
    }

    #[test]
    fn block_is_never_supported() {
        let c = Capability {
            mode: AccessMode::SingleNodeWriter,
            access: AccessType::Block,
        };
        assert!(unsupported_reason(BackendKind::Nfs, &c).is_some());
    }

    #[test]
    fn flags_are_merged_without_duplicates() {
        let mut b = cap(AccessMode::SingleNodeWriter);
        b.access = AccessType::Mount {
            fs_type: String::new(),
            mount_flags: vec!["hard".into(), "vers=4.2".into()],
        };
        assert_eq!(
            merged_mount_flags(&[cap(AccessMode::SingleNodeWriter), b]),
            vec!["hard".to_string(), "vers=4.2".to_string()]
        );
    }
}
