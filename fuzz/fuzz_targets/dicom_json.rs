//! DICOM JSON import (`dicom::json::parse_datasets`, and `worklist::model::parse_items`,
//! what `POST /api/v1/worklist` and the CLI import take). Invariant: a dataset that was
//! accepted, written back with `dataset_to_json`, is accepted again and writes the same JSON.
//! (Not the same `Dataset`: `"Value": [null]` reads as one empty string and is written as no
//! value, which reads as no string — both a zero-length value; see fuzz/README.md.)
#![no_main]

#[path = "common/alloc_guard.rs"]
mod alloc_guard;

use std::hint::black_box;

use dicom_gw::dicom::json::{dataset_from_json, dataset_to_json, parse_datasets};
use dicom_gw::worklist::model::parse_items;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match parse_datasets(text) {
        Ok(datasets) => {
            for ds in &datasets {
                let json = dataset_to_json(ds);
                let back = dataset_from_json(&json)
                    .unwrap_or_else(|e| panic!("our own output is refused: {e}\n{json}"));
                assert_eq!(
                    dataset_to_json(&back),
                    json,
                    "round trip changed the output"
                );
            }
        }
        Err(e) => {
            black_box((e.path(), e.dataset_index(), e.to_string()));
        }
    }
    if let Err(e) = parse_items(text) {
        black_box((e.path(), e.dataset_index(), e.to_string()));
    }
});
