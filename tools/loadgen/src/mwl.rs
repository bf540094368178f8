//! Modality Worklist load: a deterministic set of worklist items and a closed-loop C-FIND
//! query mix over them, the way modalities ask.
//!
//! [`Layout`] defines the items (`dicom-loadgen mwl-items` writes them as a DICOM JSON array
//! for `dicom-gw worklist import` and/or as Part-10 `.wl` files for DCMTK `wlmscpfs`), and the
//! same layout tells the query side which stations, modalities, dates and patients exist and
//! how many items each query must match (`--expect`).
//!
//! Item `i` of `n`, with `S` stations and `D` days centred on the base date ("today"):
//! - station `i % S`, AE title `<modality><nn>` (`CT00`, `MR01`, …, eight modalities in
//!   rotation, so each modality has `S / 8` stations);
//! - day `(i / S) % D`: dates from `base - D/2` to `base + D/2 - 1`;
//! - start time `07:00 + 45 min × ((i / (S·D)) % 16)`;
//! - patient `i / 3` (three consecutive steps, at neighbouring stations, per patient).
//!
//! With the defaults (10,000 items, 40 stations, 20 days) a station has 12–13 steps a day.
//!
//! Query kinds (weights with `--mix`), each with the same return keys (patient, accession,
//! study, requested procedure and the step's modality, station, date, time, performer, …):
//! - `station`: ScheduledStationAETitle + today (12 matches);
//! - `station-range`: ScheduledStationAETitle + yesterday..tomorrow (37);
//! - `modality`: Modality + today + a 4-hour start time window (5–30);
//! - `patient`: PatientID exact, any date (1–3).
//!
//! The runner: `-c` threads, each opening one association up front and reusing it for every
//! query (a new one only after an error), all started together on a barrier; latency is
//! C-FIND-RQ sent → final C-FIND-RSP received, in an HDR histogram per kind. Closed loop by
//! default; with a rate, open loop: query `i` is due at `start + i / rate` and its latency
//! counts from then (a stalled server shows as latency, not as a slower client). A query fails on
//! any status other than Pending (FF00/FF01) and Success (0000), on a network or protocol
//! error, and with `--expect` when its match count differs from the layout's.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dicom_loadgen::synth::civil;
use serde::Serialize;
use serde_json::{json, Value};

use dicom_loadgen::dataset::{encode_meta, Ts, EXPLICIT_LE};
use dicom_loadgen::query::Query;
use dicom_loadgen::run::MWL_FIND;
use dicom_loadgen::scu::{Association, ScuError};
use dicom_loadgen::stats::Percentiles;

use crate::find_load::{c_find, cumulative, find_params, Drive, Outcome, Queries, Rng};

/// Modalities assigned to stations in rotation.
pub const MODALITIES: [&str; 8] = ["CT", "MR", "US", "CR", "DX", "MG", "NM", "XA"];
const SURNAMES: [&str; 12] = [
    "SMITH", "JONES", "MULLER", "GARCIA", "ROSSI", "DUPONT", "NOVAK", "SILVA", "KIM", "SATO",
    "NIELSEN", "OKAFOR",
];
const GIVEN: [&str; 8] = [
    "ANNA", "BEN", "CLARA", "DAVID", "EVA", "FELIX", "GRETA", "HUGO",
];
/// Start-time windows of the `modality` query (HHMM-HHMM).
const WINDOWS: [(&str, u32, u32); 3] = [
    ("0700-1059", 7 * 60, 10 * 60 + 59),
    ("1100-1459", 11 * 60, 14 * 60 + 59),
    ("1500-1859", 15 * 60, 18 * 60 + 59),
];
/// Items per patient.
const PER_PATIENT: u32 = 3;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses YYYYMMDD into days since 1970-01-01.
pub fn parse_date(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?}: expected a date YYYYMMDD");
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let y: i64 = s[..4].parse().map_err(|_| bad())?;
    let m: u32 = s[4..6].parse().map_err(|_| bad())?;
    let d: u32 = s[6..].parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let days = days_from_civil(y, m, d);
    if civil(days) != s {
        return Err(bad());
    }
    Ok(days)
}

/// Today (UTC) in days since 1970-01-01.
pub fn today() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (secs / 86_400) as i64
}

