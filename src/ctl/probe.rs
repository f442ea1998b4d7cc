//! `pvdir probe`: who answers on each endpoint, whether it is ready, and what it serves.

use std::time::Duration;

use super::args::ProbeArgs;
use super::client::Client;
use super::values::topology;
use super::CtlError;
use crate::csi::proto as csi;
use crate::server::Endpoint;

/// Probe every endpoint, even after a failure. With several, each failure is reported where it
/// happened and the exit status is the first failure's.
pub async fn run(args: ProbeArgs) -> Result<(), CtlError> {
    let timeout = Duration::from_secs(args.timeout_secs);
    if let [endpoint] = args.endpoint.as_slice() {
        return probe(endpoint, timeout, args.wait).await;
    }
    let mut failed = Vec::new();
    for (i, endpoint) in args.endpoint.iter().enumerate() {
        if i > 0 {
            println!();
        }
        if let Err(e) = probe(endpoint, timeout, args.wait).await {
            eprintln!("pvdir: {e}");
            failed.push(e.exit_code());
        }
    }
    match failed.first() {
        None => Ok(()),
        Some(&exit_code) => Err(CtlError::SomeProbesFailed {
            failed: failed.len(),
            total: args.endpoint.len(),
            exit_code,
        }),
    }
}

fn line(label: &str, value: impl std::fmt::Display) {
    println!("{:<12} {value}", format!("{label}:"));
}

/// Capability names as the CSI spec spells them; `-` for none.
fn names(types: impl Iterator<Item = Option<&'static str>>) -> String {
    let names: Vec<&str> = types.map(|t| t.unwrap_or("UNKNOWN")).collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(", ")
    }
}

fn plugin_caps(reply: &csi::GetPluginCapabilitiesResponse) -> String {
    use csi::plugin_capability::{service::Type, Type as Kind};
    names(reply.capabilities.iter().filter_map(|c| match &c.r#type {
        Some(Kind::Service(s)) => Some(Type::try_from(s.r#type).ok().map(|t| t.as_str_name())),
        Some(Kind::VolumeExpansion(e)) => {
            use csi::plugin_capability::volume_expansion::Type as Expansion;
            Some(Some(match Expansion::try_from(e.r#type) {
                Ok(Expansion::Online) => "VOLUME_EXPANSION (ONLINE)",
                Ok(Expansion::Offline) => "VOLUME_EXPANSION (OFFLINE)",
                _ => "VOLUME_EXPANSION",
            }))
        }
        None => None,
    }))
}

fn controller_caps(reply: &csi::ControllerGetCapabilitiesResponse) -> String {
    use csi::controller_service_capability::{rpc::Type, Type as Kind};
    names(reply.capabilities.iter().filter_map(|c| {
        let Kind::Rpc(r) = c.r#type.as_ref()?;
        Some(Type::try_from(r.r#type).ok().map(|t| t.as_str_name()))
    }))
}

fn node_caps(reply: &csi::NodeGetCapabilitiesResponse) -> String {
    use csi::node_service_capability::{rpc::Type, Type as Kind};
    names(reply.capabilities.iter().filter_map(|c| {
        let Kind::Rpc(r) = c.r#type.as_ref()?;
        Some(Type::try_from(r.r#type).ok().map(|t| t.as_str_name()))
    }))
}

async fn probe(endpoint: &Endpoint, timeout: Duration, wait: bool) -> Result<(), CtlError> {
    line("endpoint", endpoint);
    let c = if wait {
        Client::connect_waiting(endpoint, timeout).await?
    } else {
        Client::connect(endpoint, timeout).await?
    };
    let info = c
        .call(
            "GetPluginInfo",
            c.identity().get_plugin_info(csi::GetPluginInfoRequest {}),
        )
        .await?;
    line("driver", &info.name);
    line("version", &info.vendor_version);
    let plugin = c
        .call(
            "GetPluginCapabilities",
            c.identity()
                .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {}),
        )
        .await?;
    let probe = c
        .call("Probe", c.identity().probe(csi::ProbeRequest {}))
        .await?;
    // CSI: an absent `ready` means ready.
    let ready = probe.ready.unwrap_or(true);
    line("ready", ready);
    line("plugin", plugin_caps(&plugin));
    let controller = c
        .call_optional(
            "ControllerGetCapabilities",
            c.controller()
                .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {}),
        )
        .await?;
    line(
        "controller",
        controller.map_or("not served".into(), |r| controller_caps(&r)),
    );
    let node = c
        .call_optional(
            "NodeGetCapabilities",
            c.node()
                .node_get_capabilities(csi::NodeGetCapabilitiesRequest {}),
        )
        .await?;
    line("node", node.map_or("not served".into(), |r| node_caps(&r)));
    let info_node = c
        .call_optional(
            "NodeGetInfo",
            c.node().node_get_info(csi::NodeGetInfoRequest {}),
        )
        .await?;
    if let Some(n) = info_node {
        line("node id", &n.node_id);
        let segments = n
            .accessible_topology
            .map(|t| t.segments)
            .unwrap_or_default();
        line("topology", topology(&segments));
    }
    if !ready {
        return Err(CtlError::NotReady {
            endpoint: endpoint.clone(),
            driver: info.name,
        });
    }
    Ok(())
}
