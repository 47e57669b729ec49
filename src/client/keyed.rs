//! Probes sealed with a key: what a probe that got no valid answer reports.

use std::time::Duration;

use super::ProbeError;
use crate::keys::Key;

/// What to report when a probe sealed with `key` (None: unsealed) ends without a valid answer
/// (its deadline passed, or the agent answered the unsealed diagnostic): why an answer was
/// refused, if one was; a wrong key if the agent answered the diagnostic (`agent_alive`); else
/// a timeout. Shared by `probe` and
/// the non-blocking `Prober`.
pub(crate) fn no_valid_answer(
    key: Option<&Key>,
    timeout: Duration,
    rejected: Option<String>,
    agent_alive: bool,
) -> ProbeError {
    match (rejected, key) {
        (Some(why), _) => ProbeError::WrongKey(why),
        (None, Some(key)) if agent_alive => ProbeError::WrongKey(format!(
            "the agent answers unauthenticated probes but dropped the sealed one (key id {} unknown there, another secret, or clocks further apart than its auth_window_ms)",
            key.id()
        )),
        _ => ProbeError::Timeout(timeout),
    }
}
