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
    /// Serve the management API (and /metrics) over HTTPS with the `[tls]`
    /// certificate instead of plain HTTP.
    pub mgmt_tls: bool,
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
    pub tls: TlsConfig,
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
            mgmt_tls: false,
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
            tls: TlsConfig::default(),
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
        if let Some(v) = get("LEPUS_MGMT_TLS")? {
            self.mgmt_tls = v;
        }
        self.tls.apply_env()
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
        if self.mgmt_tls && !self.tls.enabled() {
            return Err("mgmt_tls needs [tls] certfile and keyfile".into());
        }
        self.tls.validate()
    }
}

/// The `[tls]` section, with RabbitMQ's `ssl_options` names and meanings.
/// TLS is on when `certfile` and `keyfile` are set: an amqps listener on
/// `port` beside the plain one, on the same `bind` addresses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// amqps port; 0 picks a free one (tests).
    pub port: u16,
    /// The server's certificate chain, PEM (leaf first).
    pub certfile: Option<PathBuf>,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: Option<PathBuf>,
    /// CAs trusted for client certificates, PEM.
    pub cacertfile: Option<PathBuf>,
    /// `verify_none`: no client certificate is asked for. `verify_peer`: one
    /// is asked for and, if sent, must chain to `cacertfile` and be valid.
    pub verify: TlsVerify,
    /// With `verify_peer`: refuse a client that sends no certificate.
    pub fail_if_no_peer_cert: bool,
    /// Protocol versions offered: `tlsv1.2`, `tlsv1.3`.
    pub versions: Vec<String>,
    /// A TLS handshake not done by then is closed (RabbitMQ's
    /// `ssl_handshake_timeout`), milliseconds.
    pub handshake_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsVerify {
    VerifyNone,
    VerifyPeer,
}

impl std::str::FromStr for TlsVerify {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "verify_none" => Ok(TlsVerify::VerifyNone),
            "verify_peer" => Ok(TlsVerify::VerifyPeer),
            _ => Err(format!("verify is verify_none or verify_peer, not {s:?}")),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            port: 5671,
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify: TlsVerify::VerifyNone,
            fail_if_no_peer_cert: false,
            versions: vec!["tlsv1.3".into(), "tlsv1.2".into()],
            handshake_timeout_ms: 5000,
        }
    }
}

impl TlsConfig {
    /// TLS is on when both the certificate and its key are configured.
    pub fn enabled(&self) -> bool {
        self.certfile.is_some() && self.keyfile.is_some()
    }

    /// `LEPUS_TLS_<KEY>`, one per key (`LEPUS_TLS_VERSIONS` comma-separated).
    fn apply_env(&mut self) -> Result<(), String> {
        if let Some(v) = env("LEPUS_TLS_PORT")? {
            self.port = v;
        }
        if let Some(v) = env::<String>("LEPUS_TLS_CERTFILE")? {
            self.certfile = Some(v.into());
        }
        if let Some(v) = env::<String>("LEPUS_TLS_KEYFILE")? {
            self.keyfile = Some(v.into());
        }
        if let Some(v) = env::<String>("LEPUS_TLS_CACERTFILE")? {
            self.cacertfile = Some(v.into());
        }
        if let Some(v) = env::<String>("LEPUS_TLS_VERIFY")? {
            self.verify = v.parse()?;
        }
        if let Some(v) = env("LEPUS_TLS_FAIL_IF_NO_PEER_CERT")? {
            self.fail_if_no_peer_cert = v;
        }
        if let Some(v) = env::<String>("LEPUS_TLS_VERSIONS")? {
            self.versions = split_list(&v);
        }
        if let Some(v) = env("LEPUS_TLS_HANDSHAKE_TIMEOUT_MS")? {
            self.handshake_timeout_ms = v;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), String> {
        if self.certfile.is_some() != self.keyfile.is_some() {
            return Err("[tls] needs both certfile and keyfile".into());
        }
        if !self.enabled() {
            return Ok(());
        }
        if self.versions.is_empty() {
            return Err("[tls] versions lists no version".into());
        }
        for v in &self.versions {
            if v != "tlsv1.2" && v != "tlsv1.3" {
                return Err(format!(
                    "[tls] versions: {v:?} is not supported (tlsv1.2, tlsv1.3)"
                ));
            }
        }
        if self.verify == TlsVerify::VerifyPeer && self.cacertfile.is_none() {
            return Err("[tls] verify = \"verify_peer\" needs cacertfile".into());
        }
        if self.handshake_timeout_ms == 0 {
            return Err("[tls] handshake_timeout_ms must be above 0".into());
        }
        Ok(())
    }
}

/// One environment variable, parsed.
fn env<T: std::str::FromStr>(key: &str) -> Result<Option<T>, String> {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("invalid value {v:?} for {key}")),
        Err(_) => Ok(None),
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
    fn tls_section() {
        let c: Config = toml::from_str(
            r#"mgmt_tls = true
[tls]
port = 5671
certfile = "/etc/lepus/server.pem"
keyfile = "/etc/lepus/server.key"
cacertfile = "/etc/lepus/ca.pem"
verify = "verify_peer"
fail_if_no_peer_cert = true
versions = ["tlsv1.2"]"#,
        )
        .unwrap();
        assert!(c.tls.enabled() && c.mgmt_tls);
        assert_eq!(c.tls.verify, TlsVerify::VerifyPeer);
        c.validate().unwrap();
        assert!(!Config::default().tls.enabled());
        assert_eq!(Config::default().tls.port, 5671);
        let bad = |t: &str| toml::from_str::<Config>(t).map(|c| c.validate());
        assert!(bad("[tls]\nverify = \"verify_maybe\"").is_err());
        assert!(bad("[tls]\ncertfile = \"a\"").unwrap().is_err());
        assert!(
            bad("[tls]\ncertfile = \"a\"\nkeyfile = \"b\"\nversions = [\"tlsv1.1\"]")
                .unwrap()
                .is_err()
        );
        assert!(
            bad("[tls]\ncertfile = \"a\"\nkeyfile = \"b\"\nverify = \"verify_peer\"")
                .unwrap()
                .is_err()
        );
        assert!(bad("mgmt_tls = true").unwrap().is_err());
        assert_eq!(
            "verify_peer".parse::<TlsVerify>(),
            Ok(TlsVerify::VerifyPeer)
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<Config>("prot = 1").is_err());
    }
}
