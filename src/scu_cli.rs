//! `dicom-gw scu echo|store|mwl|mpps`: the SCU side of Verification, Storage, Modality
//! Worklist and MPPS, on the same blocking SCU as the forwarder (`dicom_gw::net::scu`).
//!
//! Like DCMTK's tools: `--aet`/`--aec`, `--timeout`, `--tls …` ([`TlsArgs`], shared with
//! `find`, `move`, `get` and `commit`), then HOST PORT. Answers go to stdout as
//! JSON (one value, or one line per file for `store`), the status to stderr, and the exit code
//! says who failed: 0 success, 1 a DIMSE failure (a failure status, a file that could not be
//! sent), 2 the association (connect, reject, abort, timeout) or the usage.

use std::fs::File;
use std::io::Read;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use dicom_core::VR;
use dicom_dictionary_std::uids;
use dicom_gw::dicom::dataset::{Dataset, Value};
use dicom_gw::net::dimse::command::{tags as ct, CommandBuilder, CommandField};
use dicom_gw::net::scu::{AssocParams, Association, ScuError, ScuTls};
use dicom_gw::net::services::modality_performed_procedure_step as mpps;
use dicom_gw::net::services::modality_worklist as mwl;
use dicom_gw::net::services::query_retrieve_find as qr;
use serde_json::json;

/// Exit code of a DIMSE failure.
const EXIT_DIMSE: u8 = 1;
/// Exit code of an association failure (or bad usage).
const EXIT_ASSOCIATION: u8 = 2;

/// The peer and who we are: the flags every `scu` command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Peer {
    /// Our AE title (calling).
    #[arg(long, default_value = "DICOMGW-SCU")]
    pub aet: String,
    /// The peer's AE title (called).
    #[arg(long, default_value = "ANY-SCP")]
    pub aec: String,
    /// Network timeout in seconds (connect, and each response).
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Peer host.
    pub host: String,
    /// Peer port.
    pub port: u16,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// DICOM TLS towards the peer (PS3.15 Annex B, the BCP 195 profile the daemon uses): like
/// DCMTK's `+tls KEY CERT +cf CA`, but the peer's certificate is always verified, against
/// `--tls-ca`, for the name `--tls-server-name` (default: HOST).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Speak DICOM TLS (needs --tls-ca).
    #[arg(long, requires = "tls_ca")]
    pub tls: bool,
    /// PEM file of the CA certificate(s) the peer's certificate must chain to.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// Our PEM certificate chain, for a peer that requires one (with --tls-key).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// Our PEM private key (with --tls-cert).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
    /// The name the peer's certificate must carry, a DNS name or an IP address (default:
    /// HOST).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
}

impl TlsArgs {
    /// The TLS client towards `host`, or `None` without `--tls`. The files are read here, so
    /// a missing or broken one is a usage error naming it, before anything is sent.
    pub fn client(&self, host: &str) -> anyhow::Result<Option<ScuTls>> {
        if !self.tls {
            return Ok(None);
        }
        let config = dicom_gw::tls::client_config(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )?;
        let server_name = self.tls_server_name.as_deref().unwrap_or(host).to_owned();
        dicom_gw::tls::server_name(&server_name)?;
        Ok(Some(ScuTls {
            config,
            server_name,
        }))
    }
}

/// [`TlsArgs::client`] for the commands whose other errors exit 1: a TLS file that cannot be
/// used is printed and exits 2 (usage), as in the other `scu` commands.
pub fn tls_client(tls: &TlsArgs, host: &str) -> Result<Option<ScuTls>, ExitCode> {
    tls.client(host).map_err(|e| {
        eprintln!("dicom-gw: {e:#}");
        ExitCode::from(EXIT_ASSOCIATION)
    })
}

