//! Storage Service Class (PS3.4 Annex B): which SOP classes we accept, the C-STORE statuses,
//! and the checks run on a C-STORE before and after its dataset is received.
//!
//! The streaming itself (fragments to a temporary file) is in `store::writer`; what happens
//! to a finished object (routing, durability, indexing) is behind the [`ObjectSink`] the
//! service is given. This module decides what a C-STORE gets, and every failure is a
//! [`StoreError`], which carries its status.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::dicom::scan::{Limits, StreamCheck, UnUndefined};
use crate::dicom::uid::{validate_uid, UidError};
use crate::net::dimse::command::Command;
use crate::rt::ObjFile;
use crate::store::attrs::{self, ExtractError, IndexAttrs};
use crate::store::sink::{Accepted, ObjectSink, ReceivedObject};
use crate::store::writer::{read_dataset_prefix, ObjectWriter};
use crate::store::{meta, DataDir, DiskGuard, StoreError};

pub use super::storage_classes::STORAGE_SOP_CLASSES;

/// C-STORE statuses (PS3.4 Table B.2-1; PS3.7 Annex C for the general ones).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: Out of Resources.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: Data Set does not match SOP Class.
    pub const DATASET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    /// Error: Cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Refused: SOP Class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Failure: Duplicate SOP Instance.
    pub const DUPLICATE_SOP_INSTANCE: u16 = 0x0111;
    /// Failure: Processing failure.
    pub const PROCESSING_FAILURE: u16 = 0x0110;
}

/// Which abstract syntaxes the store service accepts.
#[derive(Debug, Clone)]
pub struct SopClassPolicy {
    classes: HashSet<String>,
    accept_any: bool,
}

impl SopClassPolicy {
    /// Verification, every standard storage class, and `extra`; with `accept_any`, also any
    /// UID the standard does not define as some other (non-storage) SOP class.
    pub fn new(extra: &[String], accept_any: bool) -> Self {
        let mut classes: HashSet<String> = STORAGE_SOP_CLASSES
            .iter()
            .map(|(uid, _)| (*uid).to_owned())
            .collect();
        classes.insert(super::verification::VERIFICATION_SOP_CLASS.to_owned());
        classes.extend(extra.iter().cloned());
        Self {
            classes,
            accept_any,
        }
    }

    /// Whether an abstract syntax is accepted.
    pub fn supports(&self, uid: &str) -> bool {
        use dicom_core::dictionary::UidDictionary;
        if self.classes.contains(uid) {
            return true;
        }
        self.accept_any
            && validate_uid(uid).is_ok()
            && dicom_dictionary_std::sop_class::StandardSopClassDictionary
                .by_uid(uid)
                .is_none()
    }
}

/// The structure check of every received dataset (issue: never acknowledge a broken object).
/// Generous, because its job is framing, not policy: real objects nest a few levels (deep
/// Structured Reports a few dozen) and the scanner is iterative, so depth costs only its stack
/// vector; a deflated dataset's inflation stays capped by the scanner's default.
pub const STRUCTURE_LIMITS: Limits = Limits {
    max_depth: 128,
    max_elements: 1 << 24,
    max_size: u64::MAX,
    un_undefined: UnUndefined::ImplicitLittle,
};

/// The largest dataset prefix read back from disk for attribute extraction: groups
/// 0008–0020 of any sane object fit; a dataset needing more is refused as not understood.
pub const MAX_HEADER_SCAN: usize = 16 * 1024 * 1024;

/// Extracts index attributes, asking `more(len)` for a longer prefix when the in-memory one
/// is too short (`dataset_size` is the full dataset length).
pub fn extract_attrs(
    prefix: &[u8],
    dataset_size: u64,
    ts_uid: &str,
    wanted: &[dicom_core::Tag],
    more: impl Fn(usize) -> std::io::Result<Vec<u8>>,
) -> Result<IndexAttrs, StoreError> {
    let complete = prefix.len() as u64 >= dataset_size;
    match attrs::extract_with(prefix, ts_uid, complete, wanted) {
        Err(ExtractError::NeedMore) => {
            let len = (dataset_size as usize).min(MAX_HEADER_SCAN);
            let bytes = more(len).map_err(|e| StoreError::from_io("read back dataset", &e))?;
            attrs::extract_with(&bytes, ts_uid, bytes.len() as u64 >= dataset_size, wanted).map_err(
                |e| match e {
                    ExtractError::NeedMore => StoreError::CannotUnderstand(format!(
                        "the indexed and routed attributes end beyond the first {MAX_HEADER_SCAN} bytes"
                    )),
                    other => other.into(),
                },
            )
        }
        other => Ok(other?),
    }
}

