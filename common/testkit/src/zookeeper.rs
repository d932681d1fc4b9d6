//! (registry helper writes this)
