//! `mountPermissions`: the mode of a volume directory, which pods write to.
//!
//! Accepted: octal digits only (an optional `0o` prefix), at most `0o3777`, with the owner's
//! `rwx` bits set.
//! - Permission bits `0o777` as the class wants them. The owner bits must include `rwx`: the
//!   owner is whoever made the directory (root, or the squashed user of a `root_squash`
//!   export), and DeleteVolume, archiving and kubelet's `fsGroup` change all work inside the
//!   directory as that owner. A mode without them makes a volume pvdir cannot delete.
//! - setgid (`0o2000`): new files and directories inherit the directory's group, the usual way
//!   to share a directory between pods of one group.
//! - sticky (`0o1000`): only a file's owner may delete it, as in `/tmp`; for a directory many
//!   users write to.
//!
//! Refused: setuid (`0o4000`), which Linux ignores on directories, so asking for it can only
//! be a mistake (often for setgid), and anything above `0o7777`.

use super::params::ParamsError;

const SETUID: u32 = 0o4000;
const OWNER_RWX: u32 = 0o700;

/// Why a `mountPermissions` value is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    #[error("is not an octal mode like 0770 (digits 0-7 only)")]
    NotOctal,
    #[error("is above 07777")]
    TooLarge,
    #[error("sets setuid (4000), which a directory ignores; setgid is 2000")]
    Setuid,
    #[error("lacks the owner's rwx (0700), without which pvdir cannot delete the volume")]
    OwnerCannotManage,
}

/// The mode asked for, if any.
pub fn parse_mode(raw: Option<&str>) -> Result<Option<u32>, ParamsError> {
    let Some(raw) = raw else { return Ok(None) };
    check_mode(raw).map(Some).map_err(|e| ParamsError::Value {
        key: "mountPermissions",
        reason: format!("{raw:?} {e}"),
    })
}

fn check_mode(raw: &str) -> Result<u32, ModeError> {
    let digits = raw.strip_prefix("0o").unwrap_or(raw);
    // from_str_radix alone would take a sign ("+777").
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(ModeError::NotOctal);
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| ModeError::TooLarge)?;
    if mode > 0o7777 {
        return Err(ModeError::TooLarge);
    }
    if mode & SETUID != 0 {
        return Err(ModeError::Setuid);
    }
    if mode & OWNER_RWX != OWNER_RWX {
        return Err(ModeError::OwnerCannotManage);
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_modes_parse_octal() {
        for (raw, mode) in [
            ("0777", 0o777),
            ("777", 0o777),
            ("0o770", 0o770),
            ("0700", 0o700),
            ("2775", 0o2775),
            ("1777", 0o1777),
            ("3770", 0o3770),
            ("000755", 0o755),
        ] {
            assert_eq!(check_mode(raw), Ok(mode), "{raw}");
        }
        assert_eq!(parse_mode(None), Ok(None));
    }

    #[test]
    fn modes_that_make_no_sense_for_a_volume_directory_are_refused() {
        use ModeError::*;
        for (raw, why) in [
            ("", NotOctal),
            ("0o", NotOctal),
            ("0999", NotOctal),
            ("rwx", NotOctal),
            ("+777", NotOctal),
            ("-777", NotOctal),
            (" 777", NotOctal),
            ("0x1ff", NotOctal),
            ("17777", TooLarge),
            ("77777777777777777", TooLarge),
            ("4777", Setuid),
            ("6775", Setuid),
            ("4700", Setuid),
            ("0", OwnerCannotManage),
            ("0077", OwnerCannotManage),
            ("0500", OwnerCannotManage),
            ("0644", OwnerCannotManage),
            ("2070", OwnerCannotManage),
        ] {
            assert_eq!(check_mode(raw), Err(why), "{raw:?}");
        }
        assert!(matches!(
            parse_mode(Some("4777")),
            Err(ParamsError::Value {
                key: "mountPermissions",
                ..
            })
        ));
    }
}
