//! Code generated from proto/csi.proto by build.rs. Nothing hand-written lives here.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("csi.v1");
