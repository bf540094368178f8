//! Query/Retrieve C-MOVE SCP (PS3.4 C.4.2), and what C-MOVE and C-GET (C.4.3) share: the
//! identifier rules that make a [`Selection`] (the index scan behind it is
//! [`crate::store::query::retrieve_instances`]), the sub-operation tally and its responses,
//! the status table. The C-MOVE sub-operations themselves (one storage SCU association to the
//! destination, stored bytes sent verbatim) run here, on the retrieve pool; the association
//! engine (`net::association::retrieve`) streams the pending responses and sees C-CANCEL.
//!
//! Rules, as PS3.4 C.4.2.2.1 (baseline retrieve) states them and as implemented:
//! - (0008,0052) is required; PATIENT is a level of Patient Root only (Study Root: A900).
//! - Each level above the retrieve level carries its unique key as one value (Patient Root:
//!   Patient ID from STUDY down; both models: Study Instance UID from SERIES down, Series
//!   Instance UID at IMAGE); the retrieve level's unique key is one value or a UID list. No
//!   wildcards, no empty values: A900 with the offending element. Relational retrieve is not
//!   offered (no extended negotiation on the MOVE/GET models). Other keys are ignored.
//! - Nothing matches: 0000 with zero sub-operations.
//! - Counts are US: above 65,535 they are clamped at 65,535, never wrapped (pynetdicom #982
//!   wrapped them), and the log says so.
//! - Final status: 0000 when every sub-operation completed; B000 when some failed or warned;
//!   A702 when none completed (every one failed, e.g. the destination refused the
//!   association — DCMTK's dcmqrscp answers A702 there too); FE00 after a C-CANCEL. Failure,
//!   warning and cancel finals carry the Failed SOP Instance UID List (0008,0058).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};

use crate::config::Destination;
use crate::dicom::dataset::{Dataset, Value};
use crate::net::dimse::command::{Command, SubOperations};
use crate::net::dimse::dataset::write_dataset;
use crate::net::dimse::status::{category, Category};
use crate::net::scu::{AssocParams, Association, ScuError, ScuTls};
use crate::net::services::query_retrieve_find::{decode_identifier, Refusal, Settled};
use crate::rt::WorkPool;
use crate::store::index::{Index, InstanceRecord};
use crate::store::query::Level;
use crate::store::DataDir;

/// Patient Root Query/Retrieve Information Model – MOVE.
pub const PATIENT_ROOT: &str = uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE;
/// Study Root Query/Retrieve Information Model – MOVE.
pub const STUDY_ROOT: &str = uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE;

/// C-MOVE and C-GET statuses (PS3.4 C.4.2.1.5, C.4.3.1.4).
pub mod status {
    /// Sub-operations complete, no failures.
    pub const SUCCESS: u16 = 0x0000;
    /// Sub-operations are continuing.
    pub const PENDING: u16 = 0xFF00;
    /// Sub-operations terminated due to a C-CANCEL.
    pub const CANCEL: u16 = 0xFE00;
    /// Sub-operations complete, one or more failures or warnings.
    pub const SUB_OPERATIONS_FAILED: u16 = 0xB000;
    /// Refused: out of resources, unable to calculate the number of matches.
    pub const UNABLE_TO_CALCULATE_MATCHES: u16 = 0xA701;
    /// Refused: out of resources, unable to perform sub-operations.
    pub const UNABLE_TO_PERFORM_SUB_OPERATIONS: u16 = 0xA702;
    /// Refused: Move Destination unknown.
    pub const MOVE_DESTINATION_UNKNOWN: u16 = 0xA801;
    /// Identifier does not match SOP Class.
    pub const IDENTIFIER_DOES_NOT_MATCH: u16 = 0xA900;
    /// Unable to process.
    pub const UNABLE_TO_PROCESS: u16 = 0xC000;
}

/// What C-MOVE and C-GET need: the index to select instances, the files to send, the
/// destination table.
#[derive(Debug, Clone)]
pub struct RetrieveScp {
    /// Read-your-writes: waits for the checkpoint of acknowledged objects.
    pub settle: Option<Arc<dyn Settled>>,
    /// The index the identifier is matched against.
    pub index: Arc<Index>,
    /// The stored objects.
    pub data: DataDir,
    /// Threads selection and C-MOVE sub-associations run on (never a core).
    pub pool: WorkPool,
    /// C-MOVE destinations: the `[[destinations]]` table, looked up by AE title.
    pub destinations: Arc<dyn crate::net::services::Destinations>,
    /// Our AE title (the calling AE title of C-MOVE sub-associations).
    pub ae_title: String,
    /// C-GET sub-operations need the SCP role agreed for their storage class.
    pub get_requires_role_selection: bool,
    /// Most instances one C-MOVE or C-GET may select (more: A701).
    pub max_instances: usize,
    /// C-MOVEs running now: each holds a pool thread for its whole transfer, so at most
    /// [`MAX_CONCURRENT_MOVES`] run and one thread stays free for selections and C-GET reads.
    pub moves: Arc<std::sync::atomic::AtomicUsize>,
}

