//! Containers run the way an orchestrator runs them, with Podman: the
//! image's own entrypoint and user, a read-only root filesystem, no
//! capabilities, on the host's network (so that the containers reach the
//! test's PostgreSQL on loopback and the test reaches them on the ports the
//! manifests name).

use std::process::Output;

use tokio::process::Command;

/// Podman with a configuration of the test's own: this VM refuses
/// Podman's default rlimits, and its hybrid cgroups need runc.
#[derive(Debug)]
pub struct Podman {
    conf: tempfile::TempDir,
}

/// How a container is started.
#[derive(Debug, Default)]
pub struct RunSpec {
    pub image: String,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// `(name, address)` entries for the container's `/etc/hosts`: what a
    /// Service name resolves to in the cluster.
    pub hosts: Vec<(String, String)>,
    pub read_only: bool,
    pub cap_drop: Vec<String>,
}

impl Podman {
    pub fn new() -> Self {
        let conf = tempfile::tempdir().expect("temporary directory");
        std::fs::write(
            conf.path().join("containers.conf"),
            "[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n",
        )
        .expect("containers.conf");
        Self { conf }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command.env("CONTAINERS_CONF", self.conf.path().join("containers.conf"));
        command.kill_on_drop(true);
        command
    }

    /// Runs podman with `args`, failing the test when podman itself fails.
    pub async fn ok(&self, args: &[&str]) -> String {
        let output = self.output(args).await;
        assert!(output.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub async fn output(&self, args: &[&str]) -> Output {
        self.command().args(args).output().await.unwrap_or_else(|error| {
            panic!("podman is required for the container test (scripts/test installs it): {error}")
        })
    }

    /// Starts a container in the background; it is removed when dropped.
    pub async fn start(&self, name: &str, spec: &RunSpec) -> Container<'_> {
        let _ = self.output(&["rm", "--force", name]).await;
        let mut args = vec!["run".to_owned(), "--detach".to_owned(), format!("--name={name}")];
        args.push("--network=host".to_owned());
        args.push("--security-opt=no-new-privileges".to_owned());
        if spec.read_only {
            args.push("--read-only".to_owned());
        }
        args.extend(spec.cap_drop.iter().map(|cap| format!("--cap-drop={cap}")));
        args.extend(spec.hosts.iter().map(|(name, addr)| format!("--add-host={name}:{addr}")));
        args.extend(
            spec.env.iter().flat_map(|(name, value)| ["--env".to_owned(), format!("{name}={value}")]),
        );
        args.push(spec.image.clone());
        args.extend(spec.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&args).await;
        Container { podman: self, name: name.to_owned() }
    }
}

/// A started container, removed (killed if need be) when dropped.
#[derive(Debug)]
pub struct Container<'a> {
    podman: &'a Podman,
    pub name: String,
}

impl Container<'_> {
    /// Waits for the container to exit and returns its exit code.
    pub async fn exit_code(&self) -> i32 {
        let code = self.podman.ok(&["wait", &self.name]).await;
        code.parse().unwrap_or_else(|_| panic!("exit code of {}: {code:?}", self.name))
    }

    /// Whether it is still running.
    pub async fn running(&self) -> bool {
        self.podman.ok(&["inspect", "--format", "{{.State.Running}}", &self.name]).await == "true"
    }

    /// Stops it as Kubernetes does: SIGTERM, then SIGKILL after `grace`
    /// seconds; returns the exit code (137 when it had to be killed).
    pub async fn stop(&self, grace: u32) -> i32 {
        self.podman.ok(&["stop", &format!("--time={grace}"), &self.name]).await;
        self.exit_code().await
    }

    /// Runs `command` inside it (as `exec` probes and compose health
    /// checks do) and returns its exit status and output.
    pub async fn exec(&self, command: &[&str]) -> Output {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend(command);
        self.podman.output(&args).await
    }

    /// Its standard output and error so far.
    pub async fn logs(&self) -> String {
        let output = self.podman.output(&["logs", &self.name]).await;
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .env("CONTAINERS_CONF", self.podman.conf.path().join("containers.conf"))
            .args(["rm", "--force", "--time=0", &self.name])
            .output();
    }
}
