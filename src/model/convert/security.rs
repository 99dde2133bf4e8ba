//! Security contexts: the pod's defaults merged into each container's.

use super::*;

impl Ctx<'_> {
    /// The container's security context with the pod's runAsUser/runAsGroup,
    /// seccompProfile, appArmorProfile and seLinuxOptions as defaults (the
    /// container's win), as the kubelet's `determineEffectiveSecurityContext`
    /// merges them. windowsOptions: `pod::windows_options`.
    ///
    /// A Wasm module runs inside the agent: what would not apply to it is
    /// refused (a user or group, privileges, added capabilities, an SELinux
    /// label, a kernel profile other than the agent's own); what only
    /// takes something away holds for every module (`capabilities.drop`,
    /// `allowPrivilegeEscalation: false`, `readOnlyRootFilesystem`: a module
    /// has no capabilities, cannot gain privileges, and has no root file
    /// system, only its volumes).
    pub(super) fn security_context(
        &self,
        container: &str,
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
                let refused = [
                    (out.privileged, "privileged", WASM_PRIVILEGED),
                    (
                        !out.capabilities_add.is_empty(),
                        "capabilities.add",
                        WASM_CAPABILITIES,
                    ),
                    (out.run_as_user.is_some(), "runAsUser", WASM_USER),
                    (out.run_as_group.is_some(), "runAsGroup", WASM_GROUP),
                    (
                        sc.se_linux_options.is_some(),
                        "seLinuxOptions",
                        WASM_SELINUX,
                    ),
                ];
                if let Some((_, name, why)) = refused.iter().find(|(on, _, _)| *on) {
                    return Err(field(
                        format!("{sc_path}.{name}"),
                        format!("not supported for wasm containers: {why}"),
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
        // seccomp and AppArmor: the container's field, else the pod's (for
        // AppArmor, else the deprecated annotation, which the apiserver still
        // honours).
        let seccomp = match (
            sc.and_then(|sc| sc.seccomp_profile.as_ref()),
            pod_sc.and_then(|p| p.seccomp_profile.as_ref()),
        ) {
            (Some(p), _) => Some(self.profile(
                ProfileKind::Seccomp,
                &p.type_,
                p.localhost_profile.as_deref(),
                &format!("{sc_path}.seccompProfile"),
            )?),
            (None, Some(p)) => Some(self.profile(
                ProfileKind::Seccomp,
                &p.type_,
                p.localhost_profile.as_deref(),
                "spec.securityContext.seccompProfile",
            )?),
            (None, None) => None,
        };
        let annotation_key = format!("{APPARMOR_ANNOTATION_PREFIX}{container}");
        let annotation = self
            .pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(&annotation_key));
        let app_armor = match (
            sc.and_then(|sc| sc.app_armor_profile.as_ref()),
            pod_sc.and_then(|p| p.app_armor_profile.as_ref()),
            annotation,
        ) {
            (Some(p), _, _) => Some(self.profile(
                ProfileKind::AppArmor,
                &p.type_,
                p.localhost_profile.as_deref(),
                &format!("{sc_path}.appArmorProfile"),
            )?),
            (None, _, Some(value)) => Some(self.app_armor_annotation(value, &annotation_key)?),
            (None, Some(p), None) => Some(self.profile(
                ProfileKind::AppArmor,
                &p.type_,
                p.localhost_profile.as_deref(),
                "spec.securityContext.appArmorProfile",
            )?),
            (None, None, None) => None,
        };
        if seccomp.is_some() || app_armor.is_some() {
            any = true;
        }
        out.seccomp_profile = seccomp;
        out.app_armor_profile = app_armor;
        // seLinuxOptions: the container's whole, else the pod's (a Wasm
        // pod's is refused by `pod_security`).
        if let Some(o) = sc
            .and_then(|sc| sc.se_linux_options.as_ref())
            .or_else(|| pod_sc.and_then(|p| p.se_linux_options.as_ref()))
        {
            out.se_linux_options = Some(se_linux_options(o));
            any = true;
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
        // runAsNonRoot: checked here against an explicit runAsUser; without
        // one, the agent checks the image's user before each start
        // (`Container::run_as_non_root`, see `non_root`). Wasm modules never
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
            && out.run_as_user == Some(0)
        {
            return Err(field(non_root_path, "conflicts with runAsUser 0"));
        }
        Ok(any.then_some(out))
    }

    /// Whether the agent must check the image's user before a start: the
    /// effective `runAsNonRoot` (`sc`'s, else the pod's) of a container pod
    /// whose effective `runAsUser` (`merged`'s) is unset.
    pub(super) fn non_root(
        &self,
        sc: Option<&k8s::SecurityContext>,
        merged: Option<&SecurityContext>,
    ) -> bool {
        let pod = self.spec.security_context.as_ref();
        let asked = sc
            .and_then(|sc| sc.run_as_non_root)
            .or_else(|| pod.and_then(|p| p.run_as_non_root));
        self.runtime == RuntimeKind::Container
            && asked == Some(true)
            && merged.and_then(|m| m.run_as_user).is_none()
    }

    /// A `seccompProfile` or `appArmorProfile` at `path`, checked as the
    /// apiserver does; Wasm containers take only RuntimeDefault (the agent's
    /// own confinement): no kernel profile applies inside the agent.
    fn profile(
        &self,
        kind: ProfileKind,
        type_: &str,
        localhost: Option<&str>,
        path: &str,
    ) -> Result<SecurityProfile, ConvertError> {
        let localhost_path = format!("{path}.localhostProfile");
        let profile = match type_ {
            "RuntimeDefault" | "Unconfined" if localhost.is_some() => {
                return Err(field(
                    localhost_path,
                    "can only be set if the type is Localhost",
                ));
            }
            "RuntimeDefault" => SecurityProfile::RuntimeDefault,
            "Unconfined" => SecurityProfile::Unconfined,
            "Localhost" => {
                let Some(name) = localhost.filter(|l| !l.is_empty()) else {
                    return Err(field(
                        localhost_path,
                        "must be set if the type is Localhost",
                    ));
                };
                if kind == ProfileKind::Seccomp {
                    // A file under the node's seccomp directory.
                    crate::model::validate::relative_path(&localhost_path, name)
                        .map_err(|e| field(e.field, e.detail))?;
                } else if name.len() > 4095 || name.chars().any(char::is_control) {
                    return Err(field(localhost_path, "not an AppArmor profile name"));
                }
                SecurityProfile::Localhost(name.to_owned())
            }
            other => {
                return Err(field(
                    format!("{path}.type"),
                    format!(
                        "Unsupported value: {other:?}: supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\""
                    ),
                ));
            }
        };
        if self.runtime == RuntimeKind::Wasm && profile != SecurityProfile::RuntimeDefault {
            return Err(field(
                format!("{path}.type"),
                format!(
                    "{type_} is not supported for wasm containers (no kernel {} profile applies inside the agent; use RuntimeDefault or leave it unset)",
                    kind.word()
                ),
            ));
        }
        Ok(profile)
    }

    /// The deprecated `container.apparmor.security.beta.kubernetes.io/{name}`
    /// annotation: `runtime/default`, `unconfined` or `localhost/{profile}`.
    fn app_armor_annotation(
        &self,
        value: &str,
        key: &str,
    ) -> Result<SecurityProfile, ConvertError> {
        let path = format!("metadata.annotations[{key:?}]");
        let (type_, localhost) = match value {
            "runtime/default" => ("RuntimeDefault", None),
            "unconfined" => ("Unconfined", None),
            other => match other.strip_prefix("localhost/") {
                Some(name) => ("Localhost", Some(name)),
                None => {
                    return Err(field(
                        path,
                        format!(
                            "invalid AppArmor profile {other:?} (use runtime/default, unconfined or localhost/<profile>)"
                        ),
                    ));
                }
            },
        };
        self.profile(ProfileKind::AppArmor, type_, localhost, &path)
    }
}

/// Why a Wasm module cannot have what a field asks for (after "not
/// supported for wasm containers: " or "… pods: ").
pub(super) const WASM_PRIVILEGED: &str =
    "a module runs inside the agent and cannot be given the node's privileges";
pub(super) const WASM_CAPABILITIES: &str = "a module has no Linux capabilities";
pub(super) const WASM_USER: &str = "a module runs inside the agent and has no user of its own";
pub(super) const WASM_GROUP: &str = "a module runs inside the agent and has no group of its own";
pub(super) const WASM_SELINUX: &str = "no SELinux label applies inside the agent";

/// `seLinuxOptions` as the CRI takes them (an unset part: the runtime's
/// default for it).
pub(super) fn se_linux_options(o: &k8s::SELinuxOptions) -> SeLinuxOptions {
    let part = |p: &Option<String>| p.clone().unwrap_or_default();
    SeLinuxOptions {
        user: part(&o.user),
        role: part(&o.role),
        r#type: part(&o.type_),
        level: part(&o.level),
    }
}

/// The deprecated per-container AppArmor annotation, before the container's
/// name.
const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProfileKind {
    Seccomp,
    AppArmor,
}

impl ProfileKind {
    fn word(self) -> &'static str {
        match self {
            ProfileKind::Seccomp => "seccomp",
            ProfileKind::AppArmor => "AppArmor",
        }
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
                seccomp_profile: Some(SecurityProfile::RuntimeDefault),
                app_armor_profile: Some(SecurityProfile::RuntimeDefault),
                se_linux_options: None,
            })
        );
        let err = convert_err(with_container(json!({"name": "app", "image": "nginx",
            "securityContext": {"privileged": true, "allowPrivilegeEscalation": false}})));
        assert_eq!(
            err,
            "spec.containers[0].securityContext.allowPrivilegeEscalation: cannot be false when privileged is true"
        );
    }

    /// seLinuxOptions: the pod's label is the sandbox's and every
    /// container's that has none of its own; a container's replaces the
    /// pod's whole (the kubelet's effective security context).
    #[test]
    fn se_linux_options_reach_the_sandbox_and_each_container() {
        let spec = convert(json!({"spec": {
            "securityContext": {"seLinuxOptions": {"level": "s0:c1,c2", "type": "container_t"}},
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "nginx", "securityContext": {
                "seLinuxOptions": {"user": "system_u", "role": "system_r"}
            }}]
        }}));
        let pod = SeLinuxOptions {
            r#type: "container_t".into(),
            level: "s0:c1,c2".into(),
            ..Default::default()
        };
        assert_eq!(spec.security.se_linux_options, Some(pod.clone()));
        let label = |c: &Container| c.security_context.clone().and_then(|s| s.se_linux_options);
        assert_eq!(label(&spec.init_containers[0]), Some(pod));
        assert_eq!(
            label(&spec.containers[0]),
            Some(SeLinuxOptions {
                user: "system_u".into(),
                role: "system_r".into(),
                ..Default::default()
            })
        );
        let plain = convert(json!({}));
        assert_eq!(plain.security.se_linux_options, None);
        assert_eq!(plain.containers[0].security_context, None);

        // Wasm: no SELinux label applies inside the agent.
        let module = format!("file:///m.wasm@sha256:{DIGEST}");
        for (patch, expected) in [
            (
                json!({"spec": {"containers": [{"name": "app", "image": module.clone(),
                    "securityContext": {"seLinuxOptions": {"level": "s0"}}}]}}),
                "spec.containers[0].securityContext.seLinuxOptions: not supported for wasm containers: no SELinux label applies inside the agent",
            ),
            (
                json!({"spec": {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}}),
                "spec.securityContext.seLinuxOptions: not supported for wasm pods: no SELinux label applies inside the agent",
            ),
        ] {
            let mut pod = wasm(&module);
            merge(&mut pod, patch);
            assert_eq!(convert_err(pod), expected);
        }
    }

    /// What a Wasm module cannot have is refused at its path; what only
    /// takes something away holds for every module and is accepted.
    #[test]
    fn wasm_containers_refuse_what_a_module_cannot_have() {
        let module = format!("file:///m.wasm@sha256:{DIGEST}");
        let container = |sc: serde_json::Value| json!({"spec": {"containers": [{"name": "app", "image": module.clone(), "securityContext": sc}]}});
        let mut ok = wasm(&module);
        merge(
            &mut ok,
            container(json!({
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "runAsNonRoot": true,
                "privileged": false,
                "seccompProfile": {"type": "RuntimeDefault"}
            })),
        );
        let sc = convert(ok).containers[0]
            .security_context
            .clone()
            .expect("set");
        assert!(sc.read_only_root_filesystem);
        assert_eq!(sc.capabilities_drop, ["ALL"]);
        for (patch, expected) in [
            (
                container(json!({"privileged": true})),
                "spec.containers[0].securityContext.privileged: not supported for wasm containers: a module runs inside the agent and cannot be given the node's privileges",
            ),
            (
                container(json!({"capabilities": {"add": ["NET_ADMIN"]}})),
                "spec.containers[0].securityContext.capabilities.add: not supported for wasm containers: a module has no Linux capabilities",
            ),
            (
                container(json!({"runAsUser": 1000})),
                "spec.containers[0].securityContext.runAsUser: not supported for wasm containers: a module runs inside the agent and has no user of its own",
            ),
            (
                container(json!({"runAsGroup": 1000})),
                "spec.containers[0].securityContext.runAsGroup: not supported for wasm containers: a module runs inside the agent and has no group of its own",
            ),
            (
                json!({"spec": {"securityContext": {"runAsUser": 1000}}}),
                "spec.securityContext.runAsUser: not supported for wasm pods: a module runs inside the agent and has no user of its own",
            ),
            (
                json!({"spec": {"securityContext": {"runAsGroup": 1000}}}),
                "spec.securityContext.runAsGroup: not supported for wasm pods: a module runs inside the agent and has no group of its own",
            ),
        ] {
            let mut pod = wasm(&module);
            merge(&mut pod, patch);
            assert_eq!(convert_err(pod), expected);
        }
    }

    #[test]
    fn seccomp_and_apparmor_profiles_container_over_pod() {
        let spec = convert(json!({
            "metadata": {"annotations": {
                "container.apparmor.security.beta.kubernetes.io/legacy": "localhost/k8s-deny-write"
            }},
            "spec": {
            "securityContext": {
                "seccompProfile": {"type": "RuntimeDefault"},
                "appArmorProfile": {"type": "Unconfined"}
            },
            "containers": [
                {"name": "app", "image": "nginx"},
                {"name": "own", "image": "nginx", "securityContext": {
                    "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/audit.json"},
                    "appArmorProfile": {"type": "RuntimeDefault"}
                }},
                {"name": "legacy", "image": "nginx"}
            ]
        }}));
        let profiles: Vec<_> = spec
            .containers
            .iter()
            .map(|c| {
                let sc = c.security_context.clone().expect("set");
                (sc.seccomp_profile, sc.app_armor_profile)
            })
            .collect();
        assert_eq!(
            profiles,
            [
                (
                    Some(SecurityProfile::RuntimeDefault),
                    Some(SecurityProfile::Unconfined)
                ),
                (
                    Some(SecurityProfile::Localhost("profiles/audit.json".into())),
                    Some(SecurityProfile::RuntimeDefault)
                ),
                // The annotation wins over the pod's field, not the container's.
                (
                    Some(SecurityProfile::RuntimeDefault),
                    Some(SecurityProfile::Localhost("k8s-deny-write".into()))
                ),
            ]
        );
        // Unset everywhere: unset (the node's default applies on the device).
        let spec = convert(json!({}));
        assert_eq!(spec.containers[0].security_context, None);
    }

    #[test]
    fn bad_profiles_are_refused_with_their_path() {
        let sc = |sc: serde_json::Value| {
            with_container(json!({"name": "app", "image": "nginx", "securityContext": sc}))
        };
        let cases = [
            (
                sc(json!({"seccompProfile": {"type": "Localhost"}})),
                "spec.containers[0].securityContext.seccompProfile.localhostProfile: must be set if the type is Localhost",
            ),
            (
                sc(
                    json!({"seccompProfile": {"type": "RuntimeDefault", "localhostProfile": "x.json"}}),
                ),
                "spec.containers[0].securityContext.seccompProfile.localhostProfile: can only be set if the type is Localhost",
            ),
            (
                sc(
                    json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "../etc/x.json"}}),
                ),
                "spec.containers[0].securityContext.seccompProfile.localhostProfile: Invalid value: must not contain '..', '.' or empty path elements",
            ),
            (
                sc(
                    json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "/abs.json"}}),
                ),
                "spec.containers[0].securityContext.seccompProfile.localhostProfile: Invalid value: must be a relative path",
            ),
            (
                sc(json!({"appArmorProfile": {"type": "Strict"}})),
                "spec.containers[0].securityContext.appArmorProfile.type: Unsupported value: \"Strict\": supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\"",
            ),
            (
                json!({"spec": {"securityContext": {"seccompProfile": {"type": "Bogus"}}}}),
                "spec.securityContext.seccompProfile.type: Unsupported value: \"Bogus\": supported values: \"Localhost\", \"RuntimeDefault\", \"Unconfined\"",
            ),
            (
                json!({"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/app": "strict"}}}),
                "metadata.annotations[\"container.apparmor.security.beta.kubernetes.io/app\"]: invalid AppArmor profile \"strict\" (use runtime/default, unconfined or localhost/<profile>)",
            ),
        ];
        for (patch, expected) in cases {
            assert_eq!(convert_err(patch.clone()), expected, "patch: {patch}");
        }
    }

    #[test]
    fn wasm_containers_take_only_the_runtime_default_profile() {
        let mut ok = wasm(&format!("file:///m.wasm@sha256:{DIGEST}"));
        merge(
            &mut ok,
            json!({"spec": {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"},
                "appArmorProfile": {"type": "RuntimeDefault"}}}}),
        );
        let spec = convert(ok);
        let sc = spec.containers[0].security_context.clone().expect("set");
        assert_eq!(sc.seccomp_profile, Some(SecurityProfile::RuntimeDefault));

        for (patch, expected) in [
            (
                json!({"spec": {"securityContext": {"seccompProfile": {"type": "Unconfined"}}}}),
                "spec.securityContext.seccompProfile.type: Unconfined is not supported for wasm containers (no kernel seccomp profile applies inside the agent; use RuntimeDefault or leave it unset)",
            ),
            (
                json!({"spec": {"containers": [{"name": "app", "image": format!("file:///m.wasm@sha256:{DIGEST}"),
                    "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}}}]}}),
                "spec.containers[0].securityContext.appArmorProfile.type: Localhost is not supported for wasm containers (no kernel AppArmor profile applies inside the agent; use RuntimeDefault or leave it unset)",
            ),
        ] {
            let mut pod = wasm(&format!("file:///m.wasm@sha256:{DIGEST}"));
            merge(&mut pod, patch);
            assert_eq!(convert_err(pod), expected);
        }
    }
}
