//! The deployment files as an orchestrator reads them: the Kubernetes
//! manifests rendered by kustomize, and the compose file. The container test
//! takes each container's environment, arguments, ports, probes and
//! security context from here, so that what is deployed is what is tested.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every object of a rendered kustomize overlay.
#[derive(Debug)]
pub struct Rendered {
    objects: Vec<Value>,
}

/// Values of the Secrets the manifests reference: `(secret, key) → value`.
pub type Secrets = HashMap<(&'static str, &'static str), String>;

impl Rendered {
    /// Renders `deploy/kubernetes/overlays/<overlay>` with `kubectl kustomize`.
    pub async fn overlay(overlay: &str) -> Self {
        let dir = root().join("deploy/kubernetes/overlays").join(overlay);
        let output = tokio::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .await
            .unwrap_or_else(|error| panic!("kubectl is required to render the manifests: {error}"));
        assert!(output.status.success(), "kustomize {overlay}: {}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).expect("UTF-8 manifests");
        Self { objects: yaml_documents(&text) }
    }

    pub fn object(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
    }

    /// Every container of every pod template: `(kind, owner, name)`.
    pub fn containers(&self) -> Vec<(String, String, String)> {
        let mut found = Vec::new();
        for object in &self.objects {
            let pod = &object["spec"]["template"]["spec"];
            for list in ["initContainers", "containers"] {
                for container in pod[list].as_array().into_iter().flatten() {
                    let name = |value: &Value| value.as_str().unwrap_or_default().to_owned();
                    found.push((
                        name(&object["kind"]),
                        name(&object["metadata"]["name"]),
                        name(&container["name"]),
                    ));
                }
            }
        }
        found
    }

    /// A container of a Deployment's or Job's pod, `init` for an init
    /// container.
    pub fn container(&self, kind: &str, owner: &str, name: &str) -> Container<'_> {
        let pod = &self.object(kind, owner)["spec"]["template"]["spec"];
        let spec = ["containers", "initContainers"]
            .iter()
            .filter_map(|list| pod[list].as_array())
            .flatten()
            .find(|container| container["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {owner} has no container {name}"));
        Container { rendered: self, pod, spec }
    }

    /// The port a Service forwards `port` to, as a container port name or
    /// number.
    pub fn service_target(&self, service: &str, port: u16) -> &Value {
        let ports = self.object("Service", service)["spec"]["ports"].as_array().expect("Service ports");
        let port = ports
            .iter()
            .find(|candidate| candidate["port"] == port)
            .unwrap_or_else(|| panic!("Service {service} has no port {port}"));
        &port["targetPort"]
    }
}

/// A probe as Kubernetes would make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Http { path: String, port: u16 },
    Grpc { port: u16, service: String },
}

/// One container of a pod in the rendered manifests.
#[derive(Debug)]
pub struct Container<'a> {
    rendered: &'a Rendered,
    pod: &'a Value,
    spec: &'a Value,
}

