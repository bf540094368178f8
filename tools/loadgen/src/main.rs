//! dicom-loadgen: C-STORE / C-ECHO / C-FIND load against a DICOM SCP, with latency
//! percentiles, a JSON summary and byte-for-byte verification of what was stored.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use clap::{Args, Parser, Subcommand};
use dicom_loadgen::dataset::{encode_meta, Ts};
use dicom_loadgen::query::Query;
use dicom_loadgen::run::{run, Operation, RunConfig, MWL_FIND};
use dicom_loadgen::source::Source;
use dicom_loadgen::stats::{RunInfo, Summary};
use dicom_loadgen::synth::{SizeMix, SynthSpec, UidRoot, CT_IMAGE_STORAGE};
use dicom_loadgen::verify::{self, Layout, VerifyReport};

mod find_load;
mod mwl;
mod qr;

/// DICOM load generator: C-STORE, C-ECHO and C-FIND load with latency percentiles.
#[derive(Debug, Parser)]
#[command(
    name = "dicom-loadgen",
    version,
    about,
    after_help = "Exit status: 0 clean run; 1 some requests failed; 2 stopped early or bad \
                  arguments (association rejected, peer unreachable, …); 3 verification failed."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// C-STORE synthesized objects (or the Part-10 files of --dir).
    Store(StoreArgs),
    /// C-ECHO (Verification).
    Echo(EchoArgs),
    /// C-FIND (Modality Worklist by default).
    Find(FindArgs),
    /// Modality Worklist C-FIND load: a realistic query mix over the items of `mwl-items`.
    Mwl(MwlArgs),
    /// Write the worklist items `mwl` queries (DICOM JSON array and/or wlmscpfs .wl files).
    MwlItems(MwlItemsArgs),
    /// Query/Retrieve C-FIND load: study-level queries over the corpus of `qr-index`.
    Qr(QrArgs),
    /// Write a synthetic corpus of N instances straight into DATA_DIR/gateway.redb (the
    /// daemon must not be running), for `qr`.
    QrIndex(QrIndexArgs),
    /// Write the corpus of `qr-index` as Part-10 files (to load a peer through C-STORE).
    QrFiles(QrFilesArgs),
    /// Re-check a manifest written by `store --manifest` against a data directory.
    Verify(VerifyArgs),
    /// Write synthesized objects as Part-10 files (what `store` would send).
    Synth(SynthArgs),
    /// Measure the durable disk ceiling: files of one size written with one sync per batch.
    DiskCeiling(CeilingArgs),
}

/// The corpus shape shared by `qr-index` and `qr`.
#[derive(Debug, Args)]
struct QrCorpusArgs {
    /// Instances in the corpus.
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    instances: u64,
    /// Instances per series.
    #[arg(long, value_name = "N", default_value_t = 50)]
    per_series: u64,
    /// Series per study.
    #[arg(long, value_name = "N", default_value_t = 2)]
    series_per_study: u64,
    /// UID root of the corpus (digits and dots; `qr` must be given the same).
    #[arg(long, value_name = "UID", default_value = "2.25.4242")]
    root: String,
}

impl QrCorpusArgs {
    fn corpus(&self) -> anyhow::Result<qr::Corpus> {
        ensure!(
            self.instances > 0 && self.per_series > 0 && self.series_per_study > 0,
            "--instances, --per-series and --series-per-study must be positive"
        );
        ensure!(
            self.root.len() <= 40 && self.root.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
            "--root must be at most 40 digits and dots"
        );
        Ok(qr::Corpus {
            instances: self.instances,
            per_series: self.per_series,
            series_per_study: self.series_per_study,
        })
    }
}

#[derive(Debug, Args)]
struct QrIndexArgs {
    /// Data directory (created); its gateway.redb gets the corpus.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Instances per index transaction.
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    batch: u64,
    #[command(flatten)]
    corpus: QrCorpusArgs,
}

