//! A scenario's outcome: tables for people, JSON for machines.

use std::path::Path;

use serde_json::Value;

/// A table printed to stdout: a title, a header and rows of cells.
#[derive(Debug, Clone)]
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table { title: title.into(), header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Markdown, so the same text reads in a terminal and in the README.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = cells.get(i).map(String::as_str).unwrap_or("");
                    format!("{cell:<width$}", width = widths[i])
                })
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut out = format!("**{}**\n\n", self.title);
        out.push_str(&line(&self.header));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

/// What one scenario produced.
pub struct Outcome {
    pub scenario: &'static str,
    pub tables: Vec<Table>,
    pub json: Value,
}

impl Outcome {
    /// Prints the tables and writes `<dir>/<scenario>.json`.
    pub fn publish(&self, dir: &Path) -> anyhow::Result<()> {
        for table in &self.tables {
            println!("{}", table.render());
        }
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&path, serde_json::to_string_pretty(&self.json)? + "\n")?;
        println!("results: {}\n", path.display());
        Ok(())
    }
}

/// `12.3`, or `-` for a figure that could not be measured.
pub fn num(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "-".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_aligned_markdown_table() {
        let mut table = Table::new("chain40", &["deployment", "ms"]);
        table.row(vec!["cluster".into(), num(4.91, 1)]);
        table.row(vec!["x".into(), num(f64::NAN, 1)]);
        assert_eq!(
            table.render(),
            "**chain40**\n\n| deployment | ms  |\n|------------|-----|\n| cluster    | 4.9 |\n| x          | -   |\n"
        );
    }
}
