//! Event sources: each turns something the OS reports into `Event`s on the
//! one channel the shell reads.

pub mod bus;
pub mod signals;
pub mod socket;
