//! Who a process is: its container and pod (from `/proc/PID/cgroup`, resolved through
//! the Kubernetes API) and the workload labels its metrics carry. The daemon loop that
//! scans processes and follows exec/exit lives with `mapwatch run`; this module holds the
//! pure parts it calls and the Kubernetes pod resolver.
pub mod cgroup;
pub mod cpu;
pub mod kubernetes;
pub mod procs;
pub mod tracker;

pub use cgroup::{CgroupContainer, ContainerRuntime, parse_proc_cgroup};
pub use kubernetes::{KubernetesMode, PodIdentity, PodIndex, PodResolver};

use crate::metrics::WorkloadLabels;

/// What a workload is called: the executable's file name and Go version, and — inside
/// Kubernetes — its namespace, pod and container name. The Kubernetes fields are empty
/// outside Kubernetes (and while a pod is not yet resolved), as in the metric contract.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct WorkloadIdentity {
    pub binary: String,
    pub go_version: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl WorkloadIdentity {
    /// A process outside Kubernetes (or whose pod is unknown).
    pub fn host(binary: impl Into<String>, go_version: impl Into<String>) -> WorkloadIdentity {
        WorkloadIdentity {
            binary: binary.into(),
            go_version: go_version.into(),
            ..Default::default()
        }
    }

    /// The same binary, placed in a pod.
    pub fn in_pod(mut self, pod: PodIdentity) -> WorkloadIdentity {
        self.namespace = pod.namespace;
        self.pod = pod.pod;
        self.container = pod.container;
        self
    }
}

impl From<WorkloadIdentity> for WorkloadLabels {
    fn from(identity: WorkloadIdentity) -> WorkloadLabels {
        WorkloadLabels {
            namespace: identity.namespace,
            pod: identity.pod,
            container: identity.container,
            binary: identity.binary,
            go_version: identity.go_version,
        }
    }
}

impl From<&WorkloadIdentity> for WorkloadLabels {
    fn from(identity: &WorkloadIdentity) -> WorkloadLabels {
        identity.clone().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_carry_every_identity_field_in_place() {
        let identity = WorkloadIdentity::host("api", "go1.24.11").in_pod(PodIdentity {
            namespace: "shop".into(),
            pod: "api-7d9f".into(),
            container: "server".into(),
        });
        let labels = WorkloadLabels::from(&identity);
        assert_eq!(
            labels.values(),
            ["shop", "api-7d9f", "server", "api", "go1.24.11"]
        );
    }

    #[test]
    fn host_workload_has_empty_kubernetes_labels() {
        let labels: WorkloadLabels = WorkloadIdentity::host("worker", "go1.21.13").into();
        assert_eq!(labels.values(), ["", "", "", "worker", "go1.21.13"]);
    }
}
