//! dicom-gw: a DICOM gateway daemon that receives objects by C-STORE, keeps them byte for byte,
//! indexes them and forwards them reliably; serves the worklist and MPPS.
//!
//! Module map, from the bottom up (every arrow points down):
//! - [`rt`]: per-core runtimes (io_uring or epoll) behind a small owned-buffer I/O trait.
//! - [`tls`]: DICOM TLS (rustls) configurations and a TLS stream over the I/O trait.
//! - [`config`]: the TOML file as written → validated settings.
//! - [`clock`]: the wall clock in µs since the Unix epoch; a leaf.
//! - [`db`]: redb table definitions shared by index and queue.
//! - [`audit`]: the hash-chained audit log, the hook through which every change writes its
//!   entry in its own transaction, and the outbox of changes to the worklist database.
//! - [`health`]: vital components whose failure makes the daemon unready and stop.
//! - [`dicom`]: checks on a peer's dataset bytes before anything is built from them (the
//!   iterative structure scanner: depth, element and size limits, framing); a leaf.
//! - [`store`]: UID validation, the Part-10 header, the streaming writer, attribute extraction,
//!   the index.
//! - [`net`]: upper layer (PDU framing, the PS3.8 state machine, negotiation), DIMSE, services,
//!   and the association engine every DICOM port runs on.
//! - [`queue`]: forwarding jobs.
//! - [`ingest`]: the pipeline behind the storage service: routing, duplicate decisions, the
//!   write-ahead journal a C-STORE is answered from, the materializer and checkpoints that
//!   write object files and index rows, recovery at start-up.
//! - [`control`]: the control socket the CLI reaches the running daemon through (queue,
//!   tokens, users, audit, worklist import), and the same operations offline.
//! - [`http`]: admin API and metrics.
//! - [`server`]: wires the cores, listeners, ingest and shutdown together.

pub mod audit;
pub mod clock;
pub mod config;
pub mod control;
pub mod db;
pub mod dicom;
pub mod health;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod net;
pub mod queue;
pub mod rt;
pub mod server;
pub mod store;
pub mod tls;
pub mod wildcard;
pub mod worklist;

/// Our Implementation Class UID (PS3.7 D.3.3.2), a UUID-derived UID (PS3.5 §B.2) so it needs no
/// registered root. Sent in A-ASSOCIATE-AC and written in every file's meta group.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.196374621758347126453918253411749120835";

/// Our Implementation Version Name (≤ 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("DICOM_GW_", env!("CARGO_PKG_VERSION"));