/// C-MOVEs that may run at once (the retrieve pool has one thread more); another gets A702.
pub const MAX_CONCURRENT_MOVES: usize = 3;

/// Whether an abstract syntax is one of the MOVE models served.
pub fn is_move_model(abstract_syntax: &str) -> bool {
    matches!(abstract_syntax, PATIENT_ROOT | STUDY_ROOT)
}

/// Whether a MOVE or GET model is Patient Root (`Some(true)`), Study Root (`Some(false)`).
pub fn patient_root(sop_class: &str) -> Option<bool> {
    use crate::net::services::query_retrieve_get as get;
    match sop_class {
        PATIENT_ROOT | get::PATIENT_ROOT => Some(true),
        STUDY_ROOT | get::STUDY_ROOT => Some(false),
        _ => None,
    }
}

pub use crate::store::query::Selection;

fn refusal(status: u16, comment: impl Into<String>, offending: Option<dicom_core::Tag>) -> Refusal {
    Refusal {
        status,
        comment: comment.into(),
        offending,
    }
}

/// Checks a decoded retrieve identifier against the model's key rules (pure).
pub fn check_retrieve(patient_root: bool, identifier: &Dataset) -> Result<Selection, Refusal> {
    let level = identifier
        .str(tags::QUERY_RETRIEVE_LEVEL)
        .and_then(Level::parse)
        .ok_or_else(|| {
            refusal(
                status::IDENTIFIER_DOES_NOT_MATCH,
                "QueryRetrieveLevel (0008,0052) missing or not PATIENT/STUDY/SERIES/IMAGE",
                Some(tags::QUERY_RETRIEVE_LEVEL),
            )
        })?;
    if level == Level::Patient && !patient_root {
        return Err(refusal(
            status::IDENTIFIER_DOES_NOT_MATCH,
            "PATIENT level is not part of the Study Root model",
            Some(tags::QUERY_RETRIEVE_LEVEL),
        ));
    }
    let top = if patient_root {
        Level::Patient
    } else {
        Level::Study
    };
    let mut sel = Selection {
        level,
        patients: Vec::new(),
        studies: Vec::new(),
        series: Vec::new(),
        instances: Vec::new(),
    };
    for l in [Level::Patient, Level::Study, Level::Series, Level::Image] {
        if l < top || l > level {
            continue;
        }
        let key = l.unique_key();
        let name = crate::dicom::dataset::keyword(key).unwrap_or("unique key");
        let values: Vec<String> = match identifier.get(key).map(|e| &e.value) {
            Some(Value::Strs(v)) => v
                .iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            _ => Vec::new(),
        };
        if values.is_empty() {
            return Err(refusal(
                status::IDENTIFIER_DOES_NOT_MATCH,
                format!("{name} {key} is required at or above the {level:?} retrieve level"),
                Some(key),
            ));
        }
        if values.iter().any(|v| v.contains(['*', '?'])) {
            return Err(refusal(
                status::IDENTIFIER_DOES_NOT_MATCH,
                format!("{name} {key}: wildcards are not allowed in a retrieve"),
                Some(key),
            ));
        }
        if l < level && values.len() != 1 {
            return Err(refusal(
                status::IDENTIFIER_DOES_NOT_MATCH,
                format!("{name} {key} must be one value above the {level:?} level"),
                Some(key),
            ));
        }
        match l {
            Level::Patient => sel.patients = values,
            Level::Study => sel.studies = values,
            Level::Series => sel.series = values,
            Level::Image => sel.instances = values,
        }
    }
    Ok(sel)
}

/// Decodes, checks and lists a C-MOVE/C-GET identifier (on the retrieve pool); more than
/// `limit` matching instances is refused with A701.
pub fn select(
    index: &Index,
    sop_class: &str,
    identifier: &[u8],
    ts: &str,
    limit: usize,
) -> Result<Vec<InstanceRecord>, Refusal> {
    let patient_root = patient_root(sop_class).ok_or_else(|| {
        refusal(
            status::IDENTIFIER_DOES_NOT_MATCH,
            format!("SOP class {sop_class} is not a MOVE or GET model"),
            None,
        )
    })?;
    let ds = decode_identifier(identifier, ts)?;
    let sel = check_retrieve(patient_root, &ds)?;
    match crate::store::query::retrieve_instances(index.database(), &sel, limit) {
        Ok(Some(items)) => Ok(items),
        Ok(None) => Err(refusal(
            status::UNABLE_TO_CALCULATE_MATCHES,
            format!(
                "more than {limit} instances match ([query] max_retrieve_instances): retrieve at a lower level"
            ),
            None,
        )),
        Err(e) => Err(refusal(
            status::UNABLE_TO_PROCESS,
            format!("index: {e}"),
            None,
        )),
    }
}

