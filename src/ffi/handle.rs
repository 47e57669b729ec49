//! One handle type for every object C holds (`lbagent`, `lbagent_prober`): a box with a magic
//! word in front, and a registry of the live ones.
//!
//! Every call outside the hot path looks the pointer up in the registry before touching it,
//! so a freed handle, a double free, a handle of the other kind or a foreign pointer is
//! reported (`LBAGENT_ERR_BAD_HANDLE`) without reading the memory behind it. The hot path
//! (heartbeat, set_state, ...) may take no lock: it checks the magic word only, which catches
//! most uses after free; what C cannot be stopped from doing there is documented as undefined.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Failure;
use super::error::lbagent_result::{self, *};

/// What C can hold a handle to.
pub(crate) trait Object: Send + Sync + Sized + 'static {
    /// The magic word of a live handle of this kind.
    const LIVE: u64;
    /// The name of the argument in messages ("agent", "prober").
    const NAME: &'static str;
    /// The function that creates one (for messages).
    const CREATED_BY: &'static str;
}

/// Written over the magic word when a handle is freed.
const FREED: u64 = 0x4445_4144_4445_4144;

/// What a handle points to. repr(C) keeps `magic` first.
#[repr(C)]
struct Boxed<T> {
    magic: AtomicU64,
    value: T,
}

/// The live handles: (address, magic of their kind).
static LIVE: Mutex<Vec<(usize, u64)>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<(usize, u64)>> {
    // A panic while the list is held cannot leave it inconsistent (one push or remove).
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Moves `value` into a new handle, registered as live, as the C type `C`.
pub(crate) fn new<T: Object, C>(value: T) -> *mut C {
    let ptr = Box::into_raw(Box::new(Boxed {
        magic: AtomicU64::new(T::LIVE),
        value,
    }));
    live().push((ptr as usize, T::LIVE));
    ptr.cast()
}

/// The object behind a handle given to a call outside the hot path.
pub(crate) fn get<'a, T: Object, C>(ptr: *const C) -> Result<&'a T, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(T::NAME));
    }
    if !live().contains(&(ptr as usize, T::LIVE)) {
        return Err(not_live::<T>());
    }
    // SAFETY: registered, so a live `Boxed<T>` from `new`, freed only by `free` (which C may
    // not call concurrently with other calls on the handle).
    Ok(unsafe { &(*ptr.cast::<Boxed<T>>()).value })
}

/// The object behind a handle given to a hot-path call: lock-free, no thread-local.
pub(crate) fn get_hot<'a, T: Object, C>(ptr: *const C) -> Result<&'a T, lbagent_result> {
    if ptr.is_null() {
        return Err(LBAGENT_ERR_NULL_ARGUMENT);
    }
    // SAFETY: non-NULL handles come from `new`; reading the magic of a freed handle is the
    // documented undefined use, caught in most cases by the FREED word.
    let boxed = unsafe { &*ptr.cast::<Boxed<T>>() };
    if boxed.magic.load(Ordering::Acquire) != T::LIVE {
        return Err(LBAGENT_ERR_BAD_HANDLE);
    }
    Ok(&boxed.value)
}

/// Unregisters and drops a handle (the object's `Drop` runs outside the registry's lock).
pub(crate) fn free<T: Object, C>(ptr: *mut C) -> Result<(), Failure> {
    if ptr.is_null() {
        return Ok(());
    }
    let removed = {
        let mut live = live();
        let before = live.len();
        live.retain(|entry| *entry != (ptr as usize, T::LIVE));
        live.len() < before
    };
    if !removed {
        return Err(not_live::<T>());
    }
    // SAFETY: it was registered: a live `Boxed<T>` from `new`, now unregistered, so this is
    // its only release.
    let boxed = unsafe { Box::from_raw(ptr.cast::<Boxed<T>>()) };
    boxed.magic.store(FREED, Ordering::Release);
    drop(boxed);
    Ok(())
}

fn not_live<T: Object>() -> Failure {
    Failure::new(
        LBAGENT_ERR_BAD_HANDLE,
        format!(
            "{} is not a live handle (already freed, or not from {})",
            T::NAME,
            T::CREATED_BY
        ),
    )
}
