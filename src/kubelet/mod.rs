//! kubelet's plugin registration, served by pvdir itself (no node-driver-registrar sidecar).
//!
//! kubelet watches its `plugins_registry` directory. For each socket that appears there it
//! calls `GetInfo`, checks the answer (type `CSIPlugin`, a driver name not taken, a supported
//! CSI version, the CSI socket it should dial) and reports the outcome with
//! `NotifyRegistrationStatus`. It registers a plugin again whenever its socket is made anew,
//! which is how a restarted pvdir, or one whose socket was deleted, comes back.
//!
//! This module sits beside the CSI adapter and, like it, is the only code here that sees
//! tonic. One [`Registrar`] per driver name; its [`RegistrationState`] feeds `/healthz`.

pub mod proto;
mod registrar;
mod service;

pub use registrar::{Registrar, RegistrarError, RECHECK};
pub use service::RegistrationState;
