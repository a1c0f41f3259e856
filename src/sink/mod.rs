//! Sinks: where weights go.

pub mod haproxy;
