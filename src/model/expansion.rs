//! `$(VAR)` references in env values, `command` and `args`, expanded the
//! kubelet's way (`k8s.io/kubernetes/third_party/forked/golang/expansion`):
//! `$(NAME)` is replaced by the variable's value when it is known and left as
//! written when it is not, `$$` is an escaped `$`, any other `$` stays.
//!
//! Env values are expanded in order, each seeing the variables before it;
//! `command` and `args` see the whole environment. Pure; the agent applies it
//! at container start for both runtimes (`expand_container`), so values that
//! must stay literal (read from a ConfigMap, a Secret or the downward API)
//! travel escaped (`escape`), as the kubelet expands only literal `value`s.

use std::collections::HashMap;

use super::{Container, StatusField};

const OPERATOR: u8 = b'$';
const OPENER: u8 = b'(';
const CLOSER: u8 = b')';

/// Expands `input` with `mapping` (None: an unknown variable, left as
/// `$(NAME)`).
pub fn expand<'a>(input: &str, mapping: impl Fn(&str) -> Option<&'a str>) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == OPERATOR && cursor + 1 < bytes.len() {
            out.extend_from_slice(&bytes[checkpoint..cursor]);
            let rest = &bytes[cursor + 1..];
            let advance = match rest[0] {
                // `$$`: an escaped operator.
                OPERATOR => {
                    out.push(OPERATOR);
                    1
                }
                OPENER => match rest.iter().position(|b| *b == CLOSER) {
                    Some(close) => {
                        // The name lies between ASCII delimiters, so it is a
                        // whole UTF-8 string.
                        let name = &input[cursor + 2..cursor + 1 + close];
                        match mapping(name) {
                            Some(value) => out.extend_from_slice(value.as_bytes()),
                            None => {
                                out.extend_from_slice(b"$(");
                                out.extend_from_slice(name.as_bytes());
                                out.push(CLOSER);
                            }
                        }
                        close + 1
                    }
                    // An incomplete reference: kept as written.
                    None => {
                        out.extend_from_slice(b"$(");
                        1
                    }
                },
                // An operator that begins no expression: kept.
                other => {
                    out.push(OPERATOR);
                    out.push(other);
                    1
                }
            };
            cursor += advance;
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.extend_from_slice(&bytes[checkpoint.min(bytes.len())..]);
    // Only whole UTF-8 sequences were copied, in order.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `s` escaped so that [`expand`] gives it back unchanged: every `$` is `$$`.
pub fn escape(s: &str) -> String {
    s.replace('$', "$$")
}

/// A spec of wire versions 1 to 3 made a template: those versions ran
/// `command`, `args` and env values literally, so every one is escaped and
/// runs as before.
pub fn escape_literals(spec: &mut super::PodSpec) {
    for c in spec.init_containers.iter_mut().chain(&mut spec.containers) {
        for s in c.command.iter_mut().chain(&mut c.args) {
            *s = escape(s);
        }
        for e in &mut c.env {
            e.value = escape(&e.value);
        }
    }
}

/// The addresses env status fields (`EnvVar::field`) read, known on the
/// device at container start: the pod's and the node's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Addresses<'a> {
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
}

impl Addresses<'_> {
    /// The value of a status field. One address each: the lists
    /// (`status.podIPs`, `status.hostIPs`, comma-separated) have one item.
    pub fn value(&self, field: StatusField) -> &str {
        match field {
            StatusField::PodIp | StatusField::PodIps => self.pod_ip,
            StatusField::HostIp | StatusField::HostIps => self.host_ip,
        }
    }
}

