//! The client of session-manager (being written).
