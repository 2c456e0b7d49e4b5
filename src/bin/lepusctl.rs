//! `lepusctl`: manage a Lepus broker through its HTTP management API, in the
//! spirit of rabbitmqctl. `move` talks AMQP (see lepusctl/shovel.rs).
//!
//! Adding an object kind to `list` is one [`ListWhat`] variant and one entry
//! in [`ListWhat::spec`]; adding a verb on an object kind (as `cancel
//! delayed` will be) is one [`Cmd`] variant with its own subcommand enum.

#[path = "lepusctl/http.rs"]
mod http;
#[path = "lepusctl/shovel.rs"]
mod shovel;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use http::{seg, Api};
use serde_json::{json, Value};
use std::io::Read;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "lepusctl",
    version,
    about = "Manage a Lepus broker through its HTTP management API",
    after_help = "Examples:\n  lepusctl list queues\n  lepusctl -p / declare queue orders\n  lepusctl export defs.json\n  lepusctl move orders.dlq orders --max 1000"
)]
struct Cli {
    /// Base URL of the management API (https://... for a broker with mgmt_tls).
    #[arg(
        long,
        env = "LEPUSCTL_URL",
        default_value = "http://127.0.0.1:15672",
        global = true
    )]
    url: String,
    /// CA certificates (PEM) to trust for an https URL, instead of the
    /// built-in web roots: for a broker whose certificate your own CA signed.
    #[arg(long, env = "LEPUSCTL_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    /// User name for HTTP basic auth (and AMQP for `move`).
    #[arg(
        long,
        short = 'u',
        env = "LEPUSCTL_USER",
        default_value = "guest",
        global = true
    )]
    user: String,
    /// Password.
    #[arg(
        long,
        env = "LEPUSCTL_PASSWORD",
        default_value = "guest",
        global = true,
        hide_env_values = true
    )]
    password: String,
    /// Virtual host (default "/"; `list` shows every vhost unless given).
    #[arg(long, short = 'p', global = true)]
    vhost: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Broker status: version, listeners, totals, rates, store, alarms.
    Status,
    /// Cluster members: role, in-sync replica set, replication lag.
    #[command(name = "cluster_status", alias = "cluster-status")]
    ClusterStatus {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List objects as a table (or --format json).
    List {
        what: ListWhat,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Declare a queue or an exchange.
    Declare {
        #[command(subcommand)]
        what: DeclareWhat,
    },
    /// Delete a queue or an exchange.
    Delete {
        #[command(subcommand)]
        what: DeleteWhat,
    },
    /// Pending messages of a delayed exchange: list, cancel by message-id, purge.
    Delayed {
        #[command(subcommand)]
        what: DelayedCmd,
    },
    /// Remove every ready message from a queue.
    Purge {
        #[command(subcommand)]
        what: PurgeWhat,
    },
    /// Create a user (or replace its password and tags).
    #[command(name = "add_user", alias = "add-user")]
    AddUser {
        name: String,
        #[arg(value_name = "PASSWORD")]
        new_password: String,
        /// Comma-separated tags: administrator, management, monitoring.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Delete a user and its permissions.
    #[command(name = "delete_user", alias = "delete-user")]
    DeleteUser { name: String },
    /// Set a user's password (its tags stay).
    #[command(name = "change_password", alias = "change-password")]
    ChangePassword {
        name: String,
        #[arg(value_name = "PASSWORD")]
        new_password: String,
    },
    /// Replace a user's tags.
    #[command(name = "set_user_tags", alias = "set-user-tags")]
    SetUserTags { name: String, tags: Vec<String> },
    /// Set a user's permissions in the vhost (-p): configure, write and read regexes.
    #[command(name = "set_permissions", alias = "set-permissions")]
    SetPermissions {
        #[arg(value_name = "USER")]
        username: String,
        configure: String,
        write: String,
        read: String,
    },
    /// Remove a user's permissions in the vhost (-p).
    #[command(name = "clear_permissions", alias = "clear-permissions")]
    ClearPermissions {
        #[arg(value_name = "USER")]
        username: String,
    },
    /// Create a virtual host (grant permissions with set_permissions).
    #[command(name = "add_vhost", alias = "add-vhost")]
    AddVhost { name: String },
    /// Delete a virtual host with everything in it.
    #[command(name = "delete_vhost", alias = "delete-vhost")]
    DeleteVhost { name: String },
    /// Set a policy in the vhost (-p): NAME, a regex PATTERN on queue or
    /// exchange names, a DEFINITION as a JSON object, e.g. '{"max-length": 1000}'.
    #[command(name = "set_policy", alias = "set-policy")]
    SetPolicy {
        name: String,
        pattern: String,
        definition: String,
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// queues, exchanges or all.
        #[arg(long, default_value = "all")]
        apply_to: String,
    },
    /// Remove a policy from the vhost (-p).
    #[command(name = "clear_policy", alias = "clear-policy")]
    ClearPolicy { name: String },
    /// List the policies (of the vhost given with -p, else of every vhost).
    #[command(name = "list_policies", alias = "list-policies")]
    ListPolicies {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Set an operator policy (limits and TTLs that cap the policies).
    #[command(name = "set_operator_policy", alias = "set-operator-policy")]
    SetOperatorPolicy {
        name: String,
        pattern: String,
        definition: String,
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// queues, exchanges or all.
        #[arg(long, default_value = "all")]
        apply_to: String,
    },
    /// Remove an operator policy from the vhost (-p).
    #[command(name = "clear_operator_policy", alias = "clear-operator-policy")]
    ClearOperatorPolicy { name: String },
    /// List the operator policies.
    #[command(name = "list_operator_policies", alias = "list-operator-policies")]
    ListOperatorPolicies {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Replace the vhost's (-p) limits with DEFINITION, e.g.
    /// '{"max-connections": 10, "max-queues": 100}' (a negative value: no limit).
    #[command(name = "set_vhost_limits", alias = "set-vhost-limits")]
    SetVhostLimits { definition: String },
    /// Remove every limit of the vhost (-p).
    #[command(name = "clear_vhost_limits", alias = "clear-vhost-limits")]
    ClearVhostLimits,
    /// List vhost limits.
    #[command(name = "list_vhost_limits", alias = "list-vhost-limits")]
    ListVhostLimits {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Replace a user's limits with DEFINITION, e.g. '{"max-channels": 100}'.
    #[command(name = "set_user_limits", alias = "set-user-limits")]
    SetUserLimits {
        #[arg(value_name = "USER")]
        username: String,
        definition: String,
    },
    /// Remove every limit of a user.
    #[command(name = "clear_user_limits", alias = "clear-user-limits")]
    ClearUserLimits {
        #[arg(value_name = "USER")]
        username: String,
    },
    /// List user limits.
    #[command(name = "list_user_limits", alias = "list-user-limits")]
    ListUserLimits {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Export definitions (RabbitMQ's JSON) to FILE ("-": stdout).
    Export { file: String },
    /// Import definitions from FILE ("-": stdin). All or nothing.
    Import { file: String },
    /// Close a client connection (name as `list connections` shows it).
    #[command(name = "close_connection", alias = "close-connection")]
    CloseConnection {
        name: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show messages of a queue without removing them (they are requeued).
    Get {
        queue: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Remove the messages instead of requeueing them.
        #[arg(long)]
        ack: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Publish one message to an exchange ("" or amq.default: the default exchange).
    Publish {
        exchange: String,
        routing_key: String,
        body: String,
        /// delivery_mode 2.
        #[arg(long)]
        persistent: bool,
        #[arg(long)]
        content_type: Option<String>,
        #[arg(long)]
        message_id: Option<String>,
    },
    /// Move messages from SRC to DST over AMQP, shovel-like: each message is
    /// acked in SRC only after DST has confirmed it, so an interrupted move
    /// loses nothing (it may duplicate the messages in flight).
    Move {
        src: String,
        dst: String,
        /// Move at most this many messages.
        #[arg(long)]
        max: Option<u64>,
        /// AMQP URL; default: the API's host, port 5672, --user, --password and -p.
        #[arg(long)]
        amqp_url: Option<String>,
        /// Messages in flight (unacked in SRC, unconfirmed in DST).
        #[arg(long, default_value_t = 200)]
        prefetch: u16,
        /// Give up waiting for more messages after this many seconds of silence.
        #[arg(long, default_value_t = 5)]
        idle_timeout: u64,
    },
}

#[derive(Subcommand, Debug)]
enum DeclareWhat {
    Queue {
        name: String,
        #[arg(long, action = ArgAction::Set, default_value_t = true)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        /// Arguments as a JSON object, e.g. '{"x-max-length": 1000}'.
        #[arg(long)]
        arguments: Option<String>,
    },
    Exchange {
        name: String,
        #[arg(long = "type", default_value = "direct")]
        kind: String,
        #[arg(long, action = ArgAction::Set, default_value_t = true)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        #[arg(long)]
        internal: bool,
        #[arg(long)]
        arguments: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DeleteWhat {
    Queue {
        name: String,
        #[arg(long)]
        if_empty: bool,
        #[arg(long)]
        if_unused: bool,
    },
    Exchange {
        name: String,
        #[arg(long)]
        if_unused: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DelayedCmd {
    /// List pending messages in due order.
    List {
        exchange: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Cancel the pending messages with this message-id.
    Cancel {
        exchange: String,
        message_id: String,
    },
    /// Drop every pending message.
    Purge { exchange: String },
}

#[derive(Subcommand, Debug)]
enum PurgeWhat {
    Queue { name: String },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq)]
enum Format {
    Table,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ListWhat {
    Queues,
    Exchanges,
    Bindings,
    Connections,
    Channels,
    Consumers,
    Users,
    Vhosts,
    Permissions,
    Policies,
    #[value(name = "operator_policies", alias = "operator-policies")]
    OperatorPolicies,
    #[value(name = "vhost_limits", alias = "vhost-limits")]
    VhostLimits,
    #[value(name = "user_limits", alias = "user-limits")]
    UserLimits,
}

/// One table column: its title and where its value is in each object (a JSON pointer).
type Col = (&'static str, &'static str);

impl ListWhat {
    /// API path for all vhosts, for one vhost ({v} is replaced), and the table columns.
    fn spec(self) -> (&'static str, Option<&'static str>, &'static [Col]) {
        match self {
            ListWhat::Queues => (
                "/api/queues",
                Some("/api/queues/{v}"),
                &[
                    ("vhost", "/vhost"),
                    ("name", "/name"),
                    ("messages", "/messages"),
                    ("ready", "/messages_ready"),
                    ("unacked", "/messages_unacknowledged"),
                    ("consumers", "/consumers"),
                    ("durable", "/durable"),
                    ("publish/s", "/message_stats/publish_details/rate"),
                ],
            ),
            ListWhat::Exchanges => (
                "/api/exchanges",
                Some("/api/exchanges/{v}"),
                &[
                    ("vhost", "/vhost"),
                    ("name", "/name"),
                    ("type", "/type"),
                    ("durable", "/durable"),
                    ("auto_delete", "/auto_delete"),
                    ("internal", "/internal"),
                ],
            ),
            ListWhat::Bindings => (
                "/api/bindings",
                Some("/api/bindings/{v}"),
                &[
                    ("vhost", "/vhost"),
                    ("source", "/source"),
                    ("destination", "/destination"),
                    ("type", "/destination_type"),
                    ("routing_key", "/routing_key"),
                    ("arguments", "/arguments"),
                ],
            ),
            ListWhat::Connections => (
                "/api/connections",
                Some("/api/vhosts/{v}/connections"),
                &[
                    ("name", "/name"),
                    ("user", "/user"),
                    ("vhost", "/vhost"),
                    ("channels", "/channels"),
                    ("state", "/state"),
                ],
            ),
            ListWhat::Channels => (
                "/api/channels",
                Some("/api/vhosts/{v}/channels"),
                &[
                    ("name", "/name"),
                    ("user", "/user"),
                    ("vhost", "/vhost"),
                    ("consumers", "/consumer_count"),
                    ("unacked", "/messages_unacknowledged"),
                    ("prefetch", "/prefetch_count"),
                ],
            ),
            ListWhat::Consumers => (
                "/api/consumers",
                Some("/api/consumers/{v}"),
                &[
                    ("vhost", "/queue/vhost"),
                    ("queue", "/queue/name"),
                    ("consumer_tag", "/consumer_tag"),
                    ("channel", "/channel_details/name"),
                    ("ack_required", "/ack_required"),
                    ("prefetch", "/prefetch_count"),
                ],
            ),
            ListWhat::Users => ("/api/users", None, &[("name", "/name"), ("tags", "/tags")]),
            ListWhat::Vhosts => (
                "/api/vhosts",
                None,
                &[
                    ("name", "/name"),
                    ("messages", "/messages"),
                    ("ready", "/messages_ready"),
                    ("unacked", "/messages_unacknowledged"),
                ],
            ),
            ListWhat::Permissions => (
                "/api/permissions",
                Some("/api/vhosts/{v}/permissions"),
                &[
                    ("user", "/user"),
                    ("vhost", "/vhost"),
                    ("configure", "/configure"),
                    ("write", "/write"),
                    ("read", "/read"),
                ],
            ),
            ListWhat::Policies => ("/api/policies", Some("/api/policies/{v}"), POLICY_COLS),
            ListWhat::OperatorPolicies => (
                "/api/operator-policies",
                Some("/api/operator-policies/{v}"),
                POLICY_COLS,
            ),
            ListWhat::VhostLimits => (
                "/api/vhost-limits",
                Some("/api/vhost-limits/{v}"),
                &[("vhost", "/vhost"), ("limits", "/value")],
            ),
            ListWhat::UserLimits => (
                "/api/user-limits",
                None,
                &[("user", "/user"), ("limits", "/value")],
            ),
        }
    }
}

const POLICY_COLS: &[Col] = &[
    ("vhost", "/vhost"),
    ("name", "/name"),
    ("pattern", "/pattern"),
    ("apply-to", "/apply-to"),
    ("definition", "/definition"),
    ("priority", "/priority"),
];

/// A JSON object given on the command line.
fn json_object(what: &str, s: &str) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(format!("{what} must be a JSON object")),
        Err(e) => Err(format!("{what} is not JSON: {e}")),
    }
}

/// Make a limits object (`GET` path `get`, one `PUT`/`DELETE` per name
/// under `base`) equal `want`: rabbitmqctl's set_*_limits replace them all.
fn replace_limits(
    api: &Api,
    get: &str,
    base: &str,
    want: &serde_json::Map<String, Value>,
) -> Result<(), String> {
    let have = api.get(get)?;
    let have = have
        .get(0)
        .and_then(|r| r["value"].as_object())
        .cloned()
        .unwrap_or_default();
    for (k, v) in want {
        api.put(&format!("{base}/{}", seg(k)), &json!({ "value": v }))?;
    }
    for k in have.keys().filter(|k| !want.contains_key(*k)) {
        api.delete(&format!("{base}/{}", seg(k)), &[])?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`lepusctl list queues | head`), as CLI tools do.
    // SAFETY: setting a signal disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lepusctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| cell(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(m)) if m.is_empty() => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Print objects as an aligned table, one row each.
fn print_table(rows: &[Value], cols: &[Col]) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|(_, p)| cell(r.pointer(p))).collect())
        .collect();
    let mut widths: Vec<usize> = cols.iter().map(|(t, _)| t.len()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |items: Vec<&str>| {
        let mut s = String::new();
        for (i, (item, w)) in items.iter().zip(&widths).enumerate() {
            if i + 1 == items.len() {
                s.push_str(item);
            } else {
                s.push_str(&format!("{item:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(cols.iter().map(|(t, _)| *t).collect());
    for row in &cells {
        line(row.iter().map(|s| s.as_str()).collect());
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn parse_args_json(s: &Option<String>) -> Result<Value, String> {
    match s {
        None => Ok(json!({})),
        Some(s) => {
            let v: Value =
                serde_json::from_str(s).map_err(|e| format!("--arguments is not JSON: {e}"))?;
            if !v.is_object() {
                return Err("--arguments must be a JSON object".into());
            }
            Ok(v)
        }
    }
}

/// Whether a policy command is about operator policies.
fn operator_kind(cmd: &Cmd) -> bool {
    matches!(
        cmd,
        Cmd::SetOperatorPolicy { .. } | Cmd::ClearOperatorPolicy { .. }
    )
}

fn run(cli: Cli) -> Result<(), String> {
    let api = Api::new(&cli.url, &cli.user, &cli.password, cli.cacert.as_deref())?;
    let vhost = cli.vhost.clone().unwrap_or_else(|| "/".into());
    let v = seg(&vhost);
    let operator = operator_kind(&cli.cmd);
    match cli.cmd {
        Cmd::Status => status(&api),
        Cmd::ClusterStatus { format } => {
            let nodes = api.get("/api/nodes")?;
            match format {
                Format::Json => print_json(&nodes),
                Format::Table => {
                    let rows = nodes.as_array().cloned().unwrap_or_default();
                    let clustered = rows.iter().any(|n| n.get("role").is_some());
                    if !clustered {
                        println!("single node (clustering is off)");
                    }
                    print_table(
                        &rows,
                        &[
                            ("name", "/name"),
                            ("role", "/role"),
                            ("running", "/running"),
                            ("isr", "/isr"),
                            ("lag_bytes", "/lag_bytes"),
                            ("lag_ms", "/lag_ms"),
                            ("amqp", "/amqp_address"),
                            ("http", "/http_address"),
                        ],
                    );
                }
            }
            Ok(())
        }
        Cmd::List { what, format } => {
            let (all, scoped, cols) = what.spec();
            let path = match (&cli.vhost, scoped) {
                (Some(vh), Some(p)) => p.replace("{v}", &seg(vh)),
                _ => all.to_owned(),
            };
            let rows = api.get(&path)?;
            match format {
                Format::Json => print_json(&rows),
                Format::Table => {
                    print_table(rows.as_array().map(|a| a.as_slice()).unwrap_or(&[]), cols)
                }
            }
            Ok(())
        }
        Cmd::Delayed { what } => match what {
            DelayedCmd::List {
                exchange,
                limit,
                format,
            } => {
                let ex = api.get(&format!("/api/exchanges/{v}/{}", seg(&exchange)))?;
                let rows = api.get(&format!(
                    "/api/exchanges/{v}/{}/delayed?limit={limit}",
                    seg(&exchange)
                ))?;
                match format {
                    Format::Json => print_json(&rows),
                    Format::Table => {
                        let d = &ex["delayed"];
                        println!(
                            "exchange '{exchange}': {} pending, next due {}",
                            d["pending"].as_u64().unwrap_or(0),
                            d["next_due"]
                                .as_u64()
                                .map(|t| format!("at {t} ms since the epoch"))
                                .unwrap_or_else(|| "never".into())
                        );
                        print_table(
                            rows.as_array().map(|a| a.as_slice()).unwrap_or(&[]),
                            &[
                                ("due_in_ms", "/due_in_ms"),
                                ("message_id", "/message_id"),
                                ("routing_key", "/routing_key"),
                                ("bytes", "/payload_bytes"),
                                ("persistent", "/persistent"),
                            ],
                        )
                    }
                }
                Ok(())
            }
            DelayedCmd::Cancel {
                exchange,
                message_id,
            } => {
                let r = api.delete(
                    &format!(
                        "/api/exchanges/{v}/{}/delayed/{}",
                        seg(&exchange),
                        seg(&message_id)
                    ),
                    &[],
                )?;
                println!(
                    "{} delayed message(s) with message-id '{message_id}' cancelled",
                    r["cancelled"].as_u64().unwrap_or(0)
                );
                Ok(())
            }
            DelayedCmd::Purge { exchange } => {
                let r = api.delete(
                    &format!("/api/exchanges/{v}/{}/delayed", seg(&exchange)),
                    &[],
                )?;
                println!(
                    "{} delayed message(s) purged from '{exchange}'",
                    r["purged"].as_u64().unwrap_or(0)
                );
                Ok(())
            }
        },
        Cmd::Declare { what } => match what {
            DeclareWhat::Queue {
                name,
                durable,
                auto_delete,
                arguments,
            } => {
                let body = json!({"durable": durable, "auto_delete": auto_delete, "arguments": parse_args_json(&arguments)?});
                api.put(&format!("/api/queues/{v}/{}", seg(&name)), &body)?;
                println!("queue '{name}' declared in vhost '{vhost}'");
                Ok(())
            }
            DeclareWhat::Exchange {
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
            } => {
                let body = json!({"type": kind, "durable": durable, "auto_delete": auto_delete,
                                  "internal": internal, "arguments": parse_args_json(&arguments)?});
                api.put(&format!("/api/exchanges/{v}/{}", seg(&name)), &body)?;
                println!("exchange '{name}' declared in vhost '{vhost}'");
                Ok(())
            }
        },
        Cmd::Delete { what } => match what {
            DeleteWhat::Queue {
                name,
                if_empty,
                if_unused,
            } => {
                let mut q = vec![];
                if if_empty {
                    q.push("if-empty=true");
                }
                if if_unused {
                    q.push("if-unused=true");
                }
                let query = if q.is_empty() {
                    String::new()
                } else {
                    format!("?{}", q.join("&"))
                };
                api.delete(&format!("/api/queues/{v}/{}{query}", seg(&name)), &[])?;
                println!("queue '{name}' deleted from vhost '{vhost}'");
                Ok(())
            }
            DeleteWhat::Exchange { name, if_unused } => {
                let query = if if_unused { "?if-unused=true" } else { "" };
                api.delete(&format!("/api/exchanges/{v}/{}{query}", seg(&name)), &[])?;
                println!("exchange '{name}' deleted from vhost '{vhost}'");
                Ok(())
            }
        },
        Cmd::Purge {
            what: PurgeWhat::Queue { name },
        } => {
            let before = api.get(&format!("/api/queues/{v}/{}", seg(&name)))?;
            api.delete(&format!("/api/queues/{v}/{}/contents", seg(&name)), &[])?;
            println!(
                "queue '{name}' in vhost '{vhost}' purged ({} messages)",
                before["messages_ready"].as_u64().unwrap_or(0)
            );
            Ok(())
        }
        Cmd::AddUser {
            name,
            new_password,
            tags,
        } => {
            api.put(
                &format!("/api/users/{}", seg(&name)),
                &json!({"password": new_password, "tags": tags}),
            )?;
            println!("user '{name}' added");
            Ok(())
        }
        Cmd::DeleteUser { name } => {
            api.delete(&format!("/api/users/{}", seg(&name)), &[])?;
            println!("user '{name}' deleted");
            Ok(())
        }
        Cmd::ChangePassword { name, new_password } => {
            let u = api.get(&format!("/api/users/{}", seg(&name)))?;
            api.put(
                &format!("/api/users/{}", seg(&name)),
                &json!({"password": new_password, "tags": u["tags"]}),
            )?;
            println!("password of user '{name}' changed");
            Ok(())
        }
        Cmd::SetUserTags { name, tags } => {
            let u = api.get(&format!("/api/users/{}", seg(&name)))?;
            api.put(
                &format!("/api/users/{}", seg(&name)),
                &json!({"password_hash": u["password_hash"], "hashing_algorithm": u["hashing_algorithm"], "tags": tags}),
            )?;
            println!("tags of user '{name}' set to [{}]", tags.join(", "));
            Ok(())
        }
        Cmd::SetPermissions {
            username,
            configure,
            write,
            read,
        } => {
            api.put(
                &format!("/api/permissions/{v}/{}", seg(&username)),
                &json!({"configure": configure, "write": write, "read": read}),
            )?;
            println!("permissions of user '{username}' in vhost '{vhost}' set");
            Ok(())
        }
        Cmd::ClearPermissions { username } => {
            api.delete(&format!("/api/permissions/{v}/{}", seg(&username)), &[])?;
            println!("permissions of user '{username}' in vhost '{vhost}' cleared");
            Ok(())
        }
        Cmd::AddVhost { name } => {
            api.put(&format!("/api/vhosts/{}", seg(&name)), &json!({}))?;
            println!("vhost '{name}' added");
            Ok(())
        }
        Cmd::SetPolicy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        }
        | Cmd::SetOperatorPolicy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        } => {
            let (path, what) = match operator {
                true => ("operator-policies", "operator policy"),
                false => ("policies", "policy"),
            };
            let def = json_object("the definition", &definition)?;
            api.put(
                &format!("/api/{path}/{v}/{}", seg(&name)),
                &json!({"pattern": pattern, "definition": def, "priority": priority, "apply-to": apply_to}),
            )?;
            println!("{what} '{name}' set in vhost '{vhost}'");
            Ok(())
        }
        Cmd::ClearPolicy { name } | Cmd::ClearOperatorPolicy { name } => {
            let (path, what) = match operator {
                true => ("operator-policies", "operator policy"),
                false => ("policies", "policy"),
            };
            api.delete(&format!("/api/{path}/{v}/{}", seg(&name)), &[])?;
            println!("{what} '{name}' cleared in vhost '{vhost}'");
            Ok(())
        }
        Cmd::ListPolicies { format } => run(Cli {
            cmd: Cmd::List {
                what: ListWhat::Policies,
                format,
            },
            ..cli
        }),
        Cmd::ListOperatorPolicies { format } => run(Cli {
            cmd: Cmd::List {
                what: ListWhat::OperatorPolicies,
                format,
            },
            ..cli
        }),
        Cmd::ListVhostLimits { format } => run(Cli {
            cmd: Cmd::List {
                what: ListWhat::VhostLimits,
                format,
            },
            ..cli
        }),
        Cmd::ListUserLimits { format } => run(Cli {
            cmd: Cmd::List {
                what: ListWhat::UserLimits,
                format,
            },
            ..cli
        }),
        Cmd::SetVhostLimits { definition } => {
            let want = json_object("the limits", &definition)?;
            replace_limits(
                &api,
                &format!("/api/vhost-limits/{v}"),
                &format!("/api/vhost-limits/{v}"),
                &want,
            )?;
            println!("limits of vhost '{vhost}' set");
            Ok(())
        }
        Cmd::ClearVhostLimits => {
            replace_limits(
                &api,
                &format!("/api/vhost-limits/{v}"),
                &format!("/api/vhost-limits/{v}"),
                &serde_json::Map::new(),
            )?;
            println!("limits of vhost '{vhost}' cleared");
            Ok(())
        }
        Cmd::SetUserLimits {
            username,
            definition,
        } => {
            let want = json_object("the limits", &definition)?;
            let u = seg(&username);
            replace_limits(
                &api,
                &format!("/api/user-limits/{u}"),
                &format!("/api/user-limits/{u}"),
                &want,
            )?;
            println!("limits of user '{username}' set");
            Ok(())
        }
        Cmd::ClearUserLimits { username } => {
            let u = seg(&username);
            replace_limits(
                &api,
                &format!("/api/user-limits/{u}"),
                &format!("/api/user-limits/{u}"),
                &serde_json::Map::new(),
            )?;
            println!("limits of user '{username}' cleared");
            Ok(())
        }
        Cmd::DeleteVhost { name } => {
            api.delete(&format!("/api/vhosts/{}", seg(&name)), &[])?;
            println!("vhost '{name}' deleted");
            Ok(())
        }
        Cmd::Export { file } => {
            let defs = api.get("/api/definitions")?;
            let text = serde_json::to_string_pretty(&defs).map_err(|e| e.to_string())?;
            if file == "-" {
                println!("{text}");
            } else {
                std::fs::write(&file, text + "\n")
                    .map_err(|e| format!("cannot write {file}: {e}"))?;
                eprintln!("definitions exported to {file}");
            }
            Ok(())
        }
        Cmd::Import { file } => {
            let mut text = String::new();
            if file == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| e.to_string())?;
            } else {
                text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read {file}: {e}"))?;
            }
            let defs: Value =
                serde_json::from_str(&text).map_err(|e| format!("{file} is not JSON: {e}"))?;
            let answer = api.post("/api/definitions", &defs)?;
            println!("definitions imported from {file}");
            if let Some(note) = answer.get("note").and_then(|n| n.as_str()) {
                println!("note: {note}");
            }
            Ok(())
        }
        Cmd::CloseConnection { name, reason } => {
            let headers: Vec<(&str, &str)> =
                reason.iter().map(|r| ("X-Reason", r.as_str())).collect();
            api.delete(&format!("/api/connections/{}", seg(&name)), &headers)?;
            println!("connection '{name}' closed");
            Ok(())
        }
        Cmd::Get {
            queue,
            count,
            ack,
            format,
        } => {
            let ackmode = if ack {
                "ack_requeue_false"
            } else {
                "ack_requeue_true"
            };
            let msgs = api.post(
                &format!("/api/queues/{v}/{}/get", seg(&queue)),
                &json!({"count": count, "ackmode": ackmode, "encoding": "auto", "truncate": 50000}),
            )?;
            match format {
                Format::Json => print_json(&msgs),
                Format::Table => print_table(
                    msgs.as_array().map(|a| a.as_slice()).unwrap_or(&[]),
                    &[
                        ("exchange", "/exchange"),
                        ("routing_key", "/routing_key"),
                        ("redelivered", "/redelivered"),
                        ("bytes", "/payload_bytes"),
                        ("encoding", "/payload_encoding"),
                        ("payload", "/payload"),
                    ],
                ),
            }
            Ok(())
        }
        Cmd::Publish {
            exchange,
            routing_key,
            body,
            persistent,
            content_type,
            message_id,
        } => {
            let mut props = serde_json::Map::new();
            if persistent {
                props.insert("delivery_mode".into(), json!(2));
            }
            if let Some(c) = content_type {
                props.insert("content_type".into(), json!(c));
            }
            if let Some(m) = message_id {
                props.insert("message_id".into(), json!(m));
            }
            let ex = if exchange.is_empty() {
                "amq.default".to_owned()
            } else {
                exchange
            };
            let r = api.post(
                &format!("/api/exchanges/{v}/{}/publish", seg(&ex)),
                &json!({"properties": props, "routing_key": routing_key, "payload": body, "payload_encoding": "string"}),
            )?;
            if r["routed"].as_bool() == Some(true) {
                println!("published (routed)");
                Ok(())
            } else {
                Err("message published but not routed to any queue".into())
            }
        }
        Cmd::Move {
            src,
            dst,
            max,
            amqp_url,
            prefetch,
            idle_timeout,
        } => {
            let url = match amqp_url {
                Some(u) => u,
                None => http::amqp_url_from(&cli.url, &cli.user, &cli.password, &vhost),
            };
            let moved = shovel::move_messages(shovel::MoveOpts {
                amqp_url: url,
                src: src.clone(),
                dst: dst.clone(),
                max,
                prefetch: prefetch.max(1),
                idle_timeout: std::time::Duration::from_secs(idle_timeout.max(1)),
            })?;
            println!("moved {moved} messages from '{src}' to '{dst}'");
            Ok(())
        }
    }
}

fn status(api: &Api) -> Result<(), String> {
    let o = api.get("/api/overview")?;
    let (code, health) = api.request("GET", "/api/health/checks/alarms", None, &[])?;
    println!(
        "{} {} (RabbitMQ {} compatible) on node {}",
        cell(o.get("product_name")),
        cell(o.get("product_version")),
        cell(o.get("rabbitmq_version")),
        cell(o.get("node"))
    );
    let listeners: Vec<String> = o["listeners"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    format!(
                        "{} {}:{}",
                        cell(l.get("protocol")),
                        cell(l.get("ip_address")),
                        cell(l.get("port"))
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!("listeners:   {}", listeners.join(", "));
    let t = &o["object_totals"];
    println!(
        "objects:     {} connections, {} channels, {} queues, {} exchanges, {} consumers",
        cell(t.get("connections")),
        cell(t.get("channels")),
        cell(t.get("queues")),
        cell(t.get("exchanges")),
        cell(t.get("consumers"))
    );
    let q = &o["queue_totals"];
    println!(
        "messages:    {} ({} ready, {} unacknowledged)",
        cell(q.get("messages")),
        cell(q.get("messages_ready")),
        cell(q.get("messages_unacknowledged"))
    );
    let m = &o["message_stats"];
    println!(
        "rates:       publish {}/s, deliver {}/s, ack {}/s",
        cell(m.pointer("/publish_details/rate")),
        cell(m.pointer("/deliver_get_details/rate")),
        cell(m.pointer("/ack_details/rate"))
    );
    let s = &o["store"];
    println!(
        "store:       {} segments, {} bytes on disk, {} bytes used",
        cell(s.get("segments")),
        cell(s.get("disk_bytes")),
        cell(s.get("bytes_used"))
    );
    if code == 200 {
        println!("alarms:      none");
    } else {
        println!("alarms:      {}", cell(health.get("reason")));
    }
    Ok(())
}
