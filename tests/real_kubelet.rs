//! The real binary registering itself with kubelet and answering `/healthz`.
//!
//! The test plays kubelet's part on the registration socket with a tonic client of the same
//! API (GetInfo, NotifyRegistrationStatus). That stand-in proves the socket's lifecycle and
//! what pvdir answers, not that kubelet accepts it: the cluster tier (`tests/k8s/`) proves that
//! with a real kubelet, which lists the drivers in CSINode.
//!
//! Needs root like the other `real_*` tests (the driver makes its mount staging directory a
//! private mount at start-up).

#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::real::driver::*;
use pvdir::csi::proto as csi;
use pvdir::csi::proto::identity_client::IdentityClient;
use pvdir::kubelet::proto::registration_client::RegistrationClient;
use pvdir::kubelet::proto::{InfoRequest, RegistrationStatus};
use tonic::Code;

const DRIVER: &str = "local.pvdir.io";

/// A free TCP port on loopback for the driver's HTTP server.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The HTTP status and body of GET `path`.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /healthz");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

struct Kubelet {
    driver: Driver,
    port: u16,
}

impl Kubelet {
    async fn start() -> Kubelet {
        let port = free_port();
        let http = format!("127.0.0.1:{port}");
        let driver = Driver::start_with_args(&[
            "--kubelet-registration-dir",
            "{base}/plugins_registry",
            "--http-endpoint",
            &http,
        ])
        .await;
        Kubelet { driver, port }
    }

    fn registration_socket(&self) -> PathBuf {
        self.driver
            .path("plugins_registry")
            .join(format!("{DRIVER}-reg.sock"))
    }

    async fn client(&self) -> RegistrationClient<tonic::transport::Channel> {
        let socket = self.registration_socket();
        wait_for(&socket, Duration::from_secs(10)).await;
        RegistrationClient::new(
            connect(&socket)
                .await
                .expect("dial the registration socket"),
        )
    }

    async fn info(&self) -> pvdir::kubelet::proto::PluginInfo {
        self.client()
            .await
            .get_info(InfoRequest {})
            .await
            .expect("GetInfo")
            .into_inner()
    }

    async fn notify(&self, registered: bool, error: &str) {
        self.client()
            .await
            .notify_registration_status(RegistrationStatus {
                plugin_registered: registered,
                error: error.into(),
            })
            .await
            .expect("NotifyRegistrationStatus");
    }
}

