//! The NFS `server` field: an address or a host name that can name a server at all. A value
//! that never can (`256.1.1.1`, `1.2.3`, `-oexec`) is refused at once as a bad argument,
//! instead of being handed to mount.nfs, which would spend the whole time bound on it and
//! answer a retried code.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a `server` value is not a host name or address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 253 characters")]
    TooLong,
    #[error("looks like an IPv4 address but is not one")]
    BadIpv4,
    #[error("looks like an IPv6 address but is not one")]
    BadIpv6,
    #[error("has an empty label (a leading, trailing or doubled dot)")]
    EmptyLabel,
    #[error("has a label longer than 63 characters")]
    LongLabel,
    #[error("has a character other than letters, digits, '-' and '.'")]
    BadCharacter,
    #[error("has a label that starts or ends with '-'")]
    HyphenAtEdge,
    #[error("ends in an all-numeric label, which no host name does")]
    NumericTopLabel,
}

/// Accept an IPv4 literal, an IPv6 literal (bare or in brackets, as mount.nfs takes it), or a
/// DNS host name per RFC 1123, optionally fully qualified with a final dot.
pub fn check_host(server: &str) -> Result<(), HostError> {
    if server.is_empty() {
        return Err(HostError::Empty);
    }
    if server.len() > 253 {
        return Err(HostError::TooLong);
    }
    if let Some(inner) = server.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(HostError::BadIpv6)?;
        return inner
            .parse::<Ipv6Addr>()
            .map(drop)
            .map_err(|_| HostError::BadIpv6);
    }
    if server.contains(':') || server.contains(']') {
        return server
            .parse::<Ipv6Addr>()
            .map(drop)
            .map_err(|_| HostError::BadIpv6);
    }
    // Digits and dots only: an address or nothing (no host name is all-numeric at its end).
    if server.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return server
            .parse::<Ipv4Addr>()
            .map(drop)
            .map_err(|_| HostError::BadIpv4);
    }
    // A fully qualified name may end in the root's dot (`nfs.example.com.`), as DNS allows.
    let name = server.strip_suffix('.').unwrap_or(server);
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(HostError::LongLabel);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(HostError::BadCharacter);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::HyphenAtEdge);
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostError::NumericTopLabel);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_host_names_are_accepted() {
        for ok in [
            "10.0.0.1",
            "127.0.0.1",
            "255.255.255.255",
            "s",
            "nfs",
            "nfs-1.example.internal",
            "a1.b2",
            "1nfs.example.com",
            "x.123abc",
            "nfs.example.com.",
            &format!("{}.com", "a".repeat(63)),
            "::1",
            "fd00::10",
            "[::1]",
            "[fd00::10]",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(check_host(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn what_can_never_name_a_server_is_refused() {
        use HostError::*;
        let long_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        for (bad, why) in [
            ("", Empty),
            (long_name.as_str(), TooLong),
            ("256.1.1.1", BadIpv4),
            ("1.2.3", BadIpv4),
            ("1.2.3.4.5", BadIpv4),
            ("01.2.3.4", BadIpv4),
            ("1..2.3", BadIpv4),
            ("123", BadIpv4),
            ("10.0.0.1.", BadIpv4),
            (":::1", BadIpv6),
            ("fd00::g", BadIpv6),
            ("[::1", BadIpv6),
            ("[10.0.0.1]", BadIpv6),
            ("[]", BadIpv6),
            ("::1]", BadIpv6),
            ("host..", EmptyLabel),
            (".", BadIpv4),
            (".host", EmptyLabel),
            ("a..b", EmptyLabel),
            (&format!("{}.com", "a".repeat(64)), LongLabel),
            ("under_score", BadCharacter),
            ("sp ace", BadCharacter),
            ("a/b", BadCharacter),
            ("ünï", BadCharacter),
            ("-oexec", HyphenAtEdge),
            ("host-", HyphenAtEdge),
            ("a.-b.c", HyphenAtEdge),
            ("host.1", NumericTopLabel),
            ("a.b.300", NumericTopLabel),
        ] {
            assert_eq!(check_host(bad), Err(why), "{bad:?}");
        }
    }
}
