//! One load client's connection and the CSI calls of each operation, in the order a CO makes
//! them: CreateVolume; ControllerPublishVolume (if the driver offers PUBLISH_UNPUBLISH_VOLUME),
//! NodeStageVolume (if STAGE_UNSTAGE_VOLUME), NodePublishVolume; NodeGetVolumeStats; and back.
//! The driver may be any CSI driver: what it offers is asked once ([`Facts`]).
//!
//! Every attempt is bounded by the call timeout and counted in the client's [`Tally`]. With a
//! retry budget, a failed step is tried again with the same request after a growing pause, as
//! the sidecars and kubelet do (they treat every error as "try again later"); CSI makes each
//! of these calls idempotent, so a retry after a lost answer is safe.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use super::record::{Live, Tally};
use crate::csi::proto as csi;
use crate::csi::proto::controller_client::ControllerClient;
use crate::csi::proto::node_client::NodeClient;

/// What the driver offers, asked once before the load starts.
#[derive(Debug, Clone)]
pub struct Facts {
    pub driver: String,
    /// `None` when the endpoint serves no node service (a controller-only endpoint).
    pub node_id: Option<String>,
    pub topology: Option<csi::Topology>,
    pub controller_publish: bool,
    pub stage: bool,
    pub stats: bool,
}

/// How every volume is made and used; the same for all clients.
#[derive(Debug, Clone)]
pub struct Shape {
    pub capacity_bytes: Option<i64>,
    pub parameters: HashMap<String, String>,
    pub capability: csi::VolumeCapability,
    /// Bytes written into each volume at its first publish, read back at each later publish
    /// and in the teardown; 0 writes nothing.
    pub write_bytes: usize,
    /// Where targets and staging paths are made (`<dir>/<volume name>/…`).
    pub target_dir: PathBuf,
}

/// A volume a client made, and how far along it is.
#[derive(Debug, Clone)]
pub struct Volume {
    pub name: String,
    pub id: String,
    pub context: HashMap<String, String>,
    pub publish_context: HashMap<String, String>,
    pub attached: bool,
    pub staged: bool,
    pub published: bool,
    pub written: bool,
    /// A DeleteVolume for it failed (after it was unpublished): only the delete is left.
    pub deleting: bool,
}

/// A step that failed for good: the RPC (or client-side step) and the last code.
#[derive(Debug, Clone)]
pub struct Failed {
    pub step: &'static str,
    pub code: Code,
    pub message: String,
}

impl Failed {
    fn local(step: &'static str, error: impl std::fmt::Display) -> Failed {
        Failed {
            step,
            code: Code::Internal,
            message: error.to_string(),
        }
    }
}

/// The content written into a volume: its name over and over, so a volume holding another's
/// data is caught as well as one holding none.
pub fn content(name: &str, bytes: usize) -> Vec<u8> {
    let line = format!("pvdir load {name}\n");
    line.bytes().cycle().take(bytes).collect()
}

/// The file the data goes in, inside the published target.
pub const DATA_FILE: &str = "pvdir-load.dat";

const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

pub struct Session {
    channel: Channel,
    call_timeout: Duration,
    /// `Some(budget)`: retry each failed step for up to this long.
    retry: Option<Duration>,
    facts: Arc<Facts>,
    shape: Arc<Shape>,
    live: Arc<Live>,
    pub tally: Tally,
}

impl Session {
    pub fn new(
        channel: Channel,
        call_timeout: Duration,
        retry: Option<Duration>,
        facts: Arc<Facts>,
        shape: Arc<Shape>,
        live: Arc<Live>,
    ) -> Session {
        Session {
            channel,
            call_timeout,
            retry,
            facts,
            shape,
            live,
            tally: Tally::default(),
        }
    }

