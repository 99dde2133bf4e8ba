//! Fields a schema version appended to a type, which older bodies lack,
//! read without a second copy of the type's decoder (a device build counts
//! its bytes).
//!
//! Version 4 appended `seccomp_profile` and `app_armor_profile` to
//! `SecurityContext` and `kind` to `VolumeSource::HostPath`; it also made
//! `command`, `args` and env values templates, which a spec of versions 1
//! to 3 ran literally: its reader escapes them after reading
//! (`expansion::escape_literals`).
//!
//! The same holds for `NodeStatus`: version 2 appended `labels`, version 5
//! `sealing_key` and, to its `NodeInfo`, `machine_id`, `boot_id` and
//! `system_uuid`; version 11 appended `data` (the data path's counters).
//!
//! Version 9 appended `lifecycle`, `termination_message_path`,
//! `termination_message_fallback_to_logs` and `run_as_non_root` to
//! `Container`, `field` to `EnvVar` and `security` to `PodSpec`; version 10
//! appended `restart_policy` to `Container` and `routes` to `PodSpec`;
//! version 11 appended `se_linux_options` to `SecurityContext` and to
//! `PodSecurity` and `dns` to `PodSpec`; version 12 appended `priority` to
//! `PodRoute` and to `RouteStatus`. Nothing else of their layout
//! changed since version 4, so a body of versions 4 to 10 is today's layout
//! without what came later. Those fields
//! carry `#[serde(deserialize_with = "added::in_vN")]`: while `reading`
//! runs on this thread for an older version, they are not read from the
//! input but taken as absent (their default: no hooks, the default
//! termination message, no status field, no sidecar, no route, no SELinux
//! label, the default DNS policy), which is
//! what such a spec ran with; otherwise they are read as usual. postcard
//! reads a struct's fields in order and nothing else, so a skipped field
//! consumes no byte. Encoding always writes them.

use std::cell::Cell;

use serde::{Deserialize, Deserializer};

thread_local! {
    /// The schema version of the body being read; `u16::MAX`: today's.
    static READING: Cell<u16> = const { Cell::new(u16::MAX) };
}

/// Runs `read` (a decode of a body of `version`: a `PodSpec` or a
/// `NodeStatus`, or a record that holds one) with the fields of later
/// versions absent.
pub fn reading<T>(version: u16, read: impl FnOnce() -> T) -> T {
    struct Restore(u16);
    impl Drop for Restore {
        fn drop(&mut self) {
            READING.with(|r| r.set(self.0));
        }
    }
    let _restore = Restore(READING.with(|r| r.replace(version)));
    read()
}

fn added_in<'de, D, T>(version: u16, d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    if READING.with(Cell::get) < version {
        Ok(T::default())
    } else {
        T::deserialize(d)
    }
}

macro_rules! added_in_version {
    ($($name:ident => $version:literal),* $(,)?) => {$(
        #[doc = concat!("`deserialize_with` of a field version ", $version, " added.")]
        pub fn $name<'de, D, T>(d: D) -> Result<T, D::Error>
        where
            D: Deserializer<'de>,
            T: Deserialize<'de> + Default,
        {
            added_in($version, d)
        }
    )*};
}

added_in_version!(in_v2 => 2, in_v4 => 4, in_v5 => 5, in_v9 => 9, in_v10 => 10, in_v11 => 11, in_v12 => 12);