/// The worklist items of a benchmark: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Number of items.
    pub items: u32,
    /// Number of stations (each with one modality).
    pub stations: u32,
    /// Number of distinct dates.
    pub days: u32,
    /// "Today", in days since 1970-01-01: the dates run from `base - days/2`.
    pub base: i64,
}

/// The parts of item `i` that queries look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Facts {
    station: u32,
    /// Day offset from the base date.
    day: i64,
    /// Minutes after midnight.
    minute: u32,
    patient: u32,
}

impl Layout {
    /// Checks the numbers.
    pub fn new(items: u32, stations: u32, days: u32, base: i64) -> Result<Layout, String> {
        if items == 0 || stations == 0 || days == 0 {
            return Err("items, stations and days must be at least 1".into());
        }
        if stations > 100 {
            return Err("at most 100 stations".into());
        }
        Ok(Layout {
            items,
            stations,
            days,
            base,
        })
    }

    fn facts(&self, i: u32) -> Facts {
        let (s, d) = (self.stations, self.days);
        Facts {
            station: i % s,
            day: i64::from((i / s) % d) - i64::from(d / 2),
            minute: 7 * 60 + 45 * ((i / (s * d)) % 16),
            patient: i / PER_PATIENT,
        }
    }

    fn station_ae(&self, s: u32) -> String {
        format!("{}{s:02}", self.modality(s))
    }

    fn modality(&self, s: u32) -> &'static str {
        MODALITIES[(s as usize) % MODALITIES.len()]
    }

    fn date(&self, offset: i64) -> String {
        civil(self.base + offset)
    }

    fn patients(&self) -> u32 {
        self.items.div_ceil(PER_PATIENT)
    }

    fn patient_id(p: u32) -> String {
        format!("P{p:07}")
    }

    /// Item `i` as DICOM JSON, with every attribute `wlmscpfs` requires of a worklist file
    /// (after DCMTK's `wklist1.dump`).
    pub fn item(&self, i: u32) -> Value {
        let f = self.facts(i);
        let modality = self.modality(f.station);
        let p = f.patient as usize;
        let name = format!(
            "{}^{}",
            SURNAMES[p % SURNAMES.len()],
            GIVEN[(p / SURNAMES.len()) % GIVEN.len()]
        );
        let birth = civil(days_from_civil(1940, 1, 1) + (f.patient as i64 * 37) % 25_000);
        let sex = ["F", "M", "O"][p % 3];
        let time = format!("{:02}{:02}00", f.minute / 60, f.minute % 60);
        let s = |vr: &str, v: &str| json!({"vr": vr, "Value": [v]});
        let empty = |vr: &str| json!({ "vr": vr });
        json!({
            "00080005": s("CS", "ISO_IR 100"),
            "00080050": s("SH", &format!("A{i:08}")),
            "00080090": {"vr": "PN", "Value": [{"Alphabetic": "REFERRER^RITA"}]},
            "00081110": empty("SQ"),
            "00081120": empty("SQ"),
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]},
            "00100020": s("LO", &Self::patient_id(f.patient)),
            "00100030": s("DA", &birth),
            "00100040": s("CS", sex),
            "00102000": empty("LO"),
            "00102110": empty("LO"),
            "0020000D": s("UI", &format!("2.25.{}", 190_000_000_000_000_000_000u128 + u128::from(i))),
            "00321032": {"vr": "PN", "Value": [{"Alphabetic": "REQUESTER^ROB"}]},
            "00321060": s("LO", &format!("{modality} examination {}", i % 7)),
            "00400100": {"vr": "SQ", "Value": [{
                "00080060": s("CS", modality),
                "00321070": empty("LO"),
                "00400001": s("AE", &self.station_ae(f.station)),
                "00400002": s("DA", &self.date(f.day)),
                "00400003": s("TM", &time),
                "00400006": {"vr": "PN", "Value": [{"Alphabetic": "TECH^TOM"}]},
                "00400007": s("LO", &format!("{modality} step")),
                "00400009": s("SH", &format!("S{i:08}")),
                "00400010": s("SH", &format!("STATION{:02}", f.station)),
                "00400011": s("SH", &format!("ROOM{:02}", f.station)),
                "00400012": empty("LO"),
                "00400400": empty("LT"),
            }]},
            "00401001": s("SH", &format!("R{i:08}")),
            "00401003": s("SH", "ROUTINE"),
        })
    }

    /// Writes every item as a DICOM JSON array to `path`.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let items: Vec<Value> = (0..self.items).map(|i| self.item(i)).collect();
        std::fs::write(path, serde_json::to_vec(&items)?)
    }

    /// Writes every item as a Part-10 file `<i>.wl` (Explicit VR Little Endian) under `dir`,
    /// plus the empty `lockfile` wlmscpfs insists on.
    pub fn write_wl(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for i in 0..self.items {
            let q = Query::parse(&self.item(i).to_string())
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut bytes = encode_meta(
                MWL_FIND,
                &format!("2.25.{}", 290_000_000_000_000_000_000u128 + u128::from(i)),
                EXPLICIT_LE,
            );
            bytes.extend_from_slice(&q.encode(Ts::ExplicitLe));
            std::fs::write(dir.join(format!("{i:06}.wl")), bytes)?;
        }
        std::fs::write(dir.join("lockfile"), b"")
    }
}

