//! Configuration: every option declared once, with its default.
//!
//! Sources, later ones win: built-in defaults, the TOML file (`--config`),
//! `LEPUS_*` environment variables (`LEPUS_PORT`, `LEPUS_DATA_DIR`, ... one per
//! option, named after its key), then command-line flags.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to listen on for AMQP: one string or a list
    /// (`["127.0.0.1", "::1"]`), all on `port`.
    #[serde(deserialize_with = "one_or_many")]
    pub bind: Vec<String>,
    /// AMQP port; 0 picks a free one (tests), the same for every address.
    pub port: u16,
    /// Addresses the HTTP management API (and /metrics) listens on: one
    /// string or a list, as `bind`.
    #[serde(deserialize_with = "one_or_many")]
    pub mgmt_bind: Vec<String>,
    /// Management API port; 0 picks a free one (tests).
    pub mgmt_port: u16,
    /// Where segments and definitions live.
    pub data_dir: PathBuf,
    /// Heartbeat interval we propose in connection.tune, seconds (0 = off).
    pub heartbeat: u16,
    /// Largest frame we accept and propose, bytes.
    pub frame_max: u32,
    /// Highest channel number a client may open.
    pub channel_max: u16,
    /// Largest message body accepted, bytes (RabbitMQ's default: 128 MiB).
    pub max_message_size: u64,
    /// Users allowed to log in as `guest`-like default users only from loopback.
    pub loopback_users: Vec<String>,
    /// Users created on first start (later changes live in the definitions store).
    pub users: Vec<UserConfig>,
    /// Vhosts created on first start, each with full permissions for every configured user.
    pub vhosts: Vec<String>,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Size at which a message segment file is closed and a new one started.
    pub segment_size: u32,
    /// Group commit: how long the sync thread waits after the first unsynced
    /// write before calling fdatasync, in microseconds. 0 syncs as soon as there
    /// is something to sync; what arrives during one fdatasync is covered by the
    /// next, so batching happens by itself under load. Raising it trades confirm
    /// latency for fewer fsyncs.
    pub sync_delay_us: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Block publishers when free space on the data dir's disk falls below this.
    pub disk_free_limit: u64,
    /// Block publishers when the broker's RSS passes this fraction of total RAM.
    pub memory_high_watermark: f64,
    /// How often the alarms are checked, milliseconds.
    pub check_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: vec!["127.0.0.1".into()],
            port: 5672,
            mgmt_bind: vec!["127.0.0.1".into()],
            mgmt_port: 15672,
            data_dir: PathBuf::from("data"),
            heartbeat: 60,
            frame_max: 131072,
            channel_max: 2047,
            max_message_size: 128 * 1024 * 1024,
            loopback_users: vec!["guest".into()],
            users: vec![UserConfig {
                name: "guest".into(),
                password: "guest".into(),
                tags: vec!["administrator".into()],
            }],
            vhosts: vec!["/".into()],
            store: StoreConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            segment_size: 32 * 1024 * 1024,
            sync_delay_us: 0,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            disk_free_limit: 50 * 1024 * 1024,
            memory_high_watermark: 0.4,
            check_interval_ms: 1000,
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
    }

    /// Apply `LEPUS_*` environment variables.
    pub fn apply_env(&mut self) -> Result<(), String> {
        fn get<T: std::str::FromStr>(key: &str) -> Result<Option<T>, String> {
            match std::env::var(key) {
                Ok(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("invalid value {v:?} for {key}")),
                Err(_) => Ok(None),
            }
        }
        if let Some(v) = get::<String>("LEPUS_BIND")? {
            self.bind = split_list(&v);
        }
        if let Some(v) = get("LEPUS_PORT")? {
            self.port = v;
        }
        if let Some(v) = get::<String>("LEPUS_MGMT_BIND")? {
            self.mgmt_bind = split_list(&v);
        }
        if let Some(v) = get("LEPUS_MGMT_PORT")? {
            self.mgmt_port = v;
        }
        if let Some(v) = get::<String>("LEPUS_DATA_DIR")? {
            self.data_dir = v.into();
        }
        if let Some(v) = get("LEPUS_HEARTBEAT")? {
            self.heartbeat = v;
        }
        if let Some(v) = get("LEPUS_FRAME_MAX")? {
            self.frame_max = v;
        }
        if let Some(v) = get("LEPUS_CHANNEL_MAX")? {
            self.channel_max = v;
        }
        if let Some(v) = get("LEPUS_MAX_MESSAGE_SIZE")? {
            self.max_message_size = v;
        }
        if let Some(v) = get("LEPUS_SEGMENT_SIZE")? {
            self.store.segment_size = v;
        }
        if let Some(v) = get("LEPUS_SYNC_DELAY_US")? {
            self.store.sync_delay_us = v;
        }
        if let Some(v) = get("LEPUS_DISK_FREE_LIMIT")? {
            self.limits.disk_free_limit = v;
        }
        if let Some(v) = get("LEPUS_MEMORY_HIGH_WATERMARK")? {
            self.limits.memory_high_watermark = v;
        }
        if let Some(v) = get("LEPUS_CHECK_INTERVAL_MS")? {
            self.limits.check_interval_ms = v;
        }
        if let Some(v) = get::<String>("LEPUS_LOOPBACK_USERS")? {
            self.loopback_users = split_list(&v);
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.bind.is_empty() {
            return Err("bind lists no address".into());
        }
        if self.mgmt_bind.is_empty() {
            return Err("mgmt_bind lists no address".into());
        }
        if self.frame_max < crate::protocol::FRAME_MIN_SIZE {
            return Err(format!(
                "frame_max must be at least {}",
                crate::protocol::FRAME_MIN_SIZE
            ));
        }
        if self.store.segment_size < 1024 * 1024 {
            return Err("store.segment_size must be at least 1 MiB".into());
        }
        if self.max_message_size > 512 * 1024 * 1024 {
            return Err("max_message_size is at most 512 MiB".into());
        }
        Ok(())
    }
}

