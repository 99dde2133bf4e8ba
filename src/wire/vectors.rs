//! Wire test vectors: one fixed, fully populated sample per message kind,
//! encoded into `tests/vectors/<kind>.hex` (see docs/wire.md).
//!
//! The committed files are the contract: these tests fail if the encoder
//! stops producing them byte for byte, or the decoder stops reading them
//! back into the samples. They only compare. After an intended format change
//! (which is a new `SCHEMA_VERSION`), `scripts/regen-vectors.sh` regenerates
//! the files with `write_vectors_then_fail_on_purpose`, a test that is
//! ignored in every test run and fails after writing: regenerating can never
//! make a test pass. Review `git diff tests/vectors`, then run the checks.
//!
//! The samples use every `Option` as `Some`, non-empty collections and enum
//! variants beyond index 0, so that each encoding rule shows up in the bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;
use crate::model::*;

/// What `write_vectors_then_fail_on_purpose` prints once it has written
/// every file; `scripts/regen-vectors.sh` looks for it.
const WRITTEN: &str = "KEDGE-VECTORS-WRITTEN";
/// Bytes per line in the hex files (whitespace is ignored when reading).
const BYTES_PER_LINE: usize = 32;

/// Envelope `seq` of each sample, as the agent or CLI would set it.
const DESIRED_SEQ: u64 = 3; // the spec's generation
const POD_STATUS_SEQ: u64 = 42; // the node-wide counter
const NODE_STATUS_SEQ: u64 = 1_767_225_600_000; // heartbeat_ms
const EVENT_SEQ: u64 = 43; // the node-wide counter
const LOG_SEQ: u64 = 0; // unused for the log RPC
const INDEX_SEQ: u64 = 0; // unused for the desired index
const FLEET_SEQ: u64 = 0; // unused for fleet deployments and labels
const FLEET_REPORT_SEQ: u64 = 44; // the node-wide counter

fn probe(handler: ProbeHandler) -> Probe {
    Probe {
        handler,
        initial_delay_secs: 5,
        period_secs: 10,
        timeout_secs: 2,
        success_threshold: 1,
        failure_threshold: 3,
    }
}

fn container(name: &str, image: &str) -> Container {
    Container {
        name: name.into(),
        image: image.into(),
        image_pull_policy: PullPolicy::IfNotPresent,
        command: vec!["/bin/sensor".into()],
        args: vec!["--interval".into(), "5s".into()],
        working_dir: Some("/work".into()),
        env: vec![
            EnvVar::from_object("MODE", "edge"),
            EnvVar {
                name: "POD_IP".into(),
                value: String::new(),
                field: Some(StatusField::HostIps),
                from_object: false,
            },
        ],
        volume_mounts: vec![VolumeMount {
            name: "config".into(),
            mount_path: "/etc/sensor".into(),
            read_only: true,
            sub_path: Some("sensor.toml".into()),
            // Version 10's mount propagation.
            propagation: MountPropagation::HostToContainer,
        }],
        ports: vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            host_port: Some(30080),
            protocol: "TCP".into(),
        }],
        resources: Resources {
            cpu_request_millis: Some(100),
            cpu_limit_millis: Some(500),
            memory_request_bytes: Some(16 * 1024 * 1024),
            memory_limit_bytes: Some(64 * 1024 * 1024),
            ephemeral_storage_limit_bytes: Some(1024 * 1024 * 1024),
        },
        liveness_probe: Some(probe(ProbeHandler::HttpGet {
            path: "/healthz".into(),
            port: 8080,
            host: Some("127.0.0.1".into()),
            https: true,
            headers: vec![("X-Probe".into(), "kedge".into())],
        })),
        readiness_probe: Some(probe(ProbeHandler::TcpSocket {
            port: 8080,
            host: Some("localhost".into()),
        })),
        startup_probe: Some(probe(ProbeHandler::Exec {
            command: vec!["/bin/check".into(), "--startup".into()],
        })),
        security_context: Some(SecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(4_294_967_295),
            read_only_root_filesystem: true,
            privileged: false,
            allow_privilege_escalation: Some(false),
            capabilities_add: vec!["NET_BIND_SERVICE".into()],
            capabilities_drop: vec!["ALL".into()],
            seccomp_profile: Some(SecurityProfile::Localhost("profiles/sensor.json".into())),
            app_armor_profile: Some(SecurityProfile::Unconfined),
            // Version 11's SELinux label.
            se_linux_options: Some(SeLinuxOptions {
                user: "system_u".into(),
                role: "system_r".into(),
                r#type: "container_t".into(),
                level: "s0:c1,c2".into(),
            }),
        }),
        lifecycle: Lifecycle {
            post_start: Some(Hook::Run(ProbeHandler::Exec {
                command: vec!["/bin/warm-up".into()],
            })),
            pre_stop: Some(Hook::Sleep { seconds: 5 }),
        },
        termination_message_path: Some("/tmp/last-words".into()),
        termination_message_fallback_to_logs: true,
        run_as_non_root: true,
        restart_policy: None,
    }
}

