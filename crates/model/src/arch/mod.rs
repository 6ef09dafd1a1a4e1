//! One file per architecture.