/// How one sub-operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (C-STORE-RSP 0000).
    Completed,
    /// Stored with a warning status.
    Warning(u16),
    /// Not stored: why.
    Failed(String),
}

impl Outcome {
    /// The outcome of a C-STORE-RSP status.
    pub fn of_status(status: u16, comment: Option<&str>) -> Outcome {
        match category(status) {
            Category::Success => Outcome::Completed,
            Category::Warning => Outcome::Warning(status),
            _ => Outcome::Failed(format!(
                "C-STORE-RSP status {status:04X}{}",
                comment.map(|c| format!(" ({c})")).unwrap_or_default()
            )),
        }
    }
}

/// A US count: clamped at 65,535, never wrapped.
pub fn clamp_count(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// Most UIDs in the Failed SOP Instance UID List: the list is one UI element, whose length
/// is 16 bits in Explicit VR (65,534 bytes), so at most about 1,000 UIDs of 64 characters.
pub const MAX_FAILED_LIST_BYTES: usize = 65_534;

/// The counts of one C-MOVE or C-GET as its sub-operations end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Sub-operations in all.
    pub total: usize,
    /// Completed.
    pub completed: usize,
    /// Failed.
    pub failed: usize,
    /// Completed with a warning.
    pub warning: usize,
    /// The failed instances.
    pub failed_uids: Vec<String>,
}

impl Tally {
    /// A tally of `total` sub-operations, none started.
    pub fn new(total: usize) -> Tally {
        Tally {
            total,
            ..Tally::default()
        }
    }

    /// Sub-operations not ended yet (not started, after a cancel).
    pub fn remaining(&self) -> usize {
        self.total
            .saturating_sub(self.completed + self.failed + self.warning)
    }

    /// Records how the sub-operation of `sop_instance_uid` ended.
    pub fn record(&mut self, sop_instance_uid: &str, outcome: &Outcome) {
        match outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Warning(_) => self.warning += 1,
            Outcome::Failed(_) => {
                self.failed += 1;
                self.failed_uids.push(sop_instance_uid.to_owned());
            }
        }
    }

    /// The counts of a pending response (all four).
    pub fn pending_counts(&self) -> SubOperations {
        SubOperations {
            remaining: Some(clamp_count(self.remaining())),
            ..self.final_counts(false)
        }
    }

    /// The counts of the final response: Remaining only after a cancel (the sub-operations
    /// never started), as PS3.4 C.4.2.1.5 asks.
    pub fn final_counts(&self, cancelled: bool) -> SubOperations {
        SubOperations {
            remaining: cancelled.then(|| clamp_count(self.remaining())),
            completed: Some(clamp_count(self.completed)),
            failed: Some(clamp_count(self.failed)),
            warning: Some(clamp_count(self.warning)),
        }
    }

    /// Whether any count is above what US holds (and was clamped).
    pub fn clamped(&self) -> bool {
        self.total > usize::from(u16::MAX)
    }

    /// The final status (see the module's rules).
    pub fn final_status(&self, cancelled: bool) -> u16 {
        if cancelled {
            status::CANCEL
        } else if self.failed == 0 && self.warning == 0 {
            status::SUCCESS
        } else if self.completed == 0 && self.warning == 0 {
            status::UNABLE_TO_PERFORM_SUB_OPERATIONS
        } else {
            status::SUB_OPERATIONS_FAILED
        }
    }

    /// The final response's identifier: the Failed SOP Instance UID List (0008,0058), cut to
    /// what one UI element holds; `None` when nothing failed.
    pub fn failed_list(&self, ts: &str) -> Result<Option<Vec<u8>>, String> {
        if self.failed_uids.is_empty() {
            return Ok(None);
        }
        let mut uids = Vec::new();
        let mut len = 0usize;
        for u in &self.failed_uids {
            if len + u.len() + 1 > MAX_FAILED_LIST_BYTES {
                tracing::warn!(
                    failed = self.failed_uids.len(),
                    listed = uids.len(),
                    "Failed SOP Instance UID List cut to what one UI element holds"
                );
                break;
            }
            len += u.len() + 1;
            uids.push(u.clone());
        }
        let mut ds = Dataset::new();
        ds.put(
            tags::FAILED_SOP_INSTANCE_UID_LIST,
            VR::UI,
            Value::Strs(uids),
        );
        write_dataset(&ds.to_dicom(), ts).map(Some)
    }
}

/// Opens a stored object for sending: its file, checked to be the size the record says (a
/// replaced object gets a new file; a different size means the record is stale).
pub fn open_stored(data: &DataDir, rec: &InstanceRecord) -> Result<std::fs::File, String> {
    if crate::store::is_quarantined(&rec.path) {
        return Err(
            "the object is in quarantine (not served until an operator releases it)".into(),
        );
    }
    let rel = std::path::Path::new(&rec.path);
    if rel.as_os_str().is_empty()
        || !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!(
            "index path {:?} is not inside the data directory",
            rec.path
        ));
    }
    let path = data.root().join(rel);
    let f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len != rec.file_size {
        return Err(format!(
            "{}: {len} bytes on disk, the index says {} (replaced meanwhile?)",
            path.display(),
            rec.file_size
        ));
    }
    Ok(f)
}

