//! `WHERE` clauses built from optional filters, shared by the readers and the jobs.

use rusqlite::types::Value as SqlValue;

/// Builds `WHERE a = ? AND b = ?` with its arguments.
#[derive(Default)]
pub(super) struct Conditions {
    clauses: Vec<String>,
    pub(super) args: Vec<SqlValue>,
}

impl Conditions {
    pub(super) fn add(&mut self, clause: impl Into<String>, value: impl Into<SqlValue>) {
        self.clauses.push(clause.into());
        self.args.push(value.into());
    }

    pub(super) fn add_opt<T: Into<SqlValue> + Clone>(&mut self, clause: &str, value: Option<&T>) {
        if let Some(value) = value {
            self.add(clause, value.clone());
        }
    }

    pub(super) fn push_raw(&mut self, clause: &str) {
        self.clauses.push(clause.to_string());
    }

    pub(super) fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }
}
