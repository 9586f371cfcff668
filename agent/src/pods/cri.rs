//! The container runtime over CRI (v1, the `k8s-cri` crate's bindings on
//! the agent's own tonic and prost): ready pod sandboxes and running
//! containers, named by the labels kubelet sets on them, and each new
//! sandbox's IP from its status.

use std::{path::Path, time::Duration};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerFilter, ContainerStateValue, ListContainersRequest, ListPodSandboxRequest,
    PodSandboxFilter, PodSandboxStateValue, PodSandboxStatusRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint};

use super::{Container, Pod, View};

/// Where runtimes put their CRI socket, in the order they are tried.
pub const SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/cri-dockerd.sock",
    "/var/run/cri-dockerd.sock",
    "/run/k3s/containerd/containerd.sock",
];

/// Kubelet's labels on sandboxes and containers.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to the CRI socket {socket}: {source}")]
    Connect {
        socket: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("CRI {call} on {socket}: {source}")]
    Call {
        call: &'static str,
        socket: String,
        #[source]
        source: Box<tonic::Status>,
    },
}

/// The socket to ask: `configured`, or the first of [`SOCKETS`] that
/// exists; None when there is none.
pub fn socket(configured: &str) -> Option<String> {
    if !configured.is_empty() {
        return Some(configured.to_owned());
    }
    SOCKETS
        .iter()
        .find(|s| Path::new(s).exists())
        .map(|s| (*s).to_owned())
}

async fn connect(socket: &str, timeout: Duration) -> Result<Channel, CriError> {
    let path = socket.to_owned();
    // The URI is a placeholder: the connector dials the unix socket.
    Endpoint::from_static("http://localhost")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|source| CriError::Connect {
            socket: socket.to_owned(),
            source,
        })
}

