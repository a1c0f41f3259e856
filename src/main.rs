//! `hatune`: parse the command line and the config, run, map the outcome to an exit code.
//! Exit codes: 0 done (for `run`: stopped by SIGTERM/SIGINT); 1 HAProxy unreachable, not
//! admin, or refused a weight (for `run`: could not start); 2 bad config or usage.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};
use hatune::check::{self, CheckReport};
use hatune::report::printable;
use hatune::{config::Config, daemon, tick};
use tracing::field::Field;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::{format, FormatFields};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(version, about = "Keeps the servers of HAProxy backends equally busy")]
struct Cli {
    /// More logs (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format: plain text, or JSON lines for journald and log shippers.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One tick: poll cAdvisor, decide, apply, exit. For cron or a systemd timer.
    Once {
        #[command(flatten)]
        config: ConfigArg,
        /// Decide and print, write nothing to HAProxy.
        #[arg(long)]
        dry_run: bool,
        /// How to print the tick's report (always printed in dry-run).
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Keep what a daemon keeps between ticks in FILE between runs: each run then asks
        /// cAdvisor only for the newest samples, notices HAProxy reloads since the last run,
        /// leaves operators' weights alone and has capacity mode's request counts. Created
        /// when missing; one that cannot be read is moved to FILE.bad.
        #[arg(long, value_name = "FILE", env = "HATUNE_STATE")]
        state: Option<PathBuf>,
    },
    /// Tick forever on the config's `interval` or `schedule` (the systemd service).
    /// SIGHUP re-reads the config and hands operators' servers back; SIGTERM/SIGINT stop.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Decide and log what each tick would set, write nothing to HAProxy.
        #[arg(long)]
        dry_run: bool,
    },
    /// The peer group (`peers`): who leads, the published weights, what each instance applied.
    Status {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate the config, probe every HAProxy socket (admin level) and every cAdvisor host.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Only validate the config; probe nothing (systemd's ExecStartPre and ExecReload).
        #[arg(long)]
        config_only: bool,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// The config file.
    #[arg(short, long, value_name = "FILE", env = "HATUNE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

const DEFAULT_CONFIG: &str = "/etc/hatune/config.json";
const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    use Command::{Check, Once, Run, Status};
    let cli = Cli::parse();
    init_logs(cli.verbose, cli.log_format);
    raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(EXIT_FAILED, format_args!("cannot start the runtime: {e}")),
    };
    let (Once { config, .. } | Run { config, .. } | Check { config, .. } | Status { config }) =
        &cli.command;
    let path = config.config.clone();
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, e),
    };
    runtime.block_on(async {
        match cli.command {
            Once {
                dry_run,
                output,
                state,
                ..
            } => {
                if config.peers.is_some() && !dry_run {
                    return fail(
                        EXIT_CONFIG,
                        "config key `peers`: `hatune once` cannot take part in a peer group \
                         (no lease outlives one run): run `hatune run` on each balancer, or \
                         add --dry-run to see what this instance would decide alone",
                    );
                }
                let Some(report) = tick::once(&config, dry_run, state.as_deref()).await else {
                    return ExitCode::SUCCESS;
                };
                report.print(output == Output::Json);
                ExitCode::from(report.exit_code() as u8)
            }
            Run { dry_run, .. } => match daemon::forward_signals() {
                Err(e) => fail(EXIT_FAILED, format_args!("cannot handle signals: {e}")),
                Ok(rx) => match daemon::run(path, config, dry_run, rx).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(EXIT_FAILED, e),
                },
            },
            Status { .. } => {
                let Some(peers) = &config.peers else {
                    return fail(
                        EXIT_CONFIG,
                        "config key `peers`: missing: `hatune status` shows a peer group",
                    );
                };
                match hatune::peers::snapshot(peers).await {
                    Ok(s) => {
                        print!("{}", hatune::peers::status::render(peers, &s));
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(EXIT_FAILED, format_args!("etcd: {e}")),
                }
            }
            Check { config_only, .. } => {
                let report = match config_only {
                    true => CheckReport::config_only(&path, &config),
                    false => check::check(&path, &config).await,
                };
                print!("{report}");
                ExitCode::from(report.exit_code() as u8)
            }
        }
    })
}

fn fail(code: u8, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {}", printable(&e.to_string()));
    ExitCode::from(code)
}

/// Raises the soft `RLIMIT_NOFILE` (often 1,024) to the hard limit: 1,000 cAdvisor hosts polled
/// at once need 2,000 sockets. Else the client polls fewer at a time (`max_hosts_in_flight`).
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "file descriptor soft limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}

fn init_logs(verbose: u8, format: LogFormat) {
    let default = ["hatune=info", "hatune=debug", "hatune=trace"][verbose.min(2) as usize];
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.fmt_fields(printable_fields()).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// Text logs' fields as `name=value` (the message bare), every value [`printable`]: fields
/// carry what peers sent (HAProxy's replies, server names, cAdvisor errors), and the default
/// formatter passes newlines and some escape sequences through to the terminal. JSON logs
/// escape control characters already.
fn printable_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    format::debug_fn(
        |w: &mut format::Writer<'_>, field: &Field, value: &dyn std::fmt::Debug| {
            let text = format!("{value:?}");
            match field.name() {
                "message" => write!(w, "{}", printable(&text)),
                name => write!(w, "{name}={}", printable(&text)),
            }
        },
    )
    .delimited(" ")
}
