//! Test helpers shared by the integration tests, the demo and the benchmarks: a real HAProxy
//! started in a temp dir, and a fake cAdvisor whose replies have the shapes of real ones.
//! Not part of hatune's interface.

pub mod cadvisor;
pub mod fleet;
pub mod haproxy;
