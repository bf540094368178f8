//! lossyfs: a FUSE filesystem that keeps, for every file and directory, a *durable* state (what
//! its last flush made durable) and a *volatile* one (everything since), and on command loses
//! the volatile state as a power cut would. See README.md for the model and for what the
//! kernel tells a FUSE server.

pub mod fs;
pub mod model;

pub use fs::{unmount, Lossy, CTL_NAME};
pub use model::Model;
