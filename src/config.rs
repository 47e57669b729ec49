//! The agent's configuration: `key=value` pairs separated by whitespace, `;` or newlines.
//! `#` at the start of a word comments out the rest of its line.
//!
//! Every error names the key and the value (or the word) that is wrong.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::guard::allow::{AllowList, Cidr};
use crate::keys::KeySet;
use crate::log::LogTarget;
use crate::state::State;
use crate::status::WorkerPolicy;
use crate::status::shaping::{LoadConfig, ShapingConfig};

/// The agent's UDP port when `listen` is not given (also `lbagent-probe`'s default).
pub const DEFAULT_PORT: u16 = 4950;

/// Longest service name, in bytes (the wire format's limit).
pub const MAX_SERVICE_NAME: usize = 64;

/// Most services one agent tracks.
pub const MAX_SERVICES: usize = 256;

/// Most listen addresses one agent binds.
pub const MAX_LISTEN: usize = 16;

/// Every key the parser knows, for error messages and docs.
pub const KEYS: &[&str] = &[
    "listen",
    "services",
    "watchdog_ms",
    "start_timeout_ms",
    "initial_state",
    "allow",
    "text",
    "key_file",
    "auth",
    "auth_window_ms",
    "rate_per_source",
    "rate_global",
    "rate_per_key",
    "ipv6_source_prefix",
    "conn_per_source",
    "log",
    "log_drops_ms",
    "workers",
    "worker_timeout_ms",
    "worker_policy",
    "tcp_agent",
    "agent_maxconn",
    "http",
    "subscribe",
    "max_subscribers",
    "drain_window_ms",
    "drain_confirm",
    "slow_start_ms",
    "slow_start_min_pct",
    "weight_from_load",
    "weight_load_smoothing_ms",
    "weight_load_dead_band_pct",
    "weight_load_rate_pct",
    "control",
    "state_file",
    "systemd",
    "metrics",
];

/// Most worker watchdog slots.
pub const MAX_WORKERS: usize = 4096;

// Fixed limits of the TCP endpoints (`tcp_agent=`, `http=`).

/// Most open connections per kind (agent-check, HTTP).
pub const MAX_CONNECTIONS: usize = 64;
/// How long the agent waits for HAProxy's `agent-send` line before answering about the whole
/// server. Only when `services=` names a service: otherwise there is nothing to ask about and
/// the answer is written as soon as the connection is accepted.
pub const AGENT_SEND_WAIT: Duration = Duration::from_millis(100);
/// How long an HTTP client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the answer may take to be written.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the agent reads after its answer, waiting for the peer to close.
pub const LINGER: Duration = Duration::from_secs(1);
/// Once half the connection slots of a kind are taken, the longest an idle connection of that
/// kind (waiting for its request, or lingering after its answer) is kept.
pub const SCARCE_WAIT: Duration = Duration::from_millis(100);

/// Who may subscribe to pushed changes (`subscribe=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscribeMode {
    /// Only probes sealed with a valid key (the default; without `key_file`, nobody).
    Auth,
    /// Sealed probes, and unsealed ones from a source in `allow=` (which must be set).
    Allow,
    /// Nobody: every probe is answered, none subscribes.
    Off,
}

/// Most subscriptions `max_subscribers=` may ask for.
pub const MAX_SUBSCRIBERS: u32 = 4096;

/// Whether protocol v1 probes must be authenticated (only with `key_file`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Authenticated probes get sealed answers; unauthenticated ones get plain answers.
    Optional,
    /// Unauthenticated probes get ERROR 2 and nothing else; text mode is off unless `text=on`.
    Required,
}

