//! Code generated from proto/pluginregistration.proto by build.rs. Nothing hand-written lives
//! here.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("pluginregistration");
