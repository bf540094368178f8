//! Studies, series and instances from the index, and downloads of stored objects.
//!
//! A download is the stored Part-10 file exactly as kept, streamed in chunks from the
//! blocking pool (memory per download is one chunk, whatever the object's size). The file
//! is found through the index only: the SOP Instance UID from the URL is validated (PS3.5
//! §9.1: digits and dots) before anything else, the path comes from the index record, and
//! the canonical path must lie inside the data directory's `objects/` — so no URL, however
//! encoded, reaches a file outside it.

use std::io::Read;
use std::path::{Component, Path};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use serde_json::Value;
use tracing::error;

use serde::Serialize;

use super::{blocking, index_err, page_response, Params, Query};
use crate::dicom::uid::validate_uid;
use crate::http::{bytes_response, json_response, ApiError, Body, Ctx};
use crate::store::index::{InstanceRecord, StudyFilter, StudyRecord};
use crate::store::DataDir;

/// Bytes read per chunk of a download.
const CHUNK: usize = 256 * 1024;

/// Up to this many studies in the summary a search runs on the API thread itself (a scan of
/// that many in-memory records takes well under a millisecond): the API then uses at most that
/// one thread, at its lower priority, however hard it is loaded.
const INLINE_SEARCH_STUDIES: usize = 20_000;

/// Larger summaries are searched on the blocking pool, one search at a time, so a saturating
/// search load still occupies at most one blocking thread besides the API thread.
static SEARCH_SLOT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// A UID path parameter, validated (400 naming the parameter).
fn uid_param(p: &Params, name: &str) -> Result<String, ApiError> {
    validate_uid(p.get(name))
        .map(str::to_owned)
        .map_err(|e| ApiError::bad_request(format!("path parameter {name}: {e}")))
}

/// A `YYYYMMDD` date, checked for shape and plausible month and day.
fn check_date(d: &str) -> Result<(), String> {
    let ok = d.len() == 8
        && d.bytes().all(|b| b.is_ascii_digit())
        && (1..=12).contains(&d[4..6].parse::<u8>().unwrap_or(0))
        && (1..=31).contains(&d[6..8].parse::<u8>().unwrap_or(0));
    if ok {
        Ok(())
    } else {
        Err(format!("{d:?} is not a date YYYYMMDD"))
    }
}

/// `study_date`: `YYYYMMDD`, or a range `FROM-TO` where either end may be left open.
fn date_range(v: &str) -> Result<(String, String), ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("query parameter study_date: {m}"));
    let (from, to) = match v.split_once('-') {
        Some((f, t)) => (f, t),
        None => (v, v),
    };
    if from.is_empty() && to.is_empty() {
        return Err(bad(
            "a range needs at least one end (FROM-, -TO or FROM-TO)".into(),
        ));
    }
    for d in [from, to] {
        if !d.is_empty() {
            check_date(d).map_err(bad)?;
        }
    }
    if !from.is_empty() && !to.is_empty() && from > to {
        return Err(bad(format!("the range {v:?} ends before it starts")));
    }
    Ok((from.to_owned(), to.to_owned()))
}

/// `GET /studies`: search (`patient_id`, `patient_name`, `study_date`, `accession_number`,
/// `modality`), paginated. Served from the index's in-memory study summary, never from a redb
/// transaction, with the API's share of the CPU bounded (see [`INLINE_SEARCH_STUDIES`]), so a
/// search load cannot slow ingest (docs/benchmarks.md, issue 5).
pub async fn search(req: &Request<Incoming>, ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let mut q = Query::parse(req.uri())?;
    let filter = StudyFilter {
        patient_id: q.text("patient_id"),
        patient_name: q.text("patient_name"),
        study_date: q.text("study_date").map(|v| date_range(&v)).transpose()?,
        accession_number: q.text("accession_number"),
        modality: q.text("modality"),
    };
    let (offset, limit) = q.page()?;
    q.finish()?;
    let index = ctx.state.index.clone();
    let summary = index.study_summary();
    if !summary.is_stale() && summary.len() <= INLINE_SEARCH_STUDIES {
        let page = summary.search_shared(&filter, offset, limit);
        return Ok(search_response(&page.items, page.total, offset, limit));
    }
    let page = {
        let _slot = SEARCH_SLOT
            .acquire()
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        blocking(move || {
            index
                .search_studies(&filter, offset, limit)
                .map_err(index_err)
        })
        .await?
    };
    Ok(search_response(&page.items, page.total, offset, limit))
}

