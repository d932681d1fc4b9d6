//! sluice-alert
