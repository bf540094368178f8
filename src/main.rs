//! The `dicom-gw` command line: a thin shell over the library.
//!
//! Exit codes: 0 success (including a clean stop on SIGTERM), 1 runtime failure, 2 bad usage or
//! configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dicom_gw::config::{self, Durability, LogFormat, Overrides, RawConfig};
use dicom_gw::rt::IoMode;

mod scu_cli;

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
    /// Run the daemon: store service (port 4244) and worklist service (port 4243), or one of
    /// them with --only; defaults need no config file.
    Serve {
        /// TOML config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory (default: $DICOM_GW_DATA or ./dicom-gw-data).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Store service address (default 0.0.0.0:4244; "off": TLS only).
        #[arg(long, value_name = "ADDR:PORT")]
        store_listen: Option<String>,
        /// Store service DICOM TLS address (needs [store] tls_cert_file and tls_key_file).
        #[arg(long, value_name = "ADDR:PORT")]
        store_tls_listen: Option<String>,
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
        /// Worklist service (MWL C-FIND, MPPS) address (default 0.0.0.0:4243; "off": TLS only).
        #[arg(long, value_name = "ADDR:PORT")]
        worklist_listen: Option<String>,
        /// Worklist service DICOM TLS address (certificate and key default to the store's).
        #[arg(long, value_name = "ADDR:PORT")]
        worklist_tls_listen: Option<String>,
        /// Run only this service (two processes then need two data directories).
        #[arg(long, value_name = "SERVICE")]
        only: Option<dicom_gw::config::Services>,
    },
    /// Validate a config file and print the resolved settings.
    CheckConfig {
        /// TOML config file.
        file: PathBuf,
    },
    /// Forwarding queue: counts, jobs, dead-letter retry, study replay, pause/resume. Goes
    /// through the running daemon (DATA_DIR/run/control.sock), or opens the database when none runs.
    Queue {
        #[command(subcommand)]
        op: QueueOp,
    },
    /// Admin API tokens.
    Token {
        #[command(subcommand)]
        op: TokenOp,
    },
    /// Admin API users (who log in with a password for a short-lived token).
    User {
        #[command(subcommand)]
        op: UserOp,
    },
    /// The audit log of changes made through the API and the CLI.
    Audit {
        #[command(subcommand)]
        op: AuditOp,
    },
    /// Worklist items: import a DICOM JSON file (PS3.18 Annex F) or list them. Goes through the
    /// running daemon (DATA_DIR/run/control.sock), or opens DATA_DIR/worklist.redb when none runs.
    Worklist {
        #[command(subcommand)]
        op: WorklistOp,
    },
    /// DICOM client commands (the SCU side of each service), scriptable, with JSON output.
    Scu {
        #[command(subcommand)]
        op: ScuOp,
    },
    /// Print the index of a data directory as JSON lines (the daemon must not be running).
    Index {
        /// Data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Instead of printing: check every Query/Retrieve row against the instance rows and
        /// mend them (after an older version ran on this data directory; start-up only
        /// compares row counts). Prints {"added":N,"removed":M}.
        #[arg(long)]
        mend_query_rows: bool,
    },
}

