//! The alert-server role will live here: it sends the alerts masters write
//! to the `alert` table (email, webhook, DingTalk, WeCom, Feishu, Slack,
//! script) and records each send. Not built yet; `sluice alert` says so.