#[derive(Debug, Args)]
struct QrFilesArgs {
    /// Output directory (created).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    corpus: QrCorpusArgs,
}

#[derive(Debug, Args)]
struct QrArgs {
    /// The Q/R SCP, HOST:PORT.
    target: String,
    /// Concurrent associations.
    #[arg(
        short = 'c',
        long = "concurrency",
        value_name = "N",
        default_value_t = 1
    )]
    concurrency: usize,
    /// Run for this many seconds (default 10 unless -n is given).
    #[arg(short = 'd', long = "duration", value_name = "SECONDS")]
    duration: Option<f64>,
    /// Stop after this many queries.
    #[arg(short = 'n', long = "count", value_name = "COUNT")]
    count: Option<u64>,
    #[command(flatten)]
    corpus: QrCorpusArgs,
    /// Query kinds and weights: patient-id, accession, name, study-uid, date, universal
    /// (default patient-id=30,accession=20,name=20,study-uid=20,date=10).
    #[arg(long, value_name = "KIND=W,...")]
    mix: Option<String>,
    /// Fail every query whose number of matches differs from the corpus's.
    #[arg(long)]
    expect: bool,
    /// Seed of the query choice.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Calling AE title.
    #[arg(long, value_name = "AET", default_value = "LOADGEN")]
    aet: String,
    /// Called AE title.
    #[arg(long, value_name = "AET", default_value = "DICOM_GW")]
    aec: String,
    /// Write the JSON summary to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Network timeout in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    timeout: f64,
    /// Maximum PDU length we announce (for responses).
    #[arg(long = "max-pdu", value_name = "BYTES", default_value_t = 262_144)]
    max_pdu: u32,
}

