//! The domain, the middle layer: volumes, backends, and the publish logic. It knows CSI's rules
//! (idempotency, access modes, reclaim) but not gRPC: it returns its own error enums, which the
//! adapter maps to status codes. It reaches the machine only through [`crate::os::Os`].

pub mod access;
pub mod backend;
pub mod controller;
pub mod error;
pub mod group;
pub mod guard;
pub mod health;
pub mod host;
pub mod inventory;
pub mod local;
pub mod mode;
pub mod nfs;
pub mod node;
pub mod params;
pub mod record;
pub mod snapshot;
pub mod volume;
pub mod volume_id;
