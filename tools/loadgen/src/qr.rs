//! Query/Retrieve C-FIND load against a large index: a deterministic corpus written straight
//! into a data directory's index (`qr-index`), and a closed-loop study-level query mix over it
//! (`qr`), the way viewers and PACS ask.
//!
//! Why synthesize into the index rather than send objects: the benchmark is about the query
//! side at a million instances; storing a million objects through C-STORE would take most of
//! an hour on the benchmark machine and measure the ingest again. The index rows are made
//! exactly as ingest makes them: each instance's dataset is encoded (explicit VR little
//! endian), then [`dicom_gw::store::attrs::extract`] and [`dicom_gw::store::index::put_instance`]
//! run on it, so the query tables, computed keys and attribute lists are the real ones.
//!
//! Corpus, instance `i` of `n` (`P` instances per series, `S` series per study):
//! - series `i / P`, study `i / (P·S)`; one patient per study;
//! - study `k`: PatientID `QRP<k:08>`, PatientName `QRNAME^P<k:08>`, AccessionNumber
//!   `QRA<k:010>`, StudyDate `20150101 + (k % 4000)` days, Modality of series `j` from
//!   [`MODALITIES`] in rotation; UIDs `<root>.1.<k>` (study), `.2.<series>`, `.3.<i>`.
//!
//! Query kinds (study level, Study Root, the same return keys: patient, study, accession,
//! date, ModalitiesInStudy, NumberOfStudyRelatedSeries/Instances):
//! - `patient-id`: PatientID exact (1 match);
//! - `accession`: AccessionNumber exact (1);
//! - `name`: PatientName prefix wildcard `QRNAME^P<k:08>*` (1);
//! - `study-uid`: StudyInstanceUID (1);
//! - `date`: one StudyDate (studies / 4000, at least 1 where the study count reaches it);
//! - `universal`: every study (as many as the SCP's result cap lets through).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use dicom_loadgen::dataset::{Encoder, Ts, EXPLICIT_LE};
use dicom_loadgen::scu::{Association, ScuError};
use dicom_loadgen::stats::Percentiles;

use crate::find_load::{c_find, cumulative, find_params, Drive, Queries, Rng};

/// Study Root Query/Retrieve Information Model – FIND.
pub const STUDY_ROOT_FIND: &str = "1.2.840.10008.5.1.4.1.2.2.1";
/// Modalities of the series, in rotation.
pub const MODALITIES: [&str; 5] = ["CT", "MR", "US", "CR", "DX"];
/// Distinct study dates.
const DATES: u64 = 4000;
/// CT Image Storage.
const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

/// The corpus shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Corpus {
    /// Instances in the index.
    pub instances: u64,
    /// Instances per series.
    pub per_series: u64,
    /// Series per study.
    pub series_per_study: u64,
}

impl Corpus {
    /// Instances per study.
    pub fn per_study(&self) -> u64 {
        self.per_series * self.series_per_study
    }

    /// Studies in the index.
    pub fn studies(&self) -> u64 {
        self.instances.div_ceil(self.per_study())
    }
}

/// Days since 1970-01-01 → YYYYMMDD (H. Hinnant's algorithm).
fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// 2015-01-01 in days since the epoch.
const BASE_DAY: i64 = 16_436;

fn study_date(k: u64) -> String {
    date(BASE_DAY + (k % DATES) as i64)
}

fn text(e: &mut Encoder, g: u16, el: u16, vr: &[u8; 2], v: &str) {
    e.element(g, el, *vr, v.as_bytes());
}

fn uid(e: &mut Encoder, g: u16, el: u16, v: &str) {
    let mut b = v.as_bytes().to_vec();
    if b.len() % 2 == 1 {
        b.push(0);
    }
    e.element(g, el, *b"UI", &b);
}