impl Peer {
    /// Association parameters proposing `contexts`, and the TLS client if `--tls`.
    fn params(
        &self,
        contexts: Vec<(String, Vec<String>)>,
    ) -> anyhow::Result<(AssocParams, Option<ScuTls>)> {
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("{}: cannot resolve", self.host))?
            .next()
            .ok_or_else(|| anyhow!("{}: no address", self.host))?;
        let params = AssocParams {
            addr,
            calling: self.aet.clone(),
            called: self.aec.clone(),
            max_pdu: 65536,
            timeout: Duration::from_secs(self.timeout.max(1)),
            connect_timeout: None,
            contexts,
            implementation_class_uid: dicom_gw::IMPLEMENTATION_CLASS_UID.to_owned(),
            implementation_version_name: dicom_gw::IMPLEMENTATION_VERSION_NAME.to_owned(),
        };
        Ok((params, self.tls.client(&self.host)?))
    }
}

/// The transfer syntaxes proposed for commands whose datasets we encode ourselves.
fn plain_syntaxes() -> Vec<String> {
    vec![
        uids::EXPLICIT_VR_LITTLE_ENDIAN.to_owned(),
        uids::IMPLICIT_VR_LITTLE_ENDIAN.to_owned(),
    ]
}

/// `scu echo` arguments.
#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    #[command(flatten)]
    peer: Peer,
}

/// `scu store` arguments.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    peer: Peer,
    /// Part-10 files, sent verbatim (their dataset bytes, in their own transfer syntax).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

/// `scu mwl` arguments.
#[derive(Debug, clap::Args)]
pub struct MwlArgs {
    /// A key: TAG[=VALUE] as for `scu find`; a key inside a sequence as
    /// `Sequence[0].TAG[=VALUE]` (e.g. -k ScheduledProcedureStepSequence[0].Modality=CT).
    #[arg(short = 'k', long = "key", value_name = "TAG[=VALUE]")]
    keys: Vec<String>,
    /// A DICOM JSON file (PS3.18 F.2) with the identifier; `-k` keys are applied over it.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Send a C-CANCEL after this many responses.
    #[arg(long, value_name = "N")]
    cancel: Option<usize>,
    #[command(flatten)]
    peer: Peer,
}

/// `scu mpps` arguments.
#[derive(Debug, clap::Args)]
pub struct MppsArgs {
    #[command(subcommand)]
    op: MppsOp,
}

/// The MPPS operations.
#[derive(Debug, clap::Subcommand)]
enum MppsOp {
    /// N-CREATE: a new procedure step (status IN PROGRESS). Prints the SOP Instance UID.
    Create {
        /// SOP Instance UID of the step (default: a new 2.25 UID).
        #[arg(long, value_name = "UID")]
        uid: Option<String>,
        #[command(flatten)]
        attrs: MppsAttrs,
    },
    /// N-SET: changes to a step (e.g. -k PerformedProcedureStepStatus=COMPLETED).
    Set {
        /// SOP Instance UID of the step.
        #[arg(long, value_name = "UID")]
        uid: String,
        #[command(flatten)]
        attrs: MppsAttrs,
    },
}

/// The attributes of an N-CREATE or N-SET.
#[derive(Debug, clap::Args)]
struct MppsAttrs {
    /// An attribute: TAG=VALUE (or `Sequence[0].TAG=VALUE`); TAG alone sends it empty.
    #[arg(short = 'k', long = "key", value_name = "TAG[=VALUE]")]
    keys: Vec<String>,
    /// A DICOM JSON file (PS3.18 F.2) with the attributes; `-k` keys are applied over it.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    peer: Peer,
}