/// A parsed configuration. `Config::default()` is what an empty string gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// UDP addresses to answer probes on (`listen=ADDR:PORT[,ADDR:PORT...]`).
    pub listen: Vec<SocketAddr>,
    /// Service names a probe may ask about besides the whole server (`services=a,b`).
    pub services: Vec<String>,
    /// Heartbeat deadline in milliseconds; 0 disables the watchdog (`watchdog_ms=`). The
    /// watchdog is armed when the start ends: at the first heartbeat, or when the whole
    /// server's state leaves STARTING, whichever comes first.
    pub watchdog_ms: u32,
    /// How long the start may last, in milliseconds; 0: no limit (`start_timeout_ms=`). A
    /// start that has not ended by then (no heartbeat, and the whole server still STARTING)
    /// answers DOWN, reason "start timed out", until it ends.
    pub start_timeout_ms: u32,
    /// The whole server's state at start (`initial_state=`), `starting` by default.
    pub initial_state: State,
    /// Prober source networks that get answers (`allow=`); empty admits everyone.
    pub allow: AllowList,
    /// Whether datagrams that are not protocol v1 get a text line (`text=on|off`). On by
    /// default, except with `auth=required`, where it must be turned on explicitly.
    pub text: bool,
    /// Keys for authenticated probes (`key_file=PATH`).
    pub keys: Option<KeySet>,
    /// With keys: whether probes must be authenticated (`auth=optional|required`, default
    /// required).
    pub auth: AuthMode,
    /// How far a probe's timestamp may be from the agent's clock, either way
    /// (`auth_window_ms=`, default 30000).
    pub auth_window_ms: u32,
    /// Probes per second answered for one source address; 0 = no limit
    /// (`rate_per_source=`, default 100).
    pub rate_per_source: u32,
    /// Probes per second answered in all; 0 = no limit (`rate_global=`, default 10000).
    pub rate_global: u32,
    /// Sealed probes per second answered for one key, whatever their source; 0 = no limit
    /// (`rate_per_key=`, default 1000). A sealed probe with a valid MAC is charged here
    /// instead of to `rate_per_source` and `rate_global`.
    pub rate_per_key: u32,
    /// IPv6 sources that share this many leading bits are one source for the per-source rate
    /// limit and connection share (`ipv6_source_prefix=`, 1..=128, default 64).
    pub ipv6_source_prefix: u8,
    /// Connections one source may hold open on each TCP listener kind
    /// (`conn_per_source=`, 1..=64, default 16).
    pub conn_per_source: u32,
    /// Where the agent logs (`log=none|stderr|syslog`, default none).
    pub log: LogTarget,
    /// At most one summary of dropped datagrams per this many milliseconds
    /// (`log_drops_ms=`, default 10000).
    pub log_drops_ms: u32,
    /// Worker watchdog slots (`workers=N`, default 0: none).
    pub workers: usize,
    /// A registered worker that has not heart-beaten for this long is stalled
    /// (`worker_timeout_ms=`, default 5000).
    pub worker_timeout_ms: u32,
    /// What stalled workers do (`worker_policy=any|proportional`, default any).
    pub worker_policy: WorkerPolicy,
    /// TCP addresses that answer HAProxy's agent-check (`tcp_agent=`); empty: off.
    pub tcp_agent: Vec<SocketAddr>,
    /// Whether the agent-check line carries `maxconn:N`, N the capacity the host reports
    /// (`agent_maxconn=on|off`, default off; nothing is sent while the capacity is 0).
    pub agent_maxconn: bool,
    /// TCP addresses that answer HTTP health checks (`http=`); empty: off.
    pub http: Vec<SocketAddr>,
    /// Who may subscribe to pushed changes (`subscribe=auth|allow|off`, default auth).
    pub subscribe: SubscribeMode,
    /// Most live subscriptions at once (`max_subscribers=`, default 64).
    pub max_subscribers: u32,
    /// A drain is complete once every prober seen within this many milliseconds has been
    /// told (`drain_window_ms=`, default 10000).
    pub drain_window_ms: u32,
    /// Non-serving answers in a row each of those probers must have had
    /// (`drain_confirm=`, default 2: keepalived acts after its retry).
    pub drain_confirm: u32,
    /// Slow start after a return to service, in milliseconds; 0 = off (`slow_start_ms=`).
    pub slow_start_ms: u32,
    /// Where slow start begins, in percent of the host's weight (`slow_start_min_pct=`,
    /// default 10).
    pub slow_start_min_pct: u8,
    /// Whether the weight follows the spare capacity the host reports (`weight_from_load=`,
    /// default off).
    pub weight_from_load: bool,
    /// Time constant of the smoothing of the spare capacity (`weight_load_smoothing_ms=`,
    /// default 15000).
    pub weight_load_smoothing_ms: u32,
    /// The weight moves only when the smoothed spare capacity is further than this from it
    /// (`weight_load_dead_band_pct=`, default 5).
    pub weight_load_dead_band_pct: u8,
    /// The weight moves at most this many percent per second (`weight_load_rate_pct=`,
    /// default 5).
    pub weight_load_rate_pct: u32,
    /// The operator's control socket (`control=PATH`, a Unix socket; `lbagent-ctl`); off by
    /// default.
    pub control: Option<PathBuf>,
    /// Where the operator's override is kept across restarts (`state_file=PATH`, with
    /// `control=`); off by default.
    pub state_file: Option<PathBuf>,
    /// Tell systemd about the server (`systemd=on`: READY=1, STATUS=, WATCHDOG=1, STOPPING=1
    /// through `NOTIFY_SOCKET`); off by default.
    pub systemd: bool,
    /// Answer `GET /metrics` on the `http=` listener in Prometheus' text format
    /// (`metrics=on`); off by default.
    pub metrics: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))],
            services: Vec::new(),
            watchdog_ms: 0,
            start_timeout_ms: 0,
            initial_state: State::Starting,
            allow: AllowList::default(),
            text: true,
            keys: None,
            auth: AuthMode::Required,
            auth_window_ms: 30_000,
            rate_per_source: 100,
            rate_global: 10_000,
            rate_per_key: 1_000,
            ipv6_source_prefix: 64,
            conn_per_source: 16,
            log: LogTarget::None,
            log_drops_ms: 10_000,
            workers: 0,
            worker_timeout_ms: 5_000,
            worker_policy: WorkerPolicy::Any,
            tcp_agent: Vec::new(),
            agent_maxconn: false,
            http: Vec::new(),
            subscribe: SubscribeMode::Auth,
            max_subscribers: 64,
            drain_window_ms: 10_000,
            drain_confirm: 2,
            slow_start_ms: 0,
            slow_start_min_pct: 10,
            weight_from_load: false,
            weight_load_smoothing_ms: 15_000,
            weight_load_dead_band_pct: 5,
            weight_load_rate_pct: 5,
            control: None,
            state_file: None,
            systemd: false,
            metrics: false,
        }
    }
}

