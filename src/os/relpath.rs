//! `RelPath`: a validated relative path naming a volume directory below a base directory.
//!
//! Volume IDs and StorageClass templates are untrusted, so every `RelPath` upholds these
//! invariants, checked in `parse` and by serde on deserialisation (there is no other way to
//! build one):
//! - non-empty, at most `MAX_PATH_LEN` bytes, no NUL byte;
//! - relative: no leading '/';
//! - '/'-separated segments, each non-empty, not "." or "..", at most `MAX_SEGMENT_LEN` bytes.
//!
//! Together these guarantee that walking the segments one `openat` at a time can never climb
//! out of the directory it starts from.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// Longest single segment; matches NAME_MAX on Linux filesystems (and NFS).
pub const MAX_SEGMENT_LEN: usize = 255;
/// Longest whole path; matches PATH_MAX so the path is also usable in string form.
pub const MAX_PATH_LEN: usize = 4096;

/// Why a string was rejected as a `RelPath`. Strings are shown with `{:?}` so that control
/// characters from untrusted input cannot forge log lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelPathError {
    #[error("relative path is empty")]
    Empty,
    #[error("relative path {0:?} is absolute")]
    Absolute(String),
    #[error("relative path {0:?} has an empty segment")]
    EmptySegment(String),
    #[error("relative path {0:?} has a \".\" or \"..\" segment")]
    DotSegment(String),
    #[error("relative path {0:?} contains a NUL byte")]
    Nul(String),
    #[error("relative path {path:?} has a segment of {len} bytes (max {MAX_SEGMENT_LEN})")]
    SegmentTooLong { path: String, len: usize },
    /// Only the length is kept: the input may be arbitrarily large.
    #[error("relative path of {len} bytes is too long (max {MAX_PATH_LEN})")]
    TooLong { len: usize },
}

/// A validated relative path; see the module docs for its invariants.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(String);

impl RelPath {
    /// Validates `s` as a relative path.
    pub fn parse(s: &str) -> Result<RelPath, RelPathError> {
        validate(s)?;
        Ok(RelPath(s.to_owned()))
    }

    /// The '/'-separated segments; never empty, never "." or "..".
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path without its last segment, or `None` for a single-segment path.
    pub fn parent(&self) -> Option<RelPath> {
        // Any '/'-prefix of a valid path ending before a separator is itself valid.
        self.0
            .rfind('/')
            .map(|idx| RelPath(self.0[..idx].to_owned()))
    }

    /// The last segment.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Appends `segment` (which may itself hold several '/'-separated segments); the result
    /// is validated as a whole, so nothing can escape through the suffix.
    pub fn join(&self, segment: &str) -> Result<RelPath, RelPathError> {
        RelPath::parse(&format!("{}/{}", self.0, segment))
    }
}

