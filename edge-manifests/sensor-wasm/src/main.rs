//! An example workload for kedge's data path: a WASI preview 2 component
//! that reads a (simulated) temperature once a second and publishes it
//! through the agent's host interface, `kedge:data/publish`
//! (src/data/wit/publish.wit). It has no sockets and no credentials: the
//! agent knows which pod and container each message comes from, and the
//! pod's route (`kedge.io/routes`) says where it goes.
//!
//! Build: `cargo build --release --target wasm32-wasip2` (then
//! `target/wasm32-wasip2/release/sensor.wasm`); run it as the pod in
//! edge-manifests/data-sensor-wasm.yaml. `scripts/demo.sh --data` does
//! both.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

wit_bindgen::generate!({
    path: "../../src/data/wit",
    world: "publisher",
});

use kedge::data::publish::{PublishError, publish};

fn main() {
    let every = std::env::var("SENSOR_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis);
    for n in 1u64.. {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        // A slow wave around 21 °C, from the clock: no randomness needed.
        let celsius = 21.0 + 2.0 * ((now.as_secs() % 600) as f64 / 600.0 * std::f64::consts::TAU).sin();
        let payload = format!(r#"{{"n": {n}, "celsius": {celsius:.2}}}"#);
        match publish("sensors/temperature", payload.as_bytes()) {
            Ok(()) => println!("reading {n}: {celsius:.2} °C stored on the device"),
            // The node cannot take it now (no data path yet, a full disk):
            // keep the reading for the next round.
            Err(PublishError::Unavailable(why) | PublishError::Storage(why)) => {
                eprintln!("reading {n}: not stored, will try again: {why}")
            }
            // No route, or a bad topic: sending again will not help.
            Err(e) => {
                eprintln!("reading {n}: refused: {e:?}");
                std::process::exit(1);
            }
        }
        std::thread::sleep(every);
    }
}