    /// One step: attempts of `call` (made afresh each time from a clone of the channel) until
    /// one is answered OK, or it fails with no retry budget left.
    async fn step<T, F, Fut>(&mut self, rpc: &'static str, mut call: F) -> Result<T, Failed>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        let give_up = self.retry.map(|budget| Instant::now() + budget);
        let mut pause = FIRST_PAUSE;
        loop {
            let start = Instant::now();
            let answer =
                match tokio::time::timeout(self.call_timeout, call(self.channel.clone())).await {
                    Ok(answer) => answer.map(Response::into_inner),
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "no answer within {:?}",
                        self.call_timeout
                    ))),
                };
            self.tally.call(
                rpc,
                start.elapsed(),
                answer.as_ref().err().map(Status::code),
            );
            if answer.is_err() {
                self.live.errors.fetch_add(1, Ordering::Relaxed);
            }
            match answer {
                Ok(reply) => return Ok(reply),
                Err(status) => match give_up {
                    Some(at) if Instant::now() + pause < at => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(LONGEST_PAUSE);
                    }
                    _ => {
                        return Err(Failed {
                            step: rpc,
                            code: status.code(),
                            message: status.message().to_string(),
                        })
                    }
                },
            }
        }
    }

    fn dir_of(&self, v: &Volume) -> PathBuf {
        self.shape.target_dir.join(&v.name)
    }

    pub fn target_of(&self, v: &Volume) -> PathBuf {
        self.dir_of(v).join("mount")
    }

    fn staging_of(&self, v: &Volume) -> PathBuf {
        self.dir_of(v).join("stage")
    }

    pub async fn create(&mut self, name: String) -> Result<Volume, Failed> {
        let request = csi::CreateVolumeRequest {
            name: name.clone(),
            capacity_range: self.shape.capacity_bytes.map(|bytes| csi::CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![self.shape.capability.clone()],
            parameters: self.shape.parameters.clone(),
            // As external-provisioner does for a claim bound to this node.
            accessibility_requirements: self.facts.topology.clone().map(|t| {
                csi::TopologyRequirement {
                    requisite: vec![t.clone()],
                    preferred: vec![t],
                }
            }),
            ..Default::default()
        };
        let reply = self
            .step("CreateVolume", |ch| {
                let request = request.clone();
                async move { ControllerClient::new(ch).create_volume(request).await }
            })
            .await?;
        let volume = reply.volume.ok_or_else(|| Failed {
            step: "CreateVolume",
            code: Code::Internal,
            message: "the reply carries no volume".into(),
        })?;
        Ok(Volume {
            name,
            id: volume.volume_id,
            context: volume.volume_context,
            publish_context: HashMap::new(),
            attached: false,
            staged: false,
            published: false,
            written: false,
            deleting: false,
        })
    }

    pub async fn publish(&mut self, v: &mut Volume) -> Result<(), Failed> {
        let node_id = self.facts.node_id.clone().unwrap_or_default();
        let capability = self.shape.capability.clone();
        if self.facts.controller_publish && !v.attached {
            let request = csi::ControllerPublishVolumeRequest {
                volume_id: v.id.clone(),
                node_id: node_id.clone(),
                volume_capability: Some(capability.clone()),
                readonly: false,
                volume_context: v.context.clone(),
                ..Default::default()
            };
            let reply = self
                .step("ControllerPublishVolume", |ch| {
                    let request = request.clone();
                    async move {
                        ControllerClient::new(ch)
                            .controller_publish_volume(request)
                            .await
                    }
                })
                .await?;
            v.publish_context = reply.publish_context;
            v.attached = true;
        }
        // The CO makes the staging path and the target's parent; the driver makes the target.
        make_dir(&self.dir_of(v)).await?;
        let staging = self.staging_of(v);
        if self.facts.stage && !v.staged {
            make_dir(&staging).await?;
            let request = csi::NodeStageVolumeRequest {
                volume_id: v.id.clone(),
                publish_context: v.publish_context.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(capability.clone()),
                volume_context: v.context.clone(),
                ..Default::default()
            };
            self.step("NodeStageVolume", |ch| {
                let request = request.clone();
                async move { NodeClient::new(ch).node_stage_volume(request).await }
            })
            .await?;
            v.staged = true;
        }
        let request = csi::NodePublishVolumeRequest {
            volume_id: v.id.clone(),
            publish_context: v.publish_context.clone(),
            staging_target_path: if self.facts.stage {
                staging.display().to_string()
            } else {
                String::new()
            },
            target_path: self.target_of(v).display().to_string(),
            volume_capability: Some(capability),
            readonly: false,
            volume_context: v.context.clone(),
            ..Default::default()
        };
        self.step("NodePublishVolume", |ch| {
            let request = request.clone();
            async move { NodeClient::new(ch).node_publish_volume(request).await }
        })
        .await?;
        v.published = true;
        if v.written {
            // Published before and written then: the data must have come through unpublish
            // (and, in the chaos soak, driver kills) unchanged.
            let intact = self.data_intact(v).await;
            self.tally.data(intact);
        } else if self.shape.write_bytes > 0 {
            let file = self.target_of(v).join(DATA_FILE);
            tokio::fs::write(&file, content(&v.name, self.shape.write_bytes))
                .await
                .map_err(|e| Failed::local("write data", e))?;
            v.written = true;
            self.tally.data_written();
        }
        Ok(())
    }

    pub async fn stats(&mut self, v: &Volume) -> Result<(), Failed> {
        let request = csi::NodeGetVolumeStatsRequest {
            volume_id: v.id.clone(),
            volume_path: self.target_of(v).display().to_string(),
            staging_target_path: if v.staged {
                self.staging_of(v).display().to_string()
            } else {
                String::new()
            },
        };
        self.step("NodeGetVolumeStats", |ch| {
            let request = request.clone();
            async move { NodeClient::new(ch).node_get_volume_stats(request).await }
        })
        .await
        .map(drop)
    }

    /// Whether the data written at first publish is still there, read through the target.
    pub async fn data_intact(&self, v: &Volume) -> bool {
        let file = self.target_of(v).join(DATA_FILE);
        tokio::fs::read(&file)
            .await
            .is_ok_and(|data| data == content(&v.name, self.shape.write_bytes))
    }

    /// NodeUnpublish, then NodeUnstage and ControllerUnpublish where they were done: one
    /// publish per volume, so its last target on the node is gone.
    pub async fn unpublish(&mut self, v: &mut Volume) -> Result<(), Failed> {
        if v.published {
            let request = csi::NodeUnpublishVolumeRequest {
                volume_id: v.id.clone(),
                target_path: self.target_of(v).display().to_string(),
            };
            self.step("NodeUnpublishVolume", |ch| {
                let request = request.clone();
                async move { NodeClient::new(ch).node_unpublish_volume(request).await }
            })
            .await?;
            v.published = false;
        }
        if v.staged {
            let request = csi::NodeUnstageVolumeRequest {
                volume_id: v.id.clone(),
                staging_target_path: self.staging_of(v).display().to_string(),
            };
            self.step("NodeUnstageVolume", |ch| {
                let request = request.clone();
                async move { NodeClient::new(ch).node_unstage_volume(request).await }
            })
            .await?;
            v.staged = false;
            remove_empty(&self.staging_of(v)).await;
        }
        if v.attached {
            let request = csi::ControllerUnpublishVolumeRequest {
                volume_id: v.id.clone(),
                node_id: self.facts.node_id.clone().unwrap_or_default(),
                secrets: HashMap::new(),
            };
            self.step("ControllerUnpublishVolume", |ch| {
                let request = request.clone();
                async move {
                    ControllerClient::new(ch)
                        .controller_unpublish_volume(request)
                        .await
                }
            })
            .await?;
            v.attached = false;
        }
        Ok(())
    }

    pub async fn delete(&mut self, v: &Volume) -> Result<(), Failed> {
        let request = csi::DeleteVolumeRequest {
            volume_id: v.id.clone(),
            secrets: HashMap::new(),
        };
        self.step("DeleteVolume", |ch| {
            let request = request.clone();
            async move { ControllerClient::new(ch).delete_volume(request).await }
        })
        .await?;
        remove_empty(&self.dir_of(v)).await;
        Ok(())
    }
}

async fn make_dir(path: &Path) -> Result<(), Failed> {
    tokio::fs::create_dir_all(path)
        .await
        .map_err(|e| Failed::local("make target directory", e))
}

/// Remove a directory the client made, only if it is empty: `remove_dir` never removes content
/// and fails on a mount point, so a driver's leftover mount or data stays for the user to see.
async fn remove_empty(path: &Path) {
    let _ = tokio::fs::remove_dir(path).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_the_name_repeated_to_the_size() {
        let data = content("v1", 40);
        assert_eq!(data.len(), 40);
        assert!(data.starts_with(b"pvdir load v1\npvdir load v1\n"));
        assert_ne!(content("v2", 40), data);
        assert!(content("v1", 0).is_empty());
    }
}
