//! dicom-loadgen: the load generator of dicom-gw (skeleton; built out in its own issue).

use clap::Parser;

/// DICOM load generator (C-STORE / C-ECHO / C-FIND). Not implemented yet.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _ = Cli::parse();
    anyhow::bail!("dicom-loadgen is a skeleton; see the load generator issue")
}