/// Puts one `-k` key into `ds`: `TAG[=VALUE]`, or `SEQ[i].…` for a key in item `i` (0 when
/// omitted) of a sequence, the items created as needed.
pub fn put_key(ds: &mut Dataset, arg: &str) -> Result<(), String> {
    let name = arg.split_once('=').map_or(arg, |(n, _)| n);
    let Some((head, rest_name)) = name.split_once('.') else {
        let (tag, vr, value) = qr::parse_key(arg)?;
        ds.put(tag, vr, value);
        return Ok(());
    };
    let rest = &arg[head.len() + 1..];
    debug_assert!(rest.starts_with(rest_name));
    let (seq_name, index) = match head.split_once('[') {
        Some((n, i)) => {
            let i = i
                .strip_suffix(']')
                .and_then(|i| i.parse::<usize>().ok())
                .ok_or_else(|| format!("{head}: expected SEQUENCE[INDEX]"))?;
            (n, i)
        }
        None => (head, 0),
    };
    if index > 64 {
        return Err(format!("{head}: item index above 64"));
    }
    let (seq, vr, _) = qr::parse_key(seq_name)?;
    if vr != VR::SQ {
        return Err(format!("{seq_name} is not a sequence"));
    }
    if ds.items(seq).is_none() {
        ds.put(seq, VR::SQ, Value::Items(Vec::new()));
    }
    let items = ds
        .items_mut(seq)
        .ok_or_else(|| format!("{seq_name}: not a sequence"))?;
    while items.len() <= index {
        items.push(Dataset::new());
    }
    put_key(&mut items[index], rest)
}

/// The dataset of `--json FILE` (if any) with the `-k` keys applied over it.
fn dataset_of(json_file: Option<&Path>, keys: &[String]) -> anyhow::Result<Dataset> {
    let mut ds = match json_file {
        None => Dataset::new(),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("--json {}", p.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("--json {}: not JSON", p.display()))?;
            // A one-element array (what `scu find` prints) is taken as its element.
            let v = match v {
                serde_json::Value::Array(mut a) if a.len() == 1 => a.remove(0),
                other => other,
            };
            dicom_gw::dicom::json::dataset_from_json(&v)
                .map_err(|e| anyhow!("--json {}: {e}", p.display()))?
        }
    };
    for k in keys {
        put_key(&mut ds, k).map_err(|e| anyhow!("-k {k}: {e}"))?;
    }
    Ok(ds)
}

/// A usage error (a bad key, an unreadable `--json`, a host that does not resolve) is exit
/// code 2 like an association failure, never 1, which says the peer answered a failure.
fn usage_is_2(r: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    r.or_else(|e| {
        eprintln!("dicom-gw: {e:#}");
        Ok(ExitCode::from(EXIT_ASSOCIATION))
    })
}

/// Prints an association failure and returns exit code 2.
fn association_failed(what: &str, e: &ScuError) -> ExitCode {
    eprintln!("{what}: association failed ({}): {e}", e.kind());
    println!("{}", json!({ "error": e.to_string(), "kind": e.kind() }));
    ExitCode::from(EXIT_ASSOCIATION)
}

/// `dicom-gw scu echo HOST PORT`: one C-ECHO (PS3.7 9.1.5).
pub fn echo(a: &EchoArgs) -> anyhow::Result<ExitCode> {
    usage_is_2(run_echo(a))
}

fn run_echo(a: &EchoArgs) -> anyhow::Result<ExitCode> {
    let (params, tls) = a.peer.params(vec![(
        uids::VERIFICATION.to_owned(),
        vec![uids::IMPLICIT_VR_LITTLE_ENDIAN.to_owned()],
    )])?;
    let start = std::time::Instant::now();
    let run = || -> Result<u16, ScuError> {
        let mut assoc = Association::open_with_tls(&params, tls.as_ref())?;
        let exchange = |assoc: &mut Association| -> Result<u16, ScuError> {
            let pc = assoc.any_context(uids::VERIFICATION)?.id;
            assoc.send(pc, &dicom_gw::net::dimse::command::encode_echo_rq(1), None)?;
            assoc
                .receive(1)?
                .command
                .status
                .ok_or_else(|| ScuError::Protocol("C-ECHO-RSP without a status".into()))
        };
        match exchange(&mut assoc) {
            Ok(s) => {
                assoc.release()?;
                Ok(s)
            }
            Err(e) => {
                assoc.abort();
                Err(e)
            }
        }
    };
    let status = match run() {
        Ok(s) => s,
        Err(e) => return Ok(association_failed("C-ECHO", &e)),
    };
    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    println!(
        "{}",
        json!({ "status": format!("{status:04X}"), "elapsed_ms": ms })
    );
    eprintln!("C-ECHO status {status:04X}");
    Ok(if status == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIMSE)
    })
}

