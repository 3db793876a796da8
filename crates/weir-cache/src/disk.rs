//! The disk tier (to be written).
