//! A real container runtime for the tests: containerd (the distribution's)
//! started as a child process with a configuration, state and CNI bridge of
//! its own, driven over CRI the way kubelet drives it (RunPodSandbox with
//! kubelet's labels and a cgroup parent, CreateContainer, StartContainer),
//! running an image built here from the workload binary (nothing is pulled).
//! [`Containerd`] is a guard: dropping it removes every pod it ran, stops
//! containerd, deletes the bridge, the cgroups and the directory.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig,
    ListPodSandboxRequest, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint};

use crate::sys::{must, workload_bin};

/// The image every pod runs (its entry point is the workload binary).
pub const IMAGE: &str = "localhost/sq-workload:local";
/// The CNI bridge, its subnet, and the cgroup kubelet's pods go under.
pub const BRIDGE: &str = "sq-cni0";
pub const SUBNET_PREFIX: &str = "10.231.78.";
const SUBNET: &str = "10.231.78.0/24";
pub const CGROUP_ROOT: &str = "sq-kubepods";

/// One pod sandbox the runtime runs.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub ip: String,
    /// The host side of the pod's veth (a port of [`BRIDGE`]).
    pub veth: String,
    config: PodSandboxConfig,
}

impl Pod {
    /// The pod's cgroup, relative to a hierarchy's root.
    pub fn cgroup(&self) -> String {
        format!("/{CGROUP_ROOT}/pod{}", self.uid)
    }

    /// A process of the pod (any: they share the sandbox's network
    /// namespace), from its cgroup tree (v2); None when it has none.
    pub fn any_pid(&self) -> Option<u32> {
        fn walk(dir: &Path) -> Option<u32> {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            if let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok()) {
                return Some(pid);
            }
            std::fs::read_dir(dir)
                .ok()?
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .find_map(|e| walk(&e.path()))
        }
        walk(&crate::cgroup::v2_mount()?.join(self.cgroup().trim_start_matches('/')))
    }
}

pub struct Containerd {
    dir: PathBuf,
    child: Option<Child>,
    rt: tokio::runtime::Runtime,
}

impl Containerd {
    /// Starts containerd in a directory of its own named after `name`
    /// (which starts with the test's prefix) and imports [`IMAGE`].
    pub fn start(name: &str) -> Containerd {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("net.d")).unwrap();
        std::fs::write(dir.join("config.toml"), config(&dir)).unwrap();
        std::fs::write(dir.join("net.d/10-sp.conflist"), conflist(&dir)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut c = Containerd {
            dir,
            child: None,
            rt,
        };
        c.launch();
        let tar = build_image(&c.dir);
        must(Command::new("ctr").args([
            "--address",
            &c.socket(),
            "-n",
            "k8s.io",
            "images",
            "import",
            &tar.display().to_string(),
        ]));
        c
    }

    pub fn socket(&self) -> String {
        self.dir.join("containerd.sock").display().to_string()
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (apt-get install containerd; xtask's bootstrap does)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.try_client().is_ok_and(|mut c| {
                self.rt
                    .block_on(c.list_pod_sandbox(ListPodSandboxRequest::default()))
                    .is_ok()
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer on {} within 20 s:\n{}",
                self.socket(),
                std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops containerd (SIGTERM; its containers live on in their shims).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same state.
    pub fn restart(&mut self) {
        self.launch();
    }

    fn try_client(&self) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
        let path = self.dir.join("containerd.sock");
        let channel = self.rt.block_on(
            Endpoint::from_static("http://localhost")
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(30))
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(TokioIo::new)
                    }
                })),
        )?;
        Ok(RuntimeServiceClient::new(channel))
    }

    fn client(&self) -> RuntimeServiceClient<Channel> {
        self.try_client()
            .unwrap_or_else(|e| panic!("CRI on {}: {e}", self.socket()))
    }

    /// RunPodSandbox as kubelet does: its labels, and the pod's cgroup
    /// under [`CGROUP_ROOT`].
    pub fn run_pod(&self, namespace: &str, name: &str, uid: &str) -> Pod {
        let labels = HashMap::from([
            ("io.kubernetes.pod.name".to_owned(), name.to_owned()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                namespace.to_owned(),
            ),
            ("io.kubernetes.pod.uid".to_owned(), uid.to_owned()),
        ]);
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: namespace.into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.dir.join("logs").join(uid).display().to_string(),
            labels,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/{CGROUP_ROOT}/pod{uid}"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut client = self.client();
        let ports = bridge_ports();
        let id = self
            .rt
            .block_on(client.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }))
            .unwrap_or_else(|e| panic!("RunPodSandbox {namespace}/{name}: {e}"))
            .into_inner()
            .pod_sandbox_id;
        let ip = self
            .rt
            .block_on(client.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            }))
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"))
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        // The CNI plugin plugged one new veth into the bridge: the pod's.
        let new: Vec<String> = bridge_ports()
            .into_iter()
            .filter(|p| !ports.contains(p))
            .collect();
        let [veth] = &new[..] else {
            panic!("pod {namespace}/{name}: {new:?} new ports on {BRIDGE}, want one");
        };
        Pod {
            id,
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            ip,
            veth: veth.clone(),
            config,
        }
    }

    /// CreateContainer + StartContainer of [`IMAGE`] running the workload
    /// with `args`; its id.
    pub fn start_container(&self, pod: &Pod, name: &str, args: &[&str]) -> String {
        let mut labels = pod.config.labels.clone();
        labels.insert("io.kubernetes.container.name".into(), name.into());
        let mut client = self.client();
        let id = self
            .rt
            .block_on(client.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: name.into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    args: args.iter().map(|a| (*a).to_owned()).collect(),
                    labels,
                    log_path: format!("{name}.log"),
                    ..Default::default()
                }),
                sandbox_config: Some(pod.config.clone()),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
            .into_inner()
            .container_id;
        self.rt
            .block_on(client.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        id
    }

    /// What container `name` of `pod` wrote (CRI's log format: a time,
    /// the stream and a tag before each line).
    pub fn log(&self, pod: &Pod, name: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .join("logs")
                .join(&pod.uid)
                .join(format!("{name}.log")),
        )
        .unwrap_or_default()
    }

    /// Waits up to `timeout` for container `name` of `pod` to write a line
    /// containing `text`; that line.
    pub fn wait_log(&self, pod: &Pod, name: &str, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log(pod, name);
            if let Some(line) = log.lines().find(|l| l.contains(text)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "container {name} of pod {}: no {text:?} in its log within {timeout:?}:\n{log}",
                pod.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// StopPodSandbox + RemovePodSandbox (its containers with it).
    pub fn remove_pod(&self, id: &str) {
        let mut client = self.client();
        let _ = self
            .rt
            .block_on(client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }));
        self.rt
            .block_on(client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_none() {
            self.launch_quietly();
        }
        if let Ok(mut client) = self.try_client()
            && let Ok(list) = self
                .rt
                .block_on(client.list_pod_sandbox(ListPodSandboxRequest::default()))
        {
            for pod in list.into_inner().items {
                let _ = self
                    .rt
                    .block_on(client.stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: pod.id.clone(),
                    }));
                let _ = self
                    .rt
                    .block_on(client.remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: pod.id,
                    }));
            }
        }
        self.stop();
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
        // containerd leaves its mounts (shm, rootfs) under its state.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.display().to_string();
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&prefix))
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        remove_cgroups();
    }
}

