//! `WHERE` clauses with numbered parameters, built from optional filters.

use tokio_postgres::types::ToSql;

pub type Param = Box<dyn ToSql + Sync + Send>;

/// Builds `WHERE a = $1 AND b = $2` with its parameters; a clause names its
/// parameter `$?`, numbered when added.
#[derive(Default)]
pub struct Conditions {
    clauses: Vec<String>,
    params: Vec<Param>,
}

impl Conditions {
    pub fn add(&mut self, clause: &str, value: impl ToSql + Sync + Send + 'static) {
        self.params.push(Box::new(value));
        self.clauses
            .push(clause.replace("$?", &format!("${}", self.params.len())));
    }

    pub fn add_opt<T: ToSql + Sync + Send + Clone + 'static>(
        &mut self,
        clause: &str,
        value: Option<&T>,
    ) {
        if let Some(value) = value {
            self.add(clause, value.clone());
        }
    }

    pub fn push_raw(&mut self, clause: &str) {
        self.clauses.push(clause.to_string());
    }

    pub fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }

    pub fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// `text` as a LIKE pattern matching only itself (the escape is `\`).
pub fn like_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
