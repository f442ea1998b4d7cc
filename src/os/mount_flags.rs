//! Per-mount flags: the options `mount -o` calls `ro`, `nosuid`, `noatime`, … that belong to one
//! mount rather than to the filesystem, so a bind mount can carry its own.
//!
//! They are parsed from StorageClass option names and from mountinfo's per-mount field, and
//! turned into the kernel's bits for both mount APIs. The security flags (`ro`, `nosuid`,
//! `nodev`, `noexec`, `nosymfollow`) keep a mount safe to hand to someone else (the kernel
//! locks the first four on mounts it hands to a less privileged namespace): a bind must never
//! lose one its source has, so publish always adds to them and never replaces them.

/// A set of per-mount flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct MountFlags(u8);

impl MountFlags {
    pub const READ_ONLY: MountFlags = MountFlags(1);
    pub const NOSUID: MountFlags = MountFlags(1 << 1);
    pub const NODEV: MountFlags = MountFlags(1 << 2);
    pub const NOEXEC: MountFlags = MountFlags(1 << 3);
    pub const NOATIME: MountFlags = MountFlags(1 << 4);
    pub const RELATIME: MountFlags = MountFlags(1 << 5);
    pub const NODIRATIME: MountFlags = MountFlags(1 << 6);
    pub const NOSYMFOLLOW: MountFlags = MountFlags(1 << 7);

    /// Flags that keep a mount safe to hand to someone else; they are never dropped.
    pub const SECURITY: MountFlags = MountFlags(0b1000_1111);
    /// The atime mode: at most one of these; neither means strictatime.
    const ATIME_MODE: MountFlags = MountFlags(Self::NOATIME.0 | Self::RELATIME.0);

    const NAMES: [(&'static str, MountFlags); 8] = [
        ("ro", Self::READ_ONLY),
        ("nosuid", Self::NOSUID),
        ("nodev", Self::NODEV),
        ("noexec", Self::NOEXEC),
        ("noatime", Self::NOATIME),
        ("relatime", Self::RELATIME),
        ("nodiratime", Self::NODIRATIME),
        ("nosymfollow", Self::NOSYMFOLLOW),
    ];

    pub const fn empty() -> MountFlags {
        MountFlags(0)
    }

    pub fn contains(self, other: MountFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn intersect(self, other: MountFlags) -> MountFlags {
        MountFlags(self.0 & other.0)
    }

    /// The flag an option name stands for, if it is a per-mount flag.
    pub fn from_name(name: &str) -> Option<MountFlags> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, flag)| *flag)
    }

    /// The per-mount flags among `options`; other options (filesystem options such as
    /// `vers=4.2`) are ignored. Of several atime modes the last one wins, as with mount(8).
    pub fn from_names<'a>(options: impl IntoIterator<Item = &'a str>) -> MountFlags {
        options
            .into_iter()
            .filter_map(Self::from_name)
            .fold(Self::empty(), |mut a, b| {
                if !b.intersect(Self::ATIME_MODE).is_empty() {
                    a = MountFlags(a.0 & !Self::ATIME_MODE.0);
                }
                a | b
            })
    }

    /// mountinfo's per-mount option field (`ro,nosuid,relatime`); unknown words are ignored.
    pub fn from_mountinfo(field: &[u8]) -> MountFlags {
        field
            .split(|b| *b == b',')
            .filter_map(|word| std::str::from_utf8(word).ok())
            .filter_map(Self::from_name)
            .fold(Self::empty(), |a, b| a | b)
    }

    /// Option names, in mount(8)'s order, for messages.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(_, f)| self.contains(*f))
            .map(|(n, _)| *n)
            .collect()
    }

    /// What a bind of a directory on a mount with flags `holder` must end up with when
    /// `self` is asked for: every security flag of either, and the asked atime flags (else the
    /// holder's, which a bind inherits).
    pub fn over(self, holder: MountFlags) -> MountFlags {
        let atime = if self.intersect(Self::ATIME_MODE).is_empty() {
            holder.intersect(Self::ATIME_MODE)
        } else {
            self.intersect(Self::ATIME_MODE)
        };
        let dir = (self | holder).intersect(Self::NODIRATIME);
        (self | holder).intersect(Self::SECURITY) | atime | dir
    }

    /// Whether a mount with flags `self` is what was asked for with `wanted` (the result of
    /// [`MountFlags::over`], or the asked flags of a mount with no holder): the security
    /// flags must be equal, and the asked atime flags present.
    pub fn matches(self, wanted: MountFlags) -> bool {
        self.intersect(Self::SECURITY) == wanted.intersect(Self::SECURITY)
            && self.contains(wanted.intersect(Self::ATIME_MODE | Self::NODIRATIME))
    }

    /// `mount_setattr(2)` arguments that add these flags to a mount: (attr_set, attr_clr).
    /// Setting an atime mode needs the whole atime field cleared first.
    pub fn mount_attr(self) -> (u64, u64) {
        let mut set = 0;
        let mut clr = 0;
        for (flag, bit) in [
            (Self::READ_ONLY, libc::MOUNT_ATTR_RDONLY),
            (Self::NOSUID, libc::MOUNT_ATTR_NOSUID),
            (Self::NODEV, libc::MOUNT_ATTR_NODEV),
            (Self::NOEXEC, libc::MOUNT_ATTR_NOEXEC),
            (Self::NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
            (Self::NOSYMFOLLOW, libc::MOUNT_ATTR_NOSYMFOLLOW),
        ] {
            if self.contains(flag) {
                set |= bit;
            }
        }
        if self.contains(Self::NOATIME) {
            set |= libc::MOUNT_ATTR_NOATIME;
            clr |= libc::MOUNT_ATTR__ATIME;
        } else if self.contains(Self::RELATIME) {
            set |= libc::MOUNT_ATTR_RELATIME;
            clr |= libc::MOUNT_ATTR__ATIME;
        }
        (set, clr)
    }

    /// mount(2) flags for a `MS_BIND | MS_REMOUNT` of a bind, which replaces every per-mount
    /// flag: callers pass the full set (see [`MountFlags::over`]).
    pub fn ms_flags(self) -> libc::c_ulong {
        [
            (Self::READ_ONLY, libc::MS_RDONLY),
            (Self::NOSUID, libc::MS_NOSUID),
            (Self::NODEV, libc::MS_NODEV),
            (Self::NOEXEC, libc::MS_NOEXEC),
            (Self::NOATIME, libc::MS_NOATIME),
            (Self::RELATIME, libc::MS_RELATIME),
            (Self::NODIRATIME, libc::MS_NODIRATIME),
            (Self::NOSYMFOLLOW, libc::MS_NOSYMFOLLOW),
        ]
        .into_iter()
        .filter(|(flag, _)| self.contains(*flag))
        .fold(0, |a, (_, bit)| a | bit)
    }
}