/// The dataset of instance `i` (explicit VR little endian, no pixel data).
pub fn instance_dataset(c: &Corpus, root: &str, i: u64) -> Vec<u8> {
    let series = i / c.per_series;
    let k = i / c.per_study();
    let modality = MODALITIES[(series % MODALITIES.len() as u64) as usize];
    let mut e = Encoder::new(Ts::ExplicitLe);
    text(&mut e, 0x0008, 0x0005, b"CS", "ISO_IR 100");
    uid(&mut e, 0x0008, 0x0016, CT);
    uid(&mut e, 0x0008, 0x0018, &format!("{root}.3.{i}"));
    text(&mut e, 0x0008, 0x0020, b"DA", &study_date(k));
    text(&mut e, 0x0008, 0x0030, b"TM", "101500");
    text(&mut e, 0x0008, 0x0050, b"SH", &format!("QRA{k:010}"));
    text(&mut e, 0x0008, 0x0060, b"CS", modality);
    text(&mut e, 0x0008, 0x0090, b"PN", "REFERRER^R");
    text(&mut e, 0x0008, 0x1030, b"LO", "SYNTHETIC STUDY");
    text(&mut e, 0x0008, 0x103E, b"LO", "SYNTHETIC SERIES");
    text(&mut e, 0x0010, 0x0010, b"PN", &format!("QRNAME^P{k:08}"));
    text(&mut e, 0x0010, 0x0020, b"LO", &format!("QRP{k:08}"));
    text(&mut e, 0x0010, 0x0030, b"DA", "19700101");
    text(
        &mut e,
        0x0010,
        0x0040,
        b"CS",
        if k.is_multiple_of(2) { "F" } else { "M" },
    );
    uid(&mut e, 0x0020, 0x000D, &format!("{root}.1.{k}"));
    uid(&mut e, 0x0020, 0x000E, &format!("{root}.2.{series}"));
    text(&mut e, 0x0020, 0x0010, b"SH", &format!("{}", k % 100_000));
    text(
        &mut e,
        0x0020,
        0x0011,
        b"IS",
        &format!("{}", series % c.series_per_study + 1),
    );
    text(
        &mut e,
        0x0020,
        0x0013,
        b"IS",
        &format!("{}", i % c.per_series + 1),
    );
    e.buf
}

/// Writes the corpus into `data_dir/gateway.redb` (created if missing), `batch` instances
/// per transaction; returns instances written per second.
pub fn write_index(
    data_dir: &Path,
    c: &Corpus,
    root: &str,
    batch: u64,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<f64> {
    use dicom_gw::store::index::{self, Index, InstanceRecord};
    std::fs::create_dir_all(data_dir)?;
    let idx = Index::open(&data_dir.join("gateway.redb"))?;
    let started = Instant::now();
    let mut i = 0;
    while i < c.instances {
        let end = (i + batch.max(1)).min(c.instances);
        let tx = idx.database().begin_write()?;
        for n in i..end {
            let ds = instance_dataset(c, root, n);
            let attrs = dicom_gw::store::attrs::extract(&ds, EXPLICIT_LE, true)?;
            let rec = InstanceRecord {
                sop_instance_uid: attrs.sop_instance_uid.clone(),
                sop_class_uid: attrs.sop_class_uid.clone(),
                study_instance_uid: attrs.study_instance_uid.clone(),
                series_instance_uid: attrs.series_instance_uid.clone(),
                instance_number: attrs.instance_number.clone(),
                transfer_syntax_uid: EXPLICIT_LE.to_owned(),
                file_size: ds.len() as u64 + 256,
                dataset_size: ds.len() as u64,
                dataset_blake3: blake3::hash(&ds).to_hex().to_string(),
                received_at_us: 0,
                calling_ae_title: "QRSYNTH".into(),
                called_ae_title: "DICOM_GW".into(),
                path: format!(
                    "objects/{}/{}/{}.dcm",
                    attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid
                ),
            };
            index::put_instance(&tx, &rec, &attrs, false)?;
        }
        tx.commit()?;
        i = end;
        progress(i);
    }
    Ok(c.instances as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

/// Writes the corpus as Part-10 files `DIR/<i>.dcm` (to load peers such as Orthanc through
/// C-STORE with `store --dir`); returns the bytes written.
pub fn write_files(dir: &Path, c: &Corpus, root: &str) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut total = 0;
    for i in 0..c.instances {
        let ds = instance_dataset(c, root, i);
        let mut file =
            dicom_loadgen::dataset::encode_meta(CT, &format!("{root}.3.{i}"), EXPLICIT_LE);
        file.extend_from_slice(&ds);
        total += file.len() as u64;
        std::fs::write(dir.join(format!("{i:08}.dcm")), &file)?;
    }
    Ok(total)
}

/// A study-level query kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// PatientID exact.
    PatientId,
    /// AccessionNumber exact.
    Accession,
    /// PatientName prefix wildcard.
    Name,
    /// StudyInstanceUID.
    StudyUid,
    /// One StudyDate.
    Date,
    /// Every study.
    Universal,
}

impl Kind {
    /// The kind's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::PatientId => "patient-id",
            Kind::Accession => "accession",
            Kind::Name => "name",
            Kind::StudyUid => "study-uid",
            Kind::Date => "date",
            Kind::Universal => "universal",
        }
    }

    /// Parses `KIND=W,...`.
    pub fn parse_mix(s: &str) -> Result<Vec<(Kind, f64)>, String> {
        let all = [
            Kind::PatientId,
            Kind::Accession,
            Kind::Name,
            Kind::StudyUid,
            Kind::Date,
            Kind::Universal,
        ];
        s.split(',')
            .map(|part| {
                let (k, w) = part.split_once('=').unwrap_or((part, "1"));
                let kind = all
                    .iter()
                    .find(|x| x.name() == k.trim())
                    .ok_or_else(|| format!("unknown query kind {k:?}"))?;
                let w: f64 = w.trim().parse().map_err(|_| format!("bad weight {w:?}"))?;
                if !(w >= 0.0 && w.is_finite()) {
                    return Err(format!("bad weight {w}"));
                }
                Ok((*kind, w))
            })
            .collect()
    }
}

