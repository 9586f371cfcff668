//! Pod identity, from the node itself (no API server): a task's cgroup
//! path names its container ([`cgroup_path`]); the container runtime,
//! asked over its CRI socket as kubelet asks it ([`cri`]), names the
//! container's pod, namespace and container as kubelet labelled them, and
//! the pod's IP; podman's storage names containers outside any pod
//! ([`podman`]); rtnetlink names the host end of each pod's veth
//! ([`veth`]). [`Cache`] holds the last listing; one supervised task
//! refreshes it ([`run`]) on a bounded poll, so a collection cycle only
//! reads a map and never waits on the runtime. The runtime absent or down
//! leaves cgroup paths as they are and says so in the health checks.

pub mod cgroup_path;
pub mod cri;
pub mod podman;
pub mod veth;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, LazyLock, Mutex, RwLock},
    time::Duration,
};

use prometheus::proto::{MetricFamily, MetricType};

use crate::{config::KubernetesConfig, family::Family, tasks::Task};

/// Which pod (and container) a cgroup or a process belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Identity {
    /// Empty (and not serialized) for a container outside any pod.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// None: the pod's own cgroup, or its sandbox (pause) container.
    pub container: Option<String>,
    /// The container's id (64 hex digits), where one is named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

impl Identity {
    /// A pod as a whole (no container).
    fn of_pod(pod: &Pod) -> Identity {
        Identity {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            ..Identity::default()
        }
    }
}

/// One pod sandbox on the node, as its runtime describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub sandbox_id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The sandbox's IP (empty: host network or none yet).
    pub ip: String,
    /// The sandbox's process (its network namespace's), as the runtime
    /// reports it; 0 when it does not.
    pub pid: u32,
    /// Its network namespace's inode (the drop series' `netns`); 0 when
    /// unknown.
    pub netns: u64,
}

/// One container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub sandbox_id: String,
}

/// What the runtime said at the last refresh.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// By sandbox id.
    pub pods: BTreeMap<String, Pod>,
    /// By container id.
    pub containers: HashMap<String, Container>,
    /// Podman's containers (outside any pod): id → name.
    pub podman: HashMap<String, String>,
    /// Host interface (a pod's veth, host end) → sandbox id ([`veth`]).
    pub interfaces: HashMap<String, String>,
    /// Network namespace inode (as the `netns` labels write it) → sandbox
    /// id, for pods with a namespace of their own.
    pub namespaces: HashMap<String, String>,
}

impl View {
    /// Keeps at most `max_pods` pods (by sandbox id), 8 containers per
    /// kept pod and `max_pods` podman containers: the cache's memory is
    /// bounded whatever the runtime says.
    pub fn bounded(mut self, max_pods: usize) -> View {
        while self.pods.len() > max_pods {
            self.pods.pop_last();
        }
        if self.podman.len() > max_pods {
            let mut ids: Vec<String> = self.podman.keys().cloned().collect();
            ids.sort();
            for id in &ids[max_pods..] {
                self.podman.remove(id);
            }
        }
        let pods = &self.pods;
        self.interfaces
            .retain(|_, sandbox| pods.contains_key(sandbox));
        let mut per_pod: HashMap<String, usize> = HashMap::new();
        let mut ids: Vec<String> = self.containers.keys().cloned().collect();
        ids.sort();
        for id in ids {
            let sandbox = &self.containers[&id].sandbox_id;
            let n = per_pod.entry(sandbox.clone()).or_default();
            if !self.pods.contains_key(sandbox) || *n >= MAX_CONTAINERS_PER_POD {
                self.containers.remove(&id);
            } else {
                *n += 1;
            }
        }
        self
    }

    /// Indexes the pods' own network namespaces by inode, as the `netns`
    /// labels write it (host-network pods share the node's: not theirs).
    pub fn index_namespaces(&mut self) {
        self.namespaces = self
            .pods
            .values()
            .filter(|p| p.netns != 0 && !p.ip.is_empty())
            .map(|p| (p.netns.to_string(), p.sandbox_id.clone()))
            .collect();
    }

