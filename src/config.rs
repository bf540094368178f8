//! Configuration in two stages: the TOML file as written ([`RawConfig`], every key documented,
//! unknown keys refused) and the validated [`Settings`] the daemon runs on.
//!
//! Precedence, highest first: command-line flags, the config file, the environment
//! (`DICOM_GW_DATA` for the data directory), the built-in defaults. Errors name the key and,
//! where the key is in the file, its line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rt::IoMode;

/// Default data directory when neither flag, file nor `DICOM_GW_DATA` says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./dicom-gw-data";
/// Our default AE title.
pub const DEFAULT_AE_TITLE: &str = "DICOM_GW";
/// Default store service address.
pub const DEFAULT_STORE_LISTEN: &str = "0.0.0.0:4244";
/// Default maximum PDU length we announce (256 KiB).
pub const DEFAULT_MAX_PDU_LENGTH: u32 = 262_144;

/// When a C-STORE is acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the file data and directory entry are synced and the index committed (default).
    #[default]
    Full,
    /// After the file is written and the index committed, without syncing the file: survives a
    /// process crash, may lose recently acknowledged objects on power loss; much faster.
    Relaxed,
}

/// What to do when a SOP Instance UID arrives again with *different* bytes (identical bytes
/// are always acknowledged without a new row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicatePolicy {
    /// Keep the stored object, discard the new one, answer success (Orthanc's default).
    #[default]
    Keep,
    /// Replace the stored object with the new one.
    Replace,
    /// Refuse the new one with status 0111 (Duplicate SOP Instance).
    Reject,
}

/// The config file as written. Every key is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Data directory: objects, temporary files and `gateway.redb`.
    pub data_dir: Option<PathBuf>,
    /// I/O backend: "auto" (io_uring if the kernel allows it, else epoll), "uring", "epoll".
    pub io: Option<IoMode>,
    /// Number of core threads; 0 = one per CPU.
    pub threads: Option<usize>,
    /// "full" (default) or "relaxed"; see [`Durability`].
    pub durability: Option<Durability>,
    /// On SIGTERM, how long associations may take to finish before they are aborted.
    pub grace_period_seconds: Option<u64>,
    /// The store service.
    pub store: RawStore,
}

/// `[store]`: the Storage SCP and Verification service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    /// Our AE title (1–16 characters).
    pub ae_title: Option<String>,
    /// Listen address, e.g. "0.0.0.0:4244".
    pub listen: Option<String>,
    /// Maximum PDU length we announce and accept, bytes (default 262144).
    pub max_pdu_length: Option<u32>,
    /// Maximum concurrent associations; more are rejected (transient, local limit exceeded).
    pub max_associations: Option<usize>,
    /// Reject associations whose called AE title is not ours (default false, like storescp).
    pub require_called_ae_title: Option<bool>,
    /// If not empty, only these calling AE titles may associate.
    pub allowed_calling_ae_titles: Option<Vec<String>>,
    /// Accept any abstract syntax not known to be a non-storage service as a storage class.
    pub accept_any_storage_class: Option<bool>,
    /// Extra (private) storage SOP class UIDs to accept.
    pub extra_sop_classes: Option<Vec<String>>,
    /// ARTIM: how long to wait for A-ASSOCIATE-RQ after connect, and for the peer to close.
    pub acse_timeout_seconds: Option<u64>,
    /// How long an established association may stay silent before it is aborted.
    pub dimse_timeout_seconds: Option<u64>,
    /// "keep" (default), "replace" or "reject"; see [`DuplicatePolicy`].
    pub duplicate_policy: Option<DuplicatePolicy>,
    /// Extra wait for more objects before a group commit, microseconds (default 0).
    pub commit_window_micros: Option<u64>,
    /// Most objects per group commit (default 1024).
    pub commit_max_batch: Option<usize>,
}

/// Validated settings of the whole daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// I/O backend choice.
    pub io: IoMode,
    /// Core threads (resolved: ≥ 1).
    pub threads: usize,
    /// Durability mode.
    pub durability: Durability,
    /// Shutdown grace period.
    pub grace_period: Duration,
    /// Store service.
    pub store: StoreSettings,
}

/// Validated `[store]` settings.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// Our AE title, trimmed.
    pub ae_title: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// Maximum PDU length we announce.
    pub max_pdu_length: u32,
    /// Maximum concurrent associations.
    pub max_associations: usize,
    /// Enforce the called AE title.
    pub require_called_ae_title: bool,
    /// Calling AE allow-list (empty = anyone).
    pub allowed_calling_ae_titles: Vec<String>,
    /// Accept unknown abstract syntaxes as storage.
    pub accept_any_storage_class: bool,
    /// Extra storage SOP classes.
    pub extra_sop_classes: Vec<String>,
    /// ARTIM timeout.
    pub acse_timeout: Duration,
    /// DIMSE idle timeout.
    pub dimse_timeout: Duration,
    /// Duplicate policy.
    pub duplicate_policy: DuplicatePolicy,
    /// Group-commit window.
    pub commit_window: Duration,
    /// Group-commit batch cap.
    pub commit_max_batch: usize,
}