fn qr_index(a: QrIndexArgs) -> anyhow::Result<ExitCode> {
    let corpus = a.corpus.corpus()?;
    let mut last = std::time::Instant::now();
    let rate = qr::write_index(&a.data_dir, &corpus, &a.corpus.root, a.batch, |done| {
        if last.elapsed() >= Duration::from_secs(5) {
            eprintln!("dicom-loadgen: {done} instances indexed");
            last = std::time::Instant::now();
        }
    })?;
    println!(
        "dicom-loadgen: {} instances in {} studies indexed under {} ({rate:.0} instances/s)",
        corpus.instances,
        corpus.studies(),
        a.data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn qr_files(a: QrFilesArgs) -> anyhow::Result<ExitCode> {
    let corpus = a.corpus.corpus()?;
    let bytes = qr::write_files(&a.out, &corpus, &a.corpus.root)
        .with_context(|| format!("writing under {}", a.out.display()))?;
    println!(
        "dicom-loadgen: {} files ({bytes} bytes) in {} studies under {}",
        corpus.instances,
        corpus.studies(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn qr_cmd(a: QrArgs) -> anyhow::Result<ExitCode> {
    let addr = a
        .target
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", a.target))?
        .next()
        .with_context(|| format!("{} resolves to no address", a.target))?;
    ensure!(
        (1..=4096).contains(&a.concurrency),
        "-c must be between 1 and 4096"
    );
    let mix = qr::Kind::parse_mix(
        a.mix
            .as_deref()
            .unwrap_or("patient-id=30,accession=20,name=20,study-uid=20,date=10"),
    )
    .map_err(|e| anyhow::anyhow!("--mix: {e}"))?;
    ensure!(
        mix.iter().any(|(_, w)| *w > 0.0),
        "--mix has no positive weight"
    );
    let duration = match (a.duration, a.count) {
        (Some(d), _) => Some(secs(d, "-d")?),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let cfg = qr::QrConfig {
        addr,
        target: a.target.clone(),
        calling: a.aet,
        called: a.aec,
        concurrency: a.concurrency,
        duration,
        count: a.count,
        corpus: a.corpus.corpus()?,
        root: a.corpus.root.clone(),
        mix,
        expect: a.expect,
        timeout: secs(a.timeout, "--timeout")?,
        max_pdu: a.max_pdu,
        seed: a.seed,
    };
    let summary = qr::run(cfg);
    print!("{}", summary.report());
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(if summary.errors == 0 && summary.fatal.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Options of `disk-ceiling`.
#[derive(Debug, Args)]
struct CeilingArgs {
    /// Directory to write into (its filesystem is measured; files are left there).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Bytes per file (e.g. 16k, 512k, 50m).
    #[arg(long, value_name = "SIZE", default_value = "16k", value_parser = dicom_loadgen::synth::parse_size)]
    size: u64,
    /// Total files (default 1000 without -d, unbounded with it).
    #[arg(short = 'n', long = "count", value_name = "COUNT")]
    count: Option<u64>,
    /// Stop after this many seconds instead (with -n: whichever ends first).
    #[arg(short = 'd', long = "duration", value_name = "SECONDS")]
    duration: Option<f64>,
    /// Concurrent writers.
    #[arg(
        short = 'c',
        long = "concurrency",
        value_name = "N",
        default_value_t = 1
    )]
    concurrency: usize,
    /// Files per writer between two syncs.
    #[arg(long, value_name = "N", default_value_t = 64)]
    batch: usize,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Options shared by store, echo and find.
#[derive(Debug, Args)]
struct Common {
    /// The SCP, HOST:PORT.
    target: String,
    /// Concurrent associations (one thread each).
    #[arg(
        short = 'c',
        long = "concurrency",
        value_name = "N",
        default_value_t = 1
    )]
    concurrency: usize,
    /// Total requests (default 100; store --dir: one pass over the files).
    #[arg(short = 'n', long = "count", value_name = "COUNT")]
    count: Option<u64>,
    /// Run for this long instead (with -n too: whichever ends first).
    #[arg(short = 'd', long = "duration", value_name = "SECONDS")]
    duration: Option<f64>,
    /// Open loop: send R requests/s across all associations, latency measured from each
    /// request's intended send time (corrected for coordinated omission). Default: closed loop.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Release and reconnect after K requests per association (default: never).
    #[arg(long = "per-association", value_name = "K")]
    per_association: Option<u64>,
    /// Calling AE title.
    #[arg(long, value_name = "AET", default_value = "LOADGEN")]
    aet: String,
    /// Called AE title.
    #[arg(long, value_name = "AET", default_value = "DICOM_GW")]
    aec: String,
    /// Write the JSON summary to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Network timeout in seconds (connect, each read, each write).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,
    /// Maximum PDU length we announce (for responses).
    #[arg(long = "max-pdu", value_name = "BYTES", default_value_t = 262_144)]
    max_pdu: u32,
    /// DICOM TLS (PS3.15 Annex B, TLS 1.2/1.3 ECDHE AES-GCM): verify the SCP's certificate
    /// against the PEM CA certificate(s) in FILE.
    #[arg(long = "tls-ca", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Our PEM client certificate, for SCPs that require one (with --tls-key).
    #[arg(long = "tls-cert", value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// Our PEM private key (with --tls-cert).
    #[arg(long = "tls-key", value_name = "FILE", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Name the SCP's certificate must carry (default: the host of TARGET).
    #[arg(long = "tls-server-name", value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
}

/// How synthetic objects look.
#[derive(Debug, Args)]
struct SynthOpts {
    /// Transfer syntax: implicit, explicit or bigendian.
    #[arg(long, value_name = "TS", default_value = "explicit", value_parser = parse_ts)]
    ts: Ts,
    /// Dataset size(s): 16k, or a mix like 16k,512k or 16k:9,512k:1 (size:weight).
    #[arg(long, value_name = "SIZES", default_value = "16k", value_parser = SizeMix::parse)]
    size: SizeMix,
    /// Instances per series.
    #[arg(long = "series-size", value_name = "N", default_value_t = 100)]
    series_size: u64,
    /// Series per study (one patient per study).
    #[arg(long = "series-per-study", value_name = "N", default_value_t = 1)]
    series_per_study: u64,
    /// SOP Class UID of the objects.
    #[arg(long = "sop-class", value_name = "UID", default_value = CT_IMAGE_STORAGE)]
    sop_class: String,
    /// Modality (0008,0060).
    #[arg(long, value_name = "CS", default_value = "CT")]
    modality: String,
    /// UID root (default: a fresh 2.25.<UUID> per run, so runs never collide).
    #[arg(long = "uid-root", value_name = "UID")]
    uid_root: Option<String>,
}

#[derive(Debug, Args)]
struct StoreArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    synth: SynthOpts,
    /// Send the Part-10 files under DIR verbatim (own transfer syntax), in rotation.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// After the run, check every acknowledged object is stored byte-identically in
    /// DATA_DIR/objects/<Study>/<Series>/<SOP>.dcm.
    #[arg(long, value_name = "DATA_DIR")]
    verify: Option<PathBuf>,
    /// --verify against a flat directory as written by DCMTK storescp (files <prefix>.<SOP>).
    #[arg(long = "verify-flat", value_name = "DIR", conflicts_with = "verify")]
    verify_flat: Option<PathBuf>,
    /// How long verification waits for objects not yet on disk, or not yet complete.
    #[arg(long = "verify-wait", value_name = "SECONDS", default_value_t = 10.0)]
    verify_wait: f64,
    /// Write every acknowledged object (UIDs, blake3 of the dataset) as JSON lines to FILE.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct EchoArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct FindArgs {
    #[command(flatten)]
    common: Common,
    /// Query as JSON: {"PatientName": "DOE*", "ScheduledProcedureStepSequence": {...}} or
    /// DICOM JSON. Default: every scheduled procedure step.
    #[arg(long, value_name = "FILE")]
    query: Option<PathBuf>,
    /// Information model: mwl (default), patient, study, or a SOP Class UID.
    #[arg(long, value_name = "MODEL", default_value = "mwl")]
    model: String,
}

/// The worklist items' layout, shared by `mwl` and `mwl-items` (see `mwl.rs`).
#[derive(Debug, Args)]
struct MwlLayoutArgs {
    /// Number of worklist items.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    items: u32,
    /// Number of scheduled stations (modalities CT, MR, US, CR, DX, MG, NM, XA in rotation).
    #[arg(long, value_name = "N", default_value_t = 40)]
    stations: u32,
    /// Number of distinct dates, centred on --today.
    #[arg(long, value_name = "N", default_value_t = 20)]
    days: u32,
    /// The date queries call today, YYYYMMDD (default: today, UTC).
    #[arg(long, value_name = "YYYYMMDD", value_parser = mwl::parse_date)]
    today: Option<i64>,
}

impl MwlLayoutArgs {
    fn layout(&self) -> anyhow::Result<mwl::Layout> {
        mwl::Layout::new(
            self.items,
            self.stations,
            self.days,
            self.today.unwrap_or_else(mwl::today),
        )
        .map_err(anyhow::Error::msg)
    }
}

#[derive(Debug, Args)]
struct MwlArgs {
    /// The worklist SCP, HOST:PORT.
    target: String,
    /// Concurrent associations, each reused for every query (one thread each).
    #[arg(
        short = 'c',
        long = "concurrency",
        value_name = "N",
        default_value_t = 1
    )]
    concurrency: usize,
    /// Run for this many seconds (default 10 unless -n is given).
    #[arg(short = 'd', long = "duration", value_name = "SECONDS")]
    duration: Option<f64>,
    /// Stop after this many queries (with -d too: whichever ends first).
    #[arg(short = 'n', long = "count", value_name = "COUNT")]
    count: Option<u64>,
    #[command(flatten)]
    layout: MwlLayoutArgs,
    /// Query kinds and weights: station, station-range, modality, patient
    /// (default station=50,station-range=15,modality=15,patient=20).
    #[arg(long, value_name = "KIND=W,...", value_parser = mwl::Mix::parse)]
    mix: Option<mwl::Mix>,
    /// Fail every query whose number of matches differs from the layout's.
    #[arg(long)]
    expect: bool,
    /// Seed of the query choice.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Open loop: R queries/s across all associations (modalities polling at a set rate),
    /// latency from each query's scheduled time. Default: closed loop.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Calling AE title.
    #[arg(long, value_name = "AET", default_value = "LOADGEN")]
    aet: String,
    /// Called AE title.
    #[arg(long, value_name = "AET", default_value = "DICOM_GW")]
    aec: String,
    /// Write the JSON summary to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Network timeout in seconds (connect, each read, each write).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,
    /// Maximum PDU length we announce (for responses).
    #[arg(long = "max-pdu", value_name = "BYTES", default_value_t = 262_144)]
    max_pdu: u32,
    /// DICOM TLS (PS3.15 Annex B, TLS 1.2/1.3 ECDHE AES-GCM): verify the SCP's certificate
    /// against the PEM CA certificate(s) in FILE.
    #[arg(long = "tls-ca", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Our PEM client certificate, for SCPs that require one (with --tls-key).
    #[arg(long = "tls-cert", value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// Our PEM private key (with --tls-cert).
    #[arg(long = "tls-key", value_name = "FILE", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
    /// Name the SCP's certificate must carry (default: the host of TARGET).
    #[arg(long = "tls-server-name", value_name = "NAME", requires = "tls_ca")]
    tls_server_name: Option<String>,
}

#[derive(Debug, Args)]
struct MwlItemsArgs {
    #[command(flatten)]
    layout: MwlLayoutArgs,
    /// Write the items as a DICOM JSON array (for `dicom-gw worklist import`).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the items as Part-10 files DIR/NNNNNN.wl plus DIR/lockfile (for wlmscpfs, whose
    /// data files path holds one such directory per called AE title).
    #[arg(long = "wl-dir", value_name = "DIR")]
    wl_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// dicom-gw data directory (or storescp output directory with --flat).
    data_dir: PathBuf,
    /// Manifest written by `store --manifest`.
    #[arg(long, value_name = "FILE")]
    manifest: PathBuf,
    /// Flat storescp layout instead of objects/<Study>/<Series>/<SOP>.dcm.
    #[arg(long)]
    flat: bool,
    /// How long to wait for objects not yet on disk, or not yet complete.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0)]
    wait: f64,
    /// Write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SynthArgs {
    /// Output directory (created).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Number of files.
    #[arg(
        short = 'n',
        long = "count",
        value_name = "COUNT",
        default_value_t = 10
    )]
    count: u64,
    #[command(flatten)]
    synth: SynthOpts,
}

