//! How a backend's servers find their containers, as its config says: by alias, by the name
//! a template builds (`server`), or by address (`"match": "address"`, with a `port`
//! template). The config builds these; [`map_backend`](crate::mapping::map_backend) reads
//! them. Pure.

mod template;

pub use template::{Fields, Template};

/// How a backend's servers find their containers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Matching {
    /// The server named like the alias the pattern matched.
    #[default]
    Alias,
    /// The server named by the template (the config's `server`).
    Name(Template),
    /// The server at the container's host address (`"match": "address"`), and at the port the
    /// template gives when there is one (the config's `port`).
    Address { port: Option<Template> },
}

impl Matching {
    /// The container labels it reads (a source keeps only those).
    pub fn labels(&self) -> Vec<&str> {
        match self {
            Matching::Alias | Matching::Address { port: None } => vec![],
            Matching::Name(t) | Matching::Address { port: Some(t) } => t.labels().collect(),
        }
    }

    /// True when it needs each host's addresses.
    pub fn by_address(&self) -> bool {
        matches!(self, Matching::Address { .. })
    }
}