/// The identifier of one query on study `k`, in `ts`.
pub fn identifier(kind: Kind, root: &str, k: u64, ts: Ts) -> Vec<u8> {
    let mut e = Encoder::new(ts);
    let (date, acc, name, pid, study) = match kind {
        Kind::PatientId => (
            String::new(),
            String::new(),
            String::new(),
            format!("QRP{k:08}"),
            String::new(),
        ),
        Kind::Accession => (
            String::new(),
            format!("QRA{k:010}"),
            String::new(),
            String::new(),
            String::new(),
        ),
        Kind::Name => (
            String::new(),
            String::new(),
            format!("QRNAME^P{k:08}*"),
            String::new(),
            String::new(),
        ),
        Kind::StudyUid => (
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            format!("{root}.1.{k}"),
        ),
        Kind::Date => (
            study_date(k),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ),
        Kind::Universal => Default::default(),
    };
    text(&mut e, 0x0008, 0x0020, b"DA", &date);
    text(&mut e, 0x0008, 0x0050, b"SH", &acc);
    text(&mut e, 0x0008, 0x0052, b"CS", "STUDY");
    text(&mut e, 0x0008, 0x0061, b"CS", "");
    text(&mut e, 0x0010, 0x0010, b"PN", &name);
    text(&mut e, 0x0010, 0x0020, b"LO", &pid);
    uid(&mut e, 0x0020, 0x000D, &study);
    text(&mut e, 0x0020, 0x1206, b"IS", "");
    text(&mut e, 0x0020, 0x1208, b"IS", "");
    e.buf
}

/// Matches a query of `kind` must return on the corpus (`None`: depends on the SCP's cap).
pub fn expected(kind: Kind, c: &Corpus, k: u64) -> Option<u64> {
    match kind {
        Kind::Universal => None,
        Kind::Date => {
            let s = c.studies();
            let d = k % DATES;
            Some(s / DATES + u64::from(d < s % DATES))
        }
        _ => Some(1),
    }
}

/// Run parameters of `dicom-loadgen qr`.
#[derive(Debug, Clone)]
pub struct QrConfig {
    /// Peer address.
    pub addr: SocketAddr,
    /// HOST:PORT as given.
    pub target: String,
    /// Calling AE title.
    pub calling: String,
    /// Called AE title.
    pub called: String,
    /// Associations (threads).
    pub concurrency: usize,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many queries.
    pub count: Option<u64>,
    /// The corpus the peer holds.
    pub corpus: Corpus,
    /// The corpus's UID root.
    pub root: String,
    /// Query kinds and weights.
    pub mix: Vec<(Kind, f64)>,
    /// Check match counts.
    pub expect: bool,
    /// Network timeout.
    pub timeout: Duration,
    /// Maximum PDU length we announce.
    pub max_pdu: u32,
    /// Seed of the query choice.
    pub seed: u64,
}

