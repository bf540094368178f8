//! Where the objects to send come from: synthesized in memory, or a directory of Part-10
//! files sent verbatim (their own transfer syntax, dataset bytes untouched), in rotation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dataset::{read_part10, Part10Error};
use crate::synth::{SynthSpec, Template};

/// One Part-10 file loaded into memory.
#[derive(Debug, Clone)]
pub struct FileObject {
    /// Where it was read from.
    pub path: PathBuf,
    /// Media Storage SOP Class UID from its meta group.
    pub sop_class: String,
    /// Media Storage SOP Instance UID from its meta group.
    pub sop_instance: String,
    /// Transfer syntax of the dataset.
    pub ts: String,
    /// Study Instance UID (only read when verification is requested; else empty).
    pub study: String,
    /// Series Instance UID (only read when verification is requested; else empty).
    pub series: String,
    /// The dataset bytes (everything after the meta group).
    pub data: Arc<[u8]>,
}

/// Why a directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Directory walk failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No Part-10 file found.
    #[error("no DICOM Part-10 file under {0}")]
    Empty(PathBuf),
    /// A file whose UIDs could not be read for verification.
    #[error("{path}: cannot read Study/Series Instance UID: {why}")]
    Uids {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// More than 127 distinct (SOP class, transfer syntax) pairs: more presentation contexts
    /// than an association can carry.
    #[error("{0} distinct SOP class / transfer syntax pairs; at most 127 fit in one association")]
    TooManyContexts(usize),
}

/// The objects of a run.
#[derive(Debug)]
pub enum Source {
    /// Synthesized objects.
    Synthetic {
        /// How they are made.
        spec: SynthSpec,
        /// One template per size.
        templates: Vec<Template>,
        /// Template index by object number modulo its length (the size mix weights).
        table: Vec<usize>,
    },
    /// Files, sent in rotation (object `i` is file `i % len`).
    Files(Vec<FileObject>),
}

/// One object ready to send: its dataset is `head` followed by `tail`.
#[derive(Debug, Clone, Copy)]
pub struct Obj<'a> {
    /// Affected SOP Class UID.
    pub sop_class: &'a str,
    /// Affected SOP Instance UID.
    pub sop_instance: &'a str,
    /// Study Instance UID (may be empty for files when not verifying).
    pub study: &'a str,
    /// Series Instance UID (may be empty for files when not verifying).
    pub series: &'a str,
    /// Transfer syntax UID of the dataset.
    pub ts: &'a str,
    /// First part of the dataset.
    pub head: &'a [u8],
    /// Rest of the dataset.
    pub tail: &'a [u8],
}

impl Obj<'_> {
    /// Dataset length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Whether the dataset is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// blake3 of the dataset bytes.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(self.head);
        h.update(self.tail);
        *h.finalize().as_bytes()
    }
}

/// Lists regular files under `dir`, recursively, sorted.
fn walk(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SourceError::Io { path, source }
    };
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io(&d))? {
            let e = e.map_err(io(&d))?;
            let t = e.file_type().map_err(io(&e.path()))?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads Study and Series Instance UIDs of a file with dicom-object (header only).
fn study_series(path: &Path) -> Result<(String, String), String> {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| e.to_string())?;
    let get = |t| -> Result<String, String> {
        let v = obj
            .element(t)
            .map_err(|e| e.to_string())?
            .to_str()
            .map_err(|e| e.to_string())?;
        Ok(v.trim_matches(|c| c == '\0' || c == ' ').to_owned())
    };
    Ok((
        get(tags::STUDY_INSTANCE_UID)?,
        get(tags::SERIES_INSTANCE_UID)?,
    ))
}

/// Media Storage Directory Storage (DICOMDIR): not sent.
const DICOMDIR_CLASS: &str = "1.2.840.10008.1.3.10";

impl Source {
    /// Synthetic objects made by `spec`.
    pub fn synthetic(spec: SynthSpec) -> Source {
        let templates = spec.templates();
        let table = spec.sizes.table();
        Source::Synthetic {
            spec,
            templates,
            table,
        }
    }

