//! Real-mount-tier harness, shared by the `real_*.rs` tests: the [`Driver`](driver::Driver)
//! running the real `pvdir` binary, the mount table read from `/proc/self/mountinfo`, request
//! builders, and `require_root!`.

pub mod driver;
pub mod mounts;
pub mod requests;
pub mod soak;
pub mod strace;
pub mod vm;

/// `true` when the privileged tests should run. Panics (fails the test) when they cannot run
/// and were not explicitly skipped.
pub fn privileged() -> bool {
    if std::env::var_os("PVDIR_SKIP_PRIVILEGED").is_some_and(|v| v == "1") {
        eprintln!(
            "skipped: PVDIR_SKIP_PRIVILEGED=1 (these tests need root for bind mounts and tmpfs)"
        );
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the tests/real_*.rs tests need root (they perform real bind and tmpfs mounts); \
         run them as root, or set PVDIR_SKIP_PRIVILEGED=1 to skip them explicitly"
    );
    true
}

/// Start of every test: return early (skipped) or fail when not root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::real::privileged() {
            return;
        }
    };
}
