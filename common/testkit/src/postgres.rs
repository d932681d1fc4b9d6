//! PostgreSQL fixtures