/// A kind of query in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Station AE title + today.
    Station,
    /// Station AE title + yesterday..tomorrow.
    StationRange,
    /// Modality + today + a start time window.
    Modality,
    /// Patient ID, any date.
    Patient,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [
        Kind::Station,
        Kind::StationRange,
        Kind::Modality,
        Kind::Patient,
    ];

    /// Name in `--mix` and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Station => "station",
            Kind::StationRange => "station-range",
            Kind::Modality => "modality",
            Kind::Patient => "patient",
        }
    }
}

/// Relative weights of the query kinds.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix(pub Vec<(Kind, f64)>);

impl Mix {
    /// The default: 50 % station today, 15 % station over three days, 15 % modality + time
    /// window, 20 % patient ID.
    pub fn standard() -> Mix {
        Mix(vec![
            (Kind::Station, 50.0),
            (Kind::StationRange, 15.0),
            (Kind::Modality, 15.0),
            (Kind::Patient, 20.0),
        ])
    }

    /// Parses `station=50,patient=20,…` (kinds left out get weight 0).
    pub fn parse(s: &str) -> Result<Mix, String> {
        let mut v = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, w) = part.split_once('=').unwrap_or((part, "1"));
            let kind = Kind::ALL
                .into_iter()
                .find(|x| x.name() == k.trim())
                .ok_or_else(|| {
                    format!("unknown query kind {k:?} (station, station-range, modality, patient)")
                })?;
            let w: f64 = w.trim().parse().map_err(|_| format!("{w:?}: bad weight"))?;
            if !(w.is_finite() && w >= 0.0) {
                return Err(format!("{w}: bad weight"));
            }
            v.push((kind, w));
        }
        if v.iter().map(|x| x.1).sum::<f64>() <= 0.0 {
            return Err("the mix needs a positive weight".into());
        }
        Ok(Mix(v))
    }
}

/// One concrete query: its identifier in both little-endian syntaxes and its match count.
#[derive(Debug, Clone)]
struct Instance {
    ids: [Vec<u8>; 2],
    expected: u64,
}

/// Return keys every query asks for, as a keyword map; `sps` holds the step's keys.
fn identifier(top: &[(&str, &str)], sps: &[(&str, &str)]) -> Query {
    let mut root = serde_json::Map::new();
    for k in [
        "SpecificCharacterSet",
        "AccessionNumber",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "RequestingPhysician",
        "RequestedProcedureDescription",
        "RequestedProcedureID",
        "RequestedProcedurePriority",
    ] {
        root.insert(k.into(), Value::String(String::new()));
    }
    let mut step = serde_json::Map::new();
    for k in [
        "Modality",
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
        "ScheduledPerformingPhysicianName",
        "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepID",
        "ScheduledStationName",
        "ScheduledProcedureStepLocation",
    ] {
        step.insert(k.into(), Value::String(String::new()));
    }
    for (k, v) in top {
        root.insert((*k).into(), Value::String((*v).into()));
    }
    for (k, v) in sps {
        step.insert((*k).into(), Value::String((*v).into()));
    }
    root.insert("ScheduledProcedureStepSequence".into(), Value::Object(step));
    Query::parse(&Value::Object(root).to_string()).expect("built-in identifiers are valid")
}