/// `dicom-gw scu …`: DCMTK-like flags, answers as JSON on stdout, the status on stderr.
#[derive(Debug, Subcommand)]
enum ScuOp {
    /// C-FIND (Query/Retrieve): prints a JSON array of the matches (DICOM JSON). Exit code 0
    /// on 0000 or FE00 (cancelled), 1 on a failure status, 2 if the association fails.
    Find {
        /// Patient Root information model.
        #[arg(short = 'P', long = "patient-root", conflicts_with = "study_root")]
        patient_root: bool,
        /// Study Root information model (the default).
        #[arg(short = 'S', long = "study-root")]
        study_root: bool,
        /// A key: TAG[=VALUE], TAG a keyword or gggg,eeee (e.g. -k QueryRetrieveLevel=STUDY
        /// -k PatientName=Doe* -k StudyInstanceUID). Without QueryRetrieveLevel: STUDY.
        #[arg(short = 'k', long = "key", value_name = "TAG[=VALUE]")]
        keys: Vec<String>,
        /// Our AE title (calling).
        #[arg(long, default_value = "DICOMGW-SCU")]
        aet: String,
        /// The peer's AE title (called).
        #[arg(long, default_value = "ANY-SCP")]
        aec: String,
        /// Send a C-CANCEL after this many responses.
        #[arg(long, value_name = "N")]
        cancel: Option<usize>,
        /// Network timeout in seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Peer host.
        host: String,
        /// Peer port.
        port: u16,
        #[command(flatten)]
        tls: scu_cli::TlsArgs,
    },
    /// C-ECHO (Verification): prints {"status"}. Exit code 0 on 0000, 1 on another status,
    /// 2 if the association fails.
    Echo(scu_cli::EchoArgs),
    /// C-STORE of Part-10 files, verbatim in their own transfer syntax: one JSON line per
    /// file. Exit code 0 if all were stored (0000 or a warning), 1 if one failed, 2 if the
    /// association fails.
    Store(scu_cli::StoreArgs),
    /// Modality Worklist C-FIND: prints a JSON array of the matches (DICOM JSON). Exit codes
    /// as for `find`.
    Mwl(scu_cli::MwlArgs),
    /// MPPS N-CREATE or N-SET: prints {"operation", "sop_instance_uid", "status"}. Exit code
    /// 0 on success or a warning, 1 on a failure status, 2 if the association fails.
    Mpps(scu_cli::MppsArgs),
    /// C-MOVE (Query/Retrieve): asks the peer to send what the keys name to AE title
    /// `--move`; prints a JSON summary (status, counts, failed UIDs). Exit code 0 on 0000 or
    /// FE00, 1 on any other final status (B000 included), 2 if the association fails.
    Move {
        #[command(flatten)]
        common: RetrieveArgs,
        /// The Move Destination (an AE title the peer knows).
        #[arg(long = "move", value_name = "AETITLE")]
        destination: String,
    },
    /// C-GET (Query/Retrieve): the peer sends what the keys name back on this association;
    /// each object is written to `--od` as `<SOP Instance UID>.dcm`. Prints a JSON summary
    /// (status, counts, failed UIDs, files). Exit codes as `move`.
    Get {
        #[command(flatten)]
        common: RetrieveArgs,
        /// Output directory.
        #[arg(long = "od", value_name = "DIR", default_value = ".")]
        out_dir: PathBuf,
        /// A storage SOP class to receive (repeatable; default: common image classes).
        #[arg(long = "sop-class", value_name = "UID")]
        sop_classes: Vec<String>,
        /// A transfer syntax to receive in (repeatable; default: the uncompressed ones, JPEG
        /// baseline and lossless, JPEG 2000 lossless, RLE). Objects come as stored: one
        /// presentation context is proposed per class and syntax.
        #[arg(long = "ts", value_name = "UID")]
        transfer_syntaxes: Vec<String>,
    },
    /// Storage Commitment (N-ACTION): asks the peer to commit to objects, then waits for the
    /// N-EVENT-REPORT on the same association, or with --port on a new one to that port.
    /// Prints JSON (transaction_uid, action_status, report with committed and failed). Exit
    /// code 0 when every object is committed, 1 on failures, a failure status or no report in
    /// time, 2 if the association fails.
    Commit(CommitArgs),
}

/// `dicom-gw scu commit`.
#[derive(Debug, clap::Args)]
struct CommitArgs {
    /// An object as SOP class and instance UIDs: CLASS:INSTANCE (repeatable).
    #[arg(short = 'k', long = "ref", value_name = "CLASS:INSTANCE")]
    refs: Vec<String>,
    /// Transaction UID (default: a fresh 2.25 UID).
    #[arg(long, value_name = "UID")]
    transaction_uid: Option<String>,
    /// Listen on this port for the report on a new association (the association of the
    /// N-ACTION is then released at once).
    #[arg(long = "port", id = "listen_port", value_name = "P")]
    listen_port: Option<u16>,
    /// Our AE title (calling; the peer reports to it).
    #[arg(long, default_value = "DICOMGW-SCU")]
    aet: String,
    /// The peer's AE title (called).
    #[arg(long, default_value = "ANY-SCP")]
    aec: String,
    /// Network timeout, and the longest wait for the report, in seconds.
    #[arg(long, default_value = "60")]
    timeout: u64,
    /// Peer host.
    host: String,
    /// Peer port.
    port: u16,
    /// DICOM files whose SOP class and instance are named in the request.
    files: Vec<PathBuf>,
    /// DICOM TLS for the N-ACTION's association and the report. With `--port` the listener
    /// speaks TLS too: it presents --tls-cert/--tls-key (required then) and accepts only an
    /// SCP whose client certificate chains to --tls-ca.
    #[command(flatten)]
    tls: scu_cli::TlsArgs,
}