/// The requestor of a C-MOVE, named in each sub-operation's C-STORE-RQ.
#[derive(Debug, Clone)]
pub struct Originator {
    /// Its AE title (the calling AE title of its association).
    pub ae_title: String,
    /// The Message ID of its C-MOVE-RQ.
    pub message_id: u16,
}

/// Runs the sub-operations of a C-MOVE (blocking, on the retrieve pool): the objects go to
/// `dest` over storage associations opened by us, each proposing the (SOP class, stored
/// transfer syntax) pairs of its objects — at most 128, so a retrieve with more pairs uses
/// several associations in turn — and each object is sent as stored, never converted.
/// `report` is called once per object, in order; `cancel` is read before each sub-operation.
pub fn run_move(
    data: &DataDir,
    our_ae_title: &str,
    dest: &Destination,
    items: &[InstanceRecord],
    originator: &Originator,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(&InstanceRecord, Outcome),
) {
    let mut start = 0;
    while start < items.len() {
        // The next batch: as many objects as 128 distinct contexts cover.
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut end = start;
        while end < items.len() {
            let pair = (
                items[end].sop_class_uid.clone(),
                items[end].transfer_syntax_uid.clone(),
            );
            if !pairs.contains(&pair) {
                if pairs.len() == crate::net::scu::MAX_PROPOSED_CONTEXTS {
                    break;
                }
                pairs.push(pair);
            }
            end += 1;
        }
        let batch = &items[start..end];
        start = end;
        let mut assoc: Option<Association> = None;
        // The object on the wire and the next one, read and framed while the destination
        // stores this one (both buffers reused for the whole batch).
        let (mut cur, mut next) = (BytesMut::new(), BytesMut::new());
        let mut ahead: Option<Prepared> = None;
        let mut message_id: u16 = 0;
        for (i, rec) in batch.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                if let Some(a) = assoc.take() {
                    let _ = a.release();
                }
                return;
            }
            if assoc.is_none() {
                match open_destination(dest, our_ae_title, &pairs) {
                    Ok(a) => assoc = Some(a),
                    Err(e) => {
                        // Every object of the batch would meet the same refusal.
                        let why = format!("cannot associate with {}: {e}", dest.ae_title);
                        tracing::warn!(destination = %dest.name, "C-MOVE: {why}");
                        for r in &batch[i..] {
                            if cancel.load(Ordering::Relaxed) {
                                return;
                            }
                            report(r, Outcome::Failed(why.clone()));
                        }
                        break;
                    }
                }
            }
            let a = assoc.as_mut().expect("opened above");
            let current = match ahead.take() {
                Some(p) => p,
                None => {
                    message_id = message_id.wrapping_add(1).max(1);
                    prepare(a, data, rec, message_id, originator, &mut cur)
                }
            };
            let sent = send(a, current, &cur);
            if sent.is_ok() {
                if let Some(n) = batch.get(i + 1) {
                    message_id = message_id.wrapping_add(1).max(1);
                    ahead = Some(prepare(a, data, n, message_id, originator, &mut next));
                }
            }
            let outcome = match sent.and_then(|id| {
                a.c_store_response(id, &rec.sop_instance_uid)
                    .map_err(|e| (Outcome::Failed(e.to_string()), true))
            }) {
                Ok(rsp) => Outcome::of_status(rsp.status, rsp.error_comment.as_deref()),
                Err((o, broken)) => {
                    if broken {
                        // The association is unusable after a failed send: a new one for the
                        // next object (which is read again for it).
                        ahead = None;
                        if let Some(a) = assoc.take() {
                            a.abort();
                        }
                    }
                    o
                }
            };
            std::mem::swap(&mut cur, &mut next);
            if let Outcome::Failed(why) = &outcome {
                tracing::warn!(destination = %dest.name, sop = %rec.sop_instance_uid, "C-MOVE sub-operation failed: {why}");
            }
            report(rec, outcome);
        }
        if let Some(a) = assoc.take() {
            if let Err(e) = a.release() {
                tracing::debug!(destination = %dest.name, error = %e, "C-MOVE sub-association release");
            }
        }
    }
}