/// A configuration error, naming the key (and line when known).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or type error, or an unknown key (toml's message names line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// A value that parses but is not acceptable.
    #[error("{location}: {key}: {message}")]
    Invalid {
        /// "FILE line N", "FILE", or "command line".
        location: String,
        /// Dotted key, e.g. `store.ae_title`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Command-line overrides (flags beat the file).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--store-listen`
    pub store_listen: Option<String>,
    /// `--io`
    pub io: Option<IoMode>,
    /// `--threads`
    pub threads: Option<usize>,
    /// `--durability`
    pub durability: Option<Durability>,
}

/// Parses a config file's text (unknown keys are errors).
pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<(RawConfig, String), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((parse(&text, path)?, text))
}

/// Finds the line of `key = …` inside `[section]` (or at top level) for error messages.
fn key_line(text: &str, section: Option<&str>, key: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix('[') {
            // "[store]  # comment" and "[[destinations]]" both name their section.
            let name = rest.trim_start_matches('[').split(']').next().unwrap_or("");
            current = Some(name.trim().to_owned());
            continue;
        }
        let in_section = match section {
            None => current.is_none(),
            Some(s) => current.as_deref() == Some(s),
        };
        if in_section
            && t.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    None
}

/// Checks an AE title (PS3.5 Table 6.2-1: 1–16 characters of the default repertoire, no
/// backslash or control characters, not only spaces) and returns it trimmed.
pub fn validate_ae_title(ae: &str) -> Result<String, String> {
    let t = ae.trim();
    if t.is_empty() {
        return Err("an AE title needs at least one non-space character".into());
    }
    if ae.trim_end().len() > 16 {
        return Err(format!("{ae:?} is longer than 16 characters"));
    }
    if ae
        .chars()
        .any(|c| c == '\\' || c.is_control() || !c.is_ascii())
    {
        return Err(format!(
            "{ae:?} holds a backslash, control or non-ASCII character"
        ));
    }
    Ok(t.to_owned())
}

