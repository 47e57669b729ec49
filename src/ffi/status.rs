//! `lbagent_status`: what a director is told, as C sees it (the agent's own view from
//! `lbagent_get_status`, or an answer received by `lbagent_probe` and the prober).

use std::ffi::{c_char, c_int, c_uint};

use super::copy_to_c_buffer;
use crate::client::Answer;
use crate::status::Status;

/// The status a director is told, as filled in by `lbagent_get_status` (the agent's own view)
/// and by `lbagent_probe` / `lbagent_prober_receive` (an answer received over the network).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct lbagent_status {
    /// One of `LBAGENT_STATE_*`.
    pub state: c_int,
    /// One of `LBAGENT_REASON_*`: why the state is what it is.
    pub reason: c_int,
    /// Percent of the weight configured on the director, 0..=100.
    pub weight_pct: c_uint,
    /// Work in progress, as reported with `lbagent_set_load`.
    pub in_use: u32,
    /// Capacity, as reported with `lbagent_set_load` (0 = unknown).
    pub capacity: u32,
    /// Increases whenever the state, reason, weight or message answered changes.
    pub generation: u32,
    /// Milliseconds since the state answered last changed (saturating).
    pub since_ms: u32,
    /// Random at each `lbagent_start`; probers see a restart as a new id.
    pub instance_id: u64,
    /// The reason text, UTF-8, NUL-terminated.
    pub message: [c_char; 256],
}

impl lbagent_status {
    /// All zero: the status of a probe that got no answer.
    pub(super) const EMPTY: lbagent_status = lbagent_status {
        state: 0,
        reason: 0,
        weight_pct: 0,
        in_use: 0,
        capacity: 0,
        generation: 0,
        since_ms: 0,
        instance_id: 0,
        message: [0; 256],
    };

    /// The agent's own view.
    pub(super) fn from_status(status: &Status, instance_id: u64) -> lbagent_status {
        let mut filled = lbagent_status {
            state: status.state as c_int,
            reason: status.reason as c_int,
            weight_pct: c_uint::from(status.weight_pct),
            in_use: status.in_use,
            capacity: status.capacity,
            generation: status.generation,
            since_ms: status.since_ms,
            instance_id,
            ..lbagent_status::EMPTY
        };
        filled.set_message(status.message.as_bytes());
        filled
    }

    /// An answer received over the network.
    pub(super) fn from_answer(a: &Answer) -> lbagent_status {
        let mut filled = lbagent_status {
            state: a.state as c_int,
            reason: c_int::from(a.reason_code),
            weight_pct: a.weight_pct.into(),
            in_use: a.in_use,
            capacity: a.capacity,
            generation: a.generation,
            since_ms: a.since_ms,
            instance_id: a.instance_id,
            ..lbagent_status::EMPTY
        };
        filled.set_message(a.message.as_bytes());
        filled
    }

    fn set_message(&mut self, text: &[u8]) {
        let len = self.message.len();
        // SAFETY: `self.message` is a buffer of `len` writable bytes.
        unsafe { copy_to_c_buffer(text, self.message.as_mut_ptr(), len) };
    }
}