/// A sub-operation made ready before its turn on the association.
enum Prepared {
    /// Read and framed into the caller's buffer: one write sends it.
    Staged { message_id: u16 },
    /// Larger than one write batch: streamed from the file at its turn.
    Stream {
        message_id: u16,
        pc: u8,
        command: Vec<u8>,
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
    /// It cannot be sent (no accepted context, unreadable file): why.
    Failed(String),
}

/// Prepares the C-STORE of `rec` on `a` as request `message_id`: framed into `buf` when it
/// fits one write, else to be streamed. Nothing is written to the association.
fn prepare(
    a: &mut Association,
    data: &DataDir,
    rec: &InstanceRecord,
    message_id: u16,
    originator: &Originator,
    buf: &mut BytesMut,
) -> Prepared {
    let (class, ts) = (&rec.sop_class_uid, &rec.transfer_syntax_uid);
    let Ok(pc) = a.context(class, ts) else {
        return Prepared::Failed(format!(
            "the destination refused SOP class {class} in transfer syntax {ts} (sent as stored, never converted)"
        ));
    };
    let file = match open_stored(data, rec) {
        Ok(f) => f,
        Err(e) => return Prepared::Failed(e),
    };
    let command = crate::net::dimse::command::encode_store_rq_for_move(
        message_id,
        class,
        &rec.sop_instance_uid,
        &originator.ae_title,
        originator.message_id,
    );
    let (offset, len) = (
        rec.file_size.saturating_sub(rec.dataset_size),
        rec.dataset_size,
    );
    match a.stage_from_file(buf, pc, &command, &file, offset, len) {
        Ok(true) => Prepared::Staged { message_id },
        Ok(false) => Prepared::Stream {
            message_id,
            pc,
            command,
            file,
            offset,
            len,
        },
        Err(e) => Prepared::Failed(e.to_string()),
    }
}

/// Writes a prepared C-STORE-RQ (`staged`: the buffer it was framed into); its message ID to
/// await the response with, or the outcome and whether the association broke.
fn send(a: &mut Association, p: Prepared, staged: &[u8]) -> Result<u16, (Outcome, bool)> {
    let broken = |e: ScuError| (Outcome::Failed(e.to_string()), true);
    match p {
        Prepared::Failed(why) => Err((Outcome::Failed(why), false)),
        Prepared::Staged { message_id } => {
            a.send_staged(staged).map_err(broken)?;
            Ok(message_id)
        }
        Prepared::Stream {
            message_id,
            pc,
            command,
            file,
            offset,
            len,
        } => {
            a.send_dataset_from(pc, &command, &file, offset, len)
                .map_err(broken)?;
            Ok(message_id)
        }
    }
}

fn open_destination(
    dest: &Destination,
    our_ae_title: &str,
    pairs: &[(String, String)],
) -> Result<Association, ScuError> {
    // The destination's own calling AE title when it has one configured (its access list
    // knows it), else ours.
    let calling = if dest.calling_ae_title.trim().is_empty() {
        our_ae_title.to_owned()
    } else {
        dest.calling_ae_title.clone()
    };
    let contexts = pairs
        .iter()
        .map(|(c, t)| (c.clone(), vec![t.clone()]))
        .collect();
    crate::net::scu::link_to(dest, calling, contexts, &[])
}

/// The SCU side (`dicom-gw scu move|get`): how one C-MOVE or C-GET ended.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RetrieveResult {
    /// The final status.
    pub status: u16,
    /// The final response's Error Comment.
    pub error_comment: Option<String>,
    /// Pending responses received.
    pub pending: usize,
    /// Counts of the final response (absent ones are `None`).
    pub remaining: Option<u16>,
    /// Completed sub-operations.
    pub completed: Option<u16>,
    /// Failed sub-operations.
    pub failed: Option<u16>,
    /// Warning sub-operations.
    pub warning: Option<u16>,
    /// The Failed SOP Instance UID List of the final response.
    pub failed_uids: Vec<String>,
    /// C-GET: the files written.
    pub files: Vec<String>,
}

/// Largest response identifier the SCU reads (the Failed SOP Instance UID List).
const MAX_RESPONSE_IDENTIFIER: usize = 4 << 20;

fn retrieve_rq(model: &str, field: u16, message_id: u16, destination: Option<&str>) -> Vec<u8> {
    use crate::net::dimse::command::{tags as ct, CommandBuilder};
    let mut b = CommandBuilder::new()
        .uid(ct::AFFECTED_SOP_CLASS_UID, model)
        .us(ct::COMMAND_FIELD, field)
        .us(ct::MESSAGE_ID, message_id);
    // Ascending tag order (PS3.5 7.1): Move Destination (0000,0600) before Priority (0700).
    if let Some(d) = destination {
        b = b.text(ct::MOVE_DESTINATION, d);
    }
    b.us(ct::PRIORITY, 0)
        .us(ct::COMMAND_DATA_SET_TYPE, 0x0000)
        .build()
}

fn cancel_rq(message_id: u16) -> Vec<u8> {
    use crate::net::dimse::command::{tags as ct, CommandBuilder, CommandField, NO_DATASET};
    CommandBuilder::new()
        .us(ct::COMMAND_FIELD, CommandField::CCancelRq as u16)
        .us(ct::MESSAGE_ID_BEING_RESPONDED_TO, message_id)
        .us(ct::COMMAND_DATA_SET_TYPE, NO_DATASET)
        .build()
}

