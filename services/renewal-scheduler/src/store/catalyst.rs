//! Reads and writes of the Catalyst Center-compatible adapter.