pub(super) fn desired_pod() -> PodSpec {
    let mut labels = BTreeMap::new();
    // Inserted out of order: the encoding is in key order.
    labels.insert("tier".to_string(), "edge".to_string());
    labels.insert("app".to_string(), "sensor".to_string());
    PodSpec {
        namespace: "factory".into(),
        name: "sensor".into(),
        uid: "7f1c2a9e-0b4d-4e8a-9c3f-5d6e7f801234".into(),
        generation: DESIRED_SEQ,
        labels,
        runtime: RuntimeKind::Wasm,
        restart_policy: RestartPolicy::OnFailure,
        termination_grace_period_secs: 30,
        host_network: true,
        init_containers: vec![{
            let mut init = container(
                "init",
                "file:///opt/kedge/init.wasm@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            );
            // Version 10's native sidecar.
            init.restart_policy = Some(RestartPolicy::Always);
            init
        }],
        containers: vec![{
            let mut main = container(
                "main",
                "https://example.com/sensor.wasm@sha256:1111111111111111111111111111111111111111111111111111111111111111",
            );
            // Version 9's probe handler, the one container that has it.
            main.readiness_probe = Some(probe(ProbeHandler::Grpc {
                port: 9000,
                service: "sensor".into(),
            }));
            main
        }],
        volumes: vec![
            Volume {
                name: "scratch".into(),
                source: VolumeSource::EmptyDir {
                    memory: true,
                    size_limit_bytes: Some(1024 * 1024),
                },
            },
            Volume {
                name: "dev".into(),
                source: VolumeSource::HostPath {
                    path: "/dev/ttyUSB0".into(),
                    kind: HostPathType::CharDevice,
                },
            },
            Volume {
                name: "config".into(),
                source: VolumeSource::Files {
                    files: vec![("sensor.toml".into(), b"rate = 5\n".to_vec())],
                    default_mode: 0o644,
                },
            },
            // Version 10's persistent volume claim.
            Volume {
                name: "history".into(),
                source: VolumeSource::Claim {
                    claim: "sensor-history".into(),
                    read_only: true,
                },
            },
        ],
        image_pull_secrets: vec!["{\"auths\":{}}".into()],
        security: PodSecurity {
            host_pid: true,
            host_ipc: true,
            share_process_namespace: true,
            fs_group: Some(2000),
            supplemental_groups: vec![3000, 2_147_483_647],
            // Version 11's SELinux label of the sandbox.
            se_linux_options: Some(SeLinuxOptions {
                user: String::new(),
                role: String::new(),
                r#type: "spc_t".into(),
                level: "s0".into(),
            }),
        },
        // Version 10's routes the pod declares.
        routes: vec![PodRoute {
            container: Some("main".into()),
            filter: "readings/#".into(),
            ttl_secs: 7200,
            target: crate::model::RouteTarget::Pod("actuator".into()),
            // Version 12's priority: the default on a route into a pod.
            priority: Priority::LOWEST,
        }],
        // Version 11's DNS policy and configuration.
        dns: PodDns {
            policy: DnsPolicy::None,
            nameservers: vec!["192.0.2.53".into(), "2001:db8::53".into()],
            searches: vec!["factory.example".into()],
            options: vec!["ndots:2".into(), "edns0".into()],
        },
    }
}

pub(super) fn pod_status() -> PodStatus {
    PodStatus {
        namespace: "factory".into(),
        name: "sensor".into(),
        uid: "7f1c2a9e-0b4d-4e8a-9c3f-5d6e7f801234".into(),
        observed_generation: DESIRED_SEQ,
        phase: PodPhase::Running,
        conditions: vec![
            PodCondition {
                kind: PodConditionType::Initialized,
                status: true,
                last_transition_ms: 1_767_225_590_000,
                reason: Some("PodCompleted".into()),
                message: Some("init containers done".into()),
            },
            PodCondition {
                kind: PodConditionType::Ready,
                status: false,
                last_transition_ms: 1_767_225_595_000,
                reason: Some("ContainersNotReady".into()),
                message: Some("containers with unready status: [main]".into()),
            },
        ],
        reason: Some("Evicted".into()),
        message: Some("sample message".into()),
        start_time_ms: Some(1_767_225_589_000),
        host_ip: Some("192.168.1.20".into()),
        pod_ip: Some("10.42.0.7".into()),
        init_container_statuses: vec![ContainerStatus {
            name: "init".into(),
            image: "file:///opt/kedge/init.wasm".into(),
            image_id: "sha256:0000".into(),
            container_id: "wasm://init-1".into(),
            ready: true,
            started: false,
            restart_count: 0,
            state: ContainerState::Terminated {
                exit_code: 0,
                reason: "Completed".into(),
                message: Some("done".into()),
                started_at_ms: 1_767_225_589_500,
                finished_at_ms: 1_767_225_590_000,
            },
            last_state: None,
        }],
        container_statuses: vec![ContainerStatus {
            name: "main".into(),
            image: "https://example.com/sensor.wasm".into(),
            image_id: "sha256:1111".into(),
            container_id: "wasm://main-2".into(),
            ready: false,
            started: true,
            restart_count: 2,
            state: ContainerState::Running {
                started_at_ms: 1_767_225_594_000,
            },
            last_state: Some(ContainerState::Terminated {
                exit_code: -1,
                reason: "Error".into(),
                message: Some("trap: unreachable".into()),
                started_at_ms: 1_767_225_591_000,
                finished_at_ms: 1_767_225_593_000,
            }),
        }],
    }
}

pub(super) fn node_status() -> NodeStatus {
    let now = NODE_STATUS_SEQ;
    NodeStatus {
        name: "gw1".into(),
        online: true,
        heartbeat_ms: now,
        info: NodeInfo {
            architecture: "arm64".into(),
            operating_system: "linux".into(),
            kernel_version: "6.6.31".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            hostname: "gw1.local".into(),
            agent_version: "0.1.0".into(),
            container_runtime_version: "wasmtime://48.0.0".into(),
            machine_id: "4c4c4544004b3110804bc4c04f4e3732".into(),
            boot_id: "1f0e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            system_uuid: "4c4c4544-004b-3110-804b-c4c04f4e3732".into(),
        },
        capacity: NodeResources {
            cpu_millis: 4000,
            memory_bytes: 4 * 1024 * 1024 * 1024,
            pods: 32,
            ephemeral_storage_bytes: 32 * 1024 * 1024 * 1024,
        },
        allocatable: NodeResources {
            cpu_millis: 3500,
            memory_bytes: 3 * 1024 * 1024 * 1024,
            pods: 32,
            ephemeral_storage_bytes: 30 * 1024 * 1024 * 1024,
        },
        conditions: vec![
            NodeCondition {
                kind: NodeConditionType::Ready,
                status: true,
                reason: "KedgeReady".into(),
                message: "kedge agent is posting ready status".into(),
                last_transition_ms: now - 60_000,
                last_heartbeat_ms: now,
            },
            NodeCondition {
                kind: NodeConditionType::DiskPressure,
                status: true,
                reason: "KedgeHasDiskPressure".into(),
                message: "less than 10% of the disk is free".into(),
                last_transition_ms: now - 30_000,
                last_heartbeat_ms: now,
            },
        ],
        addresses: vec![
            NodeAddress {
                kind: "InternalIP".into(),
                address: "192.168.1.20".into(),
            },
            NodeAddress {
                kind: "Hostname".into(),
                address: "gw1.local".into(),
            },
        ],
        pod_count: 3,
        labels: BTreeMap::from([
            ("building".to_string(), "b43".to_string()),
            ("kedge.io/tier".to_string(), "canary".to_string()),
        ]),
        sealing_key: Some([0x5a; 32]),
        data: Some(Box::new(DataPathStatus {
            received: 10_250,
            unrouted: 3,
            refused_connections: 1,
            queued: 240,
            queued_bytes: 31_000,
            budget_bytes: 64 << 20,
            sent: 10_000,
            sent_bytes: 1_290_000,
            batches: 12,
            link_bytes: 1_310_512,
            dropped_ttl: 5,
            dropped_budget: 2,
            routes: vec![
                RouteStatus {
                    route: "FROM default/sensor sensors/# INTO $upstream TTL 2h".into(),
                    pod: None,
                    received: 10_000,
                    queued: 200,
                    queued_bytes: 26_000,
                    sent: 9_800,
                    sent_bytes: 1_260_000,
                    dropped_ttl: 0,
                    dropped_budget: 0,
                    priority: Priority::LOWEST,
                },
                RouteStatus {
                    route: "FROM default/meter/main readings/# INTO $upstream TTL 10m".into(),
                    pod: Some("default/meter".into()),
                    received: 247,
                    queued: 40,
                    queued_bytes: 5_000,
                    sent: 200,
                    sent_bytes: 30_000,
                    dropped_ttl: 5,
                    dropped_budget: 2,
                    // Version 12's priority.
                    priority: Priority(1),
                },
            ],
        })),
    }
}

/// Not a real sealing (HPKE is randomised): fixed bytes, so the vector
/// pins the layout. `seal`'s tests seal and open for real.
pub(super) fn sealed_pod() -> SealedPod {
    SealedPod {
        uid: "3f1b2c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d".into(),
        labels: BTreeMap::from([("kedge.io/bridge".to_string(), "true".to_string())]),
        key_id: [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
        encapped_key: [0xe5; 32],
        ciphertext: (0u8..=200).collect(),
    }
}

pub(super) fn event() -> Event {
    Event {
        namespace: Some("factory".into()),
        pod: Some("sensor".into()),
        container: Some("main".into()),
        kind: EventType::Warning,
        reason: "BackOff".into(),
        message: "Back-off restarting failed container main".into(),
        timestamp_ms: 1_767_225_593_500,
    }
}

pub(super) fn log_request() -> LogRequest {
    LogRequest {
        request_id: "5f0e8d2c4b1a49e7a3c6d9b8e7f60123".into(),
        namespace: "factory".into(),
        pod: "sensor".into(),
        container: Some("main".into()),
        tail_lines: Some(100),
        follow: true,
        previous: true,
        timestamps: true,
        since_seconds: Some(3600),
        limit_bytes: Some(65536),
    }
}

pub(super) fn log_chunk() -> LogChunk {
    LogChunk {
        request_id: "5f0e8d2c4b1a49e7a3c6d9b8e7f60123".into(),
        data: b"2026-01-01T00:00:00.123456789Z reading 21.5\n".to_vec(),
        eof: true,
        error: Some("sample error text".into()),
    }
}

pub(super) fn desired_index() -> DesiredIndex {
    DesiredIndex {
        pods: vec![
            IndexEntry {
                namespace: "default".into(),
                name: "sensor".into(),
                uid: "0b5e6a52-4c1d-4e8a-9f3b-6d2c1a7e9f10".into(),
                generation: 3,
            },
            IndexEntry {
                namespace: "edge".into(),
                name: "relay".into(),
                uid: "7c1f2e3d-5b6a-4978-8e9d-0a1b2c3d4e5f".into(),
                generation: 300,
            },
        ],
    }
}

pub(super) fn fleet_deployment() -> FleetDeployment {
    FleetDeployment {
        namespace: "factory".into(),
        name: "sensors".into(),
        uid: "3e0f7a9c-1b2d-4c5e-8f60-718293a4b5c6".into(),
        selector: "building=b43,tier in (a,b),!beta".into(),
        priority: -5,
        pod_name: "sensor".into(),
        revision: 7,
        spec_digest: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        cohorts: vec![
            Cohort {
                selector: "kedge.io/tier=canary".into(),
                per_10k: 10_000,
            },
            Cohort {
                selector: String::new(),
                per_10k: 2_500,
            },
        ],
        stable: Some(Revision {
            revision: 6,
            spec_digest: "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752".into(),
        }),
        rollout: Rollout {
            policy: RolloutPolicy {
                batches: vec![
                    Batch {
                        selector: "kedge.io/tier=canary".into(),
                        limit: Limit::Count(5),
                    },
                    Batch {
                        selector: String::new(),
                        limit: Limit::Percent(25),
                    },
                ],
                success_threshold_pct: 90,
                device_timeout_secs: 300,
                min_ready_secs: 15,
                max_unavailable: Limit::Percent(10),
                auto_rollback: true,
            },
            state: RolloutState {
                phase: RolloutPhase::Paused,
                batch: 1,
                started_ms: 1_767_225_000_000,
                batch_started_ms: 1_767_225_300_000,
                message: "batch 2 of 2: 1,875 of 2,500 devices run revision 7".into(),
            },
        },
    }
}

pub(super) fn fleet_report() -> FleetReport {
    FleetReport {
        fleet_uid: "3e0f7a9c-1b2d-4c5e-8f60-718293a4b5c6".into(),
        desired_revision: 7,
        running_revision: 6,
        state: FleetPodState::Failed,
        groups: 0b11,
        reason: Some("ErrImagePull".into()),
        message: Some("pull access denied for registry.local/sensor:7".into()),
    }
}

pub(super) fn node_labels() -> NodeLabels {
    NodeLabels {
        labels: BTreeMap::from([
            ("building".to_string(), "b43".to_string()),
            ("tier".to_string(), "a".to_string()),
        ]),
    }
}

pub(super) fn stats_request() -> StatsRequest {
    StatsRequest {
        request_id: "0b5f7c2e9a4d4e1f8c3b6a5d2e1f0a9b".into(),
    }
}

pub(super) fn stats_reply() -> StatsReply {
    StatsReply {
        request_id: "0b5f7c2e9a4d4e1f8c3b6a5d2e1f0a9b".into(),
        result: Ok(NodeStats {
            start_time_ms: 1_767_225_000_000,
            usage: Usage {
                timestamp_ms: 1_767_225_612_345,
                cpu_core_ns: 41_250_000_000,
                memory_working_set_bytes: 412_000_000,
            },
            memory_available_bytes: 1_512_000_000,
            pods: vec![PodStats {
                namespace: "factory".into(),
                name: "sensor".into(),
                uid: "8f14e45f-ceea-467f-a3c4-1b2c3d4e5f60".into(),
                start_time_ms: 1_767_225_100_000,
                containers: vec![ContainerStats {
                    name: "reader".into(),
                    start_time_ms: 1_767_225_101_000,
                    usage: Usage {
                        timestamp_ms: 1_767_225_612_000,
                        cpu_core_ns: 1_500_000_000,
                        memory_working_set_bytes: 2_097_152,
                    },
                }],
            }],
        }),
    }
}

pub(super) fn exec_request() -> ExecRequest {
    ExecRequest {
        request_id: "5d1c9e3b7a2f4c6e8b0a1d3f5e7c9b2a".into(),
        namespace: "factory".into(),
        pod: "sensor".into(),
        container: "reader".into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            "cat /etc/hostname; id -u >&2".into(),
        ],
        timeout_secs: 30,
    }
}

pub(super) fn exec_reply() -> ExecReply {
    ExecReply {
        request_id: "5d1c9e3b7a2f4c6e8b0a1d3f5e7c9b2a".into(),
        result: Ok(ExecOutput {
            exit_code: 3,
            stdout: b"sensor\n".to_vec(),
            stderr: b"0\n".to_vec(),
            truncated: false,
        }),
    }
}

const STREAM_ID: &str = "9f86d081884c7d659a2feaa0c55ad015";

pub(super) fn stream_open() -> StreamOpen {
    StreamOpen {
        stream_id: STREAM_ID.into(),
        namespace: "factory".into(),
        pod: "sensor".into(),
        port: 8080,
        window: 256 * 1024,
    }
}

pub(super) fn stream_data() -> StreamData {
    StreamData {
        stream_id: STREAM_ID.into(),
        seq: 300,
        data: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        fin: true,
    }
}

pub(super) fn stream_window() -> StreamWindow {
    StreamWindow {
        stream_id: STREAM_ID.into(),
        credit: 131_072,
    }
}

pub(super) fn stream_close() -> StreamClose {
    StreamClose {
        stream_id: STREAM_ID.into(),
        error: Some("error forwarding port 8080 to pod factory/sensor: connection refused".into()),
    }
}

pub(super) fn stream_exec() -> StreamExec {
    StreamExec {
        stream_id: STREAM_ID.into(),
        namespace: "factory".into(),
        pod: "sensor".into(),
        container: "reader".into(),
        command: vec!["sh".into(), "-c".into(), "cat /etc/hostname".into()],
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
        protocols: vec!["v4.channel.k8s.io".into(), "v3.channel.k8s.io".into()],
        window: 256 * 1024,
    }
}

/// Every vector: file name, envelope seq, sample message.
fn all() -> Vec<(&'static str, u64, Message)> {
    vec![
        (
            "desired_pod.hex",
            DESIRED_SEQ,
            Message::DesiredPod(desired_pod()),
        ),
        (
            "pod_status.hex",
            POD_STATUS_SEQ,
            Message::PodStatus(pod_status()),
        ),
        (
            "node_status.hex",
            NODE_STATUS_SEQ,
            Message::NodeStatus(node_status()),
        ),
        ("event.hex", EVENT_SEQ, Message::Event(event())),
        (
            "log_request.hex",
            LOG_SEQ,
            Message::LogRequest(log_request()),
        ),
        ("log_chunk.hex", LOG_SEQ, Message::LogChunk(log_chunk())),
        (
            "desired_index.hex",
            INDEX_SEQ,
            Message::DesiredIndex(desired_index()),
        ),
        (
            "fleet_deployment.hex",
            FLEET_SEQ,
            Message::FleetDeployment(fleet_deployment()),
        ),
        (
            "fleet_report.hex",
            FLEET_REPORT_SEQ,
            Message::FleetReport(fleet_report()),
        ),
        (
            "node_labels.hex",
            FLEET_SEQ,
            Message::NodeLabels(node_labels()),
        ),
        ("tombstone.hex", TOMBSTONE_SEQ, Message::Tombstone),
        (
            "sealed_pod.hex",
            DESIRED_SEQ,
            Message::SealedPod(sealed_pod()),
        ),
        (
            "stats_request.hex",
            LOG_SEQ,
            Message::StatsRequest(stats_request()),
        ),
        (
            "stats_reply.hex",
            LOG_SEQ,
            Message::StatsReply(stats_reply()),
        ),
        (
            "exec_request.hex",
            LOG_SEQ,
            Message::ExecRequest(exec_request()),
        ),
        ("exec_reply.hex", LOG_SEQ, Message::ExecReply(exec_reply())),
        (
            "stream_open.hex",
            LOG_SEQ,
            Message::StreamOpen(stream_open()),
        ),
        (
            "stream_data.hex",
            LOG_SEQ,
            Message::StreamData(stream_data()),
        ),
        (
            "stream_window.hex",
            LOG_SEQ,
            Message::StreamWindow(stream_window()),
        ),
        (
            "stream_close.hex",
            LOG_SEQ,
            Message::StreamClose(stream_close()),
        ),
        (
            "stream_exec.hex",
            LOG_SEQ,
            Message::StreamExec(stream_exec()),
        ),
    ]
}

const TOMBSTONE_SEQ: u64 = 0; // unused for tombstones
/// The signing key of the signed vectors: the Ed25519 seed 32 × `42`. Its
/// public key is `SIGNED_PUBLIC_KEY` (base64, as `trust.keys` takes it).
const SIGNED_SEED: [u8; 32] = [0x42; 32];
const SIGNED_PUBLIC_KEY: &str = "IVL40Zt5HSRFMkLhXy6rbLfP+ntqXtMAl5YOBpiB2xI=";
/// The signer's clock at signing: the counter.
const SIGNED_COUNTER: u64 = 1_767_225_700_000;
/// The desired spec's signature expires a day later.
const SIGNED_TTL_MS: u64 = 86_400_000;
const SIGNED_TOPIC: &str = "kedge/v1/gw1/desired/factory/sensor";

/// The signed vectors (tests/vectors/signed/): file, topic, seq, message,
/// signature lifetime (0: no expiry).
fn signed() -> Vec<(&'static str, &'static str, u64, Message, u64)> {
    vec![
        (
            "desired_pod.hex",
            SIGNED_TOPIC,
            DESIRED_SEQ,
            Message::DesiredPod(desired_pod()),
            SIGNED_TTL_MS,
        ),
        (
            "tombstone.hex",
            SIGNED_TOPIC,
            TOMBSTONE_SEQ,
            Message::Tombstone,
            0,
        ),
    ]
}

fn sign_sample(topic: &str, seq: u64, message: &Message, ttl_ms: u64) -> Vec<u8> {
    let mut signer = crate::trust::Signer::from_seed(&SIGNED_SEED);
    signer.ttl_ms = ttl_ms;
    let unsigned = encode(seq, message).expect("sample encodes");
    signer
        .sign_envelope(topic, &unsigned, SIGNED_COUNTER)
        .expect("sample signs")
}

/// The signed vectors: the bytes are the committed ones (Ed25519 is
/// deterministic), they decode to the sample, and the signature verifies
/// with the public key on the topic, and on no other.
#[test]
fn signed_vectors() {
    let signer = crate::trust::Signer::from_seed(&SIGNED_SEED);
    assert_eq!(signer.public_key_base64(), SIGNED_PUBLIC_KEY);
    let keys = crate::trust::TrustedKey::parse_list(SIGNED_PUBLIC_KEY).expect("key parses");
    for (file, topic, seq, message, ttl) in signed() {
        let path = vector_path("signed").join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e} (generate it with scripts/regen-vectors.sh)",
                path.display()
            )
        });
        let committed = from_hex_text(&text);
        let encoded = sign_sample(topic, seq, &message, ttl);
        assert!(
            encoded == committed,
            "signed/{file}: encoding changed\n  encoded:   {}\n  committed: {}",
            hex::encode(&encoded),
            hex::encode(&committed)
        );
        let decoded = decode(&committed).expect("decodes");
        assert_eq!((decoded.seq, &decoded.message), (seq, &message), "{file}");
        let opened = open(&committed).expect("opens");
        let sig = opened.signature.clone().expect("signed");
        assert_eq!(sig.counter, SIGNED_COUNTER);
        assert_eq!(
            sig.expires_ms,
            if ttl == 0 { 0 } else { SIGNED_COUNTER + ttl }
        );
        assert_eq!(sig.key_id, signer.key_id());
        let now = SIGNED_COUNTER + 1;
        assert!(
            crate::trust::verify(&keys, now, topic, &opened).is_ok(),
            "{file}"
        );
        assert!(
            crate::trust::verify(&keys, now, "kedge/v1/gw2/desired/factory/sensor", &opened)
                .is_err(),
            "{file}: verifies on another node's topic"
        );
        let json = to_json(&committed).expect("renders");
        assert_eq!(json["signature"]["counter"], SIGNED_COUNTER);
    }
}

