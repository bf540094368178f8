//! The blocking SCU association. It lives in dicom-gw ([`dicom_gw::net::scu`]) because the
//! gateway's forwarder uses the same code; re-exported here so the load generator's
//! `crate::scu::…` paths stay as they were. The load generator announces its own
//! implementation class UID and version name ([`crate::dataset::IMPLEMENTATION_CLASS_UID`])
//! through [`AssocParams`].

pub use dicom_gw::net::scu::*;
