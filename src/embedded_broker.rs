//! The embedded MQTT broker (rumqttd) that lets `kedge agent` run with no
//! broker configured: the README's first command and single-device setups.

/// Starts the broker on `listen` and returns the URL to connect to, or
/// None when this build has no embedded broker (the agent runs offline).
#[cfg(feature = "embedded-broker")]
pub fn start(listen: &str) -> anyhow::Result<Option<String>> {
    use anyhow::Context;
    let addr: std::net::SocketAddr = listen.parse().with_context(|| {
        format!("invalid value {listen:?} for embedded_broker.listen: expected host:port")
    })?;
    let url = format!("mqtt://{addr}");
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => drop(probe),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::info!(%addr, "a broker already listens there; using it instead of the embedded one");
            return Ok(Some(url));
        }
        Err(e) => {
            return Err(e).with_context(|| format!("embedded broker cannot listen on {addr}"));
        }
    }
    let (router, server) = broker_config(addr);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the embedded broker's runtime")?;
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            // The router (its own thread) and one MQTT 3.1.1 listener:
            // what `rumqttd::Broker::start` does for this configuration,
            // without its MQTT 5, bridge, metrics, Prometheus and console
            // servers, which that function reaches whatever the
            // configuration (about 280 kB of device binary).
            let router_tx = rumqttd::Router::new(0, router).spawn();
            let mut server = rumqttd::Server::new(server, router_tx, rumqttd::protocol::v4::V4);
            if let Err(e) = runtime.block_on(server.start(rumqttd::LinkType::Remote)) {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .context("cannot start the embedded broker thread")?;
    // Wait (briefly) until it accepts connections, so the agent's first
    // connection attempt does not fail and back off.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::info!(%url, "embedded MQTT broker started");
    Ok(Some(url))
}

/// The broker's settings: its router's, and one MQTT 3.1.1 listener on
/// `addr` with 16 MiB payloads (the agent's own limit). Built as values
/// rather than parsed from TOML: rumqttd's configuration parser would bring
/// its deserialisers into device builds (tens of kB).
#[cfg(feature = "embedded-broker")]
fn broker_config(addr: std::net::SocketAddr) -> (rumqttd::RouterConfig, rumqttd::ServerSettings) {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 16 * 1024 * 1024,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "v4-1".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let router = rumqttd::RouterConfig {
        max_connections: 1000,
        max_outgoing_packet_count: 200,
        max_segment_size: 100 * 1024 * 1024,
        max_segment_count: 10,
        ..Default::default()
    };
    (router, server)
}

#[cfg(not(feature = "embedded-broker"))]
pub fn start(_listen: &str) -> anyhow::Result<Option<String>> {
    Ok(None)
}
