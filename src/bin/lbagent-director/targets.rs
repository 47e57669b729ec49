//! The targets file: one real server per line.
//!
//! ```text
//! # name   address              optional fields
//! rs5      10.0.0.5                                  # port 4950, the whole server
//! rs6      10.0.0.6:4950        service=game
//! rs7      [fd00::7]:4950       service=game key=/etc/lbagent/director.key
//! rs8      10.0.0.8             weight=100           # also writes rs8.weight
//! rs9      10.0.0.8             haproxy=be_app/rs9@/run/haproxy/admin.sock
//! ```
//!
//! Fields are separated by spaces or tabs; `#` at the start of a field comments out the rest
//! of the line. The name is also the name of the track file. Addresses are numeric (a
//! director must not depend on DNS to take a server out). Every error names the file, the
//! line, the field and its text.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lbagent::client;
use lbagent::config::{MAX_SERVICE_NAME, is_service_name_byte};
use lbagent::keys::Key;

use crate::haproxy::Sink;
/// The suffix of a target's weight file (`weight=N`).
pub const WEIGHT_SUFFIX: &str = ".weight";
/// keepalived's (and IPVS's) largest weight.
pub const MAX_WEIGHT: u32 = 65_535;

/// Most targets one file may hold (memory stays bounded whatever the file says).
pub const MAX_TARGETS: usize = 100_000;
/// Longest target name (it is a file name).
pub const MAX_NAME: usize = 64;

/// One real server to poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Names the track file `TRACK_DIR/NAME`.
    pub name: String,
    /// The agent's address.
    pub addr: SocketAddr,
    /// The service asked about; empty for the whole server.
    pub service: String,
    /// A key file for authenticated probes (`key=PATH`): its first key seals this target's
    /// probes (see [`load_keys`]).
    pub key: Option<PathBuf>,
    /// HAProxy servers fed through the runtime API (`haproxy=BACKEND/SERVER@SOCKET`, any
    /// number).
    pub haproxy: Vec<Sink>,
    /// The real server's weight in keepalived (`weight=N`): the poller then also writes
    /// `NAME.weight`, the amount keepalived adds to that weight for the agent's percent.
    pub weight: Option<u32>,
    /// The line it was read from.
    pub line: usize,
}

impl Target {
    /// True when `other` probes the same thing the same way (a reload keeps its state).
    pub fn same_check(&self, other: &Target) -> bool {
        self.addr == other.addr && self.service == other.service && self.key == other.key
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.addr)?;
        if !self.service.is_empty() {
            write!(f, " service {}", self.service)?;
        }
        Ok(())
    }
}

/// A targets file error: `FILE:LINE: field N (what) "text": why`.
#[derive(Debug, PartialEq, Eq)]
pub struct TargetsError(pub String);

impl fmt::Display for TargetsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads and parses a targets file, and loads the key files it names.
pub fn load(path: &Path) -> Result<(Vec<Target>, Keys), TargetsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TargetsError(format!("{}: cannot read: {e}", path.display())))?;
    let origin = path.display().to_string();
    let targets = parse(&origin, &text)?;
    let keys = load_keys(&origin, &targets)?;
    Ok((targets, keys))
}

/// The keys of the targets, by key file (each file read once).
pub type Keys = HashMap<PathBuf, Arc<Key>>;