/// Every concrete query of each kind, with expected match counts from the layout.
fn instances(l: &Layout) -> BTreeMap<Kind, Vec<Instance>> {
    let mut per_station_day: BTreeMap<(u32, i64), u64> = BTreeMap::new();
    let mut per_modality_window: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut per_patient: BTreeMap<u32, u64> = BTreeMap::new();
    for i in 0..l.items {
        let f = l.facts(i);
        *per_station_day.entry((f.station, f.day)).or_default() += 1;
        if f.day == 0 {
            let m = (f.station as usize) % MODALITIES.len();
            if let Some(w) = WINDOWS.iter().position(|w| (w.1..=w.2).contains(&f.minute)) {
                *per_modality_window.entry((m, w)).or_default() += 1;
            }
        }
        *per_patient.entry(f.patient).or_default() += 1;
    }
    let enc = |q: Query, expected: u64| Instance {
        ids: [q.encode(Ts::ExplicitLe), q.encode(Ts::ImplicitLe)],
        expected,
    };
    let today = l.date(0);
    let range = format!("{}-{}", l.date(-1), l.date(1));
    let sd = |s: u32, d: i64| per_station_day.get(&(s, d)).copied().unwrap_or(0);
    let mut out = BTreeMap::new();
    out.insert(
        Kind::Station,
        (0..l.stations)
            .map(|s| {
                let ae = l.station_ae(s);
                let q = identifier(
                    &[],
                    &[
                        ("ScheduledStationAETitle", &ae),
                        ("ScheduledProcedureStepStartDate", &today),
                    ],
                );
                enc(q, sd(s, 0))
            })
            .collect(),
    );
    out.insert(
        Kind::StationRange,
        (0..l.stations)
            .map(|s| {
                let ae = l.station_ae(s);
                let q = identifier(
                    &[],
                    &[
                        ("ScheduledStationAETitle", &ae),
                        ("ScheduledProcedureStepStartDate", &range),
                    ],
                );
                enc(q, sd(s, -1) + sd(s, 0) + sd(s, 1))
            })
            .collect(),
    );
    let modalities = (l.stations as usize).min(MODALITIES.len());
    out.insert(
        Kind::Modality,
        (0..modalities)
            .flat_map(|m| (0..WINDOWS.len()).map(move |w| (m, w)))
            .map(|(m, w)| {
                let q = identifier(
                    &[],
                    &[
                        ("Modality", MODALITIES[m]),
                        ("ScheduledProcedureStepStartDate", &today),
                        ("ScheduledProcedureStepStartTime", WINDOWS[w].0),
                    ],
                );
                enc(q, per_modality_window.get(&(m, w)).copied().unwrap_or(0))
            })
            .collect(),
    );
    out.insert(
        Kind::Patient,
        (0..l.patients())
            .map(|p| {
                let q = identifier(&[("PatientID", &Layout::patient_id(p))], &[]);
                enc(q, per_patient.get(&p).copied().unwrap_or(0))
            })
            .collect(),
    );
    out
}

/// Run parameters of `dicom-loadgen mwl`.
#[derive(Debug, Clone)]
pub struct MwlConfig {
    /// Peer address.
    pub addr: SocketAddr,
    /// HOST:PORT as given (for the summary).
    pub target: String,
    /// Calling AE title.
    pub calling: String,
    /// Called AE title.
    pub called: String,
    /// Associations (threads).
    pub concurrency: usize,
    /// Stop after this long (no query starts later).
    pub duration: Option<Duration>,
    /// Stop after this many queries.
    pub count: Option<u64>,
    /// The items the peer holds.
    pub layout: Layout,
    /// Query kinds and weights.
    pub mix: Mix,
    /// Check every query's match count against the layout.
    pub expect: bool,
    /// Network timeout.
    pub timeout: Duration,
    /// Maximum PDU length we announce.
    pub max_pdu: u32,
    /// Seed of the query choice (worker `w` uses `seed + w`).
    pub seed: u64,
    /// Open loop: queries per second across all associations, query `i` scheduled at
    /// `start + i / rate` and its latency measured from then. `None`: closed loop.
    pub rate: Option<f64>,
}