fn parse_ts(s: &str) -> Result<Ts, String> {
    Ts::parse(s).ok_or_else(|| format!("{s:?}: expected implicit, explicit or bigendian"))
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    ensure!(
        s.is_finite() && s >= 0.0,
        "{what} must be a non-negative number of seconds"
    );
    Ok(Duration::from_secs_f64(s))
}

fn synth_spec(o: &SynthOpts) -> anyhow::Result<SynthSpec> {
    ensure!(o.series_size >= 1, "--series-size must be at least 1");
    ensure!(
        o.series_size <= 2_000_000_000,
        "--series-size must fit an IS value"
    );
    ensure!(
        o.series_per_study >= 1,
        "--series-per-study must be at least 1"
    );
    ensure!(
        o.series_per_study <= 999_999,
        "--series-per-study is at most 999999"
    );
    ensure!(
        !o.sop_class.is_empty() && o.sop_class.len() <= 64,
        "bad --sop-class"
    );
    ensure!(
        o.modality.len() <= 16
            && o.modality
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
        "bad --modality"
    );
    let root = match &o.uid_root {
        Some(r) => UidRoot::new(r).map_err(anyhow::Error::msg)?,
        None => UidRoot::random(),
    };
    Ok(SynthSpec {
        root,
        ts: o.ts,
        sop_class: o.sop_class.clone(),
        modality: o.modality.clone(),
        sizes: o.size.clone(),
        series_size: o.series_size,
        series_per_study: o.series_per_study,
    })
}

