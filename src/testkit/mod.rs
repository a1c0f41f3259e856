//! Test helpers shared by the integration tests, the examples and the benchmarks: a real HAProxy
//! started in a temp dir, a fake cAdvisor whose replies have the shapes of real ones, and the
//! closed-loop plant of the fleet and the soak. Not part of hatune's interface.

pub mod cadvisor;
pub mod etcd;
pub mod fleet;
pub mod haproxy;
pub mod plant;
pub mod prometheus;
