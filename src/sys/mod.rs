//! The operating system calls the core needs, behind safe functions: the clock, this
//! process's id and signal mask, shared memory for forked workers, descriptors closed after a
//! fork, syslog, and systemd's notification socket. With `src/ffi/`, the only place where `unsafe` is allowed; nix's safe
//! wrappers are used where they exist.

pub(crate) mod clock;
pub(crate) mod fd;
pub(crate) mod notify;
pub(crate) mod process;
pub(crate) mod shm;
pub(crate) mod syslog;
