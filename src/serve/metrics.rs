//! `GET /metrics` on the HTTP endpoint (`metrics=on`), built on the monitor thread: a snapshot
//! of every target's status, then the exposition of `proto/metrics.rs` into a buffer of its
//! own (the answer is far larger than a health answer: up to about 400 KB with 256 services
//! of 64-byte names).
//!
//! Bounds: at most [`AT_ONCE`] answers are being written at once, each from its own buffer,
//! allocated the first time it is needed (sized for this agent's services, `max_len`) and then
//! reused; a scrape beyond that is answered 503 with `Retry-After: 1`. Nothing here touches
//! the host's calls: the board is read as a probe reads it.

use std::io::Cursor;

use crate::counters::Counter;
use crate::proto::http::{self, METRICS_HEAD_ROOM};
use crate::proto::metrics::{self, Facts};
use crate::shared::Shared;
use crate::status::{Status, Target};
use crate::sys::clock;

/// Answers being written at once.
pub(crate) const AT_ONCE: usize = 2;

/// The buffers of `/metrics` answers, owned by the monitor thread.
pub(crate) struct Metrics {
    on: bool,
    buffers: Vec<Box<[u8]>>,
    in_use: [bool; AT_ONCE],
    /// The snapshot of one answer: the whole server, then each service.
    statuses: Vec<Status>,
}

impl Metrics {
    pub(crate) fn new(on: bool) -> Metrics {
        Metrics {
            on,
            buffers: Vec::new(),
            in_use: [false; AT_ONCE],
            statuses: Vec::new(),
        }
    }

    /// Whether `GET /metrics` is served (`metrics=on`).
    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    /// Builds an answer; returns the buffer it is in and the range to send, or `None` when
    /// every buffer is in use.
    pub(crate) fn answer(&mut self, head: bool, shared: &Shared) -> Option<(usize, usize, usize)> {
        let index = self.acquire()?;
        let board = &shared.board;
        let targets = 1 + board.service_names().count();
        let size = METRICS_HEAD_ROOM + metrics::max_len(targets);
        while self.buffers.len() <= index {
            self.buffers.push(vec![0u8; size].into_boxed_slice());
        }
        let now = clock::now_ms();
        self.statuses.clear();
        self.statuses.push(board.status(Target::Server, now));
        self.statuses
            .extend((0..targets - 1).map(|i| board.status(Target::Service(i), now)));
        let heartbeat_at = board.heartbeat_at();
        let operator = board
            .operator_override()
            .filter(|o| o.until.is_none_or(|u| now < u))
            .map(|o| (o.state, o.until.map(|u| u - now)));
        let facts = Facts {
            version: crate::VERSION,
            instance_id: shared.instance_id,
            heartbeat_age_ms: (heartbeat_at != 0).then(|| now.saturating_sub(heartbeat_at)),
            watchdog_ms: board.watchdog_ms(),
            operator,
        };
        let statuses = &self.statuses;
        let buffer = &mut self.buffers[index];
        let mut body = Cursor::new(&mut buffer[METRICS_HEAD_ROOM..]);
        // Sized for the longest exposition (`max_len`, tested): should that ever be wrong,
        // a cut answer goes out, with the length of what was written.
        let _ = metrics::write(
            &mut body,
            &facts,
            &|each| {
                let names = std::iter::once("").chain(board.service_names());
                for (name, status) in names.zip(statuses) {
                    each(name, status)?;
                }
                Ok(())
            },
            &|c: Counter| shared.counters.get(c),
        );
        let body_len = body.position() as usize;
        let mut head_buf = [0u8; METRICS_HEAD_ROOM];
        let head_len = http::metrics_head(body_len, &mut head_buf);
        let start = METRICS_HEAD_ROOM - head_len;
        buffer[start..METRICS_HEAD_ROOM].copy_from_slice(&head_buf[..head_len]);
        let end = if head {
            METRICS_HEAD_ROOM
        } else {
            METRICS_HEAD_ROOM + body_len
        };
        Some((index, start, end))
    }

    /// Takes a free buffer's index, if one is free.
    fn acquire(&mut self) -> Option<usize> {
        let index = self.in_use.iter().position(|u| !u)?;
        self.in_use[index] = true;
        Some(index)
    }

    /// The bytes of buffer `index`.
    pub(crate) fn bytes(&self, index: usize) -> &[u8] {
        self.buffers.get(index).map_or(&[], |b| &b[..])
    }

    /// The answer in buffer `index` is done (sent or abandoned).
    pub(crate) fn release(&mut self, index: usize) {
        if let Some(u) = self.in_use.get_mut(index) {
            *u = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_at_once_answers_hold_a_buffer() {
        let mut m = Metrics::new(true);
        let held: Vec<usize> = (0..AT_ONCE).map(|_| m.acquire().unwrap()).collect();
        assert_eq!(m.acquire(), None, "every buffer in use: 503");
        m.release(held[0]);
        assert_eq!(m.acquire(), Some(held[0]));
        m.release(99);
    }
}
