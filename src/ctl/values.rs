//! Values as an operator types and reads them: sizes (`1Gi`), `key=value` pairs, absolute
//! target paths, topology segments, and gRPC codes by their canonical names.

use std::collections::{BTreeMap, HashMap};

use super::CtlError;
use crate::csi::proto as csi;

const UNITS: [(&str, u32); 4] = [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{0:?} is not a size: give whole bytes or a whole number of Ki, Mi, Gi or Ti")]
    NotANumber(String),
    #[error(
        "{0:?} has an unknown unit: use Ki, Mi, Gi or Ti (powers of 1024) or plain bytes; \
         decimal units such as G or GB are not accepted"
    )]
    UnknownUnit(String),
    #[error("{0:?} is larger than the 8 EiB CSI can express")]
    TooLarge(String),
}

/// Bytes from `1073741824`, `1024Mi`, `1Gi`, …; capacities are `int64` in CSI.
pub fn parse_size(s: &str) -> Result<i64, SizeError> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(SizeError::NotANumber(s.to_string()));
    }
    let shift = match unit {
        "" => 0,
        _ => match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, shift)) => *shift,
            None if unit.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                return Err(SizeError::UnknownUnit(s.to_string()))
            }
            None => return Err(SizeError::NotANumber(s.to_string())),
        },
    };
    let too_large = || SizeError::TooLarge(s.to_string());
    let number: i64 = digits.parse().map_err(|_| too_large())?;
    number.checked_mul(1i64 << shift).ok_or_else(too_large)
}

/// The largest unit that divides `bytes` exactly (`1Gi`, `1536Mi`), else plain bytes.
pub fn format_size(bytes: i64) -> String {
    if bytes > 0 {
        for (name, shift) in UNITS {
            if bytes % (1i64 << shift) == 0 {
                return format!("{}{name}", bytes >> shift);
            }
        }
    }
    bytes.to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not key=value (with a non-empty key)")]
pub struct KeyValueError(String);

/// `key=value`; the value may be empty or contain `=`.
pub fn parse_key_value(s: &str) -> Result<(String, String), KeyValueError> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(KeyValueError(s.to_string())),
    }
}

/// Collect `key=value` flags into a map, refusing a key given twice.
pub fn to_map(
    flag: &'static str,
    pairs: &[(String, String)],
) -> Result<HashMap<String, String>, CtlError> {
    let mut map = HashMap::new();
    for (key, value) in pairs {
        if map.insert(key.clone(), value.clone()).is_some() {
            return Err(CtlError::DuplicateKey {
                flag,
                key: key.clone(),
            });
        }
    }
    Ok(map)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an absolute path (the driver resolves targets on its own node)")]
pub struct NotAbsolute(String);

/// A publish target: absolute, as CSI requires; kept as a string because CSI paths are.
pub fn parse_target(s: &str) -> Result<String, NotAbsolute> {
    if s.starts_with('/') && !s.contains('\0') {
        Ok(s.to_string())
    } else {
        Err(NotAbsolute(s.to_string()))
    }
}

/// `key=value,key=value` of one topology, sorted; `-` for none.
pub fn topology(segments: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = segments.iter().collect();
    let text: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if text.is_empty() {
        "-".into()
    } else {
        text.join(",")
    }
}

/// Several topologies (any of which can reach the volume), `|`-separated; `-` for none.
pub fn topologies(list: &[csi::Topology]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    let text: Vec<String> = list.iter().map(|t| topology(&t.segments)).collect();
    text.join("|")
}

/// The canonical name of a gRPC code, as the CSI spec and the README spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_binary_units_and_bytes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1536"), Ok(1536));
        assert_eq!(parse_size("1Ki"), Ok(1024));
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("1Gi"), Ok(1 << 30));
        assert_eq!(parse_size("2Ti"), Ok(2 << 40));
        assert_eq!(parse_size("9223372036854775807"), Ok(i64::MAX));
    }

    #[test]
    fn other_sizes_are_refused_with_the_reason() {
        for unit in ["1G", "1GB", "1gi", "1KiB", "1k", "1Pi", "1 Gi"] {
            assert!(
                matches!(
                    parse_size(unit),
                    Err(SizeError::UnknownUnit(_) | SizeError::NotANumber(_))
                ),
                "{unit}"
            );
        }
        assert!(matches!(parse_size("1G"), Err(SizeError::UnknownUnit(_))));
        for bad in ["", "Gi", "-1", "1.5Gi", "+1", " 1", "1e9"] {
            assert!(
                matches!(
                    parse_size(bad),
                    Err(SizeError::NotANumber(_) | SizeError::UnknownUnit(_))
                ),
                "{bad}"
            );
        }
        for huge in ["8388608Ti", "9223372036854775808", "99999999999999999999Ki"] {
            assert!(
                matches!(parse_size(huge), Err(SizeError::TooLarge(_))),
                "{huge}"
            );
        }
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(1 << 30), "1Gi");
        assert_eq!(format_size(1536 << 20), "1536Mi");
        assert_eq!(format_size(-5), "-5");
        for s in ["1Ki", "3Mi", "7Gi", "2Ti", "12345"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_string(), "b=c".to_string()))
        );
        assert_eq!(parse_key_value("a="), Ok(("a".into(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
        let pairs = [("a".to_string(), "1".to_string()), ("a".into(), "2".into())];
        assert!(matches!(
            to_map("--param", &pairs),
            Err(CtlError::DuplicateKey { .. })
        ));
    }

    #[test]
    fn targets_must_be_absolute() {
        assert!(parse_target("/var/lib/x").is_ok());
        for bad in ["", "rel", "./x", "/a\0b"] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn topology_is_sorted_and_dash_when_empty() {
        let t = HashMap::from([("b".to_string(), "2".to_string()), ("a".into(), "1".into())]);
        assert_eq!(topology(&t), "a=1,b=2");
        assert_eq!(topologies(&[]), "-");
    }
}
