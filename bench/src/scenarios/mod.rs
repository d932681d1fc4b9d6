//! One module per scenario of the suite; each runs alone.

pub mod api;
pub mod chain40;
pub mod cron;
pub mod footprint;
pub mod peer;
pub mod stop;
pub mod wide;