fn finish(out: &mut RetrieveResult, cmd: &Command, identifier: &[u8], ts: &str) {
    out.status = cmd.status.unwrap_or(status::UNABLE_TO_PROCESS);
    out.error_comment.clone_from(&cmd.error_comment);
    let c = cmd.sub_operations;
    (out.remaining, out.completed, out.failed, out.warning) =
        (c.remaining, c.completed, c.failed, c.warning);
    if cmd.has_dataset {
        if let Ok(ds) = decode_identifier(identifier, ts) {
            if let Some(Value::Strs(v)) =
                ds.get(tags::FAILED_SOP_INSTANCE_UID_LIST).map(|e| &e.value)
            {
                out.failed_uids = v.iter().filter(|s| !s.is_empty()).cloned().collect();
            }
        }
    }
}

fn encode_identifier(identifier: &Dataset, ts: &str) -> Result<Vec<u8>, ScuError> {
    write_dataset(&identifier.to_dicom(), ts).map_err(ScuError::Protocol)
}

/// Sends one C-MOVE-RQ on `model` to move what `identifier` names to `destination`, and
/// gathers the responses; with `cancel_after = Some(n)`, sends a C-CANCEL-RQ after the n-th
/// pending response.
pub fn scu_move(
    params: &AssocParams,
    tls: Option<&ScuTls>,
    model: &str,
    identifier: &Dataset,
    destination: &str,
    cancel_after: Option<usize>,
) -> Result<RetrieveResult, ScuError> {
    use crate::net::dimse::command::CommandField;
    let mut a = Association::open_with_tls(params, tls)?;
    let ctx = a.any_context(model)?.clone();
    let bytes = encode_identifier(identifier, &ctx.transfer_syntax)?;
    let message_id = 1;
    let rq = retrieve_rq(
        model,
        CommandField::CMoveRq as u16,
        message_id,
        Some(destination),
    );
    let mut out = RetrieveResult::default();
    let run = (|| {
        a.send(ctx.id, &rq, Some((&bytes, &[])))?;
        let mut buf = Vec::new();
        loop {
            let msg = a.receive_with_dataset(message_id, MAX_RESPONSE_IDENTIFIER, &mut buf)?;
            if msg.command.status == Some(status::PENDING) {
                out.pending += 1;
                if cancel_after == Some(out.pending) {
                    a.send(ctx.id, &cancel_rq(message_id), None)?;
                }
                continue;
            }
            finish(&mut out, &msg.command, &buf, &ctx.transfer_syntax);
            return Ok(());
        }
    })();
    match run {
        Ok(()) => {
            a.release()?;
            Ok(out)
        }
        Err(e) => {
            a.abort();
            Err(e)
        }
    }
}

