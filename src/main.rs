//! `kedge`: parse the command line, set up logging, run one command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
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

/// EX_USAGE: a bad configuration value.
const EXIT_CONFIG: u8 = 64;

fn init_tracing(config: &Config) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    // `Targets` takes `level,target=level,…` like RUST_LOG without regex
    // support, which keeps the regex engine out of device builds.
    let filter = std::env::var("KEDGE_LOG")
        .ok()
        .unwrap_or_else(|| format!("{},rumqttd=off", config.log.level));
    let filter: Targets = filter.parse().unwrap_or_else(|e| {
        eprintln!("warning: ignoring log filter {filter:?} ({e}); logging at info");
        Targets::new().with_default(tracing::Level::INFO)
    });
    let format = std::env::var("KEDGE_LOG_FORMAT").unwrap_or_else(|_| config.log.format.clone());
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
    let cli = Kedge::parse();
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
    init_tracing(&config);
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
            Command::Rollout { command } => cli::fleet::rollout(&config, &command).await,
            Command::Describe {
                what: _,
                name,
                namespace,
            } => cli::fleet::describe(&config, &name, &namespace).await,
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
                print!("{}", config::keys_markdown());
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
