//! From an answer (or its absence) to an exit code, for each checker's convention. Pure
//! functions: the exit-code matrix is unit-tested here and over real sockets in
//! tests/probe_modes.rs.

use lbagent::State;
use lbagent::client::{Answer, ProbeError};

/// Whose exit-code convention applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 0 serving, 1 not serving, 2 no valid answer (also ldirectord's external check and
    /// `--json`).
    Plain,
    /// keepalived MISC_CHECK: 0 serving, 1 anything else.
    Keepalived,
    /// keepalived MISC_CHECK with `misc_dynamic`: 1 down, 2 + weight when serving, 2 (weight 0)
    /// when draining.
    KeepalivedDynamic {
        /// The weight at 100 %, 1..=253.
        max_weight: u8,
    },
    /// Nagios/Icinga plugin: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Nagios,
}

/// Plain: serving.
pub const EXIT_SERVING: u8 = 0;
/// Plain: an answer, not serving.
pub const EXIT_NOT_SERVING: u8 = 1;
/// Plain: no valid answer.
pub const EXIT_NO_ANSWER: u8 = 2;
/// Plain: usage error (BSD sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// keepalived `misc_dynamic`: exit codes from 2 up set the weight (exit - 2), so every failure
/// must exit 1.
pub const KEEPALIVED_DOWN: u8 = 1;
/// keepalived `misc_dynamic` reads exit 2 + W as IPVS weight W, up to 253.
pub const MAX_DYNAMIC_WEIGHT: u8 = 253;

/// Nagios plugin return codes.
pub const NAGIOS_OK: u8 = 0;
/// Drain, maintenance, up at weight 0: deliberately out.
pub const NAGIOS_WARNING: u8 = 1;
/// Starting, down, stopping, no answer (timeout, refused, unreachable, or with a key only
/// replies that did not authenticate).
pub const NAGIOS_CRITICAL: u8 = 2;
/// The plugin cannot tell: unknown service, not an agent, version mismatch, usage error.
pub const NAGIOS_UNKNOWN: u8 = 3;

/// The percent an agent reports scaled to 0..=`max_weight`; any serving percent gets at least
/// weight 1 (weight 0 would take no new connections).
pub fn dynamic_weight(weight_pct: u8, max_weight: u8) -> u8 {
    if weight_pct == 0 {
        return 0;
    }
    let scaled = (u32::from(weight_pct.min(100)) * u32::from(max_weight) + 50) / 100;
    scaled.clamp(1, u32::from(max_weight)) as u8
}

/// True for an answer that asks to keep existing connections but take no new ones: DRAIN, or
/// UP at weight 0.
pub fn is_draining(a: &Answer) -> bool {
    a.state == State::Drain || (a.state == State::Up && a.weight_pct == 0)
}

/// The Nagios status for a result.
pub fn nagios_status(result: &Result<Answer, ProbeError>) -> u8 {
    match result {
        Ok(a) if a.is_serving() => NAGIOS_OK,
        Ok(a) if is_draining(a) || a.state == State::Maint => NAGIOS_WARNING,
        Ok(a) => match a.state {
            State::Starting | State::Down | State::Stopping => NAGIOS_CRITICAL,
            _ => NAGIOS_UNKNOWN,
        },
        Err(
            ProbeError::Timeout(_)
            | ProbeError::Refused
            | ProbeError::Unreachable(_)
            | ProbeError::Unauthenticated { .. },
        ) => NAGIOS_CRITICAL,
        Err(_) => NAGIOS_UNKNOWN,
    }
}

/// The Nagios word for a status code.
pub fn nagios_word(code: u8) -> &'static str {
    match code {
        NAGIOS_OK => "OK",
        NAGIOS_WARNING => "WARNING",
        NAGIOS_CRITICAL => "CRITICAL",
        _ => "UNKNOWN",
    }
}