/// A configuration error; its text names the key and the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(message: String) -> ConfigError {
        ConfigError { message }
    }

    pub(crate) fn bad_value(key: &str, value: &str, expected: impl fmt::Display) -> ConfigError {
        ConfigError::new(format!(
            "config: invalid value \"{value}\" for key \"{key}\": {expected}"
        ))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses a configuration string. Keys not given keep their defaults.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (key, value) in words(text)? {
            if seen.iter().any(|(k, _)| *k == key) {
                return Err(ConfigError::new(format!(
                    "config: duplicate key \"{key}\" (second value \"{value}\")"
                )));
            }
            seen.push((key, value));
            config.apply(key, value)?;
        }
        let given = |key: &str| seen.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        if let Some(auth) = given("auth") {
            if config.keys.is_none() {
                return Err(ConfigError::bad_value(
                    "auth",
                    auth,
                    "authentication needs key_file=PATH",
                ));
            }
        }
        // Text lines cannot carry a MAC: with auth=required they are off unless asked for.
        if config.keys.is_some() && config.auth == AuthMode::Required && given("text").is_none() {
            config.text = false;
        }
        if let Some(on) = given("agent_maxconn").filter(|_| config.tcp_agent.is_empty()) {
            return Err(ConfigError::bad_value(
                "agent_maxconn",
                on,
                "maxconn is sent on the agent-check line: it needs tcp_agent=ADDR:PORT",
            ));
        }
        if let Some(mode) = given("subscribe").filter(|_| config.subscribe == SubscribeMode::Allow)
        {
            if config.allow.networks().is_empty() {
                return Err(ConfigError::bad_value(
                    "subscribe",
                    mode,
                    "unsealed subscriptions are taken only from sources in allow=: set allow=CIDR",
                ));
            }
        }
        if let Some(on) = given("metrics").filter(|_| config.metrics && config.http.is_empty()) {
            return Err(ConfigError::bad_value(
                "metrics",
                on,
                "GET /metrics is served on the HTTP endpoint: it needs http=ADDR:PORT",
            ));
        }
        if let Some(path) = given("state_file").filter(|_| config.control.is_none()) {
            return Err(ConfigError::bad_value(
                "state_file",
                path,
                "it keeps what operators set through the control socket: it needs control=PATH",
            ));
        }
        config.check_tcp_addresses()?;
        if let Some(pct) = given("slow_start_min_pct").filter(|_| config.slow_start_ms == 0) {
            return Err(ConfigError::bad_value(
                "slow_start_min_pct",
                pct,
                "the ramp's start needs a ramp: set slow_start_ms too",
            ));
        }
        for key in [
            "weight_load_smoothing_ms",
            "weight_load_dead_band_pct",
            "weight_load_rate_pct",
        ] {
            if let Some(value) = given(key).filter(|_| !config.weight_from_load) {
                return Err(ConfigError::bad_value(
                    key,
                    value,
                    "tunes weight_from_load: set weight_from_load=on too",
                ));
            }
        }
        Ok(config)
    }

    /// How the weight directors see is shaped (slow start, weight from load).
    pub fn shaping(&self) -> ShapingConfig {
        ShapingConfig {
            slow_start_ms: self.slow_start_ms,
            slow_start_min_pct: self.slow_start_min_pct,
            load: self.weight_from_load.then_some(LoadConfig {
                smoothing_ms: self.weight_load_smoothing_ms,
                dead_band_pct: self.weight_load_dead_band_pct,
                max_rate_pct: self.weight_load_rate_pct,
            }),
        }
    }

    /// True when unauthenticated probes get only ERROR 2.
    pub fn auth_required(&self) -> bool {
        self.keys.is_some() && self.auth == AuthMode::Required
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "listen" => self.listen = parse_listen(key, value)?,
            "services" => self.services = parse_services(key, value)?,
            "watchdog_ms" => {
                self.watchdog_ms = value.parse().map_err(|_| {
                    ConfigError::bad_value(
                        key,
                        value,
                        "expected milliseconds 0..=4294967295 (0 turns the watchdog off)",
                    )
                })?
            }
            "start_timeout_ms" => {
                self.start_timeout_ms =
                    parse_number(key, value, 0, "milliseconds (0: a start may take any time)")?
            }
            "initial_state" => {
                self.initial_state = match State::from_name(value) {
                    Some(s) if s.settable() && s != State::Stopping => s,
                    _ => {
                        return Err(ConfigError::bad_value(
                            key,
                            value,
                            "expected starting, up, drain, maint or down",
                        ));
                    }
                }
            }
            "allow" => self.allow = parse_allow(key, value)?,
            "text" => self.text = parse_switch(key, value)?,
            "key_file" => {
                let keys = KeySet::load(std::path::Path::new(value))
                    .map_err(|why| ConfigError::bad_value(key, value, why))?;
                self.keys = Some(keys);
            }
            "auth" => {
                self.auth = match value {
                    "optional" => AuthMode::Optional,
                    "required" => AuthMode::Required,
                    _ => {
                        return Err(ConfigError::bad_value(
                            key,
                            value,
                            "expected optional or required",
                        ));
                    }
                }
            }
            "auth_window_ms" => self.auth_window_ms = parse_number(key, value, 1, "milliseconds")?,
            "rate_per_source" => {
                self.rate_per_source =
                    parse_number(key, value, 0, "probes per second (0 = no limit)")?
            }
            "rate_global" => {
                self.rate_global = parse_number(key, value, 0, "probes per second (0 = no limit)")?
            }
            "rate_per_key" => {
                self.rate_per_key =
                    parse_number(key, value, 0, "sealed probes per second (0 = no limit)")?
            }
            "ipv6_source_prefix" => {
                self.ipv6_source_prefix = match value.parse::<u8>() {
                    Ok(n @ 1..=128) => n,
                    _ => {
                        return Err(ConfigError::bad_value(
                            key,
                            value,
                            "expected a prefix length 1..=128 (128: every IPv6 address alone)",
                        ));
                    }
                }
            }
            "conn_per_source" => {
                self.conn_per_source = match value.parse::<u32>() {
                    Ok(n) if (1..=MAX_CONNECTIONS as u32).contains(&n) => n,
                    _ => {
                        return Err(ConfigError::bad_value(
                            key,
                            value,
                            format_args!(
                                "expected connections 1..={MAX_CONNECTIONS} (of the {MAX_CONNECTIONS} of each listener kind)"
                            ),
                        ));
                    }
                }
            }
            "log_drops_ms" => self.log_drops_ms = parse_number(key, value, 1, "milliseconds")?,
            "workers" => {
                self.workers = parse_number(key, value, 0, "a number of worker slots")? as usize;
                if self.workers > MAX_WORKERS {
                    return Err(ConfigError::bad_value(
                        key,
                        value,
                        format_args!("at most {MAX_WORKERS} worker slots"),
                    ));
                }
            }
            "worker_timeout_ms" => {
                self.worker_timeout_ms = parse_number(key, value, 1, "milliseconds")?
            }
            "worker_policy" => {
                self.worker_policy = match value {
                    "any" => WorkerPolicy::Any,
                    "proportional" => WorkerPolicy::Proportional,
                    _ => {
                        return Err(ConfigError::bad_value(
                            key,
                            value,
                            "expected any or proportional",
                        ));
                    }
                }
            }
            "log" => {
                self.log = match value {
                    "none" => LogTarget::None,
                    "stderr" => LogTarget::Stderr,
                    "syslog" => LogTarget::Syslog,
                    _ => {
                        return Err(ConfigError::bad_value(
                            key,
                            value,
                            "expected none, stderr or syslog",
                        ));
                    }
                }
            }
            "tcp_agent" => self.tcp_agent = parse_tcp(key, value)?,
            "agent_maxconn" => self.agent_maxconn = parse_switch(key, value)?,
            "http" => self.http = parse_tcp(key, value)?,
            "subscribe" => {
                self.subscribe = match value {
                    "auth" => SubscribeMode::Auth,
                    "allow" => SubscribeMode::Allow,
                    "off" => SubscribeMode::Off,
                    _ => {
                        return Err(ConfigError::bad_value(
                            key,
                            value,
                            "expected auth, allow or off",
                        ));
                    }
                }
            }
            "max_subscribers" => {
                self.max_subscribers = parse_number(key, value, 0, "a number of subscriptions")?;
                if self.max_subscribers > MAX_SUBSCRIBERS {
                    return Err(ConfigError::bad_value(
                        key,
                        value,
                        format_args!("at most {MAX_SUBSCRIBERS}"),
                    ));
                }
            }
            "drain_window_ms" => {
                self.drain_window_ms = parse_number(key, value, 1, "milliseconds")?
            }
            "drain_confirm" => {
                self.drain_confirm = parse_number(key, value, 1, "a number of answers")?
            }
            "slow_start_ms" => {
                self.slow_start_ms = parse_number(key, value, 0, "milliseconds (0 = off)")?
            }
            "slow_start_min_pct" => self.slow_start_min_pct = parse_percent(key, value, 0, 100)?,
            "weight_from_load" => self.weight_from_load = parse_switch(key, value)?,
            "weight_load_smoothing_ms" => {
                self.weight_load_smoothing_ms =
                    parse_number(key, value, 0, "milliseconds (0 = no smoothing)")?
            }
            "weight_load_dead_band_pct" => {
                self.weight_load_dead_band_pct = parse_percent(key, value, 0, 50)?
            }
            "weight_load_rate_pct" => {
                self.weight_load_rate_pct = u32::from(parse_percent(key, value, 1, 100)?)
            }
            "control" => self.control = Some(parse_path(key, value)?),
            "state_file" => self.state_file = Some(parse_path(key, value)?),
            "systemd" => self.systemd = parse_switch(key, value)?,
            "metrics" => self.metrics = parse_switch(key, value)?,
            _ => {
                let hint = match nearest(key, KEYS) {
                    Some(known) => format!("did you mean \"{known}\"? "),
                    None => String::new(),
                };
                return Err(ConfigError::new(format!(
                    "config: unknown key \"{key}\" (value \"{value}\"); {hint}known keys: {}",
                    KEYS.join(", ")
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    /// `tcp_agent` and `http` are both TCP: the same address cannot serve both.
    fn check_tcp_addresses(&self) -> Result<(), ConfigError> {
        for addr in &self.http {
            if addr.port() != 0 && self.tcp_agent.contains(addr) {
                return Err(ConfigError::bad_value(
                    "http",
                    &addr.to_string(),
                    "already used by tcp_agent (both are TCP: give them different ports)",
                ));
            }
        }
        Ok(())
    }
}

/// Splits the text into `(key, value)` pairs, dropping comments (also reads the prober's
/// options, `client::ProbeOptions::with_config`).
pub(crate) fn words(text: &str) -> Result<Vec<(&str, &str)>, ConfigError> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for line in text.lines() {
        for word in line.split(|c: char| c.is_whitespace() || c == ';') {
            if word.is_empty() {
                continue;
            }
            if word.starts_with('#') {
                break;
            }
            match word.split_once('=') {
                Some((key, value)) if !key.is_empty() => pairs.push((key, value)),
                // A word without `=` right after a pair: most likely a value with a space.
                None if !word.is_empty() && pairs.last().is_some() => {
                    let (key, value) = pairs[pairs.len() - 1];
                    return Err(ConfigError::new(format!(
                        "config: expected key=value, got \"{word}\" after {key}={value}: a value \
                         cannot contain a space (lists are comma-separated: {key}={value},{word})"
                    )));
                }
                _ => {
                    return Err(ConfigError::new(format!(
                        "config: expected key=value, got \"{word}\""
                    )));
                }
            }
        }
    }
    Ok(pairs)
}

/// The known word closest to `word` (a typo's likely meaning): at most two edits away and
/// fewer edits than half of the word's length (`listn`: `listen`), or else a known word that
/// `word` begins (`watchdog`: `watchdog_ms`).
pub(crate) fn nearest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= 2 && *d * 2 < word.chars().count().max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
        .or_else(|| {
            let mut longer = known
                .iter()
                .filter(|k| word.len() >= 4 && k.starts_with(word));
            match (longer.next(), longer.next()) {
                (Some(k), None) => Some(*k),
                _ => None,
            }
        })
}

/// Levenshtein distance: the fewest insertions, deletions and substitutions of characters
/// that turn `a` into `b`.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// An absolute path (`control=`, `state_file=`).
fn parse_path(key: &str, value: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(value);
    if !path.is_absolute() || value.ends_with('/') {
        return Err(ConfigError::bad_value(
            key,
            value,
            "expected the absolute path of a file, such as /run/myserver/lbagent.sock",
        ));
    }
    Ok(path)
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim)
}

fn parse_listen(key: &str, value: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    parse_addresses(key, value, "0.0.0.0:4950 or [::]:4950")
}

/// `tcp_agent=` and `http=`: like `listen=`, but empty (the default) turns the listener off.
fn parse_tcp(key: &str, value: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    if value.is_empty() {
        return Ok(Vec::new());
    }
    parse_addresses(
        key,
        value,
        if key == "http" {
            "0.0.0.0:8080 or [::]:8080"
        } else {
            "0.0.0.0:4951 or [::]:4951"
        },
    )
}

fn parse_addresses(key: &str, value: &str, example: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for item in list(value) {
        let addr: SocketAddr = item.parse().map_err(|_| {
            ConfigError::bad_value(
                key,
                item,
                format_args!("expected IPv4 ADDR:PORT or [IPv6]:PORT, for example {example}"),
            )
        })?;
        if addrs.contains(&addr) {
            return Err(ConfigError::bad_value(key, item, "listed twice"));
        }
        addrs.push(addr);
    }
    if addrs.len() > MAX_LISTEN {
        return Err(ConfigError::bad_value(
            key,
            value,
            format_args!("at most {MAX_LISTEN} addresses"),
        ));
    }
    Ok(addrs)
}

/// True for the bytes a service name may contain.
pub fn is_service_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-.:/@+".contains(&b)
}

