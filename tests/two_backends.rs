//! One process, two backends: the real binary serving `local.pvdir.io` on a unix socket and
//! `nfs.pvdir.io` on TCP, each answering with its own name, capabilities and topology.
//! Unprivileged: nothing here mounts.

use std::time::Duration;

use pvdir::csi::proto as csi;
use pvdir::csi::proto::controller_client::ControllerClient;
use pvdir::csi::proto::identity_client::IdentityClient;
use pvdir::csi::proto::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn unix_channel(path: std::path::PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn each_backend_has_its_own_name_capabilities_and_topology() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("local.sock");
    let port = free_port();
    let _driver = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_pvdir"))
            .args(["serve", "--mode", "all", "--node-id", "node-a"])
            .arg("--local-root")
            .arg(dir.path().join("root"))
            .arg("--nfs-staging-dir")
            .arg(dir.path().join("staging"))
            .arg("--mount-staging-dir")
            .arg(dir.path().join("mounts"))
            .arg("--local-endpoint")
            .arg(format!("unix://{}", sock.display()))
            .arg("--nfs-endpoint")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .env_remove("NODE_ID")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut nfs = None;
    for _ in 0..100 {
        if sock.exists() {
            if let Ok(c) = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
            {
                nfs = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nfs = nfs.expect("driver did not come up");
    let local = unix_channel(sock).await;

    let info = |c: Channel| async move {
        let mut id = IdentityClient::new(c.clone());
        let name = id
            .get_plugin_info(csi::GetPluginInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .name;
        let plugin = id
            .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .capabilities
            .len();
        let list = ControllerClient::new(c.clone())
            .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner()
            .capabilities
            .iter()
            .any(|c| {
                matches!(&c.r#type, Some(csi::controller_service_capability::Type::Rpc(r))
                    if r.r#type == csi::controller_service_capability::rpc::Type::ListVolumes as i32)
            });
        let node = NodeClient::new(c)
            .node_get_info(csi::NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        (name, plugin, list, node)
    };
    let (name, plugin_caps, lists, node) = info(local).await;
    assert_eq!(name, "local.pvdir.io");
    assert_eq!(
        plugin_caps, 4,
        "CONTROLLER_SERVICE, online VOLUME_EXPANSION, VOLUME_ACCESSIBILITY_CONSTRAINTS and \
         GROUP_CONTROLLER_SERVICE"
    );
    assert!(lists);
    assert_eq!(node.node_id, "node-a");
    assert_eq!(
        node.accessible_topology.unwrap().segments["topology.pvdir.io/node"],
        "node-a"
    );

    let (name, plugin_caps, lists, node) = info(nfs).await;
    assert_eq!(name, "nfs.pvdir.io");
    assert_eq!(
        plugin_caps, 2,
        "CONTROLLER_SERVICE and online VOLUME_EXPANSION: NFS volumes are reachable everywhere"
    );
    assert!(!lists);
    assert_eq!(node.node_id, "node-a");
    assert!(node.accessible_topology.is_none());
}
