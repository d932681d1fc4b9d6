//! sluice-registry