fn vector_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("vectors")
        .join(file)
}

fn to_hex_lines(bytes: &[u8]) -> String {
    let mut out = String::new();
    for line in bytes.chunks(BYTES_PER_LINE) {
        out.push_str(&hex::encode(line));
        out.push('\n');
    }
    out
}

fn from_hex_text(text: &str) -> Vec<u8> {
    let digits: String = text.split_whitespace().collect();
    hex::decode(digits).expect("vector file is hex")
}

/// Encodes the sample, compares with the committed file, then decodes the
/// committed bytes back and renders them as JSON.
fn check(file: &str) {
    let (_, seq, message) = all()
        .into_iter()
        .find(|(f, _, _)| *f == file)
        .expect("known vector");
    let encoded = encode(seq, &message).expect("sample encodes");
    let path = vector_path(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (generate it with scripts/regen-vectors.sh)",
            path.display()
        )
    });
    let committed = from_hex_text(&text);

    // (a) The encoder produces the committed bytes exactly.
    assert!(
        encoded == committed,
        "{file}: encoding changed; a change to the wire format needs a new SCHEMA_VERSION \
         (then regenerate with scripts/regen-vectors.sh)\n  encoded:   {}\n  committed: {}",
        hex::encode(&encoded),
        hex::encode(&committed)
    );

    // (b) The committed bytes decode to the sample.
    let decoded = decode(&committed).expect("committed vector decodes");
    assert_eq!(decoded.seq, seq, "{file}: seq");
    assert_eq!(decoded.message, message, "{file}: body");

    // (c) `kedge wire decode` can render it, with the right kind.
    let json = to_json(&committed).expect("committed vector renders as JSON");
    assert_eq!(json["kind"], message.kind().name(), "{file}: JSON kind");
    assert_eq!(json["version"], SCHEMA_VERSION, "{file}: JSON version");
    assert_eq!(json["seq"], seq, "{file}: JSON seq");
}

