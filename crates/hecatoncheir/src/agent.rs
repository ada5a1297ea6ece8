//! The supervisor: launches sandboxes, watches each to its end, enforces limits, records outcomes.
pub struct Hecatoncheir;
pub struct AgentConfig;
pub struct AgentError;
pub struct ExecStream;
