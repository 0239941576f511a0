//! OperationOutcome: how the gateway says what is wrong, and where.

use serde_json::{Value, json};

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One finding: `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    /// The `IssueType` code: `structure`, `required`, `value`, `invalid`,
    /// `not-found`, `conflict`, `too-long`, `not-supported`, `exception`, …
    pub code: &'static str,
    /// Plain words for a person: what rule, what value.
    pub diagnostics: String,
    /// FHIRPath expressions of the elements concerned.
    pub expression: Vec<String>,
}

impl Issue {
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    pub fn information(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Information,
            ..Issue::error(code, diagnostics)
        }
    }

    /// Locates the issue at a FHIRPath expression.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    /// Moves the issue under a prefix: `Patient.name` under
    /// `Bundle.entry[2].resource` becomes `Bundle.entry[2].resource.name`.
    pub fn within(mut self, prefix: &str, resource_type: &str) -> Self {
        if self.expression.is_empty() {
            self.expression.push(prefix.to_string());
            return self;
        }
        for expr in &mut self.expression {
            let rest = expr.strip_prefix(resource_type).unwrap_or(expr);
            *expr = if rest.is_empty() || rest.starts_with('.') {
                format!("{prefix}{rest}")
            } else {
                format!("{prefix}.{rest}")
            };
        }
        self
    }

    pub fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.as_str(),
            "code": self.code,
            "diagnostics": self.diagnostics,
        });
        if !self.expression.is_empty() {
            issue["expression"] = json!(self.expression);
        }
        issue
    }
}

/// An OperationOutcome resource holding `issues`.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_expressions_under_a_bundle_entry() {
        let issue = Issue::error("value", "bad").at("Patient.name[0].use");
        let moved = issue.within("Bundle.entry[2].resource", "Patient");
        assert_eq!(moved.expression, ["Bundle.entry[2].resource.name[0].use"]);
        let bare = Issue::error("value", "bad").within("Bundle.entry[0]", "Patient");
        assert_eq!(bare.expression, ["Bundle.entry[0]"]);
    }
}