/// Ready sandboxes and running containers. Sandboxes in `known` keep
/// their IP; only new ones are asked for their status.
pub async fn list(socket: &str, timeout: Duration, known: &View) -> Result<View, CriError> {
    let channel = connect(socket, timeout).await?;
    let mut client = RuntimeServiceClient::new(channel);
    let call = |call: &'static str| {
        move |source: tonic::Status| CriError::Call {
            call,
            socket: socket.to_owned(),
            source: Box::new(source),
        }
    };
    let sandboxes = client
        .list_pod_sandbox(ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                state: Some(PodSandboxStateValue {
                    state: k8s_cri::v1::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(call("ListPodSandbox"))?
        .into_inner()
        .items;
    let mut view = View::default();
    for sandbox in sandboxes {
        let meta = sandbox.metadata.unwrap_or_default();
        let label = |key: &str, fallback: &str| {
            sandbox
                .labels
                .get(key)
                .cloned()
                .unwrap_or_else(|| fallback.to_owned())
        };
        // A sandbox's IP, process and network namespace do not change:
        // asked once (again while the runtime has given none of them).
        let (ip, pid, netns) = match known.pods.get(&sandbox.id) {
            Some(pod) if !pod.ip.is_empty() || pod.pid != 0 || pod.netns != 0 => {
                (pod.ip.clone(), pod.pid, pod.netns)
            }
            _ => {
                let status = client
                    .pod_sandbox_status(PodSandboxStatusRequest {
                        pod_sandbox_id: sandbox.id.clone(),
                        verbose: true,
                    })
                    .await
                    .map_err(call("PodSandboxStatus"))?
                    .into_inner();
                let info = SandboxInfo::parse(&status.info);
                (
                    status.status.as_ref().map(sandbox_ip).unwrap_or_default(),
                    info.pid,
                    info.netns_inode(),
                )
            }
        };
        view.pods.insert(
            sandbox.id.clone(),
            Pod {
                namespace: label(POD_NAMESPACE, &meta.namespace),
                name: label(POD_NAME, &meta.name),
                uid: label(POD_UID, &meta.uid),
                ip,
                pid,
                netns,
                sandbox_id: sandbox.id,
            },
        );
    }
    let containers = client
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: k8s_cri::v1::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .map_err(call("ListContainers"))?
        .into_inner()
        .containers;
    for c in containers {
        let name = c
            .labels
            .get(CONTAINER_NAME)
            .cloned()
            .or_else(|| c.metadata.map(|m| m.name))
            .unwrap_or_default();
        view.containers.insert(
            c.id.clone(),
            Container {
                id: c.id,
                name,
                sandbox_id: c.pod_sandbox_id,
            },
        );
    }
    Ok(view)
}

/// What a verbose sandbox status's `info` JSON says of the sandbox's
/// process and network namespace (containerd and CRI-O both give its OCI
/// runtime spec; containerd also its `pid`).
#[derive(Debug, Default, PartialEq, Eq)]
struct SandboxInfo {
    /// 0 when absent.
    pid: u32,
    /// The network namespace's bind mount (e.g. /var/run/netns/cni-…).
    netns_path: Option<String>,
}

impl SandboxInfo {
    fn parse(info: &std::collections::HashMap<String, String>) -> SandboxInfo {
        let Some(json) = info
            .get("info")
            .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        else {
            return SandboxInfo::default();
        };
        let pid = json
            .get("pid")
            .and_then(|p| p.as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0);
        let netns_path = json
            .pointer("/runtimeSpec/linux/namespaces")
            .and_then(|n| n.as_array())
            .and_then(|n| {
                n.iter()
                    .find(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("network"))
            })
            .and_then(|ns| ns.get("path").and_then(|p| p.as_str()))
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        SandboxInfo { pid, netns_path }
    }

    /// The network namespace's inode (what the kernel's `netns` labels
    /// carry): from its bind mount, which needs no access to the process,
    /// else from the process; 0 when neither can be read.
    fn netns_inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        // /var/run is /run on the host, not always in the agent's image.
        let under_run = self
            .netns_path
            .as_deref()
            .and_then(|p| p.strip_prefix("/var/run/"))
            .map(|rest| format!("/run/{rest}"));
        let from_pid = (self.pid != 0).then(|| format!("/proc/{}/ns/net", self.pid));
        self.netns_path
            .iter()
            .chain(under_run.iter())
            .chain(from_pid.iter())
            .find_map(|path| std::fs::metadata(path).ok())
            .map(|m| m.ino())
            .unwrap_or(0)
    }
}

/// A sandbox's own IP; empty for a host-network pod (its IP is the
/// node's, shared by every such pod: no key to join a peer on).
fn sandbox_ip(status: &k8s_cri::v1::PodSandboxStatus) -> String {
    let host_network = status
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .is_some_and(|o| o.network == k8s_cri::v1::NamespaceMode::Node as i32);
    if host_network {
        return String::new();
    }
    status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1::{
        LinuxPodSandboxStatus, Namespace, NamespaceMode, NamespaceOption, PodSandboxNetworkStatus,
        PodSandboxStatus,
    };

    #[test]
    fn host_network_pods_have_no_ip_of_their_own() {
        let status = |mode: NamespaceMode| PodSandboxStatus {
            network: Some(PodSandboxNetworkStatus {
                ip: "10.0.0.7".into(),
                ..Default::default()
            }),
            linux: Some(LinuxPodSandboxStatus {
                namespaces: Some(Namespace {
                    options: Some(NamespaceOption {
                        network: mode as i32,
                        ..Default::default()
                    }),
                }),
            }),
            ..Default::default()
        };
        assert_eq!(sandbox_ip(&status(NamespaceMode::Pod)), "10.0.0.7");
        assert_eq!(sandbox_ip(&status(NamespaceMode::Node)), "");
    }

    use super::*;

    #[test]
    fn the_sandbox_pid_and_netns_come_from_the_verbose_info() {
        let info = |json: &str| [("info".to_owned(), json.to_owned())].into_iter().collect();
        let spec = r#"{"pid":4242,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},
            {"type":"network","path":"/var/run/netns/cni-1"}]}}}"#;
        assert_eq!(
            SandboxInfo::parse(&info(spec)),
            SandboxInfo {
                pid: 4242,
                netns_path: Some("/var/run/netns/cni-1".into())
            }
        );
        assert_eq!(
            SandboxInfo::parse(&info(r#"{"runtimeSpec":{}}"#)),
            SandboxInfo::default()
        );
        assert_eq!(
            SandboxInfo::parse(&info("not json")),
            SandboxInfo::default()
        );
        assert_eq!(
            SandboxInfo::parse(&Default::default()),
            SandboxInfo::default()
        );
        // Our own process's namespace, through /proc.
        let ours = SandboxInfo {
            pid: std::process::id(),
            netns_path: Some("/nonexistent/netns".into()),
        };
        assert_ne!(ours.netns_inode(), 0);
        assert_eq!(SandboxInfo::default().netns_inode(), 0);
    }

    #[test]
    fn a_configured_socket_wins() {
        assert_eq!(socket("/x/y.sock").as_deref(), Some("/x/y.sock"));
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_not_a_panic() {
        let err = list(
            "/nonexistent/sp-cri.sock",
            Duration::from_millis(200),
            &View::default(),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/sp-cri.sock"),
            "{err}"
        );
    }
}