#[test]
fn vector_desired_pod() {
    check("desired_pod.hex");
}

#[test]
fn vector_pod_status() {
    check("pod_status.hex");
}

#[test]
fn vector_node_status() {
    check("node_status.hex");
}

#[test]
fn vector_event() {
    check("event.hex");
}

#[test]
fn vector_log_request() {
    check("log_request.hex");
}

#[test]
fn vector_log_chunk() {
    check("log_chunk.hex");
}

#[test]
fn vector_desired_index() {
    check("desired_index.hex");
}

#[test]
fn vector_fleet_deployment() {
    check("fleet_deployment.hex");
}

#[test]
fn vector_fleet_report() {
    check("fleet_report.hex");
}

#[test]
fn vector_node_labels() {
    check("node_labels.hex");
}

#[test]
fn vector_stats_request() {
    check("stats_request.hex");
}

#[test]
fn vector_stats_reply() {
    check("stats_reply.hex");
}

#[test]
fn vector_exec_request() {
    check("exec_request.hex");
}

#[test]
fn vector_exec_reply() {
    check("exec_reply.hex");
}

#[test]
fn vector_stream_open() {
    check("stream_open.hex");
}

#[test]
fn vector_stream_data() {
    check("stream_data.hex");
}

#[test]
fn vector_stream_window() {
    check("stream_window.hex");
}

