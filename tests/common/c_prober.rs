//! The C prober (`lbagent_prober_*`) and `lbagent_probe` called through the C ABI from tests,
//! with the structs of `include/lbagent.h`, in the event loop the header documents.

use std::ffi::{CString, c_char, c_int, c_void};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// `lbagent_status`.
#[repr(C)]
pub struct CStatus {
    pub state: c_int,
    pub reason: c_int,
    pub weight_pct: u32,
    pub in_use: u32,
    pub capacity: u32,
    pub generation: u32,
    pub since_ms: u32,
    pub instance_id: u64,
    pub message: [c_char; 256],
}

/// `lbagent_probe_result`.
#[repr(C)]
pub struct CProbeResult {
    pub token: u64,
    pub result: c_int,
    pub rtt_us: u32,
    pub status: CStatus,
}

unsafe extern "C" {
    pub fn lbagent_probe(
        target: *const c_char,
        service: *const c_char,
        options: *const c_char,
        out: *mut CStatus,
    ) -> c_int;
    fn lbagent_prober_new(options: *const c_char, out: *mut *mut c_void) -> c_int;
    fn lbagent_prober_send(
        prober: *mut c_void,
        target: *const c_char,
        service: *const c_char,
        token: u64,
    ) -> c_int;
    fn lbagent_prober_receive(
        prober: *mut c_void,
        results: *mut CProbeResult,
        capacity: usize,
        count: *mut usize,
    ) -> c_int;
    fn lbagent_prober_timeout_ms(prober: *mut c_void) -> c_int;
    fn lbagent_prober_pending(prober: *const c_void) -> usize;
    fn lbagent_prober_fd(prober: *const c_void) -> c_int;
    fn lbagent_prober_free(prober: *mut c_void);
}

/// Probes `targets` (token = index) through one C prober made with `options`; returns
/// (result code, state, weight) for each target, in order. At most 20 s.
pub fn probe_all(options: &str, targets: &[SocketAddr]) -> Vec<(c_int, c_int, u32)> {
    let options = CString::new(options).unwrap();
    let mut prober: *mut c_void = std::ptr::null_mut();
    let mut done = Vec::new();
    // SAFETY: valid strings and out pointers; the handle is used until freed below.
    unsafe {
        assert_eq!(lbagent_prober_new(options.as_ptr(), &mut prober), 0);
        for (token, target) in targets.iter().enumerate() {
            let target = CString::new(target.to_string()).unwrap();
            let rc = lbagent_prober_send(prober, target.as_ptr(), std::ptr::null(), token as u64);
            assert_eq!(rc, 0);
        }
        let give_up = Instant::now() + Duration::from_secs(20);
        while lbagent_prober_pending(prober) > 0 && Instant::now() < give_up {
            let mut fds = [libc::pollfd {
                fd: lbagent_prober_fd(prober),
                events: libc::POLLIN,
                revents: 0,
            }];
            let ms = lbagent_prober_timeout_ms(prober).min(1000);
            libc::poll(fds.as_mut_ptr(), 1, ms);
            let mut results: [CProbeResult; 8] = std::mem::zeroed();
            let mut count = 0usize;
            assert_eq!(
                lbagent_prober_receive(prober, results.as_mut_ptr(), 8, &mut count),
                0
            );
            done.extend(
                results[..count]
                    .iter()
                    .map(|r| (r.token, (r.result, r.status.state, r.status.weight_pct))),
            );
        }
        lbagent_prober_free(prober);
    }
    done.sort_by_key(|(token, _)| *token);
    assert_eq!(
        done.len(),
        targets.len(),
        "every probe finished within 20 s"
    );
    done.into_iter().map(|(_, r)| r).collect()
}