impl Container<'_> {
    pub fn image(&self) -> &str {
        self.spec["image"].as_str().expect("image")
    }

    pub fn args(&self) -> Vec<String> {
        strings(&self.spec["args"])
    }

    /// The environment Kubernetes would give it: `envFrom` ConfigMaps, then
    /// `env` (literal values, ConfigMap and Secret keys), later entries
    /// winning. A Secret key missing from `secrets` is left out when the
    /// reference is optional and fails the test otherwise.
    pub fn environment(&self, secrets: &Secrets) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let mut set = |name: &str, value: String| {
            env.retain(|(existing, _)| existing != name);
            env.push((name.to_owned(), value));
        };
        for source in self.spec["envFrom"].as_array().into_iter().flatten() {
            let name = source["configMapRef"]["name"].as_str().expect("only ConfigMaps are used in envFrom");
            let data = self.rendered.object("ConfigMap", name)["data"].as_object().expect("ConfigMap data");
            for (key, value) in data {
                set(key, value.as_str().expect("string").to_owned());
            }
        }
        for entry in self.spec["env"].as_array().into_iter().flatten() {
            let name = entry["name"].as_str().expect("env name");
            if let Some(value) = entry["value"].as_str() {
                set(name, value.to_owned());
            } else if let Some(reference) = entry["valueFrom"]["configMapKeyRef"].as_object() {
                let map = self.rendered.object("ConfigMap", reference["name"].as_str().expect("name"));
                set(
                    name,
                    map["data"][reference["key"].as_str().expect("key")].as_str().expect("value").to_owned(),
                );
            } else if let Some(reference) = entry["valueFrom"]["secretKeyRef"].as_object() {
                let key =
                    (reference["name"].as_str().expect("name"), reference["key"].as_str().expect("key"));
                match secrets.iter().find(|((secret, k), _)| (*secret, *k) == key) {
                    Some((_, value)) => set(name, value.clone()),
                    None if reference.get("optional") == Some(&Value::Bool(true)) => {}
                    None => panic!("the test has no value for Secret {key:?}, referenced by {name}"),
                }
            } else {
                panic!("{name}: an env source the test does not know: {entry}");
            }
        }
        env
    }

    /// A port of this container by name or number.
    pub fn port(&self, port: &Value) -> u16 {
        if let Some(number) = port.as_u64() {
            return u16::try_from(number).expect("port");
        }
        let ports = self.spec["ports"].as_array().expect("container ports");
        let named = ports.iter().find(|candidate| candidate["name"] == *port);
        let number =
            named.unwrap_or_else(|| panic!("no container port named {port}"))["containerPort"].as_u64();
        u16::try_from(number.expect("containerPort")).expect("port")
    }

    /// Its `startupProbe`, `readinessProbe` and `livenessProbe`, in that
    /// order, with the name of each.
    pub fn probes(&self) -> Vec<(&'static str, Probe)> {
        ["startupProbe", "readinessProbe", "livenessProbe"]
            .into_iter()
            .map(|which| {
                let probe = &self.spec[which];
                let probe = if probe["httpGet"].is_object() {
                    let path = probe["httpGet"]["path"].as_str().expect("path").to_owned();
                    Probe::Http { path, port: self.port(&probe["httpGet"]["port"]) }
                } else if probe["grpc"].is_object() {
                    let service = probe["grpc"]["service"].as_str().unwrap_or_default().to_owned();
                    Probe::Grpc { port: self.port(&probe["grpc"]["port"]), service }
                } else {
                    panic!("{which} is missing or of a kind the test does not make: {probe}");
                };
                (which, probe)
            })
            .collect()
    }

    /// The user the pod runs as (`runAsUser:runAsGroup`), checking it is a
    /// non-root one.
    pub fn user(&self) -> String {
        let context = &self.pod["securityContext"];
        assert_eq!(context["runAsNonRoot"], true, "pods must run as non-root");
        assert_eq!(context["seccompProfile"]["type"], "RuntimeDefault");
        format!("{}:{}", context["runAsUser"], context["runAsGroup"])
    }

    /// Whether the root filesystem is read-only, and the capabilities
    /// dropped; checks privilege escalation is off.
    pub fn hardening(&self) -> (bool, Vec<String>) {
        let context = &self.spec["securityContext"];
        assert_eq!(context["allowPrivilegeEscalation"], false);
        (context["readOnlyRootFilesystem"] == true, strings(&context["capabilities"]["drop"]))
    }
}

/// The compose file's services.
#[derive(Debug, Deserialize)]
pub struct Compose {
    pub services: HashMap<String, ComposeService>,
}

#[derive(Debug, Deserialize)]
pub struct ComposeService {
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub environment: HashMap<String, serde_yaml_ng::Value>,
    pub healthcheck: Option<ComposeHealthcheck>,
}

#[derive(Debug, Deserialize)]
pub struct ComposeHealthcheck {
    pub test: Vec<String>,
}

impl Compose {
    pub fn read() -> Self {
        let path = root().join("deploy/compose/compose.yaml");
        let text = std::fs::read_to_string(&path).expect("compose file");
        serde_yaml_ng::from_str(&text).expect("compose file parses")
    }
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("YAML document"))
        .filter(|document| !document.is_null())
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().map(|item| item.as_str().expect("string").to_owned()).collect()
}
