//! The `dicom-gw` command line: a thin shell over the library.
//!
//! Exit codes: 0 success (including a clean stop on SIGTERM), 1 runtime failure, 2 bad usage or
//! configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dicom_gw::config::{self, Durability, Overrides, RawConfig};
use dicom_gw::rt::IoMode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// dicom-gw: a DICOM gateway that stores every object byte for byte, indexes it and forwards it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (store service; defaults need no config file).
    Serve {
        /// TOML config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory (default: $DICOM_GW_DATA or ./dicom-gw-data).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Store service address (default 0.0.0.0:4244).
        #[arg(long, value_name = "ADDR:PORT")]
        store_listen: Option<String>,
        /// I/O backend.
        #[arg(long, value_name = "MODE")]
        io: Option<IoMode>,
        /// Core threads (0 = one per CPU).
        #[arg(long, value_name = "N")]
        threads: Option<usize>,
        /// full (sync before acknowledging) or relaxed.
        #[arg(long, value_name = "MODE", value_parser = parse_durability)]
        durability: Option<Durability>,
        /// Admin API / metrics address (default 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR:PORT")]
        http_listen: Option<String>,
    },
    /// Validate a config file and print the resolved settings.
    CheckConfig {
        /// TOML config file.
        file: PathBuf,
    },
    /// Forwarding queue: counts, jobs, dead-letter retry, study replay, pause/resume. Goes
    /// through the running daemon (DATA_DIR/control.sock), or opens the database when none runs.
    Queue {
        #[command(subcommand)]
        op: QueueOp,
    },
    /// Admin API tokens.
    Token {
        #[command(subcommand)]
        op: TokenOp,
    },
    /// Print the index of a data directory as JSON lines (the daemon must not be running).
    Index {
        /// Data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
}