/// What a Part-10 file's meta group says, and where its dataset is.
#[derive(Debug)]
struct Part10 {
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
    offset: u64,
    len: u64,
}

/// Reads the File Meta Information of a Part-10 file (PS3.10 7.1).
fn read_part10(path: &Path) -> Result<Part10, String> {
    /// Largest meta group accepted (real ones are a few hundred bytes).
    const MAX_META: usize = 1 << 20;
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let file_len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut head = vec![0u8; 144];
    f.read_exact(&mut head)
        .map_err(|_| "too short for a Part-10 file".to_owned())?;
    let offset = dicom_gw::store::meta::dataset_offset(&head)
        .ok_or("no DICM prefix or File Meta Information Group Length: not a Part-10 file")?;
    if offset > MAX_META || offset as u64 > file_len {
        return Err(format!("meta group of {offset} bytes: not believable"));
    }
    head.resize(offset, 0);
    f.read_exact(&mut head[144..])
        .map_err(|_| "the file ends inside its meta group".to_owned())?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(&head[128..])
        .map_err(|e| format!("meta group: {e}"))?;
    let clean = |s: &str| s.trim_end_matches(['\0', ' ']).to_owned();
    Ok(Part10 {
        sop_class: clean(&meta.media_storage_sop_class_uid),
        sop_instance: clean(&meta.media_storage_sop_instance_uid),
        transfer_syntax: clean(meta.transfer_syntax()),
        offset: offset as u64,
        len: file_len - offset as u64,
    })
}

/// `dicom-gw scu store HOST PORT FILE...`: C-STORE of each file's dataset bytes as they are,
/// in the file's own transfer syntax (one presentation context per SOP class and transfer
/// syntax, nothing converted). One JSON line per file.
pub fn store(a: &StoreArgs) -> anyhow::Result<ExitCode> {
    usage_is_2(run_store(a))
}

fn run_store(a: &StoreArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut files = Vec::new();
    for path in &a.files {
        match read_part10(path) {
            Ok(p) => files.push((path, p)),
            Err(e) => {
                failed = true;
                eprintln!("{}: {e}", path.display());
                println!("{}", json!({ "file": path, "error": e }));
            }
        }
    }
    if files.is_empty() {
        return Ok(ExitCode::from(EXIT_DIMSE));
    }
    let mut pairs: Vec<(String, String)> = files
        .iter()
        .map(|(_, p)| (p.sop_class.clone(), p.transfer_syntax.clone()))
        .collect();
    pairs.sort();
    pairs.dedup();
    if pairs.len() > dicom_gw::net::scu::MAX_PROPOSED_CONTEXTS {
        eprintln!(
            "{} SOP class and transfer syntax pairs: at most {} fit in one association; send \
             the files in several runs",
            pairs.len(),
            dicom_gw::net::scu::MAX_PROPOSED_CONTEXTS
        );
        return Ok(ExitCode::from(EXIT_ASSOCIATION));
    }
    let (params, tls) = a.peer.params(
        pairs
            .into_iter()
            .map(|(class, ts)| (class, vec![ts]))
            .collect(),
    )?;
    let mut assoc = match Association::open_with_tls(&params, tls.as_ref()) {
        Ok(x) => x,
        Err(e) => return Ok(association_failed("C-STORE", &e)),
    };
    let mut message_id: u16 = 0;
    for (k, (path, p)) in files.iter().enumerate() {
        let line = |status: Option<u16>, comment: Option<&str>, error: Option<String>| {
            json!({
                "file": path,
                "sop_class_uid": p.sop_class,
                "sop_instance_uid": p.sop_instance,
                "transfer_syntax_uid": p.transfer_syntax,
                "status": status.map(|s| format!("{s:04X}")),
                "error_comment": comment,
                "error": error,
            })
        };
        let pc = match assoc.context(&p.sop_class, &p.transfer_syntax) {
            Ok(pc) => pc,
            Err(e) => {
                failed = true;
                eprintln!("{}: {e}", path.display());
                println!("{}", line(None, None, Some(e.to_string())));
                continue;
            }
        };
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                failed = true;
                eprintln!("{}: {e}", path.display());
                println!("{}", line(None, None, Some(e.to_string())));
                continue;
            }
        };
        message_id = message_id.wrapping_add(1).max(1);
        match assoc.c_store_from_file(
            pc,
            message_id,
            &p.sop_class,
            &p.sop_instance,
            &file,
            p.offset,
            p.len,
        ) {
            Ok(rsp) => {
                // PS3.4 B.2.3: 0000 success, Bxxx warnings (stored); anything else failed.
                let ok = rsp.status == 0 || rsp.status & 0xF000 == 0xB000;
                failed |= !ok;
                eprintln!(
                    "{}: C-STORE status {:04X}{}",
                    path.display(),
                    rsp.status,
                    rsp.error_comment
                        .as_deref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default()
                );
                println!(
                    "{}",
                    line(Some(rsp.status), rsp.error_comment.as_deref(), None)
                );
            }
            Err(e) => {
                // The association is gone (or our file broke it): the rest is not sent.
                eprintln!("{}: {e}", path.display());
                println!("{}", line(None, None, Some(e.to_string())));
                for (rest, _) in &files[k + 1..] {
                    println!(
                        "{}",
                        json!({ "file": rest, "error": "not sent: the association ended" })
                    );
                }
                return Ok(ExitCode::from(if matches!(e, ScuError::Source(_)) {
                    EXIT_DIMSE
                } else {
                    EXIT_ASSOCIATION
                }));
            }
        }
    }
    if let Err(e) = assoc.release() {
        eprintln!("A-RELEASE: {e}");
    }
    Ok(if failed {
        ExitCode::from(EXIT_DIMSE)
    } else {
        ExitCode::SUCCESS
    })
}