impl std::ops::BitOr for MountFlags {
    type Output = MountFlags;
    fn bitor(self, rhs: MountFlags) -> MountFlags {
        MountFlags(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for MountFlags {
    fn bitor_assign(&mut self, rhs: MountFlags) {
        self.0 |= rhs.0;
    }
}

impl std::fmt::Display for MountFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = self.names();
        if !self.contains(Self::READ_ONLY) {
            names.insert(0, "rw");
        }
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_field_parses_known_words_only() {
        let f = MountFlags::from_mountinfo(b"ro,nosuid,nodev,noexec,relatime,nosymfollow");
        assert_eq!(
            f,
            MountFlags::READ_ONLY
                | MountFlags::NOSUID
                | MountFlags::NODEV
                | MountFlags::NOEXEC
                | MountFlags::RELATIME
                | MountFlags::NOSYMFOLLOW
        );
        assert_eq!(MountFlags::from_mountinfo(b"rw"), MountFlags::empty());
        assert_eq!(
            MountFlags::from_mountinfo(b"rw,\xff,noatime"),
            MountFlags::NOATIME
        );
    }

    #[test]
    fn asked_flags_add_to_the_holders_security_flags() {
        let holder = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        let asked = MountFlags::READ_ONLY;
        let wanted = asked.over(holder | MountFlags::RELATIME);
        assert!(wanted.contains(holder | MountFlags::READ_ONLY | MountFlags::RELATIME));
        // A plain `ro` bind, which is what the old remount produced, does not match.
        assert!(!(MountFlags::READ_ONLY | MountFlags::RELATIME).matches(wanted));
        assert!(wanted.matches(wanted));
        // An asked atime mode replaces the holder's.
        let noatime = MountFlags::NOATIME.over(MountFlags::RELATIME);
        assert!(noatime.contains(MountFlags::NOATIME) && !noatime.contains(MountFlags::RELATIME));
    }

    #[test]
    fn a_mount_with_an_extra_security_flag_does_not_match() {
        let wanted = MountFlags::empty().over(MountFlags::RELATIME);
        assert!(!(MountFlags::NOEXEC | MountFlags::RELATIME).matches(wanted));
        assert!(!(MountFlags::READ_ONLY | MountFlags::RELATIME).matches(wanted));
        assert!(MountFlags::RELATIME.matches(wanted));
    }

    #[test]
    fn of_two_atime_modes_the_last_wins() {
        assert_eq!(
            MountFlags::from_names(["noatime", "nosuid", "relatime"]),
            MountFlags::RELATIME | MountFlags::NOSUID
        );
        let asked = MountFlags::from_names(["relatime", "noatime"]);
        // What the kernel then shows matches what was asked: a retry is idempotent.
        assert!(MountFlags::NOATIME.matches(asked.over(MountFlags::RELATIME)));
    }

    #[test]
    fn kernel_bits() {
        let (set, clr) = (MountFlags::NOSUID | MountFlags::NOATIME).mount_attr();
        assert_eq!(set, libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NOATIME);
        assert_eq!(clr, libc::MOUNT_ATTR__ATIME);
        assert_eq!(MountFlags::NOSUID.mount_attr().1, 0);
        assert_eq!(
            (MountFlags::READ_ONLY | MountFlags::NODEV).ms_flags(),
            libc::MS_RDONLY | libc::MS_NODEV
        );
        assert_eq!(
            (MountFlags::READ_ONLY | MountFlags::NOEXEC).to_string(),
            "ro,noexec"
        );
        assert_eq!(MountFlags::NOEXEC.to_string(), "rw,noexec");
    }
}
