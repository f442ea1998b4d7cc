//! Volume IDs as CSI calls carry them (DeleteVolume, NodePublish, ...): any string parses or
//! is refused without a panic, and whatever parses names a directory below its root or share
//! and prints back to an ID that parses to the same value (the round trip the node and
//! DeleteVolume rely on). Claim names give keys that parse back to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pvdir::domain::volume_id::{guard_key, VolumeId, VolumeKey};

fuzz_target!(|input: &str| {
    if let Ok(id) = VolumeId::parse(input) {
        let printed = id.to_string();
        assert_eq!(VolumeId::parse(&printed).as_ref(), Ok(&id), "{printed}");
        match &id {
            VolumeId::Local(l) => assert!(!l.key.as_str().contains('/')),
            VolumeId::Nfs(n) => assert!(!n.subdir.as_str().starts_with('/')),
        }
    }
    let _ = guard_key(input);
    if let Some(key) = VolumeKey::from_name(input) {
        assert_eq!(VolumeKey::parse(key.as_str()).as_ref(), Some(&key));
        assert_eq!(VolumeKey::from_name(input).as_ref(), Some(&key), "stable");
    }
});
