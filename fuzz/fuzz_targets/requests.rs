//! CSI requests as protobuf bytes, the way they arrive on the socket: decoded (or refused by
//! prost), then validated by each request's TryFrom and planned by both backends, never a
//! panic. Planning touches nothing on disk; the fake OS it is given is never called.
#![no_main]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use pvdir::csi::proto as csi;
use pvdir::csi::request::VolumeAtPath;
use pvdir::domain::local::LocalBackend;
use pvdir::domain::nfs::{ClaimPolicy, NfsBackend};
use pvdir::domain::volume::{CreateSpec, PublishSpec};
use pvdir::os::fake::FakeOs;

fuzz_target!(|input: (u8, &[u8])| {
    let (which, bytes) = input;
    match which % 5 {
        0 => {
            let Ok(req) = csi::CreateVolumeRequest::decode(bytes) else {
                return;
            };
            let Ok(spec) = CreateSpec::try_from(req) else {
                return;
            };
            let fake = FakeOs::new();
            let local = LocalBackend::new(
                PathBuf::from("/nonexistent"),
                "n1".into(),
                Arc::new(fake.clone()),
            );
            let _ = local.plan(&spec);
            let nfs = NfsBackend::new(
                PathBuf::from("/nonexistent"),
                Arc::new(fake.clone()),
                ClaimPolicy::new(Duration::from_secs(60)),
            );
            let _ = nfs.plan(&spec);
            assert!(fake.calls().is_empty(), "planning touched the OS");
        }
        1 => {
            let Ok(req) = csi::NodePublishVolumeRequest::decode(bytes) else {
                return;
            };
            if let Ok(spec) = PublishSpec::try_from(req) {
                assert!(spec.target.is_absolute());
                let _ = spec.mount_flags();
            }
        }
        2 => {
            let Ok(req) = csi::NodeUnpublishVolumeRequest::decode(bytes) else {
                return;
            };
            let _ = VolumeAtPath::try_from(req);
        }
        3 => {
            let Ok(req) = csi::NodeGetVolumeStatsRequest::decode(bytes) else {
                return;
            };
            let _ = VolumeAtPath::try_from(req);
        }
        _ => {
            let Ok(req) = csi::DeleteVolumeRequest::decode(bytes) else {
                return;
            };
            let _ = pvdir::csi::request::DeleteSpec::try_from(req);
        }
    }
});
