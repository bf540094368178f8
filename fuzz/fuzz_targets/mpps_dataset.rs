//! MPPS N-CREATE / N-SET datasets as production decodes them: the structure scan with the
//! limits used before dicom-object (depth 16), `read_dataset`, `Dataset::from_dicom`, then the
//! pure MPPS state machine (`worklist::mpps::n_create`, `n_set`) and worklist linking.
//!
//! Oracle: what passes the scan is never refused by the model for depth.
#![no_main]

#[path = "common/alloc_guard.rs"]
mod alloc_guard;

use std::hint::black_box;

use dicom_gw::dicom::dataset::DatasetError;
use dicom_gw::dicom::json::parse_datasets;
use dicom_gw::dicom::scan::{check, Limits};
use dicom_gw::net::services::modality_performed_procedure_step::new_instance_uid;
use dicom_gw::net::services::modality_worklist::read_dataset;
use dicom_gw::worklist::mpps::{links_to, n_create, n_set, step_refs};
use dicom_gw::worklist::{Dataset, MppsInstance};
use libfuzzer_sys::fuzz_target;

const SYNTAXES: [&str; 3] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
];

/// A stored IN PROGRESS instance for N-SET to modify.
fn current() -> MppsInstance {
    let json = r#"{
      "00400252": {"vr": "CS", "Value": ["IN PROGRESS"]},
      "00100020": {"vr": "LO", "Value": ["P1"]},
      "00400253": {"vr": "SH", "Value": ["PPS1"]},
      "00080060": {"vr": "CS", "Value": ["CT"]},
      "00400270": {"vr": "SQ", "Value": [{
         "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
         "00080050": {"vr": "SH", "Value": ["ACC1"]}}]}
    }"#;
    MppsInstance {
        sop_instance_uid: "1.2.3.4.5".into(),
        dataset: parse_datasets(json).unwrap().remove(0),
    }
}

fuzz_target!(|data: &[u8]| {
    let [ts, bytes @ ..] = data else {
        return;
    };
    let ts = SYNTAXES[usize::from(*ts) % SYNTAXES.len()];
    if check(bytes, ts, &Limits::before_dicom_object()).is_err() {
        return;
    }
    let Ok(obj) = read_dataset(bytes, ts) else {
        return;
    };
    let ds = match Dataset::from_dicom(&obj) {
        Ok(ds) => ds,
        Err(DatasetError::TooDeep { path }) => {
            panic!("the scan passed a dataset nested too deep for the model: {path}")
        }
        Err(e) => {
            black_box(e.path().top_tag());
            return;
        }
    };
    let refs = step_refs(&ds);
    black_box(links_to(&refs, &current().dataset));
    match n_create(None, &new_instance_uid(), ds.clone()) {
        Ok(created) => {
            black_box(created.status());
            black_box(created.to_json());
        }
        Err(e) => {
            black_box((e.status(), e.error_comment(), e.error_id(), e.attributes()));
        }
    }
    match n_set("1.2.3.4.5", Some(&current()), &ds) {
        Ok(updated) => black_box(updated.to_json()),
        Err(e) => black_box(serde_json::Value::String(e.error_comment())),
    };
});