/// One kind's figures.
#[derive(Debug, Clone, Serialize)]
pub struct KindSummary {
    /// Queries sent.
    pub queries: u64,
    /// Answered 0000 with the expected count.
    pub ok: u64,
    /// Pending responses received.
    pub matches: u64,
    /// Mean matches per query.
    pub mean_matches: f64,
    /// Queries whose count differed.
    pub mismatches: u64,
    /// Pending responses per second of this kind's own query time (the streaming rate).
    pub responses_per_busy_s: f64,
    /// Latency, C-FIND-RQ sent → final response, ms.
    pub latency_ms: Percentiles,
}

/// The run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct QrSummary {
    /// "qr".
    pub operation: String,
    /// Target.
    pub target: String,
    /// Associations.
    pub concurrency: usize,
    /// The corpus.
    pub corpus: Corpus,
    /// Seconds.
    pub elapsed_s: f64,
    /// Queries sent.
    pub queries: u64,
    /// Successful.
    pub ok: u64,
    /// Failed (status, network, count).
    pub errors: u64,
    /// Errors by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Queries per second.
    pub queries_per_s: f64,
    /// Responses per second (all kinds).
    pub responses_per_s: f64,
    /// All kinds.
    pub latency_ms: Percentiles,
    /// Per kind.
    pub kinds: BTreeMap<String, KindSummary>,
    /// Why the run stopped early.
    pub fatal: Option<String>,
}

impl QrSummary {
    /// The human-readable report.
    pub fn report(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "dicom-loadgen qr -> {}, {} association(s), {} instances in {} studies",
            self.target,
            self.concurrency,
            self.corpus.instances,
            self.corpus.studies()
        );
        let _ = writeln!(
            o,
            "  queries      {} in {:.3} s: {} ok, {} errors",
            self.queries, self.elapsed_s, self.ok, self.errors
        );
        let _ = writeln!(
            o,
            "  throughput   {:.1} queries/s, {:.1} responses/s",
            self.queries_per_s, self.responses_per_s
        );
        let l = &self.latency_ms;
        let _ = writeln!(
            o,
            "  latency      p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3} ms",
            l.p50, l.p90, l.p99, l.max
        );
        for (k, s) in &self.kinds {
            let _ = writeln!(
                o,
                "  {k:<11} {:>7} queries, {:>8.1} matches each, p50 {:.3}  p99 {:.3} ms, {:.0} responses/s while querying",
                s.queries, s.mean_matches, s.latency_ms.p50, s.latency_ms.p99, s.responses_per_busy_s
            );
        }
        if !self.errors_by_kind.is_empty() {
            let list: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect();
            let _ = writeln!(o, "  errors: {}", list.join(", "));
        }
        if let Some(f) = &self.fatal {
            let _ = writeln!(o, "  STOPPED: {f}");
        }
        o
    }
}

/// The study-level queries over a corpus.
struct QrQueries<'a>(&'a QrConfig);

impl Queries for QrQueries<'_> {
    type Kind = Kind;
    /// The kind, and the study its key values come from.
    type Query = (Kind, u64);

    fn draw(&self, kind: Kind, rng: &mut Rng) -> (Kind, u64) {
        (kind, rng.next() % self.0.corpus.studies().max(1))
    }

    fn send(
        &self,
        a: &mut Association,
        id: u16,
        &(kind, k): &(Kind, u64),
    ) -> Result<(u16, u64), ScuError> {
        find(a, id, kind, &self.0.root, k)
    }

    fn expected(&self, &(kind, k): &(Kind, u64)) -> Option<u64> {
        expected(kind, &self.0.corpus, k)
    }

    fn name(&self, kind: Kind) -> &'static str {
        kind.name()
    }
}