/// Loads each key file named by `targets` (its first key signs); an error names the line.
pub fn load_keys(origin: &str, targets: &[Target]) -> Result<Keys, TargetsError> {
    let mut keys = Keys::new();
    for t in targets {
        let Some(path) = &t.key else {
            continue;
        };
        if keys.contains_key(path) {
            continue;
        }
        let key = client::load_key(path, None).map_err(|why| {
            TargetsError(format!(
                "{origin}:{}: key=\"{}\": {why}",
                t.line,
                path.display()
            ))
        })?;
        keys.insert(path.clone(), key);
    }
    Ok(keys)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(['.', '-'])
        && !name.ends_with(WEIGHT_SUFFIX)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Parses the text of a targets file; `origin` names it in errors.
pub fn parse(origin: &str, text: &str) -> Result<Vec<Target>, TargetsError> {
    let mut targets: Vec<Target> = Vec::new();
    let mut names = std::collections::HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let err = |field: usize, what: &str, text: &str, why: &str| {
            TargetsError(format!(
                "{origin}:{number}: field {field} ({what}) \"{text}\": {why}"
            ))
        };
        let fields: Vec<&str> = line
            .split([' ', '\t'])
            .filter(|f| !f.is_empty())
            .take_while(|f| !f.starts_with('#'))
            .collect();
        let Some((&name, rest)) = fields.split_first() else {
            continue;
        };
        if !valid_name(name) {
            return Err(err(
                1,
                "name",
                name,
                "a name is 1..=64 letters, digits, '_', '.' or '-', not starting with '.' or '-' nor ending in \".weight\" (it names the track file)",
            ));
        }
        if let Some(first) = names.get(name) {
            return Err(err(
                1,
                "name",
                name,
                &format!("already used on line {first}"),
            ));
        }
        let Some((&address, options)) = rest.split_first() else {
            return Err(TargetsError(format!(
                "{origin}:{number}: field 2 (address) is missing after the name \"{name}\""
            )));
        };
        let addr = client::parse_ip_target(address, lbagent::DEFAULT_PORT)
            .ok()
            .filter(|a| a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast())
            .ok_or_else(|| {
                err(
                    2,
                    "address",
                    address,
                    "expected IPv4[:PORT], [IPv6]:PORT or a bare IPv6 address (numeric, port 1..=65535, default 4950)",
                )
            })?;
        let mut target = Target {
            name: name.to_string(),
            addr,
            service: String::new(),
            key: None,
            haproxy: Vec::new(),
            weight: None,
            line: number,
        };
        let mut seen: Vec<&str> = Vec::new();
        for (i, &field) in options.iter().enumerate() {
            let position = i + 3;
            let Some((key, value)) = field.split_once('=') else {
                return Err(err(
                    position,
                    "option",
                    field,
                    "expected service=NAME, key=PATH, weight=N or haproxy=BACKEND/SERVER@SOCKET",
                ));
            };
            if seen.contains(&key) && key != "haproxy" {
                return Err(err(position, key, value, "given twice"));
            }
            seen.push(key);
            match key {
                "service" => {
                    if value.is_empty()
                        || value.len() > MAX_SERVICE_NAME
                        || !value.bytes().all(is_service_name_byte)
                    {
                        return Err(err(
                            position,
                            "service",
                            value,
                            "a service name is 1..=64 letters, digits or _ - . : / @ +",
                        ));
                    }
                    target.service = value.to_string();
                }
                "key" => {
                    if !value.starts_with('/') {
                        return Err(err(
                            position,
                            "key",
                            value,
                            "expected the absolute path of a key file",
                        ));
                    }
                    target.key = Some(PathBuf::from(value));
                }
                "haproxy" => {
                    let sink = value
                        .split_once('@')
                        .filter(|(server, socket)| {
                            socket.starts_with('/')
                                && server.split_once('/').is_some_and(|(b, s)| {
                                    !b.is_empty() && !s.is_empty() && !s.contains('/')
                                })
                                && server.bytes().all(|b| b.is_ascii_graphic())
                        })
                        .map(|(server, socket)| Sink {
                            socket: PathBuf::from(socket),
                            server: server.to_string(),
                        })
                        .ok_or_else(|| {
                            err(
                                position,
                                "haproxy",
                                value,
                                "expected BACKEND/SERVER@/absolute/path/of/the/stats/socket",
                            )
                        })?;
                    if target.haproxy.contains(&sink) {
                        return Err(err(position, "haproxy", value, "given twice"));
                    }
                    target.haproxy.push(sink);
                }
                "weight" => {
                    let weight = value
                        .parse::<u32>()
                        .ok()
                        .filter(|w| (1..=MAX_WEIGHT).contains(w))
                        .ok_or_else(|| {
                            err(
                                position,
                                "weight",
                                value,
                                "expected the real server's weight in keepalived, 1..=65535",
                            )
                        })?;
                    target.weight = Some(weight);
                }
                _ => {
                    return Err(err(
                        position,
                        "option",
                        field,
                        "unknown option; expected service=NAME, key=PATH, weight=N or haproxy=BACKEND/SERVER@SOCKET",
                    ));
                }
            }
        }
        if targets.len() == MAX_TARGETS {
            return Err(TargetsError(format!(
                "{origin}:{number}: more than {MAX_TARGETS} targets"
            )));
        }
        names.insert(name, number);
        targets.push(target);
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_addresses_and_options() {
        let text = "\
# a comment line
rs5 10.0.0.5
rs6\t10.0.0.6:7000   service=game   # trailing comment
rs7 [fd00::7]:4950 service=game key=/etc/lbagent/director.key

rs8 fd00::8 key=/k service=a.b weight=250
rs9 10.0.0.9 haproxy=be/rs9@/run/a.sock haproxy=be2/rs9@/run/b.sock
";
        let t = parse("t.conf", text).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(
            t[4].haproxy,
            vec![
                Sink {
                    socket: PathBuf::from("/run/a.sock"),
                    server: "be/rs9".into()
                },
                Sink {
                    socket: PathBuf::from("/run/b.sock"),
                    server: "be2/rs9".into()
                }
            ]
        );
        assert_eq!(t[0].addr, "10.0.0.5:4950".parse().unwrap());
        assert_eq!(
            (t[0].service.as_str(), &t[0].key, t[0].line),
            ("", &None, 2)
        );
        assert_eq!(t[1].addr.port(), 7000);
        assert_eq!(t[1].service, "game");
        assert_eq!(t[2].addr, "[fd00::7]:4950".parse().unwrap());
        assert_eq!(t[2].key, Some(PathBuf::from("/etc/lbagent/director.key")));
        assert_eq!(t[3].addr, "[fd00::8]:4950".parse().unwrap());
        assert_eq!(t[3].service, "a.b");
        assert_eq!((t[0].weight, t[3].weight), (None, Some(250)));
        assert_eq!(t[2].to_string(), "rs7 [fd00::7]:4950 service game");
    }

    #[test]
    fn errors_name_the_line_the_field_and_the_text() {
        let cases = [
            ("rs5 10.0.0.x", "t.conf:1: field 2 (address) \"10.0.0.x\""),
            (
                "rs5 db.example:4950",
                "t.conf:1: field 2 (address) \"db.example:4950\"",
            ),
            ("rs5 10.0.0.5:0", "field 2 (address) \"10.0.0.5:0\""),
            ("rs5 0.0.0.0", "field 2 (address) \"0.0.0.0\""),
            ("rs5", "t.conf:1: field 2 (address) is missing"),
            (".rs5 10.0.0.5", "field 1 (name) \".rs5\""),
            ("rs/5 10.0.0.5", "field 1 (name) \"rs/5\""),
            ("rs5 10.0.0.5 service=", "field 3 (service) \"\""),
            ("rs5 10.0.0.5 service=a|b", "field 3 (service) \"a|b\""),
            ("rs5 10.0.0.5 key=relative", "field 3 (key) \"relative\""),
            (
                "rs5 10.0.0.5 weigth=3",
                "field 3 (option) \"weigth=3\": unknown option",
            ),
            ("rs5 10.0.0.5 weight=0", "field 3 (weight) \"0\""),
            ("rs5 10.0.0.5 weight=65536", "field 3 (weight) \"65536\""),
            ("rs5 10.0.0.5 weight=lots", "field 3 (weight) \"lots\""),
            ("rs5.weight 10.0.0.5", "field 1 (name) \"rs5.weight\""),
            ("rs5 10.0.0.5 game", "field 3 (option) \"game\""),
            ("rs5 10.0.0.5 haproxy=be/s1", "field 3 (haproxy) \"be/s1\""),
            (
                "rs5 10.0.0.5 haproxy=s1@/run/s",
                "field 3 (haproxy) \"s1@/run/s\"",
            ),
            (
                "rs5 10.0.0.5 haproxy=be/s1@run/s",
                "field 3 (haproxy) \"be/s1@run/s\"",
            ),
            (
                "rs5 10.0.0.5 haproxy=be/s@/r haproxy=be/s@/r",
                "field 4 (haproxy) \"be/s@/r\": given twice",
            ),
            (
                "rs5 10.0.0.5 service=a service=b",
                "field 4 (service) \"b\": given twice",
            ),
            (
                "rs5 10.0.0.5\n\n# x\nrs5 10.0.0.6",
                "t.conf:4: field 1 (name) \"rs5\": already used on line 1",
            ),
        ];
        for (text, want) in cases {
            let e = parse("t.conf", text).unwrap_err();
            assert!(e.0.contains(want), "{text:?}: {e}");
        }
        assert!(parse("t.conf", &"x".repeat(65)).is_err());
        assert_eq!(parse("t.conf", "# nothing\n\n").unwrap(), vec![]);
    }
}