fn parse_services(key: &str, value: &str) -> Result<Vec<String>, ConfigError> {
    let mut names: Vec<String> = Vec::new();
    if value.is_empty() {
        return Ok(names);
    }
    for name in list(value) {
        if name.is_empty() || name.len() > MAX_SERVICE_NAME {
            return Err(ConfigError::bad_value(
                key,
                name,
                format_args!("a service name is 1..={MAX_SERVICE_NAME} bytes"),
            ));
        }
        if !name.bytes().all(is_service_name_byte) {
            return Err(ConfigError::bad_value(
                key,
                name,
                "a service name uses only letters, digits and _ - . : / @ +",
            ));
        }
        if names.iter().any(|n| n == name) {
            return Err(ConfigError::bad_value(key, name, "listed twice"));
        }
        names.push(name.to_owned());
    }
    if names.len() > MAX_SERVICES {
        return Err(ConfigError::bad_value(
            key,
            value,
            format_args!("at most {MAX_SERVICES} services"),
        ));
    }
    Ok(names)
}

fn parse_allow(key: &str, value: &str) -> Result<AllowList, ConfigError> {
    let networks = list(value)
        .map(|item| Cidr::parse(item).map_err(|why| ConfigError::bad_value(key, item, why)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AllowList::new(networks))
}

fn parse_number(key: &str, value: &str, min: u32, unit: &str) -> Result<u32, ConfigError> {
    match value.parse::<u32>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(ConfigError::bad_value(
            key,
            value,
            format_args!("expected {unit}, {min}..=4294967295"),
        )),
    }
}

