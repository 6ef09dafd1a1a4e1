//! sluice-protocol