/// The container as its process sees it: env values expanded in order (each
/// with the variables before it; a status field's value is the address, as
/// it is), then `command` and `args` with the whole environment (a name set
/// twice: the later value).
pub fn expand_container(container: &Container, addresses: &Addresses) -> Container {
    let mut out = container.clone();
    let mut seen: HashMap<String, String> = HashMap::with_capacity(container.env.len());
    for var in &mut out.env {
        let value = match var.field.take() {
            Some(field) => addresses.value(field).to_owned(),
            None => expand(&var.value, |name| seen.get(name).map(String::as_str)),
        };
        seen.insert(var.name.clone(), value.clone());
        var.value = value;
    }
    let lookup = |name: &str| seen.get(name).map(String::as_str);
    for arg in out.command.iter_mut().chain(out.args.iter_mut()) {
        *arg = expand(arg, lookup);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EnvVar;

    fn map(input: &str) -> String {
        let vars: HashMap<&str, &str> = [
            ("VAR_A", "A"),
            ("VAR_B", "B"),
            ("VAR_C", "C"),
            ("VAR_REF", "$(VAR_A)"),
            ("VAR_EMPTY", ""),
        ]
        .into_iter()
        .collect();
        expand(input, |name| vars.get(name).copied())
    }

    /// The cases of the Go package's `TestMapReference` and `TestMapping`
    /// that apply to one string.
    #[test]
    fn expands_like_the_kubelet() {
        for (input, want) in [
            ("$(VAR_A)", "A"),
            ("___$(VAR_B)___", "___B___"),
            ("$(VAR_A)-$(VAR_A)", "A-A"),
            ("$(VAR_A)-1", "A-1"),
            ("$(VAR_A)_$(VAR_B)_$(VAR_C)", "A_B_C"),
            ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"),
            ("$$(VAR_A)_$$(VAR_B)", "$(VAR_A)_$(VAR_B)"),
            ("f000-$$VAR_A", "f000-$VAR_A"),
            ("foo\\$(VAR_C)bar", "foo\\Cbar"),
            ("foo\\\\$(VAR_C)bar", "foo\\\\Cbar"),
            ("foo\\\\\\\\$(VAR_A)bar", "foo\\\\\\\\Abar"),
            ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"),
            ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
            ("$(VAR_REF)", "$(VAR_A)"),
            ("$(VAR_EMPTY)", ""),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$(UNKNOWN)_$(VAR_A)", "$(UNKNOWN)_A"),
            ("$()", "$()"),
            ("$(", "$("),
            ("$(VAR_A", "$(VAR_A"),
            ("$", "$"),
            ("$$", "$"),
            ("$$$", "$$"),
            ("$$$$", "$$"),
            ("$$$$$(VAR_A)", "$$A"),
            ("$VAR_A", "$VAR_A"),
            ("${VAR_A}", "${VAR_A}"),
            ("x$", "x$"),
            ("", ""),
            ("plain", "plain"),
            ("é$é$(VAR_A)ü", "é$éAü"),
        ] {
            assert_eq!(map(input), want, "input {input:?}");
        }
    }

    #[test]
    fn escaped_text_expands_to_itself() {
        for s in [
            "",
            "$",
            "$$",
            "$(VAR_A)",
            "a$b$$c$(d)$",
            "é$(ü)",
            "no dollars",
        ] {
            assert_eq!(map(&escape(s)), s, "{s:?}");
        }
    }

    fn container() -> Container {
        Container {
            name: "app".into(),
            image: "busybox".into(),
            image_pull_policy: crate::model::PullPolicy::IfNotPresent,
            command: vec![],
            args: vec![],
            working_dir: None,
            env: vec![],
            volume_mounts: vec![],
            ports: vec![],
            resources: Default::default(),
            liveness_probe: None,
            readiness_probe: None,
            startup_probe: None,
            security_context: None,
            lifecycle: Default::default(),
            termination_message_path: None,
            termination_message_fallback_to_logs: false,
            run_as_non_root: false,
            restart_policy: None,
        }
    }

    fn env(name: &str, value: &str) -> EnvVar {
        EnvVar::new(name, value)
    }

    #[test]
    fn env_sees_earlier_variables_and_command_sees_all() {
        let c = Container {
            env: vec![
                env("HOST", "db"),
                env("URL", "postgres://$(HOST):$(PORT)/x"),
                env("PORT", "5432"),
                env("SECRET", &escape("pa$(HOST)ss")),
                env("HOST", "db2"),
                env("PRICE", "$$5"),
            ],
            command: vec!["echo".into(), "$(URL)".into(), "$(HOST)".into()],
            args: vec!["$(PORT)".into(), "$(MISSING)".into(), "$$(PORT)".into()],
            ..container()
        };
        let e = expand_container(&c, &Default::default());
        let values: Vec<&str> = e.env.iter().map(|v| v.value.as_str()).collect();
        assert_eq!(
            values,
            [
                "db",
                "postgres://db:$(PORT)/x",
                "5432",
                "pa$(HOST)ss",
                "db2",
                "$5"
            ]
        );
        assert_eq!(e.command, ["echo", "postgres://db:$(PORT)/x", "db2"]);
        assert_eq!(e.args, ["5432", "$(MISSING)", "$(PORT)"]);
    }

    /// A status field takes the address as it is (a `$` in it would stay),
    /// and later variables and the command see it like any other.
    #[test]
    fn status_fields_read_the_addresses_given() {
        let field = |name: &str, field: StatusField| EnvVar {
            name: name.into(),
            value: String::new(),
            field: Some(field),
            from_object: false,
        };
        let c = Container {
            env: vec![
                field("POD_IP", StatusField::PodIp),
                field("POD_IPS", StatusField::PodIps),
                field("HOST_IP", StatusField::HostIp),
                field("HOST_IPS", StatusField::HostIps),
                env("URL", "http://$(POD_IP):80"),
            ],
            args: vec!["--bind=$(POD_IP)".into()],
            ..container()
        };
        let addresses = Addresses {
            pod_ip: "10.88.0.7",
            host_ip: "192.168.1.2",
        };
        let e = expand_container(&c, &addresses);
        let values: Vec<(&str, &str, Option<StatusField>)> = e
            .env
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_str(), v.field))
            .collect();
        assert_eq!(
            values,
            [
                ("POD_IP", "10.88.0.7", None),
                ("POD_IPS", "10.88.0.7", None),
                ("HOST_IP", "192.168.1.2", None),
                ("HOST_IPS", "192.168.1.2", None),
                ("URL", "http://10.88.0.7:80", None),
            ]
        );
        assert_eq!(e.args, ["--bind=10.88.0.7"]);
    }
}
