//! Hermes — reading and following a sandbox's logs.