#[test]
fn vector_stream_close() {
    check("stream_close.hex");
}

#[test]
fn vector_stream_exec() {
    check("stream_exec.hex");
}

#[test]
fn vector_tombstone() {
    check("tombstone.hex");
}

/// A sample as an older version carried it: version 1's `NodeStatus` had
/// no labels; versions 1 to 3 had a `PodSpec` without what version 4 added
/// (seccomp and AppArmor profiles, hostPath types), versions 1 to 8 one
/// without what version 9 added (lifecycle hooks, the termination message
/// fields, env status fields: the old samples had no such variable), and
/// versions 1 to 10 one without SELinux labels, `dns`, an ephemeral-storage limit
/// and env values marked as read from objects. The samples'
/// strings hold no `$`, so the upgrade's escaping changes nothing.
fn as_of_version(version: u16, message: Message) -> Message {
    // Versions 1 to 11 had no route priorities: the default.
    let message = match message {
        Message::NodeStatus(mut n) if version < ROUTE_PRIORITY_SINCE_VERSION => {
            if let Some(data) = &mut n.data {
                for r in &mut data.routes {
                    r.priority = Priority::default();
                }
            }
            Message::NodeStatus(n)
        }
        other => other,
    };
    // Versions 1 to 10 had no SELinux labels, no DNS policy, no
    // ephemeral-storage limit and no routes into pods.
    let message = match message {
        Message::DesiredPod(mut spec) if version < SELINUX_DNS_SINCE_VERSION => {
            spec.dns = PodDns::default();
            spec.security.se_linux_options = None;
            // Version 10's routes all went upstream.
            for r in &mut spec.routes {
                r.target = crate::model::RouteTarget::Upstream;
            }
            for c in spec.containers.iter_mut().chain(&mut spec.init_containers) {
                if let Some(sc) = &mut c.security_context {
                    sc.se_linux_options = None;
                }
                c.resources.ephemeral_storage_limit_bytes = None;
                for e in &mut c.env {
                    e.from_object = false;
                }
            }
            Message::DesiredPod(spec)
        }
        other => other,
    };
    // Versions 1 to 9 had no native sidecars, no pod routes and no claims.
    let message = match message {
        Message::DesiredPod(mut spec) if version < SIDECARS_SINCE_VERSION => {
            for c in &mut spec.init_containers {
                c.restart_policy = None;
            }
            for c in spec.containers.iter_mut().chain(&mut spec.init_containers) {
                for m in &mut c.volume_mounts {
                    m.propagation = MountPropagation::Private;
                }
            }
            spec.routes.clear();
            spec.volumes
                .retain(|v| !matches!(v.source, VolumeSource::Claim { .. }));
            Message::DesiredPod(spec)
        }
        other => other,
    };
    // Versions 1 to 10 had no data path counters in the node status.
    let message = match message {
        Message::NodeStatus(mut n) if version < DATA_STATUS_SINCE_VERSION => {
            n.data = None;
            Message::NodeStatus(n)
        }
        other => other,
    };
    match message {
        Message::NodeStatus(mut n) if version < SEALED_SINCE_VERSION => {
            if version == 1 {
                n.labels.clear();
            }
            n.sealing_key = None;
            n.info.machine_id.clear();
            n.info.boot_id.clear();
            n.info.system_uuid.clear();
            Message::NodeStatus(n)
        }
        Message::DesiredPod(mut spec) if version < CONTAINER_FIELDS_SINCE_VERSION => {
            for c in spec.containers.iter_mut().chain(&mut spec.init_containers) {
                c.lifecycle = Lifecycle::default();
                c.termination_message_path = None;
                c.termination_message_fallback_to_logs = false;
                c.env.retain(|e| e.field.is_none());
                c.run_as_non_root = false;
                if let Some(p) = &mut c.readiness_probe
                    && matches!(p.handler, ProbeHandler::Grpc { .. })
                {
                    p.handler = ProbeHandler::TcpSocket {
                        port: 8080,
                        host: Some("localhost".into()),
                    };
                }
            }
            spec.security = PodSecurity::default();
            if version >= POD_FIELDS_SINCE_VERSION {
                return Message::DesiredPod(spec);
            }
            for c in spec.containers.iter_mut().chain(&mut spec.init_containers) {
                assert!(
                    c.env.iter().all(|e| !e.value.contains('$'))
                        && c.command.iter().chain(&c.args).all(|a| !a.contains('$')),
                    "the samples hold no `$`"
                );
                if let Some(sc) = &mut c.security_context {
                    sc.seccomp_profile = None;
                    sc.app_armor_profile = None;
                }
            }
            for v in &mut spec.volumes {
                if let VolumeSource::HostPath { kind, .. } = &mut v.source {
                    *kind = HostPathType::Unset;
                }
            }
            Message::DesiredPod(spec)
        }
        other => other,
    }
}