/// Summary of one kind.
#[derive(Debug, Clone, Serialize)]
pub struct KindSummary {
    /// Queries issued.
    pub queries: u64,
    /// Queries that ended with Success (and, with `--expect`, the expected count).
    pub ok: u64,
    /// Pending responses received.
    pub matches: u64,
    /// Mean pending responses per completed query.
    pub mean_matches: f64,
    /// Queries whose match count differed from the layout's (`--expect`).
    pub mismatches: u64,
    /// Latency of completed queries (ms).
    pub latency_ms: Percentiles,
}

/// The JSON summary of `dicom-loadgen mwl`.
#[derive(Debug, Clone, Serialize)]
pub struct MwlSummary {
    /// Always `mwl`.
    pub operation: String,
    /// HOST:PORT.
    pub target: String,
    /// Called AE title.
    pub called_ae: String,
    /// Associations (one outstanding query each).
    pub concurrency: usize,
    /// Open-loop rate (queries/s), or `None` for closed loop.
    pub rate: Option<f64>,
    /// The items' layout.
    pub layout: Layout,
    /// The base date as YYYYMMDD.
    pub today: String,
    /// Whether match counts were checked.
    pub expect: bool,
    /// Start signal → last final response (s).
    pub elapsed_s: f64,
    /// Queries issued.
    pub queries: u64,
    /// Queries that succeeded.
    pub ok: u64,
    /// Failed queries: statuses, local errors, count mismatches.
    pub errors: u64,
    /// Errors by kind (`0xA900`, `timeout`, `mismatch`, …).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Successful queries per second.
    pub queries_per_s: f64,
    /// Pending responses (matches) per second.
    pub responses_per_s: f64,
    /// Pending responses in total.
    pub matches: u64,
    /// Associations opened (the initial `-c` plus reconnects after errors).
    pub associations_opened: u64,
    /// Latency of completed queries, all kinds (ms).
    pub latency_ms: Percentiles,
    /// Per query kind.
    pub kinds: BTreeMap<String, KindSummary>,
    /// Why the run stopped early, if it did.
    pub fatal: Option<String>,
}

impl MwlSummary {
    /// The human-readable report.
    pub fn report(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "dicom-loadgen mwl -> {} ({}), {} association(s), {}, {} items, today {}",
            self.target,
            self.called_ae,
            self.concurrency,
            match self.rate {
                Some(r) => format!("open loop at {r} queries/s"),
                None => "closed loop".into(),
            },
            self.layout.items,
            self.today
        );
        let _ = writeln!(
            o,
            "  queries      {} in {:.3} s: {} ok, {} errors{}",
            self.queries,
            self.elapsed_s,
            self.ok,
            self.errors,
            if self.expect {
                " (match counts checked)"
            } else {
                ""
            }
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
                "  {k:<14} {:>7} queries, {:>5.1} matches each, p50 {:.3}  p99 {:.3} ms",
                s.queries, s.mean_matches, s.latency_ms.p50, s.latency_ms.p99
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

/// The worklist queries of a layout, by kind.
struct MwlQueries(BTreeMap<Kind, Vec<Instance>>);

impl Queries for MwlQueries {
    type Kind = Kind;
    type Query = (Kind, usize);

    fn draw(&self, kind: Kind, rng: &mut Rng) -> (Kind, usize) {
        (kind, (rng.next() % self.0[&kind].len() as u64) as usize)
    }

    fn send(
        &self,
        a: &mut Association,
        id: u16,
        &(kind, i): &(Kind, usize),
    ) -> Result<(u16, u64), ScuError> {
        find(a, id, &self.0[&kind][i])
    }

    fn expected(&self, &(kind, i): &(Kind, usize)) -> Option<u64> {
        Some(self.0[&kind][i].expected)
    }

    fn name(&self, kind: Kind) -> &'static str {
        kind.name()
    }
}

/// Runs the query load; blocks until every worker is done.
pub fn run(cfg: MwlConfig) -> MwlSummary {
    let queries = MwlQueries(instances(&cfg.layout));
    // Only kinds the layout has instances of can be drawn.
    let cumulative = cumulative(
        cfg.mix
            .0
            .iter()
            .copied()
            .filter(|(k, _)| queries.0.get(k).is_some_and(|v| !v.is_empty())),
    );
    let drive = Drive {
        params: find_params(
            cfg.addr,
            &cfg.calling,
            &cfg.called,
            cfg.max_pdu,
            cfg.timeout,
            MWL_FIND,
        ),
        concurrency: cfg.concurrency,
        duration: cfg.duration,
        count: cfg.count,
        rate: cfg.rate,
        seed: cfg.seed,
        expect: cfg.expect,
        thread_name: "mwl",
    };
    summarize(&cfg, crate::find_load::drive(&drive, &queries, &cumulative))
}

fn summarize(cfg: &MwlConfig, out: Outcome<Kind>) -> MwlSummary {
    let secs = out.elapsed.as_secs_f64().max(1e-9);
    let all = out.all();
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    MwlSummary {
        operation: "mwl".into(),
        target: cfg.target.clone(),
        called_ae: cfg.called.clone(),
        concurrency: cfg.concurrency,
        rate: cfg.rate,
        layout: cfg.layout,
        today: cfg.layout.date(0),
        expect: cfg.expect,
        elapsed_s: (secs * 1e6).round() / 1e6,
        queries: all.queries,
        ok: all.ok,
        errors: out.errors.values().sum(),
        errors_by_kind: out.errors,
        queries_per_s: round2(all.ok as f64 / secs),
        responses_per_s: round2(all.matches as f64 / secs),
        matches: all.matches,
        associations_opened: out.associations,
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
                        latency_ms: Percentiles::of(&s.latency),
                    },
                )
            })
            .collect(),
        fatal: out.fatal,
    }
}

