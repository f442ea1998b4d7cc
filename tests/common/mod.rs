//! Harness code shared by the integration tests. A directory module, so cargo does not build
//! it as a test crate of its own; each test file declares `mod common;`.

pub mod real;
pub mod service;