/// A study as the search renders it: the fields of [`StudyRecord`] in alphabetical order,
/// the order a `serde_json::Value` gives them, so the answer is byte for byte the generic
/// page answer without building a `Value` tree first (a third of the search's CPU).
#[derive(Serialize)]
struct StudyJson<'a> {
    accession_number: &'a str,
    modalities_in_study: &'a [String],
    num_instances: u64,
    num_series: u64,
    patient_id: &'a str,
    patient_name: &'a str,
    referring_physician_name: &'a str,
    study_date: &'a str,
    study_description: &'a str,
    study_id: &'a str,
    study_instance_uid: &'a str,
    study_time: &'a str,
}

impl<'a> From<&'a StudyRecord> for StudyJson<'a> {
    fn from(s: &'a StudyRecord) -> Self {
        // No `..`: a new field of StudyRecord must be added here too.
        let StudyRecord {
            study_instance_uid,
            patient_id,
            patient_name,
            study_date,
            study_time,
            accession_number,
            study_description,
            study_id,
            referring_physician_name,
            modalities_in_study,
            num_series,
            num_instances,
        } = s;
        Self {
            accession_number,
            modalities_in_study,
            num_instances: *num_instances,
            num_series: *num_series,
            patient_id,
            patient_name,
            referring_physician_name,
            study_date,
            study_description,
            study_id,
            study_instance_uid,
            study_time,
        }
    }
}

/// The standard list answer (keys in `Value` order: items, limit, offset, total).
#[derive(Serialize)]
struct StudyPageJson<'a> {
    items: Vec<StudyJson<'a>>,
    limit: usize,
    offset: u64,
    total: u64,
}

/// The search answer: the same bytes as `page_response` of the studies.
fn search_response<S: std::borrow::Borrow<StudyRecord>>(
    items: &[S],
    total: u64,
    offset: u64,
    limit: usize,
) -> Response<Body> {
    let page = StudyPageJson {
        items: items.iter().map(|s| StudyJson::from(s.borrow())).collect(),
        limit,
        offset,
        total,
    };
    let mut body = serde_json::to_vec_pretty(&page).unwrap_or_default();
    body.push(b'\n');
    bytes_response(200, "application/json", body)
}

/// `GET /studies/{study_uid}`: the study, with its patient.
pub async fn get_study(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let uid = uid_param(p, "study_uid")?;
    let index = ctx.state.index.clone();
    let v = blocking(move || {
        let study = index
            .study(&uid)
            .map_err(index_err)?
            .ok_or_else(|| ApiError::not_found(format!("no study {uid}")))?;
        let patient = index.patient(&study.patient_id).map_err(index_err)?;
        let mut v = serde_json::to_value(&study).map_err(|e| ApiError::internal(e.to_string()))?;
        if let (Value::Object(m), Some(pt)) = (&mut v, patient) {
            m.insert(
                "patient".into(),
                serde_json::to_value(pt).map_err(|e| ApiError::internal(e.to_string()))?,
            );
        }
        Ok(v)
    })
    .await?;
    Ok(json_response(200, &v))
}

/// `GET /studies/{study_uid}/series`.
pub async fn list_series(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    let (offset, limit) = Query::page_only(req.uri())?;
    let uid = uid_param(p, "study_uid")?;
    let index = ctx.state.index.clone();
    let page = blocking(move || {
        index
            .series_of_study(&uid, offset, limit)
            .map_err(index_err)?
            .ok_or_else(|| ApiError::not_found(format!("no study {uid}")))
    })
    .await?;
    Ok(page_response(&page.items, page.total, offset, limit))
}

