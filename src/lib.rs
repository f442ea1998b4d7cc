//! pvdir: a CSI driver that gives every volume its own directory, on an NFS export or on a
//! node's local disk.
//!
//! Three layers, with imports flowing downward only:
//! - [`csi`]: the gRPC adapter; with [`kubelet`], [`server`] and [`socket`] (transport glue),
//!   the only code that sees tonic;
//! - [`domain`]: volumes, backends, publish logic, and their errors;
//! - [`os`]: mounts, the mount table, statfs and safe directory operations.
//!
//! [`kubelet`] (plugin registration) and [`http`] (`/healthz`, `/metrics`) are adapters beside
//! [`csi`]. [`metrics`] sits below every layer: each may take its handle.
//! [`server`] and [`cli`] wire them into the `pvdir` binary. [`ctl`] is the operator's CLI, a
//! CSI client beside the [`csi`] adapter.

// These docs are for pvdir's developers (`cargo doc --document-private-items`, checked by
// tests/run-all.sh): a public item's docs may point at the private code that does its work.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
pub mod csi;
pub mod ctl;
pub mod domain;
pub mod http;
pub mod kubelet;
pub mod metrics;
pub mod os;
pub mod server;
pub mod socket;