/// The exit code for a probe's result in `mode`.
pub fn exit_code(mode: Mode, result: &Result<Answer, ProbeError>) -> u8 {
    match mode {
        Mode::Plain => match result {
            Ok(a) if a.is_serving() => EXIT_SERVING,
            Ok(_) => EXIT_NOT_SERVING,
            Err(ProbeError::BadTarget(_)) => EXIT_USAGE,
            Err(_) => EXIT_NO_ANSWER,
        },
        Mode::Keepalived => match result {
            Ok(a) if a.is_serving() => 0,
            _ => KEEPALIVED_DOWN,
        },
        Mode::KeepalivedDynamic { max_weight } => match result {
            Ok(a) if a.is_serving() => 2 + dynamic_weight(a.weight_pct, max_weight),
            Ok(a) if is_draining(a) => 2,
            _ => KEEPALIVED_DOWN,
        },
        Mode::Nagios => nagios_status(result),
    }
}

/// The exit code of a usage error in `mode`: what the checker reads as "down" or "cannot
/// tell", never a weight.
pub fn usage_exit_code(mode: Mode) -> u8 {
    match mode {
        Mode::Plain => EXIT_USAGE,
        Mode::Keepalived | Mode::KeepalivedDynamic { .. } => KEEPALIVED_DOWN,
        Mode::Nagios => NAGIOS_UNKNOWN,
    }
}

/// The mode named on a command line, read before (and whatever) the full parse says, so that
/// even a usage error exits with a code the checker reads as a failure.
pub fn mode_in_args<S: AsRef<str>>(args: &[S]) -> Mode {
    let has = |flag: &str| args.iter().any(|a| a.as_ref() == flag);
    if has("--keepalived-dynamic") {
        Mode::KeepalivedDynamic { max_weight: 100 }
    } else if has("--keepalived") {
        Mode::Keepalived
    } else if has("--nagios") {
        Mode::Nagios
    } else {
        Mode::Plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn answer(state: State, weight_pct: u8) -> Result<Answer, ProbeError> {
        Ok(Answer {
            state,
            reason: None,
            reason_code: 0,
            weight_pct,
            in_use: 0,
            capacity: 0,
            generation: 1,
            since_ms: 0,
            instance_id: 1,
            message: String::new(),
            drain: None,
            rtt: Duration::ZERO,
            subscribed: false,
            pushed: false,
        })
    }

    #[test]
    fn dynamic_weights() {
        assert_eq!(dynamic_weight(100, 100), 100);
        assert_eq!(dynamic_weight(50, 100), 50);
        assert_eq!(dynamic_weight(100, 253), 253);
        assert_eq!(dynamic_weight(50, 10), 5);
        assert_eq!(dynamic_weight(1, 10), 1, "serving never rounds to weight 0");
        assert_eq!(dynamic_weight(0, 10), 0);
        for max in 1..=253 {
            for pct in 0..=100 {
                let w = dynamic_weight(pct, max);
                assert!(w <= max);
                assert_eq!(w == 0, pct == 0);
            }
        }
    }

    #[test]
    fn dynamic_exit_codes() {
        let mode = Mode::KeepalivedDynamic { max_weight: 10 };
        assert_eq!(exit_code(mode, &answer(State::Up, 100)), 12);
        assert_eq!(exit_code(mode, &answer(State::Up, 50)), 7);
        assert_eq!(exit_code(mode, &answer(State::Up, 0)), 2);
        assert_eq!(exit_code(mode, &answer(State::Drain, 100)), 2);
        for state in [
            State::Starting,
            State::Maint,
            State::Down,
            State::Stopping,
            State::Unknown,
        ] {
            assert_eq!(exit_code(mode, &answer(state, 100)), 1, "{state}");
        }
        assert_eq!(exit_code(mode, &Err(ProbeError::Refused)), 1);
        assert_eq!(usage_exit_code(mode), 1);
    }

    #[test]
    fn mode_from_raw_args() {
        assert_eq!(mode_in_args(&["x", "--nagios"]), Mode::Nagios);
        assert_eq!(
            mode_in_args(&["--keepalived-dynamic", "--bogus"]),
            Mode::KeepalivedDynamic { max_weight: 100 }
        );
        assert_eq!(mode_in_args(&["--keepalived"]), Mode::Keepalived);
        assert_eq!(mode_in_args::<&str>(&[]), Mode::Plain);
    }
}