async fn wait_for(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {limit:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn kubelet_is_told_the_driver_and_the_socket_to_dial() {
    require_root!();
    let k = Kubelet::start().await;
    let info = k.info().await;
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, DRIVER);
    assert_eq!(PathBuf::from(&info.endpoint), k.driver.socket());
    assert_eq!(info.supported_versions, ["1.0.0"]);
    // The endpoint is the CSI socket, which answers as the driver named.
    let channel = connect(Path::new(&info.endpoint)).await.unwrap();
    let name = IdentityClient::new(channel)
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .name;
    assert_eq!(name, info.name);
}

#[tokio::test]
async fn healthz_follows_what_kubelet_says() {
    require_root!();
    let k = Kubelet::start().await;
    // kubelet has not answered yet: healthy, since kubelet may start after pvdir.
    assert_eq!(get(k.port, "/healthz").0, 200);
    k.notify(false, "driver name local.pvdir.io already registered")
        .await;
    let (code, body) = get(k.port, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(DRIVER), "{body}");
    assert_eq!(get(k.port, "/healthz/local").0, 503);
    assert_eq!(get(k.port, "/healthz/nfs").0, 404, "nfs is not served here");
    assert_eq!(get(k.port, "/healthz/other").0, 404);
    k.notify(true, "").await;
    assert_eq!(get(k.port, "/healthz").0, 200);
    assert_eq!(get(k.port, "/healthz/local").0, 200);
}

#[tokio::test]
async fn a_root_that_stops_answering_fails_probe_and_healthz_alike() {
    require_root!();
    let k = Kubelet::start().await;
    let aside = k.driver.path("root-aside");
    std::fs::rename(k.driver.root(), &aside).unwrap();
    let probe = IdentityClient::new(connect(&k.driver.socket()).await.unwrap())
        .probe(csi::ProbeRequest {})
        .await;
    assert_eq!(
        probe.map(|_| ()).unwrap_err().code(),
        Code::FailedPrecondition
    );
    assert_eq!(get(k.port, "/healthz/local").0, 503);
    std::fs::rename(&aside, k.driver.root()).unwrap();
    assert_eq!(get(k.port, "/healthz/local").0, 200);
}

#[tokio::test]
async fn a_deleted_registration_socket_is_made_again() {
    require_root!();
    let k = Kubelet::start().await;
    k.notify(true, "").await;
    std::fs::remove_file(k.registration_socket()).unwrap();
    // Within a recheck period (5 s) and some slack.
    wait_for(&k.registration_socket(), Duration::from_secs(15)).await;
    let info = k.info().await;
    assert_eq!(info.name, DRIVER);
    // A new socket means kubelet registers again; until it answers, nothing is refused.
    assert_eq!(get(k.port, "/healthz").0, 200);
}

#[tokio::test]
async fn a_file_planted_at_the_socket_path_is_never_deleted() {
    require_root!();
    let k = Kubelet::start().await;
    let socket = k.registration_socket();
    std::fs::remove_file(&socket).unwrap();
    std::fs::write(&socket, b"not ours").unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(std::fs::read(&socket).unwrap(), b"not ours");
}

#[tokio::test]
async fn restarts_remove_and_remake_the_socket() {
    require_root!();
    let mut k = Kubelet::start().await;
    k.notify(true, "").await;
    // SIGTERM: the socket goes, so kubelet deregisters the driver.
    k.driver.terminate().await;
    assert!(!k.registration_socket().exists());
    k.driver.spawn().await;
    assert_eq!(k.info().await.name, DRIVER);
    // SIGKILL leaves a dead socket behind; the next start replaces it.
    k.driver.kill();
    assert!(k.registration_socket().exists());
    k.driver.spawn().await;
    assert_eq!(k.info().await.name, DRIVER);
}

/// One unary gRPC call made by hand over the socket, with `authority` as the HTTP/2
/// `:authority`, the way kubelet's registration client and grpcio send it. Returns the
/// response's grpc-status, or `None` if the server reset the stream.
fn call_with_authority(socket: &Path, authority: &str, method: &str) -> Option<String> {
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    };
    // Literal header fields without indexing, plain strings, lengths under 127.
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        for s in [name, value] {
            block.push(s.len() as u8);
            block.extend(s.as_bytes());
        }
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x4, 1, &block));
    out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // an empty message
    s.write_all(&out).unwrap();
    let mut decoder = loona_hpack::Decoder::new();
    let mut header = [0u8; 9];
    loop {
        s.read_exact(&mut header).ok()?;
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).unwrap();
        match header[3] {
            0x3 => return None, // RST_STREAM
            0x1 => {
                let fields = decoder.decode(&payload).unwrap();
                if let Some((_, v)) = fields.iter().find(|(n, _)| n == b"grpc-status") {
                    return Some(String::from_utf8_lossy(v).into_owned());
                }
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn clients_that_send_the_socket_path_as_authority_are_served() {
    require_root!();
    let k = Kubelet::start().await;
    let registration = k.registration_socket();
    wait_for(&registration, Duration::from_secs(10)).await;
    let csi = k.driver.socket();
    let (reg, probe, plain) = tokio::task::spawn_blocking(move || {
        (
            call_with_authority(
                &registration,
                &registration.display().to_string(),
                "/pluginregistration.Registration/GetInfo",
            ),
            call_with_authority(&csi, &csi.display().to_string(), "/csi.v1.Identity/Probe"),
            call_with_authority(&csi, "localhost", "/csi.v1.Identity/Probe"),
        )
    })
    .await
    .unwrap();
    assert_eq!(reg.as_deref(), Some("0"), "GetInfo, as kubelet sends it");
    assert_eq!(probe.as_deref(), Some("0"), "Probe, as grpcio sends it");
    assert_eq!(plain.as_deref(), Some("0"), "Probe, as Go clients send it");
}
