//! Shared helpers for dicom-gw integration tests: Part-10 generation and
//! parsing, DCMTK peers (storescu/echoscu/storescp/dcmconv/dcmcjpeg), the
//! daemon process wrapper, and the `gwtest!` macro. Use with `mod util;`
//! at the top of a test file, then `use util::*;`. Example:
//!
//! ```ignore
//! mod util;
//! use util::*;
//! gwtest!(store_roundtrip, |io: &str| {
//!     require_dcmtk();
//!     let tmp = tempfile::tempdir().unwrap();
//!     let mut gw = Daemon::start(env!("CARGO_BIN_EXE_dicom-gw"), tmp.path(), io, &[]);
//!     let spec = ObjSpec::new(1).pixel_bytes(1 << 20);
//!     let src = tmp.path().join("in.dcm");
//!     gen_part10(&src, &spec).unwrap();
//!     let f = tmp.path().join("in_ts.dcm");
//!     convert_ts(&src, &f, Ts::ExplicitBE);
//!     storescu(gw.port, &[&f], &storescu_flags_for(Ts::ExplicitBE)).assert_all_ok(&[&f]);
//!     let stored = spec.stored_path(tmp.path());
//!     assert_eq!(dataset_bytes(&stored), dataset_bytes(&f));
//!     gw.stop(); // SIGTERM, asserts exit code 0
//! });
//! ```
#![allow(dead_code, unused_imports)]

pub mod daemon;
pub mod dcmtk;
pub mod http;
pub mod part10;
pub mod python;

pub use daemon::*;
pub use dcmtk::*;
pub use http::*;
pub use part10::*;
pub use python::*;
pub mod forward;
pub mod orthanc;
pub use forward::*;

/// Defines one test per I/O backend: `gwtest!(name, |io: &str| { ... })`
/// expands to `mod name { #[test] fn uring() {..} #[test] fn epoll() {..} }`
/// calling the closure with "uring" / "epoll" (macro_rules cannot paste
/// identifiers, so the tests are named `name::uring` and `name::epoll`;
/// `cargo test name` runs both, `cargo test epoll` all epoll variants).
/// Attributes before the name (e.g. `#[ignore]`) apply to both tests.
/// The body sees the test file's items through `use super::*`.
#[macro_export]
macro_rules! gwtest {
    ($(#[$attr:meta])* $name:ident, $body:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $(#[$attr])*
            #[test]
            fn uring() {
                ($body)("uring")
            }

            $(#[$attr])*
            #[test]
            fn epoll() {
                ($body)("epoll")
            }
        }
    };
}