impl RawConfig {
    /// Validates the raw config with overrides applied. `source` is `(path, text)` of the file
    /// if one was given, for error locations.
    pub fn resolve(
        self,
        ov: &Overrides,
        source: Option<(&Path, &str)>,
    ) -> Result<Settings, ConfigError> {
        let invalid = |section: Option<&str>, key: &str, from_flag: bool, message: String| {
            let dotted = section.map_or_else(|| key.to_owned(), |s| format!("{s}.{key}"));
            let location = match (from_flag, source) {
                (true, _) => "command line".to_owned(),
                (false, Some((p, text))) => match key_line(text, section, key) {
                    Some(n) => format!("{} line {n}", p.display()),
                    None => p.display().to_string(),
                },
                (false, None) => "defaults".to_owned(),
            };
            ConfigError::Invalid {
                location,
                key: dotted,
                message,
            }
        };
        let s = self.store;
        let data_dir = ov
            .data_dir
            .clone()
            .or(self.data_dir)
            .or_else(|| std::env::var_os("DICOM_GW_DATA").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let threads = match ov.threads.or(self.threads).unwrap_or(0) {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n if n > 1024 => {
                return Err(invalid(
                    None,
                    "threads",
                    ov.threads.is_some(),
                    format!("{n} threads is more than 1024"),
                ))
            }
            n => n,
        };
        let ae_title = validate_ae_title(s.ae_title.as_deref().unwrap_or(DEFAULT_AE_TITLE))
            .map_err(|m| invalid(Some("store"), "ae_title", false, m))?;
        let listen_text = ov
            .store_listen
            .clone()
            .or(s.listen)
            .unwrap_or_else(|| DEFAULT_STORE_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                Some("store"),
                "listen",
                ov.store_listen.is_some(),
                format!("{listen_text:?} is not an ADDRESS:PORT (e.g. 0.0.0.0:4244)"),
            )
        })?;
        let max_pdu_length = s.max_pdu_length.unwrap_or(DEFAULT_MAX_PDU_LENGTH);
        if !(dicom_ul::pdu::MINIMUM_PDU_SIZE..=(64 * 1024 * 1024)).contains(&max_pdu_length) {
            return Err(invalid(
                Some("store"),
                "max_pdu_length",
                false,
                format!(
                    "{max_pdu_length} is outside {}..=67108864",
                    dicom_ul::pdu::MINIMUM_PDU_SIZE
                ),
            ));
        }
        let max_associations = s.max_associations.unwrap_or(256);
        if max_associations == 0 {
            return Err(invalid(
                Some("store"),
                "max_associations",
                false,
                "must be at least 1".into(),
            ));
        }
        let mut allowed = Vec::new();
        for ae in s.allowed_calling_ae_titles.unwrap_or_default() {
            allowed.push(
                validate_ae_title(&ae)
                    .map_err(|m| invalid(Some("store"), "allowed_calling_ae_titles", false, m))?,
            );
        }
        let mut extra = Vec::new();
        for uid in s.extra_sop_classes.unwrap_or_default() {
            let v = crate::store::uid::validate_uid(&uid).map_err(|e| {
                invalid(
                    Some("store"),
                    "extra_sop_classes",
                    false,
                    format!("{uid:?}: {e}"),
                )
            })?;
            extra.push(v.to_owned());
        }
        let secs = |v: Option<u64>, default: u64, key: &str| -> Result<Duration, ConfigError> {
            match v.unwrap_or(default) {
                0 => Err(invalid(
                    Some("store"),
                    key,
                    false,
                    "must be at least 1 second".into(),
                )),
                n => Ok(Duration::from_secs(n)),
            }
        };
        let commit_max_batch = s.commit_max_batch.unwrap_or(1024);
        if commit_max_batch == 0 {
            return Err(invalid(
                Some("store"),
                "commit_max_batch",
                false,
                "must be at least 1".into(),
            ));
        }
        Ok(Settings {
            data_dir,
            io: ov.io.or(self.io).unwrap_or(IoMode::Auto),
            threads,
            durability: ov.durability.or(self.durability).unwrap_or_default(),
            grace_period: Duration::from_secs(self.grace_period_seconds.unwrap_or(10)),
            store: StoreSettings {
                ae_title,
                listen,
                max_pdu_length,
                max_associations,
                require_called_ae_title: s.require_called_ae_title.unwrap_or(false),
                allowed_calling_ae_titles: allowed,
                accept_any_storage_class: s.accept_any_storage_class.unwrap_or(false),
                extra_sop_classes: extra,
                acse_timeout: secs(s.acse_timeout_seconds, 30, "acse_timeout_seconds")?,
                dimse_timeout: secs(s.dimse_timeout_seconds, 120, "dimse_timeout_seconds")?,
                duplicate_policy: s.duplicate_policy.unwrap_or_default(),
                commit_window: Duration::from_micros(s.commit_window_micros.unwrap_or(0)),
                commit_max_batch,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<Settings, ConfigError> {
        let p = Path::new("test.toml");
        parse(text, p)?.resolve(&Overrides::default(), Some((p, text)))
    }

    #[test]
    fn defaults_start_a_working_daemon() {
        let s = resolve("").unwrap();
        assert_eq!(s.store.ae_title, "DICOM_GW");
        assert_eq!(s.store.listen, "0.0.0.0:4244".parse().unwrap());
        assert_eq!(s.store.max_pdu_length, 262_144);
        assert_eq!(s.durability, Durability::Full);
        assert!(!s.store.require_called_ae_title);
        assert!(s.threads >= 1);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let e = resolve("data_dir = \"/x\"\n[store]\nae_titel = \"X\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ae_titel"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn invalid_values_name_key_and_line() {
        let e = resolve("[store]\n\nae_title = \"WAY_TOO_LONG_AE_TITLE\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.ae_title") && e.contains("line 3"), "{e}");
        let e = resolve("[store]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.listen") && e.contains("line 2"), "{e}");
        let e = resolve("[store]\nmax_pdu_length = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.max_pdu_length"), "{e}");
        let e = resolve("[store]\nextra_sop_classes = [\"1.2.x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.extra_sop_classes"), "{e}");
        let e = resolve("durability = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("durability") && e.contains("line 1"), "{e}");
        let e = resolve("[store]\ndimse_timeout_seconds = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("store.dimse_timeout_seconds"), "{e}");
        let e = resolve("[store]  # the store service\n\nmax_associations = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("store.max_associations") && e.contains("line 3"),
            "{e}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let text = "data_dir = \"/from/file\"\nio = \"uring\"\n[store]\nlisten = \"127.0.0.1:1\"\n";
        let p = Path::new("t.toml");
        let ov = Overrides {
            data_dir: Some("/from/flag".into()),
            store_listen: Some("127.0.0.1:2".into()),
            io: Some(IoMode::Epoll),
            ..Overrides::default()
        };
        let s = parse(text, p)
            .unwrap()
            .resolve(&ov, Some((p, text)))
            .unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(s.store.listen.port(), 2);
        assert_eq!(s.io, IoMode::Epoll);
        let e = parse("", p)
            .unwrap()
            .resolve(
                &Overrides {
                    store_listen: Some("bad".into()),
                    ..Overrides::default()
                },
                None,
            )
            .unwrap_err();
        assert!(e.to_string().contains("command line"), "{e}");
    }

    #[test]
    fn ae_titles() {
        assert_eq!(validate_ae_title("  ABC "), Ok("ABC".into()));
        assert!(validate_ae_title("    ").is_err());
        assert!(validate_ae_title("A\\B").is_err());
        assert!(validate_ae_title("12345678901234567").is_err());
    }
}