/// Where the queue commands find the data.
#[derive(Debug, clap::Args)]
struct Target {
    /// Data directory (default: the config's data_dir, $DICOM_GW_DATA or ./dicom-gw-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Config file (for the data directory and the destination names).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum TokenOp {
    /// Create a token; it is printed once, as the last word of the output (only its hash is
    /// kept).
    Create {
        #[command(flatten)]
        target: Target,
        /// Role: viewer, operator or admin.
        #[arg(long, value_name = "ROLE")]
        role: dicom_gw::http::auth::Role,
        /// Who the token is for (shown in the audit log).
        #[arg(long, value_name = "LABEL", default_value = "cli")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum QueueOp {
    /// Job counts per destination, one JSON object per line.
    Stats {
        #[command(flatten)]
        target: Target,
    },
    /// Jobs as JSON lines (waiting ones in due order).
    List {
        #[command(flatten)]
        target: Target,
        /// Only this destination.
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
        /// Only this state: pending, retry, in-flight or dead.
        #[arg(long, value_name = "STATE")]
        state: Option<dicom_gw::queue::JobState>,
        /// At most this many jobs.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: usize,
    },
    /// Move dead jobs of a destination (all, or one) back to pending.
    Retry {
        #[command(flatten)]
        target: Target,
        /// Destination.
        #[arg(long, value_name = "NAME")]
        destination: String,
        /// Only this job id.
        #[arg(long, value_name = "ID")]
        job: Option<u64>,
    },
    /// Queue every stored instance of a study for a destination again.
    Replay {
        #[command(flatten)]
        target: Target,
        /// Destination.
        #[arg(long, value_name = "NAME")]
        destination: String,
        /// Study Instance UID.
        #[arg(long, value_name = "UID")]
        study: String,
    },
    /// Stop sending to a destination (jobs keep waiting; survives restarts).
    Pause {
        #[command(flatten)]
        target: Target,
        /// Destination.
        #[arg(long, value_name = "NAME")]
        destination: String,
    },
    /// Resume sending to a paused destination.
    Resume {
        #[command(flatten)]
        target: Target,
        /// Destination.
        #[arg(long, value_name = "NAME")]
        destination: String,
    },
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "full" => Ok(Durability::Full),
        "relaxed" => Ok(Durability::Relaxed),
        _ => Err(format!("{s:?} is not full or relaxed")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dicom-gw: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(
    path: Option<&PathBuf>,
) -> Result<(RawConfig, Option<(PathBuf, String)>), config::ConfigError> {
    match path {
        Some(p) => {
            let (raw, text) = config::load(p)?;
            Ok((raw, Some((p.clone(), text))))
        }
        None => Ok((RawConfig::default(), None)),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            store_listen,
            io,
            threads,
            durability,
            http_listen,
        } => {
            let ov = Overrides {
                data_dir,
                store_listen,
                io,
                threads,
                durability,
                http_listen,
            };
            let settings = match load(config.as_ref()).and_then(|(raw, src)| {
                raw.resolve(&ov, src.as_ref().map(|(p, t)| (p.as_path(), t.as_str())))
            }) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("dicom-gw: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            dicom_gw::server::serve(
                settings,
                |started| {
                    // Lines on stdout for scripts and tests (the store line last: it means
                    // ready); logs go to stderr.
                    println!(
                        "dicom-gw: http listening on {} ({})",
                        started.http_addr,
                        if started.https { "https" } else { "http" }
                    );
                    println!(
                        "dicom-gw: store listening on {} (io={})",
                        started.store_addr,
                        started.backend.name()
                    );
                },
                stop_signal(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file } => {
            match load(Some(&file)).and_then(|(raw, src)| {
                raw.resolve(
                    &Overrides::default(),
                    src.as_ref().map(|(p, t)| (p.as_path(), t.as_str())),
                )
            }) {
                Ok(s) => {
                    println!("{}: OK\n{s:#?}", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("dicom-gw: {e}");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Queue { op } => queue_command(op),
        Command::Token {
            op: TokenOp::Create { target, role, name },
        } => {
            let req = dicom_gw::queue::control::Request::TokenCreate { role, name };
            control_command(target, req, |v| {
                format!(
                    "API token {} for {} (role {}), shown only now: {}",
                    v["id"].as_str().unwrap_or(""),
                    v["name"].as_str().unwrap_or(""),
                    v["role"].as_str().unwrap_or(""),
                    v["token"].as_str().unwrap_or("")
                )
            })
        }
        Command::Index { data_dir } => {
            let index = dicom_gw::store::index::Index::open(&data_dir.join("gateway.redb"))?;
            for rec in index.instances()? {
                println!("{}", serde_json::to_string(&rec)?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn queue_command(op: QueueOp) -> anyhow::Result<ExitCode> {
    use dicom_gw::queue::control::Request;
    let (target, req) = match op {
        QueueOp::Stats { target } => (target, Request::Stats),
        QueueOp::List {
            target,
            destination,
            state,
            limit,
        } => (
            target,
            Request::List {
                destination,
                state,
                limit,
            },
        ),
        QueueOp::Retry {
            target,
            destination,
            job,
        } => (target, Request::Retry { destination, job }),
        QueueOp::Replay {
            target,
            destination,
            study,
        } => (target, Request::Replay { destination, study }),
        QueueOp::Pause {
            target,
            destination,
        } => (target, Request::Pause { destination }),
        QueueOp::Resume {
            target,
            destination,
        } => (target, Request::Resume { destination }),
    };
    control_command(target, req, |v| v.to_string())
}

/// Runs a control request through the running daemon, or on the database when none runs, and
/// prints each result line with `show`.
fn control_command(
    target: Target,
    req: dicom_gw::queue::control::Request,
    show: impl Fn(&serde_json::Value) -> String,
) -> anyhow::Result<ExitCode> {
    use dicom_gw::queue::control::{self, Ops, Reply};
    let ov = Overrides {
        data_dir: target.data_dir,
        ..Overrides::default()
    };
    let settings = match load(target.config.as_ref()).and_then(|(raw, src)| {
        raw.resolve(&ov, src.as_ref().map(|(p, t)| (p.as_path(), t.as_str())))
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dicom-gw: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let reply = match control::request(&settings.data_dir, &req)? {
        Some(r) => r,
        None => {
            let path = settings.data_dir.join("gateway.redb");
            if !path.exists() && !matches!(req, control::Request::TokenCreate { .. }) {
                eprintln!("dicom-gw: no database at {}", path.display());
                return Ok(ExitCode::from(2));
            }
            std::fs::create_dir_all(&settings.data_dir)?;
            let index = dicom_gw::store::index::Index::open(&path).map_err(|e| {
                anyhow::anyhow!(
                    "{e} (a daemon holds the database but its control socket does not answer?)"
                )
            })?;
            let queue = dicom_gw::queue::Queue::new(std::sync::Arc::new(index), false);
            let names = settings
                .destinations
                .iter()
                .map(|d| d.name.clone())
                .collect();
            match Ops::offline(queue, names) {
                Ok(ops) => ops.reply(&req),
                Err(e) => Reply::Failed(e.to_string()),
            }
        }
    };
    match reply {
        Reply::Ok(lines) => {
            for l in lines {
                println!("{}", show(&l));
            }
            Ok(ExitCode::SUCCESS)
        }
        Reply::Usage(m) => {
            eprintln!("dicom-gw: {m}");
            Ok(ExitCode::from(2))
        }
        Reply::Failed(m) => {
            eprintln!("dicom-gw: {m}");
            Ok(ExitCode::from(1))
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
