//! `hatune`: parse the command line and the config, run, map the outcome to an exit code.
//! Exit codes: 0 done (for `run`: stopped by SIGTERM/SIGINT); 1 HAProxy unreachable, not
//! admin, or refused a weight (for `run`: could not start); 2 bad config or usage.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use hatune::check::{self, CheckReport};
use hatune::config::Config;
use hatune::daemon::{self, Control};
use hatune::source::cadvisor;
use hatune::tick;

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
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Decide and print, write nothing to HAProxy.
        #[arg(long)]
        dry_run: bool,
        /// How to print the tick's report (always printed in dry-run).
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Tick forever on the config's `interval` or `schedule` (the systemd service).
    /// SIGHUP re-reads the config and hands operators' servers back; SIGTERM/SIGINT stop.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Decide and log what each tick would set, write nothing to HAProxy.
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate the config, probe every HAProxy socket (admin level) and every cAdvisor host.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Only validate the config; probe nothing (systemd's ExecStartPre and ExecReload).
        #[arg(long)]
        config_only: bool,
    },
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

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.verbose, cli.log_format);
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Once {
                config,
                dry_run,
                output,
            } => once(&config, dry_run, output).await,
            Command::Check {
                config,
                config_only,
            } => check(&config, config_only).await,
            Command::Run { config, dry_run } => run(config, dry_run).await,
        }
    })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: polling 1,000 cAdvisor hosts at once needs
/// up to 2,000 sockets, and the usual soft limit is 1,024 (the hard one 4,096 to 1,048,576). If
/// it cannot be raised, the cAdvisor client polls fewer hosts at a time instead
/// (`cadvisor::max_hosts_in_flight`).
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "file descriptor soft limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}

fn init_logs(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "hatune=info",
        1 => "hatune=debug",
        _ => "hatune=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

async fn run(path: PathBuf, dry_run: bool) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    if let Err(e) = forward_signals(tx) {
        eprintln!("error: cannot handle signals: {e}");
        return ExitCode::from(EXIT_FAILED);
    }
    match daemon::run(path, config, dry_run, rx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// SIGHUP becomes a reload, SIGTERM and SIGINT a shutdown.
fn forward_signals(tx: tokio::sync::mpsc::Sender<Control>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = hup.recv() => Control::Reload,
                _ = term.recv() => Control::Shutdown,
                _ = int.recv() => Control::Shutdown,
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn once(path: &Path, dry_run: bool, output: Output) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let sources = cadvisor::Client::new(config.timeout);
    let mut memory = tick::Memory::one_shot(config.window);
    let report = tick::run(&config, &sources, &mut memory, dry_run).await;
    match output {
        Output::Json => match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: cannot print the report: {e}"),
        },
        Output::Table if dry_run => print!("{}", report.render_table()),
        Output::Table => {}
    }
    for s in report.sockets.iter().filter(|s| s.error.is_some()) {
        eprintln!("error: {}", s.error.as_deref().unwrap_or_default());
    }
    for b in report.backends.iter().filter(|b| b.error.is_some()) {
        eprintln!(
            "error: backend {}: {}",
            b.name,
            b.error.as_deref().unwrap_or_default()
        );
    }
    ExitCode::from(report.exit_code() as u8)
}

async fn check(path: &Path, config_only: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let report = if config_only {
        CheckReport::config_only(path, &config)
    } else {
        check::check(path, &config).await
    };
    print!("{report}");
    ExitCode::from(report.exit_code() as u8)
}
