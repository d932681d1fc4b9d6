//! sluice-master
