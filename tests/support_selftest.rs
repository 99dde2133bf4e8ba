//! Proves the shared test helpers in `tests/support` work against real parts:
//! a real Mosquitto (plain and TLS), the mosquitto CLIs, and the wasm guests.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn binary_payload_round_trips_through_real_broker() {
    let broker = Mosquitto::start();
    assert!(broker.url().starts_with("mqtt://127.0.0.1:"));
    let sub = Subscriber::start(&broker.url(), "t/#", None);

    let payload: Vec<u8> = (0..=255u8).collect();
    publish_raw(&broker.url(), "t/bin", &payload, false);
    let (topic, got) = sub.wait_for("binary payload on t/bin", WAIT, |t, _| t == "t/bin");
    assert_eq!(topic, "t/bin");
    assert_eq!(got, payload);

    // Topics with spaces and empty payloads survive the "%t %x" format too.
    publish_raw(&broker.url(), "t/with space", b"", false);
    let (_, got) = sub.wait_for("empty payload", WAIT, |t, _| t == "t/with space");
    assert!(got.is_empty());

    // Only the test's own messages are recorded (the readiness probe is filtered out).
    let topics: Vec<String> = sub.messages().into_iter().map(|(t, _)| t).collect();
    assert_eq!(topics, ["t/bin", "t/with space"]);
    assert!(
        broker.log().contains("mosquitto version"),
        "log: {}",
        broker.log()
    );
}

#[test]
fn retained_messages_and_clearing() {
    let broker = Mosquitto::start();
    publish_raw(&broker.url(), "t/retained", b"kept", true);
    let sub = Subscriber::start(&broker.url(), "t/#", None);
    let (_, got) = sub.wait_for("retained message", WAIT, |t, _| t == "t/retained");
    assert_eq!(got, b"kept");

    // An empty retained publish clears it: a new subscriber must not see it.
    publish_raw(&broker.url(), "t/retained", b"", true);
    let later = Subscriber::start(&broker.url(), "t/#", None);
    publish_raw(&broker.url(), "t/marker", b"m", false);
    later.wait_for("marker", WAIT, |t, _| t == "t/marker");
    assert!(
        later.messages().iter().all(|(t, _)| t != "t/retained"),
        "retained message was not cleared: {:?}",
        later.messages()
    );
}

#[test]
fn broker_restart_keeps_port_and_delivers_again() {
    let mut broker = Mosquitto::start();
    let url = broker.url();
    let sub = Subscriber::start(&url, "t/#", None);
    publish_raw(&url, "t/before", b"1", false);
    sub.wait_for("message before outage", WAIT, |t, _| t == "t/before");

    broker.stop();
    let mut publish = Command::new("mosquitto_pub");
    publish
        .args(mqtt_cli_args(&url, None))
        .args(["-t", "t/during", "-m", "x"]);
    let out = run_with_deadline(publish, b"", WAIT);
    assert!(!out.status.success(), "publish during outage should fail");

    broker.restart();
    assert_eq!(broker.url(), url, "restart must reuse the port");
    let sub2 = Subscriber::start(&url, "t/#", None);
    publish_raw(&url, "t/after", b"2", false);
    let (_, got) = sub2.wait_for("message after restart", WAIT, |t, _| t == "t/after");
    assert_eq!(got, b"2");
}

/// A persistent broker saves its state on SIGTERM and restores it; one
/// that cannot save it is said so (a test would otherwise read what the
/// broker lost as its client's loss).
#[test]
fn a_persistent_broker_that_cannot_save_its_state_is_said_so() {
    let mut broker = Mosquitto::start_persistent();
    broker.stop_gracefully();
    broker.restart();
    let store = broker.dir().join("store");
    std::fs::remove_dir_all(&store).expect("remove the store");
    std::fs::write(&store, b"not a directory").expect("write");
    let stopped =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| broker.stop_gracefully()));
    let panic = stopped.expect_err("a failed save must not pass unnoticed");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("did not save its state") && message.contains("Error saving"),
        "{message}"
    );
}

