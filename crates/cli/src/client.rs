//! The HTTP client the verbs use to talk to a realm (to be written).