impl Containerd {
    /// For the guard: containerd back up to remove pods, if it can be.
    fn launch_quietly(&mut self) {
        if let Ok(child) = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            self.child = Some(child);
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// The interfaces plugged into [`BRIDGE`] (none while it does not exist).
fn bridge_ports() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", "master", BRIDGE])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    serde_json::from_slice::<Vec<serde_json::Value>>(&out)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}

/// Removes [`CGROUP_ROOT`] (deepest first) from every hierarchy.
fn remove_cgroups() {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = hierarchies
        .flatten()
        .map(|e| e.path().join(CGROUP_ROOT))
        .collect();
    roots.push(Path::new("/sys/fs/cgroup").join(CGROUP_ROOT));
    for root in roots.into_iter().filter(|r| r.is_dir()) {
        let mut dirs = Vec::new();
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(d);
        }
        for d in dirs.into_iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
"#
    )
}

fn conflist(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"{{"cniVersion": "0.4.0", "name": "sq-pods", "plugins": [
  {{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false,
    "ipam": {{"type": "host-local", "dataDir": "{d}/ipam",
      "ranges": [[{{"subnet": "{SUBNET}"}}]]}}}},
  {{"type": "loopback"}}
]}}"#
    )
}

/// A FROM-scratch image of the workload binary and the libraries it links
/// (the sandbox's entry point too: it sleeps), built by podman and saved
/// as an archive `ctr images import` reads.
fn build_image(dir: &Path) -> PathBuf {
    podman_build(dir, IMAGE);
    let tar = dir.join("image.tar");
    must(
        Command::new("podman")
            .args(["save", "-o"])
            .arg(&tar)
            .arg(IMAGE),
    );
    let _ = Command::new("podman").args(["rmi", "-f", IMAGE]).status();
    tar
}

/// Builds `tag` in podman's storage: FROM scratch, the workload binary
/// (the entry point) and the libraries it links, from a context in `dir`.
pub fn podman_build(dir: &Path, tag: &str) {
    let ctx = dir.join("image");
    let root = ctx.join("root");
    let bin = workload_bin();
    let mut files = vec![bin.clone()];
    let ldd = must(Command::new("ldd").arg(&bin));
    files.extend(
        ldd.split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(PathBuf::from),
    );
    for f in &files {
        let to = if *f == bin {
            root.join("sonde-workload")
        } else {
            root.join(f.strip_prefix("/").unwrap())
        };
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(f, &to)
            .unwrap_or_else(|e| panic!("copy {} into the image: {e}", f.display()));
    }
    std::fs::write(
        ctx.join("Containerfile"),
        "FROM scratch\nCOPY root/ /\nENTRYPOINT [\"/sonde-workload\"]\nCMD [\"nanosleep\", \"60000\", \"1440\"]\n",
    )
    .unwrap();
    must(
        Command::new("podman")
            .args(["build", "-q", "-t", tag])
            .arg(&ctx),
    );
}
