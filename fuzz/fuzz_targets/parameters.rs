//! StorageClass parameters and volume context as string maps, including `subDir` templates
//! and `mountPermissions`: each is read into its typed form or refused, never a panic, and an
//! accepted `subDir` expands to a path below the share.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use pvdir::domain::mode::parse_mode;
use pvdir::domain::params::{from_map, without_kubelet_keys, LocalParams, NfsContext, NfsParams};

/// Keys the parsers know, so that the fuzzer reaches their values and not only serde's
/// "unknown field".
const KEYS: &[&str] = &[
    "server",
    "share",
    "subDir",
    "onDelete",
    "mountPermissions",
    "reuseExisting",
    "csi.storage.k8s.io/pv/name",
    "csi.storage.k8s.io/pvc/name",
    "csi.storage.k8s.io/pvc/namespace",
];

fuzz_target!(
    |input: (Vec<(u8, String)>, Vec<(String, String)>, String)| {
        let (known, free, name) = input;
        let mut map: HashMap<String, String> = known
            .into_iter()
            .map(|(k, v)| (KEYS[usize::from(k) % KEYS.len()].to_string(), v))
            .collect();
        let plain = map.clone();
        map.extend(free);
        for m in [&plain, &map] {
            if let Ok(p) = from_map::<LocalParams>(m) {
                let _ = parse_mode(p.mount_permissions.as_deref());
            }
            if let Ok(p) = from_map::<NfsParams>(m) {
                if let Ok(resolved) = p.resolve(&name) {
                    assert!(!resolved.subdir.as_str().starts_with('/'));
                    assert!(!resolved
                        .subdir
                        .as_str()
                        .split('/')
                        .any(|s| s == ".." || s.is_empty()));
                }
            }
            if let Ok(c) = from_map::<NfsContext>(&without_kubelet_keys(m)) {
                let _ = c.resolve();
            }
        }
    }
);