/// Upper bound on pending responses to one query (a runaway peer stays bounded).
const MAX_PENDING: u64 = 1_000_000;

/// One C-FIND: (final status, pending responses).
fn find(a: &mut Association, id: u16, inst: &Instance) -> Result<(u16, u64), ScuError> {
    let ctx = a.any_context(MWL_FIND)?;
    let (pc, explicit) = (ctx.id, ctx.transfer_syntax == EXPLICIT_LE);
    let identifier = if explicit { &inst.ids[0] } else { &inst.ids[1] };
    c_find(a, id, MWL_FIND, pc, identifier, MAX_PENDING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(civil(0), "19700101");
        assert_eq!(parse_date("20261122").unwrap(), 20_779);
        assert_eq!(civil(20_779), "20261122");
        assert_eq!(civil(parse_date("20240229").unwrap() + 1), "20240301");
        assert!(parse_date("20230229").is_err());
        assert!(parse_date("2026-11-22").is_err());
    }

    #[test]
    fn default_layout_gives_realistic_match_counts() {
        let l = Layout::new(10_000, 40, 20, parse_date("20261122").unwrap()).unwrap();
        let q = instances(&l);
        let range = |k: Kind| {
            let v: Vec<u64> = q[&k].iter().map(|i| i.expected).collect();
            (*v.iter().min().unwrap(), *v.iter().max().unwrap(), v.len())
        };
        assert_eq!(range(Kind::Station), (12, 12, 40));
        assert_eq!(range(Kind::StationRange), (37, 37, 40));
        let (lo, hi, n) = range(Kind::Modality);
        assert_eq!(n, 24);
        assert_eq!((lo, hi), (5, 30));
        assert_eq!(range(Kind::Patient), (1, 3, 3334));
        // Every item is counted once by the patient queries.
        let total: u64 = q[&Kind::Patient].iter().map(|i| i.expected).sum();
        assert_eq!(total, 10_000);
        let item = l.item(41);
        assert_eq!(item["00400100"]["Value"][0]["00400001"]["Value"][0], "MR01");
        assert_eq!(item["00100020"]["Value"][0], "P0000013");
    }

    #[test]
    fn mix_parses() {
        let m = Mix::parse("station=2, patient").unwrap();
        assert_eq!(m.0, vec![(Kind::Station, 2.0), (Kind::Patient, 1.0)]);
        assert!(Mix::parse("nope=1").is_err());
        assert!(Mix::parse("station=0").is_err());
    }
}
