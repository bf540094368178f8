//! Orthanc (Debian package `orthanc`, 1.10.1) as a real peer: a private `Orthanc` process per
//! test with its own configuration, storage directory, HTTP and DICOM ports, and its own
//! `DicomModalities` table pointing at the test's dicom-gw. Never the system service: the
//! package's instance (if any) keeps its ports and data, and tests never touch it.
//!
//! The REST calls used: `/system`, `/instances` (upload, list, file), `/modalities/{id}/query`,
//! `/queries/{id}/answers…/retrieve`. Skipped with a message when `Orthanc` is not installed
//! ([`require_orthanc`]), as the DCMTK tests do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::dcmtk::{drain, free_port, is_listening};
use super::http::{request, Resp};

/// Orthanc's AE title in the tests.
pub const ORTHANC_AET: &str = "ORTHANC";

/// True if `Orthanc` is installed; otherwise prints why `test` is skipped.
pub fn require_orthanc(test: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .any(|d| d.join("Orthanc").is_file());
    if !found {
        eprintln!("SKIPPED {test}: Orthanc is not installed (apt-get install orthanc)");
    }
    found
}

/// The Orthanc executable (Debian puts it in /usr/sbin, which a user's PATH may lack).
fn orthanc_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("Orthanc"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("Orthanc"))
}

/// A modality Orthanc knows: (name, AE title, port on 127.0.0.1).
#[derive(Debug, Clone)]
pub struct Modality {
    pub name: String,
    pub aet: String,
    pub port: u16,
}

impl Modality {
    pub fn new(name: &str, aet: &str, port: u16) -> Self {
        Modality {
            name: name.into(),
            aet: aet.into(),
            port,
        }
    }
}

/// A running private Orthanc, killed on drop.
pub struct Orthanc {
    pub http_port: u16,
    pub dicom_port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Orthanc {
    /// Writes `dir/orthanc.json` and starts `Orthanc` on free ports, with `modalities` in its
    /// `DicomModalities`; waits (≤ 60 s) until its REST API answers. Panics with its log
    /// otherwise.
    pub fn start(dir: &Path, modalities: &[Modality]) -> Orthanc {
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let (http_port, dicom_port) = (free_port(), free_port());
        let mods: serde_json::Map<String, Value> = modalities
            .iter()
            .map(|m| (m.name.clone(), json!([m.aet, "127.0.0.1", m.port])))
            .collect();
        let cfg = json!({
            "Name": "dicom-gw-test",
            "StorageDirectory": dir.join("storage"),
            "IndexDirectory": dir.join("storage"),
            "StorageCompression": false,
            "Plugins": [],
            "HttpServerEnabled": true,
            "HttpPort": http_port,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomServerEnabled": true,
            "DicomAet": ORTHANC_AET,
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": false,
            "DicomAlwaysAllowEcho": true,
            "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowFind": true,
            "DicomAlwaysAllowMove": true,
            "DicomAlwaysAllowGet": true,
            "DicomCheckModalityHost": false,
            "DicomModalities": mods,
            "DicomScuTimeout": 30,
            "SynchronousCMove": true,
            "StableAge": 1,
            "DefaultEncoding": "Utf8",
            "ConcurrentJobs": 2,
        });
        let cfg_path = dir.join("orthanc.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        let mut child = Command::new(orthanc_bin())
            .arg(&cfg_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run Orthanc: {e}"));
        let (_out, _) = drain(child.stdout.take().unwrap());
        let (log, _) = drain(child.stderr.take().unwrap());
        let mut o = Orthanc {
            http_port,
            dicom_port,
            dir: dir.to_path_buf(),
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = o.child.as_mut().unwrap().try_wait() {
                panic!("Orthanc exited {st} at start-up:\n{}", o.log());
            }
            if is_listening(http_port) && is_listening(dicom_port) {
                let r = o.get("/system");
                if r.status == 200 {
                    return o;
                }
            }
            if Instant::now() > deadline {
                panic!("Orthanc did not start within 60 s:\n{}", o.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Orthanc's log (stderr) so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    pub fn get(&self, path: &str) -> Resp {
        request(self.http_port, "GET", path, None, None)
    }

    /// GET, asserting 200, as JSON.
    #[track_caller]
    pub fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}\n{}", r.text(), self.log());
        serde_json::from_slice(&r.body).unwrap()
    }

    /// POST a JSON body, asserting 200, as JSON.
    #[track_caller]
    pub fn post_json(&self, path: &str, body: &Value) -> Value {
        let b = body.to_string();
        let r = request(
            self.http_port,
            "POST",
            path,
            None,
            Some(("application/json", b.as_bytes())),
        );
        assert_eq!(
            r.status,
            200,
            "POST {path} {body}: {}\n{}",
            r.text(),
            self.log()
        );
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    /// Adds (or replaces) a modality at run time (`PUT /modalities/{name}`), for peers whose
    /// port is known only after Orthanc started.
    #[track_caller]
    pub fn add_modality(&self, m: &Modality) {
        let body = json!({ "AET": m.aet, "Host": "127.0.0.1", "Port": m.port }).to_string();
        let r = request(
            self.http_port,
            "PUT",
            &format!("/modalities/{}", m.name),
            None,
            Some(("application/json", body.as_bytes())),
        );
        assert_eq!(r.status, 200, "PUT /modalities/{}: {}", m.name, r.text());
    }

    /// Uploads a Part-10 file (`POST /instances`); returns Orthanc's instance id.
    #[track_caller]
    pub fn upload(&self, file: &Path) -> String {
        let bytes = std::fs::read(file).unwrap();
        let r = request(
            self.http_port,
            "POST",
            "/instances",
            None,
            Some(("application/dicom", &bytes)),
        );
        assert_eq!(r.status, 200, "upload {}: {}", file.display(), r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        v["ID"].as_str().unwrap().to_owned()
    }

    /// Orthanc instance ids.
    pub fn instances(&self) -> Vec<String> {
        self.get_json("/instances")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// SOP Instance UID → the Part-10 file Orthanc holds (written under `dir/out/`).
    pub fn files_by_sop_uid(&self) -> std::collections::BTreeMap<String, PathBuf> {
        let out = self.dir.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let mut m = std::collections::BTreeMap::new();
        for id in self.instances() {
            let tags = self.get_json(&format!("/instances/{id}/simplified-tags"));
            let uid = tags["SOPInstanceUID"].as_str().unwrap().to_owned();
            let r = self.get(&format!("/instances/{id}/file"));
            assert_eq!(r.status, 200, "file of {id}");
            let p = out.join(format!("{uid}.dcm"));
            std::fs::write(&p, &r.body).unwrap();
            m.insert(uid, p);
        }
        m
    }

    /// Waits (≤ `timeout`) until Orthanc holds `n` instances.
    pub fn wait_instances(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let ids = self.instances();
            if ids.len() >= n {
                return ids;
            }
            if Instant::now() > deadline {
                panic!(
                    "Orthanc holds {} instances after {timeout:?}, expected {n}:\n{}",
                    ids.len(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