/// `dicom-gw scu mwl HOST PORT`: Modality Worklist C-FIND (PS3.4 K); a JSON array of the
/// matches, like `scu find`.
pub fn mwl(a: &MwlArgs) -> anyhow::Result<ExitCode> {
    usage_is_2(run_mwl(a))
}

fn run_mwl(a: &MwlArgs) -> anyhow::Result<ExitCode> {
    let identifier = dataset_of(a.json.as_deref(), &a.keys)?;
    let (params, tls) = a
        .peer
        .params(vec![(mwl::SOP_CLASS.to_owned(), plain_syntaxes())])?;
    let found = match qr::scu_find(&params, tls.as_ref(), mwl::SOP_CLASS, &identifier, a.cancel) {
        Ok(f) => f,
        Err(e) => return Ok(association_failed("C-FIND (worklist)", &e)),
    };
    let json: Vec<serde_json::Value> = found
        .matches
        .iter()
        .map(dicom_gw::dicom::json::dataset_to_json)
        .collect();
    println!("{}", serde_json::to_string_pretty(&json)?);
    eprintln!(
        "C-FIND (worklist) status {:04X}{}: {} matches",
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
        ExitCode::from(EXIT_DIMSE)
    })
}

/// `dicom-gw scu mpps create|set HOST PORT`: one N-CREATE or N-SET on the MPPS SOP class
/// (PS3.4 F.7, PS3.7 10.1.5 / 10.1.3).
pub fn mpps(a: &MppsArgs) -> anyhow::Result<ExitCode> {
    usage_is_2(run_mpps(a))
}

