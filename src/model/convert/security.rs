//! Security contexts: the pod's defaults merged into each container's.

use super::*;

impl Ctx<'_> {
    /// The container's security context with the pod's runAsUser/runAsGroup
    /// as defaults. Ignored (accepted): seLinuxOptions (no SELinux labelling on
    /// gateways), seccompProfile and appArmorProfile (the runtime's default
    /// profile applies), windowsOptions (linux only).
    pub(super) fn security_context(
        &self,
        sc: Option<&k8s::SecurityContext>,
        path: &str,
    ) -> Result<Option<SecurityContext>, ConvertError> {
        let pod_sc = self.spec.security_context.as_ref();
        let sc_path = format!("{path}.securityContext");
        let mut out = SecurityContext::default();
        let mut any = false;
        if let Some(sc) = sc {
            any = true;
            if let Some(proc_mount) = sc.proc_mount.as_deref()
                && proc_mount != "Default"
            {
                return Err(unsupported(format!("{sc_path}.procMount")));
            }
            out.run_as_user = sc.run_as_user;
            out.run_as_group = sc.run_as_group;
            out.read_only_root_filesystem = sc.read_only_root_filesystem.unwrap_or(false);
            out.privileged = sc.privileged.unwrap_or(false);
            out.allow_privilege_escalation = sc.allow_privilege_escalation;
            if let Some(caps) = &sc.capabilities {
                out.capabilities_add = caps.add.clone().unwrap_or_default();
                out.capabilities_drop = caps.drop.clone().unwrap_or_default();
            }
            if out.privileged && out.allow_privilege_escalation == Some(false) {
                return Err(field(
                    format!("{sc_path}.allowPrivilegeEscalation"),
                    "cannot be false when privileged is true",
                ));
            }
            if self.runtime == RuntimeKind::Wasm {
                if out.privileged {
                    return Err(field(
                        format!("{sc_path}.privileged"),
                        "not supported for wasm containers",
                    ));
                }
                if !out.capabilities_add.is_empty() {
                    return Err(field(
                        format!("{sc_path}.capabilities.add"),
                        "not supported for wasm containers",
                    ));
                }
            }
        }
        if let Some(pod_sc) = pod_sc {
            if out.run_as_user.is_none() && pod_sc.run_as_user.is_some() {
                out.run_as_user = pod_sc.run_as_user;
                any = true;
            }
            if out.run_as_group.is_none() && pod_sc.run_as_group.is_some() {
                out.run_as_group = pod_sc.run_as_group;
                any = true;
            }
        }
        let ids = [
            (
                sc.and_then(|sc| sc.run_as_user),
                format!("{sc_path}.runAsUser"),
            ),
            (
                sc.and_then(|sc| sc.run_as_group),
                format!("{sc_path}.runAsGroup"),
            ),
            (
                pod_sc.and_then(|sc| sc.run_as_user),
                "spec.securityContext.runAsUser".to_owned(),
            ),
            (
                pod_sc.and_then(|sc| sc.run_as_group),
                "spec.securityContext.runAsGroup".to_owned(),
            ),
        ];
        for (id, id_path) in ids {
            if id.is_some_and(|id| id < 0) {
                return Err(field(id_path, "must not be negative"));
            }
        }
        // runAsNonRoot: the agent does not inspect the image's user, so the
        // check is made here against an explicit runAsUser. Wasm modules never
        // run as root, so it always holds for them.
        let non_root_path = match (
            sc.and_then(|sc| sc.run_as_non_root),
            pod_sc.and_then(|p| p.run_as_non_root),
        ) {
            (Some(true), _) => Some(format!("{sc_path}.runAsNonRoot")),
            (Some(false), _) => None,
            (None, Some(true)) => Some("spec.securityContext.runAsNonRoot".to_owned()),
            (None, _) => None,
        };
        if let Some(non_root_path) = non_root_path
            && self.runtime == RuntimeKind::Container
        {
            match out.run_as_user {
                Some(0) => {
                    return Err(field(non_root_path, "conflicts with runAsUser 0"));
                }
                None => {
                    return Err(field(
                        non_root_path,
                        "needs an explicit non-zero runAsUser on kedge nodes (the image's user is not checked)",
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(any.then_some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::convert::testing::*;
    use serde_json::json;

    #[test]
    fn security_context_merges_pod_defaults() {
        let spec = convert(json!({"spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true},
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "nginx", "securityContext": {
                "runAsUser": 2000,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
                "appArmorProfile": {"type": "RuntimeDefault"}
            }}]
        }}));
        assert_eq!(
            spec.init_containers[0].security_context,
            Some(SecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(1000),
                ..SecurityContext::default()
            })
        );
        assert_eq!(
            spec.containers[0].security_context,
            Some(SecurityContext {
                run_as_user: Some(2000),
                run_as_group: Some(1000),
                read_only_root_filesystem: true,
                privileged: false,
                allow_privilege_escalation: Some(false),
                capabilities_add: vec!["NET_BIND_SERVICE".into()],
                capabilities_drop: vec!["ALL".into()],
            })
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "securityContext": {"privileged": true, "allowPrivilegeEscalation": false}})));
        assert_eq!(
            err,
            "spec.containers[0].securityContext.allowPrivilegeEscalation: cannot be false when privileged is true"
        );
    }
}