/// The vectors of an older version (tests/vectors/v{version}, committed
/// before the next one) are still read: every kind that version had decodes
/// to the sample as that version carried it (`as_of_version`), with no
/// signature before version 3; a kind it did not have is unknown in it.
fn older_vectors_are_still_read(version: u16, last_kind: u8) {
    let dir = format!("v{version}");
    for (file, seq, message) in all() {
        let path = vector_path(&dir).join(file);
        let Ok(text) = std::fs::read_to_string(&path) else {
            assert!(
                message.kind() as u8 > last_kind,
                "{dir}/{file}: version {version} had this kind, its vector must stay"
            );
            continue;
        };
        let bytes = from_hex_text(&text);
        assert_eq!(
            bytes[0] as u16, version,
            "{dir}/{file}: the envelope's version"
        );
        let decoded = decode(&bytes).unwrap_or_else(|e| panic!("{dir}/{file}: {e}"));
        assert_eq!(decoded.version, version);
        assert_eq!(
            (decoded.seq, decoded.message),
            (seq, as_of_version(version, message)),
            "{dir}/{file}"
        );
        assert_eq!(to_json(&bytes).expect("renders")["version"], version);
        if version < SIGNED_SINCE_VERSION {
            // These envelopes carry no signature that counts.
            assert_eq!(open(&bytes).expect("opens").signature, None);
        }
    }
    // An envelope of a kind this version did not have is unknown.
    if let Some(unknown) = all()
        .into_iter()
        .map(|(_, seq, message)| (seq, message))
        .find(|(_, m)| m.kind() as u8 == last_kind + 1)
    {
        let mut bytes = encode(unknown.0, &unknown.1).expect("encodes");
        bytes[0] = version as u8;
        assert_eq!(decode(&bytes), Err(WireError::UnknownKind(last_kind + 1)));
    }
}

