//! `kedge`: parse the command line, set up logging, run one command.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use kedge::cli::{self, Command, ConfigCommand, GlobalArgs, WireCommand};
use kedge::config::{self, Config};

/// The whole command line. The operator commands and the agent are
/// `cli::Command`; the bridge's flags are its own: `cli` and `bridge` do not
/// know each other, and this is the one place that joins them.
#[derive(Parser, Debug)]
#[command(
    name = "kedge",
    version,
    about = "Kubernetes pods on edge devices, over MQTT"
)]
struct Kedge {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    #[command(flatten)]
    Cli(Command),
    /// Make every device a Kubernetes Node (the Virtual Kubelet pattern).
    #[cfg(feature = "bridge")]
    Bridge(kedge::bridge::BridgeArgs),
    /// Open the devices' sealed data batches and store them in PostgreSQL.
    #[cfg(feature = "sink")]
    Sink(kedge::sink::SinkArgs),
}

/// The parser: `Kedge`'s, with the bridge's and the sink's flags also read
/// from `KEDGE_BRIDGE_*` and `KEDGE_SINK_*` variables (config::flags_from_env).
fn command() -> clap::Command {
    let cmd = Kedge::command();
    #[cfg(feature = "bridge")]
    let cmd = cmd.mut_subcommand("bridge", |c| config::flags_from_env(c, "KEDGE_BRIDGE"));
    #[cfg(feature = "sink")]
    let cmd = cmd.mut_subcommand("sink", |c| config::flags_from_env(c, "KEDGE_SINK"));
    cmd
}

/// The command line. For `kedge bridge` the configuration file's
/// `[bridge]` table gives its flags' defaults first (config::role_defaults:
/// file → KEDGE_BRIDGE_* → flags), so the file named by `--config` is
/// found with a lenient first pass.
fn parse() -> Result<Kedge, config::ConfigError> {
    #[allow(unused_mut)]
    let mut cmd = command();
    #[cfg(feature = "bridge")]
    {
        let pre = command().ignore_errors(true).get_matches();
        if let Some(sub) = pre.subcommand_matches("bridge") {
            let file = sub
                .get_one::<std::path::PathBuf>("config")
                .or_else(|| pre.get_one::<std::path::PathBuf>("config"))
                .cloned();
            let bridge = cmd.find_subcommand("bridge").expect("bridge").clone();
            let bridge = config::role_defaults(bridge, file.as_deref(), "bridge")?;
            cmd = cmd.mut_subcommand("bridge", |_| bridge);
        }
    }
    Ok(Kedge::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit()))
}

/// Every key and flag, as docs/config.md lists them: the agent's keys, then
/// the flags of the roles built in.
fn keys_and_flags_markdown() -> String {
    #[allow(unused_mut)]
    let mut out = config::keys_markdown();
    let cmd = command();
    for role in ["bridge", "sink"] {
        if let Some(c) = cmd.find_subcommand(role) {
            out.push_str(&config::flags_markdown(c));
        }
    }
    out
}

/// EX_USAGE: a bad configuration value.
const EXIT_CONFIG: u8 = 64;

/// The log filter when `KEDGE_LOG` sets none: `log.level` for the
/// long-running roles (agent, bridge, sink); warnings and errors only for a
/// CLI command, whose output is its answer, as kubectl's is.
fn default_filter(config: &Config, daemon: bool) -> String {
    let level = if daemon {
        config.log.level.as_str()
    } else {
        "warn"
    };
    format!("{level},rumqttd=off")
}

fn init_tracing(config: &Config, daemon: bool) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    // `Targets` takes `level,target=level,…` like RUST_LOG without regex
    // support, which keeps the regex engine out of device builds.
    let filter = std::env::var("KEDGE_LOG")
        .ok()
        .unwrap_or_else(|| default_filter(config, daemon));
    let filter: Targets = filter.parse().unwrap_or_else(|e| {
        eprintln!("warning: ignoring log filter {filter:?} ({e}); logging at info");
        Targets::new().with_default(tracing::Level::INFO)
    });
    if let Some(asked) = finer_than_built(&filter, tracing::level_filters::STATIC_MAX_LEVEL) {
        eprintln!(
            "warning: log filter asks for {asked} lines, but this build logs at most {} \
             (finer callsites are compiled out: targets/README.md)",
            tracing::level_filters::STATIC_MAX_LEVEL
        );
    }
    // `log.format` (KEDGE_LOG_FORMAT, --set) from the configuration's layers.
    let format = config.log.format.as_str();
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        tracing_subscriber::registry()
            .with(fmt.json().with_filter(filter))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .init();
    }
}