/// Runs the query load; blocks until every worker is done.
pub fn run(cfg: QrConfig) -> QrSummary {
    let drive = Drive {
        params: find_params(
            cfg.addr,
            &cfg.calling,
            &cfg.called,
            cfg.max_pdu,
            cfg.timeout,
            STUDY_ROOT_FIND,
        ),
        concurrency: cfg.concurrency,
        duration: cfg.duration,
        count: cfg.count,
        rate: None,
        seed: cfg.seed,
        expect: cfg.expect,
        thread_name: "qr",
    };
    let out = crate::find_load::drive(
        &drive,
        &QrQueries(&cfg),
        &cumulative(cfg.mix.iter().copied()),
    );
    let secs = out.elapsed.as_secs_f64().max(1e-9);
    let all = out.all();
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    QrSummary {
        operation: "qr".into(),
        target: cfg.target.clone(),
        concurrency: cfg.concurrency,
        corpus: cfg.corpus,
        elapsed_s: (secs * 1e6).round() / 1e6,
        queries: all.queries,
        ok: all.ok,
        errors: out.errors.values().sum(),
        errors_by_kind: out.errors,
        queries_per_s: round2(all.ok as f64 / secs),
        responses_per_s: round2(all.matches as f64 / secs),
        latency_ms: Percentiles::of(&all.latency),
        kinds: out
            .kinds
            .iter()
            .map(|(k, s)| {
                let done = s.latency.len().max(1) as f64;
                (
                    k.name().to_owned(),
                    KindSummary {
                        queries: s.queries,
                        ok: s.ok,
                        matches: s.matches,
                        mean_matches: round2(s.matches as f64 / done),
                        mismatches: s.mismatches,
                        // Per association: one query's responses over its own duration.
                        responses_per_busy_s: round2(
                            s.matches as f64 / (s.busy_us as f64 / 1e6).max(1e-9),
                        ),
                        latency_ms: Percentiles::of(&s.latency),
                    },
                )
            })
            .collect(),
        fatal: out.fatal,
    }
}

/// Upper bound on pending responses to one query.
const MAX_PENDING: u64 = 10_000_000;

/// One C-FIND: (final status, pending responses).
fn find(
    a: &mut Association,
    id: u16,
    kind: Kind,
    root: &str,
    k: u64,
) -> Result<(u16, u64), ScuError> {
    let ctx = a.any_context(STUDY_ROOT_FIND)?;
    let ts = if ctx.transfer_syntax == EXPLICIT_LE {
        Ts::ExplicitLe
    } else {
        Ts::ImplicitLe
    };
    let pc = ctx.id;
    let identifier = identifier(kind, root, k, ts);
    c_find(a, id, STUDY_ROOT_FIND, pc, &identifier, MAX_PENDING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_expected_counts_follow_the_layout() {
        assert_eq!(date(BASE_DAY), "20150101");
        assert_eq!(date(BASE_DAY + 59), "20150301");
        let c = Corpus {
            instances: 1_000_000,
            per_series: 50,
            series_per_study: 2,
        };
        assert_eq!(c.studies(), 10_000);
        // 10,000 studies over 4,000 dates: the first 2,000 dates have 3, the others 2.
        assert_eq!(expected(Kind::Date, &c, 0), Some(3));
        assert_eq!(expected(Kind::Date, &c, 1999), Some(3));
        assert_eq!(expected(Kind::Date, &c, 2000), Some(2));
        assert_eq!(expected(Kind::PatientId, &c, 5), Some(1));
        assert_eq!(expected(Kind::Universal, &c, 5), None);
    }

    #[test]
    fn synthesized_instances_index_with_their_keys() {
        let c = Corpus {
            instances: 400,
            per_series: 50,
            series_per_study: 2,
        };
        let ds = instance_dataset(&c, "2.25.1", 150);
        let a = dicom_gw::store::attrs::extract(&ds, EXPLICIT_LE, true).unwrap();
        assert_eq!(a.sop_instance_uid, "2.25.1.3.150");
        assert_eq!(a.study_instance_uid, "2.25.1.1.1");
        assert_eq!(a.series_instance_uid, "2.25.1.2.3");
        assert_eq!(a.patient_id, "QRP00000001");
        assert_eq!(a.modality, "CR");
        assert_eq!(a.study_date, date(BASE_DAY + 1));
    }

    #[test]
    fn mix_parses_kinds_and_weights() {
        let m = Kind::parse_mix("patient-id=2,universal").unwrap();
        assert_eq!(m, vec![(Kind::PatientId, 2.0), (Kind::Universal, 1.0)]);
        assert!(Kind::parse_mix("nope=1").is_err());
    }
}
