//! Podman containers outside any pod, for the tests: an image of the
//! workload binary built here (nothing pulled; see [`crate::cri`]) and
//! containers run with `podman run` as a user would, with the three
//! adjustments this machine needs (runc and cgroupfs on a hybrid cgroup
//! host, limits within the hard ones). [`Podman`] is a guard: dropping it
//! removes its containers and its image.

use std::{path::PathBuf, process::Command};

use crate::{cri::podman_build, sys::must};

pub struct Podman {
    image: String,
    dir: PathBuf,
    containers: Vec<String>,
}

/// `podman` with the flags every call here needs.
fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    c
}

impl Podman {
    /// Builds the image `localhost/<name>:local` (`name` starts with the
    /// test's prefix).
    pub fn start(name: &str) -> Podman {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let image = format!("localhost/{name}:local");
        podman_build(&dir, &image);
        Podman {
            image,
            dir,
            containers: Vec::new(),
        }
    }

    /// `podman run -d --name NAME` of the image with the workload's `args`
    /// (no network); the container's id.
    pub fn run(&mut self, name: &str, args: &[&str]) -> String {
        self.containers.push(name.to_owned());
        let out = must(
            podman()
                .args(["run", "-d", "--name", name, "--network", "none"])
                .args([
                    "--ulimit",
                    "nofile=20000:20000",
                    "--ulimit",
                    "nproc=4096:4096",
                ])
                .arg(&self.image)
                .args(args),
        );
        out.trim().lines().last().unwrap_or_default().to_owned()
    }

    /// The container's main process, as podman reports it (0: not running).
    pub fn pid(&self, name: &str) -> u32 {
        must(podman().args(["inspect", "--format", "{{.State.Pid}}", name]))
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = podman().args(["rm", "-f", "-t", "0", c]).output();
        }
        let _ = podman().args(["rmi", "-f", &self.image]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
