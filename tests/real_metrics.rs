//! `/metrics` of the real binary: scraped before and after real CSI calls (a create, a publish
//! that makes a real bind mount, refused calls, an unpublish and a delete), the numbers must
//! move by exactly what those calls did.
//!
//! Needs root like the other `real_*` tests. Assertions are on series values and codes, never
//! on help text.

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use common::real::driver::*;
use common::real::requests::*;
use pvdir::csi::proto::volume_capability::access_mode::Mode;
use tonic::Code;

/// A free TCP port on loopback for the driver's HTTP server.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One scrape: every sample as (name, labels) → value.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn take(port: u16) -> Scrape {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(
            body.ends_with("# EOF\n"),
            "an OpenMetrics exposition ends with EOF"
        );
        Scrape(body.lines().filter_map(parse_sample).collect())
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|have| have == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn calls(&self, method: &str, code: &str) -> f64 {
        self.sum(
            "pvdir_grpc_request_duration_seconds_count",
            &[("backend", "local"), ("method", method), ("code", code)],
        )
    }

    fn helper_runs(&self, operation: &str) -> f64 {
        self.sum(
            "pvdir_helper_duration_seconds_count",
            &[("operation", operation)],
        )
    }
}

/// `name{k="v",…} value` (label values here never hold quotes or commas).
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split(',')
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect();
    Some((name.to_string(), labels, value.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_numbers_move_with_real_calls() {
    require_root!();
    let port = free_port();
    let http = format!("127.0.0.1:{port}");
    let d = Driver::start_with_args(&["--http-endpoint", &http]).await;

    let before = Scrape::take(port);
    assert_eq!(before.sum("pvdir_volumes", &[("backend", "local")]), 0.0);
    assert_eq!(
        before.sum("pvdir_mounts", &[("backend", "local"), ("role", "target")]),
        0.0
    );
    assert_eq!(
        before.sum("pvdir_backend_healthy", &[("backend", "local")]),
        1.0
    );

    let id = create_volume(&d, "pvc-metrics", Mode::SingleNodeWriter).await;
    expect_code(
        d.controller()
            .create_volume(create_request("", Mode::SingleNodeWriter, MIB))
            .await,
        Code::InvalidArgument,
        "a create without a name",
    );
    let target = target_in_pod(&d, "a");
    publish(&d, &id, &target, Mode::SingleNodeWriter, false)
        .await
        .expect("publish");
    let missing = id.replace(key_of(&id), "pvc-missing");
    let elsewhere = target_in_pod(&d, "b");
    expect_code(
        d.node()
            .node_publish_volume(publish_request(
                &missing,
                &elsewhere,
                Mode::SingleNodeWriter,
                false,
            ))
            .await,
        Code::NotFound,
        "publish of a volume that does not exist",
    );
    expect_code(
        d.controller().delete_volume(delete_request(&id)).await,
        Code::FailedPrecondition,
        "delete of a volume still mounted",
    );

    expect_code(
        d.controller()
            .list_volumes(pvdir::csi::proto::ListVolumesRequest {
                max_entries: 0,
                starting_token: "not-a-token".into(),
            })
            .await,
        Code::Aborted,
        "a ListVolumes token this driver never gave",
    );

    let during = Scrape::take(port);
    assert_eq!(during.sum("pvdir_volumes", &[("backend", "local")]), 1.0);
    assert_eq!(
        during.sum("pvdir_mounts", &[("backend", "local"), ("role", "target")]),
        1.0
    );
    assert_eq!(
        during.sum("pvdir_operations_in_flight", &[("backend", "local")]),
        0.0,
        "every guard is released once its call has answered"
    );

    expect_ok(
        d.node()
            .node_unpublish_volume(unpublish_request(&id, &target))
            .await,
        "unpublish",
    );
    expect_ok(
        d.controller().delete_volume(delete_request(&id)).await,
        "delete",
    );

    let after = Scrape::take(port);
    let moved = |method: &str, code: &str| after.calls(method, code) - before.calls(method, code);
    assert_eq!(moved("CreateVolume", "OK"), 1.0);
    assert_eq!(moved("CreateVolume", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(moved("NodePublishVolume", "OK"), 1.0);
    assert_eq!(moved("NodePublishVolume", "NOT_FOUND"), 1.0);
    assert_eq!(moved("DeleteVolume", "FAILED_PRECONDITION"), 1.0);
    assert_eq!(moved("DeleteVolume", "OK"), 1.0);
    assert_eq!(moved("NodeUnpublishVolume", "OK"), 1.0);
    assert_eq!(moved("ListVolumes", "ABORTED"), 1.0);
    assert_eq!(after.sum("pvdir_volumes", &[("backend", "local")]), 0.0);
    assert_eq!(
        after.sum("pvdir_mounts", &[("backend", "local"), ("role", "target")]),
        0.0
    );
    assert_eq!(
        after.sum("pvdir_operations_in_flight", &[("backend", "local")]),
        0.0
    );
    // The one bind mount and the one unmount went through the OS layer and were timed.
    assert_eq!(after.helper_runs("bind") - before.helper_runs("bind"), 1.0);
    assert_eq!(
        after.helper_runs("umount") - before.helper_runs("umount"),
        1.0
    );
    // The create and the delete each committed one journal entry, one flush apiece as they
    // came one after the other.
    assert_eq!(
        after.helper_runs("journal_flush") - before.helper_runs("journal_flush"),
        2.0
    );
    // Nothing here was refused by a guard (the ABORTED above is a bad token) or killed.
    assert_eq!(after.sum("pvdir_guard_refusals_total", &[]), 0.0);
    assert_eq!(after.sum("pvdir_helper_kills_total", &[]), 0.0);
    // Latency is recorded in seconds: these calls took well under a minute.
    let took = after.sum(
        "pvdir_grpc_request_duration_seconds_sum",
        &[("method", "NodePublishVolume")],
    );
    assert!(took > 0.0 && took < 60.0, "{took}");
    if std::env::var_os("PVDIR_PRINT_SCRAPE").is_some() {
        eprintln!("{}", scrape_text(port));
    }
}

/// The raw exposition, for the README's sample (PVDIR_PRINT_SCRAPE=1).
fn scrape_text(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}