    /// `namespace` and `pod` labels for a series of interface `name` in
    /// network namespace `netns`, added to `labels` when it is a pod's
    /// ([`View::interface_pod_in`]).
    pub fn label_interface<'a>(
        &'a self,
        netns: &str,
        name: &str,
        labels: &mut Vec<(&'a str, &'a str)>,
    ) {
        if let Some(pod) = self.interface_pod_in(netns, name) {
            labels.push(("namespace", &pod.namespace));
            labels.push(("pod", &pod.name));
        }
    }

    /// The pod of interface `name` in network namespace `netns` ("host":
    /// the agent's): its veth's host end, or any interface inside the
    /// pod's own namespace (inode as the `netns` labels write it).
    pub fn interface_pod_in(&self, netns: &str, name: &str) -> Option<&Pod> {
        let sandbox = if netns == "host" {
            self.interfaces.get(name)?
        } else {
            self.namespaces.get(netns)?
        };
        self.pods.get(sandbox)
    }

    /// The pod and container of the task in the cgroup at `path` (any
    /// hierarchy, any of the drivers and runtimes [`cgroup_path`] knows).
    pub fn resolve(&self, path: &str) -> Option<Identity> {
        let pod_identity = |pod: &Pod, container: Option<(&str, &str)>| Identity {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            container: container.map(|(name, _)| name.to_owned()),
            container_id: container.map(|(_, id)| id.to_owned()),
        };
        if let Some(found) = cgroup_path::container_id(path) {
            if let Some(c) = self.containers.get(&found.id)
                && let Some(pod) = self.pods.get(&c.sandbox_id)
            {
                return Some(pod_identity(pod, Some((&c.name, &found.id))));
            }
            if let Some(pod) = self.pods.get(&found.id) {
                return Some(pod_identity(pod, None));
            }
            // A podman container: no pod, no namespace.
            if let Some(name) = self.podman.get(&found.id) {
                return Some(Identity {
                    container: Some(name.clone()),
                    container_id: Some(found.id),
                    ..Identity::default()
                });
            }
        }
        let uid = cgroup_path::pod_uid(path)?;
        self.pods
            .values()
            .find(|p| p.uid == uid)
            .map(|p| pod_identity(p, None))
    }
}

/// Containers kept per pod at most (see [`View::bounded`]).
pub const MAX_CONTAINERS_PER_POD: usize = 8;

/// Where the runtime stands, for the health checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Runtime {
    /// `[kubernetes] enabled = false`, or not started yet.
    #[default]
    Off,
    /// No socket at any of the usual paths: not a Kubernetes node.
    NotFound,
    /// The last listing worked.
    Up { socket: String, pods: usize },
    /// The last listing failed: names fall back to cgroup paths.
    Down { socket: String, error: String },
}

/// The last listing and the runtime's state, shared by the refresh task
/// (writer) and the collector, exposition and analysis (readers).
#[derive(Debug, Default)]
pub struct Cache {
    view: RwLock<Arc<View>>,
    runtime: Mutex<Runtime>,
    node: Mutex<String>,
}

static CACHE: LazyLock<Cache> = LazyLock::new(Cache::default);

/// The agent's one cache (a process has one runtime to ask).
pub fn cache() -> &'static Cache {
    &CACHE
}