/// Version 1 had kinds 1–7 and no node labels.
#[test]
fn version_1_vectors_are_still_read() {
    older_vectors_are_still_read(1, 7);
}

/// Version 2 had kinds 1–10 and version 1's `PodSpec`.
#[test]
fn version_2_vectors_are_still_read() {
    older_vectors_are_still_read(2, 10);
}

/// Version 3 had kinds 1–11, signatures and version 1's `PodSpec`; its
/// signed vectors still decode, and still verify on their topic (a signature
/// covers the version it was made for).
#[test]
fn version_3_vectors_are_still_read() {
    older_vectors_are_still_read(3, 11);
    let keys = crate::trust::TrustedKey::parse_list(SIGNED_PUBLIC_KEY).expect("key parses");
    for (file, topic, seq, message, _) in signed() {
        let path = vector_path("v3/signed").join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let bytes = from_hex_text(&text);
        let decoded = decode(&bytes).unwrap_or_else(|e| panic!("v3/signed/{file}: {e}"));
        assert_eq!(decoded.version, 3);
        assert_eq!(
            (decoded.seq, decoded.message),
            (seq, as_of_version(3, message)),
            "v3/signed/{file}"
        );
        let opened = open(&bytes).expect("opens");
        let now = SIGNED_COUNTER + 1;
        assert!(
            crate::trust::verify(&keys, now, topic, &opened).is_ok(),
            "v3/signed/{file}"
        );
    }
}

/// The signed vectors of `version` (tests/vectors/v{version}/signed) still
/// decode to the samples as that version carried them and verify on their
/// topic.
fn signed_vectors_still_verify(version: u16) {
    let keys = crate::trust::TrustedKey::parse_list(SIGNED_PUBLIC_KEY).expect("key parses");
    let dir = format!("v{version}/signed");
    for (file, topic, seq, message, _) in signed() {
        let path = vector_path(&dir).join(file);
        let bytes = from_hex_text(&std::fs::read_to_string(&path).expect("signed vector"));
        let decoded = decode(&bytes).unwrap_or_else(|e| panic!("{dir}/{file}: {e}"));
        assert_eq!(decoded.version, version);
        assert_eq!(
            (decoded.seq, decoded.message),
            (seq, as_of_version(version, message)),
            "{dir}/{file}"
        );
        let opened = open(&bytes).expect("opens");
        assert!(
            crate::trust::verify(&keys, SIGNED_COUNTER + 1, topic, &opened).is_ok(),
            "{dir}/{file}"
        );
    }
}

/// Version 4 had kinds 1–11, signatures, and no sealing key or machine
/// identity in `NodeStatus`; its signed vectors still verify.
#[test]
fn version_4_vectors_are_still_read() {
    older_vectors_are_still_read(4, 11);
    signed_vectors_still_verify(4);
}

/// Version 5 had kinds 1–12 and every body as today's; its signed vectors
/// still verify.
#[test]
fn version_5_vectors_are_still_read() {
    older_vectors_are_still_read(5, 12);
    signed_vectors_still_verify(5);
}

/// Version 6 had kinds 1–14 and every body as today's; its signed vectors
/// still verify.
#[test]
fn version_6_vectors_are_still_read() {
    older_vectors_are_still_read(6, 14);
    signed_vectors_still_verify(6);
}

/// Version 7 had kinds 1–16 and every body as today's; its signed vectors
/// still verify.
#[test]
fn version_7_vectors_are_still_read() {
    older_vectors_are_still_read(7, 16);
    signed_vectors_still_verify(7);
}

/// Version 8 had kinds 1–20 and version 4's `PodSpec`; its signed vectors
/// still verify.
#[test]
fn version_8_vectors_are_still_read() {
    older_vectors_are_still_read(8, 20);
    signed_vectors_still_verify(8);
}

