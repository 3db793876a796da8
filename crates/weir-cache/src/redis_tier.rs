//! The Redis tier (to be written).
