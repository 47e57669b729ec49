//! The agent's configuration: `key=value` pairs separated by whitespace, `;` or newlines.
//! `#` at the start of a word comments out the rest of its line.
//!
//! Every error names the key and the value (or the word) that is wrong.

use std::fmt;
use std::net::SocketAddr;

use crate::allow::{AllowList, Cidr};
use crate::state::State;

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
    "initial_state",
    "allow",
    "text",
];

/// A parsed configuration. `Config::default()` is what an empty string gives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// UDP addresses to answer probes on (`listen=ADDR:PORT[,ADDR:PORT...]`).
    pub listen: Vec<SocketAddr>,
    /// Service names a probe may ask about besides the whole server (`services=a,b`).
    pub services: Vec<String>,
    /// Heartbeat deadline in milliseconds; 0 disables the watchdog (`watchdog_ms=`).
    pub watchdog_ms: u32,
    /// The whole server's state at start (`initial_state=`), `starting` by default.
    pub initial_state: State,
    /// Prober source networks that get answers (`allow=`); empty admits everyone.
    pub allow: AllowList,
    /// Whether datagrams that are not protocol v1 get a text line (`text=on|off`).
    pub text: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))],
            services: Vec::new(),
            watchdog_ms: 0,
            initial_state: State::Starting,
            allow: AllowList::default(),
            text: true,
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

    fn bad_value(key: &str, value: &str, expected: impl fmt::Display) -> ConfigError {
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
        let mut seen: Vec<&str> = Vec::new();
        for (key, value) in words(text)? {
            if seen.contains(&key) {
                return Err(ConfigError::new(format!(
                    "config: duplicate key \"{key}\" (second value \"{value}\")"
                )));
            }
            seen.push(key);
            config.apply(key, value)?;
        }
        Ok(config)
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
            _ => {
                return Err(ConfigError::new(format!(
                    "config: unknown key \"{key}\" (value \"{value}\"); known keys: {}",
                    KEYS.join(", ")
                )));
            }
        }
        Ok(())
    }
}

/// Splits the text into `(key, value)` pairs, dropping comments (also reads the prober's
/// options, `client::ProbeOptions::with_config`).
pub(crate) fn words(text: &str) -> Result<Vec<(&str, &str)>, ConfigError> {
    let mut pairs = Vec::new();
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

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim)
}

fn parse_listen(key: &str, value: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for item in list(value) {
        let addr: SocketAddr = item.parse().map_err(|_| {
            ConfigError::bad_value(
                key,
                item,
                "expected IPv4 ADDR:PORT or [IPv6]:PORT, for example 0.0.0.0:4950 or [::]:4950",
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
             allow=10.0.0.0/8,::1 text=off",
        )
        .unwrap();
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
        let e = err("watchdog_ms=-1");
        assert!(e.contains("\"-1\""), "{e}");
    }
}
