//! hatune keeps the servers of HAProxy backends equally busy.
//!
//! One tick flows left to right, with I/O only at the two ends:
//!
//! ```text
//! source/ (cAdvisor) ─► mapping ─► controller (pure) ─► sink/ (HAProxy, dry-run)
//!      ▲                                                      ▲
//!      └──────────────── tick: poll, read, decide, plan, apply ┘
//! ```
//!
//! - [`source`]: the [`Source`](source::Source) seam and its neutral readings; [`source::cadvisor`]
//!   polls every cAdvisor host at once and turns cumulative CPU counters into utilisation over
//!   a window taken from sample timestamps.
//! - [`mapping`]: which container belongs to which server (pure), as each backend's
//!   [`naming`] says: by alias, by a name template, or by address.
//! - [`controller`]: the damped controller, one backend at a time (pure, table-tested), and the
//!   per-server [`History`](controller::History) its guards need across ticks.
//! - [`sink`]: the [`Sink`](sink::Sink) seam (one balancer: read what it holds, apply planned
//!   writes), merging several balancers and planning their writes (pure), the dry-run wrapper;
//!   [`sink::haproxy`] is the runtime API client and its reconciler memory.
//! - [`tick`]: one poll–decide–apply round over a [`Tuner`](tick::Tuner), shared by every mode.
//! - [`state`]: the state file of `hatune once --state`, what a daemon keeps between ticks
//!   kept between runs.
//! - [`config`]: the JSON config, legacy and full, parsed once into validated types.
//! - [`report`]: what a tick did: the dry-run table, JSON and the exit code.
//! - [`check`]: `hatune check`: probe every source and sink, one `ok`/`FAIL` line each.
//! - [`daemon`]: `hatune run`: the tick on a schedule, signals, systemd notifications, and
//!   [`daemon::metrics`], its Prometheus metrics.
//! - `testkit`: a real HAProxy in a temp dir and fake cAdvisor hosts, for tests, examples and
//!   benches; behind the `testkit` feature, which only tests, examples and benches turn on.
#![forbid(unsafe_code)]

pub mod check;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod mapping;
pub mod naming;
pub mod peers;
pub mod report;
pub mod sink;
pub mod source;
pub mod state;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit;
pub mod tick;