/// `GET /studies/{study_uid}/series/{series_uid}/instances`.
pub async fn list_instances(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    let (offset, limit) = Query::page_only(req.uri())?;
    let study = uid_param(p, "study_uid")?;
    let series = uid_param(p, "series_uid")?;
    let index = ctx.state.index.clone();
    let page = blocking(move || {
        index
            .instances_of_series(&study, &series, offset, limit)
            .map_err(index_err)?
            .ok_or_else(|| ApiError::not_found(format!("no series {series} in study {study}")))
    })
    .await?;
    let items: Vec<serde_json::Value> = page.items.iter().map(instance_json).collect();
    Ok(page_response(&items, page.total, offset, limit))
}

/// An instance as the API shows it: the index record, and whether it is in quarantine.
fn instance_json(rec: &InstanceRecord) -> serde_json::Value {
    let mut v = serde_json::json!(rec);
    v["quarantined"] = serde_json::Value::Bool(crate::store::is_quarantined(&rec.path));
    v
}

/// `GET /instances/{sop_uid}`.
pub async fn get_instance(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let uid = uid_param(p, "sop_uid")?;
    let index = ctx.state.index.clone();
    let rec = blocking(move || find_instance(&index, &uid)).await?;
    Ok(json_response(200, &instance_json(&rec)))
}

fn find_instance(
    index: &crate::store::index::Index,
    uid: &str,
) -> Result<InstanceRecord, ApiError> {
    index
        .instance(uid)
        .map_err(index_err)?
        .ok_or_else(|| ApiError::not_found(format!("no instance {uid}")))
}

/// Opens the stored file of `rec`, refusing any path that is not a plain relative path
/// resolving (symbolic links followed) inside the data directory's `objects/`. Returns the
/// file and its length.
fn open_stored(data: &DataDir, rec: &InstanceRecord) -> Result<(std::fs::File, u64), ApiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let uid = &rec.sop_instance_uid;
    let gone = || ApiError::not_found(format!("the file of instance {uid} is not available"));
    let rel = Path::new(&rec.path);
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        error!(sop = %uid, path = %rec.path, "index record has a path that is not inside the data directory; download refused");
        return Err(gone());
    }
    let objects = data
        .objects()
        .canonicalize()
        .map_err(|e| ApiError::internal(format!("data directory: {e}")))?;
    let full = match data.root().join(rel).canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(gone()),
        Err(e) => return Err(ApiError::internal(format!("stored file of {uid}: {e}"))),
    };
    if !full.starts_with(&objects) {
        error!(sop = %uid, path = %full.display(), "stored file resolves outside the data directory; download refused");
        return Err(gone());
    }
    // The canonical path has no links left; O_NOFOLLOW keeps it so if one appears meanwhile.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&full)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => gone(),
            _ => ApiError::internal(format!("stored file of {uid}: {e}")),
        })?;
    let md = f
        .metadata()
        .map_err(|e| ApiError::internal(format!("stored file of {uid}: {e}")))?;
    if !md.is_file() {
        return Err(gone());
    }
    Ok((f, md.len()))
}

/// `GET /instances/{sop_uid}/file`: the stored Part-10 file, `application/dicom`, streamed.
pub async fn download(
    req: &Request<Incoming>,
    ctx: &Ctx<'_>,
    p: &Params,
) -> Result<Response<Body>, ApiError> {
    Query::parse(req.uri())?.finish()?;
    let uid = uid_param(p, "sop_uid")?;
    let index = ctx.state.index.clone();
    let data = ctx.state.data.clone();
    let name = uid.clone();
    let (file, len) = blocking(move || {
        let rec = find_instance(&index, &uid)?;
        open_stored(&data, &rec)
    })
    .await?;
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/dicom")
        .header("content-length", len)
        .header(
            "content-disposition",
            format!("attachment; filename=\"{name}.dcm\""),
        )
        .header("cache-control", "no-store")
        .body(file_body(file.take(len)))
        .expect("valid headers"))
}

