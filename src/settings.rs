//! Settings from the environment (being written).
