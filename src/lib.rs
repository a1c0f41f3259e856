//! hatune keeps the servers of HAProxy backends equally busy.
//!
//! One tick flows left to right, with I/O only at the two ends:
//!
//! ```text
//! cadvisor (source) ──► mapping ──► controller (pure) ──► haproxy (sink) / report (dry-run)
//!        ▲                                                        ▲
//!        └────────────────────────── tick ────────────────────────┘
//! ```
//!
//! - [`config`]: the JSON config, legacy and full, parsed once into validated types.
//! - [`cadvisor`]: polls every cAdvisor host at once and turns cumulative CPU counters into
//!   utilisation over a window taken from sample timestamps.
//! - [`haproxy`]: the runtime API client: `show stat` by column name, batched `set weight`
//!   with every reply checked.
//! - [`mapping`]: which container belongs to which server (pure).
//! - [`controller`]: the damped controller, one backend at a time (pure, table-tested).
//! - [`tick`]: one poll–decide–apply round, shared by every mode.
//! - [`report`]: the dry-run table and JSON.
//! - [`daemon`]: `hatune run`: the tick on a schedule, signals, systemd notifications.
//! - [`metrics`]: the daemon's Prometheus metrics.
//! - `testkit`: a real HAProxy in a temp dir and a fake cAdvisor, for tests, demo and benches;
//!   behind the `testkit` feature, which only tests, examples and benches turn on.
#![forbid(unsafe_code)]

pub mod config;
pub mod controller;
pub mod daemon;
pub mod mapping;
pub mod metrics;
pub mod report;
pub mod sink;
pub mod source;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit;
pub mod tick;