/// A body that reads `r` one [`CHUNK`] at a time on the blocking pool.
fn file_body<R: Read + Send + Sync + 'static>(r: R) -> Body {
    let chunks = futures_util::stream::unfold(Some(r), |state| async move {
        let mut r = state?;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; CHUNK];
            let n = r.read(&mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((r, buf))
        })
        .await;
        match read {
            Ok(Ok((_, buf))) if buf.is_empty() => None,
            Ok(Ok((r, buf))) => Some((Ok(Frame::data(Bytes::from(buf))), Some(r))),
            Ok(Err(e)) => Some((Err(e), None)),
            Err(e) => Some((Err(std::io::Error::other(e)), None)),
        }
    });
    StreamBody::new(chunks).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_dates_and_ranges() {
        assert_eq!(
            date_range("20240115").unwrap(),
            ("20240115".into(), "20240115".into())
        );
        assert_eq!(
            date_range("20240101-").unwrap(),
            ("20240101".into(), String::new())
        );
        assert_eq!(
            date_range("-20241231").unwrap(),
            (String::new(), "20241231".into())
        );
        for bad in [
            "-",
            "2024",
            "20241301",
            "20240100",
            "2024011a",
            "20240201-20240101",
        ] {
            let e = date_range(bad).unwrap_err();
            assert!(
                e.status == 400 && e.message.contains("study_date"),
                "{bad}: {e}"
            );
        }
    }

    /// The search's own rendering is byte for byte the generic page answer.
    #[tokio::test]
    async fn search_answers_are_the_generic_page_bytes() {
        async fn bytes(r: Response<Body>) -> Vec<u8> {
            r.into_body().collect().await.unwrap().to_bytes().to_vec()
        }
        let a = StudyRecord {
            study_instance_uid: "1.2.3".into(),
            patient_id: "P\"1\\".into(),
            patient_name: "MÜLLER^HANS\u{1}".into(),
            study_date: "20240115".into(),
            study_time: "101500".into(),
            accession_number: "A7".into(),
            study_description: "Chest\nCT".into(),
            study_id: "S1".into(),
            referring_physician_name: "DR^WHO".into(),
            modalities_in_study: vec!["CT".into(), "SR".into()],
            num_series: 2,
            num_instances: 9,
        };
        let b = StudyRecord {
            study_instance_uid: "1.2.4".into(),
            ..Default::default()
        };
        for (items, total, offset, limit) in [
            (vec![a.clone(), b.clone()], 7u64, 3u64, 2usize),
            (vec![b], 1, 0, 100),
            (vec![], 0, 5, 10),
        ] {
            let mine = bytes(search_response(&items, total, offset, limit)).await;
            let generic = bytes(page_response(&items, total, offset, limit)).await;
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                String::from_utf8(generic).unwrap()
            );
        }
    }

    fn record(path: &str) -> InstanceRecord {
        InstanceRecord {
            sop_instance_uid: "1.2.3".into(),
            sop_class_uid: String::new(),
            study_instance_uid: String::new(),
            series_instance_uid: String::new(),
            instance_number: String::new(),
            transfer_syntax_uid: String::new(),
            file_size: 0,
            dataset_size: 0,
            dataset_blake3: String::new(),
            received_at_us: 0,
            calling_ae_title: String::new(),
            called_ae_title: String::new(),
            path: path.into(),
        }
    }

    #[test]
    fn stored_files_are_opened_only_inside_the_objects_directory() {
        let d = tempfile::tempdir().unwrap();
        let (data, _) = DataDir::prepare(&d.path().join("data")).unwrap();
        std::fs::create_dir_all(data.objects().join("1")).unwrap();
        std::fs::write(data.objects().join("1/2.dcm"), b"DICM").unwrap();
        std::fs::write(d.path().join("secret"), b"secret").unwrap();
        std::fs::write(data.root().join("gateway.redb"), b"db").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), data.objects().join("1/link.dcm"))
            .unwrap();
        let (_, len) = open_stored(&data, &record("objects/1/2.dcm")).unwrap();
        assert_eq!(len, 4);
        let outside = d.path().join("secret").to_string_lossy().into_owned();
        for bad in [
            "../secret",
            "objects/../../secret",
            outside.as_str(),
            "gateway.redb",
            "objects/1/link.dcm",
            "objects/1",
            "objects/1/missing.dcm",
            "",
        ] {
            let e = open_stored(&data, &record(bad)).unwrap_err();
            assert_eq!(e.status, 404, "{bad}: {e}");
        }
    }
}
