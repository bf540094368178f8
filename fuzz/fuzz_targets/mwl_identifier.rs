//! The Modality Worklist C-FIND identifier path as production runs it: the structure scan with
//! the limits used before dicom-object (depth 16), then `modality_worklist::find` (decode with
//! `read_dataset`, `Query::from_identifier`, match against a small store).
//!
//! Oracle: what passes the scan must never be refused by the model for depth — the scanner
//! must count the nesting dicom-object builds (otherwise the C1 stack overflow is back); a
//! refusal's response carries an Error Comment an LO holds (at most 64 ASCII characters; the
//! log gets the comment whole).
#![no_main]

#[path = "common/alloc_guard.rs"]
mod alloc_guard;

use std::hint::black_box;
use std::sync::OnceLock;

use dicom_gw::dicom::dataset::DatasetError;
use dicom_gw::dicom::scan::{check, Limits};
use dicom_gw::net::dimse::command::{decode_command, Command, CommandField};
use dicom_gw::net::dimse::find::final_response;
use dicom_gw::net::services::modality_worklist::{find, read_dataset, FindOutcome, SOP_CLASS};
use dicom_gw::worklist::{Dataset, WorklistStore};
use libfuzzer_sys::fuzz_target;

const SYNTAXES: [&str; 3] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
];

const ITEMS: &str = r#"[
  {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
   "00100020": {"vr": "LO", "Value": ["P1"]},
   "00100030": {"vr": "DA", "Value": ["19700101"]},
   "00080050": {"vr": "SH", "Value": ["ACC1"]},
   "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
   "00400100": {"vr": "SQ", "Value": [{
      "00080060": {"vr": "CS", "Value": ["CT"]},
      "00400001": {"vr": "AE", "Value": ["CT01"]},
      "00400002": {"vr": "DA", "Value": ["20261122"]},
      "00400003": {"vr": "TM", "Value": ["101500"]},
      "00400009": {"vr": "SH", "Value": ["SPS1"]}}]}},
  {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jörg"}]},
   "00100020": {"vr": "LO", "Value": ["P2"]},
   "00080050": {"vr": "SH", "Value": ["ACC2"]},
   "00400100": {"vr": "SQ", "Value": [{
      "00080060": {"vr": "CS", "Value": ["MR"]},
      "00400001": {"vr": "AE", "Value": ["MR01"]},
      "00400002": {"vr": "DA", "Value": ["20261123"]}}]}}
]"#;

fn store() -> &'static WorklistStore {
    static STORE: OnceLock<WorklistStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dicom-gw-fuzz-mwl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = WorklistStore::open_in(&dir).unwrap();
        let items = dicom_gw::worklist::model::parse_items(ITEMS).unwrap();
        store.create_many(items, dicom_gw::audit::no_audit).unwrap();
        store
    })
}

fn rq() -> Command {
    Command {
        command_field: CommandField::CFindRq as u16,
        message_id: 1,
        affected_sop_class_uid: Some(SOP_CLASS.into()),
        has_dataset: true,
        ..Command::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let [ts, identifier @ ..] = data else {
        return;
    };
    let ts = SYNTAXES[usize::from(*ts) % SYNTAXES.len()];
    if check(identifier, ts, &Limits::before_dicom_object()).is_err() {
        return;
    }
    if let Ok(obj) = read_dataset(identifier, ts) {
        if let Err(DatasetError::TooDeep { path }) = Dataset::from_dicom(&obj) {
            panic!("the scan passed a dataset nested too deep for the model: {path}");
        }
    }
    match find(store(), &rq(), identifier, ts, Some(10)) {
        FindOutcome::Matches(m) => {
            assert!(m.len() <= 10);
            black_box(m);
        }
        // The comment is kept whole for the log; the response carries what an LO holds.
        FindOutcome::Refused {
            status,
            comment,
            offending,
        } => {
            let rsp = final_response(&rq(), status, Some(&comment), offending);
            let sent = decode_command(&rsp).expect("our own response decodes");
            let sent = sent.error_comment.unwrap_or_default();
            assert!(sent.len() <= 64 && sent.is_ascii(), "{sent:?}");
            let printable = comment.chars().any(|c| c.is_ascii_graphic());
            assert!(
                !printable || !sent.is_empty(),
                "{comment:?} sent as nothing"
            );
        }
    }
});