/// Checks the dataset against the C-STORE command (PS3.4 B.2.3: the dataset's SOP Class and
/// Instance UIDs are those of the command) and that the UIDs the path is built from are valid.
pub fn check_dataset(
    attrs: &IndexAttrs,
    sop_class: &str,
    sop_instance: &str,
) -> Result<(), StoreError> {
    if !attrs.sop_instance_uid.is_empty() && attrs.sop_instance_uid != sop_instance {
        return Err(StoreError::Mismatch(format!(
            "SOPInstanceUID {} in dataset, {} in command",
            attrs.sop_instance_uid, sop_instance
        )));
    }
    if !attrs.sop_class_uid.is_empty() && attrs.sop_class_uid != sop_class {
        return Err(StoreError::Mismatch(format!(
            "SOPClassUID {} in dataset, {} in command",
            attrs.sop_class_uid, sop_class
        )));
    }
    Ok(())
}

/// Why an object cannot be filed under `objects/<Study>/<Series>/`: a Study or Series
/// Instance UID that is missing or is not a UID (e.g. 77 characters). DCMTK `storescp` and
/// Orthanc accept such objects; at a gateway a refusal is a study that never reaches the
/// archive, so by default (`accept_nonconformant`) they are kept in quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nonconformance {
    /// No Study Instance UID (0020,000D).
    StudyUidMissing,
    /// No Series Instance UID (0020,000E).
    SeriesUidMissing,
    /// A Study Instance UID that is not a UID.
    StudyUidInvalid(UidError),
    /// A Series Instance UID that is not a UID.
    SeriesUidInvalid(UidError),
}

impl Nonconformance {
    /// The `reason` label of `dicomgw_nonconformant_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Nonconformance::StudyUidMissing => "study_uid_missing",
            Nonconformance::SeriesUidMissing => "series_uid_missing",
            Nonconformance::StudyUidInvalid(_) => "study_uid_invalid",
            Nonconformance::SeriesUidInvalid(_) => "series_uid_invalid",
        }
    }

    /// The refusal when quarantine is off (C000, as before quarantine existed).
    pub fn refusal(self) -> StoreError {
        match self {
            Nonconformance::StudyUidMissing => {
                StoreError::CannotUnderstand("StudyInstanceUID (0020,000D) missing".into())
            }
            Nonconformance::SeriesUidMissing => {
                StoreError::CannotUnderstand("SeriesInstanceUID (0020,000E) missing".into())
            }
            Nonconformance::StudyUidInvalid(source) => StoreError::InvalidUid {
                field: "StudyInstanceUID",
                source,
            },
            Nonconformance::SeriesUidInvalid(source) => StoreError::InvalidUid {
                field: "SeriesInstanceUID",
                source,
            },
        }
    }
}

/// The first reason `attrs` cannot be filed by its UIDs, if any.
pub fn nonconformance(attrs: &IndexAttrs) -> Option<Nonconformance> {
    let check = |v: &str, missing, invalid: fn(UidError) -> Nonconformance| {
        if v.is_empty() {
            Some(missing)
        } else {
            validate_uid(v).err().map(invalid)
        }
    };
    check(
        &attrs.study_instance_uid,
        Nonconformance::StudyUidMissing,
        Nonconformance::StudyUidInvalid,
    )
    .or_else(|| {
        check(
            &attrs.series_instance_uid,
            Nonconformance::SeriesUidMissing,
            Nonconformance::SeriesUidInvalid,
        )
    })
}

