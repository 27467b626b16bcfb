//! Which container (and which Kubernetes pod) a process runs in, from the text of its
//! `/proc/PID/cgroup`. Pure: the caller reads the file.
//!
//! The path shapes come from the kubelet's two cgroup drivers and the container
//! runtimes (samples and their origins: `tests/corpus/cgroup/README.md`):
//! - cgroupfs driver: `/kubepods[/<qos>]/pod<uid>/<container id>`;
//! - systemd driver: `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid
//!   with '_' for '-'>.slice/<runtime>-<container id>.scope`, where the runtime prefix is
//!   `cri-containerd`, `crio` or `docker`;
//! - read from inside a cgroup namespace (a DaemonSet pod without host cgroupns), the
//!   path is relative to the reader's own cgroup: `0::/../../kubepods-…`.
//!
//! Rather than matching whole layouts (there are many, and they nest: kind runs a
//! kubelet inside a docker container), each path component is recognised on its own.
//! The first component that names a pod gives the pod UID, and the first container
//! below it (or in it: the `slice:prefix:id` form) is the container; without a pod
//! component, the first container. First, not last: a process may create cgroups below
//! its own, so everything below its container's cgroup is its to name — a path such as
//! `…/pod<A>/<container A>/kubepods-pod<B>.slice/<container B>` must not pass a
//! process of pod A off as one of pod B. What is above it the kubelet and the runtime
//! wrote.

/// The container runtime that named the container's cgroup, when the path says it.
/// The cgroupfs driver writes bare ids, so the runtime can be unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerRuntime {
    Containerd,
    CriO,
    Docker,
    Podman,
}

/// The container a process runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupContainer {
    /// Kubernetes pod UID in its canonical form (lowercase, `-` separated), when the
    /// path shows the pod's cgroup (it does not for a sibling container seen from
    /// inside a cgroup namespace, nor outside Kubernetes).
    pub pod_uid: Option<String>,
    /// Container id: 64 lowercase hex digits, without any runtime prefix — the form
    /// that follows `containerd://` in a pod's status.
    pub container_id: String,
    pub runtime: Option<ContainerRuntime>,
}

/// Container ids of docker, containerd and CRI-O are SHA-256 hex strings. Requiring the
/// full length keeps other hex-named cgroups (sandboxes, 32-digit ids) from passing as
/// containers.
const CONTAINER_ID_LEN: usize = 64;

/// Runtime prefixes of systemd scope names (`<prefix>-<id>.scope`) and of the
/// `slice:prefix:id` cgroupsPath form.
const SCOPE_PREFIXES: [(&str, ContainerRuntime); 4] = [
    ("cri-containerd", ContainerRuntime::Containerd),
    ("crio", ContainerRuntime::CriO),
    ("docker", ContainerRuntime::Docker),
    ("libpod", ContainerRuntime::Podman),
];

/// Parses the text of `/proc/PID/cgroup`. `None` when the process is not in a
/// container (a host service, a login session, or the reader's own cgroup).
///
/// With cgroup v1 every hierarchy has a line; the line that says the most (a pod UID
/// as well as a container id) wins, so a hybrid system whose unified `0::` line is
/// uninformative still resolves.
pub fn parse_proc_cgroup(text: &str) -> Option<CgroupContainer> {
    let mut best: Option<CgroupContainer> = None;
    for line in text.lines() {
        // hierarchy-id:controllers:path — the path itself may contain ':' (the
        // `slice:prefix:id` form), so split only twice.
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(_), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Some(found) = parse_cgroup_path(path) else {
            continue;
        };
        let better = match &best {
            None => true,
            Some(current) => current.pod_uid.is_none() && found.pod_uid.is_some(),
        };
        if better {
            best = Some(found);
        }
    }
    best
}

/// Parses one cgroup path (the third field of a `/proc/PID/cgroup` line).
pub fn parse_cgroup_path(path: &str) -> Option<CgroupContainer> {
    let mut pod_uid: Option<String> = None;
    // The first container, and the first one at or below the pod's component.
    let mut first_container: Option<(String, Option<ContainerRuntime>)> = None;
    let mut pod_container: Option<(String, Option<ContainerRuntime>)> = None;
    let mut previous_component = "";
    for component in path.split('/').filter(|c| !c.is_empty() && *c != "..") {
        // `kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`: a pod and a
        // container in one component.
        if pod_uid.is_none() {
            pod_uid = component.split(':').find_map(pod_uid_of);
        }
        if let Some(found) = container_of(component, previous_component) {
            if pod_uid.is_some() && pod_container.is_none() {
                pod_container = Some(found.clone());
            }
            first_container.get_or_insert(found);
        }
        previous_component = component;
    }
    let (container_id, runtime) = if pod_uid.is_some() {
        pod_container?
    } else {
        first_container?
    };
    Some(CgroupContainer {
        pod_uid,
        container_id,
        runtime,
    })
}