/// The flags `scu move` and `scu get` share with `scu find`.
#[derive(Debug, clap::Args)]
struct RetrieveArgs {
    /// Patient Root information model.
    #[arg(short = 'P', long = "patient-root", conflicts_with = "study_root")]
    patient_root: bool,
    /// Study Root information model (the default).
    #[arg(short = 'S', long = "study-root")]
    study_root: bool,
    /// A key: TAG=VALUE (e.g. -k QueryRetrieveLevel=STUDY -k StudyInstanceUID=1.2.3).
    /// Without QueryRetrieveLevel: STUDY.
    #[arg(short = 'k', long = "key", value_name = "TAG[=VALUE]")]
    keys: Vec<String>,
    /// Our AE title (calling).
    #[arg(long, default_value = "DICOMGW-SCU")]
    aet: String,
    /// The peer's AE title (called).
    #[arg(long, default_value = "ANY-SCP")]
    aec: String,
    /// Send a C-CANCEL after this many pending responses.
    #[arg(long, value_name = "N")]
    cancel: Option<usize>,
    /// Network timeout in seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Peer host.
    host: String,
    /// Peer port.
    port: u16,
    #[command(flatten)]
    tls: scu_cli::TlsArgs,
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
    /// List tokens as JSON lines (id, role, name, times; never the token).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a token by its id.
    Revoke {
        #[command(flatten)]
        target: Target,
        /// Token id (from `token list` or `token create`).
        #[arg(long, value_name = "ID")]
        id: String,
    },
}