/// Sends one C-GET-RQ on `model` and receives its sub-operations on the same association:
/// each C-STORE-RQ's dataset is written to `out_dir` as `<SOP Instance UID>.dcm` (Part 10,
/// the dataset bytes as received) and answered 0000 (A700-class failure when the file cannot
/// be written). `storage` lists the (SOP class, transfer syntaxes) proposed for receiving,
/// each with the SCP role.
#[allow(clippy::too_many_arguments)] // the request's parts, all plain
pub fn scu_get(
    params: &AssocParams,
    tls: Option<&ScuTls>,
    model: &str,
    identifier: &Dataset,
    storage: &[(String, Vec<String>)],
    out_dir: &std::path::Path,
    cancel_after: Option<usize>,
) -> Result<RetrieveResult, ScuError> {
    use crate::net::dimse::command::{encode_response, CommandField};
    use std::io::Write;
    let mut p = params.clone();
    p.contexts.extend(storage.iter().cloned());
    let classes: Vec<String> = {
        let mut c: Vec<String> = storage.iter().map(|(c, _)| c.clone()).collect();
        c.sort();
        c.dedup();
        c
    };
    let mut a = Association::open_with_roles(&p, tls, &classes)?;
    let ctx = a
        .accepted()
        .iter()
        .find(|c| c.abstract_syntax == model)
        .cloned()
        .ok_or_else(|| ScuError::NoContext {
            abstract_syntax: model.to_owned(),
            transfer_syntax: "any".to_owned(),
        })?;
    let bytes = encode_identifier(identifier, &ctx.transfer_syntax)?;
    let message_id = 1;
    let rq = retrieve_rq(model, CommandField::CGetRq as u16, message_id, None);
    let mut out = RetrieveResult::default();
    let accepted = a.accepted().to_vec();
    let run = (|| {
        a.send(ctx.id, &rq, Some((&bytes, &[])))?;
        loop {
            // A C-STORE-RQ's dataset streams to a temporary file; a response's (small) to
            // memory.
            let tmp = out_dir.join(format!(".incoming-{}", std::process::id()));
            let mut file: Option<std::fs::File> = None;
            let mut small = Vec::new();
            let mut write_err: Option<std::io::Error> = None;
            let (cmd, pc) = a.receive_any(&mut |data| {
                if write_err.is_some() {
                    return Ok(());
                }
                if let Some(f) = file.as_mut() {
                    if let Err(e) = f.write_all(data) {
                        write_err = Some(e);
                    }
                    return Ok(());
                }
                if small.len() + data.len() <= MAX_RESPONSE_IDENTIFIER {
                    small.extend_from_slice(data);
                    return Ok(());
                }
                match std::fs::File::create(&tmp) {
                    Ok(mut f) => {
                        let r = f.write_all(&small).and_then(|()| f.write_all(data));
                        small = Vec::new();
                        if let Err(e) = r {
                            write_err = Some(e);
                        }
                        file = Some(f);
                    }
                    Err(e) => write_err = Some(e),
                }
                Ok(())
            })?;
            if cmd.command_field == CommandField::CStoreRq as u16 {
                let class = cmd.affected_sop_class_uid.clone().unwrap_or_default();
                let sop = cmd.affected_sop_instance_uid.clone().unwrap_or_default();
                let ts = accepted
                    .iter()
                    .find(|c| c.id == pc)
                    .map(|c| c.transfer_syntax.clone())
                    .unwrap_or_default();
                let saved = write_err.map_or_else(
                    || {
                        save_received(
                            out_dir,
                            &class,
                            &sop,
                            &ts,
                            &small,
                            file.is_some().then_some(&tmp),
                        )
                    },
                    Err,
                );
                let _ = std::fs::remove_file(&tmp);
                let (st, comment) = match &saved {
                    Ok(path) => {
                        out.files.push(path.display().to_string());
                        (status::SUCCESS, None)
                    }
                    // Out of resources (PS3.4 B.2.3 A7xx): the file could not be written.
                    Err(e) => (0xA700, Some(format!("cannot write the object: {e}"))),
                };
                let rsp =
                    encode_response(&cmd, CommandField::CStoreRsp as u16, st, comment.as_deref());
                a.send(pc, &rsp, None)?;
                continue;
            }
            if cmd.message_id != message_id || cmd.command_field != CommandField::CGetRsp as u16 {
                return Err(ScuError::Protocol(format!(
                    "unexpected command 0x{:04X} (message {}) during C-GET",
                    cmd.command_field, cmd.message_id
                )));
            }
            if cmd.status == Some(status::PENDING) {
                out.pending += 1;
                if cancel_after == Some(out.pending) {
                    a.send(ctx.id, &cancel_rq(message_id), None)?;
                }
                continue;
            }
            finish(&mut out, &cmd, &small, &ctx.transfer_syntax);
            return Ok(());
        }
    })();
    match run {
        Ok(()) => {
            a.release()?;
            Ok(out)
        }
        Err(e) => {
            a.abort();
            Err(e)
        }
    }
}

