//! A CSI endpoint as the flags and the CLI spell it: `unix:///absolute/path` or
//! `tcp://host:port`.

use std::path::PathBuf;

use super::ServerError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`; the host may be a name, resolved when binding.
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = ServerError;
    fn from_str(s: &str) -> Result<Self, ServerError> {
        if let Some(path) = s.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            if path.is_absolute() {
                return Ok(Endpoint::Unix(path));
            }
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if port_ok {
                return Ok(Endpoint::Tcp(addr.to_string()));
            }
        }
        Err(ServerError::BadEndpoint(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:///run/x.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:10000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("127.0.0.1:10000".into())
        );
        assert_eq!(
            "tcp://localhost:10000".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("localhost:10000".into())
        );
        for bad in [
            "unix://rel.sock",
            "/abs",
            "tcp://nohost",
            "tcp://:1",
            "tcp://h:99999",
            "http://x:1",
            "",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }
}
