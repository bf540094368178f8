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
    },
    /// Validate a config file and print the resolved settings.
    CheckConfig {
        /// TOML config file.
        file: PathBuf,
    },
    /// Print the index of a data directory as JSON lines (the daemon must not be running).
    Index {
        /// Data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
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
        } => {
            let ov = Overrides {
                data_dir,
                store_listen,
                io,
                threads,
                durability,
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
                    // One line on stdout for scripts and tests; logs go to stderr.
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
        Command::Index { data_dir } => {
            let index = dicom_gw::store::index::Index::open(&data_dir.join("gateway.redb"))?;
            for rec in index.instances()? {
                println!("{}", serde_json::to_string(&rec)?);
            }
            Ok(ExitCode::SUCCESS)
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