fn run_mpps(a: &MppsArgs) -> anyhow::Result<ExitCode> {
    let (operation, uid, attrs) = match &a.op {
        MppsOp::Create { uid, attrs } => (
            "create",
            uid.clone().unwrap_or_else(mpps::new_instance_uid),
            attrs,
        ),
        MppsOp::Set { uid, attrs } => ("set", uid.clone(), attrs),
    };
    dicom_gw::dicom::uid::validate_uid(&uid).map_err(|e| anyhow!("--uid {uid}: {e}"))?;
    let ds = dataset_of(attrs.json.as_deref(), &attrs.keys)?;
    let (params, tls) = attrs
        .peer
        .params(vec![(mpps::SOP_CLASS.to_owned(), plain_syntaxes())])?;
    let mut assoc = match Association::open_with_tls(&params, tls.as_ref()) {
        Ok(x) => x,
        Err(e) => return Ok(association_failed("MPPS", &e)),
    };
    let exchange = |assoc: &mut Association| -> Result<(u16, Option<String>), ScuError> {
        let ctx = assoc.any_context(mpps::SOP_CLASS)?.clone();
        let bytes =
            dicom_gw::net::dimse::dataset::write_dataset(&ds.to_dicom(), &ctx.transfer_syntax)
                .map_err(ScuError::Protocol)?;
        let (field, rsp_field) = if operation == "create" {
            (CommandField::NCreateRq, CommandField::NCreateRsp)
        } else {
            (CommandField::NSetRq, CommandField::NSetRsp)
        };
        let b = CommandBuilder::new();
        let b = if operation == "create" {
            b.uid(ct::AFFECTED_SOP_CLASS_UID, mpps::SOP_CLASS)
                .uid(ct::AFFECTED_SOP_INSTANCE_UID, &uid)
        } else {
            b.uid(ct::REQUESTED_SOP_CLASS_UID, mpps::SOP_CLASS)
                .uid(ct::REQUESTED_SOP_INSTANCE_UID, &uid)
        };
        let rq = b
            .us(ct::COMMAND_FIELD, field as u16)
            .us(ct::MESSAGE_ID, 1)
            .us(ct::COMMAND_DATA_SET_TYPE, 0x0000)
            .build();
        assoc.send(ctx.id, &rq, Some((&bytes, &[])))?;
        let rsp = assoc.receive(1)?;
        if rsp.command.command_field != rsp_field as u16 {
            return Err(ScuError::Protocol(format!(
                "expected {rsp_field:?}, got command field {:04X}",
                rsp.command.command_field
            )));
        }
        let status = rsp
            .command
            .status
            .ok_or_else(|| ScuError::Protocol("response without a status".into()))?;
        Ok((status, rsp.error_comment))
    };
    let (status, comment) = match exchange(&mut assoc) {
        Ok(x) => {
            if let Err(e) = assoc.release() {
                eprintln!("A-RELEASE: {e}");
            }
            x
        }
        Err(e) => {
            assoc.abort();
            return Ok(association_failed("MPPS", &e));
        }
    };
    println!(
        "{}",
        json!({
            "operation": operation,
            "sop_instance_uid": uid,
            "status": format!("{status:04X}"),
            "error_comment": comment,
        })
    );
    eprintln!(
        "N-{} status {status:04X}{}",
        operation.to_uppercase(),
        comment.map(|c| format!(" ({c})")).unwrap_or_default()
    );
    // PS3.7 C.4: 0000 success; 0001, 0107, 0116 are warnings (the step exists / changed).
    Ok(if matches!(status, 0x0000 | 0x0001 | 0x0107 | 0x0116) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIMSE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;

    #[test]
    fn keys_into_sequences() {
        let mut ds = Dataset::new();
        put_key(&mut ds, "PatientName=Doe*").unwrap();
        put_key(&mut ds, "ScheduledProcedureStepSequence[0].Modality=CT").unwrap();
        put_key(
            &mut ds,
            "ScheduledProcedureStepSequence.ScheduledStationAETitle",
        )
        .unwrap();
        put_key(&mut ds, "(0040,0100)[1].Modality=MR").unwrap();
        let items = ds.items(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].str(tags::MODALITY), Some("CT"));
        assert!(items[0].get(tags::SCHEDULED_STATION_AE_TITLE).is_some());
        assert_eq!(items[1].str(tags::MODALITY), Some("MR"));
        assert_eq!(ds.str(tags::PATIENT_NAME), Some("Doe*"));
        for bad in [
            "PatientName[0].Modality=CT",
            "ScheduledProcedureStepSequence[x].Modality=CT",
            "ScheduledProcedureStepSequence[1000].Modality=CT",
            "NoSuch.Modality",
        ] {
            assert!(put_key(&mut Dataset::new(), bad).is_err(), "{bad}");
        }
    }
}