/// A comma-separated list (an environment variable or a flag), trimmed.
pub fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/lepus.toml");
        let c = Config::from_file(&path).unwrap();
        let d = Config::default();
        assert_eq!(c.port, d.port);
        assert_eq!(c.mgmt_port, d.mgmt_port);
        assert_eq!(c.mgmt_bind, d.mgmt_bind);
        assert_eq!(c.frame_max, d.frame_max);
        assert_eq!(c.store.segment_size, d.store.segment_size);
        assert_eq!(c.max_message_size, d.max_message_size);
        c.validate().unwrap();
    }

    #[test]
    fn environment_overrides_the_file() {
        // One test sets and reads the variables, so tests cannot race on them.
        std::env::set_var("LEPUS_PORT", "5999");
        std::env::set_var("LEPUS_CHECK_INTERVAL_MS", "250");
        std::env::set_var("LEPUS_LOOPBACK_USERS", "guest, admin");
        let mut c = Config::default();
        c.apply_env().unwrap();
        assert_eq!(c.port, 5999);
        assert_eq!(c.limits.check_interval_ms, 250);
        assert_eq!(
            c.loopback_users,
            vec!["guest".to_string(), "admin".to_string()]
        );
        std::env::set_var("LEPUS_PORT", "not a port");
        assert!(Config::default().apply_env().is_err());
        for k in [
            "LEPUS_PORT",
            "LEPUS_CHECK_INTERVAL_MS",
            "LEPUS_LOOPBACK_USERS",
        ] {
            std::env::remove_var(k);
        }
    }

    #[test]
    fn bind_is_one_address_or_a_list() {
        let c: Config = toml::from_str(r#"bind = "0.0.0.0""#).unwrap();
        assert_eq!(c.bind, vec!["0.0.0.0".to_string()]);
        let c: Config = toml::from_str(
            r#"bind = ["127.0.0.1", "::1"]
mgmt_bind = ["127.0.0.1", "::1"]"#,
        )
        .unwrap();
        assert_eq!(c.bind, vec!["127.0.0.1".to_string(), "::1".to_string()]);
        assert_eq!(c.mgmt_bind, c.bind);
        c.validate().unwrap();
        let c: Config = toml::from_str("bind = []").unwrap();
        assert!(c.validate().is_err());
        assert!(toml::from_str::<Config>("bind = 1").is_err());
        assert_eq!(Config::default().bind, vec!["127.0.0.1".to_string()]);
        assert_eq!(split_list(" 127.0.0.1, ::1 ,"), vec!["127.0.0.1", "::1"]);
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("prot = 1").is_err());
    }
}