/// Writes a received object as `<dir>/<sop>.dcm`: Part-10 header, then the dataset bytes
/// (in memory, or in the temporary file `spill`).
fn save_received(
    dir: &std::path::Path,
    class: &str,
    sop: &str,
    ts: &str,
    data: &[u8],
    spill: Option<&std::path::PathBuf>,
) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    crate::dicom::uid::validate_uid(sop)
        .map_err(|e| std::io::Error::other(format!("SOP Instance UID {sop:?}: {e}")))?;
    let header =
        crate::store::meta::build_header(class, sop, ts, "").map_err(std::io::Error::other)?;
    let path = dir.join(format!("{sop}.dcm"));
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&header)?;
    match spill {
        Some(tmp) => {
            std::io::copy(&mut std::fs::File::open(tmp)?, &mut f)?;
        }
        None => f.write_all(data)?,
    }
    f.sync_all()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::json::dataset_from_json;
    use serde_json::json;

    fn id(v: serde_json::Value) -> Dataset {
        dataset_from_json(&v).unwrap()
    }

    #[test]
    fn selection_key_rules() {
        // Study Root STUDY with a UID list.
        let s = check_retrieve(
            false,
            &id(json!({"00080052": {"vr": "CS", "Value": ["STUDY"]},
                       "0020000D": {"vr": "UI", "Value": ["1.2.3", "1.2.4"]}})),
        )
        .unwrap();
        assert_eq!(s.level, Level::Study);
        assert_eq!(s.studies, vec!["1.2.3", "1.2.4"]);
        assert!(s.patients.is_empty());
        // Patient Root STUDY needs the Patient ID.
        let r = check_retrieve(
            true,
            &id(json!({"00080052": {"vr": "CS", "Value": ["STUDY"]},
                       "0020000D": {"vr": "UI", "Value": ["1.2.3"]}})),
        )
        .unwrap_err();
        assert_eq!(r.status, 0xA900);
        assert_eq!(r.offending, Some(tags::PATIENT_ID));
        // PATIENT on Study Root.
        let r = check_retrieve(
            false,
            &id(json!({"00080052": {"vr": "CS", "Value": ["PATIENT"]},
                       "00100020": {"vr": "LO", "Value": ["P"]}})),
        )
        .unwrap_err();
        assert_eq!(r.offending, Some(tags::QUERY_RETRIEVE_LEVEL));
        // SERIES: a study list above the level is refused, so is a wildcard, so is no key.
        let r = check_retrieve(
            false,
            &id(json!({"00080052": {"vr": "CS", "Value": ["SERIES"]},
                       "0020000D": {"vr": "UI", "Value": ["1.2.3", "1.2.4"]},
                       "0020000E": {"vr": "UI", "Value": ["1.2.3.1"]}})),
        )
        .unwrap_err();
        assert_eq!(r.offending, Some(tags::STUDY_INSTANCE_UID));
        let mut wild = id(json!({"00080052": {"vr": "CS", "Value": ["SERIES"]},
                                 "0020000D": {"vr": "UI", "Value": ["1.2.3"]}}));
        wild.put_str(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.*");
        let r = check_retrieve(false, &wild).unwrap_err();
        assert_eq!(r.offending, Some(tags::SERIES_INSTANCE_UID));
        let r = check_retrieve(
            false,
            &id(json!({"00080052": {"vr": "CS", "Value": ["IMAGE"]},
                       "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
                       "0020000E": {"vr": "UI", "Value": ["1.2.3.1"]},
                       "00080018": {"vr": "UI"}})),
        )
        .unwrap_err();
        assert_eq!(r.offending, Some(tags::SOP_INSTANCE_UID));
        // No level.
        assert_eq!(
            check_retrieve(
                false,
                &id(json!({"0020000D": {"vr": "UI", "Value": ["1"]}}))
            )
            .unwrap_err()
            .status,
            0xA900
        );
        // Patient Root PATIENT with two IDs.
        let s = check_retrieve(
            true,
            &id(json!({"00080052": {"vr": "CS", "Value": ["PATIENT"]},
                       "00100020": {"vr": "LO", "Value": ["A", "B"]}})),
        )
        .unwrap();
        assert_eq!(s.patients, vec!["A", "B"]);
    }

    #[test]
    fn counts_clamp_and_final_status() {
        assert_eq!(clamp_count(65_535), 65_535);
        assert_eq!(clamp_count(65_536), 65_535);
        assert_eq!(clamp_count(1 << 40), 65_535);
        let mut t = Tally::new(70_000);
        for i in 0..69_999 {
            t.record(&format!("1.{i}"), &Outcome::Completed);
        }
        assert!(t.clamped());
        let p = t.pending_counts();
        assert_eq!(p.remaining, Some(1));
        assert_eq!(p.completed, Some(65_535), "clamped, not wrapped to 4,463");
        t.record("1.x", &Outcome::Failed("x".into()));
        assert_eq!(t.final_status(false), status::SUB_OPERATIONS_FAILED);
        assert_eq!(t.final_counts(false).remaining, None);
        assert_eq!(t.failed_uids, vec!["1.x"]);

        let mut all_failed = Tally::new(2);
        all_failed.record("1", &Outcome::Failed("x".into()));
        all_failed.record("2", &Outcome::Failed("x".into()));
        assert_eq!(all_failed.final_status(false), 0xA702);
        let mut ok = Tally::new(1);
        ok.record("1", &Outcome::Completed);
        assert_eq!(ok.final_status(false), 0x0000);
        let mut warned = Tally::new(1);
        warned.record("1", &Outcome::Warning(0xB007));
        assert_eq!(warned.final_status(false), 0xB000);
        assert!(warned.failed_uids.is_empty());
        let mut cancelled = Tally::new(5);
        cancelled.record("1", &Outcome::Completed);
        assert_eq!(cancelled.final_status(true), 0xFE00);
        let c = cancelled.final_counts(true);
        assert_eq!(c.remaining, Some(4));
        assert_eq!(Tally::new(0).final_status(false), 0x0000);
    }

    #[test]
    fn failed_list_fits_one_element() {
        let mut t = Tally::new(3000);
        for i in 0..3000 {
            t.record(
                &format!("1.2.826.0.1.3680043.2.1125.{i:040}"),
                &Outcome::Failed("x".into()),
            );
        }
        let ts = uids::EXPLICIT_VR_LITTLE_ENDIAN;
        let bytes = t.failed_list(ts).unwrap().unwrap();
        let ds = decode_identifier(&bytes, ts).unwrap();
        let Some(Value::Strs(v)) = ds.get(tags::FAILED_SOP_INSTANCE_UID_LIST).map(|e| &e.value)
        else {
            panic!("no list")
        };
        assert!(v.len() > 900 && v.len() < 3000, "{}", v.len());
        assert_eq!(v[0], t.failed_uids[0]);
        assert_eq!(Tally::new(1).failed_list(ts).unwrap(), None);
    }
}