/// Files a non-conformant object in quarantine: its path is named by a hash of its raw UIDs,
/// and an unusable Study or Series Instance UID is replaced *in the index* (never in the
/// stored bytes) by a UUID-style UID derived from the same raw value (PS3.5 B.2), so the
/// object is listed, searched, downloaded and forwarded like any other. Objects that share a
/// raw Study UID share the substitute; one without any shares it with its series (or, with
/// neither, is its own study).
pub fn quarantine(attrs: &mut IndexAttrs, sop_instance: &str) -> PathBuf {
    let (study, series) = (&attrs.study_instance_uid, &attrs.series_instance_uid);
    let key = hash_parts(&[study, series, sop_instance]);
    let new_study = substitute(&["study", or(study, or(series, sop_instance))]);
    let new_series = substitute(&["series", or(series, sop_instance)]);
    if validate_uid(&attrs.study_instance_uid).is_err() {
        attrs.study_instance_uid = new_study;
    }
    if validate_uid(&attrs.series_instance_uid).is_err() {
        attrs.series_instance_uid = new_series;
    }
    DataDir::quarantine_rel_path(&key)
}

/// `v`, or `fallback` when `v` is empty.
fn or<'a>(v: &'a str, fallback: &'a str) -> &'a str {
    if v.is_empty() {
        fallback
    } else {
        v
    }
}

/// BLAKE3 of `parts`, each followed by a NUL, so no two lists hash alike.
fn hash_parts(parts: &[&str]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\0");
    }
    h.finalize()
}

/// A UUID-derived UID (PS3.5 B.2) from the hash of `parts`: ≤ 44 characters, always valid.
fn substitute(parts: &[&str]) -> String {
    let mut n = [0u8; 16];
    n.copy_from_slice(&hash_parts(parts).as_bytes()[..16]);
    format!("2.25.{}", u128::from_be_bytes(n))
}

/// The Storage SCP: what a C-STORE needs beyond its association.
#[derive(Debug, Clone)]
pub struct StorageScp {
    /// Accepted abstract syntaxes.
    pub sop_classes: Arc<SopClassPolicy>,
    /// Where finished objects go.
    pub sink: Arc<dyn ObjectSink>,
    /// The data directory (temporary files, object paths).
    pub data: DataDir,
    /// The disk high-water mark.
    pub disk: DiskGuard,
    /// Quarantine objects without a usable Study/Series Instance UID instead of refusing them.
    pub accept_nonconformant: bool,
    /// Objects (header and dataset) up to this many bytes are received in memory and go to
    /// the ingest journal whole; larger ones stream to a temporary file.
    pub inline_max: usize,
}

/// The association-level facts a C-STORE is checked against.
#[derive(Debug, Clone, Copy)]
pub struct StoreContext<'a> {
    /// The presentation context's abstract syntax.
    pub abstract_syntax: &'a str,
    /// The presentation context's transfer syntax.
    pub transfer_syntax: &'a str,
    /// The association's calling AE title.
    pub calling_ae_title: &'a str,
    /// The association's called AE title.
    pub called_ae_title: &'a str,
}

/// A C-STORE whose dataset is arriving: streamed to its temporary file, or refused (its
/// fragments are then dropped and the refusal answered once the last one has arrived).
#[derive(Debug)]
pub enum Reception<F: ObjFile> {
    /// Streaming to a temporary file (boxed: the writer holds its hasher and prefix).
    Streaming(Box<ObjectWriter<F>>),
    /// Refused before any byte was written.
    Refused(StoreError),
}

impl StorageScp {
    /// Checks a C-STORE-RQ and opens its temporary file at `temp_path`.
    pub async fn begin<F: ObjFile>(
        &self,
        cmd: &Command,
        ctx: StoreContext<'_>,
        temp_path: PathBuf,
    ) -> Reception<F> {
        let class = cmd.affected_sop_class_uid.as_deref().unwrap_or("");
        if let Err(e) = self.disk.check() {
            tracing::warn!(error = %e, "C-STORE refused: disk above the high-water mark");
            return Reception::Refused(e);
        }
        if class != ctx.abstract_syntax {
            return Reception::Refused(StoreError::SopClassNotNegotiated {
                class: class.to_owned(),
                context: ctx.abstract_syntax.to_owned(),
            });
        }
        let instance = match validate_uid(cmd.affected_sop_instance_uid.as_deref().unwrap_or("")) {
            Ok(uid) => uid,
            Err(source) => {
                return Reception::Refused(StoreError::InvalidUid {
                    field: "AffectedSOPInstanceUID",
                    source,
                })
            }
        };
        let header =
            match meta::build_header(class, instance, ctx.transfer_syntax, ctx.calling_ae_title) {
                Ok(h) => h,
                Err(e) => return Reception::Refused(StoreError::CannotUnderstand(e.to_string())),
            };
        let check = StreamCheck::for_transfer_syntax(ctx.transfer_syntax, STRUCTURE_LIMITS);
        match ObjectWriter::<F>::create(temp_path, header, check, self.inline_max).await {
            Ok(w) => Reception::Streaming(Box::new(w)),
            Err(e) => Reception::Refused(StoreError::from_io("create temporary file", &e)),
        }
    }

