//! The network side: upper layer (PS3.8), DIMSE (PS3.7), one module per service (PS3.4), the
//! association engine that serves every DICOM port, and the SCU.
//!
//! Layering inside: `ul` and `dimse` are pure (bytes in, decisions out); `services` decide
//! what each request gets; `association` does the I/O for every port. `net` imports nothing
//! above `store`, `rt`, `config` and `metrics`: finished objects leave through the
//! [`crate::store::sink::ObjectSink`] the storage service is given.

pub mod association;
pub mod dimse;
pub mod scu;
pub mod services;
pub mod ul;
