//! Unit tests of [`super::Metrics`]: names, labels and values as the exposition shows them.

use super::*;

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[test]
fn names_follow_the_conventions_and_the_exposition_ends_with_eof() {
    let m = Metrics::new();
    m.observe_rpc(
        &RpcLabels {
            backend: "local",
            method: "CreateVolume",
            code: "OK",
        },
        Duration::from_millis(3),
    );
    m.helper_killed("move mount", KillReason::Timeout);
    let text = m.encode();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE pvdir_grpc_request_duration_seconds histogram"));
    assert!(text.contains("# UNIT pvdir_grpc_request_duration_seconds seconds"));
    assert_eq!(
        line(&text, "pvdir_grpc_request_duration_seconds_count{"),
        Some(
            "pvdir_grpc_request_duration_seconds_count{backend=\"local\",method=\"CreateVolume\",code=\"OK\"} 1"
        )
    );
    assert_eq!(
        line(&text, "pvdir_helper_timeouts_total{"),
        Some("pvdir_helper_timeouts_total{operation=\"move_mount\"} 1")
    );
    assert_eq!(
        line(&text, "pvdir_helper_kills_total{"),
        Some("pvdir_helper_kills_total{operation=\"move_mount\",reason=\"timeout\"} 1")
    );
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(l.starts_with("pvdir_"), "{l}");
    }
}

#[test]
fn guard_metrics_of_a_backend_share_one_series() {
    let m = Metrics::new();
    let (a, b) = (m.guard("nfs"), m.guard("nfs"));
    a.claimed();
    b.claimed();
    a.released();
    b.refused();
    let text = m.encode();
    assert_eq!(
        line(&text, "pvdir_operations_in_flight{"),
        Some("pvdir_operations_in_flight{backend=\"nfs\"} 1")
    );
    assert_eq!(
        line(&text, "pvdir_guard_refusals_total{"),
        Some("pvdir_guard_refusals_total{backend=\"nfs\"} 1")
    );
}

#[test]
fn only_a_timeout_counts_as_a_timeout() {
    let m = Metrics::new();
    m.helper_killed("statfs-nfs", KillReason::OutputCap);
    m.helper_killed("statfs-nfs", KillReason::Abandoned);
    m.lazy_detach(DetachReason::Unresponsive);
    m.nfs_probe(ProbeResult::Stale);
    let text = m.encode();
    assert_eq!(line(&text, "pvdir_helper_timeouts_total{"), None);
    assert!(
        text.contains("pvdir_helper_kills_total{operation=\"statfs_nfs\",reason=\"output_cap\"} 1")
    );
    assert!(
        text.contains("pvdir_helper_kills_total{operation=\"statfs_nfs\",reason=\"abandoned\"} 1")
    );
    assert!(text.contains("pvdir_nfs_lazy_detaches_total{reason=\"unresponsive\"} 1"));
    assert!(text.contains("pvdir_nfs_probes_total{result=\"stale\"} 1"));
}

#[test]
fn state_gauges_are_set_not_added() {
    let m = Metrics::new();
    m.set_volumes("local", 3);
    m.set_volumes("local", 1);
    m.set_mounts("nfs", "export", 2);
    m.set_healthy("nfs", false);
    let text = m.encode();
    assert!(text.contains("pvdir_volumes{backend=\"local\"} 1\n"));
    assert!(text.contains("pvdir_mounts{backend=\"nfs\",role=\"export\"} 2\n"));
    assert!(text.contains("pvdir_backend_healthy{backend=\"nfs\"} 0\n"));
}