fn validate(s: &str) -> Result<(), RelPathError> {
    if s.is_empty() {
        return Err(RelPathError::Empty);
    }
    // Checked before anything that echoes `s` back, so errors stay small.
    if s.len() > MAX_PATH_LEN {
        return Err(RelPathError::TooLong { len: s.len() });
    }
    if s.contains('\0') {
        return Err(RelPathError::Nul(s.to_owned()));
    }
    if s.starts_with('/') {
        return Err(RelPathError::Absolute(s.to_owned()));
    }
    for segment in s.split('/') {
        match segment {
            "" => return Err(RelPathError::EmptySegment(s.to_owned())),
            "." | ".." => return Err(RelPathError::DotSegment(s.to_owned())),
            _ if segment.len() > MAX_SEGMENT_LEN => {
                return Err(RelPathError::SegmentTooLong {
                    path: s.to_owned(),
                    len: segment.len(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<Path> for RelPath {
    fn as_ref(&self) -> &Path {
        Path::new(&self.0)
    }
}

impl AsRef<str> for RelPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for RelPath {
    type Err = RelPathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RelPath::parse(s)
    }
}

impl TryFrom<String> for RelPath {
    type Error = RelPathError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate(&s)?;
        Ok(RelPath(s))
    }
}

impl TryFrom<&str> for RelPath {
    type Error = RelPathError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        RelPath::parse(s)
    }
}

impl From<RelPath> for String {
    fn from(p: RelPath) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).expect("valid test path")
    }

    #[test]
    fn accepts_plain_paths() {
        for s in [
            "a",
            "a/b",
            "pvc-1234",
            "ns/pvc/with.dots",
            "...",
            "a/.b/c..",
            "ü/日本",
        ] {
            assert_eq!(rel(s).as_str(), s);
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(RelPath::parse(""), Err(RelPathError::Empty));
    }

    #[test]
    fn rejects_absolute() {
        assert_eq!(
            RelPath::parse("/a"),
            Err(RelPathError::Absolute("/a".into()))
        );
        assert_eq!(RelPath::parse("/"), Err(RelPathError::Absolute("/".into())));
    }

    #[test]
    fn rejects_empty_segments() {
        for s in ["a//b", "a/", "a/b/"] {
            assert_eq!(
                RelPath::parse(s),
                Err(RelPathError::EmptySegment(s.into())),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_dot_segments() {
        for s in [".", "..", "a/..", "../a", "a/./b", "a/../../etc"] {
            assert_eq!(
                RelPath::parse(s),
                Err(RelPathError::DotSegment(s.into())),
                "{s}"
            );
        }
    }

    #[test]
    fn rejects_nul() {
        assert_eq!(
            RelPath::parse("a\0b"),
            Err(RelPathError::Nul("a\0b".into()))
        );
    }

    #[test]
    fn rejects_long_segment() {
        let ok = "x".repeat(MAX_SEGMENT_LEN);
        assert!(RelPath::parse(&format!("a/{ok}")).is_ok());
        let long = format!("a/{}", "x".repeat(MAX_SEGMENT_LEN + 1));
        assert_eq!(
            RelPath::parse(&long),
            Err(RelPathError::SegmentTooLong {
                path: long.clone(),
                len: MAX_SEGMENT_LEN + 1
            })
        );
    }

    #[test]
    fn rejects_long_path() {
        let seg = "x".repeat(100);
        let mut s = seg.clone();
        while s.len() + 101 <= MAX_PATH_LEN {
            s = format!("{s}/{seg}");
        }
        assert!(RelPath::parse(&s).is_ok());
        let too_long = format!("{s}/{seg}");
        assert_eq!(
            RelPath::parse(&too_long),
            Err(RelPathError::TooLong {
                len: too_long.len()
            })
        );
    }

    #[test]
    fn accessors() {
        let p = rel("a/b/c");
        assert_eq!(p.segments().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(p.file_name(), "c");
        assert_eq!(p.parent(), Some(rel("a/b")));
        assert_eq!(rel("a/b").parent(), Some(rel("a")));
        assert_eq!(rel("a").parent(), None);
        assert_eq!(rel("a").file_name(), "a");
        assert_eq!(p.to_string(), "a/b/c");
        assert_eq!(AsRef::<Path>::as_ref(&p), Path::new("a/b/c"));
    }

    #[test]
    fn join_validates() {
        assert_eq!(rel("a").join("b"), Ok(rel("a/b")));
        assert_eq!(rel("a").join("b/c"), Ok(rel("a/b/c")));
        assert!(matches!(
            rel("a").join(".."),
            Err(RelPathError::DotSegment(_))
        ));
        assert!(matches!(
            rel("a").join(""),
            Err(RelPathError::EmptySegment(_))
        ));
        assert!(matches!(
            rel("a").join("/b"),
            Err(RelPathError::EmptySegment(_))
        ));
        assert!(matches!(rel("a").join("b\0"), Err(RelPathError::Nul(_))));
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let p = rel("ns/pvc-1");
        let json = serde_json::to_string(&p).expect("serialize");
        assert_eq!(json, "\"ns/pvc-1\"");
        assert_eq!(
            serde_json::from_str::<RelPath>(&json).expect("deserialize"),
            p
        );
        for bad in ["\"\"", "\"/etc\"", "\"a/../b\"", "\"a//b\""] {
            assert!(serde_json::from_str::<RelPath>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn string_conversions_round_trip() {
        let p: RelPath = "x/y".parse().expect("parse");
        let s: String = p.clone().into();
        assert_eq!(RelPath::try_from(s), Ok(p.clone()));
        assert_eq!(RelPath::try_from("x/y"), Ok(p));
        assert!(RelPath::try_from(String::from("x/")).is_err());
    }

    #[test]
    fn error_display_escapes_control_characters() {
        let err = RelPath::parse("/a\nb").expect_err("absolute");
        assert!(!err.to_string().contains('\n'));
    }
}