/// Where a password comes from: never a command-line argument, which `ps` would show.
#[derive(Debug, clap::Args)]
struct PasswordSource {
    /// Read the password from the first line of standard input (otherwise it is taken from
    /// $DICOM_GW_PASSWORD).
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Debug, Subcommand)]
enum UserOp {
    /// Add a user (password: at least 12 characters, from --password-stdin or
    /// $DICOM_GW_PASSWORD).
    Add {
        #[command(flatten)]
        target: Target,
        /// User name: 1-64 letters, digits, '.', '_', '-'.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Role: viewer, operator or admin.
        #[arg(long, value_name = "ROLE")]
        role: dicom_gw::http::auth::Role,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// List users as JSON lines.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Set a user's password (ends the user's login sessions).
    Password {
        #[command(flatten)]
        target: Target,
        /// User name.
        #[arg(long, value_name = "NAME")]
        name: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Remove a user (and end its login sessions).
    Remove {
        #[command(flatten)]
        target: Target,
        /// User name.
        #[arg(long, value_name = "NAME")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditOp {
    /// Check the hash chain: exit 0 and print the entry count and head hash, or exit 1 naming
    /// the first bad entry.
    Verify {
        #[command(flatten)]
        target: Target,
        /// A head hash printed by an earlier verify and kept elsewhere: also fail unless the
        /// log still contains that entry (detects a consistently rewritten or truncated log).
        #[arg(long, value_name = "HASH")]
        anchor: Option<String>,
    },
    /// Print entries as JSON lines, oldest first.
    List {
        #[command(flatten)]
        target: Target,
        /// Skip this many entries.
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: u64,
        /// At most this many entries.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum WorklistOp {
    /// Import one DICOM JSON dataset or an array of them. Everything is validated first (an
    /// error names the attribute and the array index; exit 2, nothing stored); then, in one
    /// transaction, an item whose Accession Number, Requested Procedure ID and Scheduled
    /// Procedure Step ID equal a stored item's updates it and any other is created, so
    /// importing the same RIS export again neither fails nor duplicates. Prints
    /// {"created", "updated", "without_key", "items"} as one JSON line.
    Import {
        #[command(flatten)]
        target: Target,
        /// The DICOM JSON file, or `-` for standard input.
        file: PathBuf,
    },
    /// Items as JSON lines ({"id", "status", "dataset", ...}), in id order.
    List {
        #[command(flatten)]
        target: Target,
        /// Skip this many items.
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: u64,
        /// At most this many items.
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: usize,
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
    init_logging(log_format_of(&cli));
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dicom-gw: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The `[log] format` of `serve --config FILE`; text for the other commands, and when the
/// file cannot be read or parsed (`run` then reports why and exits).
fn log_format_of(cli: &Cli) -> LogFormat {
    match &cli.command {
        Command::Serve {
            config: Some(path), ..
        } => config::load(path)
            .ok()
            .and_then(|(raw, _)| raw.log.format)
            .unwrap_or_default(),
        _ => LogFormat::Text,
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`): text lines, coloured only for
/// a person at a terminal (journald and log files get no escape codes), or one JSON object
/// per line (timestamp, level, message and the event's fields at the top level, with the
/// enclosing spans) for journald and Loki.
fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
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

/// `dicom-gw scu move|get`.
fn scu_retrieve(op: ScuOp) -> anyhow::Result<ExitCode> {
    use dicom_dictionary_std::uids;
    use dicom_gw::net::services::query_retrieve_move as qm;
    use dicom_gw::net::services::{query_retrieve_find as qf, query_retrieve_get as qg};
    use std::net::ToSocketAddrs;
    let (common, is_move) = match &op {
        ScuOp::Move { common, .. } => (common, true),
        ScuOp::Get { common, .. } => (common, false),
        _ => anyhow::bail!("not a retrieve"),
    };
    let model = match (is_move, common.patient_root) {
        (true, true) => qm::PATIENT_ROOT,
        (true, false) => qm::STUDY_ROOT,
        (false, true) => qg::PATIENT_ROOT,
        (false, false) => qg::STUDY_ROOT,
    };
    let mut identifier = dicom_gw::dicom::dataset::Dataset::new();
    for k in &common.keys {
        let (tag, vr, value) = qf::parse_key(k).map_err(|e| anyhow::anyhow!("-k {k}: {e}"))?;
        identifier.put(tag, vr, value);
    }
    let level = dicom_dictionary_std::tags::QUERY_RETRIEVE_LEVEL;
    if identifier.get(level).is_none() {
        identifier.put_str(level, dicom_core::VR::CS, "STUDY");
    }
    let addr = (common.host.as_str(), common.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: no address", common.host))?;
    let params = dicom_gw::net::scu::AssocParams {
        addr,
        calling: common.aet.clone(),
        called: common.aec.clone(),
        max_pdu: 65536,
        timeout: std::time::Duration::from_secs(common.timeout),
        connect_timeout: None,
        contexts: vec![(
            model.to_owned(),
            vec![
                uids::EXPLICIT_VR_LITTLE_ENDIAN.to_owned(),
                uids::IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
            ],
        )],
        implementation_class_uid: dicom_gw::IMPLEMENTATION_CLASS_UID.to_owned(),
        implementation_version_name: dicom_gw::IMPLEMENTATION_VERSION_NAME.to_owned(),
    };
    let tls = match scu_cli::tls_client(&common.tls, &common.host) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let result = match &op {
        ScuOp::Move { destination, .. } => qm::scu_move(
            &params,
            tls.as_ref(),
            model,
            &identifier,
            destination,
            common.cancel,
        ),
        ScuOp::Get {
            out_dir,
            sop_classes,
            transfer_syntaxes,
            ..
        } => {
            std::fs::create_dir_all(out_dir)?;
            let classes: Vec<String> = if sop_classes.is_empty() {
                [
                    uids::CT_IMAGE_STORAGE,
                    uids::ENHANCED_CT_IMAGE_STORAGE,
                    uids::MR_IMAGE_STORAGE,
                    uids::ENHANCED_MR_IMAGE_STORAGE,
                    uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
                    uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
                    uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
                    uids::ULTRASOUND_IMAGE_STORAGE,
                    uids::ULTRASOUND_MULTI_FRAME_IMAGE_STORAGE,
                    uids::X_RAY_ANGIOGRAPHIC_IMAGE_STORAGE,
                    uids::NUCLEAR_MEDICINE_IMAGE_STORAGE,
                    uids::POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE,
                    uids::DIGITAL_MAMMOGRAPHY_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
                    uids::ENCAPSULATED_PDF_STORAGE,
                    uids::BASIC_TEXT_SR_STORAGE,
                    uids::ENHANCED_SR_STORAGE,
                    uids::RT_STRUCTURE_SET_STORAGE,
                    uids::GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE,
                ]
                .map(str::to_owned)
                .to_vec()
            } else {
                sop_classes.clone()
            };
            let syntaxes: Vec<String> = if transfer_syntaxes.is_empty() {
                [
                    uids::EXPLICIT_VR_LITTLE_ENDIAN,
                    uids::IMPLICIT_VR_LITTLE_ENDIAN,
                    uids::JPEG_BASELINE8_BIT,
                    uids::JPEG_LOSSLESS_SV1,
                    uids::JPEG2000_LOSSLESS,
                    uids::RLE_LOSSLESS,
                ]
                .map(str::to_owned)
                .to_vec()
            } else {
                transfer_syntaxes.clone()
            };
            let storage: Vec<(String, Vec<String>)> = classes
                .iter()
                .flat_map(|c| syntaxes.iter().map(move |t| (c.clone(), vec![t.clone()])))
                .collect();
            if storage.len() + 1 > dicom_gw::net::scu::MAX_PROPOSED_CONTEXTS {
                anyhow::bail!(
                    "{} classes × {} transfer syntaxes = {} presentation contexts: at most {} fit on one association",
                    classes.len(),
                    syntaxes.len(),
                    storage.len(),
                    dicom_gw::net::scu::MAX_PROPOSED_CONTEXTS - 1
                );
            }
            qm::scu_get(
                &params,
                tls.as_ref(),
                model,
                &identifier,
                &storage,
                out_dir,
                common.cancel,
            )
        }
        _ => anyhow::bail!("not a retrieve"),
    };
    let op_name = if is_move { "C-MOVE" } else { "C-GET" };
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{op_name} failed: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut json = serde_json::to_value(&r)?;
    json["status"] = serde_json::Value::String(format!("{:04X}", r.status));
    // One line: a script reads it with one `read`, `jq` as well.
    println!("{}", serde_json::to_string(&json)?);
    eprintln!(
        "{op_name} status {:04X}{}",
        r.status,
        r.error_comment
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default()
    );
    Ok(if matches!(r.status, 0x0000 | 0xFE00) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn scu(op: ScuOp) -> anyhow::Result<ExitCode> {
    use dicom_gw::net::services::query_retrieve_find as qr;
    use std::net::ToSocketAddrs;
    let op = match op {
        ScuOp::Echo(a) => return scu_cli::echo(&a),
        ScuOp::Store(a) => return scu_cli::store(&a),
        ScuOp::Mwl(a) => return scu_cli::mwl(&a),
        ScuOp::Mpps(a) => return scu_cli::mpps(&a),
        ScuOp::Commit(args) => return scu_commit(args),
        find => find,
    };
    if matches!(op, ScuOp::Move { .. } | ScuOp::Get { .. }) {
        return scu_retrieve(op);
    }
    let ScuOp::Find {
        patient_root,
        study_root: _,
        keys,
        aet,
        aec,
        cancel,
        timeout,
        host,
        port,
        tls,
    } = op
    else {
        anyhow::bail!("internal: an scu command was not dispatched");
    };
    let model = if patient_root {
        qr::PATIENT_ROOT
    } else {
        qr::STUDY_ROOT
    };
    let mut identifier = dicom_gw::dicom::dataset::Dataset::new();
    for k in &keys {
        let (tag, vr, value) = qr::parse_key(k).map_err(|e| anyhow::anyhow!("-k {k}: {e}"))?;
        identifier.put(tag, vr, value);
    }
    let level = dicom_dictionary_std::tags::QUERY_RETRIEVE_LEVEL;
    if identifier.get(level).is_none() {
        identifier.put_str(level, dicom_core::VR::CS, "STUDY");
    }
    let addr = (host.as_str(), port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host}: no address"))?;
    let params = dicom_gw::net::scu::AssocParams {
        addr,
        calling: aet,
        called: aec,
        max_pdu: 65536,
        timeout: std::time::Duration::from_secs(timeout),
        connect_timeout: None,
        contexts: vec![(
            model.to_owned(),
            vec![
                dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN.to_owned(),
                dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
            ],
        )],
        implementation_class_uid: dicom_gw::IMPLEMENTATION_CLASS_UID.to_owned(),
        implementation_version_name: dicom_gw::IMPLEMENTATION_VERSION_NAME.to_owned(),
    };
    let tls = match scu_cli::tls_client(&tls, &host) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let found = match qr::scu_find(&params, tls.as_ref(), model, &identifier, cancel) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("C-FIND failed: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let json: Vec<serde_json::Value> = found
        .matches
        .iter()
        .map(dicom_gw::dicom::json::dataset_to_json)
        .collect();
    println!("{}", serde_json::to_string_pretty(&json)?);
    eprintln!(
        "C-FIND status {:04X}{}: {} matches",
        found.status,
        found
            .error_comment
            .as_deref()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default(),
        found.matches.len()
    );
    Ok(if matches!(found.status, 0x0000 | 0xFE00) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The `scu commit --port` listener: plain, or with `--tls` a TLS server presenting our
/// certificate and requiring the reporting SCP's, verified against the CA (a report is a
/// claim about our objects: it must come from the peer we trust).
fn report_listener(
    port: u16,
    tls: &scu_cli::TlsArgs,
) -> anyhow::Result<dicom_gw::net::services::storage_commitment::scu::ReportListener> {
    use dicom_gw::net::services::storage_commitment::scu::ReportListener;
    if !tls.tls {
        return Ok(ReportListener { port, tls: None });
    }
    let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) else {
        anyhow::bail!("--port with --tls: the report listener needs --tls-cert and --tls-key");
    };
    let config = dicom_gw::tls::server_config(cert, key, tls.tls_ca.as_deref())?;
    Ok(ReportListener {
        port,
        tls: Some(config),
    })
}

/// `dicom-gw scu commit`.
fn scu_commit(a: CommitArgs) -> anyhow::Result<ExitCode> {
    use dicom_gw::net::services::storage_commitment::{self as sc, scu::commit, Reference};
    use std::net::ToSocketAddrs;
    let mut refs = Vec::new();
    for k in &a.refs {
        let (c, i) = k
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("-k {k}: expected CLASS:INSTANCE"))?;
        refs.push(Reference {
            sop_class_uid: c.trim().to_owned(),
            sop_instance_uid: i.trim().to_owned(),
        });
    }
    for f in &a.files {
        let obj = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .open_file(f)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let meta = obj.meta();
        refs.push(Reference {
            sop_class_uid: meta
                .media_storage_sop_class_uid
                .trim_end_matches('\0')
                .to_owned(),
            sop_instance_uid: meta
                .media_storage_sop_instance_uid
                .trim_end_matches('\0')
                .to_owned(),
        });
    }
    anyhow::ensure!(
        !refs.is_empty(),
        "nothing to commit: give files or -k CLASS:INSTANCE"
    );
    let transaction_uid = a.transaction_uid.unwrap_or_else(
        dicom_gw::net::services::modality_performed_procedure_step::new_instance_uid,
    );
    let addr = (a.host.as_str(), a.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: no address", a.host))?;
    let timeout = std::time::Duration::from_secs(a.timeout);
    let params = dicom_gw::net::scu::AssocParams {
        addr,
        calling: a.aet,
        called: a.aec,
        max_pdu: 65536,
        timeout,
        connect_timeout: None,
        contexts: vec![(
            sc::SOP_CLASS.to_owned(),
            vec![
                dicom_dictionary_std::uids::EXPLICIT_VR_LITTLE_ENDIAN.to_owned(),
                dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
            ],
        )],
        implementation_class_uid: dicom_gw::IMPLEMENTATION_CLASS_UID.to_owned(),
        implementation_version_name: dicom_gw::IMPLEMENTATION_VERSION_NAME.to_owned(),
    };
    let tls = match scu_cli::tls_client(&a.tls, &a.host) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let listener = match a.listen_port.map(|port| report_listener(port, &a.tls)) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            eprintln!("dicom-gw: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let out = match commit(
        &params,
        tls.as_ref(),
        &transaction_uid,
        &refs,
        listener.as_ref(),
        timeout,
    ) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("storage commitment failed: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let pair = |r: &Reference| serde_json::json!({"sop_class_uid": r.sop_class_uid, "sop_instance_uid": r.sop_instance_uid});
    let report = out.report.as_ref().map(|r| {
        serde_json::json!({
            "via": r.via,
            "calling_ae_title": r.calling_ae_title,
            "event_type": r.event_type,
            "transaction_uid": r.transaction_uid,
            "committed": r.committed.iter().map(pair).collect::<Vec<_>>(),
            "failed": r.failed.iter().map(|(x, reason)| {
                let mut v = pair(x);
                v["failure_reason"] = serde_json::json!(reason);
                v
            }).collect::<Vec<_>>(),
        })
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "transaction_uid": transaction_uid,
            "action_status": out.action_status,
            "action_comment": out.action_comment,
            "report": report,
        }))?
    );
    let all_committed = out
        .report
        .as_ref()
        .is_some_and(|r| r.failed.is_empty() && r.committed.len() == refs.len());
    match &out.report {
        None if out.action_status == 0 => eprintln!("N-ACTION status 0000 but no report in time"),
        None => eprintln!("N-ACTION status {:04X}", out.action_status),
        Some(r) => eprintln!(
            "report: {} committed, {} failed",
            r.committed.len(),
            r.failed.len()
        ),
    }
    Ok(if all_committed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
            worklist_listen,
            store_tls_listen,
            worklist_tls_listen,
            only,
        } => {
            let ov = Overrides {
                data_dir,
                store_listen,
                io,
                threads,
                durability,
                http_listen,
                worklist_listen,
                store_tls_listen,
                worklist_tls_listen,
                services: only,
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
                    // Lines on stdout for scripts and tests (the store line, or with
                    // `--only worklist` the worklist line, last: it means ready); logs go to
                    // stderr.
                    println!(
                        "dicom-gw: http listening on {} ({})",
                        started.http_addr,
                        if started.https { "https" } else { "http" }
                    );
                    if let Some(addr) = started.worklist_tls_addr {
                        println!("dicom-gw: worklist tls listening on {addr}");
                    }
                    if let Some(addr) = started.worklist_addr {
                        println!("dicom-gw: worklist listening on {addr}");
                    }
                    // With the plain store port turned off, the TLS line is the ready line.
                    if let Some(addr) = started.store_tls_addr {
                        println!("dicom-gw: store tls listening on {addr}");
                    }
                    if let Some(addr) = started.store_addr {
                        println!(
                            "dicom-gw: store listening on {} (io={})",
                            addr,
                            started.backend.name()
                        );
                    }
                    // Databases open, every listener accepting: tell systemd (Type=notify).
                    sd::ready();
                },
                stop_signal(),
            )?;
            sd::notify("STOPPING=1");
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
        Command::Token { op } => token_command(op),
        Command::User { op } => user_command(op),
        Command::Audit { op } => audit_command(op),
        Command::Worklist { op } => worklist_command(op),
        Command::Scu { op } => scu(op),
        Command::Index {
            data_dir,
            mend_query_rows,
        } => {
            let index = dicom_gw::store::index::Index::open(&data_dir.join("gateway.redb"))?;
            if mend_query_rows {
                let m = dicom_gw::store::query::mend_every_row(index.database())?;
                println!(
                    "{}",
                    serde_json::json!({"added": m.added, "removed": m.removed})
                );
                return Ok(ExitCode::SUCCESS);
            }
            for rec in index.instances()? {
                println!("{}", serde_json::to_string(&rec)?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn queue_command(op: QueueOp) -> anyhow::Result<ExitCode> {
    use dicom_gw::control::Request;
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

fn token_command(op: TokenOp) -> anyhow::Result<ExitCode> {
    use dicom_gw::control::Request;
    match op {
        TokenOp::Create { target, role, name } => {
            control_command(target, Request::TokenCreate { role, name }, |v| {
                format!(
                    "API token {} for {} (role {}), shown only now: {}",
                    v["id"].as_str().unwrap_or(""),
                    v["name"].as_str().unwrap_or(""),
                    v["role"].as_str().unwrap_or(""),
                    v["token"].as_str().unwrap_or("")
                )
            })
        }
        TokenOp::List { target } => control_command(target, Request::TokenList, |v| v.to_string()),
        TokenOp::Revoke { target, id } => {
            control_command(target, Request::TokenRevoke { id }, |v| v.to_string())
        }
    }
}

/// The password from the first line of stdin (`--password-stdin`) or `$DICOM_GW_PASSWORD`.
fn read_password(src: &PasswordSource) -> anyhow::Result<Result<String, String>> {
    if src.password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        let pw = line.strip_suffix('\n').unwrap_or(&line);
        let pw = pw.strip_suffix('\r').unwrap_or(pw);
        return Ok(Ok(pw.to_owned()));
    }
    match std::env::var("DICOM_GW_PASSWORD") {
        Ok(pw) if !pw.is_empty() => Ok(Ok(pw)),
        _ => Ok(Err(
            "no password: pass --password-stdin and write it on standard input, or set \
             DICOM_GW_PASSWORD (never as an argument: `ps` would show it)"
                .to_owned(),
        )),
    }
}

fn user_command(op: UserOp) -> anyhow::Result<ExitCode> {
    use dicom_gw::control::{Request, Secret};
    let password = |src: &PasswordSource| -> anyhow::Result<Result<Secret, ExitCode>> {
        Ok(read_password(src)?.map(Secret).map_err(|m| {
            eprintln!("dicom-gw: {m}");
            ExitCode::from(2)
        }))
    };
    let (target, req) = match op {
        UserOp::Add {
            target,
            name,
            role,
            password: src,
        } => match password(&src)? {
            Ok(password) => (
                target,
                Request::UserAdd {
                    name,
                    role,
                    password,
                },
            ),
            Err(code) => return Ok(code),
        },
        UserOp::List { target } => (target, Request::UserList),
        UserOp::Password {
            target,
            name,
            password: src,
        } => match password(&src)? {
            Ok(password) => (target, Request::UserPassword { name, password }),
            Err(code) => return Ok(code),
        },
        UserOp::Remove { target, name } => (target, Request::UserRemove { name }),
    };
    control_command(target, req, |v| v.to_string())
}

fn audit_command(op: AuditOp) -> anyhow::Result<ExitCode> {
    use dicom_gw::control::Request;
    match op {
        AuditOp::Verify { target, anchor } => {
            let lines = match control_request(target, Request::AuditVerify { anchor })? {
                Ok(l) => l,
                Err(code) => return Ok(code),
            };
            let report: dicom_gw::audit::VerifyReport = serde_json::from_value(
                lines
                    .into_iter()
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("empty answer"))?,
            )?;
            if report.ok {
                println!(
                    "audit log OK: {} entries, head {}",
                    report.entries, report.head
                );
                Ok(ExitCode::SUCCESS)
            } else {
                let at = report
                    .first_bad
                    .map(|n| format!(" at entry {n}"))
                    .unwrap_or_default();
                println!(
                    "audit log FAILED{at}: {} ({} entries; last good head {})",
                    report.problem.as_deref().unwrap_or("unknown problem"),
                    report.entries,
                    report.head
                );
                Ok(ExitCode::from(1))
            }
        }
        AuditOp::List {
            target,
            offset,
            limit,
        } => control_command(target, Request::AuditList { offset, limit }, |v| {
            v.to_string()
        }),
    }
}

fn worklist_command(op: WorklistOp) -> anyhow::Result<ExitCode> {
    use dicom_gw::control::Request;
    match op {
        WorklistOp::Import { target, file } => {
            let read = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            };
            let document = match read {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("dicom-gw: {}: {e}", file.display());
                    return Ok(ExitCode::from(2));
                }
            };
            // Checked here first, so a bad file is reported the same with or without a
            // daemon (which checks again: it trusts no client).
            if let Err(e) = dicom_gw::worklist::model::parse_items(&document) {
                eprintln!("dicom-gw: {}: {e}", file.display());
                return Ok(ExitCode::from(2));
            }
            control_command(target, Request::WorklistImport { document }, |v| {
                v.to_string()
            })
        }
        WorklistOp::List {
            target,
            offset,
            limit,
        } => control_command(target, Request::WorklistList { offset, limit }, |v| {
            v.to_string()
        }),
    }
}

/// Runs a control request through the running daemon, or on the database when none runs, and
/// prints each result line with `show`.
fn control_command(
    target: Target,
    req: dicom_gw::control::Request,
    show: impl Fn(&serde_json::Value) -> String,
) -> anyhow::Result<ExitCode> {
    match control_request(target, req)? {
        Ok(lines) => {
            for l in lines {
                println!("{}", show(&l));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(code) => Ok(code),
    }
}

/// Runs a control request (as `cli:<unix user>`, for the audit log) through the running
/// daemon, or on the database when none runs. `Err(code)`: the error was printed; exit so.
fn control_request(
    target: Target,
    req: dicom_gw::control::Request,
) -> anyhow::Result<Result<Vec<serde_json::Value>, ExitCode>> {
    use dicom_gw::control::{self, Ops, Reply};
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
            return Ok(Err(ExitCode::from(2)));
        }
    };
    let actor = control::cli_actor();
    let reply = match control::request_as(&settings.data_dir, &req, Some(&actor))? {
        Some(r) => r,
        None => {
            let path = settings.data_dir.join("gateway.redb");
            if !path.exists() && !req.may_create_database() {
                eprintln!("dicom-gw: no database at {}", path.display());
                return Ok(Err(ExitCode::from(2)));
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
                Ok(ops) if req.needs_worklist() => {
                    let store = dicom_gw::worklist::WorklistStore::open_in(&settings.data_dir)?;
                    let ops = ops.with_worklist(std::sync::Arc::new(store));
                    ops.reply_as(&req, &actor, control::CLI_SOURCE)
                }
                Ok(ops) => ops.reply_as(&req, &actor, control::CLI_SOURCE),
                Err(e) => Reply::Failed(e.to_string()),
            }
        }
    };
    match reply {
        Reply::Ok(lines) => Ok(Ok(lines)),
        Reply::Usage(m) => {
            eprintln!("dicom-gw: {m}");
            Ok(Err(ExitCode::from(2)))
        }
        Reply::Failed(m) => {
            eprintln!("dicom-gw: {m}");
            Ok(Err(ExitCode::from(1)))
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

/// The systemd notification protocol (sd_notify(3)), spoken directly: one datagram to the
/// Unix socket named by `$NOTIFY_SOCKET`. No C library needed, and a no-op outside systemd.
mod sd {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, ...); errors are logged, never fatal.
    pub fn notify(state: &str) {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return;
        };
        let result = UnixDatagram::unbound().and_then(|sock| {
            let bytes = path.as_encoded_bytes();
            if let Some(name) = bytes.strip_prefix(b"@") {
                // An abstract socket address (Linux).
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(state.as_bytes(), &addr)
            } else {
                sock.send_to(state.as_bytes(), &path)
            }
        });
        if let Err(e) = result {
            tracing::warn!(state, error = %e, "cannot notify systemd");
        }
    }

    /// Reports readiness and, when systemd asks for it (`$WATCHDOG_USEC`, for this process
    /// per `$WATCHDOG_PID`), starts the watchdog pings: `WATCHDOG=1` at half the interval,
    /// from a thread of their own, so a wedged process stops pinging and is restarted.
    pub fn ready() {
        notify(&format!("READY=1\nMAINPID={}", std::process::id()));
        let Some(usec) = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&u| u > 0)
        else {
            return;
        };
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok() != Some(std::process::id()) {
                return;
            }
        }
        let every = Duration::from_micros(usec / 2);
        let spawned = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || loop {
                notify("WATCHDOG=1");
                std::thread::sleep(every);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the systemd watchdog thread");
        }
    }
}