/// `pod<uid>` (cgroupfs driver) or `…-pod<uid_with_underscores>.slice` (systemd driver).
fn pod_uid_of(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let start = if name.starts_with("pod") {
        0
    } else {
        // systemd: kubepods-pod<uid>, kubepods-<qos>-pod<uid>, kubelet-kubepods-…-pod<uid>
        if !name.contains("kubepods") {
            return None;
        }
        name.rfind("-pod")? + 1
    };
    let uid = &name[start + "pod".len()..];
    is_uuid(uid).then(|| uid.replace('_', "-").to_ascii_lowercase())
}

/// A UUID in 8-4-4-4-12 form, with `-` or (systemd-escaped) `_` separators.
fn is_uuid(text: &str) -> bool {
    const SEPARATORS: [usize; 4] = [8, 13, 18, 23];
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| {
            if SEPARATORS.contains(&i) {
                b == b'-' || b == b'_'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

fn container_of(component: &str, parent: &str) -> Option<(String, Option<ContainerRuntime>)> {
    // `slice:prefix:id`
    let mut colon_parts = component.rsplitn(3, ':');
    if let (Some(id), Some(prefix), Some(_slice)) =
        (colon_parts.next(), colon_parts.next(), colon_parts.next())
    {
        let runtime = SCOPE_PREFIXES
            .iter()
            .find(|(p, _)| *p == prefix)
            .map(|(_, r)| *r);
        return is_container_id(id).then(|| (id.to_ascii_lowercase(), runtime));
    }
    if let Some(name) = component.strip_suffix(".scope") {
        // `crio-conmon-<id>.scope` is CRI-O's monitor process beside the container:
        // it fails here because `conmon-<id>` is not an id.
        for (prefix, runtime) in SCOPE_PREFIXES {
            if let Some(id) = name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('-'))
                && is_container_id(id)
            {
                return Some((id.to_ascii_lowercase(), Some(runtime)));
            }
        }
        return None;
    }
    // cgroupfs driver: a bare id, under the pod's directory (Kubernetes, runtime not
    // named) or under `/docker` (plain docker).
    if is_container_id(component) {
        let runtime = (parent == "docker").then_some(ContainerRuntime::Docker);
        return Some((component.to_ascii_lowercase(), runtime));
    }
    None
}

fn is_container_id(text: &str) -> bool {
    text.len() == CONTAINER_ID_LEN && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINER_ID: &str = "3f1d2c8e9a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d";
    const POD_UID: &str = "7c4b2d1e-9f3a-4b8c-a1d2-3e4f5a6b7c8d";

    fn corpus(name: &str) -> String {
        let path = format!("{}/tests/corpus/cgroup/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn assert_pod_container(name: &str, runtime: Option<ContainerRuntime>) {
        let found = parse_proc_cgroup(&corpus(name)).unwrap_or_else(|| panic!("{name}: None"));
        assert_eq!(
            found,
            CgroupContainer {
                pod_uid: Some(POD_UID.into()),
                container_id: CONTAINER_ID.into(),
                runtime,
            },
            "{name}"
        );
    }

    #[test]
    fn kubernetes_layouts_give_pod_uid_and_container_id() {
        use ContainerRuntime::*;
        for (name, runtime) in [
            ("v2-systemd-containerd-burstable.txt", Some(Containerd)),
            ("v2-systemd-containerd-guaranteed.txt", Some(Containerd)),
            ("v2-systemd-crio-besteffort.txt", Some(CriO)),
            ("v2-cgroupfs-containerd-besteffort.txt", None),
            ("v2-namespaced-containerd.txt", Some(Containerd)),
            ("v2-namespaced-deep-containerd.txt", Some(Containerd)),
            ("v2-kind-nested.txt", Some(Containerd)),
            ("v2-systemd-colon-form.txt", Some(Containerd)),
            ("v1-cgroupfs-docker-burstable.txt", None),
            ("v1-cgroupfs-guaranteed.txt", None),
            ("v1-systemd-docker-besteffort.txt", Some(Docker)),
            ("v1-hybrid-systemd-containerd.txt", Some(Containerd)),
        ] {
            assert_pod_container(name, runtime);
        }
    }

    #[test]
    fn containers_outside_kubernetes_have_no_pod() {
        for (name, runtime) in [
            ("v2-docker-plain.txt", ContainerRuntime::Docker),
            ("v1-docker-plain.txt", ContainerRuntime::Docker),
            ("v2-podman.txt", ContainerRuntime::Podman),
        ] {
            let found = parse_proc_cgroup(&corpus(name)).unwrap();
            assert_eq!(found.pod_uid, None, "{name}");
            assert_eq!(found.container_id, CONTAINER_ID, "{name}");
            assert_eq!(found.runtime, Some(runtime), "{name}");
        }
    }

    #[test]
    fn sibling_container_in_a_cgroup_namespace_has_only_its_id() {
        let found = parse_proc_cgroup(&corpus("v2-namespaced-sibling.txt")).unwrap();
        assert_eq!(found.pod_uid, None);
        assert_eq!(found.container_id, CONTAINER_ID);
    }

    #[test]
    fn cgroups_a_container_creates_below_its_own_cannot_claim_another_pod() {
        let victim_uid = "0d2c1b4a-9f8e-4d7c-b6a5-948372615abc";
        let victim_id = "ab".repeat(32);
        for path in [
            // cgroupfs layout, a systemd-style pod slice nested below the container.
            format!(
                "/kubepods/burstable/pod{POD_UID}/{CONTAINER_ID}/kubepods-pod{}.slice/cri-containerd-{victim_id}.scope",
                victim_uid.replace('-', "_")
            ),
            // systemd layout, the victim's pod and container below the container's scope.
            format!(
                "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CONTAINER_ID}.scope/pod{victim_uid}/{victim_id}",
                POD_UID.replace('-', "_")
            ),
        ] {
            let found = parse_cgroup_path(&path).unwrap();
            assert_eq!(found.pod_uid.as_deref(), Some(POD_UID), "{path}");
            assert_eq!(found.container_id, CONTAINER_ID, "{path}");
        }
        // Outside Kubernetes too: the outermost container is the one the runtime made.
        let nested = format!("/docker/{CONTAINER_ID}/docker-{victim_id}.scope");
        assert_eq!(
            parse_cgroup_path(&nested).unwrap().container_id,
            CONTAINER_ID
        );
    }

    #[test]
    fn kind_node_container_is_not_mistaken_for_the_workload() {
        // The docker scope of the kind node comes first in the path; the pod's
        // container is the innermost one.
        let found = parse_proc_cgroup(&corpus("v2-kind-nested.txt")).unwrap();
        assert_eq!(found.container_id, CONTAINER_ID);
    }

    #[test]
    fn host_processes_and_monitors_are_not_containers() {
        for name in [
            "v2-host-service.txt",
            "v2-host-session.txt",
            "v2-host-init.txt",
            "v1-host-service.txt",
            "v1-this-vm-host.txt",
            "v2-systemd-crio-conmon.txt",
        ] {
            assert_eq!(parse_proc_cgroup(&corpus(name)), None, "{name}");
        }
        assert_eq!(parse_proc_cgroup("0::/\n"), None);
        assert_eq!(parse_proc_cgroup(""), None);
        assert_eq!(parse_proc_cgroup("garbage without colons\n"), None);
    }

    #[test]
    fn ids_are_normalised_to_lowercase_and_hyphens() {
        let upper_id = CONTAINER_ID.to_ascii_uppercase();
        let upper_uid = POD_UID.to_ascii_uppercase().replace('-', "_");
        let found = parse_cgroup_path(&format!(
            "/kubepods.slice/kubepods-pod{upper_uid}.slice/cri-containerd-{upper_id}.scope"
        ))
        .unwrap();
        assert_eq!(found.pod_uid.as_deref(), Some(POD_UID));
        assert_eq!(found.container_id, CONTAINER_ID);
    }

    #[test]
    fn near_misses_are_rejected() {
        // 63 digits, a non-hex digit, a UID with a bad separator.
        let short = &CONTAINER_ID[1..];
        assert_eq!(parse_cgroup_path(&format!("/docker/{short}")), None);
        let non_hex = format!("g{short}");
        assert_eq!(parse_cgroup_path(&format!("/docker/{non_hex}")), None);
        let bad_uid = POD_UID.replacen('-', "x", 1);
        let found = parse_cgroup_path(&format!("/kubepods/pod{bad_uid}/{CONTAINER_ID}")).unwrap();
        assert_eq!(found.pod_uid, None);
        assert_eq!(
            parse_cgroup_path(&format!("/system.slice/unknown-{CONTAINER_ID}.scope")),
            None
        );
    }
}
