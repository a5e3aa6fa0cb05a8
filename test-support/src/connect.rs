//! Connecting as a test needs to: waiting for a place to free up, and reading why a
//! connection was refused.
