//! How a backend's servers find their containers, as its config says: by alias, by the name
//! a template builds (`server`), or by address (`"match": "address"`, with a `port`
//! template). The config builds these; [`map_backend`](crate::mapping::map_backend) reads
//! them. Pure.

use regex::Regex;

mod template;

pub use template::{Fields, Template};

/// How a backend's servers find their containers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Matching {
    /// The server named like the alias the pattern matched; servers whose names the pattern
    /// does not match are not tuned.
    #[default]
    Alias,
    /// The server named by the template (the config's `server`).
    Name {
        server: Template,
        servers: Option<ServerFilter>,
    },
    /// The server at the container's host address (`"match": "address"`), and at the port the
    /// template gives when there is one (the config's `port`).
    Address {
        port: Option<Template>,
        servers: Option<ServerFilter>,
    },
}

/// The config's `servers`: the names of the servers that take part (anchored at the start,
/// like `pattern`); without it, every server of the backend does.
#[derive(Debug, Clone)]
pub struct ServerFilter(pub Regex);

impl PartialEq for ServerFilter {
    fn eq(&self, other: &ServerFilter) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for ServerFilter {}

impl Matching {
    /// The container labels it reads (a source keeps only those).
    pub fn labels(&self) -> Vec<&str> {
        match self {
            Matching::Alias | Matching::Address { port: None, .. } => vec![],
            Matching::Name { server: t, .. } | Matching::Address { port: Some(t), .. } => {
                t.labels().collect()
            }
        }
    }

    /// True when it needs each host's addresses.
    pub fn by_address(&self) -> bool {
        matches!(self, Matching::Address { .. })
    }

    /// True when the server named `server` takes part in a backend whose (anchored) pattern
    /// is `pattern`: by alias, when the pattern matches its name; otherwise when `servers`
    /// does (every server without it).
    pub fn tunes(&self, pattern: &Regex, server: &str) -> bool {
        match self {
            Matching::Alias => pattern.is_match(server),
            Matching::Name { servers, .. } | Matching::Address { servers, .. } => {
                servers.as_ref().map_or(true, |f| f.0.is_match(server))
            }
        }
    }
}