impl Cache {
    /// The last listing (a cheap clone of a shared pointer).
    pub fn view(&self) -> Arc<View> {
        self.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The pod and container of the cgroup at `path`; None when unknown.
    pub fn resolve(&self, path: &str) -> Option<Identity> {
        self.view().resolve(path)
    }

    /// The pod on this node whose IP is `ip` (host-network pods have none).
    pub fn resolve_ip(&self, ip: &str) -> Option<Identity> {
        let view = self.view();
        view.pods
            .values()
            .find(|p| !p.ip.is_empty() && p.ip == ip)
            .map(Identity::of_pod)
    }

    /// The pod of interface `name` in network namespace `netns`
    /// ([`View::interface_pod_in`]).
    pub fn resolve_interface(&self, netns: &str, name: &str) -> Option<Identity> {
        self.view()
            .interface_pod_in(netns, name)
            .map(Identity::of_pod)
    }

    /// The pod and container of process `pid`, from /proc/PID/cgroup.
    pub fn resolve_pid(&self, pid: u32) -> Option<Identity> {
        let view = self.view();
        if view.pods.is_empty() && view.podman.is_empty() {
            return None;
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        cgroup_path::proc_cgroup_paths(&text).find_map(|p| view.resolve(p))
    }

    fn set(&self, view: View, runtime: Runtime) {
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
        *self.runtime.lock().unwrap_or_else(|e| e.into_inner()) = runtime;
    }

    /// `sonde_pod_info{namespace,pod,uid,pod_ip,node} 1` per pod.
    pub fn families(&self, out: &mut Vec<MetricFamily>) {
        let view = self.view();
        if view.pods.is_empty() {
            return;
        }
        let node = self.node.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut family = Family::new(
            "sonde_pod_info",
            "1 per pod on this node, as its container runtime reports it over CRI (join on pod_ip or namespace/pod)",
            MetricType::GAUGE,
        );
        for pod in view.pods.values() {
            family.sample(
                &[
                    ("namespace", &pod.namespace),
                    ("pod", &pod.name),
                    ("uid", &pod.uid),
                    ("pod_ip", &pod.ip),
                    ("node", &node),
                ],
                1.0,
            );
        }
        family.done(out);
    }
}

/// The node's name: configured, else $NODE_NAME, else the host name.
pub fn node_name(config: &KubernetesConfig) -> String {
    if !config.node_name.is_empty() {
        return config.node_name.clone();
    }
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Refreshes [`cache`] every `refresh_interval_s` until `shutdown`
/// changes: one listing of sandboxes and containers, and the status of
/// each sandbox not seen before (for its IP), each bounded by
/// `timeout_ms`. A failure empties the cache (names fall back to cgroup
/// paths) and is retried at the next tick.
pub async fn run(
    config: KubernetesConfig,
    task: Arc<Task>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let cache = cache();
    *cache.node.lock().unwrap_or_else(|e| e.into_inner()) = node_name(&config);
    let mut tick = tokio::time::interval(Duration::from_secs(config.refresh_interval_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let timeout = Duration::from_millis(config.timeout_ms);
    let mut was = Runtime::Off;
    let mut podman_error = None;
    let mut veth_error = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        task.beat_async().await;
        let podman = podman_view(&config, &mut podman_error);
        let Some(socket) = cri::socket(&config.socket) else {
            cache.set(podman, Runtime::NotFound);
            continue;
        };
        let known = cache.view();
        let listed = tokio::time::timeout(timeout * 4, cri::list(&socket, timeout, &known)).await;
        let runtime = match listed {
            Ok(Ok(view)) => {
                let mut view = View {
                    podman: podman.podman,
                    ..view
                };
                view.interfaces = pod_veths(&view, &mut veth_error);
                let mut view = view.bounded(config.max_pods);
                view.index_namespaces();
                let runtime = Runtime::Up {
                    socket: socket.clone(),
                    pods: view.pods.len(),
                };
                cache.set(view, runtime.clone());
                runtime
            }
            Ok(Err(err)) => down(cache, podman, &socket, err.to_string()),
            Err(_) => down(
                cache,
                podman,
                &socket,
                format!("no answer in {} ms", timeout.as_millis() * 4),
            ),
        };
        if std::mem::discriminant(&runtime) != std::mem::discriminant(&was) {
            match &runtime {
                Runtime::Up { socket, pods } => {
                    tracing::info!(target: "sonde::pods", "container runtime at {socket}: {pods} pods")
                }
                Runtime::Down { socket, error } => tracing::warn!(
                    target: "sonde::pods",
                    "container runtime at {socket} unreachable ({error}): cgroup paths only"
                ),
                _ => {}
            }
        }
        was = runtime;
    }
}

fn down(cache: &Cache, podman: View, socket: &str, error: String) -> Runtime {
    let runtime = Runtime::Down {
        socket: socket.to_owned(),
        error,
    };
    cache.set(podman, runtime.clone());
    runtime
}

/// The host ends of the pods' veths ([`veth`]); none when rtnetlink
/// fails (logged once, until it works again).
fn pod_veths(view: &View, last_error: &mut Option<String>) -> HashMap<String, String> {
    match veth::pod_interfaces(view.pods.values()) {
        Ok(found) => {
            *last_error = None;
            found
        }
        Err(err) => {
            let err = format!("cannot map interfaces to pods over rtnetlink: {err}");
            if last_error.as_ref() != Some(&err) {
                tracing::warn!(target: "sonde::pods", "{err}: pod veths unnamed");
            }
            *last_error = Some(err);
            HashMap::new()
        }
    }
}

/// A view of podman's containers alone (none when `podman_storage` is
/// empty or unreadable: a failure is logged once, until it reads again).
fn podman_view(config: &KubernetesConfig, last_error: &mut Option<String>) -> View {
    if config.podman_storage.as_os_str().is_empty() {
        return View::default();
    }
    match podman::list(&config.podman_storage, config.max_pods) {
        Ok(podman) => {
            *last_error = None;
            View {
                podman,
                ..View::default()
            }
        }
        Err(err) => {
            let err = err.to_string();
            if last_error.as_ref() != Some(&err) {
                tracing::warn!(target: "sonde::pods", "{err}: podman containers unnamed");
            }
            *last_error = Some(err);
            View::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "0f5d1a6e4c3b2a19081716151413121110f0e0d0c0b0a0908070605040302010";
    const SID: &str = "aa5d1a6e4c3b2a19081716151413121110f0e0d0c0b0a0908070605040302010";
    const UID: &str = "6b2c9a4e-1f3d-4c5b-9e8a-7d6c5b4a3f21";

    fn view() -> View {
        let mut v = View::default();
        v.pods.insert(
            SID.into(),
            Pod {
                sandbox_id: SID.into(),
                namespace: "shop".into(),
                name: "cart-7d9f".into(),
                uid: UID.into(),
                ip: "10.88.0.5".into(),
                pid: 0,
                netns: 0,
            },
        );
        v.containers.insert(
            CID.into(),
            Container {
                id: CID.into(),
                name: "cart".into(),
                sandbox_id: SID.into(),
            },
        );
        v
    }

    #[test]
    fn resolves_containers_sandboxes_and_pod_cgroups() {
        let v = view();
        let cart = Identity {
            namespace: "shop".into(),
            pod: "cart-7d9f".into(),
            container: Some("cart".into()),
            container_id: Some(CID.into()),
        };
        assert_eq!(
            v.resolve(&format!("/kubepods/burstable/pod{UID}/{CID}")),
            Some(cart.clone())
        );
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(v.resolve(&systemd), Some(cart));
        let pod_only = Identity {
            container: None,
            container_id: None,
            ..v.resolve(&format!("/kubepods/pod{UID}/{CID}")).unwrap()
        };
        assert_eq!(
            v.resolve(&format!("/kubepods/pod{UID}/{SID}")),
            Some(pod_only.clone())
        );
        assert_eq!(v.resolve(&format!("/kubepods/pod{UID}")), Some(pod_only));
        assert_eq!(v.resolve("/system.slice/sshd.service"), None);
        assert_eq!(v.resolve("/"), None);
    }

    #[test]
    fn a_pods_veth_and_namespace_name_the_pod() {
        let mut v = view();
        v.pods.get_mut(SID).unwrap().netns = 4026532308;
        v.interfaces.insert("veth1a2b".into(), SID.into());
        v.interfaces
            .insert("vethgone".into(), "no-such-sandbox".into());
        let mut v = v.bounded(10);
        v.index_namespaces();
        assert_eq!(v.interfaces.len(), 1, "a gone sandbox's veth is dropped");
        fn pod<'v>(v: &'v View, netns: &str, name: &str) -> Option<&'v str> {
            v.interface_pod_in(netns, name).map(|p| p.name.as_str())
        }
        assert_eq!(pod(&v, "host", "veth1a2b"), Some("cart-7d9f"));
        assert_eq!(pod(&v, "4026532308", "eth0"), Some("cart-7d9f"));
        // The host end's name means nothing inside another namespace.
        assert_eq!(pod(&v, "4026532999", "veth1a2b"), None);
        assert_eq!(pod(&v, "host", "eth0"), None);
        let mut labels = vec![("interface", "veth1a2b")];
        v.label_interface("host", "veth1a2b", &mut labels);
        assert_eq!(
            labels,
            [
                ("interface", "veth1a2b"),
                ("namespace", "shop"),
                ("pod", "cart-7d9f")
            ]
        );
        // A host-network pod has no namespace of its own to index.
        v.pods.get_mut(SID).unwrap().ip.clear();
        v.index_namespaces();
        assert_eq!(pod(&v, "4026532308", "eth0"), None);
    }

    #[test]
    fn podman_containers_are_named_without_a_pod() {
        let mut v = view();
        let id = "516e9279b2544effa3fdae56e0f1be2ea2e40feda0f087bf589c57c4908d9236";
        v.podman.insert(id.into(), "web".into());
        let web = Identity {
            container: Some("web".into()),
            container_id: Some(id.into()),
            ..Identity::default()
        };
        for path in [
            format!("/libpod_parent/libpod-{id}"),
            format!("/machine.slice/libpod-{id}.scope/container"),
        ] {
            assert_eq!(v.resolve(&path), Some(web.clone()), "{path}");
        }
        assert_eq!(
            v.resolve(&format!("/machine.slice/libpod-conmon-{id}.scope")),
            None
        );
        for i in 0..20 {
            v.podman.insert(format!("{i:064x}"), format!("c{i}"));
        }
        assert_eq!(v.bounded(5).podman.len(), 5);
    }

    #[test]
    fn the_view_is_bounded() {
        let mut v = view();
        for i in 0..20 {
            v.containers.insert(
                format!("{i:064x}"),
                Container {
                    id: format!("{i:064x}"),
                    name: format!("c{i}"),
                    sandbox_id: SID.into(),
                },
            );
            v.pods.insert(
                format!("p{i}"),
                Pod {
                    sandbox_id: format!("p{i}"),
                    namespace: "n".into(),
                    name: format!("p{i}"),
                    uid: String::new(),
                    ip: String::new(),
                    pid: 0,
                    netns: 0,
                },
            );
        }
        let v = v.bounded(5);
        assert_eq!(v.pods.len(), 5);
        assert!(v.containers.len() <= MAX_CONTAINERS_PER_POD);
    }

    #[test]
    fn pod_info_has_one_series_per_pod() {
        let cache = Cache::default();
        let mut out = Vec::new();
        cache.families(&mut out);
        assert!(out.is_empty(), "no pods, no family");
        cache.set(
            view(),
            Runtime::Up {
                socket: "s".into(),
                pods: 1,
            },
        );
        cache.families(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name(), "sonde_pod_info");
        let labels: Vec<(&str, &str)> = out[0].get_metric()[0]
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        assert!(labels.contains(&("pod_ip", "10.88.0.5")), "{labels:?}");
        assert!(labels.contains(&("uid", UID)), "{labels:?}");
    }
}