/// The finest level `filter` asks for when it is finer than `built`, the
/// finest this build has callsites for (`minimal` compiles out debug).
fn finer_than_built(
    filter: &tracing_subscriber::filter::Targets,
    built: tracing::level_filters::LevelFilter,
) -> Option<tracing::level_filters::LevelFilter> {
    let asked = filter
        .iter()
        .map(|(_, level)| level)
        .chain(filter.default_level())
        .max()?;
    (asked > built).then_some(asked)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let extra: Vec<(&str, Option<String>)> = match &cli.command {
        Top::Cli(Command::Agent(a)) => vec![
            ("node_name", a.node.clone()),
            (
                "data_dir",
                a.data_dir.as_ref().map(|p| p.display().to_string()),
            ),
            (
                "manifests_dir",
                a.manifests.as_ref().map(|p| p.display().to_string()),
            ),
            ("node.labels", a.labels.clone()),
        ],
        _ => Vec::new(),
    };
    let config = match cli::load_config(&cli.global, &extra) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let daemon = match &cli.command {
        Top::Cli(command) => matches!(command, Command::Agent(_)),
        #[allow(unreachable_patterns)] // builds without the bridge and the sink
        _ => true,
    };
    init_tracing(&config, daemon);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Without the `bridge` feature this match has one arm.
        #[allow(clippy::infallible_destructuring_match)]
        let command = match cli.command {
            #[cfg(feature = "bridge")]
            Top::Bridge(args) => return kedge::bridge::run(config, args, shutdown_signal()).await,
            #[cfg(feature = "sink")]
            Top::Sink(args) => return kedge::sink::run(config, args, shutdown_signal()).await,
            Top::Cli(command) => command,
        };
        match command {
            Command::Agent(_) => kedge::agent::run(config, shutdown_signal()).await,
            Command::Apply {
                file,
                node,
                namespace,
                fleet,
            } => {
                cli::apply_command(
                    &config,
                    &file,
                    node.as_deref(),
                    namespace.as_deref(),
                    &fleet,
                )
                .await
            }
            Command::Label {
                what: _,
                node,
                labels,
                overwrite,
                list,
            } => cli::label::label_node(&config, &node, &labels, overwrite, list).await,
            Command::Rollout { command } => cli::rollout_command(&config, &command).await,
            Command::Describe {
                what: _,
                name,
                namespace,
            } => cli::describe_command(&config, &name, &namespace).await,
            #[cfg(feature = "manifests")]
            Command::Convert { file } => cli::convert(&file),
            Command::Get {
                what,
                namespace,
                all_namespaces,
                node,
                output,
            } => {
                cli::get(
                    &config,
                    what,
                    &namespace,
                    all_namespaces,
                    node.as_deref(),
                    output,
                )
                .await
            }
            Command::Delete {
                what,
                name,
                namespace,
                node,
            } => cli::delete_any(&config, what, &name, &namespace, node.as_deref()).await,
            Command::Top { what } => cli::top_command(&config, &what).await,
            Command::Logs {
                pod,
                container,
                namespace,
                node,
                tail,
                follow,
                previous,
                timestamps,
            } => {
                cli::logs(
                    &config,
                    &pod,
                    &namespace,
                    container,
                    node.as_deref(),
                    tail,
                    follow,
                    previous,
                    timestamps,
                )
                .await
            }
            Command::Wire {
                command: WireCommand::Decode { file, hex },
            } => cli::wire_decode(file.as_ref(), hex),
            Command::Config {
                command: ConfigCommand::Keys,
            } => {
                print!("{}", keys_and_flags_markdown());
                Ok(())
            }
            Command::Keys {
                command: cli::KeysCommand::Generate { out },
            } => cli::keys_generate(&out),
            Command::Keys {
                command: cli::KeysCommand::Public { file },
            } => cli::keys_public(&file),
            #[cfg(feature = "wasm-compiler")]
            Command::Wasm {
                command:
                    cli::WasmCommand::Compile {
                        target,
                        input,
                        output,
                    },
            } => cli::wasm_compile(target, &input, &output),
        }
    });
    // Wasm tasks may still be parked; do not wait for them on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `kedge get pods | head`: the reader left; that is not a failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/config.md holds what `kedge config keys` prints for the roles
    /// this build has (CI builds them all: default + bridge + sink).
    #[test]
    fn docs_list_every_key_and_flag() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md");
        let doc = std::fs::read_to_string(path).expect("docs/config.md");
        let cmd = command();
        let roles = ["bridge", "sink"]
            .into_iter()
            .filter_map(|r| cmd.find_subcommand(r))
            .map(config::flags_markdown);
        for table in std::iter::once(config::keys_markdown()).chain(roles) {
            assert!(
                doc.contains(&table),
                "docs/config.md is stale: regenerate its tables with `kedge config keys` (a build with --features bridge,sink); missing:\n{table}"
            );
        }
    }

    #[test]
    fn role_flags_read_the_environment() {
        command().debug_assert();
        #[cfg(feature = "bridge")]
        {
            let cmd = command();
            let bridge = cmd.find_subcommand("bridge").expect("bridge");
            let listen = bridge
                .get_arguments()
                .find(|a| a.get_long() == Some("kubelet-listen"))
                .expect("--kubelet-listen");
            assert_eq!(
                listen.get_env().and_then(|e| e.to_str()),
                Some("KEDGE_BRIDGE_KUBELET_LISTEN")
            );
        }
    }

    /// `[bridge]` in the configuration file gives the bridge's flags: the
    /// required ones need not be on the command line, and a flag given there
    /// wins over the file.
    #[cfg(feature = "bridge")]
    #[test]
    fn the_bridge_reads_its_flags_from_the_configuration_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[broker]\nurl = \"mqtt://127.0.0.1:1883\"\n\n[bridge]\n\
             advertise-address = \"10.0.0.5\"\ntls_cert_file = \"/etc/kedge/tls.crt\"\n\
             tls-private-key-file = \"/etc/kedge/tls.key\"\nclient-ca-file = \"/etc/kedge/ca.crt\"\n\
             kubelet-listen = \"0.0.0.0:10350\"\nallow-nodes = [\"gw1\", \"gw2\"]\nshards = 4\n",
        )
        .expect("write");
        let cmd = command();
        let bridge = cmd.find_subcommand("bridge").expect("bridge").clone();
        let bridge =
            config::role_defaults(bridge, Some(&file), "bridge").expect("the [bridge] table");
        let cmd = cmd.mut_subcommand("bridge", |_| bridge);
        let m = cmd
            .clone()
            .try_get_matches_from(["kedge", "bridge", "--shards", "2"])
            .expect("the file gives the required flags");
        let Top::Bridge(args) = Kedge::from_arg_matches(&m).expect("parses").command else {
            panic!("not the bridge");
        };
        assert_eq!(args.advertise_address, "10.0.0.5");
        assert_eq!(args.kubelet_listen.port(), 10350);
        assert_eq!(args.allow_nodes, ["gw1", "gw2"]);
        assert_eq!(args.shards, 2, "the flag wins over the file");
        // The agent's loader leaves the table to the bridge.
        config::load(Some(&file), std::iter::empty(), &[]).expect("the agent's keys load");
        // An unknown key is an error naming it.
        std::fs::write(&file, "[bridge]\nkubelet-lisen = \"x\"\n").expect("write");
        let bridge = command().find_subcommand("bridge").expect("bridge").clone();
        let e = config::role_defaults(bridge, Some(&file), "bridge").expect_err("unknown");
        assert!(e.to_string().contains("bridge.kubelet-lisen"), "{e}");
    }

    /// A CLI command logs warnings only; the long-running roles log at
    /// `log.level`.
    #[test]
    fn cli_commands_log_warnings_and_daemons_their_level() {
        let mut config = Config::default();
        config.log.level = "debug".into();
        assert_eq!(default_filter(&config, false), "warn,rumqttd=off");
        assert_eq!(default_filter(&config, true), "debug,rumqttd=off");
    }

    /// A filter finer than what the build has callsites for is named (the
    /// agent warns at start); one within it is not.
    #[test]
    fn a_filter_finer_than_the_build_is_named() {
        use tracing::level_filters::LevelFilter;
        use tracing_subscriber::filter::Targets;
        let parse = |f: &str| f.parse::<Targets>().expect("filter");
        let info = LevelFilter::INFO;
        assert_eq!(finer_than_built(&parse("info"), info), None);
        assert_eq!(finer_than_built(&parse("warn,rumqttd=off"), info), None);
        assert_eq!(
            finer_than_built(&parse("info,kedge=debug"), info),
            Some(LevelFilter::DEBUG)
        );
        assert_eq!(
            finer_than_built(&parse("trace"), LevelFilter::DEBUG),
            Some(LevelFilter::TRACE)
        );
    }
}