#[test]
fn tls_broker_requires_client_certificate() {
    let tls = generate_tls("gw1");
    for f in [
        &tls.ca,
        &tls.server_cert,
        &tls.server_key,
        &tls.client_cert,
        &tls.client_key,
    ] {
        assert!(f.is_file(), "{} missing", f.display());
    }
    let key = std::fs::read_to_string(&tls.client_key).expect("read client key");
    assert!(
        key.starts_with("-----BEGIN PRIVATE KEY-----"),
        "not PKCS#8: {key}"
    );

    let broker = Mosquitto::start_tls(&tls, true);
    let url = broker.url();
    assert!(url.starts_with("mqtts://127.0.0.1:"));

    // With CA + client cert: works end to end.
    let sub = Subscriber::start(&url, "t/#", Some(&tls));
    publish_raw_tls(&url, Some(&tls), "t/tls", b"secure", false);
    let (_, got) = sub.wait_for("message over TLS", WAIT, |t, _| t == "t/tls");
    assert_eq!(got, b"secure");

    // CA only, no client cert: the broker must refuse.
    let mut publish = Command::new("mosquitto_pub");
    publish
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .arg("--cafile")
        .arg(&tls.ca)
        .args(["-q", "1", "-t", "t/tls", "-m", "nope"]);
    let out = run_with_deadline(publish, b"", WAIT);
    assert!(
        !out.status.success(),
        "publish without client cert succeeded: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sub.messages().iter().all(|(_, p)| p != b"nope"),
        "unauthenticated message was delivered"
    );
    // The client cert's CN became the username.
    assert!(broker.log().contains(" u'gw1'"), "log: {}", broker.log());
}

#[test]
fn guests_build_for_both_wasi_targets() {
    let p1 = std::fs::read(guest_wasm(GuestTarget::P1)).expect("read p1 guest");
    let p2 = std::fs::read(guest_wasm(GuestTarget::P2)).expect("read p2 guest");
    assert_eq!(&p1[..4], b"\0asm");
    assert_eq!(&p2[..4], b"\0asm");
    assert_eq!(&p1[4..8], &[1, 0, 0, 0], "p1 guest must be a core module");
    assert_ne!(&p1[4..8], &p2[4..8], "p2 guest must be a component");
    // Built once per process: the second call is the same file.
    assert_eq!(guest_wasm(GuestTarget::P1), guest_wasm(GuestTarget::P1));
    let digest = sha256_file(guest_wasm(GuestTarget::P1));
    assert_eq!(digest.len(), 64);
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
}

#[test]
fn wait_until_returns_value() {
    let mut n = 0;
    let v = wait_until("counter reaches 3", WAIT, || {
        n += 1;
        (n >= 3).then_some(n)
    });
    assert_eq!(v, 3);
}

#[test]
#[should_panic(expected = "timed out after")]
fn wait_until_panics_on_deadline() {
    wait_until::<()>("never", Duration::from_millis(100), || None);
}

/// Loads all PEM certificates from a file.
fn load_certs(path: &std::path::Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .expect("read cert PEM")
        .collect::<Result<_, _>>()
        .expect("parse cert PEM")
}

#[test]
fn generated_tls_is_accepted_by_rustls() {
    use std::io::{Read, Write};
    use std::sync::Arc;

    let tls = generate_tls("gw1");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(&tls.ca) {
        roots.add(ca).expect("CA accepted as trust anchor");
    }
    let roots = Arc::new(roots);

    // The client cert verifies as a client identity (what an embedded rustls broker checks).
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .expect("client verifier");
    let client_chain = load_certs(&tls.client_cert);
    client_verifier
        .verify_client_cert(&client_chain[0], &[], rustls::pki_types::UnixTime::now())
        .expect("rustls accepts the client certificate");

    // A real rustls handshake (server cert for 127.0.0.1, client cert) with
    // mosquitto, then an MQTT 3.1.1 CONNECT answered by CONNACK "accepted".
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_file(&tls.client_key).expect("parse key PEM")
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(client_chain, key)
        .expect("client auth cert");
    let broker = Mosquitto::start_tls(&tls, true);
    for host in ["127.0.0.1", "localhost"] {
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("name");
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config.clone()), name).expect("client conn");
        let mut tcp =
            std::net::TcpStream::connect(("127.0.0.1", broker.port)).expect("connect broker");
        tcp.set_read_timeout(Some(WAIT)).expect("read timeout");
        let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
        let client_id = format!("rustls-{}", host.replace('.', "-"));
        let mut connect = vec![0x10, (12 + client_id.len()) as u8];
        connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60]);
        connect.extend_from_slice(&[0, client_id.len() as u8]);
        connect.extend_from_slice(client_id.as_bytes());
        stream.write_all(&connect).expect("TLS handshake + CONNECT");
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).expect("read CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK via {host}");
    }
}