fn parse_percent(key: &str, value: &str, min: u8, max: u8) -> Result<u8, ConfigError> {
    match value.parse::<u8>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::bad_value(
            key,
            value,
            format_args!("expected percent, {min}..={max}"),
        )),
    }
}

fn parse_switch(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(ConfigError::bad_value(key, value, "expected on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_in_the_readme_table() {
        let readme = include_str!("../README.md");
        for key in KEYS {
            assert!(
                readme.contains(&format!("\n| `{key}` |")),
                "README's configuration table has no row for {key:?}"
            );
        }
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen, vec!["0.0.0.0:4950".parse().unwrap()]);
        assert_eq!(c.initial_state, State::Starting);
        assert!(c.text);
        assert_eq!(c.watchdog_ms, 0);
    }

    #[test]
    fn every_key() {
        let c = Config::parse(
            "listen=127.0.0.1:4950,[::1]:4951; services=game,chat\n\
             watchdog_ms=3000 initial_state=UP   # a comment=ignored\n\
             allow=10.0.0.0/8,::1 text=off tcp_agent=0.0.0.0:4951,[::]:4951 http=127.0.0.1:8080",
        )
        .unwrap();
        assert_eq!(
            c.tcp_agent,
            vec![
                "0.0.0.0:4951".parse().unwrap(),
                "[::]:4951".parse().unwrap()
            ]
        );
        assert_eq!(c.http, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(
            c.listen,
            vec![
                "127.0.0.1:4950".parse().unwrap(),
                "[::1]:4951".parse().unwrap()
            ]
        );
        assert_eq!(c.services, vec!["game", "chat"]);
        assert_eq!(c.watchdog_ms, 3000);
        assert_eq!(c.initial_state, State::Up);
        assert_eq!(c.allow.networks().len(), 2);
        assert!(!c.text);
    }

    #[test]
    fn errors_name_key_and_value() {
        let e = err("watchdog_ms=soon");
        assert!(
            e.contains("\"watchdog_ms\"") && e.contains("\"soon\""),
            "{e}"
        );
        let e = err("lisen=1.2.3.4:5");
        assert!(
            e.contains("unknown key \"lisen\"") && e.contains("listen"),
            "{e}"
        );
        assert!(
            err("listn=127.0.0.1:0").starts_with(
                "config: unknown key \"listn\" (value \"127.0.0.1:0\"); did you mean \"listen\"? \
                 known keys: listen, services,"
            ),
            "{}",
            err("listn=127.0.0.1:0")
        );
        assert!(err("watchdog=3000").contains("did you mean \"watchdog_ms\"?"));
        assert!(err("watchdogms=3000").contains("did you mean \"watchdog_ms\"?"));
        assert!(err("servics=a").contains("did you mean \"services\"?"));
        // Nothing close: no guess.
        assert!(!err("colour=blue").contains("did you mean"));
        let e = err("start_timeout_ms=later");
        assert!(
            e.contains("\"start_timeout_ms\"") && e.contains("\"later\""),
            "{e}"
        );
        let e = err("text=on text=off");
        assert!(e.contains("duplicate key \"text\""), "{e}");
        let e = err("listen=localhost:4950");
        assert!(
            e.contains("\"listen\"") && e.contains("\"localhost:4950\""),
            "{e}"
        );
        let e = err("listen=127.0.0.1:1,127.0.0.1:1");
        assert!(e.contains("listed twice"), "{e}");
        let e = err("services=a,b c");
        assert!(e.contains("expected key=value, got \"c\""), "{e}");
        assert_eq!(
            err("services=my game"),
            "config: expected key=value, got \"game\" after services=my: a value cannot \
             contain a space (lists are comma-separated: services=my,game)"
        );
        let e = err("listen=127.0.0.1:0 watchdog_ms=1 500");
        assert!(
            e.contains("\"500\" after watchdog_ms=1") && e.contains("cannot contain a space"),
            "{e}"
        );
        // Not after a pair: nothing to blame but the word.
        assert_eq!(err("game"), "config: expected key=value, got \"game\"");
        let e = err("services=bad!name");
        assert!(e.contains("\"bad!name\""), "{e}");
        let e = err(&format!("services={}", "x".repeat(65)));
        assert!(e.contains("1..=64"), "{e}");
        let e = err("initial_state=stopping");
        assert!(
            e.contains("\"initial_state\"") && e.contains("\"stopping\""),
            "{e}"
        );
        let e = err("initial_state=unknown");
        assert!(e.contains("\"unknown\""), "{e}");
        let e = err("allow=10.0.0.1/8");
        assert!(e.contains("\"allow\"") && e.contains("host bits"), "{e}");
        let e = err("text=maybe");
        assert!(e.contains("\"text\"") && e.contains("\"maybe\""), "{e}");
        let e = err("=x");
        assert!(e.contains("expected key=value"), "{e}");
        let e = err("tcp_agent=*:4951");
        assert!(
            e.contains("\"tcp_agent\"") && e.contains("\"*:4951\"") && e.contains("4951"),
            "{e}"
        );
        let e = err("http=127.0.0.1:80,127.0.0.1:80");
        assert!(e.contains("\"http\"") && e.contains("listed twice"), "{e}");
        let e = err("http=[::1]:8080 tcp_agent=[::1]:8080");
        assert!(
            e.contains("\"http\"") && e.contains("\"[::1]:8080\"") && e.contains("tcp_agent"),
            "{e}"
        );
        assert!(Config::parse("http=127.0.0.1:0 tcp_agent=127.0.0.1:0").is_ok());
        let e = err("agent_maxconn=on");
        assert!(
            e.contains("\"agent_maxconn\"") && e.contains("needs tcp_agent"),
            "{e}"
        );
        let e = err("agent_maxconn=sometimes tcp_agent=127.0.0.1:0");
        assert!(
            e.contains("\"sometimes\"") && e.contains("on or off"),
            "{e}"
        );
        assert!(
            Config::parse("agent_maxconn=on tcp_agent=127.0.0.1:0")
                .unwrap()
                .agent_maxconn
        );
        let e = err("watchdog_ms=-1");
        assert!(e.contains("\"-1\""), "{e}");
        let e = err("auth=required");
        assert!(e.contains("\"auth\"") && e.contains("key_file"), "{e}");
        let e = err("key_file=/nonexistent/keys");
        assert!(
            e.contains("\"key_file\"") && e.contains("/nonexistent/keys"),
            "{e}"
        );
        let e = err("rate_global=lots");
        assert!(
            e.contains("\"rate_global\"") && e.contains("\"lots\""),
            "{e}"
        );
        let e = err("ipv6_source_prefix=0");
        assert!(
            e.contains("\"ipv6_source_prefix\"") && e.contains("\"0\"") && e.contains("1..=128"),
            "{e}"
        );
        let e = err("conn_per_source=65");
        assert!(
            e.contains("\"conn_per_source\"") && e.contains("\"65\"") && e.contains("1..=64"),
            "{e}"
        );
        let e = err("rate_per_key=-3");
        assert!(
            e.contains("\"rate_per_key\"") && e.contains("\"-3\""),
            "{e}"
        );
        let c = Config::parse("rate_per_key=0 ipv6_source_prefix=128 conn_per_source=1").unwrap();
        assert_eq!(
            (c.rate_per_key, c.ipv6_source_prefix, c.conn_per_source),
            (0, 128, 1)
        );
        let e = err("auth_window_ms=0");
        assert!(e.contains("\"auth_window_ms\""), "{e}");
        let e = err("log=loud");
        assert!(e.contains("\"log\"") && e.contains("stderr"), "{e}");
        let e = err("drain_window_ms=0");
        assert!(
            e.contains("\"drain_window_ms\"") && e.contains("\"0\""),
            "{e}"
        );
        let e = err("drain_confirm=twice");
        assert!(
            e.contains("\"drain_confirm\"") && e.contains("\"twice\""),
            "{e}"
        );
        let e = err("slow_start_ms=5s");
        assert!(
            e.contains("\"slow_start_ms\"") && e.contains("\"5s\""),
            "{e}"
        );
        let e = err("slow_start_ms=5000 slow_start_min_pct=101");
        assert!(
            e.contains("\"slow_start_min_pct\"") && e.contains("\"101\"") && e.contains("0..=100"),
            "{e}"
        );
        let e = err("slow_start_min_pct=20");
        assert!(
            e.contains("\"slow_start_min_pct\"") && e.contains("slow_start_ms"),
            "{e}"
        );
        let e = err("weight_from_load=sometimes");
        assert!(
            e.contains("\"weight_from_load\"") && e.contains("on or off"),
            "{e}"
        );
        let e = err("weight_load_dead_band_pct=5");
        assert!(
            e.contains("\"weight_load_dead_band_pct\"") && e.contains("weight_from_load=on"),
            "{e}"
        );
        let e = err("weight_from_load=on weight_load_dead_band_pct=60");
        assert!(e.contains("\"60\"") && e.contains("0..=50"), "{e}");
        let e = err("weight_from_load=on weight_load_rate_pct=0");
        assert!(
            e.contains("\"weight_load_rate_pct\"") && e.contains("1..=100"),
            "{e}"
        );
        let e = err("weight_from_load=on weight_load_smoothing_ms=-1");
        assert!(
            e.contains("\"weight_load_smoothing_ms\"") && e.contains("\"-1\""),
            "{e}"
        );
        let c = Config::parse(
            "drain_window_ms=3000 drain_confirm=3 slow_start_ms=8000 slow_start_min_pct=5 \
             weight_from_load=on weight_load_smoothing_ms=0 weight_load_dead_band_pct=0 \
             weight_load_rate_pct=100",
        )
        .unwrap();
        assert_eq!(
            (
                c.drain_window_ms,
                c.drain_confirm,
                c.slow_start_ms,
                c.slow_start_min_pct
            ),
            (3000, 3, 8000, 5)
        );
        assert!(c.weight_from_load);
        assert_eq!(
            (
                c.weight_load_smoothing_ms,
                c.weight_load_dead_band_pct,
                c.weight_load_rate_pct
            ),
            (0, 0, 100)
        );
    }

    #[test]
    fn nearest_known_word() {
        assert_eq!(edit_distance("listn", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("één", "eén"), 1);
        assert_eq!(nearest("listn", KEYS), Some("listen"));
        assert_eq!(nearest("htp", KEYS), Some("http"));
        assert_eq!(nearest("worker", KEYS), Some("workers"));
        assert_eq!(nearest("xyz", KEYS), None);
        assert_eq!(nearest("a", KEYS), None);
        assert_eq!(nearest("start_timeout", KEYS), Some("start_timeout_ms"));
        // "auth" is a key itself; "work" begins two keys: no single guess.
        assert_eq!(nearest("work", KEYS), None);
    }

    #[test]
    fn operations_keys() {
        let c = Config::parse(
            "http=127.0.0.1:0 metrics=on systemd=on control=/run/x/ctl.sock state_file=/var/lib/x/s",
        )
        .unwrap();
        assert!(c.metrics && c.systemd);
        assert_eq!(
            c.control.as_deref(),
            Some(std::path::Path::new("/run/x/ctl.sock"))
        );
        assert_eq!(Config::default().control, None);
        let e = err("control=run/ctl.sock");
        assert!(
            e.contains("\"control\"") && e.contains("absolute path"),
            "{e}"
        );
        let e = err("control=/run/x/");
        assert!(e.contains("\"/run/x/\""), "{e}");
        let e = err("metrics=on");
        assert!(e.contains("\"metrics\"") && e.contains("http="), "{e}");
        assert!(Config::parse("metrics=off").is_ok());
        let e = err("systemd=maybe");
        assert!(e.contains("\"systemd\"") && e.contains("on or off"), "{e}");
        let e = err("state_file=/var/lib/x/s");
        assert!(
            e.contains("\"state_file\"") && e.contains("control="),
            "{e}"
        );
    }

    #[test]
    fn start_timeout() {
        assert_eq!(Config::default().start_timeout_ms, 0);
        let c = Config::parse("start_timeout_ms=30000 watchdog_ms=3000").unwrap();
        assert_eq!((c.start_timeout_ms, c.watchdog_ms), (30000, 3000));
    }

    #[test]
    fn key_file_and_auth() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lbagent-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, "1 000102030405060708090a0b0c0d0e0f\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(&format!("key_file={}", path.display()));
        assert!(e.contains("chmod 600") && e.contains("644"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse(&format!("key_file={}", path.display())).unwrap();
        assert!(c.auth_required());
        assert!(!c.text, "text lines carry no MAC: off unless asked for");
        let c = Config::parse(&format!("key_file={} text=on", path.display())).unwrap();
        assert!(c.text);
        let c = Config::parse(&format!("key_file={} auth=optional", path.display())).unwrap();
        assert!(!c.auth_required() && c.text);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
