//! Where a HAProxy stats socket lives: a unix path or a TCP address.

use std::fmt;
use std::path::PathBuf;

/// The address of one HAProxy runtime API (stats socket).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// `stats socket /run/haproxy/admin.sock level admin`
    Unix(PathBuf),
    /// `stats socket ipv4@127.0.0.1:9999 level admin`, written `tcp://127.0.0.1:9999`.
    Tcp(String),
}

impl Address {
    /// Parses `/path`, `unix:///path`, `unix:/path` or `tcp://host:port`.
    pub fn parse(text: &str) -> Result<Address, String> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("tcp://") {
            let rest = rest.trim_end_matches('/');
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("`{text}` has no port: write tcp://HOST:PORT"))?;
            if host.is_empty() {
                return Err(format!("`{text}` has no host: write tcp://HOST:PORT"));
            }
            match port.parse::<u16>() {
                Ok(p) if p > 0 => Ok(Address::Tcp(rest.to_string())),
                _ => Err(format!("`{text}` has no valid port (1-65535)")),
            }
        } else if let Some(path) = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
        {
            Self::unix(path, text)
        } else if text.contains("://") {
            Err(format!(
                "`{text}`: only unix socket paths and tcp://HOST:PORT are supported"
            ))
        } else {
            Self::unix(text, text)
        }
    }

    fn unix(path: &str, text: &str) -> Result<Address, String> {
        if path.is_empty() {
            return Err("an empty socket path".to_string());
        }
        if !path.starts_with('/') {
            return Err(format!("`{text}`: a unix socket path must be absolute"));
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if path.len() > 107 {
            return Err(format!(
                "`{text}`: a unix socket path is limited to 107 bytes"
            ));
        }
        Ok(Address::Unix(PathBuf::from(path)))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_operators_write() {
        let cases: &[(&str, Result<Address, ()>)] = &[
            (
                "/run/haproxy/admin.sock",
                Ok(Address::Unix("/run/haproxy/admin.sock".into())),
            ),
            (
                "unix:///run/h.sock",
                Ok(Address::Unix("/run/h.sock".into())),
            ),
            ("unix:/run/h.sock", Ok(Address::Unix("/run/h.sock".into()))),
            (
                "tcp://10.0.0.5:9999",
                Ok(Address::Tcp("10.0.0.5:9999".into())),
            ),
            ("tcp://[::1]:9999", Ok(Address::Tcp("[::1]:9999".into()))),
            (
                "tcp://lb.example:9999/",
                Ok(Address::Tcp("lb.example:9999".into())),
            ),
            ("tcp://10.0.0.5", Err(())),
            ("tcp://10.0.0.5:0", Err(())),
            ("tcp://:9999", Err(())),
            ("http://10.0.0.5:9999", Err(())),
            ("run/admin.sock", Err(())),
            ("", Err(())),
        ];
        for (text, want) in cases {
            let got = Address::parse(text).map_err(|_| ());
            assert_eq!(&got, want, "{text}");
        }
        let long = format!("/{}", "x".repeat(107));
        assert!(Address::parse(&long).is_err());
    }

    #[test]
    fn displays_as_written() {
        assert_eq!(
            Address::parse("tcp://h:1").unwrap().to_string(),
            "tcp://h:1"
        );
        assert_eq!(Address::parse("/a.sock").unwrap().to_string(), "/a.sock");
    }
}