fn run_config(c: &Common, default_count: u64, record_sent: bool) -> anyhow::Result<RunConfig> {
    let addr = c
        .target
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", c.target))?
        .next()
        .with_context(|| format!("{} resolves to no address", c.target))?;
    ensure!(
        (1..=4096).contains(&c.concurrency),
        "-c must be between 1 and 4096"
    );
    for (name, ae) in [("--aet", &c.aet), ("--aec", &c.aec)] {
        ensure!(
            !ae.trim().is_empty() && ae.len() <= 16 && ae.is_ascii() && !ae.contains('\\'),
            "{name} must be 1 to 16 ASCII characters"
        );
    }
    if let Some(r) = c.rate {
        ensure!(r.is_finite() && r > 0.0, "--rate must be positive");
    }
    ensure!(
        c.per_association != Some(0),
        "--per-association must be at least 1"
    );
    ensure!(
        (1024..=dicom_ul::pdu::MAXIMUM_PDU_SIZE).contains(&c.max_pdu),
        "--max-pdu must be at least 1024"
    );
    let duration = c.duration.map(|d| secs(d, "-d")).transpose()?;
    let count = match (c.count, duration) {
        (None, None) => Some(default_count),
        (n, _) => n,
    };
    let tls = match &c.tls_ca {
        None => None,
        Some(ca) => {
            let config =
                dicom_gw::tls::client_config(Some(ca), c.tls_cert.as_deref(), c.tls_key.as_deref())
                    .map_err(|e| anyhow::anyhow!("--tls-ca/--tls-cert/--tls-key: {e}"))?;
            let host = c.target.rsplit_once(':').map_or(&*c.target, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some(dicom_loadgen::scu::ScuTls {
                config,
                server_name: c.tls_server_name.clone().unwrap_or_else(|| host.to_owned()),
            })
        }
    };
    Ok(RunConfig {
        addr,
        calling: c.aet.clone(),
        called: c.aec.clone(),
        concurrency: c.concurrency,
        count,
        duration,
        rate: c.rate,
        per_association: c.per_association,
        timeout: secs(c.timeout, "--timeout")?.max(Duration::from_millis(1)),
        max_pdu: c.max_pdu,
        record_sent,
        tls,
    })
}

fn info(c: &Common, op: &Operation) -> RunInfo {
    RunInfo {
        operation: op.name().into(),
        target: c.target.clone(),
        calling_ae: c.aet.clone(),
        called_ae: c.aec.clone(),
        concurrency: c.concurrency,
        rate: c.rate,
        per_association: c.per_association,
        mean_object_bytes: match op {
            Operation::Store(s) => Some(s.mean_size()),
            _ => None,
        },
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

fn exit_code(s: &Summary) -> ExitCode {
    if s.fatal.is_some() {
        ExitCode::from(2)
    } else if s.verify.as_ref().is_some_and(|v| !v.ok()) {
        ExitCode::from(3)
    } else if s.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn finish(c: &Common, summary: &Summary) -> anyhow::Result<ExitCode> {
    print!("{}", summary.report());
    if let Some(p) = &c.json {
        write_json(p, summary)?;
    }
    Ok(exit_code(summary))
}

fn store(a: StoreArgs) -> anyhow::Result<ExitCode> {
    let verify_target = match (&a.verify, &a.verify_flat) {
        (Some(d), _) => Some((d.clone(), Layout::Gw)),
        (_, Some(d)) => Some((d.clone(), Layout::Flat)),
        _ => None,
    };
    let record = verify_target.is_some() || a.manifest.is_some();
    let source = match &a.dir {
        Some(dir) => {
            let (s, skipped) = Source::load_dir(dir, record)
                .with_context(|| format!("loading {}", dir.display()))?;
            if !skipped.is_empty() {
                eprintln!(
                    "dicom-loadgen: skipped {} non-DICOM file(s) under {}",
                    skipped.len(),
                    dir.display()
                );
            }
            s
        }
        None => Source::synthetic(synth_spec(&a.synth)?),
    };
    let default_count = source.pass_len().unwrap_or(100);
    let cfg = run_config(&a.common, default_count, record)?;
    let op = Operation::Store(Arc::new(source));
    let inf = info(&a.common, &op);
    let r = run(cfg, op);
    let mut summary = Summary::new(&inf, &r.stats, r.elapsed, r.fatal);
    if let Some(m) = &a.manifest {
        verify::write_manifest(m, &r.sent).with_context(|| format!("writing {}", m.display()))?;
    }
    if let Some((dir, layout)) = verify_target {
        let wait = secs(a.verify_wait, "--verify-wait")?;
        summary.verify = Some(verify::verify(&r.sent, &dir, layout, wait));
    }
    finish(&a.common, &summary)
}

fn echo(a: EchoArgs) -> anyhow::Result<ExitCode> {
    let cfg = run_config(&a.common, 100, false)?;
    let op = Operation::Echo;
    let inf = info(&a.common, &op);
    let r = run(cfg, op);
    finish(&a.common, &Summary::new(&inf, &r.stats, r.elapsed, r.fatal))
}

fn find(a: FindArgs) -> anyhow::Result<ExitCode> {
    let query = match &a.query {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Query::parse(&text).with_context(|| format!("in {}", p.display()))?
        }
        None => Query::default_worklist(),
    };
    let model = match a.model.as_str() {
        "mwl" | "worklist" => MWL_FIND.to_owned(),
        "patient" => "1.2.840.10008.5.1.4.1.2.1.1".to_owned(),
        "study" => "1.2.840.10008.5.1.4.1.2.2.1".to_owned(),
        uid if uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') && !uid.is_empty() => {
            uid.to_owned()
        }
        other => bail!("--model {other:?}: expected mwl, patient, study or a UID"),
    };
    let cfg = run_config(&a.common, 100, false)?;
    let op = Operation::Find {
        model,
        query: Arc::new(query),
    };
    let inf = info(&a.common, &op);
    let r = run(cfg, op);
    finish(&a.common, &Summary::new(&inf, &r.stats, r.elapsed, r.fatal))
}

fn mwl_cmd(a: MwlArgs) -> anyhow::Result<ExitCode> {
    let addr = a
        .target
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", a.target))?
        .next()
        .with_context(|| format!("{} resolves to no address", a.target))?;
    ensure!(
        (1..=4096).contains(&a.concurrency),
        "-c must be between 1 and 4096"
    );
    for (name, ae) in [("--aet", &a.aet), ("--aec", &a.aec)] {
        ensure!(
            !ae.trim().is_empty() && ae.len() <= 16 && ae.is_ascii() && !ae.contains('\\'),
            "{name} must be 1 to 16 ASCII characters"
        );
    }
    ensure!(
        (1024..=dicom_ul::pdu::MAXIMUM_PDU_SIZE).contains(&a.max_pdu),
        "--max-pdu must be at least 1024"
    );
    if let Some(r) = a.rate {
        ensure!(r.is_finite() && r > 0.0, "--rate must be positive");
    }
    let duration = match (a.duration, a.count) {
        (Some(d), _) => Some(secs(d, "-d")?),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let cfg = mwl::MwlConfig {
        addr,
        target: a.target.clone(),
        calling: a.aet.clone(),
        called: a.aec.clone(),
        concurrency: a.concurrency,
        duration,
        count: a.count,
        layout: a.layout.layout()?,
        mix: a.mix.unwrap_or_else(mwl::Mix::standard),
        expect: a.expect,
        timeout: secs(a.timeout, "--timeout")?.max(Duration::from_millis(1)),
        max_pdu: a.max_pdu,
        seed: a.seed,
        rate: a.rate,
    };
    let s = mwl::run(cfg);
    print!("{}", s.report());
    if let Some(p) = &a.json {
        write_json(p, &s)?;
    }
    Ok(if s.fatal.is_some() {
        ExitCode::from(2)
    } else if s.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn mwl_items(a: MwlItemsArgs) -> anyhow::Result<ExitCode> {
    ensure!(
        a.json.is_some() || a.wl_dir.is_some(),
        "give --json FILE and/or --wl-dir DIR"
    );
    let layout = a.layout.layout()?;
    if let Some(p) = &a.json {
        layout
            .write_json(p)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(d) = &a.wl_dir {
        layout
            .write_wl(d)
            .with_context(|| format!("writing under {}", d.display()))?;
    }
    println!(
        "dicom-loadgen: {} worklist items, {} stations, {} days around {}",
        layout.items,
        layout.stations,
        layout.days,
        dicom_loadgen::synth::civil(layout.base)
    );
    Ok(ExitCode::SUCCESS)
}

fn verify_cmd(a: VerifyArgs) -> anyhow::Result<ExitCode> {
    let records = verify::read_manifest(&a.manifest)
        .with_context(|| format!("reading {}", a.manifest.display()))?;
    let layout = if a.flat { Layout::Flat } else { Layout::Gw };
    let rep: VerifyReport = verify::verify(&records, &a.data_dir, layout, secs(a.wait, "--wait")?);
    print!("{}", rep.report());
    if let Some(p) = &a.json {
        write_json(p, &rep)?;
    }
    Ok(if rep.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

fn synth(a: SynthArgs) -> anyhow::Result<ExitCode> {
    let spec = synth_spec(&a.synth)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let source = Arc::new(Source::synthetic(spec));
    let mut cursor = source.cursor();
    for i in 0..a.count {
        let o = cursor.object(i);
        let mut bytes = encode_meta(o.sop_class, o.sop_instance, o.ts);
        bytes.reserve(o.len());
        bytes.extend_from_slice(o.head);
        bytes.extend_from_slice(o.tail);
        let path = a.out.join(format!("{}.dcm", o.sop_instance));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "dicom-loadgen: wrote {} file(s) to {}",
        a.count,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn disk_ceiling(a: CeilingArgs) -> anyhow::Result<ExitCode> {
    ensure!(a.batch >= 1, "--batch must be at least 1");
    let cfg = dicom_loadgen::ceiling::CeilingConfig {
        dir: a.dir.clone(),
        size: usize::try_from(a.size).context("--size")?,
        count: a
            .count
            .unwrap_or(if a.duration.is_some() { u64::MAX } else { 1000 }),
        duration: a.duration.map(Duration::from_secs_f64),
        threads: a.concurrency,
        batch: a.batch,
    };
    let r = dicom_loadgen::ceiling::run(&cfg)
        .with_context(|| format!("writing into {}", a.dir.display()))?;
    println!(
        "disk ceiling: {} files of {} B in {:.2} s: {:.0} files/s, {:.1} MB/s, {} syncs",
        r.files, a.size, r.elapsed_s, r.files_per_s, r.mb_per_s, r.syncs
    );
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&r)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Store(a) => store(a),
        Cmd::DiskCeiling(a) => disk_ceiling(a),
        Cmd::Echo(a) => echo(a),
        Cmd::Find(a) => find(a),
        Cmd::Mwl(a) => mwl_cmd(a),
        Cmd::MwlItems(a) => mwl_items(a),
        Cmd::Qr(a) => qr_cmd(a),
        Cmd::QrIndex(a) => qr_index(a),
        Cmd::QrFiles(a) => qr_files(a),
        Cmd::Verify(a) => verify_cmd(a),
        Cmd::Synth(a) => synth(a),
    };
    r.unwrap_or_else(|e| {
        eprintln!("dicom-loadgen: error: {e:#}");
        ExitCode::from(2)
    })
}