    /// Loads every Part-10 file under `dir` into memory (other files are skipped and
    /// returned). With `with_uids`, also reads each file's Study/Series Instance UIDs, which
    /// verification needs.
    pub fn load_dir(dir: &Path, with_uids: bool) -> Result<(Source, Vec<PathBuf>), SourceError> {
        let mut files = Vec::new();
        let mut skipped = Vec::new();
        for path in walk(dir)? {
            let (meta, data) = match read_part10(&path) {
                Ok(x) => x,
                Err(Part10Error::Format(_)) => {
                    skipped.push(path);
                    continue;
                }
                Err(Part10Error::Io(source)) => return Err(SourceError::Io { path, source }),
            };
            if meta.sop_class == DICOMDIR_CLASS || meta.sop_instance.is_empty() {
                skipped.push(path);
                continue;
            }
            let (study, series) = if with_uids {
                study_series(&path).map_err(|why| SourceError::Uids {
                    path: path.clone(),
                    why,
                })?
            } else {
                Default::default()
            };
            files.push(FileObject {
                path,
                sop_class: meta.sop_class,
                sop_instance: meta.sop_instance,
                ts: meta.transfer_syntax,
                study,
                series,
                data: data.into(),
            });
        }
        if files.is_empty() {
            return Err(SourceError::Empty(dir.to_path_buf()));
        }
        let s = Source::Files(files);
        let n = s.contexts().len();
        if n > 127 {
            return Err(SourceError::TooManyContexts(n));
        }
        Ok((s, skipped))
    }

    /// The distinct (SOP class, transfer syntax) pairs to propose, in first-use order.
    pub fn contexts(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut add = |a: &str, t: &str| {
            if !out.iter().any(|(x, y)| x == a && y == t) {
                out.push((a.to_owned(), t.to_owned()));
            }
        };
        match self {
            Source::Synthetic { templates, .. } => {
                for t in templates {
                    add(&t.sop_class, t.ts);
                }
            }
            Source::Files(files) => {
                for f in files {
                    add(&f.sop_class, &f.ts);
                }
            }
        }
        out
    }

    /// How many objects one pass takes (files: their number; synthetic: unbounded).
    pub fn pass_len(&self) -> Option<u64> {
        match self {
            Source::Synthetic { .. } => None,
            Source::Files(f) => Some(f.len() as u64),
        }
    }

    /// Mean dataset size over one rotation of the source.
    pub fn mean_size(&self) -> f64 {
        match self {
            Source::Synthetic {
                templates, table, ..
            } => {
                table
                    .iter()
                    .map(|&k| templates[k].len() as f64)
                    .sum::<f64>()
                    / table.len() as f64
            }
            Source::Files(f) => f.iter().map(|o| o.data.len() as f64).sum::<f64>() / f.len() as f64,
        }
    }

    /// A per-worker cursor (holds the worker's own copies of the template heads).
    pub fn cursor(self: &Arc<Self>) -> Cursor {
        let heads = match &**self {
            Source::Synthetic { templates, .. } => {
                templates.iter().map(|t| t.head.clone()).collect()
            }
            Source::Files(_) => Vec::new(),
        };
        Cursor {
            source: self.clone(),
            heads,
        }
    }
}

/// Produces objects for one worker.
#[derive(Debug)]
pub struct Cursor {
    source: Arc<Source>,
    heads: Vec<Vec<u8>>,
}

impl Cursor {
    /// Object number `i` (synthetic: patched in place; files: file `i % len`).
    pub fn object(&mut self, i: u64) -> Obj<'_> {
        match &*self.source {
            Source::Synthetic {
                spec,
                templates,
                table,
            } => {
                let k = table[(i % table.len() as u64) as usize];
                let t = &templates[k];
                let head = &mut self.heads[k];
                t.patch(head, &spec.position(i));
                let [sop, study, series] = t.uids(head);
                Obj {
                    sop_class: &t.sop_class,
                    sop_instance: sop,
                    study,
                    series,
                    ts: t.ts,
                    head,
                    tail: &t.tail,
                }
            }
            Source::Files(files) => {
                let f = &files[(i % files.len() as u64) as usize];
                Obj {
                    sop_class: &f.sop_class,
                    sop_instance: &f.sop_instance,
                    study: &f.study,
                    series: &f.series,
                    ts: &f.ts,
                    head: &[],
                    tail: &f.data,
                }
            }
        }
    }
}