/// Version 9 had kinds 1–21 and a `Container` without `restart_policy`
/// (no native sidecars); its signed vectors still verify.
#[test]
fn version_9_vectors_are_still_read() {
    older_vectors_are_still_read(9, 21);
    signed_vectors_still_verify(9);
}

/// Version 10 had kinds 1–21, a `NodeStatus` without `data` (the data
/// path's counters) and a `PodSpec` without SELinux labels and `dns`; its
/// signed vectors still verify.
#[test]
fn version_10_vectors_are_still_read() {
    older_vectors_are_still_read(10, 21);
    signed_vectors_still_verify(10);
}

/// Version 11 had kinds 1–21 and routes without a priority (read as the
/// default, the lowest); its signed vectors still verify.
#[test]
fn version_11_vectors_are_still_read() {
    older_vectors_are_still_read(11, 21);
    signed_vectors_still_verify(11);
}

/// Versions 1 to 3 ran `command`, `args` and env values literally; version
/// 4 expands them, so an older spec is read with them escaped and runs as
/// before.
#[test]
fn older_specs_keep_their_literal_dollars() {
    let mut old = desired_pod();
    old.containers[0].command = vec!["echo".into(), "$(MODE)".into(), "$$".into()];
    old.containers[0].env[0].value = "a$(B)".into();
    let v3 = v3::PodSpec {
        namespace: old.namespace.clone(),
        name: old.name.clone(),
        uid: old.uid.clone(),
        generation: old.generation,
        labels: old.labels.clone(),
        runtime: old.runtime,
        restart_policy: old.restart_policy,
        termination_grace_period_secs: old.termination_grace_period_secs,
        host_network: old.host_network,
        init_containers: vec![],
        containers: vec![v3::Container {
            name: "main".into(),
            image: old.containers[0].image.clone(),
            image_pull_policy: PullPolicy::IfNotPresent,
            command: old.containers[0].command.clone(),
            args: vec![],
            working_dir: None,
            env: vec![v3::EnvVar {
                name: "MODE".into(),
                value: old.containers[0].env[0].value.clone(),
            }],
            volume_mounts: vec![],
            ports: vec![],
            resources: Default::default(),
            liveness_probe: None,
            readiness_probe: None,
            startup_probe: None,
            security_context: None,
        }],
        volumes: vec![],
        image_pull_secrets: vec![],
    };
    // An envelope of each older version around that version's body.
    let body = postcard::to_stdvec(&v3).expect("v3 body");
    for version in 1..POD_FIELDS_SINCE_VERSION {
        let mut bytes = vec![version as u8, Kind::DesiredPod as u8, 3, 0];
        varint(&mut bytes, body.len() as u64);
        bytes.extend_from_slice(&body);
        let (_, spec) = decode_as::<PodSpec>(&bytes)
            .unwrap_or_else(|e| panic!("version {version} decodes: {e}"));
        let running =
            crate::model::expansion::expand_container(&spec.containers[0], &Default::default());
        assert_eq!(
            running.command,
            ["echo", "$(MODE)", "$$"],
            "version {version}"
        );
        assert_eq!(running.env[0].value, "a$(B)", "version {version}");
    }
}

/// One vector per kind, and no vector files that no test checks.
#[test]
fn vectors_cover_every_kind() {
    let mut kinds: Vec<u8> = all().iter().map(|(_, _, m)| m.kind() as u8).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, (1..=21).collect::<Vec<u8>>());
    for k in 0..=u8::MAX {
        assert_eq!(Kind::from_u8(k).is_ok(), kinds.contains(&k), "kind {k}");
    }
    let dir = vector_path("");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/vectors exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".hex"))
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = all().iter().map(|(f, _, _)| f.to_string()).collect();
    expected.sort();
    assert_eq!(on_disk, expected);
}

/// Writes every vector file from its sample, then fails: run by
/// `scripts/regen-vectors.sh` after an intended format change, never part
/// of a test run (ignored), and never a pass, so a run that regenerates
/// the expectations cannot also claim to have checked them.
#[test]
#[ignore = "writes tests/vectors and fails on purpose: scripts/regen-vectors.sh runs it"]
fn write_vectors_then_fail_on_purpose() {
    let files = all();
    for (file, seq, message) in &files {
        let encoded = encode(*seq, message).expect("sample encodes");
        let path = vector_path(file);
        std::fs::write(&path, to_hex_lines(&encoded))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!("wrote {}", path.display());
    }
    let dir = vector_path("signed");
    std::fs::create_dir_all(&dir).expect("creates tests/vectors/signed");
    for (file, topic, seq, message, ttl) in signed() {
        let path = dir.join(file);
        std::fs::write(&path, to_hex_lines(&sign_sample(topic, seq, &message, ttl)))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!("wrote {}", path.display());
    }
    panic!(
        "{WRITTEN}: {} vector files written; this test always fails. Review git diff tests/vectors, \
         then run the checks: cargo test --lib wire",
        files.len()
    );
}

/// The envelope header as docs/wire.md describes it, checked on the event
/// sample (whose bytes `vector_event` pins): version, kind, seq varint,
/// empty signature, body length, body.
#[test]
fn envelope_layout_matches_the_spec() {
    let bytes = encode(EVENT_SEQ, &Message::Event(event())).expect("sample encodes");
    assert_eq!(bytes[0], 0x0c, "version 12 as a one-byte varint");
    assert_eq!(bytes[1], Kind::Event as u8, "kind as one raw byte");
    assert_eq!(bytes[2], EVENT_SEQ as u8, "seq 43 as a one-byte varint");
    assert_eq!(bytes[3], 0x00, "empty signature: length 0");
    let body = postcard::to_stdvec(&event()).expect("body encodes");
    assert!(body.len() < 128, "one-byte body length in this sample");
    assert_eq!(bytes[4] as usize, body.len(), "body length");
    assert_eq!(&bytes[5..], &body[..], "body bytes follow");
    assert_eq!(bytes.len(), 5 + body.len(), "nothing after the body");
}