    /// The last fragment landed: closes the file, checks the dataset against the command and
    /// hands the object to the sink; resolves once it is durable (or refused), with the
    /// dataset's size.
    pub async fn end<F: ObjFile>(
        &self,
        cmd: &Command,
        ctx: StoreContext<'_>,
        writer: ObjectWriter<F>,
    ) -> Result<(Accepted, u64), StoreError> {
        let obj = writer
            .finish()
            .await
            .map_err(|e| StoreError::from_io("write object", &e))?;
        self.disk.admit(obj.dataset_size);
        let class = cmd.affected_sop_class_uid.as_deref().unwrap_or("");
        let instance = cmd.affected_sop_instance_uid.as_deref().unwrap_or("");
        // One snapshot for the whole object, even if the routing table is swapped meanwhile.
        let sink = self.sink.snapshot();
        let accept_nonconformant = self.accept_nonconformant;
        let checked = (|| {
            obj.structure.clone()?;
            let attrs = extract_attrs(
                &obj.prefix,
                obj.dataset_size,
                ctx.transfer_syntax,
                sink.wanted_tags(),
                |len| read_dataset_prefix(&obj, len),
            )?;
            check_dataset(&attrs, class, instance)?;
            let mut attrs = attrs;
            let path = match nonconformance(&attrs) {
                None => DataDir::object_rel_path(
                    &attrs.study_instance_uid,
                    &attrs.series_instance_uid,
                    instance,
                )?,
                Some(n) if !accept_nonconformant => return Err(n.refusal()),
                Some(n) => {
                    crate::metrics::global().nonconformant(n.label());
                    let (study, series) = (
                        attrs.study_instance_uid.clone(),
                        attrs.series_instance_uid.clone(),
                    );
                    let path = quarantine(&mut attrs, instance);
                    tracing::warn!(sop_instance_uid = %instance, reason = n.label(),
                        study = %study.escape_debug(), series = %series.escape_debug(),
                        indexed_study = %attrs.study_instance_uid, indexed_series = %attrs.series_instance_uid,
                        path = %path.display(),
                        "non-conformant object kept in quarantine (accept_nonconformant)");
                    path
                }
            };
            Ok::<_, StoreError>((attrs, path))
        })();
        // The prefix may be a view of the body's buffer: let go of it, so the buffer goes back
        // to the pool once the object is on disk.
        drop(obj.prefix);
        let (attrs, rel_path) = match checked {
            Ok(x) => x,
            Err(e) => {
                obj.body.discard();
                return Err(e);
            }
        };
        let dataset_size = obj.dataset_size;
        let accepted = sink
            .submit(ReceivedObject {
                body: obj.body,
                file_size: obj.file_size,
                dataset_size: obj.dataset_size,
                dataset_blake3: obj.dataset_blake3,
                sop_class_uid: class.to_owned(),
                sop_instance_uid: instance.to_owned(),
                transfer_syntax_uid: ctx.transfer_syntax.to_owned(),
                calling_ae_title: ctx.calling_ae_title.to_owned(),
                called_ae_title: ctx.called_ae_title.to_owned(),
                rel_path,
                attrs,
            })
            .await?;
        Ok((accepted, dataset_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_accepts_storage_and_verification_only() {
        let p = SopClassPolicy::new(&[], false);
        assert!(p.supports(dicom_dictionary_std::uids::CT_IMAGE_STORAGE));
        assert!(p.supports(dicom_dictionary_std::uids::ENHANCED_MR_IMAGE_STORAGE));
        assert!(p.supports(dicom_dictionary_std::uids::VERIFICATION));
        assert!(!p.supports(dicom_dictionary_std::uids::STORAGE_COMMITMENT_PUSH_MODEL));
        assert!(!p.supports(
            dicom_dictionary_std::uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND
        ));
        assert!(!p.supports("1.2.3.4.5.6"));
        assert!(STORAGE_SOP_CLASSES.len() > 150);
    }

    #[test]
    fn extras_and_accept_any() {
        assert!(SopClassPolicy::new(&["1.2.3.4.5.6".into()], false).supports("1.2.3.4.5.6"));
        let any = SopClassPolicy::new(&[], true);
        assert!(any.supports("1.2.3.4.5.6"));
        assert!(!any.supports(
            dicom_dictionary_std::uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND
        ));
        assert!(!any.supports("not-a-uid"));
    }

    #[test]
    fn dataset_checks() {
        let mut a = IndexAttrs {
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.3".into(),
            sop_instance_uid: "1.5".into(),
            ..Default::default()
        };
        assert!(check_dataset(&a, "1.9", "1.5").is_ok());
        assert_eq!(
            check_dataset(&a, "1.9", "1.6").unwrap_err().status(),
            status::DATASET_DOES_NOT_MATCH_SOP_CLASS
        );
        a.series_instance_uid.clear();
        // A missing Series UID is no mismatch: it is a non-conformance (quarantine or C000).
        assert!(check_dataset(&a, "1.9", "1.5").is_ok());
        assert_eq!(nonconformance(&a), Some(Nonconformance::SeriesUidMissing));
        assert_eq!(
            nonconformance(&a).unwrap().refusal().status(),
            status::CANNOT_UNDERSTAND
        );
        // Every reason is a label the metric counts (it drops unknown ones).
        for n in [
            Nonconformance::StudyUidMissing,
            Nonconformance::SeriesUidMissing,
            Nonconformance::StudyUidInvalid(UidError::Empty),
            Nonconformance::SeriesUidInvalid(UidError::Empty),
        ] {
            assert!(
                crate::metrics::NONCONFORMANT_REASONS.contains(&n.label()),
                "{n:?}"
            );
        }
    }

    #[test]
    fn nonconformant_objects_are_filed_by_hash_under_substitute_uids() {
        let long = format!("1.2.{}", "3".repeat(73));
        assert_eq!(long.len(), 77);
        let attrs = |study: &str, series: &str| IndexAttrs {
            study_instance_uid: study.into(),
            series_instance_uid: series.into(),
            ..Default::default()
        };
        assert_eq!(nonconformance(&attrs("1.2", "1.2.3")), None);
        assert_eq!(
            nonconformance(&attrs("", "1.2.3")),
            Some(Nonconformance::StudyUidMissing)
        );
        assert!(matches!(
            nonconformance(&attrs(&long, "1.2.3")),
            Some(Nonconformance::StudyUidInvalid(_))
        ));
        assert!(matches!(
            nonconformance(&attrs("1.2", "../../etc")),
            Some(Nonconformance::SeriesUidInvalid(_))
        ));
        assert_eq!(
            nonconformance(&attrs(&long, "1.2.3"))
                .unwrap()
                .refusal()
                .status(),
            0xC000
        );

        let mut a = attrs(&long, "1.2.3");
        let path = quarantine(&mut a, "1.5");
        // Named by a hash, inside objects/quarantine/, never by the raw UID.
        assert!(crate::store::is_quarantined(&path.to_string_lossy()));
        assert!(!path.to_string_lossy().contains(&long));
        assert_eq!(path.components().count(), 4, "{path:?}");
        // The unusable study UID gets a valid substitute; the good series UID stays.
        validate_uid(&a.study_instance_uid).unwrap();
        assert!(a.study_instance_uid.starts_with("2.25."));
        assert_eq!(a.series_instance_uid, "1.2.3");
        // Deterministic: objects of the same raw study share the substitute, not the path.
        let mut b = attrs(&long, "1.2.3");
        let path_b = quarantine(&mut b, "1.6");
        assert_eq!(a.study_instance_uid, b.study_instance_uid);
        assert_ne!(path, path_b);
        // No study and no series: both substituted, both valid.
        let mut c = attrs("", "");
        quarantine(&mut c, "1.7");
        validate_uid(&c.study_instance_uid).unwrap();
        validate_uid(&c.series_instance_uid).unwrap();
        assert_ne!(c.study_instance_uid, c.series_instance_uid);
        assert!(!crate::store::is_quarantined("objects/1.2/1.2.3/1.5.dcm"));
    }
}
